"""Experiment trackers (`log.report_to`): TensorBoard, W&B, trackio and the rest of accelerate's tracking.

The Accelerator carries them (`Accelerator(log_with=...)`, built by `distributed.make_accelerator`). They
start with the run folder, at its first write (`RunLog.ensure`), so a mistake found during setup leaves no
tracker run behind. Every metrics.jsonl row, a completions table where traces.jsonl gets its dump, and the
summary's numbers go to them on the main process; `accelerator.end_training()` closes them.

Where they write: TensorBoard in `<run folder>/tensorboard/`, W&B in `<run folder>/wandb/` (online or
offline as WANDB_MODE says), trackio in its own folder (TRACKIO_DIR, default ~/.cache/huggingface/trackio);
W&B and trackio under the project `log.project` with the run folder's name as the run's name.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from accelerate.tracking import AimTracker, TensorBoardTracker, TrackioTracker, WandBTracker

from selfimprove.config import TRACKERS
from selfimprove.errors import UserError
from selfimprove.options import to_plain


def build(log, path: Path) -> list:
    """accelerate's trackers for `log.report_to`, writing under the run folder `path` (nothing is started or
    written yet). A tracker whose package is missing is one line naming the package to install."""
    for name in log.report_to:
        if importlib.util.find_spec(name) is None:  # accelerate would drop it silently (filter_trackers)
            raise UserError(f"log.report_to: {name} is not installed (pip install {TRACKERS[name]})")
    made = {
        # accelerate writes into logging_dir/<run name>: an empty name puts the events in tensorboard/ itself
        "tensorboard": lambda: TensorBoardTracker("", path / "tensorboard"),
        "wandb": lambda: WandBTracker(log.project, name=path.name, dir=str(path)),  # -> <run folder>/wandb/
        "trackio": lambda: TrackioTracker(log.project, name=path.name),
        "aim": lambda: AimTracker(log.project, path / "aim"),
    }
    # the others need no folder: accelerate builds them by name, with log.project as their project
    return [made[name]() if name in made else name for name in dict.fromkeys(log.report_to)]


def start(accelerator, recipe) -> None:
    """Start the trackers with the resolved recipe as their config (main process only, as accelerate does).
    A tracker that cannot start (e.g. W&B online without a login) is one line."""
    try:
        accelerator.init_trackers(recipe.log.project, config=flat_config(recipe))
    except Exception as e:  # noqa: BLE001 - any tracker's failure, turned into the one line of a user error
        first = (str(e).strip().splitlines() or [""])[0]
        raise UserError(f"log.report_to: a tracker could not start ({type(e).__name__}: {first})") from None


def flat_config(recipe) -> dict:
    """The recipe as one flat dict (`section.key`), values the trackers accept: numbers, booleans and strings
    as they are, lists and mappings as JSON text; unset (None) values are left out."""
    flat = {}
    for name, value in to_plain(recipe).items():  # sections are mappings here; a Dataset or function: its description
        for key, v in ([(f"{name}.{k}", v) for k, v in value.items()] if isinstance(value, dict) else [(name, value)]):
            if isinstance(v, (list, dict)):
                v = json.dumps(v, default=str)
            if v is not None:
                flat[key] = v
    return flat


def scalars(row: dict, prefix: str = "") -> dict:
    """The numbers of a metrics row or the summary (nested mappings flattened as a/b); None (a reward that
    applied to no trace), text and flags are left out, which no tracker would plot."""
    out = {}
    for key, v in row.items():
        if isinstance(v, dict):
            out.update(scalars(v, f"{prefix}{key}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and key != "step":
            out[prefix + key] = v
    return out


def completions(traces, step: int) -> tuple[list[str], list[list]]:
    """(columns, rows) of the completions table: step, prompt, completion, reward, then each named reward."""
    names = list(dict.fromkeys(k for tr in traces for k in tr.rewards))
    rows = [[step, prompt_text(tr), tr.completion.text, tr.reward, *(tr.rewards.get(n) for n in names)]
            for tr in traces]
    return ["step", "prompt", "completion", "reward", *names], rows


def prompt_text(trace) -> str:
    if trace.prompt_text is not None:
        return trace.prompt_text
    return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in trace.prompt)


def markdown_table(columns: list[str], rows: list[list]) -> str:
    """A Markdown table (TensorBoard's text tab renders it)."""

    def cell(v) -> str:
        text = "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join([*lines, *("| " + " | ".join(cell(v) for v in r) + " |" for r in rows)])


def log_table(accelerator, traces, step: int) -> None:
    """The completions table to the trackers that have a table: a W&B Table, a trackio Table, and TensorBoard
    as a Markdown text summary; accelerate offers no table for the others, which are skipped."""
    if not traces:
        return
    columns, rows = completions(traces, step)
    for tracker in accelerator.trackers:  # empty on other processes than the main one
        if tracker.name == "wandb":
            tracker.log_table("completions", columns=columns, data=rows, step=step)
        elif tracker.name == "trackio":
            import trackio

            tracker.log({"completions": trackio.Table(columns=columns, data=rows)}, step=step)
        elif tracker.name == "tensorboard":
            tracker.log({"completions": markdown_table(columns, rows)}, step=step)
