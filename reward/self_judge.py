"""Self-judging: the current policy scores its own completions through the same engine (SSR).

`self_judge` renders each completion into a judge prompt (GEMBA-style 0-100, a Self-J-style digit,
or the user's own template), asks the policy for one greedy reply, and reads a score from it with
`parse_score`. A template that asks for an answer tag (`<answer></answer>`, or `Score:`) is a
think-first template: the score is read from the tag only, never from numbers in the reasoning, and
its default token budget is THINK_BUDGET. Other templates ask for a bare number: the last number of
the reply, with a short budget. A reply cut at the token budget (finish_reason "length") is a parse
failure, unless the <answer></answer> it was asked for is already closed. A value outside [lo, hi] or no number
is a parse failure too: reported as None so the caller applies the recipe's fallback and counts it.
"""

from __future__ import annotations

import math
import re

from reward.translation import answer_text, gated
from selfimprove.engines.base import Sampling
from selfimprove.errors import UserError

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
# the answer tags a template can ask for (the key appears in the template) and how a reply's tag is read
TAGS = {"<answer>": re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE),
        "Score:": re.compile(r"Score:\s*([-+]?\d+(?:\.\d+)?)", re.IGNORECASE)}
THINK_BUDGET = 1024  # a think-first judge reasons before its tag: 64 tokens cut most replies (issue 13)
NUMBER_BUDGET = 16  # a bare score and its end token, with room for a short preamble ("Score 7")


def answer_tag(template: str) -> str | None:
    """The answer tag a judge template asks for (its key in TAGS), or None for a bare-number template."""
    return next((tag for tag in TAGS if tag.lower() in template.lower()), None)


def parse_score(reply: str, lo: float = 0.0, hi: float = 100.0, tag: str | None = None) -> float | None:
    """The judge's score, or None when the reply has no number in range (a parse failure). With `tag`
    (the template asked for it), only the last tagged part counts: a reply without it is a failure.
    Without, a <answer> part is still preferred when present, else the last number of the reply."""
    if not reply or not reply.strip():
        return None
    tagged = TAGS[tag or "<answer>"].findall(reply)
    if tag and not tagged:  # the numbers of a reply without its tag are its reasoning's, unless that is all it is:
        # a template whose "Score:" is the cue before the reply gets a bare "85"
        if tag == "<answer>" or not _NUMBER.fullmatch(reply.strip()):
            return None
    text = tagged[-1] if tagged else reply
    numbers = _NUMBER.findall(text)
    if not numbers:
        return None
    value = float(numbers[-1] if not tagged else numbers[0])
    if math.isnan(value) or not lo <= value <= hi:
        return None
    return value


# --------------------------------------------------------------------------- self-judging

# GEMBA-DA style, reference-free (the SSR default: the policy scores its own translation 0-100)
GEMBA = ("Score the following translation on a continuous scale from 0 to 100, where a score of zero means "
         "\"no meaning preserved\" and a score of one hundred means \"perfect meaning and grammar\". "
         "Give 0 to a reply with irrelevant content or several alternative translations.\n\n"
         "Source and instruction: \"{question}\"\nTranslation: \"{answer}\"\n"
         "Think, then put the score in <answer></answer>.")
# Self-J style single digit, reference-free
DIGIT = ("Rate the answer from 0 to 9, where a higher value means a better answer. Reply with a single integer.\n"
         "[Question] {question}\n[Answer] {answer}")
TEMPLATES = {"gemba": (GEMBA, 0.0, 100.0), "digit": (DIGIT, 0.0, 9.0)}


def judge_template(template: str) -> tuple[str, float, float]:
    """A named template with its scale, or a user's template (scale from the caller)."""
    if template in TEMPLATES:
        return TEMPLATES[template]
    if "{answer}" not in template:
        raise UserError("self_judge: the judge template has no {answer} placeholder")
    return template, 0.0, 100.0


