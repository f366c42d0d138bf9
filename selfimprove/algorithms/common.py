"""Pure tensor math shared by the algorithms: group statistics, loss aggregation, KL estimators."""

from __future__ import annotations

import torch

from selfimprove.trace import groups

__all__ = ["groups", "frac_all_equal", "group_advantages", "aggregate", "kl_penalty", "kl_term", "exact_kl",
           "kl_errors", "sequence_kl", "clamp_preserve_grad", "choice_errors", "LOSS_AGGREGATIONS", "KL_ESTIMATORS",
           "KL_IN", "KL_HELP", "KL_IN_HELP", "MASK_TRUNCATED_HELP", "REFILL_HELP", "refill_errors"]

LOSS_AGGREGATIONS = ("token-mean", "seq-mean", "dr-grpo", "constant")
MASK_TRUNCATED_HELP = ("no loss on traces with an attempt cut at max_new_tokens (DAPO's overlong filtering); "
                       "they still count in group baselines")
REFILL_HELP = ("DAPO's dynamic sampling: after filter_groups drops groups, sample up to this many more rounds of "
               "prompts_per_step prompts (the next ones of the data) until prompts_per_step groups carry signal "
               "(surplus groups are dropped); 0: the batch just shrinks")
KL_ESTIMATORS = ("k1", "k3", "full")
KL_IN = ("loss", "reward")
KL_HELP = ("k3 (in the loss; its gradient pulls along KL(ref || pi)) | full (in the loss: the exact per-token "
           "KL(pi || ref) over the vocabulary, gradient of KL(pi || ref)) | k1 (only with kl_in: reward)")
