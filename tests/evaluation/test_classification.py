"""CL / CS / RSS from label-token probabilities (classification tasks, Yang et al. arXiv 2412.19513)."""

import json
import re

import numpy as np
import pytest

from selfimprove.cli import main
from selfimprove.evaluation.classification import (
    ChoiceProblem,
    choice_problems,
    label_metrics,
    next_label_probs,
    problem_terms,
    prompts,
)
from selfimprove.evaluation.metrics import self_correction
from selfimprove.policy import load_model, load_tokenizer
from selfimprove.rollout import instruction_text

# two 3-label problems, worked by hand below
P1 = [0.5, 0.3, 0.2]
P2 = [[0.8, 0.1, 0.1], [0.4, 0.5, 0.1], [0.25, 0.25, 0.5]]  # row X: turn 2's labels after first answer X
Q1 = [0.1, 0.1, 0.8]
Q2 = [[0.5, 0.0, 0.5], [0.2, 0.2, 0.6], [0.0, 0.1, 0.9]]
PROBLEMS = [(P1, P2, 0), (Q1, Q2, 2)]


def test_one_problem_by_hand():
    # P(a) = p1[A] = 0.5; P(b|a) = p2[A][A] = 0.8; P(b|~a) = (0.3 * 0.4 + 0.2 * 0.25) / (1 - 0.5) = 0.34
    assert problem_terms(P1, P2, 0) == pytest.approx((0.5, 0.8, 0.34))
    m = label_metrics(PROBLEMS[:1])
    # Acc2 = 0.5 * 0.8 + 0.5 * 0.34 = 0.57; RSS = (0.57 - 0.25) / (2 * 0.5 * 0.5) = 0.64
    assert m["acc_t1"] == pytest.approx(0.5) and m["acc_t2"] == pytest.approx(0.57)
    assert m["cl"] == pytest.approx(0.8) and m["cs"] == pytest.approx(0.34) and m["rss"] == pytest.approx(0.64)
    assert m["delta_i2c"] == pytest.approx(0.17) and m["delta_c2i"] == pytest.approx(0.1)
    assert m["delta"] == pytest.approx(0.07) and m["estimator"] == "probabilities" and m["n_problems"] == 1


def test_two_problems_pool_as_the_reference_sums():
    # problem 2: P(a) = 0.8, P(b|a) = 0.9, P(b|~a) = (0.1 * 0.5 + 0.1 * 0.6) / 0.2 = 0.55
    assert problem_terms(Q1, Q2, 2) == pytest.approx((0.8, 0.9, 0.55))
    m = label_metrics(PROBLEMS)
    # CL = (0.5*0.8 + 0.8*0.9) / 1.3 = 1.12 / 1.3; CS = (0.5*0.34 + 0.2*0.55) / (2 - 1.3) = 0.28 / 0.7
    assert m["acc_t1"] == pytest.approx(0.65) and m["acc_t2"] == pytest.approx(0.70)
    assert m["cl"] == pytest.approx(1.12 / 1.3) and m["cs"] == pytest.approx(0.4)
    assert m["rss"] == pytest.approx(0.2775 / 0.455)
    assert m["acc_t2"] == pytest.approx(m["acc_t1"] * m["cl"] + (1 - m["acc_t1"]) * m["cs"])
    assert m["delta"] == pytest.approx(m["delta_i2c"] - m["delta_c2i"])


def test_certain_first_answers_leave_cs_and_rss_undefined():
    sure = ([1.0, 0.0], [[0.9, 0.1], [0.3, 0.7]], 0)
    assert problem_terms(*sure) == (1.0, 0.9, 0.0)  # the reference's P(b|~a) = 0 when p1[gold] = 1
    m = label_metrics([sure, sure])
    assert m["cl"] == pytest.approx(0.9) and m["cs"] is None and m["rss"] is None


