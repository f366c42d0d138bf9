"""Asynchronous rollout (generation.max_staleness, selfimprove/ahead.py): which weights sample which batch,
exact resume after SIGKILL, learning like the synchronous loop, and its errors."""

import json
import signal

import pytest
import torch

from selfimprove.ahead import sample_step
from selfimprove.cli import main
from selfimprove.loop import run
from selfimprove.recipe import load_recipe
from selfimprove.state import setup
from selfimprove.tiny.model import ensure_tiny
from tests.test_checkpoint import RESUMABLE, ROOT, train, weights

ASYNC = dict(train={"steps": 4, "lr": 5e-3, "threads": 1}, log={"traces_every": 1, "traces_per_step": 100})


def traces_by_step(run_dir):
    out = {}
    for line in (run_dir / "traces.jsonl").read_text().splitlines():
        row = json.loads(line)  # ids are s{step}-r{process}-{prompt}-{sample}
        out.setdefault(int(row["id"].split("-")[0][1:]) + 1, []).append(row)
    return out


@pytest.mark.parametrize("k", [1, 2])
def test_each_batch_is_sampled_by_the_weights_k_updates_old_at_most(tmp_path, write_recipe, k):
    recipe = load_recipe(write_recipe(**ASYNC), [f"generation.max_staleness={k}"])
    run(recipe, log=lambda *a: None)
    d = tmp_path / "runs" / "run"
    by_step = traces_by_step(d)
    # k = 1: the engine gets the weights before every update and samples the next batch behind it;
    # k = 2: it gets them at even steps only (steps 0 and 2), so batches lag 1, 1, 2 updates
    versions = {1: [0, 0, 1, 2], 2: [0, 0, 0, 2]}[k]
    assert [{t["policy_version"] for t in by_step[s + 1]} for s in range(4)] == [{v} for v in versions]
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["staleness"] for r in rows] == [s - v for s, v in enumerate(versions)]
    assert all(r["time/rollout_wait"] >= 0 for r in rows)

    # the batch of step 2 is exactly what the starting weights sample for its prompts and seeds
    fresh = load_recipe(write_recipe("fresh", **ASYNC), ["log.name=fresh"])
    state = setup(fresh, log=lambda *a: None)
    again = sample_step(state, 1)
    got = [t["turns"][-1]["token_ids"] for t in by_step[2]]
    assert got == [t.turns[-1].token_ids for t in again]
    assert len(got) == 16


def test_staleness_zero_keeps_the_synchronous_loop(tmp_path, write_recipe):
    """max_staleness 0 is the synchronous loop: same traces and weights as the default, and no lag metrics;
    max_staleness 1 differs from step 2 on (its step-2 batch comes from the starting weights)."""
    sync = run(load_recipe(write_recipe(**ASYNC), ["log.name=sync", "log.save_final=true"]), log=lambda *a: None)
    zero = run(load_recipe(write_recipe(**ASYNC), ["log.name=zero", "generation.max_staleness=0",
                                                   "log.save_final=true"]), log=lambda *a: None)
    one = run(load_recipe(write_recipe(**ASYNC), ["log.name=one", "generation.max_staleness=1",
                                                  "log.save_final=true"]), log=lambda *a: None)
    runs = tmp_path / "runs"
    a, b, c = (traces_by_step(runs / n) for n in ("sync", "zero", "one"))
    assert a == b
    # step 1: the same tokens from the same weights (the engine's copy rounds the log-probs' last bits apart)
    assert all(x["turns"][1]["token_ids"] == y["turns"][1]["token_ids"] for x, y in zip(a[1], c[1]))
    assert all(x["turns"][1]["logprobs"] == pytest.approx(y["turns"][1]["logprobs"], abs=1e-5) for x, y in zip(a[1], c[1]))
    assert a[2] != c[2]
    w_sync, w_zero, w_one = (weights(runs / n, 4) for n in ("sync", "zero", "one"))
    assert all(torch.equal(w_sync[k], w_zero[k]) for k in w_sync)
    assert not all(torch.equal(w_sync[k], w_one[k]) for k in w_sync)
    assert "staleness" not in json.loads((runs / "zero/metrics.jsonl").read_text().splitlines()[0])
    assert sync["final_reward"] == zero["final_reward"] and one["steps"] == 4


