import pytest

from reward import RewardContext
from reward.judge import self_judge
from reward.translation import answer_text, chrf
from selfimprove.algorithms import get_algorithm, ssr
from selfimprove.engines import Sample
from selfimprove.errors import UserError
from selfimprove.trace import Trace, Turn


def _trace(group, text, rewards=None, answer=None, reward=0.0):
    return Trace(id=f"{group}-{text}", group_id=group, task="t", prompt=[{"role": "user", "content": "translate: a b"}],
                 answer=answer, turns=[Turn("user", "", [1]), Turn("assistant", text, [2], trainable=True)],
                 rewards=dict(rewards or {}), reward=reward)


def test_ssr_is_registered_and_gates_failed_formats_before_grpo():
    assert get_algorithm("ssr") is ssr
    cfg = ssr.Config(format_reward="fmt", format_failure=-1.0, std="population")
    # weighted sums from scoring: 0.8, 0.4 (format ok), 0.9 (format failed: the judge liked it anyway)
    traces = [_trace("g", "x", {"fmt": 1.0, "self_judge": 0.8}, reward=0.8),
              _trace("g", "y", {"fmt": 1.0, "self_judge": 0.4}, reward=0.4),
              _trace("g", "z", {"fmt": 0.0, "self_judge": None}, reward=0.9)]
    kept = ssr.prepare(traces, cfg)
    assert [t.reward for t in kept] == [0.8, 0.4, -1.0]
    # then GRPO's group advantage on the gated rewards: mean 0.0667, population std 0.7717
    assert [t.advantage for t in kept] == pytest.approx([0.95013, 0.43183, -1.38196], abs=1e-4)
    assert ssr.loss is ssr.grpo.loss


def test_ssr_without_gate_and_unknown_gate_name():
    traces = [_trace("g", "x", {"self_judge": 0.5}, reward=0.5), _trace("g", "y", {"self_judge": 0.1}, reward=0.1)]
    assert [t.reward for t in ssr.prepare(traces, ssr.Config(format_reward=None))] == [0.5, 0.1]
    with pytest.raises(UserError, match="algorithm.format_reward 'think_format' is not one of the recipe's rewards"):
        ssr.prepare(traces, ssr.Config())


def test_chrf_matches_sacrebleu_and_skips_traces_without_reference():
    traces = [_trace("g", "The cat sat on the mat.", answer="The cat is sitting on the mat."),
              _trace("g", "anything"),
              _trace("g", "<think>hmm</think><answer>ka mi</answer>", answer="ka mi")]
    out = chrf(traces)
    assert out[0] == pytest.approx(0.4965, abs=1e-4)  # environment.md 6: chrF2 = 49.65
    assert out[1] is None
    assert chrf(traces[2:], extract="answer") == [1.0]
    assert chrf([_trace("g", "ka mi", answer="ka mi")], extract="answer") == [0.0]  # no tags: nothing to score
    assert answer_text("<answer> a </answer> <answer>b</answer>", "answer") == "b"
    with pytest.raises(UserError, match="extract must be one of none, answer"):
        answer_text("x", "tags")


class _CountingEngine:
    """Replies '7' to every judge prompt and records how many prompts it was sent."""

    def __init__(self, tokenizer):
        self.tokenizer, self.prompts = tokenizer, []

    def generate(self, prompts, sampling):
        self.prompts.extend(prompts)
        seven = self.tokenizer("7", add_special_tokens=False)["input_ids"]
        return [[Sample(seven, [0.0] * len(seven), "stop")] for _ in prompts]


def test_self_judge_only_judges_gated_answers(mini_model):
    from selfimprove.policy import load_tokenizer

    tok = load_tokenizer(mini_model)
    engine = _CountingEngine(tok)
    traces = [_trace("g", "<think>t</think><answer>ka mi</answer>", {"fmt": 1.0}),
              _trace("g", "no tags at all", {"fmt": 1.0}),
              _trace("g", "<answer>ka</answer>", {"fmt": 0.0})]
    out = self_judge(traces, RewardContext(tok, engine), template="{question} => {answer}", lo=0, hi=9,
                     extract="answer", only_if="fmt")
    assert out[1:] == [None, None]
    assert out[0] == pytest.approx(7 / 9)
    assert len(engine.prompts) == 1  # the gated and tag-less replies cost no judge call
    assert "ka mi" in tok.decode(engine.prompts[0]) and "<think>" not in tok.decode(engine.prompts[0])
    assert traces[0].meta["judge.text"] == "7" and "judge.text" not in traces[1].meta
