import pytest
import torch

from reward import RewardContext
from reward.judge import self_judge
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
    from selfimprove.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("rewards:\n  - {fn: self_judge, kwargs: {template: 'Rate {question}'}}\n"
                      f"log: {{out: {tmp_path / 'runs'}}}\n")
    assert main(["train", str(recipe)]) == 2
    assert not (tmp_path / "runs").exists()
