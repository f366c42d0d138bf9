"""The embedded tiny world's model: a 1M-parameter Llama with a local BPE tokenizer.

No model can be downloaded on the build machines, so the project builds its own: a byte-level
BPE tokenizer (one token per digit) trained on generated text, a ChatML chat template, and a
4-layer Llama warm-started by supervised training on the synthetic `arith` task. The build is
deterministic on a given CPU (fixed seeds and thread count), takes one to two minutes on 2 cores, and
is cached in the user's cache folder. The result is a normal Hugging Face folder: AutoModelForCausalLM and
AutoTokenizer load it. Model type llama, not qwen2: with qwen2, AutoTokenizer swaps in Qwen2's
pre-tokenizer regex and the tokenizer no longer matches the one built here.

The warm-start is stopped early on purpose, at a constant learning rate, while accuracy is still
rising fast: held-out accuracy must leave room for self-improvement (15-70%). Measured here, RL from
that point gains about twice as much in the same time as from a later one (36-39% after 600-700 steps:
+8 points in 270 s of NFT; from 22.8%: +18), and a warm-start whose learning rate decayed to zero made
RL lose accuracy (environment.md section 8). Where "that point" falls depends on the CPU: the same
seeds gave 22.8% greedy held-out accuracy after 500 steps on one machine and 7.2% on another (AMD
EPYC; 22-23% there after about 750 steps), since float kernels differ and the steep part of the curve
amplifies it. So the warm-start stops at the first check (every `check_every` steps from `min_steps`)
where greedy accuracy on a validation split, averaged over the last three checks (a single noisy
check that happens to cross would stop early), reaches `target_accuracy`: `n_validation` distinct
problems that are neither held-out problems nor ever trained on, so the validation accuracy estimates
the held-out accuracy without looking at it. `tiny_build.json` in the folder records where it stopped.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from reward.math import math_correct
from selfimprove.engines.base import Sampling
from selfimprove.engines.hf import HFEngine
from selfimprove.rollout import sample
from selfimprove.tiny import arith

TINY_VERSION = "6"
# A compact chat format in the style of Phi-3's (<|user|> ... <|end|><|assistant|>): one special
# token per role marker keeps sequences short, which is most of the warm-start's CPU time.
SPECIAL_TOKENS = ["<|endoftext|>", "<|end|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' }}{{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# Text besides arithmetic, so later tasks (instructions, judging, correction) tokenize compactly.
_WORDS = (
    "the a an of to and in is it that for on with as was be by this are or at from you your answer "
    "question solution final correct wrong error there might please rewrite again check think score "
    "rate from 0 to 9 translate translation source target reference judge output text number result "
    "what is compute solve problem step yes no true false good bad better best because so then"
).split()


@dataclass
class TinySpec:
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 512
    max_positions: int = 256
    vocab_size: int = 384
    warm_steps: int = 1500  # the most supervised steps on arith (batch 128, lr 3e-3 after 100 warm-up steps)
    min_steps: int = 400  # the first validation check (none when min_steps > warm_steps)
    check_every: int = 10
    target_accuracy: float = 0.22  # stop once greedy validation accuracy reaches this
    n_validation: int = 1000
    warm_batch: int = 128
    warm_lr: float = 3e-3
    warm_warmup: int = 100
    adam_beta2: float = 0.98
    seed: int = 0


def cache_root() -> Path:
    root = os.environ.get("SELFIMPROVE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "selfimprove"
    )
    return Path(root)


def tiny_path() -> Path:
    return cache_root() / f"tiny-v{TINY_VERSION}"


def _corpus(n_lines: int = 20000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        op = rng.choice("+-*")
        lines.append(f"{a}{op}{b}={rng.randint(-999, 99999)}")
        lines.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12))) + rng.choice(".?!:"))
    return lines


def build_tokenizer(spec: TinySpec):
    tok = Tokenizer(models.BPE())
    # digits stay single tokens, so numbers are spelled digit by digit
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(seed=spec.seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|end|>", pad_token="<|pad|>",
        unk_token=None, padding_side="left", chat_template=CHAT_TEMPLATE,
    )


def build_model(spec: TinySpec, tokenizer):
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(spec.seed)
    return LlamaForCausalLM(config)


def sft_batch(tokenizer, prompt_ids: list[list[int]], answer_ids: list[list[int]]):
    """Right-padded input ids and labels: loss only on the answer tokens (which end with EOS)."""
    L = max(len(p) + len(a) for p, a in zip(prompt_ids, answer_ids))
    ids = torch.full((len(prompt_ids), L), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(prompt_ids), L), -100, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), L), dtype=torch.long)
    for i, (p, a) in enumerate(zip(prompt_ids, answer_ids)):
        seq = p + a
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, len(p) : len(seq)] = torch.tensor(a)
        mask[i, : len(seq)] = 1
    return ids, mask, labels


def encode_sft(tokenizer, examples) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt ids through the chat template and answer ids (+ EOS), for many examples at once.

    The template is rendered once around a placeholder and filled by string concatenation (exact for
    single-message prompts), so 300k examples tokenize in seconds instead of minutes of Jinja.
    """
    mark = "\x00"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": mark}], tokenize=False,
                                             add_generation_prompt=True)
    prefix, suffix = rendered.split(mark)
    texts = [prefix + ex.prompt[-1]["content"] + suffix for ex in examples]
    assert len(examples[0].prompt) == 1 and texts[0] == tokenizer.apply_chat_template(
        examples[0].prompt, tokenize=False, add_generation_prompt=True)
    p_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer([ex.answer + tokenizer.eos_token for ex in examples], add_special_tokens=False)["input_ids"]
    return p_ids, a_ids


