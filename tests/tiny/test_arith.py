"""The tiny world's arithmetic task (selfimprove/tiny/arith.py) and its options through a recipe."""

import pytest

from selfimprove.config import DataConfig
from selfimprove.data import load_examples
from selfimprove.errors import UserError
from selfimprove.tiny.arith import ArithOptions, heldout, train


def test_arith_heldout_is_fixed_distinct_and_never_trained_on():
    cfg = ArithOptions()
    a, b = heldout(cfg), heldout(cfg)
    assert [e.prompt for e in a] == [e.prompt for e in b] and len(a) == 500
    qs = {e.prompt[-1]["content"] for e in a}
    assert len(qs) == 500
    stream = train(cfg, 5000, seed=0)
    assert not qs & {e.prompt[-1]["content"] for e in stream}
    for e in stream[:200]:
        q = e.prompt[-1]["content"].rstrip("=")
        assert str(eval(q)) == e.answer  # the answer is exact
    other = heldout(ArithOptions(heldout_seed=7))
    assert [e.prompt for e in other] != [e.prompt for e in a]


def test_arith_difficulty_knobs():
    cfg = ArithOptions(ops="*", min_operand=100, max_operand=999, max_multiplier=99)
    for e in train(cfg, 100, seed=1):
        a, b = e.prompt[-1]["content"].rstrip("=").split("*")
        assert 100 <= int(a) <= 999 and 2 <= int(b) <= 99


def test_task_options_reach_the_task_and_are_checked():
    exs = load_examples("arith", DataConfig(task_options={"ops": "+", "n_heldout": 20}), "test")
    assert len(exs) == 20 and all("+" in e.prompt[-1]["content"] for e in exs)
    with pytest.raises(UserError, match="data.task_options.ops must be a non-empty mix"):
        load_examples("arith", DataConfig(task_options={"ops": "/"}), "test")
    with pytest.raises(UserError, match="unknown key 'data.task_options.opz'; did you mean 'ops'"):
        load_examples("arith", DataConfig(task_options={"opz": "+"}), "train", n_train=2)
