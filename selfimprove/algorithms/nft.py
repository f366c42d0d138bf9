"""NFT: Negative-aware Fine-Tuning (Chen et al., arXiv 2505.18116). Reference code: NVlabs/NFT dp_actor.py.

Per token t of answer a to question q, with R = pi_theta / pi_old and r_hat the group's correct rate
(algorithms.md 2.3):

    L = -(1/Z) sum omega(q) sum_t [ r log R + (1 - r) log max_v((1 - r_hat R) / (1 - r_hat), eps) ]

max_v clips the value from below at eps but keeps the gradient of its argument. The negative term
trains the implicit negative policy pi^- = (pi_old - r_hat pi^+)/(1 - r_hat), which pushes pi_theta down
on wrong answers without a second model. neg_weight = 0 gives RFT (see rft.py).
Details from the official code: the log-ratio is clamped at 10 before exp, r_hat is clamped to
[0.02, 0.98], groups with r_hat in {0, 1} are dropped (DAPO dynamic sampling; `max_refill_rounds` > 0
samples more prompts until prompts_per_step groups remain, as the code's up to 10 generation batches),
omega = 1 - r_hat by default (Dr.GRPO-equivalent on-policy), sqrt((1-r_hat)/r_hat) = GRPO-equivalent.
pi_old: the code recomputes it on the trainer before the update and uses no importance weight:
`old_logprobs: trainer` (the default with a vLLM engine, whose log-probs differ from the trainer's, so R != 1
on-policy); with the hf engine the sampler's log-probs are the trainer's own and `auto` keeps them.
What we change: Z defaults to the token count (the paper's "token-level normalisation"); the code's
constant divisor is `loss_agg: constant, loss_constant: 1000` (its gradient under W processes is the
code's: token sum / (1000 W), see common.aggregate).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from selfimprove.algorithms import Algorithm
from selfimprove.algorithms.common import (
    MASK_TRUNCATED_HELP,
    REFILL_HELP,
    choice_errors,
    clamp_preserve_grad,
    groups,
    refill_errors,
)
from selfimprove.options import opt
from selfimprove.rollout import is_correct

META_KEYS = ("nft.correct", "nft.correct_rate")


@dataclass
class Config:
    name: str = opt("nft", "the method")
    epsilon: float = opt(1.0, "eps of max_v (code: clamp_negative); eps -> 0 over-penalises")
    omega: str = opt("1-r", "prompt weight: '1-r' (default) | 'sqrt' ((1-r)/r)^0.5 | '1'")
    neg_weight: float = opt(1.0, "1 = NFT, 0 = RFT (no negative term)")
    rhat_min: float = opt(0.02, "lower r_hat clamp inside the loss (code)")
    rhat_max: float = opt(0.98, "upper r_hat clamp")
    max_log_ratio: float = opt(10.0, "clamp of log R before exp (code)")
    correct_threshold: float = opt(0.5, "a sample is correct when its combined reward >= this")
    filter_groups: bool = opt(True, "drop groups whose samples are all correct or all wrong")
    max_refill_rounds: int = opt(0, REFILL_HELP)
    old_logprobs: str = opt("auto", "pi_old: trainer (recomputed by the trainer before the update, no importance "
                            "weight: the reference code) | sampler (the engine's log-probs) | auto (trainer with a "
                            "vllm backend, sampler with hf, where the two are the same)")
    loss_agg: str = opt("token-mean", "token-mean | seq-mean | constant")
    loss_constant: float = opt(1000.0, "divisor for loss_agg = constant (the code's /1000)")
    mask_truncated: bool = opt(False, MASK_TRUNCATED_HELP)


def check(cfg: Config) -> list[str]:
    errs = choice_errors(cfg, {"omega": ("1-r", "sqrt", "1"), "loss_agg": ("token-mean", "seq-mean", "constant"),
                               "old_logprobs": ("auto", "trainer", "sampler")})
    if not 0 < cfg.rhat_min <= cfg.rhat_max < 1:
        errs.append("algorithm.rhat_min/rhat_max must satisfy 0 < min <= max < 1")
    if cfg.epsilon <= 0:
        errs.append("algorithm.epsilon must be > 0")
    if not 0 < cfg.max_log_ratio <= 80:  # exp(80) still fits float32; a larger clamp overflows to inf
        errs.append(f"algorithm.max_log_ratio must be in (0, 80], got {cfg.max_log_ratio}")
    if cfg.neg_weight < 0 or cfg.loss_constant <= 0:
        errs.append("algorithm.neg_weight must be >= 0 and algorithm.loss_constant > 0")
    return errs + refill_errors(cfg)


def prepare(traces, cfg: Config):
    """Label correctness, compute each group's correct rate, drop uninformative groups."""
    kept = []
    for group in groups(traces).values():
        correct = [1.0 if is_correct(tr, None, cfg.correct_threshold) else 0.0 for tr in group]
        rate = sum(correct) / len(correct)
        if cfg.filter_groups and rate in (0.0, 1.0):
            continue
        for tr, c in zip(group, correct):
            tr.meta["nft.correct"] = c
            tr.meta["nft.correct_rate"] = rate
            kept.append(tr)
    return kept


def omega(rhat: torch.Tensor, form: str) -> torch.Tensor:
    if form == "1-r":
        return 1.0 - rhat
    if form == "sqrt":
        return torch.sqrt((1.0 - rhat) / rhat)
    return torch.ones_like(rhat)


def token_loss(logp, old_logp, correct, correct_rate, cfg: Config):
    """Per-token NFT loss [B, T]. logp/old_logp [B, T]; correct/correct_rate [B]."""
    log_ratio = (logp - old_logp).clamp(max=cfg.max_log_ratio)
    ratio = torch.exp(log_ratio)
    rhat = correct_rate.clamp(cfg.rhat_min, cfg.rhat_max)[:, None]
    r = correct[:, None]
    pos = -log_ratio  # -log R: plain NLL on positives up to a constant
    x = (1.0 - rhat * ratio) / (1.0 - rhat)
    neg = -torch.log(clamp_preserve_grad(x, cfg.epsilon))
    return omega(rhat, cfg.omega) * (r * pos + cfg.neg_weight * (1.0 - r) * neg)


def loss(batch, logp, cfg: Config):
    tok = token_loss(logp, batch["old_logp"], batch["nft.correct"], batch["nft.correct_rate"], cfg)
    with torch.no_grad():
        m = batch["mask"]
        ratio = torch.exp(logp - batch["old_logp"]) * m
        metrics = {"ratio_mean": float(ratio.sum() / m.sum().clamp(min=1))}
    return tok, metrics


def needs_groups(cfg: Config) -> str | None:
    return "algorithm.filter_groups drops groups whose samples are all correct or all wrong" if cfg.filter_groups else None


ALGORITHM = Algorithm(name="nft", Config=Config, prepare=prepare, loss=loss, check=check, meta_keys=META_KEYS,
                      needs_groups=needs_groups)
