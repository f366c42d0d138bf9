"""The run folder: resolved config, metrics.jsonl, traces.jsonl, summary (checkpoints: checkpoint.py).

The folder is created on the first write, i.e. once the first training step has passed: a recipe
or data mistake found during setup or the first step leaves nothing half-written behind.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from selfimprove.options import dump_yaml
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
            dump_yaml(self.recipe, self.path / "config.yaml")
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
