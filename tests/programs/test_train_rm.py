"""Reward-model training (the reward_model program, programs/train_rm.py) and the `reward_model` reward."""

import json
import math
from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification

from reward.reward_model import reward_model
from selfimprove.cli import main
from selfimprove.config import DataConfig
from selfimprove.errors import UserError
from selfimprove.programs.train_rm import (
    Pair,
    best_of_n,
    pairs_from_rows,
    pairs_from_scores,
    self_pairs,
    train,
)
from selfimprove.recipe import load_recipe
from tests.conftest import make_trace

ROOT = Path(__file__).resolve().parents[2]
TINY_RECIPE = ROOT / "recipes/reward_model/tiny_arith.yaml"


def user(text):
    return [{"role": "user", "content": text}]


def trace(i, group, text, prompt="1+1="):
    return make_trace(text, group=group, idx=i, prompt=prompt, answer="2")


def test_scored_rows_become_pairs_within_a_prompt_ties_skipped():
    rows = [{"prompt": "p", "completion": "a", "score": 1.0}, {"prompt": "q", "completion": "x", "score": 0.5},
            {"prompt": "p", "completion": "b", "score": "0"}, {"prompt": "p", "completion": "c", "score": 1},
            {"prompt": "q", "completion": "y", "score": 0.5}]
    pairs = pairs_from_scores(rows, "s.csv", DataConfig())
    # p: (a, b) and (b, c) differ; (a, c) is a tie; q's only pair is a tie
    assert pairs == [Pair(user("p"), "a", "b", 1.0), Pair(user("p"), "c", "b", 1.0)]
    assert pairs_from_scores(rows, "s.csv", DataConfig(), per_prompt=1) == [Pair(user("p"), "a", "b", 1.0)]
    sys_cfg = DataConfig(system_prompt="be brief")
    assert pairs_from_scores(rows[:3], "s.csv", sys_cfg)[0].prompt[0] == {"role": "system", "content": "be brief"}


def test_pair_rows_plain_and_conversational():
    rows = [{"prompt": "p", "chosen": "good", "rejected": "bad", "margin": 2},
            {"prompt": user("q"), "chosen": [{"role": "assistant", "content": "g"}],
             "rejected": [{"role": "assistant", "content": "b"}]}]
    assert pairs_from_rows(rows, "d.jsonl", DataConfig()) == [Pair(user("p"), "good", "bad"), Pair(user("q"), "g", "b")]
    assert pairs_from_rows(rows[:1], "d.jsonl", DataConfig(), margin=True)[0].margin == 2.0


def test_missing_or_bad_field_is_one_line_naming_file_row_and_field():
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a"}]
    with pytest.raises(UserError) as e:
        pairs_from_rows(rows, "d.jsonl", DataConfig())
    assert str(e.value) == "data: d.jsonl row 2 has no field 'rejected' (fields: prompt, chosen)"
    with pytest.raises(UserError, match=r"^data: s.csv row 1: 'score' must be a finite number, got 'high'$"):
        pairs_from_scores([{"prompt": "p", "completion": "a", "score": "high"}], "s.csv", DataConfig())
    with pytest.raises(UserError, match=r"row 1 has no field 'margin'"):
        pairs_from_rows(rows[:1], "d.jsonl", DataConfig(), margin=True)


def test_self_pairs_match_correct_with_incorrect_answers_of_one_prompt():
    traces = [trace(0, "g0", "2"), trace(1, "g0", "3"), trace(2, "g0", "2"), trace(3, "g0", "4"),
              trace(4, "g1", "2"), trace(5, "g1", "2"),  # all correct: no pair
              trace(6, "g2", "5"), trace(7, "g2", "2")]
    correct = {tr.id: tr.completion.text == "2" for tr in traces}
    pairs = self_pairs(traces, correct)
    assert [(p.chosen, p.rejected) for p in pairs] == [("2", "3"), ("2", "4"), ("2", "5")]
    assert [(p.chosen, p.rejected) for p in self_pairs(traces, correct, per_prompt=1)] == [("2", "3"), ("2", "5")]


def test_best_of_n_against_first_mean_and_oracle():
    traces = [trace(0, "g0", "3"), trace(1, "g0", "2"), trace(2, "g1", "2"), trace(3, "g1", "9"),
              trace(4, "g2", "7"), trace(5, "g2", "8")]
    correct = {tr.id: tr.completion.text == "2" for tr in traces}
    scores = [0.1, 0.9, 0.2, 0.5, 0.0, 0.0]  # g0: picks right; g1: picks wrong; g2: nothing right (tie: first)
    assert best_of_n(traces, correct, scores) == {"rm_pick": 1 / 3, "first_sample": 1 / 3, "mean_sample": 1 / 3,
                                                  "oracle": 2 / 3}


def write_recipe(tmp_path, model, data, **algo):
    algo_text = ", ".join(f"{k}: {v}" for k, v in {"name": "reward_model", **algo}.items())
    p = tmp_path / "rm.yaml"
    p.write_text(f"model: {{path: {model}}}\ndata: {{train: {data}}}\nalgorithm: {{{algo_text}}}\n"
                 "train: {max_steps: 30, batch_size: 16, micro_batch_size: 16, lr: 3.0e-3, threads: 1}\n"
                 f"log: {{out: {tmp_path / 'runs'}, name: rm, every: 10}}\n")
    return p


