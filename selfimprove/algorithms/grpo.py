"""GRPO (Shao et al., arXiv 2402.03300) and Dr. GRPO (Liu et al., arXiv 2503.20783) from one loss.

Advantage per sample: A_i = (r_i - mean(r)) / (std(r) + delta) over its group (scale_rewards
"group"), over the whole batch ("batch"), or r_i - mean(r) unscaled ("none", Dr. GRPO). The loss is
the clipped surrogate per token with rho = pi_theta / pi_old (pi_old = the sampler's log-probs):

    l_t = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) + beta * KL_t(pi_theta || pi_ref)

aggregated as token-mean (DAPO / TRL's default), seq-mean (the original paper) or dr-grpo (sum /
(sequences x max_new_tokens)). Dr. GRPO = scale_rewards none + loss_agg dr-grpo. KL is optional
(beta = 0 by default, as in TRL and DAPO) against a frozen reference, in one of three forms (common.py):
  kl_in loss,   k3:   beta * k3 per token; gradient (1 - ref/pi) grad log pi, in expectation grad KL(ref || pi)
  kl_in loss,   full: beta * the exact sum_v pi (log pi - log ref) per position; gradient of KL(pi || ref)
  kl_in reward, k1:   r - beta * sum_t (log pi_old - log ref) before the advantage; gradient of KL(pi || ref)
k1 as a loss term has zero expected gradient and is refused. filter_groups with max_refill_rounds > 0 is
DAPO's dynamic sampling: more prompts are sampled until prompts_per_step groups carry signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from selfimprove.algorithms import Algorithm
from selfimprove.algorithms.common import (
    KL_ESTIMATORS,
    KL_HELP,
    KL_IN_HELP,
    LOSS_AGGREGATIONS,
    MASK_TRUNCATED_HELP,
    REFILL_HELP,
    choice_errors,
    group_advantages,
    groups,
    kl_errors,
    kl_term,
    refill_errors,
)
from selfimprove.options import opt


@dataclass
class Config:
    name: str = opt("grpo", "the method")
    clip_low: float = opt(0.2, "eps_low")
    clip_high: float = opt(0.2, "eps_high (DAPO's clip-higher: 0.28)")
    scale_rewards: str = opt("group", "group | batch | none (Dr. GRPO)")
    std: str = opt("sample", "sample (unbiased, TRL/verl) | population")
    loss_agg: str = opt("token-mean", "token-mean | seq-mean | dr-grpo | constant")
    loss_constant: float = opt(1000.0, "divisor for loss_agg = constant")
    mask_truncated: bool = opt(False, MASK_TRUNCATED_HELP)
    kl_coef: float = opt(0.0, "beta; > 0 loads a frozen reference model")
    kl_estimator: str = opt("k3", KL_HELP)
    kl_in: str = opt("loss", KL_IN_HELP)
    filter_groups: bool = opt(False, "drop groups with all-equal rewards (zero advantage)")
    max_refill_rounds: int = opt(0, REFILL_HELP)


def check(cfg: Config) -> list[str]:
    errs = choice_errors(cfg, {"scale_rewards": ("group", "batch", "none"), "std": ("sample", "population"),
                               "loss_agg": LOSS_AGGREGATIONS, "kl_estimator": KL_ESTIMATORS})
    if cfg.kl_coef < 0 or cfg.clip_low < 0 or cfg.clip_high < 0:
        errs.append("algorithm.kl_coef, clip_low and clip_high must be >= 0")
    if cfg.loss_constant <= 0:
        errs.append(f"algorithm.loss_constant must be > 0, got {cfg.loss_constant}")
    return errs + kl_errors(cfg.kl_estimator, cfg.kl_in, cfg.kl_coef > 0) + refill_errors(cfg)


def needs_reference(cfg: Config) -> bool:
    return cfg.kl_coef > 0


def prepare(traces, cfg: Config):
    kept = []
    if cfg.scale_rewards == "batch":
        all_r = torch.tensor([tr.reward for tr in traces], dtype=torch.float64)
        batch_sd = all_r.std(unbiased=(cfg.std == "sample")) if len(traces) > 1 else torch.zeros(())
    for group in groups(traces).values():
        r = torch.tensor([tr.reward for tr in group], dtype=torch.float64)
        if cfg.filter_groups and bool((r == r[0]).all()):
            continue
        if cfg.kl_in == "reward" and cfg.kl_coef > 0:  # k1 in the reward (the groups were filtered on r alone)
            r = r - cfg.kl_coef * torch.tensor([sum(tr.meta.get("kl.k1", [0.0])) for tr in group], dtype=r.dtype)
        if bool((r == r[0]).all()):
            adv = torch.zeros_like(r)  # exactly zero, whatever the float rounding of the mean
        elif cfg.scale_rewards == "batch":
            adv = (r - r.mean()) / (batch_sd + 1e-4)
        else:
            adv = group_advantages(r, cfg.scale_rewards, cfg.std)
        for tr, a in zip(group, adv.tolist()):
            tr.advantage = a
            kept.append(tr)
    return kept


def zero_loss(trace, cfg: Config) -> bool:
    """True when the trace's loss and gradient are exactly zero (advantage 0, no KL term): the loop
    then skips its forward/backward but still counts its tokens in the aggregation, so the gradient
    is unchanged. Groups with all-equal rewards (a third to a half of them, typically) cost nothing."""
    return (cfg.kl_coef == 0 or cfg.kl_in == "reward") and trace.advantage == 0.0


def token_loss(logp, old_logp, advantage, cfg: Config, kl=None):
    """Per-token clipped-surrogate loss [B, T] (+ beta * kl, the per-token KL term [B, T]). advantage [B]."""
    ratio = torch.exp(logp - old_logp)
    adv = advantage[:, None]
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high) * adv
    tok = -torch.minimum(unclipped, clipped)
    if kl is not None:
        tok = tok + cfg.kl_coef * kl
    return tok


def loss(batch, logp, cfg: Config):
    in_loss = cfg.kl_coef > 0 and cfg.kl_in == "loss"
    kl = kl_term(batch, logp, cfg.kl_estimator) if in_loss else None
    tok = token_loss(logp, batch["old_logp"], batch["advantage"], cfg, kl)
    with torch.no_grad():
        m = batch["mask"]
        n = m.sum().clamp(min=1)
        ratio = torch.exp(logp - batch["old_logp"])
        clipped = ((ratio < 1 - cfg.clip_low) | (ratio > 1 + cfg.clip_high)).float() * m
        metrics = {"clip_frac": float(clipped.sum() / n)}
        if kl is not None:
            metrics["kl"] = float((kl * m).sum() / n)
    return tok, metrics


def needs_groups(cfg: Config) -> str:
    return "the advantage is the reward minus its group's mean"


ALGORITHM = Algorithm(name="grpo", Config=Config, prepare=prepare, loss=loss, check=check,
                      needs_reference=needs_reference, zero_loss=zero_loss, needs_groups=needs_groups)
