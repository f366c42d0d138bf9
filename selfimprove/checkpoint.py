"""Checkpoints: save, find and restore, for exact resume (a run continues as if it had never stopped).

`save` writes a checkpoint into a hidden temporary folder and renames it into place, so
`checkpoints/step-N` exists only when it is whole: a run killed while saving leaves a `.step-N.tmp`
that is ignored here. Layout of `step-N/`:

    model/                       a clean Hugging Face folder (transformers, vLLM, `selfimprove eval`): config,
                                 weights in model.dtype, tokenizer, generation config; with LoRA the adapter
                                 alone; under ZeRO-3 the gathered weights
    trainer_state.json           step, scheduler, data position, elapsed seconds, evaluations and summary so
                                 far, every process's Python RNG, and what the run trained (model path, LoRA
                                 rank, processes)
    trainer_state.pt             tensors only: the optimizer state, every process's torch and sampler RNG
    master_weights.safetensors   16-bit runs only: the fp32 master weights (the adapter's with LoRA), so a
                                 resume continues from exactly the weights that trained, not their rounding
    deepspeed/                   under DeepSpeed: every process's optimizer partition (DeepSpeed's own
                                 checkpointing, before the rename)

A checkpoint is data, never code: `trainer_state.pt` is read with `torch.load(weights_only=True)`,
which unpickles tensors and plain containers only (a crafted file fails to load instead of running),
and the rest is JSON and safetensors. Weights that are not finite are never saved. Checkpoints of the
older layout (model files beside the trainer state) are not resumed (one line); they still load as models.

`find` reads `train.resume`: `auto` continues from the newest checkpoint of the run folder
(log.out/log.name) that loads (a damaged newer one is skipped, and the log says so) and starts fresh when
there is none; a path resumes from that checkpoint. Either way a checkpoint whose run differs from the
recipe (another model, LoRA on or off, another number of processes) is one line, before anything runs.
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
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from selfimprove.distributed import any_process, uses_deepspeed, zero_stage
from selfimprove.errors import UserError
from selfimprove.hub import cast_weights, save_model
from selfimprove.runlog import RunLog


def folder(run: RunLog, step: int, tmp: bool = False) -> Path:
    name = f".step-{step:06d}.tmp" if tmp else f"step-{step:06d}"
    return run.path / "checkpoints" / name


STATE_JSON, STATE_TENSORS = "trainer_state.json", "trainer_state.pt"
MODEL_DIR, MASTER = "model", "master_weights.safetensors"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OLD_LAYOUT = ("a checkpoint of the older layout (model files beside trainer_state.json), which this version does "
              "not resume; start a new run (it still loads as a model: selfimprove eval / export)")


def run_signature(recipe, processes: int) -> dict:
    """What a checkpoint must share with the recipe that resumes it (stored in trainer_state.json)."""
    m = recipe.model
    return {"model": m.path, "lora_r": m.lora_r, "quantize": m.quantize, "dtype": m.dtype, "processes": processes,
            "algorithm": recipe.algorithm.name}


def damage(ckpt: Path) -> str | None:
    """Why `ckpt` cannot be resumed from (a missing or unreadable file), or None when it loads. Cheap: the
    JSON, the tensor file's index (memory-mapped, tensors not read) and the safetensors headers."""
    if not (ckpt / MODEL_DIR).is_dir():
        return OLD_LAYOUT if (ckpt / "config.json").is_file() or (ckpt / "adapter_config.json").is_file() \
            else f"no {MODEL_DIR}/ folder"
    try:
        json.loads((ckpt / STATE_JSON).read_text(encoding="utf-8"))
        torch.load(ckpt / STATE_TENSORS, map_location="cpu", weights_only=True, mmap=True)
        weights = sorted((ckpt / MODEL_DIR).glob("*.safetensors"))
        if not weights:
            return f"no weights ({MODEL_DIR}/*.safetensors)"
        weights += [ckpt / MASTER] if (ckpt / MASTER).exists() else []
        for w in weights:
            with safe_open(str(w), "pt"):
                pass
    except Exception as e:  # any damage at all: the caller falls back or reports it in one line
        return f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
    return None


