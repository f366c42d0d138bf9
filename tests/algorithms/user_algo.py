"""The README's "Adding an algorithm" example, verbatim: an algorithm from outside the registry
(`algorithm: {name: tests.algorithms.user_algo}`), used by tests/test_loop.py."""

from dataclasses import dataclass

import torch

from selfimprove.algorithms import Algorithm
from selfimprove.options import opt
from selfimprove.trace import groups


@dataclass
class Config:
    name: str = opt("mine", "the method")
    loss_agg: str = opt("token-mean", "token-mean | seq-mean | dr-grpo | constant")
    loss_constant: float = opt(1000.0, "divisor for loss_agg = constant")


def prepare(traces, cfg):             # advantages from the group's rewards
    for group in groups(traces).values():
        mean = sum(t.reward for t in group) / len(group)
        for t in group:
            t.advantage = t.reward - mean
    return traces


def loss(batch, logp, cfg):           # per-token loss [B, T]; the loop aggregates it
    return -torch.exp(logp - batch["old_logp"]) * batch["advantage"][:, None], {}


ALGORITHM = Algorithm(name="mine", Config=Config, prepare=prepare, loss=loss)
