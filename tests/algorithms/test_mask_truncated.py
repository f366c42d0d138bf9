"""algorithm.mask_truncated (DAPO's overlong filtering): traces with an attempt cut at max_new_tokens get no
loss, but still count in their group's baseline."""

import json

import pytest

from selfimprove.algorithms import ALGORITHMS, get_algorithm, grpo, score, truncated
from selfimprove.loop import run
from selfimprove.recipe import load_recipe
from selfimprove.trace import Turn
from tests.conftest import make_trace


def token_parity(completions, completion_ids, **kwargs):
    """A reward that varies within groups whatever the model says: the parity of the first sampled token."""
    return [float(ids[0] % 2) for ids in completion_ids]


def _group(rewards, cut=()):
    traces = [make_trace(group="g", idx=i, reward=r) for i, r in enumerate(rewards)]
    for i in cut:
        traces[i].completion.finish_reason = "length"
    return traces


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_has_the_option_off_by_default(name):
    assert get_algorithm(name).Config().mask_truncated is False


def test_truncated_traces_leave_training_but_keep_their_place_in_the_baseline():
    algo = get_algorithm("grpo")
    kept = algo.train_traces(_group([1.0, 0.0, 0.0, 1.0], cut=[1]), grpo.Config(mask_truncated=True))
    assert [t.id for t in kept] == ["g-0", "g-2", "g-3"]
    # the group of 4 sets the baseline: mean 0.5, sample std 0.57735 -> +-0.866 (not the 3 kept traces' +-0.577)
    assert [t.advantage for t in kept] == pytest.approx([0.866, -0.866, 0.866], abs=1e-3)
    assert len(algo.train_traces(_group([1.0, 0.0, 0.0, 1.0], cut=[1]), grpo.Config())) == 4


def test_a_two_turn_episode_with_a_truncated_attempt_is_dropped():
    traces = _group([0.0, 1.0])
    for tr in traces:
        tr.turns += [Turn("user", "fix", [7]), Turn("assistant", "5", [5], [0.0], trainable=True, finish_reason="stop")]
        tr.first_attempt.reward, tr.second_attempt.reward = tr.reward, tr.reward
    traces[1].first_attempt.finish_reason = "length"  # attempt 1 cut, attempt 2 whole
    assert [truncated(t) for t in traces] == [False, True]
    kept = get_algorithm("score").train_traces(traces, score.Config(stage1_steps=0, mask_truncated=True))
    assert [t.id for t in kept] == ["g-0"]


@pytest.mark.parametrize("mask", [True, False])
def test_a_run_trains_only_on_whole_completions_when_masked(tmp_path, mini_model, write_recipe, mask):
    # max_new_tokens=1: an answer is cut unless its first token is EOS; the reward varies within groups
    p = write_recipe(algorithm={"name": "grpo", "mask_truncated": mask}, generation={"n": 4, "max_new_tokens": 1},
                     rewards=[{"fn": "tests.algorithms.test_mask_truncated:token_parity"}], eval=None,
                     train={"steps": 2, "prompts_per_step": 4, "micro_batch_size": 8, "lr": 1e-2})
    run(load_recipe(p), log=lambda *a: None)
    rows = [json.loads(x) for x in (tmp_path / "runs" / "run" / "metrics.jsonl").read_text().splitlines()]
    cut = [round(r["truncated_share"] * r["samples"]) for r in rows]
    assert all(0 < c for c in cut) and [r["samples"] for r in rows] == [16, 16]
    assert [r["trained_samples"] for r in rows] == ([16 - c for c in cut] if mask else [16, 16])
