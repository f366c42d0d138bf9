"""train.lr_schedule: infinite (warm-up, cool-down, constant, annealing) and the multi-round recipe that uses
it: a later round continues the main line at the constant rate (no re-warming), exactly as one long run."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from scripts.rounds import main as rounds
from selfimprove.cli import main
from selfimprove.optim import infinite_lambda, lr_lambda


def test_infinite_schedule_worked_numbers():
    f = infinite_lambda(warm=2, total=12, cooldown=4, const=0.5, anneal=3, floor=0.0)
    c = [0.5 + 0.25 * (1 + math.cos(math.pi * k / 4)) for k in (1, 2, 3)]  # cosine cool-down 1 -> 0.5
    expected = [0.5, 1.0, *c, 0.5, 0.5, 0.5, 0.5, 1 / 3, 1 / 6, 0.0]
    assert [f(i) for i in range(12)] == pytest.approx(expected)
    assert c == pytest.approx([0.926777, 0.75, 0.573223], abs=1e-6)
    # a later round (the run ends later): the same rates up to the old annealing, then still constant
    later = infinite_lambda(warm=2, total=20, cooldown=4, const=0.5, anneal=3, floor=0.0)
    assert [later(i) for i in range(9)] == pytest.approx(expected[:9])
    assert [later(i) for i in range(9, 17)] == [0.5] * 8 and later(19) == 0.0
    assert lr_lambda("infinite", 2, 12, (4, 0.5, 3, 0.0))(10) == pytest.approx(1 / 6)
    # the scheduler's step after the last (i = total): the floor, never below; no annealing: still constant
    assert f(12) == 0.0 and f(13) == 0.0
    assert infinite_lambda(warm=2, total=12, cooldown=4, const=0.5, anneal=0, floor=0.0)(12) == 0.5


@pytest.mark.parametrize("override, message", [
    ("train.lr_anneal_steps=9", "exceed the run's"),
    ("train.mini_batches=2|train.lr_anneal_steps=3", "must be a multiple of train.mini_batches=2"),
    ("train.lr_constant_ratio=0", "train.lr_constant_ratio must be in (0, 1]"),
    ("train.lr_min_ratio=0.9", "train.lr_min_ratio must be <= train.lr_constant_ratio"),
    ("train.lr_schedule=forever", "train.lr_schedule must be constant, linear, cosine or infinite"),
])
def test_bad_infinite_schedules_are_one_line(write_recipe, capsys, override, message):
    base = ["train.lr_schedule=infinite", "train.steps=6", "train.lr_cooldown_steps=2", "train.lr_anneal_steps=2"]
    assert main(["train", str(write_recipe()), *base, *override.split("|")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


ROOT = Path(__file__).resolve().parents[1]
INFINITE = {"lr_schedule": "infinite", "warmup_steps": 1, "lr_cooldown_steps": 1, "lr_constant_ratio": 0.5,
            "lr_anneal_steps": 2, "lr_min_ratio": 0.0, "steps": 5, "lr": 1e-3}


def test_rounds_continue_the_main_line_exactly_as_one_long_run(tmp_path, write_recipe, capsys):
    recipe = write_recipe(train=INFINITE, eval={"before": True, "after": True})
    assert rounds([str(recipe), "--rounds", "2", "--round-steps", "3", "--name", "r"]) == 0
    out = capsys.readouterr().out
    assert "round  steps  held-out accuracy" in out
    one, two = tmp_path / "runs" / "r-round1", tmp_path / "runs" / "r-round2"
    # round 1 saved the main line where its annealing started (step 3) and its annealed end (step 5)
    assert sorted(p.name for p in (one / "checkpoints").iterdir()) == ["step-000003", "step-000005"]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["resumed_from"].endswith("r-round1/checkpoints/step-000003") and summary["steps"] == 8
    lrs = [json.loads(x)["lr"] for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert max(lrs) <= 0.5e-3 + 1e-12  # never back above the constant rate: no re-warming
    # the same 8 steps in one run (no rounds) end at the same weights, bit for bit
    # in its own process, as the rounds ran: the suite's process may have other torch threads (summation order)
    done = subprocess.run([sys.executable, "-m", "selfimprove", "train", str(recipe), "train.steps=8", "log.name=long",
                           "eval.after=false"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    a = load_file(two / "checkpoints/step-000008/model/model.safetensors")
    b = load_file(tmp_path / "runs/long/checkpoints/step-000008/model/model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
