"""Held-out accuracy of a model on a task, with the same rewards as training."""

from __future__ import annotations

from selfimprove.data import Example, encode_prompts
from selfimprove.engines import Sampling
from selfimprove.scoring import score
from selfimprove.trace import Trace, Turn


def make_traces(examples: list[Example], prompt_ids, samples, tokenizer, tag: str, version: int = 0) -> list[Trace]:
    """One trace per sample: a non-trainable prompt turn, then the trainable sampled turn."""
    traces = []
    for i, (ex, p_ids, group) in enumerate(zip(examples, prompt_ids, samples)):
        prompt_text = tokenizer.decode(p_ids)
        for j, s in enumerate(group):
            traces.append(Trace(
                id=f"{tag}-{i}-{j}", group_id=f"{tag}-{i}", task=ex.task, prompt=ex.prompt, answer=ex.answer,
                turns=[Turn("user", prompt_text, list(p_ids)),
                       Turn("assistant", tokenizer.decode(s.token_ids, skip_special_tokens=True), s.token_ids,
                            s.logprobs, trainable=True, finish_reason=s.finish_reason)],
                policy_version=version,
            ))
    return traces


def evaluate(engine, tokenizer, examples: list[Example], rewards, eval_cfg, ctx, max_prompt_tokens: int = 512):
    """Generate one answer per example (greedy by default); return (accuracy, traces)."""
    sampling = Sampling(n=1, temperature=eval_cfg.temperature, top_p=1.0,
                        max_new_tokens=eval_cfg.max_new_tokens, batch_size=eval_cfg.batch_size)
    prompt_ids = encode_prompts(tokenizer, examples, max_prompt_tokens)
    samples = engine.generate(prompt_ids, sampling)
    traces = make_traces(examples, prompt_ids, samples, tokenizer, tag="eval")
    score(traces, rewards, ctx)
    correct = [1.0 if (tr.rewards.get(eval_cfg.reward) or 0.0) >= 0.5 else 0.0 for tr in traces]
    return (sum(correct) / len(correct) if correct else 0.0), traces


def best_of_n(engine, tokenizer, examples: list[Example], verifier, picker, k: int, eval_cfg, ctx,
              max_prompt_tokens: int = 512) -> tuple[dict, list[Trace]]:
    """Best-of-k with a picker reward (a trained judge, a reward model, the policy's self-judge):
    k samples per problem, the picker's highest-scored one is the answer; the verifier decides
    correctness. Reports the pick's accuracy against the first sample (a random pick), the mean
    sample and the oracle (any of the k correct)."""
    from selfimprove.scoring import score

    sampling = Sampling(n=k, temperature=eval_cfg.temperature, top_p=1.0, max_new_tokens=eval_cfg.max_new_tokens,
                        batch_size=eval_cfg.batch_size)
    prompt_ids = encode_prompts(tokenizer, examples, max_prompt_tokens)
    traces = make_traces(examples, prompt_ids, engine.generate(prompt_ids, sampling), tokenizer, tag="bon")
    score(traces, [verifier, picker], ctx)
    right = [1.0 if (tr.rewards.get(verifier.name) or 0.0) >= 0.5 else 0.0 for tr in traces]
    picked = first = oracle = 0.0
    for i in range(0, len(traces), k):
        group = list(range(i, i + k))
        best = max(group, key=lambda j: traces[j].rewards.get(picker.name) or float("-inf"))  # ties: the first
        picked += right[best]
        first += right[i]
        oracle += max(right[j] for j in group)
    n = max(len(examples), 1)
    return {"k": k, "problems": len(examples), "picked": picked / n, "first_sample": first / n,
            "mean_sample": sum(right) / max(len(right), 1), "oracle": oracle / n}, traces