def _sample(rng, p1, p2, gold, k):
    """k toy two-turn episodes: a first answer X ~ p1, a second Y ~ p2[X]; correctness against gold."""
    x = rng.choice(len(p1), size=k, p=p1)
    y = (rng.random(k)[:, None] > np.cumsum(np.asarray(p2)[x], axis=1)).sum(axis=1)
    return list(x == gold), list(y == gold)


@pytest.mark.parametrize("k,tolerance", [(20000, 0.02), (200000, 0.006)])
def test_sampled_estimator_converges_to_the_probability_estimator(k, tolerance):
    rng = np.random.default_rng(0)
    third = ([0.2, 0.2, 0.6], [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]], 1)
    problems = PROBLEMS + [third]
    exact = label_metrics(problems)
    sampled = self_correction([_sample(rng, *p, k) for p in problems])
    for key in ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i", "cl", "cs", "rss"):
        assert abs(sampled[key] - exact[key]) < tolerance, (key, sampled[key], exact[key])


def test_presets_repeat_the_question_then_instruct():
    assert instruction_text("critique", "Q?").startswith("Q?\nAre you sure?")
    assert instruction_text("confidence", "Q?").startswith("Q?\nYour previous answer is probably correct.")


ROWS = [
    {"id": "q0", "question": "2+2=?", "choices": ["3", "4", "5"], "answer": "B"},
    {"id": "q1", "question": "1+2=?", "choices": ["3", "4"], "answer": "A"},
    {"id": "q2", "question": "5+5=?", "choices": ["9", "10", "11", "12"], "answer": "10"},
    {"id": "q3", "question": "Is 7 odd? Answer 1 (no) or 2 (yes).", "labels": ["1", "2"], "answer": "2"},
]


def test_eval_turns2_on_multiple_choice_data(tmp_path, mini_model):
    data, out, rows, plot = tmp_path / "mc.jsonl", tmp_path / "m.json", tmp_path / "p.jsonl", tmp_path / "p.png"
    data.write_text("\n".join(json.dumps(r) for r in ROWS))
    assert main(["eval", mini_model, "--data", str(data), "--prompt-column", "question", "--turns", "2",
                 "--out", str(out), "--traces", str(rows), "--plot", str(plot)]) == 0
    m = json.loads(out.read_text())
    assert m["estimator"] == "probabilities" and m["n_problems"] == 4 and plot.is_file()
    for key in ("acc_t1", "acc_t2", "cl", "cs", "delta_i2c", "delta_c2i"):
        assert 0 <= m[key] <= 1, key
    assert m["acc_t2"] == pytest.approx(m["acc_t1"] * m["cl"] + (1 - m["acc_t1"]) * m["cs"])
    written = [json.loads(line) for line in rows.read_text().splitlines()]
    assert [r["gold"] for r in written] == [1, 0, 1, 1] and [r["problem"] for r in written] == ["q0", "q1", "q2", "q3"]
    for r, size in zip(written, (3, 2, 4, 2)):
        assert len(r["p1"]) == size and len(r["p2"]) == size and all(len(p) == size for p in r["p2"])
        assert sum(r["p1"]) == pytest.approx(1, abs=1e-5) and all(sum(p) == pytest.approx(1, abs=1e-5) for p in r["p2"])
    again = tmp_path / "again.json"
    assert main(["metrics", str(rows), "--out", str(again)]) == 0
    assert json.loads(again.read_text()) == pytest.approx(m)


def test_gold_answers_and_the_reference_prompt():
    rows = [{"question": "Q", "choices": ["x", "y", "z"], "answer": 2, "subject": "math"},  # CommonsenseQA: an index
            {"question": "Q?", "labels": ["false", "true"], "answer": True},  # BoolQ: a truth value
            {"question": "Q", "choices": ["x", "y"], "labels": ["1", "2"], "answer": "y"}]  # a choice's text
    got = choice_problems(rows, "f", "question", "answer")
    assert [p.gold for p in got] == [2, 1, 1] and [p.labels for p in got][1:] == [["false", "true"], ["1", "2"]]
    assert got[0].question == ("The following is a multiple choice question (with answers) about math.\n\nQ\n"
                               "A. x\nB. y\nC. z\nPlease directly answer the right choice.\n")
    assert got[1].question == "Q?" and got[2].question.splitlines()[3:5] == ["1. x", "2. y"]


