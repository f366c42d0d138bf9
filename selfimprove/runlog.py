"""The run folder: resolved config, metrics.jsonl, traces.jsonl, checkpoints, summary, plots.

The folder is created on the first write, i.e. once the first training step has passed: a recipe
or data mistake found during setup or the first step leaves nothing half-written behind.
Checkpoints are written to a temporary folder and renamed, so a crash never leaves one that looks whole.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from selfimprove import config as config_mod
from selfimprove.trace import dump_jsonl


class RunLog:
    def __init__(self, recipe, enabled: bool = True):
        name = recipe.log.name or f"{Path(recipe.source).stem or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.path = Path(recipe.log.out) / name
        self.recipe = recipe
        self.enabled = enabled  # only the main process writes
        self._created = False

    def ensure(self) -> Path:
        if self.enabled and not self._created:
            self.path.mkdir(parents=True, exist_ok=True)
            config_mod.dump_yaml(self.recipe, self.path / "config.yaml")
            self._created = True
        return self.path

    def metrics(self, row: dict) -> None:
        if self.enabled:
            with open(self.ensure() / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    def traces(self, traces) -> None:
        if self.enabled:
            dump_jsonl(traces, self.ensure() / "traces.jsonl", append=True)

    def write_json(self, name: str, obj) -> None:
        if self.enabled:
            tmp = self.ensure() / (name + ".tmp")
            tmp.write_text(json.dumps(obj, indent=2))
            os.replace(tmp, self.path / name)


def checkpoint_tmp(run: RunLog, step: int) -> Path:
    """The hidden folder a checkpoint is written into before the rename (created fresh by the main
    process; other processes may add their own files to it, e.g. DeepSpeed's optimizer partitions)."""
    tmp = run.path / "checkpoints" / f".step-{step:06d}.tmp"
    if run.enabled:
        run.ensure()
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    return tmp


def save_checkpoint(run: RunLog, step: int, model, tokenizer, state: dict, keep_last: int,
                    weights: dict | None = None) -> Path | None:
    """An HF-format folder (loadable by transformers and vLLM) plus trainer_state.pt, renamed into place
    (into the folder `checkpoint_tmp` made, which may already hold other processes' files)."""
    if not run.enabled:
        return None
    import torch

    ckpt_root = run.ensure() / "checkpoints"
    final = ckpt_root / f"step-{step:06d}"
    tmp = ckpt_root / f".step-{step:06d}.tmp"
    if not tmp.is_dir():
        tmp.mkdir(parents=True)
    model.save_pretrained(tmp, state_dict=weights)  # weights: a gathered state dict (ZeRO-3), else the model's
    tokenizer.save_pretrained(tmp)
    torch.save(state, tmp / "trainer_state.pt")
    from selfimprove.resume import fault

    fault("kill_in_save", step)  # tests: a death here must leave the previous checkpoint the newest whole one
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    whole = sorted(p for p in ckpt_root.iterdir() if p.name.startswith("step-"))
    for old in whole[: max(0, len(whole) - keep_last)]:
        shutil.rmtree(old, ignore_errors=True)
    return final
