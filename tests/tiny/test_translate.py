"""The tiny world's toy translation task (selfimprove/tiny/translate.py)."""

import pytest

from selfimprove.config import DataConfig
from selfimprove.data import load_examples
from selfimprove.tiny import translate as tiny_translate


def test_toy_translation_task_has_no_training_references_and_fixed_heldout():
    cfg = DataConfig(train="translate")
    train = load_examples("translate", cfg, "train", n_train=200, seed=0)
    held = load_examples("translate", cfg, "test")
    assert len(train) == 200 and all(ex.answer is None and ex.task == "translate" for ex in train)
    assert len(held) == 500 and len({ex.prompt[-1]["content"] for ex in held}) == 500
    assert held[0].prompt == load_examples("translate", cfg, "test")[0].prompt  # fixed by heldout_seed
    assert not {ex.prompt[-1]["content"] for ex in train} & {ex.prompt[-1]["content"] for ex in held}
    src = held[0].prompt[-1]["content"].removeprefix("translate: ")
    assert held[0].answer == tiny_translate.translate(src)
    assert tiny_translate.translate("the good is no") == "the=ka good=bo is=zo no=do"
    assert tiny_translate.quality("the good is no", "the=ka good=su is=zo no=do") == 0.75
    assert tiny_translate.quality("the good", "the=ka good=bo a=mi") == pytest.approx(2 / 3)  # an extra pair counts against it
    assert tiny_translate.judge_digit("the good is no", "the=ka good=su is=zo no=do") == "7"  # round(6.75)
