"""SCoRe on the tiny world: the second attempt stops breaking right answers (issue 3 acceptance, shortened)."""

import json
from pathlib import Path

import pytest

from selfimprove.cli import main
from selfimprove.loop import run
from selfimprove.recipe import load_recipe
from selfimprove.tiny.variants import ensure_tiny_correct

ROOT = Path(__file__).resolve().parents[2]


def self_correction(model, tmp_path, name):
    out = tmp_path / f"{name}.json"
    assert main(["eval", model, "--data", "arith", "--turns", "2", "--k", "4", "--n", "500", "--temperature", "1.0",
                 "--max-new-tokens", "8", "--out", str(out)]) == 0
    return json.loads(out.read_text())


@pytest.mark.slow
def test_score_raises_delta_without_lowering_first_attempt_accuracy(tmp_path):
    start = str(ensure_tiny_correct(log=lambda *a: None))
    before = self_correction(start, tmp_path, "before")
    assert before["delta"] < 0 and before["delta_c2i"] > 0 and before["delta_i2c"] > 0  # fixes and breaks
    recipe = load_recipe(ROOT / "recipes/score/tiny_arith.yaml",
                         ["model.path=tiny-correct", "train.steps=300", "algorithm.stage1_steps=60",
                          f"log.out={tmp_path}", "log.name=score", "log.progress=false"])
    summary = run(recipe, log=lambda *a: None)
    after = self_correction(summary["run_dir"] + "/checkpoints/step-000300", tmp_path, "after")
    assert after["delta"] - before["delta"] >= 0.03, (before, after)
    assert after["acc_t1"] >= before["acc_t1"] - 0.02, (before, after)
