"""Evaluations that sample: held-out accuracy, best-of-N with any picker, two-turn self-correction.

Each samples through `rollout` and scores with the recipe's rewards (`reward.score`); correctness is
`rollout.is_correct` (a reward's value >= threshold). The numbers come from `evaluation.metrics`.
"""

from __future__ import annotations

from dataclasses import replace

from reward import score
from selfimprove.data import Example
from selfimprove.engines.base import Sampling
from selfimprove.errors import UserError
from selfimprove.evaluation.metrics import best_of_n_stats, outcome_metrics
from selfimprove.rollout import CORRECT_THRESHOLD, is_correct, passes, sample, two_turn
from selfimprove.trace import Trace


def evaluate(engine, tokenizer, examples: list[Example], rewards, eval_cfg, ctx, max_prompt_tokens: int = 512):
    """One answer per example (greedy by default); returns (accuracy under eval_cfg.reward, traces)."""
    sampling = Sampling.of(eval_cfg, n=1)  # eval.n counts problems, not samples
    traces = sample(engine, tokenizer, examples, sampling, tag="eval", max_prompt_tokens=max_prompt_tokens)
    score(traces, rewards, ctx)
    correct = [is_correct(tr, eval_cfg.reward, eval_cfg.correct_threshold) for tr in traces]
    return (sum(correct) / len(correct) if correct else 0.0), traces


def best_of_n(engine, tokenizer, examples: list[Example], verifier, picker, k: int, eval_cfg, ctx,
              max_prompt_tokens: int = 512) -> tuple[dict, list[Trace]]:
    """Best-of-k with a picker reward (a trained judge, a reward model, the policy's self-judge): k samples
    per problem, the picker's highest-scored one is the answer; the verifier decides correctness."""
    sampling = Sampling.of(eval_cfg, n=k)
    traces = sample(engine, tokenizer, examples, sampling, tag="bon", max_prompt_tokens=max_prompt_tokens)
    score(traces, [verifier, picker], ctx)
    correct = {tr.id: is_correct(tr, verifier.name, eval_cfg.correct_threshold) for tr in traces}
    stats = best_of_n_stats(traces, correct, {tr.id: tr.rewards.get(picker.name) for tr in traces})
    return {"k": k, **stats}, traces


def evaluate_two_turn(engine, tokenizer, examples, rewards, ctx, k: int, sampling: Sampling, instruction: str,
                      max_prompt_tokens: int = 512, threshold: float = CORRECT_THRESHOLD):
    """k two-turn episodes per problem; returns (self-correction metrics, traces). Each attempt's turn
    holds the first reward's value; meta correct1 / correct2 its verdict."""
    if k < 1:
        raise UserError(f"k must be >= 1, got {k}")
    name = rewards[0].name
    first = replace(sampling, n=k)
    traces = two_turn(engine, tokenizer, examples, first, instruction, lambda t: score(t, rewards, ctx), tag="sc",
                      max_prompt_tokens=max_prompt_tokens, reward=name)
    for tr in traces:
        tr.meta["correct1"] = passes(tr.first_attempt.reward, threshold)
        tr.meta["correct2"] = passes(tr.second_attempt.reward, threshold)
    return outcome_metrics(traces), traces
