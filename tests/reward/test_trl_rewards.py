"""TRL-style and verl-style reward functions run unchanged (issue 12, rewards): GRPOTrainer's calling
convention, every dataset column under its own name, trainer_state, log_metric/log_extra, async rewards,
numpy scalars, verl's compute_score, callables in the Python API."""

import json

import numpy as np
import pytest
import yaml

from reward import RewardContext, build_rewards, score
from selfimprove.cli import main
from selfimprove.config import DataConfig, RewardSpec
from selfimprove.data import rows_to_examples
from selfimprove.trace import Trace, Turn

ROWS = [{"prompt": "What is 6*7?", "solution": "$42$", "difficulty": 2},
        {"prompt": "What is 2+2?", "solution": "$4$", "difficulty": 1}]
COMPLETIONS = ["The answer is $\\boxed{42}$.", "It is $\\boxed{5}$."]


def traces_of(rows, completions, conversational: bool):
    if conversational:
        rows = [{**r, "prompt": [{"role": "user", "content": r["prompt"]}]} for r in rows]
    examples = rows_to_examples(rows, "mem", DataConfig(answer_column="solution"))
    return [Trace(id=f"t{i}", group_id=f"g{i}", task=ex.task, prompt=ex.prompt, answer=ex.answer, columns=ex.columns,
                  prompt_text=ex.prompt_text, turns=[Turn("user", "p", [1]), Turn("assistant", c, [2, 3], trainable=True)])
            for i, (ex, c) in enumerate(zip(examples, completions))]


def scored(traces, fn, ctx=None, **kwargs):
    rewards = build_rewards([RewardSpec(fn=fn, kwargs=kwargs)])
    score(traces, rewards, ctx or RewardContext())
    return [tr.rewards[rewards[0].name] for tr in traces]


def test_trl_accuracy_reward_equals_what_grpo_trainer_computes():
    from trl.rewards import accuracy_reward  # trl stays a lazy import (it pulls the Trainer stack)

    traces = traces_of(ROWS, COMPLETIONS, conversational=True)
    expected = accuracy_reward([[{"role": "assistant", "content": c}] for c in COMPLETIONS],
                               solution=[r["solution"] for r in ROWS])
    assert expected == [1.0, 0.0]
    assert scored(traces, "trl.rewards:accuracy_reward") == expected
    assert traces[0].meta["extra.gold_parsed"]  # log_extra reached the trace


SEEN = {}


def standard_reward(prompts, completions, completion_ids, solution, difficulty, trainer_state, **kwargs):
    SEEN.update(prompts=prompts, completions=completions, ids=completion_ids, step=trainer_state.global_step)
    return [np.float32(d) * float(s.strip("$") in c) for c, s, d in zip(completions, solution, difficulty)]


def test_standard_format_passes_strings_columns_and_trainer_state():
    traces = traces_of(ROWS, COMPLETIONS, conversational=False)
    assert scored(traces, standard_reward, RewardContext(step=7, max_steps=10)) == [2.0, 0.0]
    assert SEEN["prompts"] == ["What is 6*7?", "What is 2+2?"] and SEEN["completions"] == COMPLETIONS
    assert SEEN["ids"] == [[2, 3], [2, 3]] and SEEN["step"] == 7
    conversational = traces_of(ROWS, COMPLETIONS, conversational=True)
    scored(conversational, standard_reward)
    assert SEEN["prompts"][0] == [{"role": "user", "content": "What is 6*7?"}]
    assert SEEN["completions"][0] == [{"role": "assistant", "content": COMPLETIONS[0]}]


async def async_reward(completions, **kwargs):
    return [float(len(c[0]["content"]) > 20) for c in completions]


def test_async_rewards_and_functions_without_kwargs():
    traces = traces_of(ROWS, COMPLETIONS, conversational=True)
    assert scored(traces, async_reward) == [1.0, 0.0]

    def only_completions(completions):  # no **kwargs: it receives only what it names
        return [None, 0.5]

    assert scored(traces, only_completions) == [None, 0.5]


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    """verl's reward signature; a dict with a score is allowed too."""
    hit = ground_truth.strip("$") in solution_str
    return {"score": 1.0, "acc": hit} if hit else 0.0


def test_verl_compute_score():
    traces = traces_of(ROWS, COMPLETIONS, conversational=False)
    assert scored(traces, compute_score) == [1.0, 0.0]


def logs_a_metric(completions, solution, log_metric, **kwargs):
    log_metric("my/answer_length", sum(len(c[0]["content"]) for c in completions) / len(completions))
    return [float(s.strip("$") in c[0]["content"]) for c, s in zip(completions, solution)]


@pytest.mark.parametrize("fmt", ["standard", "conversational"])
def test_training_on_a_solution_column_with_trl_rewards(tmp_path, mini_model, fmt):
    rows = [{"prompt": f"{a}+{b}=", "solution": str(a + b)} for a in range(10, 14) for b in range(20, 22)]
    if fmt == "conversational":
        rows = [{**r, "prompt": [{"role": "user", "content": r["prompt"]}]} for r in rows]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fn = "tests.reward.test_trl_rewards:logs_a_metric" if fmt == "conversational" else \
        "tests.reward.test_trl_rewards:standard_reward"
    rows_cols = {"difficulty": 1} if fmt == "standard" else {}
    if rows_cols:
        data.write_text("".join(json.dumps({**r, **rows_cols}) + "\n" for r in rows))
    recipe = {"model": {"path": mini_model}, "data": {"train": str(data), "answer_column": "solution"},
              "generation": {"n": 2, "max_new_tokens": 4}, "rewards": [{"fn": fn}], "algorithm": {"name": "grpo"},
              "train": {"steps": 2, "prompts_per_step": 4, "micro_batch_size": 8},
              "log": {"out": str(tmp_path / "runs"), "name": "r", "progress": False}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["train", str(path)]) == 0
    rows_out = [json.loads(x) for x in (tmp_path / "runs/r/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_out] == [1, 2]
    if fmt == "conversational":
        assert all(r["my/answer_length"] > 0 for r in rows_out)
    else:
        assert SEEN["step"] == 1 and isinstance(SEEN["prompts"][0], str)
