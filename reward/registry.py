"""The reward registry and the recipe's weighted sum: resolve, bind, score.

A reward is a plain function `fn(traces, ctx, **kwargs) -> list[float | None]`, found by name in
`REWARDS` or by a `"package.module:function"` path. `None` means "not applicable to this trace"
(e.g. no reference answer); the combined reward is the weighted sum of the parts that apply, and each
part is kept in `trace.rewards[name]`. TRL-style functions `fn(prompts, completions, **columns)` work
too: any function with a `completions` or `completion_ids` parameter is wrapped by `trl_adapter` (GRPOTrainer's
calling convention), and verl's `compute_score(data_source, solution_str, ground_truth, extra_info)` by
`verl_adapter`. A reward may be `async def`; its values any real number or None.

A factory (`factory: true` in the recipe's entry, e.g. `trl.rewards:get_soft_overlong_punishment`) is called
once with the entry's kwargs, and the function it returns is the reward (adapted as above).
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import importlib
import inspect
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable

from reward.format import number_format, regex_format, think_format
from reward.length import overlong_penalty
from reward.math import exact_match, math_correct
from reward.reward_model import reward_model
from reward.self_judge import self_judge
from reward.selfj import judge_model
from reward.translation import chrf, comet_kiwi
from selfimprove.errors import UserError

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
    "overlong_penalty": overlong_penalty,
}
TRL_PARAMS = ("completions", "completion_ids")  # a function that takes either uses GRPOTrainer's convention


@dataclass(frozen=True)
class RewardContext:
    """The one channel for extra inputs to rewards."""

    tokenizer: Any = None
    engine: Any = None  # the generation engine (self-judging rewards query the current policy)
    step: int = 0
    max_steps: int = 0
    logged: dict = field(default_factory=dict)  # name -> values a TRL reward passed to log_metric this step


@dataclass
class BoundReward:
    """A recipe's reward: its name in trace.rewards, the function with its options bound, its weight."""

    name: str
    fn: Callable
    weight: float


@dataclass(frozen=True)
class TrainerState:
    """What TRL rewards read from `trainer_state` (GRPOTrainer passes its TrainerState)."""

    global_step: int
    max_steps: int


