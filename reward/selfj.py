"""A trained Self-J judge at inference (Ye & Ng, arXiv 2409.00935; algorithms.md sections 4.3, 4.4, 4.6).

The judge sees a *view* of (question, answer): the teacher view also shows the reference, the
student view does not. Both are rendered through the tokenizer's chat template with the generation
prompt, or raw (a base model without a chat template) in the reference's format RAW_FORMAT,
"{instruction}\n\n### Response:" (nusnlp/Self-J templates/wizardlm.json, alpaca-lora's Prompter), and the score is E[k] over the ten digit probabilities of the first generated token, read
from one forward pass (nusnlp/Self-J judge.py; no sampling). Defaults are the paper's templates; a
trained judge's folder carries the templates it was trained with (`selfj.json`), and every caller
(the `judge_model` reward, `selfimprove judge`) uses those by default.

`judge_model` is the reward: reference-free (the student view of question = the last prompt
message, answer = the completion), usable for RL and for best-of-N selection (the paper's AlpacaEval
use). A template with {reference} rates with the trace's reference answer.
"""

from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from selfimprove.errors import UserError
from selfimprove.hub import from_pretrained, load_tokenizer, resolve_model

# nusnlp/Self-J judge.py's templates ({instruction} -> {question}, {input} -> {answer})
TEACHER_TEMPLATE = ("Please act as a precise judge and evaluate the quality of the answer to question. Rate the "
                    "answer from 0 to 9, where a higher value means a better answer. Please refer to the reference "
                    "answer to make your judgement. Respond with an integer between 0 and 9. \n\n[Question]\n"
                    "{question}\n\n[Reference]\n{reference}\n\n[Answer]\n{answer}")
STUDENT_TEMPLATE = ("Please act as a precise judge and evaluate the quality of the answer to question. Rate the "
                    "answer from 0 to 9, where a higher value means a better answer. Please respond with an integer "
                    "between 0 and 9. \n\n[Question]\n{question}\n\n[Answer]\n{answer}")
TEMPLATE_FILE = "selfj.json"  # next to a trained judge's weights: the templates it was trained with
RAW_FORMAT = "{instruction}\n\n### Response:"  # nusnlp/Self-J templates/wizardlm.json (prompt_no_input)
CHAT_MODES = ("auto", "true", "false")


def raw_format(tokenizer, mode: str, fmt: str = RAW_FORMAT) -> str | None:
    """The raw prompt format to render views with, or None for the chat template. auto: raw exactly when
    the tokenizer has no chat template (a base model: Llama-2, Vicuna's Llama tokenizer)."""
    if mode == "false" or (mode == "auto" and tokenizer.chat_template is None):
        return fmt
    return None


def raw_prompt(fmt: str, instruction: str) -> str:
    return fmt.replace("{instruction}", instruction)


# --------------------------------------------------------------------------- views


def template_errors(template: str, with_reference: bool, where: str) -> list[str]:
    """A view template needs {answer}; the teacher view needs {reference}, the student view must not have it."""
    errs = [] if "{answer}" in template else [f"{where} has no {{answer}} placeholder"]
    if with_reference and "{reference}" not in template:
        errs.append(f"{where} has no {{reference}} placeholder (the teacher view shows the reference)")
    if not with_reference and "{reference}" in template:
        errs.append(f"{where} must not use {{reference}} (the student view is reference-free)")
    unknown = sorted(set(re.findall(r"\{([A-Za-z_]\w*)\}", template)) - {"question", "answer", "reference"})
    if unknown:  # a typo such as {questoin} would stay in the prompt as literal text
        errs.append(f"{where} has an unknown placeholder {{{unknown[0]}}} (known: {{question}} {{answer}} {{reference}})")
    return errs


_FIELD = re.compile(r"\{(question|answer|reference)\}")


def fill(template: str, question: str, answer: str, reference: str | None = None) -> str:
    """One pass over the template (not str.format, not chained replace): user text may contain braces."""
    values = {"question": question, "answer": answer, "reference": reference or ""}
    return _FIELD.sub(lambda m: values[m.group(1)], template)


