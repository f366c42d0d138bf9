import json
from pathlib import Path

import pytest

from reward import RewardContext
from reward.self_judge import self_judge
from reward.translation import answer_text, chrf
from selfimprove.algorithms import get_algorithm, ssr
from selfimprove.engines import Sample
from selfimprove.errors import UserError
from selfimprove.loop import run
from selfimprove.policy import load_tokenizer
from selfimprove.recipe import load_recipe
from selfimprove.tiny import translate as tiny_translate
from tests.conftest import make_trace


def _trace(group, text, rewards=None, answer=None, reward=0.0):
    return make_trace(text, group=group, prompt="translate: a b", answer=answer, reward=reward,
                      rewards=dict(rewards or {}))


def test_ssr_is_registered_and_gates_failed_formats_before_grpo():
    assert get_algorithm("ssr") is ssr.ALGORITHM and ssr.ALGORITHM.prepare is ssr.prepare
    cfg = ssr.Config(format_reward="fmt", format_failure=-1.0, std="population")
    # weighted sums from scoring: 0.8, 0.4 (format ok), 0.9 (format failed: the judge liked it anyway)
    traces = [_trace("g", "x", {"fmt": 1.0, "self_judge": 0.8}, reward=0.8),
              _trace("g", "y", {"fmt": 1.0, "self_judge": 0.4}, reward=0.4),
              _trace("g", "z", {"fmt": 0.0, "self_judge": None}, reward=0.9)]
    kept = ssr.prepare(traces, cfg)
    assert [t.reward for t in kept] == [0.8, 0.4, -1.0]
    # then GRPO's group advantage on the gated rewards: mean 0.0667, population std 0.7717
    assert [t.advantage for t in kept] == pytest.approx([0.95013, 0.43183, -1.38196], abs=1e-4)
    assert ssr.ALGORITHM.loss is ssr.grpo.loss and ssr.ALGORITHM.zero_loss is ssr.grpo.zero_loss


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


def test_ssr_recipe_runs_end_to_end_on_the_toy_translation_task(tmp_path, mini_model):
    """The tiny recipe's wiring on the quick test model: prompts without references, the policy judging
    its own well-formed replies through the same engine, chrF / exact match on the held-out split only."""


    root = Path(__file__).resolve().parents[2]
    recipe = load_recipe(root / "recipes/ssr/tiny_translate.yaml", [
        f"model.path={mini_model}", "train.steps=2", "train.prompts_per_step=4", "generation.n=4", "eval.n=12",
        "train.threads=0", f"log.out={tmp_path}", "log.name=ssr", "log.progress=false", "log.every=1"])
    summary = run(recipe, log=lambda *a: None)
    rows = [json.loads(x) for x in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {"rewards/self_judge", "rewards/format", "judge/parse_failures"} <= set(rows[0])
    assert rows[0]["rewards/chrf"] is None and rows[0]["rewards/exact_match"] is None  # no references in training
    traces = [json.loads(x) for x in (Path(summary["run_dir"]) / "traces.jsonl").read_text().splitlines()]
    for tr in traces:  # training traces: no reference, so chrF and exact match do not apply
        assert tr["answer"] is None and tr["rewards"]["chrf"] is None and tr["rewards"]["exact_match"] is None
        judged = tr["rewards"]["self_judge"] is not None
        assert judged == (tr["rewards"]["format"] == 1.0)  # only well-formed glosses reach the judge
        if not judged:
            assert tr["reward"] == 0.0  # format_failure
    after = summary["eval_rewards_after"]
    assert 0.0 <= after["chrf"] <= 1.0 and 0.0 <= after["exact_match"] <= 1.0
    assert summary["accuracy_after"] == pytest.approx(after["exact_match"])


def test_segment_level_judging_averages_the_segments(mini_model):
    tok = load_tokenizer(mini_model)

    class PairJudge(_CountingEngine):  # a perfect pair judge: 9 for a right pair, 0 for a wrong one
        def generate(self, prompts, sampling):
            self.prompts.extend(prompts)
            out = []
            for p in prompts:
                pair = tok.decode(p, skip_special_tokens=True).split(": ")[-1].strip()
                ids = tok(tiny_translate.pair_digit(pair), add_special_tokens=False)["input_ids"]
                out.append([Sample(ids, [0.0] * len(ids), "stop")])
            return out

    engine = PairJudge(tok)
    traces = [_trace("g", "the=ka good=su is=zo no=do"), _trace("g", "the=ka good=bo")]
    out = self_judge(traces, RewardContext(tok, engine), template=tiny_translate.JUDGE_TEMPLATE, lo=0, hi=9, segments=" ")
    assert out == pytest.approx([0.75, 1.0])
    assert len(engine.prompts) == 6 and traces[0].meta["judge.text"] == "9 | 0 | 9 | 9"
    assert traces[0].meta["judge.parse_failed"] is False


def test_gloss_format_requires_the_prompts_own_source_words():
    def tr(src, text, finish="stop"):
        t = _trace("g", text)
        t.prompt = [{"role": "user", "content": tiny_translate.PROMPT.format(source=src)}]
        t.turns[-1].finish_reason = finish
        return t

    got = tiny_translate.gloss_format([tr("the good", "the=ka good=su"), tr("the good", "the=ka the=ka"),
                               tr("the good", "ka su"), tr("the good", "the=ka good=bo", "length")])
    assert got == [1.0, 0.0, 0.0, 0.0]
