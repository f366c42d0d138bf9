"""Sampling traces: the one step between examples and a `list[Trace]`, for every caller.

`sample` encodes prompts through the chat template, generates with an engine and builds the traces
(a non-trainable prompt turn, then the trainable sampled turn). The loop, evaluation, self-correction
evaluation, CCT, Self-J labels, reward-model pairs and best-of-N all call it.

Two-turn episodes are built on token ids (SCoRe, self-correction evaluation): turn 2's prompt is
turn 1's prompt ids + the sampled turn-1 ids + the instruction's ids; nothing is re-tokenised from
text. The instruction's ids are the chat template's own rendering of "a user message after an
assistant message", found once by rendering a probe conversation, so any chat template works
(ChatML, Llama 3, Phi-3, the tiny model's). The instruction turn is never trainable. Each attempt
keeps its own reward on its turn (`Trace.first_attempt.reward`, `Trace.second_attempt.reward`).

`is_correct` is the one place where a reward becomes right/wrong: value >= threshold (0.5 by
default; `eval.correct_threshold` in a recipe, `--correct-threshold` on the command line).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from selfimprove.data import Example, encode_prompts
from selfimprove.engines.base import Sampling
from selfimprove.errors import UserError
from selfimprove.trace import Trace, Turn

CORRECT_THRESHOLD = 0.5

# SCoRe's self-correction instructions (Kumar et al., arXiv 2409.12917, appendix C), verbatim: MATH (its
# answer-format sentence matches the MATH zero-shot prompt's, so attempt 2 ends as attempt 1 does) and
# MBPP/HumanEval.
SCORE_INSTRUCTION = (
    "There might be an error in the solution above because of lack of understanding of the question. "
    "Please correct the error, if any, and rewrite the solution. Only output the final solution! At the end of "
    "the Solution, when you give your final answer, write it in the form \"Final Answer: The final answer is "
    "$answer$. I hope it is correct.\""
)
SCORE_CODE_INSTRUCTION = (
    "There might be an error in the code above because of lack of understanding of the question. "
    "Please correct the error, if any, and rewrite the solution. Only output the final correct Python program!"
)
REASK = "{question}"  # "Reask" (Yang et al., arXiv 2412.19513): the second user turn repeats the question
# The same paper's "Confidence" (reassure, keep a right answer) and "Critique" (doubt, look for the error)
# prompts. Their exact wording is in neither the reference code nor a retrievable copy of the paper: these
# are reconstructions of what the paper describes, kept short so a label answer can follow.
CONFIDENCE = ("{question}\nYour previous answer is probably correct. Keep it if you are confident in it, and "
              "change it only if you find a clear mistake.")
CRITIQUE = ("{question}\nAre you sure? Think carefully about whether your previous answer is wrong, and correct "
            "it if it is.")
INSTRUCTIONS = {"score": SCORE_INSTRUCTION, "score_code": SCORE_CODE_INSTRUCTION, "reask": REASK, "confidence": CONFIDENCE,
                "critique": CRITIQUE}


def passes(value: float | None, threshold: float = CORRECT_THRESHOLD) -> bool:
    """A reward value counts as correct: present and >= threshold."""
    return value is not None and value >= threshold


def is_correct(trace: Trace, reward: str | None = None, threshold: float = CORRECT_THRESHOLD) -> bool:
    """The named reward's value (or the combined reward when `reward` is None) passes the threshold."""
    return passes(trace.reward if reward is None else trace.rewards.get(reward), threshold)


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
                policy_version=version, columns=ex.columns, prompt_text=ex.prompt_text,
                source=ex.source,
            ))
    return traces


def sample(engine, tokenizer, examples: list[Example], sampling: Sampling, *, tag: str, max_prompt_tokens: int,
           version: int = 0, seeds: list[int] | None = None) -> list[Trace]:
    """`sampling.n` traces per example, prompt-major (example 0's n samples first), ids `{tag}-{i}-{j}`."""
    prompt_ids = encode_prompts(tokenizer, examples, max_prompt_tokens)
    samples = engine.generate(prompt_ids, sampling, seeds=seeds)
    return make_traces(examples, prompt_ids, samples, tokenizer, tag=tag, version=version)


