"""Checkpoints: save, find and restore, for exact resume (a run continues as if it had never stopped).

`save` writes a checkpoint into a hidden temporary folder and renames it into place, so
`checkpoints/step-N` exists only when it is whole: a run killed while saving leaves a `.step-N.tmp`
that is ignored here. It holds the weights (HF format, loadable by transformers and vLLM; the adapter
alone with LoRA; the gathered weights under ZeRO-3), `trainer_state.pt` (step, optimizer, scheduler,
every process's RNG states (torch, python, the engine's sampler), the data position, elapsed seconds,
the evaluations and summary so far) and, under DeepSpeed, `deepspeed/` (every process's optimizer
partition, written by DeepSpeed's own checkpointing before the rename).

`find` reads `train.resume`: `auto` continues from the newest whole checkpoint of the run folder
(log.out/log.name) and starts fresh when there is none; a path resumes from that checkpoint.
`restore` loads optimizer, scheduler and this process's RNG and returns the trainer state; the policy's
weights are loaded by `load_policy_weights` *after* the frozen reference was copied from `model.path`,
so a KL reference stays the starting model. `trim_logs` drops rows of metrics.jsonl and traces.jsonl
written after the checkpoint, so the logs read as one uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list, gather_object
from safetensors.torch import load_file

from selfimprove.distributed import uses_deepspeed, zero_stage
from selfimprove.errors import UserError
from selfimprove.runlog import RunLog


def folder(run: RunLog, step: int, tmp: bool = False) -> Path:
    name = f".step-{step:06d}.tmp" if tmp else f"step-{step:06d}"
    return run.path / "checkpoints" / name


def find(recipe) -> Path | None:
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


# --------------------------------------------------------------------------- save


def _fresh_tmp(run: RunLog, step: int, accelerator) -> str:
    """The hidden folder of this checkpoint, created empty by the main process; its path on every process
    (names may hold the main process's start time)."""
    tmp = folder(run, step, tmp=True)
    if run.enabled:
        run.ensure()
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    paths = [str(tmp)]
    if accelerator.num_processes > 1:
        broadcast_object_list(paths, from_process=0)
    return paths[0]


def save(run: RunLog, step: int, accelerator, model, tokenizer, optimizer, scheduler, engine, state: dict,
         keep_last: int) -> None:
    """Checkpoint after `step` (every process calls it). `state`: the loop's own entries (data position,
    elapsed, evaluations, summary), stored in trainer_state.pt with the optimizer, scheduler and RNG."""
    accelerator.wait_for_everyone()
    rng = gather_object([rng_state(engine)]) if accelerator.num_processes > 1 else [rng_state(engine)]
    deepspeed = uses_deepspeed(accelerator)
    trainer_state = {"step": step, "optimizer": None if deepspeed else optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(),
                     "rng": rng,  # one entry per process: each samples its own share of the prompts
                     **state}
    tmp = _fresh_tmp(run, step, accelerator) if deepspeed else str(folder(run, step, tmp=True))
    if deepspeed:
        # ZeRO shards the optimizer state: every process writes its own partition through DeepSpeed's
        # own checkpointing, into the not-yet-renamed folder (the rename below makes it whole)
        model.save_checkpoint(tmp + "/deepspeed", tag="state", save_latest=False)
        accelerator.wait_for_everyone()
    # ZeRO-3: the whole weights, gathered (accelerate's get_state_dict); elsewhere the module's own
    weights = accelerator.get_state_dict(model) if zero_stage(accelerator) == 3 else None
    if run.enabled:
        _write(run, step, accelerator.unwrap_model(model), tokenizer, trainer_state, keep_last, weights)
    accelerator.wait_for_everyone()


def _write(run: RunLog, step: int, model, tokenizer, state: dict, keep_last: int, weights: dict | None) -> Path:
    """An HF-format folder plus trainer_state.pt, renamed into place (into the folder `_fresh_tmp` made,
    which may already hold other processes' files); then only the newest `keep_last` are kept."""
    run.ensure()
    final, tmp = folder(run, step), folder(run, step, tmp=True)
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, state_dict=weights)  # weights: a gathered state dict (ZeRO-3), else the model's
    tokenizer.save_pretrained(tmp)
    torch.save(state, tmp / "trainer_state.pt")
    fault("kill_in_save", step)  # tests: a death here must leave the previous checkpoint the newest whole one
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    whole = sorted(p for p in final.parent.iterdir() if p.name.startswith("step-"))
    for old in whole[: max(0, len(whole) - keep_last)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


# --------------------------------------------------------------------------- restore


def load_policy_weights(model, ckpt: Path, lora: bool) -> None:
    """Checkpoint weights into the (unwrapped) policy: the adapter with LoRA, else the whole model."""
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
    gen = engine.generator
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "engine": gen.get_state() if gen is not None else None}


def set_rng_state(engine, rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if rng.get("engine") is not None and engine.generator is not None:
        engine.generator.set_state(rng["engine"])


def restore(ckpt: Path, accelerator, model, optimizer, scheduler, engine) -> dict:
    """Optimizer, scheduler and this process's RNG from the checkpoint; returns its trainer state."""
    ts = torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=False)
    if (ckpt / "deepspeed").is_dir():  # DeepSpeed: each process loads its own optimizer partition
        if not uses_deepspeed(accelerator):
            raise UserError(f"train.resume: {ckpt} was saved under DeepSpeed; resume it with the same DeepSpeed profile")
        model.load_checkpoint(str(ckpt / "deepspeed"), tag="state", load_optimizer_states=True,
                              load_lr_scheduler_states=False)
    elif ts["optimizer"] is None or uses_deepspeed(accelerator):
        raise UserError(f"train.resume: {ckpt} and this run differ in DeepSpeed use; resume with the profile it was saved with")
    else:
        optimizer.load_state_dict(ts["optimizer"])
    scheduler.load_state_dict(ts["scheduler"])
    ranks = ts["rng"]
    if len(ranks) != accelerator.num_processes:
        raise UserError(f"train.resume: {ckpt} was saved by {len(ranks)} processes, this run has "
                        f"{accelerator.num_processes}")
    set_rng_state(engine, ranks[accelerator.process_index])
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