def test_padded_batches_give_each_prompt_its_own_probabilities(mini_model):
    tokenizer, model = load_tokenizer(mini_model, chat_template=False), load_model(mini_model)
    texts = prompts(tokenizer, ChoiceProblem("x", "Which is 4?\nA. 3\nB. 4\n", ["A", "B"], 1), "reask",
                    "The answer is:")
    ids = [tokenizer(x, add_special_tokens=False)["input_ids"][0] for x in ("A", "B")]
    assert len({len(t) for t in texts}) > 1 and texts[0].endswith("<|assistant|>The answer is:")
    batched = next_label_probs(model, tokenizer, texts, ids)
    alone = [next_label_probs(model, tokenizer, [t], ids)[0] for t in texts]
    assert np.allclose(batched, alone, atol=1e-5)


@pytest.mark.parametrize("line,pattern", [
    ('{"p1": [0.5, 0.5], "gold": 0}', r"line 1 has no 'p2' field"),
    ('{"p1": [0.5, 0.5], "p2": [[1, 0]], "gold": 0}', r"line 1: 'p2' must be 2 lists"),
    ('{"p1": [0.5, 0.6], "p2": [[1, 0], [0, 1]], "gold": 0}', r"line 1: 'p1' sums to 1.1, not 1"),
    ('{"p1": [0.5, 0.5], "p2": [[1, 0], [0, 1, 0]], "gold": 0}', r"'p2'\[1\] has 3 probabilities, 'p1' has 2"),
    ('{"p1": [0.5, 0.5], "p2": [[1, 0], [0, 1]], "gold": 2}', r"line 1: 'gold' is 2: give a label \(0, 1\)"),
    ('{"p1": [0.5, 0.5], "p2": [[1, 0], [0, 1]], "gold": "C", "labels": ["A", "B"]}', r"'gold' is 'C'"),
])
def test_malformed_probability_rows_are_named(tmp_path, capsys, line, pattern):
    f = tmp_path / "bad.jsonl"
    f.write_text(line + "\n")
    assert main(["metrics", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(pattern, err), err


@pytest.mark.parametrize("row,extra,pattern", [
    (None, ["--estimator", "probabilities", "--data", "arith"], r"needs multiple-choice data .* synthetic task"),
    (None, ["--estimator", "logits"], r"--estimator must be one of auto, sampled, probabilities"),
    ({"question": "q", "answer": "1"}, ["--estimator", "probabilities"], r"row 1 has no 'choices' or 'labels'"),
    ({"question": "q", "labels": ["yes", "no"], "answer": "yes"}, [], r"label 'yes' is \d+ tokens"),
    ({"question": "q", "choices": ["a", "b"], "answer": "C"}, [], r"row 1: 'answer' is 'C': give a label \(A, B\)"),
    ({"question": "q", "choices": ["a"], "answer": 0}, [], r"'choices' must be a list of 2 to 26"),
    (None, ["--instruction", "critique"], r"row 1: its second turn is \d+ tokens, more than the model's context of 256"),
])
def test_bad_multiple_choice_inputs(tmp_path, capsys, mini_model, row, extra, pattern):
    data = tmp_path / "mc.jsonl"
    data.write_text(json.dumps(row or ROWS[0]))
    out = tmp_path / "m.json"
    argv = ["eval", mini_model, "--data", str(data), "--prompt-column", "question", "--turns", "2", "--out", str(out)]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(pattern, err), err
    assert not out.exists()


def test_probabilities_need_two_turns(capsys):
    assert main(["eval", "tiny", "--data", "arith", "--estimator", "probabilities"]) == 2
    assert "--estimator probabilities needs --turns 2" in capsys.readouterr().err