def toy_pairs(path, n=48):
    """Trivially separable: the chosen answer always says 'yes', the rejected one 'no'."""
    rows = [{"prompt": f"{i}+1=", "chosen": "yes", "rejected": "no"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_training_on_pairs_writes_summary_and_a_loadable_rm_the_reward_uses(tmp_path, mini_model):
    recipe = load_recipe(write_recipe(tmp_path, mini_model, toy_pairs(tmp_path / "pairs.jsonl"), eval_share=0.25))
    summary = train(recipe, log=lambda *a: None)
    assert (summary["train_pairs"], summary["heldout_pairs"], summary["steps"]) == (36, 12, 30)
    assert summary["pairwise_accuracy_after"] == 1.0
    written = json.loads((tmp_path / "runs/rm/summary.json").read_text())
    assert written["pairwise_accuracy_after"] == 1.0 and 0.0 <= written["pairwise_accuracy_before"] <= 1.0
    assert (tmp_path / "runs/rm/metrics.jsonl").read_text().count("\n") == 3  # steps 10, 20, 30

    traces = [trace(0, "g", "yes", "7+1="), trace(1, "g", "no", "7+1="), trace(2, "h", "maybe", "3+1=")]
    scores = reward_model(traces, None, model=summary["reward_model"])
    assert len(scores) == 3 and all(math.isfinite(s) for s in scores)
    assert scores[0] > scores[1]
    probs = reward_model(traces, None, model=summary["reward_model"], normalize="sigmoid")
    assert probs == pytest.approx([1 / (1 + math.exp(-s)) for s in scores]) and probs[0] > 0.5 > probs[1]


def test_lora_reward_model_is_saved_merged(tmp_path, mini_model):
    recipe = load_recipe(write_recipe(tmp_path, mini_model, toy_pairs(tmp_path / "pairs.jsonl", 16)),
                         ["model.lora_r=4", "train.max_steps=2"])
    summary = train(recipe, log=lambda *a: None)
    rm = AutoModelForSequenceClassification.from_pretrained(summary["reward_model"])
    assert rm.config.num_labels == 1 and not any("lora" in n for n, _ in rm.named_parameters())


def test_self_generated_pairs_and_best_of_n(tmp_path, mini_model):
    recipe = load_recipe(write_recipe(tmp_path, mini_model, "arith", pairs_from="self", n_pairs=48),
                         ["generation.n=4", "generation.max_new_tokens=6", "algorithm.n_eval=24", "train.max_steps=3"])
    summary = train(recipe, log=lambda *a: None)
    # the 40-step mini model is rarely right: fewer pairs than asked for (all of 8 x 48 prompts were tried)
    assert 1 <= summary["train_pairs"] <= 48 and summary["steps"] == 3
    bon = summary["best_of_n"]
    assert (bon["n"], bon["problems"]) == (4, 24)
    for key in ("rm_pick", "rm_pick_before", "first_sample", "mean_sample"):
        assert 0.0 <= bon[key] <= bon["oracle"] <= 1.0
    rows = [json.loads(line) for line in (tmp_path / "runs/rm/pairs.jsonl").read_text().splitlines()]
    assert len(rows) == summary["train_pairs"]
    assert all(r["chosen"] != r["rejected"] and r["margin"] == 1.0 for r in rows)


def test_reward_with_a_missing_model_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"^reward_model: path does not exist: .*nope$"):
        reward_model([trace(0, "g", "2")], None, model=str(tmp_path / "nope"))
    with pytest.raises(UserError, match="normalize must be one of none, sigmoid"):
        reward_model([trace(0, "g", "2")], None, model="x", normalize="tanh")


def test_cli_bad_pairs_file_exits_2_with_one_line(tmp_path, capsys, mini_model):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n"
                   + json.dumps({"prompt": "p", "chosen": "a"}) + "\n")
    base = ["train", str(TINY_RECIPE), "train.max_steps=1", f"model.path={mini_model}", f"log.out={tmp_path / 'runs'}"]
    assert main(base + [f"data.train={bad}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.endswith(f"data: {bad} row 2 has no field 'rejected' (fields: prompt, chosen)")
    assert main(base + [f"data.train={tmp_path / 'missing.jsonl'}"]) == 2
    assert "file not found" in capsys.readouterr().err
    assert main(base + ["algorithm.pairs_from=pairs"]) == 2  # pairs need a file, not the synthetic task
    assert "needs a data file" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_recipes_load():
    r = load_recipe(TINY_RECIPE)
    assert (r.algorithm.name, r.algorithm.pairs_from, r.train.threads) == ("reward_model", "auto", 1)
    gpu = load_recipe(ROOT / "recipes/reward_model/qwen2.5-1.5b_pairs.yaml")
    assert gpu.model.dtype == "bfloat16" and gpu.algorithm.center_rewards_coefficient == 0.01
    with pytest.raises(UserError, match="algorithm.pairs_from must be one of auto, pairs, scores, self"):
        load_recipe(TINY_RECIPE, ["algorithm.pairs_from=human"])


@pytest.mark.slow
def test_tiny_recipe_end_to_end_rm_beats_chance(tmp_path):
    """The CPU recipe, smaller: the RM trained on the policy's own pairs ranks held-out pairs above chance."""
    recipe = load_recipe(TINY_RECIPE, ["algorithm.n_pairs=2000", "algorithm.n_eval=200", f"log.out={tmp_path}", "log.name=e2e"])
    summary = train(recipe, log=lambda *a: None)
    assert summary["steps"] == 96  # 3 epochs of 2000 pairs, 64 per step (32 batches, the last partial)
    assert summary["pairwise_accuracy_after"] > summary["pairwise_accuracy_before"]
    assert 0.0 <= summary["best_of_n"]["rm_pick"] <= summary["best_of_n"]["oracle"]