def default_budget(template: str) -> int:
    """max_new_tokens when the recipe gives none: THINK_BUDGET for a template asking for an answer tag
    (gemba), NUMBER_BUDGET for one asking for a bare number (digit)."""
    return THINK_BUDGET if answer_tag(judge_template(template)[0]) else NUMBER_BUDGET


def self_judge(traces, ctx, template: str = "gemba", lo: float | None = None, hi: float | None = None,
               fallback: float = 0.0, max_new_tokens: int | None = None, normalize: bool = True,
               extract: str = "none", only_if: str | None = None,
               segments: str | None = None) -> list[float | None]:
    """The current policy judges its own completions through the same engine (one batched call).

    Returns score / hi (when normalize) per trace; an unparsable or truncated reply gets `fallback` and
    is flagged in trace.meta["judge.parse_failed"]. `max_new_tokens` None: the template's default budget
    (`default_budget`). The judge's reply is kept in trace.meta["judge.text"]
    and never trained on. `extract="answer"` shows the judge only the <answer> part of an R1-style
    reply; `only_if` names an earlier reward (e.g. the format check) that must be >= 1 for a trace to
    be judged: the others get None (not judged, no judge call spent on them). `segments` (a regex)
    splits the answer and judges each segment on its own; the trace's score is their mean (segment-
    level judging, as document-level quality estimation averages sentence scores)."""
    text, t_lo, t_hi = judge_template(template)
    tag = answer_tag(text)
    max_new_tokens = default_budget(template) if max_new_tokens is None else max_new_tokens
    lo, hi = (t_lo if lo is None else lo), (t_hi if hi is None else hi)
    tok = ctx.tokenizer
    if tok.chat_template is None:  # a base model's tokenizer: the judge prompt is a user message
        raise UserError("self_judge: the policy's tokenizer has no chat template; set data.chat_template")
    owner, rendered = [], []  # owner[k]: the trace index of judge prompt k
    for i, tr in enumerate(traces):
        answer = answer_text(tr.completion.text, extract)
        if answer is None or gated(tr, only_if):
            continue
        question = tr.prompt[-1]["content"] if tr.prompt else ""
        parts = [p for p in re.split(segments, answer) if p.strip()] if segments else [answer]
        for part in parts or [answer]:
            msg = text.replace("{question}", question).replace("{answer}", part)
            rendered.append(tok.apply_chat_template([{"role": "user", "content": msg}], tokenize=False,
                                                    add_generation_prompt=True))
            owner.append(i)
    out: list[float | None] = [None] * len(traces)
    if not owner:
        return out
    prompts = tok(rendered, add_special_tokens=False)["input_ids"]  # one batched tokenizer call
    replies = ctx.engine.generate(prompts, Sampling(n=1, temperature=0.0, max_new_tokens=max_new_tokens))
    scores: dict[int, list[float]] = {}
    for i, group in zip(owner, replies):
        tr = traces[i]
        reply = tok.decode(group[0].token_ids, skip_special_tokens=True)
        value = parse_score(reply, lo, hi, tag)
        if group[0].finish_reason == "length" and not (tag == "<answer>" and TAGS[tag].search(reply)):
            value = None  # cut before its score was complete (a closed <answer> is): a number from the reasoning is no score
        first = i not in scores
        tr.meta["judge.text"] = reply if first else f"{tr.meta['judge.text']} | {reply}"
        tr.meta["judge.parse_failed"] = value is None or (not first and tr.meta["judge.parse_failed"])
        scores.setdefault(i, []).append(fallback if value is None else (value / hi if normalize and hi else value))
    for i, vals in scores.items():
        out[i] = sum(vals) / len(vals)
    return out


def _validate_self_judge(kwargs: dict) -> None:
    """Recipe-time checks of self_judge's options (a template without {answer} fails before step 1)."""
    judge_template(kwargs.get("template", "gemba"))
    budget = kwargs.get("max_new_tokens")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise UserError(f"self_judge: max_new_tokens must be a positive integer or null (the template's default), "
                        f"got {budget!r}")


self_judge.validate_kwargs = _validate_self_judge