def find(recipe, processes: int = 1, log=print) -> Path | None:
    """The checkpoint to resume from, or None (train.resume empty, or auto with nothing saved yet)."""
    want = recipe.train.resume
    if not want:
        return None
    if want != "auto":
        path = Path(want)
        if not (path / STATE_JSON).is_file():
            raise UserError(f"train.resume: {want} is not a checkpoint folder (no {STATE_JSON})")
        why = damage(path)
        if why == OLD_LAYOUT:
            raise UserError(f"train.resume: {want} is {why}")
        if why:
            raise UserError(f"train.resume: {want} is damaged ({why})")
        return check_matches(path, recipe, processes)
    if not recipe.log.name:
        raise UserError("train.resume=auto needs log.name (the run folder to continue)")
    root = Path(recipe.log.out) / recipe.log.name / "checkpoints"
    saved = sorted((p for p in root.glob("step-*") if (p / STATE_JSON).is_file()), reverse=True) if root.is_dir() else []
    for path in saved:
        why = damage(path)
        if why is None:
            return check_matches(path, recipe, processes)
        log(f"warning: checkpoint {path} is damaged ({why}); trying the one before it")
    if saved:
        raise UserError(f"train.resume=auto: no checkpoint of {root} loads (the newest: {damage(saved[0])})")
    return None


def newest(run_dir: Path) -> tuple[int, Path] | None:
    """(step, folder) of the newest checkpoint renamed into place in a run folder, or None."""
    saved = sorted((run_dir / "checkpoints").glob("step-*")) if (run_dir / "checkpoints").is_dir() else []
    return (int(saved[-1].name.removeprefix("step-")), saved[-1]) if saved else None


def check_matches(ckpt: Path, recipe, processes: int) -> Path:
    """One line when the recipe no longer describes the run that saved `ckpt`."""
    saved = json.loads((ckpt / STATE_JSON).read_text(encoding="utf-8")).get("run", {})
    now = run_signature(recipe, processes)
    for key, what in (("lora_r", "model.lora_r"), ("quantize", "model.quantize"), ("model", "model.path"),
                      ("algorithm", "algorithm.name"), ("processes", "the number of processes")):
        if key in saved and saved[key] != now[key]:
            raise UserError(f"train.resume: {ckpt} was saved with {what}={saved[key]}, this run has {now[key]}; "
                            "resume with the recipe it was saved with (or start a new run: another log.name)")
    return ckpt


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
         keep_last: int, dtype: str = "float32") -> None:
    """Checkpoint after `step` (every process calls it). `state`: the loop's own JSON entries (data position,
    elapsed, evaluations, summary, run signature), stored in trainer_state.json with the scheduler and RNG.
    `dtype`: model.dtype, the precision of the Hugging Face weights in `model/`."""
    accelerator.wait_for_everyone()
    if any_process(accelerator, not all(torch.isfinite(p).all() for p in model.parameters())):
        raise UserError(f"step {step}: the weights are not finite (inf or NaN); they were not saved")
    rng = [rng_state(engine)]
    rng = gather_object(rng) if accelerator.num_processes > 1 else rng  # one entry per process
    deepspeed = uses_deepspeed(accelerator)
    tensors = {"optimizer": None if deepspeed else optimizer.state_dict(),
               "rng": [{"torch": r["torch"], "engine": r["engine"]} for r in rng]}
    plain = {"format": 3, "step": step, "scheduler": scheduler.state_dict(),
             "python_rng": [r["python"] for r in rng], **state}
    tmp = _fresh_tmp(run, step, accelerator) if deepspeed else str(folder(run, step, tmp=True))
    if deepspeed:
        # ZeRO shards the optimizer state: every process writes its own partition through DeepSpeed's
        # own checkpointing, into the not-yet-renamed folder (the rename below makes it whole)
        model.save_checkpoint(tmp + "/deepspeed", tag="state", save_latest=False)
        accelerator.wait_for_everyone()
    # ZeRO-3: the whole weights, gathered (accelerate's get_state_dict); elsewhere the module's own
    weights = accelerator.get_state_dict(model) if zero_stage(accelerator) == 3 else None
    if run.enabled:
        _write(run, step, accelerator.unwrap_model(model), tokenizer, (plain, tensors), keep_last, weights, dtype)
    accelerator.wait_for_everyone()


def master_weights(model) -> dict:
    """The trained fp32 weights as one safetensors dict: the adapter's with LoRA, else the whole model's
    (a tied weight once: safetensors holds no aliases, and loading re-ties it)."""
    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict

        return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    state, seen = cast_weights(model.state_dict(), torch.float32), set()
    out = {}
    for name, t in state.items():
        if id(t) not in seen:
            seen.add(id(t))
            out[name] = t.contiguous()
    return out


