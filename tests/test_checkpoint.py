"""Exact resume: a run killed (SIGKILL) mid-way or mid-save and resumed ends with the weights of an
uninterrupted run (issue 5 acceptance, CPU)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from selfimprove.cli import main

ROOT = Path(__file__).resolve().parents[1]

RESUMABLE = dict(seed=3, log={"traces_every": 1, "save_every": 2, "keep_last": 3},
                 train={"steps": 6, "prompts_per_step": 4, "micro_batch_size": 8, "mini_batches": 2, "threads": 1,
                        "lr_schedule": "linear", "warmup_steps": 2},
                 eval={"before": True, "after": True, "n": 8})


def train(recipe, name, *extra, fault=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("SELFIMPROVE_FAULT", None)
    if fault:
        env["SELFIMPROVE_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "selfimprove", "train", str(recipe), f"log.name={name}", *extra],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def weights(run_dir, step=6):
    return load_file(str(run_dir / "checkpoints" / f"step-{step:06d}" / "model" / "model.safetensors"))


@pytest.mark.slow
def test_killed_runs_resume_to_the_weights_of_an_uninterrupted_run(tmp_path, write_recipe):
    recipe = write_recipe(**RESUMABLE)
    assert train(recipe, "whole").returncode == 0
    expected = weights(tmp_path / "runs/whole")

    # SIGKILL at the start of step 5: checkpoints 2 and 4 are whole
    killed = train(recipe, "killed", fault="kill_at_step:5")
    assert killed.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (tmp_path / "runs/killed/checkpoints").iterdir()) == ["step-000002", "step-000004"]
    resumed = train(recipe, "killed", "train.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got = weights(tmp_path / "runs/killed")
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    whole_rows = (tmp_path / "runs/whole/metrics.jsonl").read_text().splitlines()
    rows = (tmp_path / "runs/killed/metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # rows after the checkpoint were dropped
    assert [json.loads(r)["loss"] for r in rows] == [json.loads(r)["loss"] for r in whole_rows]
    summary = json.loads((tmp_path / "runs/killed/summary.json").read_text())
    assert summary["accuracy_before"] == json.loads((tmp_path / "runs/whole/summary.json").read_text())["accuracy_before"]
    assert summary["resumed_from"].endswith("step-000004")

    # SIGKILL while writing checkpoint 4: its temporary folder is ignored, the run resumes from step 2
    torn = train(recipe, "torn", fault="kill_in_save:4")
    assert torn.returncode == -signal.SIGKILL
    names = sorted(p.name for p in (tmp_path / "runs/torn/checkpoints").iterdir())
    assert names == [".step-000004.tmp", "step-000002"]
    resumed = train(recipe, "torn", "train.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout + resumed.stderr and "step-000002" in resumed.stdout + resumed.stderr
    got = weights(tmp_path / "runs/torn")
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_resume_needs_a_whole_checkpoint_or_a_run_name(tmp_path, write_recipe):
    recipe = write_recipe(**RESUMABLE)
    assert main(["train", str(recipe), f"train.resume={tmp_path}/nothing"]) == 2
    assert main(["train", str(recipe), "train.resume=auto", "log.name=null"]) == 2