def _accepted(fn: Callable) -> Callable[[dict], dict]:
    """TRL calls every reward with every column; a function without **kwargs gets only what it names. The
    signature is read once here, not at every call (rewards run every step)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return lambda kwargs: kwargs
    return lambda kwargs: {k: v for k, v in kwargs.items() if k in params}


def trl_adapter(fn: Callable) -> Callable:
    """Call a TRL reward function with GRPOTrainer's convention: prompts and completions as strings for
    standard-format data (plain-text prompts) and as message lists for conversational data, completion_ids,
    every dataset column under its own name, `source` (the bare source text, data.source_column), trainer_state,
    log_metric and log_extra."""

    take = _accepted(fn)

    @functools.wraps(fn)
    def wrapped(traces, ctx=None, **kwargs):  # kwargs: the recipe's rewards[].kwargs
        ctx = ctx or RewardContext()
        standard = all(tr.prompt_text is not None for tr in traces)
        columns: dict[str, list] = {}
        for key in dict.fromkeys(k for tr in traces for k in tr.columns):
            columns[key] = [tr.columns.get(key) for tr in traces]
        if "answer" not in columns:  # synthetic tasks: the reference under the project's own name
            columns["answer"] = [tr.answer for tr in traces]
        if any(tr.source is not None for tr in traces):  # data.source_column's bare text, under one name
            columns["source"] = [tr.source for tr in traces]

        def log_extra(column: str, values: list) -> None:
            for tr, v in zip(traces, values):
                tr.meta[f"extra.{column}"] = v

        def log_metric(name: str, value: float) -> None:
            ctx.logged.setdefault(name, []).append(float(value))

        call = {"prompts": [tr.prompt_text if standard else tr.prompt for tr in traces],
                "completions": [tr.completion.text if standard else [{"role": "assistant", "content": tr.completion.text}]
                                for tr in traces],
                "completion_ids": [tr.completion.token_ids for tr in traces],
                **columns, "trainer_state": TrainerState(ctx.step, ctx.max_steps), "log_extra": log_extra,
                "log_metric": log_metric, **kwargs}
        return fn(**take(call))

    return wrapped


def verl_adapter(fn: Callable) -> Callable:
    """Call a verl-style `compute_score(data_source, solution_str, ground_truth, extra_info)` per completion
    (a float, or a dict with a "score")."""

    take = _accepted(fn)

    @functools.wraps(fn)
    def wrapped(traces, ctx=None, **kwargs):
        out = []
        for tr in traces:
            call = {"data_source": tr.columns.get("data_source", tr.task), "solution_str": tr.completion.text,
                    "ground_truth": tr.answer, "extra_info": tr.columns.get("extra_info"), **kwargs}
            value = fn(**take(call))
            out.append(value["score"] if isinstance(value, dict) else value)
        return out

    return wrapped


def resolve(name, factory_kwargs: dict | None = None) -> Callable:
    """A reward by registry name, `package.module:function` path, or a callable (Python API). With
    `factory_kwargs`, the function found is a factory: its result for those kwargs is the reward."""
    if callable(name):
        fn = name
    elif name in REWARDS:
        fn = REWARDS[name]
    elif ":" in name:
        module, _, attr = name.partition(":")
        if not module or not attr or module.startswith("."):
            raise UserError(f"reward '{name}' is not of the form 'package.module:function'")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except Exception as e:  # ImportError, AttributeError, or the user's module failing as it loads
            raise UserError(f"reward '{name}' cannot be loaded ({type(e).__name__}: {' '.join(str(e).split())})") from None
        if not callable(fn):
            raise UserError(f"reward '{name}' is a {type(fn).__name__}, not a function")
    else:
        near = difflib.get_close_matches(name, list(REWARDS), n=1)
        hint = f"; did you mean '{near[0]}'?" if near else f" (known: {', '.join(REWARDS)}; or use 'package.module:function')"
        raise UserError(f"unknown reward '{name}'{hint}")
    if factory_kwargs is not None:
        fn = _made(fn, name, factory_kwargs)
    params = inspect.signature(fn).parameters
    if any(p in params for p in TRL_PARAMS):
        fn = trl_adapter(fn)
    elif "solution_str" in params and "ground_truth" in params:
        fn = verl_adapter(fn)
    return fn


def _made(factory: Callable, name, kwargs: dict) -> Callable:
    """The reward function a factory returns for `kwargs`; its failures are one line."""
    try:
        fn = factory(**kwargs)
    except Exception as e:  # a TypeError for a wrong option, or the factory's own check
        raise UserError(f"reward '{name}' (factory: true) failed to build with kwargs {kwargs}: "
                        f"{type(e).__name__}: {' '.join(str(e).split())}") from None
    if not callable(fn):
        raise UserError(f"reward '{name}' (factory: true) returned a {type(fn).__name__}, not a reward function")
    return fn


def _takes_no_traces(fn: Callable, kwargs: dict) -> bool:
    """Every parameter of `fn` is given by kwargs, so nothing is left to receive the traces: a factory."""
    params = inspect.signature(fn).parameters.values()
    open_ = [p for p in params if p.name not in kwargs and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD,
                                                                      p.VAR_POSITIONAL)]
    return not open_


def build_rewards(specs) -> list[BoundReward]:
    """Bind the recipe's `rewards:` entries (fn, weight, name, kwargs, factory); option mistakes fail here, early."""
    out, names = [], set()
    for spec in specs:
        factory = getattr(spec, "factory", False)
        fn = resolve(spec.fn, dict(spec.kwargs) if factory else None)
        validate = getattr(fn, "validate_kwargs", None)  # a reward's own option checks, run before anything starts
        if validate is not None and not factory:
            validate(spec.kwargs)
        if spec.kwargs and not factory:
            if _takes_no_traces(fn, spec.kwargs):
                raise UserError(f"reward '{spec.fn}': kwargs fill every parameter, so nothing receives the completions; "
                                "if it is a factory that returns the reward function, add `factory: true` to its entry")
            params = inspect.signature(fn).parameters
            has_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
            unknown = [k for k in spec.kwargs if k not in params and not has_var_kw]
            if unknown:
                raise UserError(f"reward '{spec.fn}' has no argument '{unknown[0]}' (rewards[].kwargs)")
            fn = functools.partial(fn, **spec.kwargs)
        name = spec.name or (spec.fn if isinstance(spec.fn, str) else getattr(spec.fn, "__name__", "reward"))
        if name in names:
            raise UserError(f"reward name '{name}' is used twice; give one a distinct 'name'")
        names.add(name)
        out.append(BoundReward(name, fn, spec.weight))
    return out


def score(traces, rewards: list[BoundReward], ctx: RewardContext) -> None:
    """Fill trace.rewards[name] for every reward and trace.reward = sum of weight * value (None skipped)."""
    for r in rewards:
        try:
            values = r.fn(traces, ctx)
            if inspect.isawaitable(values):  # an async reward (TRL allows them)
                values = asyncio.run(values)
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"reward '{r.name}' raised {type(e).__name__}: {e}") from None
        values = list(values) if values is not None else []
        if len(values) != len(traces):
            raise UserError(f"reward '{r.name}' returned {len(values)} values for {len(traces)} completions")
        for i, (tr, v) in enumerate(zip(traces, values)):
            if v is not None:
                if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:  # numpy / torch scalars
                    v = v.item()
                if isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(v) or math.isinf(v):
                    raise UserError(f"reward '{r.name}' returned {v!r} for completion {i} (trace {tr.id}); "
                                    "expected a finite number or None")
                v = float(v)
            tr.rewards[r.name] = v
    for tr in traces:
        tr.reward = sum(r.weight * tr.rewards[r.name] for r in rewards if tr.rewards.get(r.name) is not None)
