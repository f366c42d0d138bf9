"""The optimizer and the learning-rate schedule, shared by the loop and the offline programs."""

from __future__ import annotations

import math

import torch

from selfimprove.distributed import offloads_optimizer


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int, infinite: tuple | None = None):
    """The multiplier of the peak learning rate at optimizer step i: linear warm-up over `warmup_steps`,
    then constant, linear decay to 0, or cosine decay to 0 at `total_steps`; or the infinite schedule
    (`infinite` = (cooldown, constant ratio, anneal, min ratio); `infinite_lambda`)."""
    total, warm = max(total_steps, 1), warmup_steps
    if schedule == "infinite":
        return infinite_lambda(warm, total, *infinite)

    def f(i: int) -> float:
        if i < warm:
            return (i + 1) / warm
        frac = (i - warm) / max(total - warm, 1)
        if schedule == "linear":
            return max(0.0, 1.0 - frac)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))
        return 1.0

    return f


def infinite_lambda(warm: int, total: int, cooldown: int, const: float, anneal: int, floor: float):
    """The infinite learning-rate schedule (Ibrahim et al., arXiv 2403.08763, sec. 7): linear warm-up to the
    peak, a cosine cool-down to `const` x peak, a constant phase of any length, and a linear annealing to
    `floor` x peak over the run's last `anneal` steps. Only the annealing depends on where the run ends, so a
    later round that continues the checkpoint saved where the annealing starts, with a larger
    train.steps, stays on the constant rate: no re-warming between rounds of self-generated data."""
    start = total - anneal if anneal else math.inf  # the first annealing step (none: the run ends constant)

    def f(i: int) -> float:
        if i < warm:
            return (i + 1) / warm
        if i >= start:  # the scheduler's step after the run's last (i = total) stays at the floor
            return const + (floor - const) * min(i - start + 1, anneal) / anneal
        if i < warm + cooldown:
            return const + (1 - const) * 0.5 * (1 + math.cos(math.pi * (i - warm + 1) / cooldown))
        return const

    return f


def anneal_start(t) -> int | None:
    """The rollout step where an infinite schedule's annealing starts (its checkpoint: the next round's
    start), or None."""
    if getattr(t, "lr_schedule", "") != "infinite" or not t.lr_anneal_steps:
        return None
    return t.steps - t.lr_anneal_steps // t.mini_batches


def make_optimizer(params, opt_cfg, accelerator=None):
    """AdamW from a config with lr, adam_beta1/2, weight_decay; under ZeRO-Offload DeepSpeed's CPU Adam
    (the optimizer states live in CPU memory, and DeepSpeed refuses a torch optimizer there by default:
    a per-tensor CPU step is several times slower)."""
    t = opt_cfg
    kwargs = dict(lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), weight_decay=t.weight_decay)
    if accelerator is not None and offloads_optimizer(accelerator):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, adamw_mode=True, **kwargs)
    device = accelerator.device.type if accelerator is not None else "cpu"
    # the fused kernel: one pass over all parameters (5x faster than the per-tensor loop on CPU)
    return torch.optim.AdamW(params, fused=device in ("cpu", "cuda"), **kwargs)


def make_scheduler(optimizer, opt_cfg, total_steps: int):
    t = opt_cfg
    infinite = ((t.lr_cooldown_steps, t.lr_constant_ratio, t.lr_anneal_steps, t.lr_min_ratio)
                if t.lr_schedule == "infinite" else None)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t.lr_schedule, t.warmup_steps, total_steps, infinite))
