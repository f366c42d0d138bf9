"""Algorithms: one module per method, listed here. Adding a method is adding a file.

A module defines `Config` (its recipe section, with a `name`), `check(cfg) -> list[str]` (value
errors), `prepare(traces, cfg) -> traces` (advantages, labels, filtering), `loss(batch, logp, cfg)
-> (per-token loss [B, T], metrics)`, `META_KEYS` (trace.meta entries collated into tensors) and
optionally `needs_reference(cfg)`, `zero_loss(trace, cfg)` (the trace's gradient is exactly
zero: skipped) and `extend(traces, engine, tokenizer, sampling, cfg)` (add turns to scored episodes;
the loop scores them again). `loop.run` drives them; no Trainer class hierarchy.
A module that is not on-policy RL (judge or reward-model training) instead defines
`train(recipe, log=print) -> summary dict`; `selfimprove train` calls it in place of `loop.run`.
A module outside the package is named by its import path: `algorithm: {name: mylab.algos.foo}`.
"""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType

from selfimprove.errors import UserError

ALGORITHMS = {
    "nft": "selfimprove.algorithms.nft",
    "grpo": "selfimprove.algorithms.grpo",
    "rft": "selfimprove.algorithms.rft",
    "score": "selfimprove.algorithms.score",
    "selfj": "selfimprove.algorithms.selfj",
    "reward_model": "selfimprove.algorithms.reward_model",
    "ssr": "selfimprove.algorithms.ssr",
}


def get_algorithm(name: str) -> ModuleType:
    if not isinstance(name, str):
        raise UserError(f"algorithm.name must be a string, got {name!r}")
    if name in ALGORITHMS:
        return importlib.import_module(ALGORITHMS[name])
    if "." in name:
        try:
            return importlib.import_module(name)
        except ImportError as e:
            raise UserError(f"algorithm '{name}' cannot be imported: {e}") from None
    near = difflib.get_close_matches(name, list(ALGORITHMS), n=1)
    hint = f"; did you mean '{near[0]}'?" if near else f" (known: {', '.join(ALGORITHMS)})"
    raise UserError(f"unknown algorithm '{name}'{hint}")
