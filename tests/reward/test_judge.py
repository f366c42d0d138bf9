import math

import pytest

from reward.judge import expected_score, expected_score_from_logprobs, parse_score


@pytest.mark.parametrize("reply,expected", [
    ("<think>fluent, one error</think><answer>85</answer>", 85.0),
    ("<think>bad</think> <answer> score: 12.5 </answer>", 12.5),
    ("I would rate this translation 70 out of 100... final: 72", 72.0),  # no tag: the last number
    ("Score: 0", 0.0),
])
def test_parse_well_formed(reply, expected):
    assert parse_score(reply) == expected


@pytest.mark.parametrize("reply", ["", "   ", "<answer>great</answer>", "no score at all", "<answer>150</answer>",
                                   "-5", "<answer>nan</answer>"])
def test_parse_failures_are_none(reply):
    assert parse_score(reply) is None


def test_parse_range_of_a_digit_judge():
    assert parse_score("7", 0, 9) == 7.0 and parse_score("12", 0, 9) is None


def test_expected_score_worked_example():
    assert expected_score([0, 0, 0, 0, 0, 0.1, 0.2, 0.4, 0.3, 0]) == pytest.approx(6.9)
    assert expected_score([0, 0, 0, 0, 0, 0.05, 0.1, 0.2, 0.15, 0]) == pytest.approx(6.9)  # renormalised
    assert expected_score([0] * 10) == 0.0


def test_expected_score_from_top_logprobs_ignores_non_digits():
    lps = {"7": math.log(0.4), "6": math.log(0.2), "8": math.log(0.3), "5": math.log(0.1), "The": math.log(0.5)}
    assert expected_score_from_logprobs(lps) == pytest.approx(6.9)
