import pytest
import torch

from reward import RewardContext
from reward.self_judge import parse_score, self_judge
from selfimprove.cli import main
from selfimprove.engines.base import Sample
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


# --------------------------------------------------------------------------- budgets, answer tags, truncation


class ScriptTok:
    """A tokenizer stand-in: prompt k renders as text, reply ids index into the engine's script."""

    chat_template = "stand-in"

    def __init__(self, script):
        self.script = script

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return messages[-1]["content"]

    def __call__(self, texts, add_special_tokens):
        return {"input_ids": [[len(t)] for t in texts]}

    def decode(self, ids, skip_special_tokens):
        return self.script[ids[0]][0]


class ScriptEngine:
    """Replies with the script's (text, finish_reason) in order and records the sampling it was asked for."""

    def __init__(self, script):
        self.script, self.sampling = script, []

    def generate(self, prompts, sampling):
        self.sampling.append(sampling)
        return [[Sample([k], [0.0], self.script[k][1])] for k in range(len(prompts))]


def judged(script, **kwargs):
    trs = [Trace(id=str(i), group_id="g", task="t", prompt=[{"role": "user", "content": "q"}],
                 turns=[Turn("user", "", [1]), Turn("assistant", "a", [2], trainable=True)]) for i in range(len(script))]
    engine = ScriptEngine(script)
    out = self_judge(trs, RewardContext(ScriptTok(script), engine), fallback=-1.0, **kwargs)
    return out, [t.meta["judge.parse_failed"] for t in trs], engine.sampling[0].max_new_tokens


def test_a_think_first_template_reads_the_tag_only_and_counts_truncation_as_failure():
    script = [("<think>the source has 12 words, 3 wrong</think><answer>80</answer>", "stop"),  # 80 / 100
              ("<think>the source has 12 words, 3 wrong ... 45", "length"),  # cut mid-reasoning: no score
              ("<think>the source has 12 words</think> fine, 90", "stop"),  # no tag: not the last number
              ("<think>ok</think><answer>60</answer> and more text", "length")]  # cut after its closed tag
    out, failed, budget = judged(script)  # gemba: the default think-first template
    assert out == [0.8, -1.0, -1.0, 0.6] and failed == [False, True, True, False]
    assert budget == 1024


def test_a_bare_number_template_has_a_short_budget_and_truncation_fails():
    script = [("7", "stop"), ("I think 6 because 4", "length"), ("Score 3", "stop")]
    out, failed, budget = judged(script, template="digit")
    assert out == pytest.approx([7 / 9, -1.0, 3 / 9]) and failed == [False, True, False]
    assert budget == 16
    assert judged(script, template="digit", max_new_tokens=5)[2] == 5  # the recipe's value wins


def test_a_score_colon_template_reads_after_the_last_score_label():
    script = [("the answer misses 2 steps. Score: 4", "stop"), ("the answer misses 2 steps.", "stop"),
              ("Score: 8 and then more", "length")]
    out, failed, budget = judged(script, template="Rate {answer} 0-9. Explain, then end with Score: N", lo=0, hi=9)
    assert out == pytest.approx([4 / 9, -1.0, -1.0]) and failed == [False, True, True]
    assert budget == 1024


@pytest.mark.parametrize("reply,tag,expected", [
    ("<think>3 errors, 85 words</think> 70", "<answer>", None),  # the tag was asked for: no fallback
    ("<think>3 errors</think><answer>70</answer>", "<answer>", 70.0),
    ("score: 5 ... Score: 6", "Score:", 6.0),
    (" 85", "Score:", 85.0),  # the template's "Score:" was the cue: the reply is the bare number
    ("3 errors, so 85", "Score:", None),
    ("<think>3 errors</think> 70", None, 70.0),  # a bare-number template: the last number
])
def test_parse_with_the_templates_tag(reply, tag, expected):
    assert parse_score(reply, tag=tag) == expected


def test_a_bad_budget_fails_at_recipe_time(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("rewards:\n  - {fn: self_judge, kwargs: {max_new_tokens: 0}}\n"
                      f"log: {{out: {tmp_path / 'runs'}}}\n")
    assert main(["train", str(recipe)]) == 2
    assert not (tmp_path / "runs").exists()
