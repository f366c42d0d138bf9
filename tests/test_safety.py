"""Trust at the boundary (issue 11): checkpoints are data, a run folder is never damaged by another run,
signals save, non-finite values stop early, damaged state is survivable, resources are bounded."""

import errno
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
from selfimprove.recipe import load_recipe
from selfimprove.runlog import RunLog
from selfimprove.state import setup

ROOT = Path(__file__).resolve().parents[1]
SHORT = dict(seed=1, log={"save_every": 2, "keep_last": 3, "traces_every": 1},
             train={"steps": 4, "prompts_per_step": 4, "micro_batch_size": 8, "threads": 1})


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def weights(run: Path, step: int) -> dict:
    return load_file(str(run / "checkpoints" / f"step-{step:06d}" / "model" / "model.safetensors"))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


class Evil:
    """Unpickling this (with weights_only=False) would create a folder: code run from data."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_crafted_trainer_state_runs_no_code(tmp_path, write_recipe, capsys):
    recipe = write_recipe(**{**SHORT, "log": {"save_every": 2, "keep_last": 1}})
    assert main(["train", str(recipe)]) == 0
    ckpt = tmp_path / "runs/run/checkpoints/step-000004"
    marker = tmp_path / "pwned"
    torch.save({"optimizer": Evil(str(marker)), "rng": []}, ckpt / "trainer_state.pt")
    capsys.readouterr()
    for resume in (str(ckpt), "auto"):
        assert main(["train", str(recipe), f"train.resume={resume}", "train.steps=6"]) == 2
        err = one_error_line(capsys)
        assert "trainer_state" in err or "damaged" in err or "loads" in err, err
        assert not marker.exists()


def test_a_second_run_never_touches_an_existing_run_folder(tmp_path, write_recipe, capsys):
    recipe = write_recipe(**SHORT)
    assert main(["train", str(recipe)]) == 0
    before = snapshot(tmp_path / "runs/run")
    capsys.readouterr()
    assert main(["train", str(recipe), "train.lr=0.5"]) == 2
    err = one_error_line(capsys)
    assert "exists" in err and "train.resume=auto" in err and "log.overwrite=true" in err
    assert snapshot(tmp_path / "runs/run") == before
    for name in ("../escape", "/tmp/abs", "a/b", "..", ".hidden"):
        assert main(["train", str(recipe), f"log.name={name}"]) == 2
        assert "log.name must be a plain folder name" in one_error_line(capsys)
    # log.overwrite=true replaces it: the old checkpoints are gone, the new run is whole
    assert main(["train", str(recipe), "log.overwrite=true", "train.steps=2"]) == 0
    assert sorted(p.name for p in (tmp_path / "runs/run/checkpoints").iterdir()) == ["step-000002"]


def test_a_truncated_newest_checkpoint_resumes_from_the_one_before(tmp_path, write_recipe, capsys):
    recipe = write_recipe(**SHORT)
    assert main(["train", str(recipe), "log.name=whole"]) == 0
    assert main(["train", str(recipe), "log.name=cut"]) == 0
    newest = tmp_path / "runs/cut/checkpoints/step-000004/model/model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with open(tmp_path / "runs/cut/metrics.jsonl", "a") as f:
        f.write('{"step": 5, "rew')  # a torn last line
    capsys.readouterr()
    assert main(["train", str(recipe), "log.name=cut", "train.resume=auto"]) == 0
    out = capsys.readouterr().out
    assert "step-000004 is damaged" in out and "resuming from" in out and "step-000002" in out
    assert same(weights(tmp_path / "runs/whole", 4), weights(tmp_path / "runs/cut", 4))
    rows = [json.loads(line) for line in (tmp_path / "runs/cut/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]


def test_a_recipe_that_no_longer_matches_the_checkpoint_is_one_line(tmp_path, write_recipe, capsys):
    recipe = write_recipe(**SHORT)
    assert main(["train", str(recipe)]) == 0
    capsys.readouterr()
    assert main(["train", str(recipe), "train.resume=auto", "model.lora_r=8", "train.steps=6"]) == 2
    assert "saved with model.lora_r=0, this run has 8" in one_error_line(capsys)
    assert main(["train", str(recipe), "train.resume=auto", "algorithm.name=grpo", "train.steps=6"]) == 2
    assert "saved with algorithm.name=nft" in one_error_line(capsys)




def fails_at_step_3(traces, ctx):
    if ctx.step == 2 and os.environ.get("SELFIMPROVE_TEST_FAIL") == "1":
        raise ValueError("the grader is down")
    return [float(tr.completion.text.strip().lstrip("-").isdigit()) for tr in traces]


def test_a_failure_after_step_one_leaves_a_folder_resume_continues(tmp_path, write_recipe, capsys, monkeypatch):
    rewards = [{"fn": "tests.test_safety:fails_at_step_3"}, {"fn": "math_correct"}]
    recipe = write_recipe(**{**SHORT, "log": {"save_every": 1, "keep_last": 2}}, rewards=rewards)
    assert main(["train", str(recipe), "log.name=whole"]) == 0
    monkeypatch.setenv("SELFIMPROVE_TEST_FAIL", "1")
    capsys.readouterr()
    assert main(["train", str(recipe)]) == 2
    err = one_error_line(capsys)
    assert "the grader is down" in err and "step-000002 is the last whole one" in err
    assert "train.resume=auto log.name=run" in err
    rows = (tmp_path / "runs/run/metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2]  # logs and checkpoints agree
    monkeypatch.delenv("SELFIMPROVE_TEST_FAIL")
    assert main(["train", str(recipe), "train.resume=auto"]) == 0
    assert same(weights(tmp_path / "runs/whole", 4), weights(tmp_path / "runs/run", 4))


def test_a_full_disk_is_one_line_and_keeps_the_last_whole_checkpoint(tmp_path, write_recipe, capsys, monkeypatch):
    write = RunLog.metrics

    def full_at_step_3(self, row):
        if row["step"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path / "metrics.jsonl"))
        write(self, row)

    monkeypatch.setattr(RunLog, "metrics", full_at_step_3)
    recipe = write_recipe(**{**SHORT, "log": {"save_every": 2, "keep_last": 2}})
    assert main(["train", str(recipe)]) == 2
    err = one_error_line(capsys)
    assert "No space left on device" in err and "metrics.jsonl" in err and "step-000002 is the last whole one" in err
    assert sorted(p.name for p in (tmp_path / "runs/run/checkpoints").iterdir()) == ["step-000002"]


def huge_at_step_2(traces, ctx):
    """A finite reward so large that the gradient overflows at step 2 only."""
    scale = 1e308 if ctx.step == 1 else 1.0
    return [scale * (i % 2) for i in range(len(traces))]


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_a_non_finite_gradient_stops_or_skips_and_nothing_non_finite_is_saved(tmp_path, write_recipe, capsys, mode):
    recipe = write_recipe(**{**SHORT, "log": {"save_every": 1, "keep_last": 5}},
                          rewards=[{"fn": "tests.test_safety:huge_at_step_2"}],
                          algorithm={"name": "grpo", "scale_rewards": "none"})
    code = main(["train", str(recipe), f"train.on_nonfinite={mode}"])
    run = tmp_path / "runs/run"
    if mode == "stop":
        assert code == 2
        err = one_error_line(capsys)
        assert "step 2: the gradient norm is" in err and "step-000001 is the last whole one" in err
    else:
        assert code == 0, capsys.readouterr().err
        rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["skipped_nonfinite"] for r in rows] == [0, 1, 0, 0]
    for ckpt in (run / "checkpoints").iterdir():
        assert all(torch.isfinite(t).all() for t in load_file(str(ckpt / "model" / "model.safetensors")).values())


def never_applies(traces, ctx):
    return [None] * len(traces)


def test_a_reward_that_applies_to_nothing_is_a_visible_warning(write_recipe, capsys):
    rewards = [{"fn": "tests.test_safety:never_applies"}, {"fn": "math_correct"},
               {"fn": "tests.test_safety:never_applies", "name": "metric_only", "weight": 0.0}]
    assert main(["train", str(write_recipe(**SHORT, rewards=rewards))]) == 0
    out = capsys.readouterr().out
    assert "warning: reward 'tests.test_safety:never_applies' applied to no trace (returned None) for 3 steps" in out
    assert "math_correct' applied" not in out
    assert "metric_only' applied" not in out  # a weight-0 reward is a metric: it may apply only on the eval set


def test_training_prompts_are_drawn_lazily(write_recipe):
    """train.steps as a huge upper bound costs nothing before step 1 (the prompts are a stream)."""
    recipe = load_recipe(write_recipe(**SHORT), ["train.steps=1000000000000", "train.max_seconds=5"])
    state = setup(recipe, log=lambda *a: None)
    assert len(state.train_examples.items) == 2000  # the prompt-length sample only
    assert state.train_examples[5000].id == "arith-train-5000"


def test_thread_counts_are_capped(write_recipe, capsys):
    threads = torch.get_num_threads()
    try:
        assert main(["train", str(write_recipe(**SHORT)), "train.threads=100000", "train.steps=1"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert "warning: train.threads=100000 is more than the" in capsys.readouterr().out


# --------------------------------------------------------------------------- signals (subprocesses)


def launch(recipe, name, *extra, fault=None, processes=1):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("SELFIMPROVE_FAULT", None)
    if fault:
        env["SELFIMPROVE_FAULT"] = fault
    if processes == 1:
        cmd = [sys.executable, "-m", "selfimprove"]
    else:
        cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
               str(ROOT / "recipes/accelerate/cpu_2proc.yaml"), "-m", "selfimprove"]
    return subprocess.run([*cmd, "train", str(recipe), f"log.name={name}", *extra], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("processes,fault,code", [(1, "sigint_at_step:3", 130), (1, "sigterm_at_step:3", 143),
                                                  (2, "sigint_at_step:3", None)])
def test_a_signal_saves_and_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, write_recipe, processes, fault,
                                                                           code):
    recipe = write_recipe(**{**SHORT, "log": {"save_every": 0}, "train": {**SHORT["train"], "steps": 5}})
    whole = launch(recipe, "whole", processes=processes)
    assert whole.returncode == 0, whole.stderr[-3000:]
    stopped = launch(recipe, "stopped", fault=fault, processes=processes)
    name = "SIGINT" if "sigint" in fault else "SIGTERM"
    if code is not None:
        assert stopped.returncode == code
        assert stopped.stderr.strip().splitlines() == [
            f"error: interrupted by {name} after step 3: saved {tmp_path}/runs/stopped/checkpoints/step-000003; "
            f"continue with selfimprove train {recipe} train.resume=auto log.name=stopped"]
    else:  # several processes: the launcher reports the exit; the main process printed the resume command
        assert stopped.returncode != 0
        assert f"error: interrupted by {name} after step 3" in stopped.stderr
    assert sorted(p.name for p in (tmp_path / "runs/stopped/checkpoints").iterdir()) == ["step-000003"]
    resumed = launch(recipe, "stopped", "train.resume=auto", processes=processes)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert same(weights(tmp_path / "runs/whole", 5), weights(tmp_path / "runs/stopped", 5))


def test_signal_handlers_are_restored_after_a_run(write_recipe):
    before = signal.getsignal(signal.SIGINT)
    assert main(["train", str(write_recipe(**SHORT)), "train.steps=1"]) == 0
    assert signal.getsignal(signal.SIGINT) is before
