"""Processes and devices: the Accelerator (DDP, DeepSpeed, CPU or GPU), the bookkeeping that keeps
processes in step (equal micro-batch counts, accumulation boundaries, zero-loss backwards, global
sums), and cross-process checks.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager, nullcontext

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import InitProcessGroupKwargs

from selfimprove.engines.weights import weight_buckets
from selfimprove.errors import UserError

MIXED = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}


def make_accelerator(dtype: str = "float32", log_with: list | None = None):
    """16-bit dtypes train as mixed precision: fp32 master weights, autocast in the forward pass.
    `log_with`: the experiment trackers (trackers.build)."""
    # accelerate keeps one global state per process; a second run in the same single process (tests,
    # notebooks) with another precision must start from a fresh one
    if AcceleratorState._shared_state and AcceleratorState().num_processes == 1 \
            and AcceleratorState().mixed_precision != MIXED[dtype]:
        AcceleratorState._reset_state()
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":  # would otherwise run unsharded (cpu=True)
        raise UserError("FSDP is not supported yet; use DeepSpeed ZeRO-2/3 (accelerate launch --config_file "
                        "recipes/accelerate/zero2.yaml or zero3.yaml)")
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":  # a DeepSpeed profile
        # cpu=True would silently drop DeepSpeed; without CUDA, DeepSpeed needs gloo named explicitly
        # (environment.md section 4: accelerate otherwise picks no backend and sees one process)
        handlers = [] if torch.cuda.is_available() else [InitProcessGroupKwargs(backend="gloo")]
        accelerator = Accelerator(mixed_precision=MIXED[dtype], kwargs_handlers=handlers, log_with=log_with or None)
        check_deepspeed_config(accelerator)
        return accelerator
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=MIXED[dtype], log_with=log_with or None)


def check_deepspeed_config(accelerator) -> None:
    """selfimprove builds the optimizer and the LR schedule itself (train.*; the loop steps them): a DeepSpeed
    JSON with its own `optimizer` or `scheduler` block (HF-style configs often carry them) would make a second
    one, or fail deep inside deepspeed.initialize. One line naming the block instead."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    where = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or "the DeepSpeed config"
    for block, keys in (("optimizer", "train.lr, weight_decay, adam_beta1, adam_beta2"),
                        ("scheduler", "train.lr_schedule, warmup_steps")):
        if plugin.deepspeed_config.get(block) is not None:
            raise UserError(f"{where} has a '{block}' block: selfimprove builds the {block} from {keys}; "
                            f"remove the block from the DeepSpeed config")


def configure_deepspeed(accelerator, train_cfg) -> None:
    """Batch and clipping settings that DeepSpeed wants before `prepare` (the loop has no DataLoader):
    one micro-batch per backward, the optimizer step at the last micro-batch (gradient accumulation
    boundaries are set by `update`), clipping at train.max_grad_norm, and our own AdamW."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = train_cfg.micro_batch_size
    ds["gradient_accumulation_steps"] = 1
    ds["train_batch_size"] = train_cfg.micro_batch_size * accelerator.num_processes
    ds["gradient_clipping"] = train_cfg.max_grad_norm
    ds["zero_allow_untested_optimizer"] = True


def offloads_optimizer(accelerator) -> bool:
    """A DeepSpeed profile with offload_optimizer_device: cpu | nvme (ZeRO-Offload)."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return False
    zero = plugin.deepspeed_config.get("zero_optimization", {})
    return str(zero.get("offload_optimizer", {}).get("device", "none")).lower() in ("cpu", "nvme")


def weights_digest(model) -> str:
    """sha256 over the weights as the engines receive them: buckets of whole tensors (gathered
    bucket by bucket under ZeRO-3, so this also exercises the weight push's gathering)."""
    h = hashlib.sha256()
    for bucket in weight_buckets(model, 1 << 16):
        for name, t in bucket:
            h.update(name.encode())
            h.update(t.float().cpu().numpy().tobytes())
    return h.hexdigest()


def weights_identical(acc, model) -> tuple[bool, str]:
    """Every process holds bit-identical weights (a data-parallel sanity check, logged in the
    summary with the digest)."""
    digest = weights_digest(acc.unwrap_model(model))
    mine = torch.tensor([[int(digest[:14], 16)]], dtype=torch.int64, device=acc.device)
    every = acc.gather(mine).reshape(-1)
    return bool((every == every[0]).all()), digest


def zero_stage(accelerator) -> int:
    plugin = accelerator.state.deepspeed_plugin
    return int(plugin.zero_stage) if plugin is not None else 0


@contextmanager
def whole_parameters(accelerator, model):
    """ZeRO-3 shards every parameter over the processes; the hf engine (and a checksum of the
    weights) needs them whole: gather them for the duration (read-only), as TRL does for generation."""
    if zero_stage(accelerator) != 3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(accelerator.unwrap_model(model).parameters()), modifier_rank=None):
        yield


# --------------------------------------------------------------------------- keeping processes in step


def uses_deepspeed(accelerator) -> bool:
    return accelerator.state.deepspeed_plugin is not None


def global_sums(accelerator, values: list[float]) -> list[float]:
    """Element-wise sums over all processes."""
    return accelerator.reduce(torch.tensor([float(v) for v in values], device=accelerator.device), "sum").tolist()


def global_max(accelerator, value: float) -> float:
    return float(accelerator.reduce(torch.tensor([value], device=accelerator.device), "max").item())


def equal_counts(accelerator, chunks: list[list], needed: bool) -> list[list]:
    """Pad this process's list of micro-batches with empty ones to the largest count over processes,
    where every forward or backward is collective (ZeRO gathers or reduces in each): processes hold
    different numbers of traces, and one that stopped early would leave the others waiting."""
    if not needed or accelerator.num_processes == 1:
        return chunks
    most = int(global_max(accelerator, len(chunks)))
    return chunks + [[]] * (most - len(chunks))


def accumulation_boundary(accelerator, model, last: bool):
    """Gradient accumulation over micro-batches: DDP all-reduces only at the last one (`no_sync` before);
    DeepSpeed reduces and steps inside backward at the boundary it is told about."""
    if uses_deepspeed(accelerator):
        accelerator.gradient_state._set_sync_gradients(last)
    return nullcontext() if last else accelerator.no_sync(model)


def pad_forward(module, pad_id: int, device):
    """A one-token forward pass: takes part in a collective forward without data of its own."""
    return module(input_ids=torch.tensor([[pad_id]], device=device))


def empty_backward(accelerator, model, pad_id: int) -> None:
    """A zero-loss backward: keeps this process in the gradient reduction when it has nothing to train on."""
    accelerator.backward(pad_forward(model, pad_id, accelerator.device).logits.sum() * 0.0)


def any_process(accelerator, flag: bool) -> bool:
    """True when `flag` holds on any process (every process must call it)."""
    if accelerator.num_processes == 1:
        return flag
    return global_sums(accelerator, [1.0 if flag else 0.0])[0] > 0


def set_threads(threads: int, key: str, log=print) -> None:
    """torch threads per process: 0 keeps torch's default; more than the machine's CPUs is capped (a huge
    count spawns threads up to the process limit and hangs)."""
    if not threads:
        return
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if threads > cpus:
        log(f"warning: {key}={threads} is more than the {cpus} CPUs available; using {cpus}")
        threads = cpus
    torch.set_num_threads(threads)
