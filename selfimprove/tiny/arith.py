"""The tiny world's arithmetic task: `a op b=` with exact integer answers (data.train: arith).

Training prompts are an endless seeded stream that never repeats a held-out question; the fixed
held-out split (`n_heldout` distinct problems drawn with `heldout_seed`) is the eval set. Its knobs
are `data.task_options` (`ArithOptions`).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass

from selfimprove.data import Example, Task
from selfimprove.errors import UserError
from selfimprove.options import opt


@dataclass
class ArithOptions:
    ops: str = opt("+-*", "operations to draw from")
    min_operand: int = opt(10, "a and b (for + and -) are in [min_operand, max_operand]")
    max_operand: int = opt(99, "upper bound of the operands")
    max_multiplier: int = opt(9, "for *, the second operand is in [2, max_multiplier]")
    n_heldout: int = opt(500, "size of the fixed held-out split (never trained on)")
    heldout_seed: int = opt(1234, "seed of the held-out split")


def check(o: ArithOptions) -> list[str]:
    checks = [
        (bool(o.ops) and set(o.ops) <= set("+-*"), "data.task_options.ops must be a non-empty mix of + - *"),
        (1 <= o.min_operand <= o.max_operand, "data.task_options.min_operand must be >= 1 and <= max_operand"),
        (o.max_multiplier >= 2, "data.task_options.max_multiplier must be >= 2"),
        (o.n_heldout >= 1, "data.task_options.n_heldout must be >= 1"),
    ]
    return [msg for ok, msg in checks if not ok]


def arith_problem(rng: random.Random, o: ArithOptions) -> tuple[str, str]:
    """One `a op b=` problem and its exact answer."""
    op = rng.choice(o.ops)
    a = rng.randint(o.min_operand, o.max_operand)
    if op == "*":
        # a two-digit times one-digit product keeps multiplication learnable by a 1M model
        b = rng.randint(2, o.max_multiplier)
        value = a * b
    else:
        b = rng.randint(o.min_operand, o.max_operand)
        value = a + b if op == "+" else a - b
    return f"{a}{op}{b}=", str(value)


def _example(question: str, answer: str, idx: str, system_prompt: str | None) -> Example:
    msgs = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": question}
    ]
    return Example(id=idx, prompt=msgs, answer=answer, task="arith")


def _distinct(o: ArithOptions, n: int, seed: int, tag: str, exclude: set[str], system_prompt: str | None):
    rng = random.Random(seed)
    seen, out = set(exclude), []
    for _ in range(n * 50):
        if len(out) == n:
            break
        q, a = arith_problem(rng, o)
        if q not in seen:
            seen.add(q)
            out.append(_example(q, a, f"arith-{tag}-{len(out)}", system_prompt))
    if len(out) < n:
        raise UserError(f"data: the arith problem space is too small for {n} distinct {tag} problems")
    return out


def heldout(o: ArithOptions, system_prompt: str | None = None) -> list[Example]:
    """The fixed held-out split: `n_heldout` distinct problems drawn with `heldout_seed`."""
    return _distinct(o, o.n_heldout, o.heldout_seed, "eval", set(), system_prompt)


def validation(o: ArithOptions, n: int, seed: int) -> list[Example]:
    """`n` distinct problems outside the held-out split (for the tiny model's early stop)."""
    return _distinct(o, n, seed, "val", {ex.prompt[-1]["content"] for ex in heldout(o)}, None)


def stream(o: ArithOptions, seed: int, system_prompt: str | None = None) -> Iterator[Example]:
    """The endless training stream (repeats allowed), never one of the held-out questions."""
    held = {ex.prompt[-1]["content"] for ex in heldout(o)}
    rng, i = random.Random(seed), 0
    while True:
        q, a = arith_problem(rng, o)
        if q not in held:
            yield _example(q, a, f"arith-train-{i}", system_prompt)
            i += 1


def train(o: ArithOptions, n: int, seed: int, system_prompt: str | None = None) -> list[Example]:
    """The first `n` problems of the training stream."""
    return list(itertools.islice(stream(o, seed, system_prompt), n))


TASK = Task("arith", ArithOptions, train, heldout, check, stream=stream)
