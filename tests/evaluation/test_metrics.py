import math
import random

import pytest

from selfimprove.evaluation.metrics import (
    judge_report,
    pass_at_k,
    pearson,
    selective_accuracy,
    self_correction,
    spearman,
)


def test_worked_cl_cs_rss_example():
    c1 = [[1, 1, 0, 0], [1, 0, 0, 0]]
    c2 = [[1, 0, 1, 0], [1, 1, 0, 0]]
    m = self_correction([(list(map(bool, a)), list(map(bool, b))) for a, b in zip(c1, c2)])
    assert m["acc_t1"] == pytest.approx(0.375) and m["acc_t2"] == pytest.approx(0.5)
    assert m["cl"] == pytest.approx(2 / 3) and m["cs"] == pytest.approx(0.4)
    assert m["rss"] == pytest.approx(0.7666667, abs=1e-6)
    assert m["n_problems"] == 2 and m["k"] == 4


def test_identities_on_random_data():
    rng = random.Random(0)
    for _ in range(50):
        probs = []
        for _ in range(rng.randint(1, 20)):
            k = rng.randint(1, 6)  # groups of different sizes
            probs.append(([rng.random() < 0.4 for _ in range(k)], [rng.random() < 0.5 for _ in range(k)]))
        m = self_correction(probs)
        assert m["delta"] == pytest.approx(m["delta_i2c"] - m["delta_c2i"], abs=1e-12)
        if m["cl"] is not None and m["cs"] is not None:
            assert m["acc_t2"] == pytest.approx(m["acc_t1"] * m["cl"] + (1 - m["acc_t1"]) * m["cs"], abs=1e-12)


def test_rss_is_one_half_when_accuracy_does_not_change_and_none_at_the_edges():
    probs = [([True, False], [False, True]), ([True, True], [True, True]), ([False, False], [False, False])]
    m = self_correction(probs)
    assert m["acc_t1"] == m["acc_t2"] and m["rss"] == pytest.approx(0.5)
    assert self_correction([([True], [False])])["rss"] is None


def test_unbiased_pass_at_k():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 3, 2) == 1.0


def test_correlations_and_selective_accuracy_on_fixed_numbers():
    scores, correct = [1, 2, 3, 4], [0, 0, 1, 1]
    assert math.isclose(pearson(scores, correct), 2 / math.sqrt(5), rel_tol=1e-9)  # 0.894427
    assert math.isclose(spearman(scores, correct), 2 / math.sqrt(5), rel_tol=1e-9)  # tied ranks 1.5, 3.5
    assert math.isclose(spearman([1, 2, 3, 4], [10, 20, 30, 40]), 1.0)
    sel = selective_accuracy(scores, correct)
    # floor(4 x%) declined: 0, 0, 0, 1, 1, 2
    assert sel == {"decline_0": 0.5, "decline_10": 0.5, "decline_20": 0.5, "decline_30": 2 / 3,
                   "decline_40": 2 / 3, "decline_50": 1.0}
    assert selective_accuracy([4, 3, 2, 1], correct)["decline_50"] == 0.0  # an inverted judge keeps the wrong ones


def test_constant_inputs_give_none_not_a_crash():
    assert pearson([3, 3, 3], [0, 1, 1]) is None and spearman([1, 2, 3], [1, 1, 1]) is None
    assert pearson([1.0], [1.0]) is None
    rep = judge_report([5.0, 5.0], [4, 6], [0, 1])
    assert rep["pearson_label"] is None and rep["pearson_correct"] is None
    assert rep["selective_accuracy"]["decline_50"] == 1.0  # ties keep order: the first answer is declined
    assert "pearson_correct" not in judge_report([1.0, 2.0], [1, 2])  # no verifier, no correctness block
