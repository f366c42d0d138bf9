"""Reward functions: plain `fn(traces, ctx) -> list[float | None]`, found by name or "pkg.module:fn".

`None` means "not applicable to this trace" (e.g. no reference answer); the combined reward is the
weighted sum of the parts that apply, and each part is kept in `trace.rewards[name]`.
TRL-style functions `fn(prompts, completions, **columns) -> list[float]` work too: any function with
a `completions` parameter is wrapped by `trl_adapter` automatically.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from reward.format import number_format, regex_format, think_format
from reward.judge import self_judge
from reward.judge_model import judge_model
from reward.math import exact_match, math_correct
from reward.reward_model import reward_model
from reward.translation import chrf, comet_kiwi

REWARDS: dict[str, Callable] = {
    "math_correct": math_correct,
    "exact_match": exact_match,
    "think_format": think_format,
    "regex_format": regex_format,
    "number_format": number_format,
    "self_judge": self_judge,
    "judge_model": judge_model,
    "reward_model": reward_model,
    "chrf": chrf,
    "comet_kiwi": comet_kiwi,
}


@dataclass(frozen=True)
class RewardContext:
    """The one channel for extra inputs to rewards."""

    tokenizer: Any = None
    engine: Any = None  # the generation engine (self-judging rewards query the current policy)
    step: int = 0


def trl_adapter(fn: Callable) -> Callable:
    """Call a TRL reward function: prompts and completions in conversational form, columns as kwargs."""

    @functools.wraps(fn)
    def wrapped(traces, ctx=None, **kwargs):  # kwargs: the recipe's rewards[].kwargs
        columns: dict[str, list] = {"answer": [tr.answer for tr in traces], "task": [tr.task for tr in traces]}
        for key in {k for tr in traces for k in tr.meta}:
            columns.setdefault(key, [tr.meta.get(key) for tr in traces])
        return fn(
            prompts=[tr.prompt for tr in traces],
            completions=[[{"role": "assistant", "content": tr.completion.text}] for tr in traces],
            completion_ids=[tr.completion.token_ids for tr in traces],
            **columns,
            **kwargs,
        )

    return wrapped


def resolve(name: str) -> Callable:
    """A reward by registry name or `package.module:function` path."""
    if name in REWARDS:
        fn = REWARDS[name]
    elif ":" in name:
        module, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            from selfimprove.errors import UserError

            raise UserError(f"reward '{name}' cannot be loaded: {e}") from None
    else:
        from selfimprove.errors import UserError

        near = difflib.get_close_matches(name, list(REWARDS), n=1)
        hint = f"; did you mean '{near[0]}'?" if near else f" (known: {', '.join(REWARDS)}; or use 'package.module:function')"
        raise UserError(f"unknown reward '{name}'{hint}")
    if "completions" in inspect.signature(fn).parameters:
        fn = trl_adapter(fn)
    return fn
