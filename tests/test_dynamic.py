"""Dynamic sampling with refill (DAPO), pi_old from the trainer and the KL forms on short tiny-model runs."""

import json
from types import SimpleNamespace

import pytest

from selfimprove import dynamic
from selfimprove.algorithms import get_algorithm
from selfimprove.algorithms.grpo import Config
from selfimprove.cli import main
from tests.conftest import make_trace
from tests.test_safety import SHORT, same, weights


def stub_state(rounds: int):
    acc = SimpleNamespace(num_processes=1, device="cpu", reduce=lambda t, op: t)
    recipe = SimpleNamespace(algorithm=Config(filter_groups=True, max_refill_rounds=rounds),
                             train=SimpleNamespace(prompts_per_step=3))
    return SimpleNamespace(algo=get_algorithm("grpo"), recipe=recipe, accelerator=acc, data_offset=6)


def group(name: str, rewards) -> list:
    return [make_trace(group=name, idx=i, reward=r) for i, r in enumerate(rewards)]


def test_refill_samples_the_next_prompts_until_the_batch_is_full_and_drops_the_surplus():
    rounds = {1: group("b1", [1, 1]) + group("c1", [0, 1]), 2: group("b2", [0, 1]) + group("c2", [1, 0])}
    asked = []

    def sample(state, step, extra):
        asked.append((step, extra))
        return rounds[extra]

    state, logged = stub_state(5), {}
    first = group("a", [0, 0]) + group("b", [1, 0]) + group("c", [1, 1])  # one group of three carries signal
    out = dynamic.refill(state, 4, first, sample, lambda s, t, step: None, logged)
    # round 1 adds c1 (b1 is all-equal: kept in the traces, dropped by prepare); round 2 adds b2, c2 is surplus
    assert [tr.group_id for tr in out][::2] == ["a", "b", "c", "b1", "c1", "b2"]
    assert asked == [(4, 1), (4, 2)]
    assert state.data_offset == 6 + 2 * 3  # the stream advanced by the prompts of the two rounds
    assert {k: v for k, v in logged.items() if k != "refill/seconds"} == {"refill/rounds": [2],
                                                                         "refill/groups_kept": [3]}
    assert len(state.algo.train_traces(out, state.recipe.algorithm)) == 6


def test_refill_stops_at_the_round_limit_and_does_nothing_when_off():
    state, logged = stub_state(1), {}
    out = dynamic.refill(state, 0, group("a", [1, 1]), lambda s, st, k: group(f"r{k}", [0, 0]),
                         lambda s, t, step: None, logged)
    assert len(out) == 4 and logged["refill/rounds"] == [1] and logged["refill/groups_kept"] == [0]
    off, logged = stub_state(0), {}
    first = group("a", [1, 1])
    assert dynamic.refill(off, 0, first, None, None, logged) is first and logged == {} and off.data_offset == 6


def rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_refill_on_a_run_is_logged_and_resume_stays_exact(tmp_path, write_recipe):
    recipe = write_recipe(**SHORT, algorithm={"name": "nft", "max_refill_rounds": 2})
    assert main(["train", str(recipe), "log.name=whole"]) == 0
    got = rows(tmp_path / "runs/whole")
    assert all(r["refill/rounds"] in (0, 1, 2) and r["refill/groups_kept"] <= 4 for r in got)
    assert sum(r["refill/rounds"] for r in got) > 0  # the mini model leaves all-equal groups: refill ran
    state = json.loads((tmp_path / "runs/whole/checkpoints/step-000004/trainer_state.json").read_text())
    assert state["data_offset"] == 4 * sum(r["refill/rounds"] for r in got)
    assert state["data_position"] == 4 * 4 + state["data_offset"]
    assert main(["train", str(recipe), "log.name=cut"]) == 0
    for p in sorted((tmp_path / "runs/cut/checkpoints/step-000004").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (tmp_path / "runs/cut/checkpoints/step-000004").rmdir()
    assert main(["train", str(recipe), "log.name=cut", "train.resume=auto"]) == 0  # from step 2
    assert same(weights(tmp_path / "runs/whole", 4), weights(tmp_path / "runs/cut", 4))
    assert [r["reward"] for r in rows(tmp_path / "runs/cut")] == [r["reward"] for r in got]


@pytest.mark.parametrize("kl", [{"kl_estimator": "full"}, {"kl_estimator": "k1", "kl_in": "reward"}])
def test_grpo_trains_with_the_exact_kl_and_with_k1_in_the_reward(tmp_path, write_recipe, kl):
    algo = {"name": "grpo", "kl_coef": 0.1, **kl}
    recipe = write_recipe(**{**SHORT, "train": {**SHORT["train"], "steps": 2}}, algorithm=algo)
    assert main(["train", str(recipe)]) == 0
    got = rows(tmp_path / "runs/run")
    if kl["kl_estimator"] == "full":
        assert got[0]["kl"] == pytest.approx(0.0, abs=1e-6) and got[1]["kl"] > 1e-6  # the policy left the reference
    else:
        assert "kl" not in got[1]  # no KL term in the loss
        traces = [json.loads(line) for line in (tmp_path / "runs/run/traces.jsonl").read_text().splitlines()]
        second = [t for t in traces if t["policy_version"] == 1]
        assert second and all(len(t["meta"]["kl.k1"]) == 1 for t in second)
        assert any(abs(t["meta"]["kl.k1"][0]) > 1e-6 for t in second)


def test_nft_with_pi_old_from_the_trainer(tmp_path, write_recipe):
    recipe = write_recipe(**{**SHORT, "train": {**SHORT["train"], "steps": 2}},
                          algorithm={"name": "nft", "old_logprobs": "trainer"})
    assert main(["train", str(recipe)]) == 0
    row = rows(tmp_path / "runs/run")[0]
    # hf samples from the trainer's own weights: the recomputed pi_old equals the sampler's up to rounding
    assert row["mismatch/abs_log_ratio"] < 1e-3