def validation_accuracy(model, tokenizer, examples) -> float:
    """Greedy accuracy (8 new tokens, exact integer answers) on `examples`."""
    traces = sample(HFEngine(model, tokenizer), tokenizer, examples, Sampling(n=1, temperature=0.0, max_new_tokens=8),
                    tag="val", max_prompt_tokens=64)
    model.train()
    return sum(math_correct(traces)) / len(traces)


def warm_start(model, tokenizer, spec: TinySpec, log=print) -> dict:
    """Supervised steps until validation accuracy reaches spec.target_accuracy (or warm_steps); returns
    where it stopped."""
    options = arith.ArithOptions()
    validation = arith.validation(options, spec.n_validation, seed=spec.seed + 99)
    unseen = {ex.prompt[-1]["content"] for ex in validation}
    need = spec.warm_steps * spec.warm_batch
    stream = arith.train(options, need + need // 5, seed=spec.seed + 1)  # validation problems (~3%) are left out
    examples = [ex for ex in stream if ex.prompt[-1]["content"] not in unseen][:need]
    assert len(examples) == need
    p_ids, a_ids = encode_sft(tokenizer, examples)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.warm_lr, betas=(0.9, spec.adam_beta2), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / spec.warm_warmup))
    model.train()
    t0, done, checks = time.time(), {"steps": spec.warm_steps, "validation_accuracy": None}, []
    for step in range(spec.warm_steps):
        sl = slice(step * spec.warm_batch, (step + 1) * spec.warm_batch)
        ids, mask, labels = sft_batch(tokenizer, p_ids[sl], a_ids[sl])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % 100 == 0:
            log(f"  warm-start step {step + 1}/{spec.warm_steps}  loss {loss.item():.3f}  {time.time() - t0:.0f}s")
        if step + 1 >= spec.min_steps and (step + 1 - spec.min_steps) % spec.check_every == 0:
            checks.append(validation_accuracy(model, tokenizer, validation))
            recent = sum(checks[-3:]) / len(checks[-3:])
            if len(checks) >= 3 and recent >= spec.target_accuracy:
                log(f"  warm-start stops at step {step + 1}: validation accuracy {recent:.1%} (last 3 checks)")
                return {"steps": step + 1, "validation_accuracy": recent, "checks": checks}
    return done


def build_tiny(out: Path | None = None, spec: TinySpec | None = None, log=print) -> Path:
    """Build the tokenizer and model, warm-start it, and save an HF folder (atomically)."""
    spec = spec or TinySpec()
    out = Path(out or tiny_path())
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # fixed thread count: the same floating-point sums on every build
    try:
        random.seed(spec.seed)
        torch.manual_seed(spec.seed)
        tokenizer = build_tokenizer(spec)
        model = build_model(spec, tokenizer)
        log(f"building the tiny model ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params) in {out}")
        stopped = warm_start(model, tokenizer, spec, log=log)
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "tiny_build.json").write_text(json.dumps({"version": TINY_VERSION, **stopped}, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    finally:
        torch.set_num_threads(threads)
    return out


def ensure_tiny(log=print) -> Path:
    """The cached tiny model's folder, built on first use (one builder at a time, via a file lock)."""
    path = tiny_path()
    if (path / "config.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not (path / "config.json").exists():
            build_tiny(path, log=log)
    return path


def sft_steps(model, tokenizer, p_ids, a_ids, steps: int, batch: int, lr: float, log, what: str) -> None:
    """Plain supervised steps (AdamW, beta2 0.98, clip 1) over consecutive slices of the data."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    model.train()
    for step in range(steps):
        sl = slice(step * batch, (step + 1) * batch)
        ids, mask, labels = sft_batch(tokenizer, p_ids[sl], a_ids[sl])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % 100 == 0:
            log(f"  {what} step {step + 1}/{steps}  loss {loss.item():.3f}")


def save_atomic(model, tokenizer, out: Path) -> None:
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
