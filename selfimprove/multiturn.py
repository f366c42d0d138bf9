"""Two-turn episodes on token ids: attempt 1, an instruction, attempt 2 (SCoRe, self-correction eval).

Turn 2's prompt is turn 1's prompt ids + the sampled turn-1 ids + the instruction's ids; nothing is
re-tokenised from text. The instruction's ids are the chat template's own rendering of "a user
message after an assistant message", found once by rendering a probe conversation, so any chat
template works (ChatML, Llama 3, Phi-3, the tiny model's). The instruction turn is never trainable.
"""

from __future__ import annotations

from selfimprove.engines import Sampling
from selfimprove.errors import UserError
from selfimprove.trace import Turn

# SCoRe's self-correction instruction for MATH (Kumar et al., arXiv 2409.12917, appendix prompt).
SCORE_INSTRUCTION = (
    "There might be an error in the solution above because of lack of understanding of the question. "
    "Please correct the error, if any, and rewrite the solution."
)
REASK = "{question}"  # "Reask" (Yang et al., arXiv 2412.19513): the second user turn repeats the question
INSTRUCTIONS = {"score": SCORE_INSTRUCTION, "reask": REASK}


def instruction_text(name_or_text: str, question: str) -> str:
    text = INSTRUCTIONS.get(name_or_text, name_or_text)
    return text.replace("{question}", question)


def instruction_ids(tokenizer, text: str) -> list[int]:
    """Token ids that follow an assistant turn's EOS and open the next assistant turn with `text`."""
    probe = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    before = tokenizer.apply_chat_template(probe, tokenize=False)
    after = tokenizer.apply_chat_template(probe + [{"role": "user", "content": text}], tokenize=False,
                                          add_generation_prompt=True)
    eos = tokenizer.eos_token
    if not after.startswith(before) or eos not in before:
        raise UserError("the tokenizer's chat template does not extend a conversation by appending; "
                        "two-turn episodes need one that does")
    # what the template puts after the assistant's EOS (e.g. "\n" in ChatML) belongs to the instruction
    tail = before[before.rindex(eos) + len(eos):]
    return tokenizer(tail + after[len(before):], add_special_tokens=False)["input_ids"]


def add_second_attempt(engine, tokenizer, traces, instruction: str, sampling: Sampling) -> None:
    """Append [instruction turn, sampled turn 2] to each single-attempt trace, in place (1 sample each)."""
    prompts, instr_turns = [], []
    for tr in traces:
        question = tr.prompt[-1]["content"] if tr.prompt else ""
        text = instruction_text(instruction, question)
        ids = instruction_ids(tokenizer, text)
        if tr.turns[-1].finish_reason != "stop":  # a truncated attempt is closed with EOS first
            ids = [tokenizer.eos_token_id] + ids
        instr_turns.append(Turn("user", text, ids))
        prompts.append(tr.token_ids + ids)
    samples = engine.generate(prompts, Sampling(n=1, temperature=sampling.temperature, top_p=sampling.top_p,
                                                max_new_tokens=sampling.max_new_tokens, batch_size=sampling.batch_size))
    for tr, turn, group in zip(traces, instr_turns, samples):
        s = group[0]
        tr.turns.append(turn)
        tr.turns.append(Turn("assistant", tokenizer.decode(s.token_ids, skip_special_tokens=True), s.token_ids,
                             s.logprobs, trainable=True, finish_reason=s.finish_reason))
