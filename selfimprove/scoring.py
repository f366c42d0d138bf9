"""Apply the recipe's rewards to traces: each part by name, then the weighted sum."""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Callable

from reward import RewardContext, resolve
from selfimprove.errors import UserError


@dataclass
class BoundReward:
    name: str
    fn: Callable
    weight: float


def build_rewards(specs) -> list[BoundReward]:
    out, names = [], set()
    for spec in specs:
        fn = resolve(spec.fn)
        validate = getattr(fn, "validate_kwargs", None)  # a reward's own option checks, run before anything starts
        if validate is not None:
            validate(spec.kwargs)
        if spec.kwargs:
            params = inspect.signature(fn).parameters
            has_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
            unknown = [k for k in spec.kwargs if k not in params and not has_var_kw]
            if unknown:
                raise UserError(f"reward '{spec.fn}' has no argument '{unknown[0]}' (rewards[].kwargs)")
            fn = functools.partial(fn, **spec.kwargs)
        name = spec.name or spec.fn
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
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"reward '{r.name}' raised {type(e).__name__}: {e}") from None
        values = list(values) if values is not None else []
        if len(values) != len(traces):
            raise UserError(f"reward '{r.name}' returned {len(values)} values for {len(traces)} completions")
        for i, (tr, v) in enumerate(zip(traces, values)):
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or math.isinf(v):
                    raise UserError(f"reward '{r.name}' returned {v!r} for completion {i} (trace {tr.id}); expected a finite number or None")
                v = float(v)
            tr.rewards[r.name] = v
    for tr in traces:
        tr.reward = sum(r.weight * tr.rewards[r.name] for r in rewards if tr.rewards.get(r.name) is not None)
