"""The optimizer and the learning-rate schedule, shared by the loop and the offline programs."""

from __future__ import annotations

import math

import torch

from selfimprove.distributed import offloads_optimizer


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int):
    """The multiplier of the peak learning rate at optimizer step i: linear warm-up over `warmup_steps`,
    then constant, linear decay to 0, or cosine decay to 0 at `total_steps`."""
    total, warm = max(total_steps, 1), warmup_steps

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
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(opt_cfg.lr_schedule, opt_cfg.warmup_steps,
                                                                  total_steps))
