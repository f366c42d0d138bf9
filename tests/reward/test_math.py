import pytest

from reward import REWARDS, RewardContext, build_rewards, resolve, score, trl_adapter
from reward.format import number_format, think_format
from reward.math import extract_answer, is_equivalent, last_boxed, math_correct
from selfimprove.config import RewardSpec
from selfimprove.errors import UserError
from selfimprove.trace import Trace, Turn


def tr(text, answer="47", finish="stop"):
    return Trace(id="x", group_id="g", task="arith", prompt=[{"role": "user", "content": "12+35="}],
                 turns=[Turn("user", "p", [1]), Turn("assistant", text, [2], trainable=True, finish_reason=finish)],
                 answer=answer)


@pytest.mark.parametrize("text,expected", [
    ("so the result is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("Final Answer: The final answer is $47$. I hope it is correct.", "47"),
    ("Final Answer: 12", "12"),
    ("blah\n#### 1,234", "1,234"),
    ("<think>x</think><answer> 9 </answer>", "9"),
    ("  -13 ", "-13"),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_nested_boxed():
    assert last_boxed("\\boxed{1} and \\boxed{\\sqrt{\\frac{a}{b}}}") == "\\sqrt{\\frac{a}{b}}"
    assert last_boxed("no box") is None


def test_equivalence_fast_path_and_math_verify():
    assert is_equivalent("47", "47.0") and is_equivalent("1,234", "1234") and not is_equivalent("46", "47")
    assert is_equivalent("\\frac{1}{2}", "0.5")  # math-verify
    assert not is_equivalent("\\frac{1}{3}", "0.5")
    assert not is_equivalent("", "3")


def test_math_correct_and_none_without_reference():
    traces = [tr("47"), tr("Final Answer: 47"), tr("46"), tr("47", answer=None), tr("\\boxed{47}", answer="#### 47")]
    assert math_correct(traces) == [1.0, 1.0, 0.0, None, 1.0]


def test_format_checks():
    assert think_format([tr("<think>a</think><answer>b</answer>"), tr("<answer>b</answer>")]) == [1.0, 0.0]
    assert number_format([tr("-12"), tr("12a"), tr("12", finish="length")]) == [1.0, 0.0, 0.0]


def test_weighted_sum_keeps_parts_and_skips_none():
    rewards = build_rewards([RewardSpec(fn="math_correct", weight=1.0),
                             RewardSpec(fn="number_format", weight=0.1, name="fmt")])
    traces = [tr("47"), tr("x"), tr("47", answer=None)]
    score(traces, rewards, RewardContext())
    assert [t.rewards for t in traces] == [{"math_correct": 1.0, "fmt": 1.0}, {"math_correct": 0.0, "fmt": 0.0},
                                           {"math_correct": None, "fmt": 1.0}]
    assert [t.reward for t in traces] == pytest.approx([1.1, 0.0, 0.1])


def trl_style(prompts, completions, answer, **kwargs):
    return [float(c[0]["content"].strip() == a) + len(kwargs["completion_ids"][i]) for i, (c, a) in
            enumerate(zip(completions, answer))]


def test_trl_style_function_is_adapted():
    fn = resolve("tests.reward.test_math:trl_style")
    assert fn([tr("47"), tr("46")], RewardContext()) == [2.0, 1.0]
    assert trl_adapter(trl_style)([tr("47")]) == [2.0]


def test_unknown_reward_and_bad_kwargs():
    with pytest.raises(UserError, match="unknown reward 'math_corect'; did you mean 'math_correct'"):
        resolve("math_corect")
    with pytest.raises(UserError, match="cannot be loaded"):
        resolve("nosuchmodule:fn")
    with pytest.raises(UserError, match="has no argument 'bogus'"):
        build_rewards([RewardSpec(fn="exact_match", kwargs={"bogus": 1})])
    assert set(REWARDS) >= {"math_correct", "exact_match", "think_format", "number_format", "regex_format"}


def trl_with_option(prompts, completions, scale=1.0, **kwargs):
    return [scale] * len(completions)


def test_trl_style_function_takes_recipe_kwargs():
    (r,) = build_rewards([RewardSpec(fn="tests.reward.test_math:trl_with_option", kwargs={"scale": 2.5})])
    assert r.fn([tr("1"), tr("2")], RewardContext()) == [2.5, 2.5]