@pytest.mark.slow
def test_a_killed_asynchronous_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, write_recipe):
    recipe = write_recipe(**RESUMABLE, generation={"n": 4, "max_new_tokens": 5, "max_staleness": 1})
    assert train(recipe, "whole").returncode == 0
    expected = weights(tmp_path / "runs/whole")
    killed = train(recipe, "killed", fault="kill_at_step:5")
    assert killed.returncode == -signal.SIGKILL
    resumed = train(recipe, "killed", "train.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got = weights(tmp_path / "runs/killed")
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    rows = [json.loads(r) for r in (tmp_path / "runs/killed/metrics.jsonl").read_text().splitlines()]
    whole = [json.loads(r) for r in (tmp_path / "runs/whole/metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == [r["loss"] for r in whole]
    assert [r["staleness"] for r in rows] == [0, 1, 1, 1, 1, 1]
    # the batch of step 5 was in flight at checkpoint 4: it came back from the checkpoint, not sampled anew
    assert traces_by_step(tmp_path / "runs/killed")[5] == traces_by_step(tmp_path / "runs/whole")[5]


@pytest.mark.slow
@pytest.mark.parametrize("k, extra", [(1, {"algorithm": {"name": "grpo", "filter_groups": True, "max_refill_rounds": 2}}),
                                      (2, {})])
def test_resume_is_exact_with_refill_rounds_and_with_pushes_every_k_steps(tmp_path, write_recipe, k, extra):
    """Refill rounds sample in the main thread after the step's push (a resumed run pushes at the step after
    its checkpoint, as the uninterrupted one does); with k = 2 the pushes fall at even steps and after
    checkpoints alike in both runs."""
    recipe = write_recipe(**RESUMABLE, generation={"n": 4, "max_new_tokens": 5, "max_staleness": k}, **extra)
    assert train(recipe, "whole").returncode == 0
    killed = train(recipe, "killed", fault="kill_at_step:5")
    assert killed.returncode == -signal.SIGKILL
    resumed = train(recipe, "killed", "train.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected, got = weights(tmp_path / "runs/whole"), weights(tmp_path / "runs/killed")
    assert all(torch.equal(expected[n], got[n]) for n in expected)
    rows = [json.loads(r) for r in (tmp_path / "runs/killed/metrics.jsonl").read_text().splitlines()]
    whole = [json.loads(r) for r in (tmp_path / "runs/whole/metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == [r["loss"] for r in whole]
    assert [r["staleness"] for r in rows] == [r["staleness"] for r in whole]
    if extra:
        assert any(r.get("refill/rounds", 0) > 0 for r in whole)  # the refill did sample


def fails_at_step_two(completions, trainer_state=None, **kw):
    if trainer_state is not None and trainer_state.global_step >= 1:
        raise ValueError("boom")
    return [0.0] * len(completions)


def test_a_reward_that_fails_in_the_rollout_thread_stops_the_run_in_one_line(write_recipe, capsys):
    p = write_recipe(**ASYNC, rewards=[{"fn": "tests.test_async_rollout:fails_at_step_two"}, {"fn": "math_correct"}])
    assert main(["train", str(p), "generation.max_staleness=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: step 2:") and "boom" in err[0], err


@pytest.mark.slow
def test_staleness_one_learns_the_tiny_world_like_the_synchronous_loop(tmp_path):
    """The GRPO recipe on the tiny world for 80 steps: held-out accuracy gains within noise of each other
    (300 problems: a binomial standard error of about 2.5 points on each accuracy)."""
    ensure_tiny(log=lambda *a: None)
    gains = {}
    for k in (0, 1):
        recipe = load_recipe(ROOT / "recipes/grpo/tiny_arith.yaml", [
            "train.steps=80", "train.lr=1e-4", "eval.n=300", f"generation.max_staleness={k}", f"log.out={tmp_path}",
            f"log.name=k{k}", "log.progress=false", "log.traces_every=0", "log.save_final=false"])
        gains[k] = run(recipe, log=lambda *a: None)["accuracy_gain"]
    assert gains[0] > 0.05 and gains[1] > 0.05, gains
    assert abs(gains[1] - gains[0]) < 0.08, gains


@pytest.mark.parametrize("extra, message", [
    (["generation.max_staleness=-1"], "generation.max_staleness must be >= 0, got -1"),
    (["generation.max_staleness=1", "generation.backend=vllm"],
     "generation.max_staleness > 0 needs an engine of its own while the update runs"),
])
def test_bad_staleness_is_one_line(write_recipe, capsys, extra, message):
    assert main(["train", str(write_recipe(**ASYNC)), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_a_damaged_batch_in_flight_in_a_checkpoint_is_one_line(tmp_path, write_recipe, capsys):
    p = write_recipe(**{**ASYNC, "log": {"save_every": 2, "traces_every": 0}})
    assert main(["train", str(p), "generation.max_staleness=1", "train.steps=2"]) == 0
    state_file = tmp_path / "runs/run/checkpoints/step-000002/trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["ahead"]["batches"][0] is None  # the last step submits nothing
    state["ahead"]["batches"][0] = {"step": 2, "traces": [{"id": "x"}]}  # a trace without its fields
    state_file.write_text(json.dumps(state))
    capsys.readouterr()
    assert main(["train", str(p), "generation.max_staleness=1", "train.steps=4", "train.resume=auto"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: train.resume: the checkpoint's batch in flight "
                                               "(trainer_state.json 'ahead') is damaged (KeyError: 'turns')"), err