def render_texts(tokenizer, template: str, questions, answers, references=None, raw: str | None = None) -> list[str]:
    """The view's prompt texts: chat-formatted with the generation prompt, or the raw format `raw` around
    the filled view (the score comes next either way)."""
    refs = references if references is not None else [None] * len(questions)
    views = [fill(template, q, a, r) for q, a, r in zip(questions, answers, refs)]
    if raw is not None:
        return [raw_prompt(raw, v) for v in views]
    return [tokenizer.apply_chat_template([{"role": "user", "content": v}], tokenize=False, add_generation_prompt=True)
            for v in views]


def render_views(tokenizer, template: str, questions, answers, references=None, raw: str | None = None) \
        -> list[list[int]]:
    """Prompt ids of one view. A raw prompt gets the tokenizer's own special tokens (BOS), as alpaca-lora
    tokenizes it; a chat-formatted one holds them already."""
    texts = render_texts(tokenizer, template, questions, answers, references, raw)
    return tokenizer(texts, add_special_tokens=raw is not None)["input_ids"] if texts else []


def digit_token_ids(tokenizer) -> list[int]:
    """The ids of '0'..'9' as the first generated token (the last piece of each digit's encoding:
    sentencepiece tokenizers prefix a bare '▁')."""
    ids = []
    for d in "0123456789":
        pieces = tokenizer(d, add_special_tokens=False)["input_ids"]
        if not pieces or tokenizer.decode(pieces[-1:]).strip() != d:
            raise UserError(f"selfj: the tokenizer has no single token for the digit '{d}' (Self-J scores one digit)")
        ids.append(pieces[-1])
    if len(set(ids)) != 10:
        raise UserError("selfj: the tokenizer maps two digits to the same token")
    return ids


def question_of(trace) -> str:
    return trace.prompt[-1]["content"] if trace.prompt else ""


# --------------------------------------------------------------------------- scoring


def left_padded(rows: list[list[int]], pad_id: int, device):
    """Left padding puts every row's last token in the last column, so the positions of interest are
    the same for the whole batch and `logits_to_keep` skips the rest of the [B, L, V] logits."""
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, L - len(r):] = torch.tensor(r)
        mask[i, L - len(r):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


def last_logits(model, rows: list[list[int]], pad_id: int, keep: int) -> torch.Tensor:
    """[B, keep, V] logits of the last `keep` positions of each (left-padded) row."""
    device = next(model.parameters()).device
    ids, mask, pos = left_padded(rows, pad_id, device)
    return model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits


@torch.no_grad()
def digit_probs(model, tokenizer, prompt_ids: list[list[int]], batch_size: int = 64) -> torch.Tensor:
    """[N, 10] probabilities of '0'..'9' as the first generated token, renormalised over the digits."""
    digits = torch.tensor(digit_token_ids(tokenizer))
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(prompt_ids), batch_size):
        logits = last_logits(model, prompt_ids[start:start + batch_size], tokenizer.pad_token_id, 1)[:, -1]
        p = torch.softmax(logits.float(), dim=-1)[:, digits.to(logits.device)].cpu()
        out.append(p / p.sum(-1, keepdim=True).clamp_min(1e-30))
    if was_training:
        model.train()
    return torch.cat(out) if out else torch.zeros((0, 10))


def expected_score(digit_probs) -> float:
    """E[score] over digits 0..9 from (possibly unnormalised) probabilities, renormalised over the digits."""
    probs = [max(float(p), 0.0) for p in digit_probs]
    if len(probs) != 10:
        raise ValueError(f"expected 10 digit probabilities, got {len(probs)}")
    total = sum(probs)
    if total <= 0:
        return 0.0  # Self-J's judge.py scores 0 when no digit is among the candidates
    return sum(k * p for k, p in enumerate(probs)) / total


