"""The tiny world's toy translation task: a small synthetic language pair for SSR on CPU.

Source sentences are 2-4 English words from a 12-word vocabulary; the toy language translates word
by word through a fixed lexicon (`LEXICON`), keeping the order, and the translation is written as
an interlinear gloss, each source word followed by its translation ("the=ka good=bo"). The gloss
keeps every source-target pair next to each other, so a 4-layer model can learn to check a pair
locally. Training prompts carry **no**
reference (SSR learns from monolingual sources, algorithms.md section 3.1); the fixed held-out split
keeps its references for evaluation only (exact match, chrF).

Why the tiny model can improve from its own judgements here: its warm-start (`variants.build_tiny_translate`)
reads a *noisy* parallel corpus in which four "false friend" words are mistranslated most of the
time, so its greedy translation of those words is wrong; the same warm-start also teaches it to
rate translations 0-9 against the true lexicon. A model that judges better than it translates is
the premise of self-rewarding RL (SSR's self-judge beats its own first attempts); this task makes
that premise true in a 1M-parameter model, and the held-out references measure whether SSR used it.

The tiny judge rates one gloss pair at a time ("rate 0 to 9: good=bo" -> 9, "good=su" -> 0) and the
sentence's score is the mean over its pairs (`self_judge(segments=" ")`, segment-level judging as in
document-level quality estimation). Measured here: after 1200 warm-start steps a whole-sentence
0-9 rating still did not separate right from wrong glosses (Pearson 0.15 with the true quality),
while checking one pair is a lookup the model learns quickly. `gloss_format` is the format gate:
the gloss must spell out exactly the source's words, so the judge cannot be fooled by glossing
other words than the ones asked for.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

from selfimprove.data import Example, Task
from selfimprove.errors import UserError
from selfimprove.options import opt

SOURCE_WORDS = "the a is it to of in on good bad yes no".split()
TARGET_WORDS = "ka mi zo lu pe ri ta ne bo su fi do".split()
LEXICON = dict(zip(SOURCE_WORDS, TARGET_WORDS))
# the noisy corpus's systematic errors: these source words get the wrong target word most of the time
FALSE_FRIENDS = {"good": "su", "is": "ri", "no": "ka", "of": "fi"}
PROMPT = "translate: {source}"
# the tiny self-judge's prompt (short: the tiny model has 256 positions; the gloss carries the source
# words, so the question is left out); the reply is one digit 0-9
JUDGE_TEMPLATE = "rate 0 to 9: {answer}"
FORMAT = r"[a-z]+=[a-z]+( [a-z]+=[a-z]+)*"  # a well-formed gloss
MIN_WORDS, MAX_WORDS = 2, 4


def gloss(source_words, target_words) -> str:
    return " ".join(f"{s}={t}" for s, t in zip(source_words, target_words))


def translate(source: str) -> str:
    """The reference translation of a source sentence (word by word through the lexicon, as a gloss)."""
    return gloss(source.split(), [LEXICON[w] for w in source.split()])


def quality(source: str, hypothesis: str) -> float:
    """Share of positions glossed right, over the longer of reference and hypothesis (0..1)."""
    ref, hyp = translate(source).split(), hypothesis.split()
    right = sum(r == h for r, h in zip(ref, hyp))
    return right / max(len(ref), len(hyp), 1)


def judge_digit(source: str, hypothesis: str) -> str:
    """Quality on a 0-9 scale (for whole-sentence ratings)."""
    return str(round(9 * quality(source, hypothesis)))


def pair_digit(pair: str) -> str:
    """The rating the tiny judge is taught for one gloss pair: 9 when right, 0 when wrong."""
    src, _, tgt = pair.partition("=")
    return "9" if LEXICON.get(src) == tgt else "0"


def judge_pair(rng: random.Random) -> str:
    """A pair for the judge to rate: right half the time, else a false friend or a random word."""
    src = rng.choice(SOURCE_WORDS)
    kind = rng.random()
    if kind < 0.5:
        tgt = LEXICON[src]
    elif kind < 0.7 and src in FALSE_FRIENDS:
        tgt = FALSE_FRIENDS[src]
    else:
        tgt = rng.choice([t for t in TARGET_WORDS if t != LEXICON[src]])
    return f"{src}={tgt}"


def gloss_format(traces, ctx=None) -> list[float]:
    """1.0 when the reply is a well-formed gloss of exactly the prompt's source words, else 0.0.
    The tiny world's own reward (a task-specific verifier, as verl keeps one per data source)."""
    out = []
    for tr in traces:
        source = (tr.prompt[-1]["content"] if tr.prompt else "").removeprefix(PROMPT.format(source=""))
        text = tr.completion.text.strip()
        ok = bool(re.fullmatch(FORMAT, text)) and [p.split("=")[0] for p in text.split()] == source.split()
        out.append(1.0 if ok and tr.completion.finish_reason == "stop" else 0.0)
    return out