# --------------------------------------------------------------------------- two-turn episodes


def instruction_text(name_or_text: str, question: str) -> str:
    text = INSTRUCTIONS.get(name_or_text, name_or_text)
    return text.replace("{question}", question)


def instruction_ids(tokenizer, text: str, **chat_kwargs) -> list[int]:
    """Token ids that follow an assistant turn's EOS and open the next assistant turn with `text`."""
    probe = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    before = tokenizer.apply_chat_template(probe, tokenize=False, **chat_kwargs)
    after = tokenizer.apply_chat_template(probe + [{"role": "user", "content": text}], tokenize=False,
                                          add_generation_prompt=True, **chat_kwargs)
    eos = tokenizer.eos_token
    if not after.startswith(before) or eos not in before:
        raise UserError("the tokenizer's chat template does not extend a conversation by appending; "
                        "two-turn episodes need one that does")
    # what the template puts after the assistant's EOS (e.g. "\n" in ChatML) belongs to the instruction
    tail = before[before.rindex(eos) + len(eos):]
    return tokenizer(tail + after[len(before):], add_special_tokens=False)["input_ids"]


def keep_attempt_reward(traces: list[Trace], k: int, reward: str | None = None) -> None:
    """Store attempt k's score on its turn: the named reward's value, or the combined reward."""
    for tr in traces:
        tr.attempts[k].reward = tr.reward if reward is None else tr.rewards.get(reward)


def ended_turn(turn: Turn, engine, tokenizer, sampling: Sampling) -> bool:
    """The attempt ended with an end-of-turn token: not cut at max_new_tokens, and not ended by a stop string
    (whose completion has no end-of-turn token either)."""
    if turn.finish_reason != "stop":
        return False
    ends = getattr(engine, "stop_ids", None) or [tokenizer.eos_token_id]
    return not sampling.stop or (bool(turn.token_ids) and turn.token_ids[-1] in ends)


def add_second_attempt(engine, tokenizer, traces: list[Trace], instruction: str, sampling: Sampling,
                       reward: str | None = None, chat_kwargs: dict | None = None) -> None:
    """Keep attempt 1's (scored) reward on its turn, then append [instruction turn, sampled attempt 2] to
    each single-attempt trace, in place (one sample each). The caller scores the episodes again."""
    keep_attempt_reward(traces, 0, reward)
    prompts, instr_turns = [], []
    for tr in traces:
        question = tr.prompt[-1]["content"] if tr.prompt else ""
        text = instruction_text(instruction, question)
        ids = instruction_ids(tokenizer, text, **(chat_kwargs or {}))  # data.chat_template_kwargs, as turn 1
        if not ended_turn(tr.turns[-1], engine, tokenizer, sampling):  # closed with EOS first
            ids = [tokenizer.eos_token_id] + ids
        instr_turns.append(Turn("user", text, ids))
        prompts.append(tr.token_ids + ids)
    samples = engine.generate(prompts, replace(sampling, n=1))
    for tr, turn, group in zip(traces, instr_turns, samples):
        s = group[0]
        tr.turns.append(turn)
        tr.turns.append(Turn("assistant", tokenizer.decode(s.token_ids, skip_special_tokens=True), s.token_ids,
                             s.logprobs, trainable=True, finish_reason=s.finish_reason))


def two_turn(engine, tokenizer, examples: list[Example], sampling: Sampling, instruction: str,
             score: Callable[[list[Trace]], None], *, tag: str, max_prompt_tokens: int,
             reward: str | None = None) -> list[Trace]:
    """Whole two-turn episodes: `sampling.n` first attempts per example, scored; the instruction and a
    second attempt each, scored again. Each attempt's reward (named, or combined) stays on its turn."""
    traces = sample(engine, tokenizer, examples, sampling, tag=tag, max_prompt_tokens=max_prompt_tokens)
    score(traces)
    add_second_attempt(engine, tokenizer, traces, instruction, sampling, reward)
    score(traces)
    keep_attempt_reward(traces, 1, reward)
    return traces