def expected_score_from_logprobs(top_logprobs: dict[str, float]) -> float:
    """The same from a top-k log-prob map of the first generated token (token text -> log-prob)."""
    probs = [0.0] * 10
    for token, lp in top_logprobs.items():
        t = token.strip()
        if len(t) == 1 and t.isdigit():
            probs[int(t)] += math.exp(lp)
    return expected_score(probs)


def judge_scores(model, tokenizer, questions, answers, references=None, template: str | None = None,
                 batch_size: int = 64, raw: str | None = None) -> list[tuple[float, list[float]]]:
    """(E[score] in [0, 9], ten digit probabilities) per answer; the teacher view when references are
    given (and no template), else the student view; `raw`: the raw prompt format (None: chat template)."""
    if template is None:
        template = TEACHER_TEMPLATE if references is not None else STUDENT_TEMPLATE
    probs = digit_probs(model, tokenizer, render_views(tokenizer, template, questions, answers, references, raw),
                        batch_size)
    return [(expected_score(row), row) for row in probs.tolist()]


# --------------------------------------------------------------------------- trained judges


def save_templates(path: str | Path, teacher: str, student: str, raw: str | None = None) -> None:
    """The views and the prompt format (`raw_format`: null = the chat template) a judge was trained with."""
    Path(path, TEMPLATE_FILE).write_text(json.dumps({"teacher_template": teacher, "student_template": student,
                                                     "raw_format": raw}, indent=2))


def judge_raw_format(path: str) -> str | None:
    """The raw prompt format a judge folder was trained with; None: the chat template (also for judges saved
    before raw formats existed)."""
    f = Path(path, TEMPLATE_FILE)
    try:
        value = json.loads(f.read_text()).get("raw_format") if f.is_file() else None
    except (ValueError, AttributeError):
        raise UserError(f"judge: {f} is not a valid template file (teacher_template, student_template)") from None
    if value is not None and (not isinstance(value, str) or "{instruction}" not in value):
        raise UserError(f"judge: {f}: raw_format must be text with an {{instruction}} placeholder")
    return value


def judge_templates(path: str) -> tuple[str, str]:
    """(teacher, student) templates of a judge folder: those it was trained with, else the paper's."""
    f = Path(path, TEMPLATE_FILE)
    if not f.is_file():
        return TEACHER_TEMPLATE, STUDENT_TEMPLATE
    try:
        saved = json.loads(f.read_text())
        return str(saved["teacher_template"]), str(saved["student_template"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"judge: {f} is not a valid template file (teacher_template, student_template)") from None


@functools.lru_cache(maxsize=4)
def load_judge(model: str):
    """(model, tokenizer, (teacher, student) templates, raw format or None) of a judge folder, loaded once per
    process."""
    path = resolve_model(model, "judge")
    raw = judge_raw_format(path)
    judge = from_pretrained(AutoModelForCausalLM, path, "judge", dtype=torch.float32)
    judge.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    return judge, load_tokenizer(path, "judge", chat_template=raw is None), judge_templates(path), raw


def judge_model(traces, ctx=None, model: str = "", template: str | None = None, normalize: bool = True,
                batch_size: int = 64) -> list[float]:
    """Expected judge score per trace: in [0, 1] (score / 9) when normalize, else in [0, 9]."""
    if not model:
        raise UserError("judge_model: set rewards[].kwargs.model to a trained judge folder")
    judge, tokenizer, (_, student), raw = load_judge(model)
    template = template or student
    if "{answer}" not in template:
        raise UserError("judge_model: the template has no {answer} placeholder")
    refs = None
    if "{reference}" in template:
        missing = next((tr.id for tr in traces if tr.answer is None), None)
        if missing is not None:
            raise UserError(f"judge_model: the template uses {{reference}} but trace {missing} has no reference answer")
        refs = [tr.answer for tr in traces]
    scores = judge_scores(judge, tokenizer, [question_of(tr) for tr in traces],
                          [tr.completion.text for tr in traces], refs, template, batch_size, raw)
    for tr, (s, _) in zip(traces, scores):
        tr.meta["judge_model.score"] = s
    return [s / 9.0 if normalize else s for s, _ in scores]