def random_source(rng: random.Random) -> str:
    return " ".join(rng.choice(SOURCE_WORDS) for _ in range(rng.randint(MIN_WORDS, MAX_WORDS)))


def heldout_sources(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    seen: list[str] = []
    known: set[str] = set()
    for _ in range(n * 50):
        if len(seen) == n:
            return seen
        s = random_source(rng)
        if s not in known:
            known.add(s)
            seen.append(s)
    raise UserError(f"data: the toy translation task has too few sentences for n_heldout={n}")


def train_sources(n: int, seed: int, heldout: set[str]) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        s = random_source(rng)
        if s not in heldout:
            out.append(s)
    return out


def noisy_translation(source: str, rng: random.Random, p_false: float = 0.6, p_random: float = 0.05) -> str:
    """A corpus translation: false friends win with p_false, any word is random with p_random."""
    words = []
    for w in source.split():
        t = LEXICON[w]
        if w in FALSE_FRIENDS and rng.random() < p_false:
            t = FALSE_FRIENDS[w]
        elif rng.random() < p_random:
            t = rng.choice(TARGET_WORDS)
        words.append(t)
    return gloss(source.split(), words)


# --------------------------------------------------------------------------- the task (data.train: translate)


@dataclass
class TranslateOptions:
    n_heldout: int = opt(500, "size of the fixed held-out split (with references; never trained on)")
    heldout_seed: int = opt(1234, "seed of the held-out split")


def _check(o: TranslateOptions) -> list[str]:
    return [] if o.n_heldout >= 1 else ["data.task_options.n_heldout must be >= 1"]


def _example(split: str, i: int, src: str, system_prompt: str | None, with_reference: bool) -> Example:
    msgs = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": PROMPT.format(source=src)}]
    return Example(id=f"translate-{split}-{i}", prompt=msgs, answer=translate(src) if with_reference else None,
                   task="translate", source=src)


def heldout(o: TranslateOptions, system_prompt: str | None = None) -> list[Example]:
    """The fixed held-out split keeps its references (for exact match and chrF only)."""
    return [_example("heldout", i, s, system_prompt, True)
            for i, s in enumerate(heldout_sources(o.n_heldout, o.heldout_seed))]


def stream(o: TranslateOptions, seed: int, system_prompt: str | None = None) -> Iterator[Example]:
    """The endless training stream (the same sources as `train_sources`). Training prompts have no
    reference: monolingual sources, as in SSR."""
    held = set(heldout_sources(o.n_heldout, o.heldout_seed))
    rng, i = random.Random(seed), 0
    while True:
        s = random_source(rng)
        if s not in held:
            yield _example("train", i, s, system_prompt, False)
            i += 1


def train(o: TranslateOptions, n: int, seed: int, system_prompt: str | None = None) -> list[Example]:
    return list(itertools.islice(stream(o, seed, system_prompt), n))


TASK = Task("translate", TranslateOptions, train, heldout, _check, stream=stream)
