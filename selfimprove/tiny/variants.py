"""Variants of the tiny model, warm-started further for one kind of experiment each.

`tiny-correct`: + two-turn correction episodes (self-correction, SCoRe); `tiny-translate`: + the toy
translation task and rating it (SSR). Each is built from the cached tiny model on first use, cached
next to it, one builder at a time.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from filelock import FileLock
from transformers import AutoModelForCausalLM, AutoTokenizer

from selfimprove.tiny import arith, translate
from selfimprove.tiny.model import TINY_VERSION, cache_root, ensure_tiny, save_atomic, sft_steps


def _wrong(answer: str, rng: random.Random) -> str:
    """A plausible wrong answer: the right one off by a small amount."""
    value = int(answer) + rng.choice([-1, 1]) * rng.choice([1, 2, 10, 1, 10, 3, 20, 9, 11])
    return str(value)


def correction_episodes(examples, rng: random.Random, p_first_right: float = 0.5, p_keep: float = 0.7,
                        p_fix: float = 0.2):
    """Two-turn Reask episodes whose second attempt behaves like a real model's: it usually keeps a
    right first answer but sometimes breaks it, and fixes a wrong one only sometimes (else repeats it).
    The rates are set so the warm-started model starts where SCoRe's base model does (delta about -10,
    more right answers broken than wrong ones fixed); with the tiny v6 base, 0.85 / 0.35 gave a model
    that rarely broke a right answer (delta -3.8), leaving self-correction RL little to show."""
    out = []
    for ex in examples:
        first = ex.answer if rng.random() < p_first_right else _wrong(ex.answer, rng)
        if first == ex.answer:
            second = ex.answer if rng.random() < p_keep else _wrong(ex.answer, rng)
        else:
            second = ex.answer if rng.random() < p_fix else first
        q = ex.prompt[-1]["content"]
        out.append(([{"role": "user", "content": q}, {"role": "assistant", "content": first},
                     {"role": "user", "content": q}], second))
    return out


def build_tiny_correct(base: Path, out: Path, steps: int = 300, batch: int = 128, lr: float = 1e-3,
                       seed: int = 0, log=print) -> Path:
    """The tiny model plus supervised steps on a half/half mix of single-turn problems and two-turn
    correction episodes (loss on the final answer only), for self-correction (SCoRe) experiments."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(seed)
        rng = random.Random(seed + 7)
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base)
        examples = arith.train(arith.ArithOptions(), steps * batch, seed=seed + 2)
        episodes = correction_episodes(examples[: len(examples) // 2], rng)
        texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m, _ in episodes]
        texts += [tokenizer.apply_chat_template(ex.prompt, tokenize=False, add_generation_prompt=True)
                  for ex in examples[len(examples) // 2 :]]
        answers = [a for _, a in episodes] + [ex.answer for ex in examples[len(examples) // 2 :]]
        order = list(range(len(texts)))
        rng.shuffle(order)
        p_ids = tokenizer([texts[i] for i in order], add_special_tokens=False)["input_ids"]
        a_ids = tokenizer([answers[i] + tokenizer.eos_token for i in order], add_special_tokens=False)["input_ids"]
        sft_steps(model, tokenizer, p_ids, a_ids, steps, batch, lr, log, "correction warm-start")
        save_atomic(model, tokenizer, out)
    finally:
        torch.set_num_threads(threads)
    return out


def ensure_tiny_correct(log=print) -> Path:
    return ensure_variant("tiny-correct", log=log)


# --------------------------------------------------------------------------- the translation variant


def translation_sft_data(n: int, seed: int, heldout: set[str]):
    """Half noisy-corpus translations (false friends win 60%), half ratings of single gloss pairs
    against the true lexicon (translate.py explains why): (prompt text, target text) pairs."""
    rng = random.Random(seed)
    sources = translate.train_sources(n, seed, heldout)
    out = []
    for i, src in enumerate(sources):
        question = translate.PROMPT.format(source=src)
        if i % 2 == 0:
            out.append((question, translate.noisy_translation(src, rng)))
        else:
            pair = translate.judge_pair(rng)
            out.append((translate.JUDGE_TEMPLATE.replace("{answer}", pair), translate.pair_digit(pair)))
    return out


def build_tiny_translate(base: Path, out: Path, steps: int = 800, batch: int = 128, lr: float = 2e-3,
                         seed: int = 0, log=print) -> Path:
    """The tiny model plus supervised steps on the toy translation task and on judging it (SSR)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(seed)
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base)
        d = translate.TranslateOptions()
        pairs = translation_sft_data(steps * batch, seed + 3, set(translate.heldout_sources(d.n_heldout, d.heldout_seed)))
        mark = "\x00"
        prefix, suffix = tokenizer.apply_chat_template([{"role": "user", "content": mark}], tokenize=False,
                                                       add_generation_prompt=True).split(mark)
        p_ids = tokenizer([prefix + p + suffix for p, _ in pairs], add_special_tokens=False)["input_ids"]
        a_ids = tokenizer([t + tokenizer.eos_token for _, t in pairs], add_special_tokens=False)["input_ids"]
        sft_steps(model, tokenizer, p_ids, a_ids, steps, batch, lr, log, "translation warm-start")
        save_atomic(model, tokenizer, out)
    finally:
        torch.set_num_threads(threads)
    return out


def ensure_variant(name: str, log=print) -> Path:
    """A cached variant of the tiny model (tiny-correct, tiny-translate), built on first use."""
    builders = {"tiny-correct": build_tiny_correct, "tiny-translate": build_tiny_translate}
    base = ensure_tiny(log=log)
    path = cache_root() / f"{name}-v{TINY_VERSION}"
    with FileLock(str(path) + ".lock"):
        if not (path / "config.json").exists():
            log(f"building the {name} model in {path}")
            builders[name](base, path, log=log)
    return path


def ensure_tiny_translate(log=print) -> Path:
    return ensure_variant("tiny-translate", log=log)
