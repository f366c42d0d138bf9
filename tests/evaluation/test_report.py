"""End-of-run plots (selfimprove/evaluation/report.py)."""

import matplotlib.image as mpimg
import pytest

from selfimprove.evaluation.report import moving_mean, plot_run


def test_moving_mean_worked_numbers():
    assert moving_mean([0.0, 2.0, 4.0, 6.0], k=2) == [0.0, 1.0, 3.0, 5.0]
    assert moving_mean([3.0, 0.0, 0.0, 9.0], k=3) == [3.0, 1.5, 1.0, 3.0]


def rows(n, stage1):
    return [{"step": s, "reward": 0.1, "selfcorrect/delta": -0.2 + 0.01 * s, "selfcorrect/delta_i2c": 0.05,
             "selfcorrect/delta_c2i": 0.25 - 0.01 * s, "score/stage": 1.0 if s <= stage1 else 2.0}
            for s in range(1, n + 1)]


@pytest.mark.parametrize("history, expect", [(rows(30, 10), True), ([{"step": 1, "reward": 0.5}], False)])
def test_the_self_correction_plot_is_written_for_two_turn_runs_only(tmp_path, history, expect):
    plot_run(tmp_path, history, [])
    assert (tmp_path / "reward.png").is_file()
    assert (tmp_path / "self_correction.png").is_file() == expect
    if expect:
        height, width, _ = mpimg.imread(tmp_path / "self_correction.png").shape
        assert (width, height) == (600, 350)  # 6 x 3.5 inches at 100 dpi
