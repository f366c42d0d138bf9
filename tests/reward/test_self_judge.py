import pytest
import torch

from reward import RewardContext
from reward.self_judge import parse_score, self_judge
from selfimprove.cli import main
from selfimprove.engines.hf import HFEngine
from selfimprove.errors import UserError
from selfimprove.policy import load_model, load_tokenizer
from selfimprove.trace import Trace, Turn

TEMPLATE = "{question} {answer}"  # the tiny model answers arithmetic: its reply is a number


def traces():
    return [Trace(id=str(i), group_id="g", task="t", prompt=[{"role": "user", "content": q}],
                  turns=[Turn("user", "", [1]), Turn("assistant", a, [2], trainable=True)])
            for i, (q, a) in enumerate([("12+", "35="), ("40+", "2="), ("7*", "8=")])]


def test_self_judge_sees_the_updated_weights(mini_model):
    model, tok = load_model(mini_model), load_tokenizer(mini_model)
    ctx = RewardContext(tok, HFEngine(model, tok))
    trs = traces()
    before = self_judge(trs, ctx, template=TEMPLATE, lo=-1e9, hi=1e9, normalize=False, max_new_tokens=6)
    assert all("judge.text" in t.meta for t in trs)
    with torch.no_grad():  # an update reaches the engine: it shares the policy's weights
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5, alpha=1.0)
    after = self_judge(trs, ctx, template=TEMPLATE, lo=-1e9, hi=1e9, normalize=False, max_new_tokens=6)
    assert before != after
    assert all(t.completion.text in ("35=", "2=", "8=") for t in trs)  # the judged text itself is untouched


def test_unparsable_replies_fall_back_and_are_flagged(mini_model):
    model, tok = load_model(mini_model), load_tokenizer(mini_model)
    ctx = RewardContext(tok, HFEngine(model, tok))
    trs = traces()
    # a range no number can be in: every reply is a parse failure
    out = self_judge(trs, ctx, template=TEMPLATE, lo=1e8, hi=1e9, fallback=-1.0, max_new_tokens=4)
    assert out == [-1.0, -1.0, -1.0] and all(t.meta["judge.parse_failed"] for t in trs)


def test_template_without_answer_placeholder():
    with pytest.raises(UserError, match=r"no \{answer\} placeholder"):
        self_judge(traces(), RewardContext(), template="Rate {question}")


def test_template_without_answer_placeholder_fails_at_recipe_time(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("rewards:\n  - {fn: self_judge, kwargs: {template: 'Rate {question}'}}\n"
                      f"log: {{out: {tmp_path / 'runs'}}}\n")
    assert main(["train", str(recipe)]) == 2
    assert not (tmp_path / "runs").exists()


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
