"""Exact resume: continue a run from its last whole checkpoint as if it had never stopped.

A checkpoint (`runlog.save_checkpoint`) is written to a hidden temporary folder and renamed into
place, so `checkpoints/step-N` exists only when it is whole: a run killed while saving leaves a
`.step-N.tmp` that is ignored here. It holds the weights (HF format; the adapter alone with LoRA),
and `trainer_state.pt`: step, optimizer, scheduler, every process's RNG states (torch, python, the
engine's sampler), the data position, elapsed seconds, and the evaluations so far.

`train.resume: auto` continues from the newest whole checkpoint of the run folder (log.out/log.name)
and starts fresh when there is none; a path resumes from that checkpoint. The policy's weights
are loaded *after* the frozen reference was copied from `model.path`, so a KL reference stays the
starting model. Rows of metrics.jsonl and traces.jsonl written after the checkpoint are dropped,
so the logs read as one uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path

import torch

from selfimprove.errors import UserError


def find_checkpoint(recipe) -> Path | None:
    """The checkpoint to resume from, or None (train.resume empty, or auto with nothing saved yet)."""
    want = recipe.train.resume
    if not want:
        return None
    if want != "auto":
        path = Path(want)
        if not (path / "trainer_state.pt").is_file():
            raise UserError(f"train.resume: {want} is not a whole checkpoint (no trainer_state.pt)")
        return path
    if not recipe.log.name:
        raise UserError("train.resume=auto needs log.name (the run folder to continue)")
    root = Path(recipe.log.out) / recipe.log.name / "checkpoints"
    whole = sorted(p for p in root.glob("step-*") if (p / "trainer_state.pt").is_file()) if root.is_dir() else []
    return whole[-1] if whole else None


def load_policy_weights(model, ckpt: Path, lora: bool) -> None:
    """Checkpoint weights into the (unwrapped) policy: the adapter with LoRA, else the whole model."""
    from safetensors.torch import load_file

    if lora:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
        return
    index = ckpt / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    state = {}
    for name in files:
        state.update(load_file(str(ckpt / name)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or {}) | {"lm_head.weight"}
    if unexpected or set(missing) - tied:
        raise UserError(f"train.resume: {ckpt} does not match the model (missing {sorted(missing)[:3]}, "
                        f"unexpected {sorted(unexpected)[:3]})")


def rng_state(engine) -> dict:
    gen = getattr(engine, "generator", None)
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "engine": gen.get_state() if gen is not None else None}


def set_rng_state(engine, rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if rng.get("engine") is not None and getattr(engine, "generator", None) is not None:
        engine.generator.set_state(rng["engine"])


def restore(state, ckpt: Path) -> dict:
    """Optimizer, scheduler and this process's RNG from the checkpoint; returns the trainer state."""
    ts = torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=False)
    if (ckpt / "deepspeed").is_dir():  # DeepSpeed: each process loads its own optimizer partition
        if state.accelerator.state.deepspeed_plugin is None:
            raise UserError(f"train.resume: {ckpt} was saved under DeepSpeed; resume it with the same DeepSpeed profile")
        state.model.load_checkpoint(str(ckpt / "deepspeed"), tag="state", load_optimizer_states=True,
                                    load_lr_scheduler_states=False)
    elif ts["optimizer"] is None or state.accelerator.state.deepspeed_plugin is not None:
        raise UserError(f"train.resume: {ckpt} and this run differ in DeepSpeed use; resume with the profile it was saved with")
    else:
        state.optimizer.load_state_dict(ts["optimizer"])
    state.scheduler.load_state_dict(ts["scheduler"])
    ranks = ts["rng"]
    rank = state.accelerator.process_index
    if len(ranks) != state.accelerator.num_processes:
        raise UserError(f"train.resume: {ckpt} was saved by {len(ranks)} processes, this run has "
                        f"{state.accelerator.num_processes}")
    set_rng_state(state.engine, ranks[rank])
    state.step = ts["step"]
    return ts


def trim_logs(run_dir: Path, step: int) -> list[dict]:
    """Drop metrics and traces written after `step`; return the metrics rows that remain (the history)."""
    rows: list[dict] = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        rows = [r for r in map(json.loads, metrics.read_text().splitlines()) if r["step"] <= step]
        _rewrite(metrics, [json.dumps(r) for r in rows])
    traces = run_dir / "traces.jsonl"
    if traces.exists():  # a trace sampled at 0-based step s has policy_version s
        kept = [line for line in traces.read_text().splitlines() if json.loads(line)["policy_version"] < step]
        _rewrite(traces, kept)
    return rows


def _rewrite(path: Path, lines: list[str]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, path)


def fault(point: str, step: int) -> None:
    """Fault injection for the resume tests: SELFIMPROVE_FAULT=kill_at_step:5 or kill_in_save:4 sends
    this process SIGKILL at that point (a real, unclean death: nothing is flushed or cleaned up)."""
    spec = os.environ.get("SELFIMPROVE_FAULT", "")
    if spec and spec == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
