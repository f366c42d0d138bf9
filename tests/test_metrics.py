import random

import pytest

from selfimprove.metrics import pass_at_k, self_correction


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