def _write(run: RunLog, step: int, model, tokenizer, state: tuple[dict, dict], keep_last: int,
           weights: dict | None, dtype: str = "float32") -> Path:
    """The HF folder `model/` beside the trainer state, renamed into place (into the folder `_fresh_tmp` made,
    which may already hold other processes' files); then only the newest `keep_last` are kept."""
    run.ensure()
    final, tmp = folder(run, step), folder(run, step, tmp=True)
    tmp.mkdir(parents=True, exist_ok=True)
    # weights: a gathered state dict (ZeRO-3), else the module's own; saved in model.dtype
    save_model(model, tmp / MODEL_DIR, DTYPES[dtype], weights)
    tokenizer.save_pretrained(tmp / MODEL_DIR)
    if dtype != "float32" and weights is None:  # ZeRO-3 resumes from DeepSpeed's own fp32 partitions
        save_file(master_weights(model), str(tmp / MASTER))
    torch.save(state[1], tmp / STATE_TENSORS)
    (tmp / STATE_JSON).write_text(json.dumps(state[0]), encoding="utf-8")
    fault("in_save", step)  # tests: a death here must leave the previous checkpoint the newest whole one
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    whole = sorted(p for p in final.parent.iterdir() if p.name.startswith("step-"))
    for old in whole[: max(0, len(whole) - keep_last)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


# --------------------------------------------------------------------------- restore


def load_policy_weights(model, ckpt: Path, lora: bool) -> None:
    """Checkpoint weights into the (unwrapped) policy: the adapter with LoRA, else the whole model; from the
    fp32 master weights when the Hugging Face folder holds a 16-bit rounding of them."""
    master, hf = ckpt / MASTER, ckpt / MODEL_DIR
    if lora:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(master if master.is_file() else hf / "adapter_model.safetensors")))
        return
    index = hf / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    paths = [master] if master.is_file() else [hf / name for name in files]
    state = {}
    for path in paths:
        state.update(load_file(str(path)))
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
    version, internal, gauss = rng["python"]  # JSON made the tuples lists
    random.setstate((version, tuple(internal), gauss))
    if rng.get("engine") is not None and engine.generator is not None:
        engine.generator.set_state(rng["engine"])


def load_state(ckpt: Path) -> dict:
    """The trainer state of `ckpt`: JSON, plus tensors read with weights_only=True (never runs code)."""
    try:
        plain = json.loads((ckpt / STATE_JSON).read_text(encoding="utf-8"))
        tensors = torch.load(ckpt / STATE_TENSORS, map_location="cpu", weights_only=True)
        rng = [{**t, "python": p} for t, p in zip(tensors["rng"], plain["python_rng"], strict=True)]
        return {**plain, "optimizer": tensors["optimizer"], "rng": rng}
    except Exception as e:  # a crafted or damaged file: one line, nothing executed
        raise UserError(f"train.resume: cannot load the trainer state of {ckpt} "
                        f"({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None


def restore(ckpt: Path, accelerator, model, optimizer, scheduler, engine) -> dict:
    """Optimizer, scheduler and this process's RNG from the checkpoint; returns its trainer state."""
    ts = load_state(ckpt)
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
    # the rate of the next step from this run's schedule: the saved one was set by the checkpoint's schedule,
    # which differs where a run continues with a later end (a next round of train.lr_schedule: infinite)
    rates = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates
    ranks = ts["rng"]
    if len(ranks) != accelerator.num_processes:
        raise UserError(f"train.resume: {ckpt} was saved by {len(ranks)} processes, this run has "
                        f"{accelerator.num_processes}")
    set_rng_state(engine, ranks[accelerator.process_index])
    return ts


def _rows(path: Path) -> list[tuple[str, dict]]:
    """(line, row) of a JSONL log; a torn line (a process killed mid-write, a full disk) is dropped."""
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            out.append((line, row))
    return out


def trim_logs(run_dir: Path, step: int) -> list[dict]:
    """Drop metrics and traces written after `step` (and torn lines); return the metrics rows that remain."""
    rows: list[dict] = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        kept = [(line, r) for line, r in _rows(metrics) if r.get("step", step + 1) <= step]
        rows = [r for _, r in kept]
        _rewrite(metrics, [line for line, _ in kept])
    traces = run_dir / "traces.jsonl"
    if traces.exists():  # a trace sampled at 0-based step s has policy_version s
        _rewrite(traces, [line for line, r in _rows(traces) if r.get("policy_version", step) < step])
    return rows


def _rewrite(path: Path, lines: list[str]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, path)


def fault(point: str, step: int) -> None:
    """Fault injection for the resume tests: SELFIMPROVE_FAULT=kill_at_step:5 or kill_in_save:4 sends this
    process SIGKILL at that point (a real, unclean death: nothing is flushed or cleaned up);
    sigint_at_step:3 / sigterm_at_step:3 send SIGINT / SIGTERM to the main process (RANK 0) only, as a
    signal that reaches one process of several."""
    spec = os.environ.get("SELFIMPROVE_FAULT", "")
    for prefix, sig in (("kill", signal.SIGKILL), ("sigint", signal.SIGINT), ("sigterm", signal.SIGTERM)):
        if spec == f"{prefix}_{point}:{step}" and (sig == signal.SIGKILL or os.environ.get("RANK", "0") == "0"):
            os.kill(os.getpid(), sig)
