"""No-gradient log-prob passes before the update: the frozen reference's and the trainer's own, and the
engine/trainer mismatch correction built on the latter."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from selfimprove.batch import collate, micro_batches, token_logprobs
from selfimprove.distributed import equal_counts, pad_forward, zero_stage


def forward_logprobs(accelerator, module, traces, micro_batch_size: int, pad_id: int,
                     context=nullcontext) -> list[list[float]]:
    """No-grad log-probs of every target position, per trace. `module` is never the DDP wrapper (its
    forward broadcasts buffers: a collective, and processes hold different numbers of traces); under
    ZeRO-3 every forward gathers parameters collectively, so all processes run as many micro-batches
    (padded with a one-token forward)."""
    out = []
    chunks = equal_counts(accelerator, micro_batches(traces, micro_batch_size), zero_stage(accelerator) == 3)
    for chunk in chunks:
        with torch.no_grad(), context():
            if not chunk:
                pad_forward(module, pad_id, accelerator.device)
                continue
            batch = collate(chunk, pad_id, device=accelerator.device)
            out.extend(token_logprobs(module, batch).cpu().tolist())
    return out


def reference_logprobs(accelerator, model, ref_model, traces, micro_batch_size: int, pad_id: int,
                       lora: bool) -> list[list[float]]:
    """Reference-model log-probs, stored per trace for collation; with LoRA the reference is the policy
    with its adapters switched off (no second copy)."""
    module = accelerator.unwrap_model(model) if lora else ref_model
    return forward_logprobs(accelerator, module, traces, micro_batch_size, pad_id,
                            module.disable_adapter if lora else nullcontext)


def policy_logprobs(accelerator, model, traces, micro_batch_size: int, pad_id: int) -> list[list[float]]:
    """The trainer's own log-probs of the sampled tokens, before the update."""
    return forward_logprobs(accelerator, accelerator.unwrap_model(model), traces, micro_batch_size, pad_id)


def pad_rows(rows, width: int, device) -> torch.Tensor:
    """Per-trace lists as a zero-padded [B, width] tensor (aligned with collate's target columns)."""
    out = torch.zeros((len(rows), width))
    for i, r in enumerate(rows):
        out[i, : min(len(r), width)] = torch.tensor(r[:width])
    return out.to(device)


def mismatch_weights(batch, trainer_lp: torch.Tensor, mode: str, cap: float) -> tuple[torch.Tensor, dict]:
    """Engine/trainer mismatch correction: the samples came from the engine's pi_engine, the loss
    is built on the trainer's pi_old. The trainer's log-probs become old_logp (so the ratio compares
    the trainer with itself) and each token is weighted by w = pi_old / pi_engine, truncated at
    `cap` for `tis` (Yao et al. 2025, "truncated importance sampling": min(w, C))."""
    mask = batch["mask"]
    log_w = (trainer_lp - batch["old_logp"]) * mask
    w = torch.exp(log_w)
    clipped = (w > cap) & (mask > 0)
    if mode == "tis":
        w = w.clamp(max=cap)
    batch["old_logp"] = trainer_lp
    n = mask.sum().clamp(min=1)
    stats = {"mismatch/is_weight_mean": float((w * mask).sum() / n), "mismatch/clipped_frac": float(clipped.sum() / n),
             "mismatch/abs_log_ratio": float(log_w.abs().sum() / n)}
    return w * mask, stats