KL_IN_HELP = ("loss: the KL estimate is a term of the loss (k3, full) | reward: beta x the sequence's summed k1 "
              "is subtracted from its reward before the advantage (PPO/verl's reward KL; k1 only)")


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
              max_new_tokens: int, constant: float, processes: int = 1) -> torch.Tensor:
    """Reduce a [B, T] per-token loss to a scalar whose *global* value is the chosen mean.

    n_tokens / n_seqs are counts over the whole mini-batch on all processes, so micro-batching and
    data parallelism give the same gradient as one big batch:
      token-mean  sum / (loss tokens)                       (DAPO, TRL "dapo", verl "token-mean")
      seq-mean    sum over sequences of their token mean / sequences   (original GRPO)
      dr-grpo     sum / (sequences * max_new_tokens)       (Dr. GRPO's constant, as TRL "dr_grpo")
      constant    sum / (constant * processes)             (NFT's code divides by 1000)

    The loop scales each process's backward by the number of processes W (DDP averages gradients), so the
    first three are the global mean under any W. NFT's reference divides each rank's token sum by 1000 and
    FSDP *averages* the ranks: its gradient is (global token sum) / (1000 W). `constant` divides by
    constant * W to give that same gradient (not W times it) under any number of processes.
    """
    masked = tok_loss * mask
    if mode == "token-mean":
        return masked.sum() / max(n_tokens, 1.0)
    if mode == "seq-mean":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / max(n_seqs, 1.0)
    if mode == "dr-grpo":
        return masked.sum() / max(n_seqs * max_new_tokens, 1.0)
    if mode == "constant":
        return masked.sum() / (constant * processes)
    raise ValueError(f"unknown loss aggregation '{mode}' ({', '.join(LOSS_AGGREGATIONS)})")


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL(pi || ref) estimate on sampled tokens (Schulman's k1 / k3); its value, whatever the use.

    k1 = log pi - log ref. Its expected gradient as a loss term is E_pi[grad log pi] = 0: it belongs in the
    reward (`sequence_kl`), never in the loss (`kl_errors` refuses that).
    k3 = ref/pi - log(ref/pi) - 1 >= 0. As a loss term its gradient per sampled token is (1 - ref/pi) grad log pi,
    whose expectation under pi is grad KL(ref || pi), not grad KL(pi || ref) (Tang & Munos, arXiv 2506.09477):
    a mode-covering pull towards the reference, the common practice (GRPO, DeepSeekMath).
    """
    delta = ref_logp - logp
    if estimator == "k1":
        return -delta
    if estimator == "k3":
        return torch.exp(delta) - delta - 1.0
    raise ValueError(f"unknown KL estimator '{estimator}' on sampled tokens (k1, k3)")


def kl_term(batch: dict, logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """The per-token [B, T] KL term of the loss: `full` is the exact KL from the whole distributions (the
    policy's log-softmax the forward pass kept, the reference's of the same micro-batch; computed once per
    batch), k3 the sampled-token estimate against batch["ref_logp"]."""
    if estimator == "full":
        if "kl_full" not in batch:
            batch["kl_full"] = exact_kl(batch["policy_logsoftmax"], batch["ref_logsoftmax"])
        return batch["kl_full"]
    return kl_penalty(logp, batch["ref_logp"], estimator)


class _ExactKL(torch.autograd.Function):
    """sum_v p_v (log p_v - log q_v) per row, computed in row chunks. Only the two inputs are kept for the
    backward (no [N, V] intermediates): d/d(log p_v) = p_v (log p_v - log q_v + 1), which the log-softmax's
    own backward turns into p_v (log p_v - log q_v - KL) on the logits, the gradient of the true KL."""

    CHUNK = 256

    @staticmethod
    def forward(ctx, logp, ref_logp):
        out = torch.empty(logp.shape[0], dtype=logp.dtype, device=logp.device)
        for i in range(0, logp.shape[0], _ExactKL.CHUNK):
            lp, lq = logp[i : i + _ExactKL.CHUNK], ref_logp[i : i + _ExactKL.CHUNK]
            out[i : i + _ExactKL.CHUNK] = (lp.exp() * (lp - lq)).sum(-1)
        ctx.save_for_backward(logp, ref_logp)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        logp, ref_logp = ctx.saved_tensors
        grad = torch.empty_like(logp)
        for i in range(0, logp.shape[0], _ExactKL.CHUNK):
            lp, lq = logp[i : i + _ExactKL.CHUNK], ref_logp[i : i + _ExactKL.CHUNK]
            grad[i : i + _ExactKL.CHUNK] = grad_out[i : i + _ExactKL.CHUNK, None] * lp.exp() * (lp - lq + 1.0)
        return grad, None


def exact_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Exact per-position KL(pi || ref) = sum_v pi(v) (log pi(v) - log ref(v)) over the vocabulary.
    logp [..., V] the policy's log-softmax (with its graph), ref_logp [..., V] the reference's (no grad);
    returns [...]. Its gradient is that of the true KL(pi || ref) at each position."""
    shape = logp.shape[:-1]
    flat = _ExactKL.apply(logp.reshape(-1, logp.shape[-1]), ref_logp.detach().reshape(-1, ref_logp.shape[-1]))
    return flat.reshape(shape)


def sequence_kl(logp: list[float], ref_logp: list[float]) -> float:
    """The summed k1 = sum_t (log pi_old - log ref) over a sequence's sampled tokens: a detached reward penalty.
    REINFORCE on r - beta * k1_sum has the expected gradient grad E[r] - beta grad KL(pi || ref) of the
    sequence (E_pi[grad log pi(y) log(pi(y)/ref(y))] = grad KL(pi || ref)), as PPO's / verl's reward KL."""
    return float(sum(a - b for a, b in zip(logp, ref_logp)))


def refill_errors(cfg) -> list[str]:
    if cfg.max_refill_rounds < 0:
        return [f"algorithm.max_refill_rounds must be >= 0, got {cfg.max_refill_rounds}"]
    if cfg.max_refill_rounds and not cfg.filter_groups:
        return ["algorithm.max_refill_rounds refills the groups that filter_groups drops: set algorithm.filter_groups "
                "true (or max_refill_rounds 0)"]
    return []


def kl_errors(estimator: str, kl_in: str, active: bool, prefix: str = "algorithm.") -> list[str]:
    """The KL options' value errors: k1 is correct only as a reward penalty, k3 and full only in the loss."""
    errs = []
    if kl_in not in KL_IN:
        errs.append(f"{prefix}kl_in must be one of {', '.join(KL_IN)}, got '{kl_in}'")
    elif active and kl_in == "loss" and estimator == "k1":
        errs.append(f"{prefix}kl_estimator=k1 in the loss has zero expected gradient (E[grad log pi] = 0); k1 is "
                    f"correct as a reward penalty: set {prefix}kl_in=reward, or use k3 or full in the loss")
    elif active and kl_in == "reward" and estimator != "k1":
        errs.append(f"{prefix}kl_in=reward subtracts the sampled log-ratio (k1) from the reward; "
                    f"{prefix}kl_estimator={estimator} belongs in the loss (kl_in=loss)")
    return errs


def clamp_preserve_grad(x: torch.Tensor, min: float) -> torch.Tensor:
    """max(x, min) in the forward pass, the gradient of x in the backward pass (NFT's max_v)."""
    return x + (x.clamp(min=min) - x).detach()
