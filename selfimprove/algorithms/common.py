"""Pure tensor math shared by the algorithms: group statistics, loss aggregation, KL estimators."""

from __future__ import annotations

import torch

from selfimprove.trace import groups

__all__ = ["groups", "frac_all_equal", "group_advantages", "aggregate", "kl_penalty", "clamp_preserve_grad",
           "choice_errors", "LOSS_AGGREGATIONS", "KL_ESTIMATORS", "MASK_TRUNCATED_HELP"]

LOSS_AGGREGATIONS = ("token-mean", "seq-mean", "dr-grpo", "constant")
MASK_TRUNCATED_HELP = ("no loss on traces with an attempt cut at max_new_tokens (DAPO's overlong filtering); "
                       "they still count in group baselines")
KL_ESTIMATORS = ("k1", "k3")


def choice_errors(cfg, choices: dict[str, tuple]) -> list[str]:
    """One message per config field whose value is not among its allowed choices."""
    return [f"algorithm.{key} must be one of {', '.join(map(str, allowed))}, got '{getattr(cfg, key)}'"
            for key, allowed in choices.items() if getattr(cfg, key) not in allowed]


def frac_all_equal(traces) -> float:
    """Fraction of groups whose rewards are all equal: they carry no signal under a group baseline."""
    gs = groups(traces)
    if not gs:
        return 0.0
    return sum(len({tr.reward for tr in g}) == 1 for g in gs.values()) / len(gs)


def group_advantages(rewards: torch.Tensor, scale: str = "group", std: str = "sample", eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantages for one [G] group: (r - mean) / (std + eps), or r - mean when scale == "none".

    std "sample" is the unbiased estimate (TRL, verl); "population" divides by G, which makes GRPO
    exactly NFT with omega = sqrt((1 - r)/r) on binary rewards (algorithms.md 2.4).
    """
    centered = rewards - rewards.mean()
    if scale == "none":
        return centered
    sd = rewards.std(unbiased=(std == "sample")) if rewards.numel() > 1 else torch.zeros(())
    return centered / (sd + eps)


def aggregate(tok_loss: torch.Tensor, mask: torch.Tensor, mode: str, n_tokens: float, n_seqs: float,
              max_new_tokens: int, constant: float) -> torch.Tensor:
    """Reduce a [B, T] per-token loss to a scalar whose *global* value is the chosen mean.

    n_tokens / n_seqs are counts over the whole mini-batch on all processes, so micro-batching and
    data parallelism give the same gradient as one big batch:
      token-mean  sum / (loss tokens)                       (DAPO, TRL "dapo", verl "token-mean")
      seq-mean    sum over sequences of their token mean / sequences   (original GRPO)
      dr-grpo     sum / (sequences * max_new_tokens)       (Dr. GRPO's constant, as TRL "dr_grpo")
      constant    sum / constant                           (NFT's code divides by 1000)
    """
    masked = tok_loss * mask
    if mode == "token-mean":
        return masked.sum() / max(n_tokens, 1.0)
    if mode == "seq-mean":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / max(n_seqs, 1.0)
    if mode == "dr-grpo":
        return masked.sum() / max(n_seqs * max_new_tokens, 1.0)
    if mode == "constant":
        return masked.sum() / constant
    raise ValueError(f"unknown loss aggregation '{mode}' ({', '.join(LOSS_AGGREGATIONS)})")


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL(pi || ref) estimate on sampled tokens (Schulman's k1 / k3)."""
    delta = ref_logp - logp
    if estimator == "k1":
        return -delta
    if estimator == "k3":
        return torch.exp(delta) - delta - 1.0
    raise ValueError(f"unknown KL estimator '{estimator}' (k1, k3)")


def clamp_preserve_grad(x: torch.Tensor, min: float) -> torch.Tensor:
    """max(x, min) in the forward pass, the gradient of x in the backward pass (NFT's max_v)."""
    return x + (x.clamp(min=min) - x).detach()
