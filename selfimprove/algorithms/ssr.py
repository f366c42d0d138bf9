"""SSR / SSR-Zero: simple self-rewarding RL (Yang et al., arXiv 2505.16637; algorithms.md section 3).

GRPO in which the reward comes from the policy itself: each candidate is judged by the *current*
model through the same engine (the `self_judge` reward, after the previous step's update reached
it), optionally mixed with an external reference-free scorer (SSR-X: `comet_kiwi`, or a trained
Self-J judge, `judge_model`). The parts and their weights are the recipe's `rewards:` list (so
w_self and w_external are `rewards[].weight`, and each part is logged); this module adds the format
gate (3.2): a candidate whose format check fails gets `format_failure` instead of the weighted sum,
and is never sent to the judge (`self_judge(only_if=...)`). Then the GRPO advantage and clipped
surrogate (3.3), unchanged. The paper's exact combination is unverified (3.2); the gate follows the
R1-Zero convention "reward only well-formed answers", and format_failure is an option.
"""

from __future__ import annotations

from dataclasses import dataclass

from selfimprove.algorithms import Algorithm, grpo
from selfimprove.errors import UserError
from selfimprove.options import opt


@dataclass
class Config(grpo.Config):
    name: str = opt("ssr", "the method")
    format_reward: str | None = opt("think_format", "name of the gating reward in rewards[]; null: no gate")
    format_failure: float = opt(0.0, "reward of a candidate that fails the format check")


def gate(traces, cfg: Config) -> None:
    """trace.reward = format_failure where the format check failed (the weighted sum elsewhere)."""
    if cfg.format_reward is None:
        return
    for tr in traces:
        if cfg.format_reward not in tr.rewards:
            raise UserError(f"algorithm.format_reward '{cfg.format_reward}' is not one of the recipe's rewards "
                            f"({', '.join(tr.rewards)})")
        ok = tr.rewards[cfg.format_reward]
        if ok is None or ok < 1.0:
            tr.reward = cfg.format_failure


def prepare(traces, cfg: Config):
    gate(traces, cfg)
    return grpo.prepare(traces, cfg)


ALGORITHM = Algorithm(name="ssr", Config=Config, prepare=prepare, loss=grpo.loss, check=grpo.check,
                      needs_reference=grpo.needs_reference, zero_loss=grpo.zero_loss,
                      needs_groups=grpo.needs_groups)
