"""End-of-run outputs: the summary table on the console and PNG curves of reward and accuracy."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402


def summary_table(summary: dict, title: str = "selfimprove run summary") -> str:
    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    flat = {}
    for key, value in summary.items():  # nested blocks (eval_rewards_after: {chrf: ...}) one row each
        flat.update({f"{key}.{k}": v for k, v in value.items()} if isinstance(value, dict) else {key: value})
    for key, value in flat.items():
        if isinstance(value, float):
            percent = key.startswith(("accuracy", "acc_", "delta", "pass_at")) or key in ("cl", "cs")
            text = f"{value:.1%}" if percent else f"{value:.4g}"
        else:
            text = str(value)
        table.add_row(key, text)
    console = Console(width=100, record=True)
    with console.capture() as cap:
        console.print(table)
    return cap.get().rstrip()


def moving_mean(values: list[float], k: int = 10) -> list[float]:
    """The mean of each value and the k - 1 before it (fewer at the start)."""
    return [sum(values[max(0, i - k + 1) : i + 1]) / len(values[max(0, i - k + 1) : i + 1]) for i in range(len(values))]


def plot_run(run_dir: Path, history: list[dict], evals: list[tuple[int, float]]) -> None:
    """reward.png: mean reward per step (and its 10-step moving average); accuracy.png: eval accuracy;
    self_correction.png when the rows have two-turn metrics (SCoRe)."""
    if history:
        steps = [r["step"] for r in history]
        rewards = [r["reward"] for r in history]
        k = 10
        smooth = moving_mean(rewards, k)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(steps, rewards, alpha=0.35, label="reward")
        ax.plot(steps, smooth, label=f"{k}-step mean")
        ax.set_xlabel("step")
        ax.set_ylabel("mean reward")
        ax.legend()
        fig.tight_layout()
        fig.savefig(run_dir / "reward.png", dpi=100)
        plt.close(fig)
    if history and "selfcorrect/delta" in history[0]:
        plot_self_correction_curves(run_dir / "self_correction.png", history)
    if evals:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([s for s, _ in evals], [100 * a for _, a in evals], marker="o")
        ax.set_xlabel("step")
        ax.set_ylabel("held-out accuracy (%)")
        fig.tight_layout()
        fig.savefig(run_dir / "accuracy.png", dpi=100)
        plt.close(fig)


SELF_CORRECTION_CURVES = {"selfcorrect/delta": ("delta = Acc@t2 - Acc@t1", "tab:blue"),
                          "selfcorrect/delta_i2c": ("delta i->c (fixed)", "tab:green"),
                          "selfcorrect/delta_c2i": ("delta c->i (broken)", "tab:red")}


def plot_self_correction_curves(path: Path, history: list[dict], k: int = 10) -> None:
    """The training episodes' delta, delta i->c and delta c->i per step (points%, faint) and their k-step
    means, with a dotted line where Stage II begins when the rows say the stage (`score/stage`)."""
    steps = [r["step"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, (label, color) in SELF_CORRECTION_CURVES.items():
        values = [100 * r[key] for r in history]
        ax.plot(steps, values, color=color, alpha=0.25)
        ax.plot(steps, moving_mean(values, k), color=color, label=f"{label}, {k}-step mean")
    stage2 = [r["step"] for r in history if r.get("score/stage") == 2]
    if stage2 and stage2[0] > steps[0]:
        ax.axvline(stage2[0], color="gray", linestyle=":", label="Stage II begins")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xlabel("step")
    ax.set_ylabel("% of training episodes")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def metrics_table(m: dict, title: str = "self-correction") -> str:
    """The self-correction metrics as a console table (fractions shown as percents)."""
    return summary_table({k: (v if v is not None else "n/a") for k, v in m.items()}, title=title)


def plot_self_correction(m: dict, path) -> None:
    """Left: the four outcome classes; right: accuracy at attempt 1 and 2."""
    both = m["acc_t1"] - m["delta_c2i"]
    classes = {"right->right": both, "right->wrong": m["delta_c2i"], "wrong->right": m["delta_i2c"],
               "wrong->wrong": 1.0 - both - m["delta_c2i"] - m["delta_i2c"]}
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.bar(list(classes), [100 * v for v in classes.values()], color=["tab:green", "tab:red", "tab:blue", "tab:gray"])
    a.set_ylabel("% of samples")
    a.tick_params(axis="x", labelsize=8)
    b.bar(["Acc@t1", "Acc@t2"], [100 * m["acc_t1"], 100 * m["acc_t2"]], color=["tab:gray", "tab:blue"])
    b.set_ylabel("accuracy (%)")
    b.set_title(f"delta {100 * m['delta']:+.1f} pts")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
