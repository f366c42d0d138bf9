"""Self-J labels (algorithms.md 4.1): the combination of self-evaluation and cosine, with worked numbers."""

from selfimprove.programs.judge_labels import combine_label


def test_label_formula_numbers():
    assert combine_label(9.0, 1.0) == 9 and combine_label(0.0, 0.0) == 0
    # z = (0.5 * 3/9 + 0.5 * 0.7) = 0.51667 -> 9z = 4.65 -> 5
    assert combine_label(3.0, 0.7) == 5
    assert combine_label(0.0, 1.0) == 5  # 9z = 4.5: halves round up
    assert combine_label(9.0, -0.8) == combine_label(9.0, 0.0) == 5  # a negative cosine counts as 0
    assert combine_label(6.4, 0.1, w_self=1.0, w_cos=0.0) == 6  # self-evaluation alone
    assert combine_label(0.0, 0.3, w_self=0.0, w_cos=2.0) == 3  # cosine alone: 2.7 -> 3


def test_binning_edges():
    # label k covers 9z in [k - 0.5, k + 0.5)
    eps = 1e-9
    assert combine_label(0.5 - eps, 0.0, 1.0, 0.0) == 0
    assert combine_label(0.5, 0.0, 1.0, 0.0) == 1
    assert combine_label(8.5 - eps, 0.0, 1.0, 0.0) == 8
    assert combine_label(8.5, 0.0, 1.0, 0.0) == 9
    assert combine_label(9.0, 1.0000002) == 9  # float noise above cosine 1 stays in range
    assert {combine_label(z1, c) for z1 in (0, 4.5, 9) for c in (-1, 0, 0.5, 1)} <= set(range(10))
