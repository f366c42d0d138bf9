"""The trainer's weights as buckets of whole tensors, for pushing into a generation engine.

A push of a 7B model one tensor at a time is ~300 engine calls (and, with a server, ~300 NCCL
broadcasts with their own handshakes); buckets of a few hundred MB make it a handful. Under
DeepSpeed ZeRO-3 each bucket is gathered on its own (`GatheredParameters` over just that bucket's
parameters) and released before the next, so the whole model is never materialised at once.
No library exposes this for a plain module (TRL gathers per tensor), hence the ~40 lines here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext

import torch

PEFT_PREFIX = "base_model.model."


def engine_name(name: str) -> str:
    """A trainer parameter name as the engine's (HF checkpoint) name: PEFT and wrapper prefixes off."""
    name = name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")
    return name.replace("_checkpoint_wrapped_module.", "").replace("modules_to_save.default.", "")


def is_zero3(model) -> bool:
    return any(hasattr(p, "ds_id") for p in model.parameters())


def _gathered(params, zero3: bool):
    if not zero3:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def weight_buckets(model, bucket_bytes: int, adapters_only: bool = False) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Yield lists of (name, whole tensor) of about `bucket_bytes` each, in parameter order.

    With `adapters_only` (LoRA) only the adapter tensors are yielded, under their PEFT names; else
    the base weights under engine names (LoRA layers skipped: push merged weights for those). Under
    ZeRO-3 every process must iterate (the gathers are collective), and the tensors are only valid
    until the next bucket is requested.
    """
    zero3 = is_zero3(model)
    bucket, size = [], 0
    for name, p in model.named_parameters():
        is_adapter = "lora_" in name
        if is_adapter != adapters_only or "original_module" in name:
            continue
        bucket.append((name, p))
        size += getattr(p, "ds_numel", p.numel()) * p.element_size()
        if size >= bucket_bytes:
            yield from _emit(bucket, zero3, adapters_only)
            bucket, size = [], 0
    if bucket:
        yield from _emit(bucket, zero3, adapters_only)


def _emit(bucket, zero3: bool, adapters_only: bool):
    with _gathered([p for _, p in bucket], zero3), torch.no_grad():
        yield [(n if adapters_only else engine_name(n), p.detach()) for n, p in bucket]
