"""What a training run shows while it runs: a bar on a terminal, else a plain line every log.every steps."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def progress_line(row: dict, t, seconds: float, steps: int) -> str:
    """One plain progress line: step, reward, loss, seconds per step and the time left (steps or budget)."""
    per_step = seconds / max(steps, 1)
    left = (t.steps - row["step"]) * per_step
    if t.max_seconds:
        left = min(left, max(t.max_seconds - row["time/elapsed"], 0.0))
    return (f"step {row['step']}/{t.steps}  reward {row['reward']:.3f}  loss {row['loss']:.4g}  "
            f"{per_step:.2f} s/step  ETA {int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}")


def progress_bar(enabled: bool):
    if not enabled:
        return None
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=False)

