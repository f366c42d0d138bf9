"""scripts/compare_runs.py: the refactoring proof finds equal runs equal and names a difference."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_folder(path: Path, loss: float, seconds: float) -> Path:
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({"accuracy_after": 0.3, "train_seconds": seconds,
                                                   "eval_rewards_after": {"math_correct": 0.3}}))
    rows = [{"step": 1, "loss": 0.5, "time/step": seconds}, {"step": 2, "loss": loss, "time/step": seconds}]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def compare(*paths):
    return subprocess.run([sys.executable, str(ROOT / "scripts/compare_runs.py"), *map(str, paths)],
                          capture_output=True, text=True)


def test_times_are_ignored_and_a_changed_number_is_named(tmp_path):
    a, b = run_folder(tmp_path / "a", 0.25, 1.0), run_folder(tmp_path / "b", 0.25, 9.0)
    same = compare(a, b)
    assert same.returncode == 0 and "ALL EQUAL" in same.stdout
    c = run_folder(tmp_path / "c", 0.2500001, 1.0)
    diff = compare(a, c)
    assert diff.returncode == 1 and "step 2: loss: 0.25 vs 0.2500001" in diff.stdout
