"""End-of-run outputs: the summary table on the console and PNG curves of reward and accuracy."""

from __future__ import annotations

from pathlib import Path


def summary_table(summary: dict) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="selfimprove run summary", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if isinstance(value, float):
            text = f"{value:.1%}" if key.startswith("accuracy") else f"{value:.4g}"
        else:
            text = str(value)
        table.add_row(key, text)
    console = Console(width=100, record=True)
    with console.capture() as cap:
        console.print(table)
    return cap.get().rstrip()


def plot_run(run_dir: Path, history: list[dict], evals: list[tuple[int, float]]) -> None:
    """reward.png: mean reward per step (and its 10-step moving average); accuracy.png: eval accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if history:
        steps = [r["step"] for r in history]
        rewards = [r["reward"] for r in history]
        k = 10
        smooth = [sum(rewards[max(0, i - k + 1) : i + 1]) / len(rewards[max(0, i - k + 1) : i + 1]) for i in range(len(rewards))]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(steps, rewards, alpha=0.35, label="reward")
        ax.plot(steps, smooth, label=f"{k}-step mean")
        ax.set_xlabel("step")
        ax.set_ylabel("mean reward")
        ax.legend()
        fig.tight_layout()
        fig.savefig(run_dir / "reward.png", dpi=100)
        plt.close(fig)
    if evals:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([s for s, _ in evals], [100 * a for _, a in evals], marker="o")
        ax.set_xlabel("step")
        ax.set_ylabel("held-out accuracy (%)")
        fig.tight_layout()
        fig.savefig(run_dir / "accuracy.png", dpi=100)
        plt.close(fig)
