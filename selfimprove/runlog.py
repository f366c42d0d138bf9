"""The run folder: resolved config, metrics.jsonl, traces.jsonl, summary (checkpoints: checkpoint.py).

A run folder belongs to one run. `RunLog` checks, before any work starts, that `log.out/log.name` can
be written and is not another run's: an existing folder is only continued by `train.resume` or replaced
when the recipe says `log.overwrite: true` (then at the first write, so a mistake found during setup
still leaves the old run as it was). The folder is created on the first write, i.e. once the first
training step has passed: a recipe or data mistake found during setup or the first step leaves nothing
half-written behind. The experiment trackers of `log.report_to` (trackers.py) start with the folder and
receive what it receives: the metrics rows, a completions table with each traces dump, the summary.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from selfimprove import trackers
from selfimprove.errors import UserError
from selfimprove.options import dump_yaml
from selfimprove.trace import dump_jsonl


def writable_folder(path: Path, key: str) -> None:
    """`path` is, or can be created as, a folder we may write into: one line naming `key` if not."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{key}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{key}: cannot write in {probe} (permission denied)")


class RunLog:
    def __init__(self, recipe, enabled: bool = True):
        log, resume = recipe.log, getattr(recipe.train, "resume", "")  # programs have no resume
        writable_folder(Path(log.out), "log.out")
        if log.name:
            self.path = Path(log.out) / log.name
        else:  # a fresh default name; a second run in the same second gets a suffix
            stem = f"{Path(recipe.source).stem or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
            self.path, k = Path(log.out) / stem, 2
            while self.path.exists():
                self.path, k = Path(log.out) / f"{stem}-{k}", k + 1
        self.mode = "continue" if resume else "overwrite" if log.overwrite else "new"
        if self.mode == "new" and self.path.exists() and any(self.path.iterdir()):
            raise UserError(f"log.name: the run folder {self.path} exists; continue it with train.resume=auto, "
                            "replace it with log.overwrite=true, or choose another log.name")
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"log.name: {self.path} exists and is not a folder")
        self.recipe = recipe
        self.enabled = enabled  # only the main process writes
        self.accelerator = None  # its trackers (log.report_to) get what the folder gets: attach()
        self._created = False

    def attach(self, accelerator) -> None:
        """The Accelerator of the run (built with `trackers.build(log, self.path)`): only its main process
        writes, and its trackers start with the folder."""
        self.accelerator = accelerator
        self.enabled = accelerator.is_main_process

    def ensure(self) -> Path:
        if self.enabled and not self._created:
            if self.mode == "overwrite" and self.path.exists():
                shutil.rmtree(self.path)
            self.path.mkdir(parents=True, exist_ok=True)
            if self.mode == "new" and (self.path / "config.yaml").exists():  # another run took the name meanwhile
                raise UserError(f"log.name: the run folder {self.path} was created by another run meanwhile")
            dump_yaml(self.recipe, self.path / "config.yaml")
            self._created = True
            if self._tracking():
                trackers.start(self.accelerator, self.recipe)
        return self.path

    def _tracking(self) -> bool:
        return self.accelerator is not None and bool(self.recipe.log.report_to)

    def metrics(self, row: dict) -> None:
        if self.enabled:
            with open(self.ensure() / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            if self._tracking():
                self.accelerator.log(trackers.scalars(row), step=row.get("step"))

    def traces(self, traces, step: int | None = None) -> None:
        """A traces.jsonl dump; with `step`, also the completions table of these traces to the trackers."""
        if self.enabled:
            dump_jsonl(traces, self.ensure() / "traces.jsonl", append=True)
            if step is not None and self._tracking():
                trackers.log_table(self.accelerator, traces, step)

    def summary(self, summary: dict, step: int) -> None:
        """summary.json, and its numbers to the trackers at the last step (as summary/<key>)."""
        self.write_json("summary.json", summary)
        if self.enabled and self._tracking():
            self.accelerator.log(trackers.scalars(summary, "summary/"), step=step)

    def write_json(self, name: str, obj) -> None:
        if self.enabled:
            tmp = self.ensure() / (name + ".tmp")
            tmp.write_text(json.dumps(obj, indent=2))
            os.replace(tmp, self.path / name)
