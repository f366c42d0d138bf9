"""CL / CS / RSS on classification tasks from label-token probabilities (Yang et al., arXiv 2412.19513).

The reference (Zhe-Young/SelfCorrectDecompose `eval_logits.py`, `analysis_logits.py`) scores MMLU, BoolQ and
CommonsenseQA without sampling. Turn 1 is the question, then the assistant's reply is prefilled with
"The answer is:" and the next-token logits of the label tokens are softmaxed over the labels only: p1.
For every label X, turn 2 is the conversation with the forced answer "The answer is: X\\n", the second
user turn (the instruction; Reask repeats the question) and the same prefill: p2[X]. Per problem, gold g:

    P(a)    = p1[g]                                          first answer right
    P(b|a)  = p2[g][g]                                       right again after a right first answer
    P(b|~a) = sum_{X != g} p1[X] p2[X][g] / (1 - p1[g])      fixed after a wrong one (0 when p1[g] = 1)

and over n problems (the reference's sums, expected rather than argmax accuracies):

    Acc1 = mean P(a)     Acc2 = mean [P(a) P(b|a) + (1 - P(a)) P(b|~a)]
    CL = sum P(a) P(b|a) / sum P(a)     CS = sum (1 - P(a)) P(b|~a) / (n - sum P(a))
    RSS = (Acc2 - Acc1^2) / (2 Acc1 (1 - Acc1))

These are the limits of the sampled estimator (`metrics.self_correction`) as k grows: a first answer
X ~ p1, a second Y ~ p2[X]. delta_i2c = mean (1 - P(a)) P(b|~a), delta_c2i = mean P(a) (1 - P(b|a)).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from string import ascii_uppercase

import torch

from selfimprove.data import get_task, read_rows
from selfimprove.errors import UserError
from selfimprove.evaluation.report import metrics_table
from selfimprove.policy import context_length, load_model, load_tokenizer, resolve_model_path
from selfimprove.rollout import instruction_text

# the reference's wording (eval_logits.py): system message, multiple-choice prompt (MMLU names a subject), prefill
SYSTEM = "You are a helpful assistant!"
HEADER = "The following is a multiple choice questions (with answers).\n\n"
SUBJECT_HEADER = "The following is a multiple choice question (with answers) about {subject}.\n\n"
FOOTER = "Please directly answer the right choice.\n"
PREFILL = "The answer is:"
ESTIMATORS = ("auto", "sampled", "probabilities")
SUM_TOLERANCE = 1e-3  # a row's label distribution must sum to 1 within this (float32 softmax noise is far below)
BATCH = 16  # sequences per forward pass


def problem_terms(p1: list[float], p2: list[list[float]], gold: int) -> tuple[float, float, float]:
    """(P(a), P(b|a), P(b|~a)) of one problem, exactly as analysis_logits.py."""
    pa, pb = p1[gold], p2[gold][gold]
    rest = sum(p1[x] * p2[x][gold] for x in range(len(p1)) if x != gold)
    return pa, pb, (rest / (1 - pa) if pa != 1 else 0.0)


def label_metrics(problems: list[tuple[list[float], list[list[float]], int]]) -> dict:
    """Acc@t1/t2, deltas, CL, CS and RSS of [(p1, p2, gold index)] per problem. CL (CS) is None when no
    first answer can be right (wrong), RSS when Acc1 is 0 or 1."""
    if not problems:
        raise ValueError("no problems to score")
    terms = [problem_terms(*p) for p in problems]
    n = len(terms)
    right = sum(pa for pa, _, _ in terms)
    kept = sum(pa * pb for pa, pb, _ in terms)
    fixed = sum((1 - pa) * pc for pa, _, pc in terms)
    a1, a2 = right / n, (kept + fixed) / n
    return {
        "acc_t1": a1, "acc_t2": a2, "delta": a2 - a1,
        "delta_i2c": fixed / n, "delta_c2i": (right - kept) / n,
        "cl": kept / right if right > 0 else None,
        "cs": fixed / (n - right) if n - right > 0 else None,
        "rss": (a2 - a1 * a1) / (2 * a1 * (1 - a1)) if 0 < a1 < 1 else None,
        "n_problems": n, "estimator": "probabilities",
    }


# --------------------------------------------------------------------------- rows that carry probabilities


def probability_row(row: dict, path: str, no: int) -> tuple[list[float], list[list[float]], int]:
    """(p1, p2, gold index) of a `selfimprove metrics` row {p1: [L], p2: [L x L], gold: index or label,
    labels?: [L]}; every way it can be wrong is one line naming the file and line."""
    where = f"metrics: {path} line {no}"
    for key in ("p1", "p2", "gold"):
        if key not in row:
            raise UserError(f"{where} has no '{key}' field (probability rows are {{p1, p2, gold}})")
    p1 = _distribution(row["p1"], f"{where}: 'p1'")
    if not isinstance(row["p2"], list) or len(row["p2"]) != len(p1):
        raise UserError(f"{where}: 'p2' must be {len(p1)} lists (one per first answer), one per label of 'p1'")
    p2 = [_distribution(r, f"{where}: 'p2'[{i}]", len(p1)) for i, r in enumerate(row["p2"])]
    labels = row.get("labels")
    if labels is not None and (not isinstance(labels, list) or len(labels) != len(p1)):
        raise UserError(f"{where}: 'labels' must be a list of {len(p1)} labels")
    return p1, p2, _gold(row["gold"], labels or list(range(len(p1))), None, f"{where}: 'gold'")


def _distribution(value, where: str, size: int | None = None) -> list[float]:
    if not isinstance(value, list) or len(value) < 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in value):
        raise UserError(f"{where} must be a list of >= 2 probabilities (finite, >= 0), got {str(value)[:60]}")
    if size is not None and len(value) != size:
        raise UserError(f"{where} has {len(value)} probabilities, 'p1' has {size}")
    if abs(sum(value) - 1) > SUM_TOLERANCE:
        raise UserError(f"{where} sums to {sum(value):.4g}, not 1 (probabilities over the labels)")
    return [float(v) for v in value]


def _gold(value, labels: list, choices: list | None, where: str) -> int:
    """A gold answer as a label index: an index (int), a label, the text of a choice, or true/false (BoolQ)."""
    if isinstance(value, bool):
        value = str(value).lower()
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(labels):
        return value
    if isinstance(value, str) and value.strip() in labels:
        return labels.index(value.strip())
    if isinstance(value, str) and choices and value in choices:
        return choices.index(value)
    raise UserError(f"{where} is {value!r}: give a label ({', '.join(map(str, labels))}), an index below "
                    f"{len(labels)}{' or the text of a choice' if choices else ''}")


# --------------------------------------------------------------------------- multiple-choice data


@dataclass
class ChoiceProblem:
    id: str
    question: str  # the first user message, options included
    labels: list[str]
    gold: int


def choice_rows(o) -> list[dict] | None:
    """The rows of `eval --turns 2` data when the probability estimator applies (--estimator probabilities,
    or auto and the rows carry `choices` or `labels`), else None: sampled two-turn evaluation."""
    if o.estimator not in ESTIMATORS:
        raise UserError(f"--estimator must be one of {', '.join(ESTIMATORS)}, got {o.estimator!r}")
    if o.estimator == "sampled":
        return None
    if get_task(o.data) is not None:
        if o.estimator == "probabilities":
            raise UserError(f"--estimator probabilities needs multiple-choice data (a 'choices' or 'labels' "
                            f"column); {o.data} is a synthetic task")
        return None
    rows = read_rows(o.data, o.split)[: o.n]
    if any("choices" in r or "labels" in r for r in rows[:1]):
        return rows
    if o.estimator == "probabilities":
        raise UserError(f"--estimator probabilities: {o.data} row 1 has no 'choices' or 'labels' column")
    return None


def choice_problems(rows: list[dict], source: str, prompt_column: str, answer_column: str | None) -> list[ChoiceProblem]:
    """Multiple-choice rows: `choices` (option texts, listed under labels A, B, C, ... or the row's `labels`,
    in the reference's prompt), or `labels` alone (the question already names them, e.g. BoolQ's
    ["false", "true"]); the gold answer in `answer_column`."""
    if not rows:
        raise UserError(f"data: {source} is empty")
    out = []
    for i, row in enumerate(rows, 1):
        where = f"data: {source} row {i}"
        question, choices, labels = row.get(prompt_column), row.get("choices"), row.get("labels")
        if not isinstance(question, str):
            raise UserError(f"{where} has no text question in column '{prompt_column}' (set --prompt-column)")
        if choices is not None and (not isinstance(choices, list) or not 2 <= len(choices) <= 26):
            raise UserError(f"{where}: 'choices' must be a list of 2 to 26 option texts")
        labels = labels if labels is not None else list(ascii_uppercase[: len(choices or [])])
        if not isinstance(labels, list) or len(labels) < 2 or len({str(x) for x in labels}) != len(labels) or (
                choices is not None and len(labels) != len(choices)):
            raise UserError(f"{where}: 'labels' must be >= 2 distinct labels, one per choice")
        labels = [str(x) for x in labels]
        if not answer_column or answer_column not in row:
            raise UserError(f"{where} has no answer column '{answer_column}'")
        gold = _gold(row[answer_column], labels, choices, f"{where}: '{answer_column}'")
        if choices is not None:
            head = SUBJECT_HEADER.format(subject=row["subject"]) if "subject" in row else HEADER
            question = head + question + "\n" + "".join(f"{k}. {v}\n" for k, v in zip(labels, choices)) + FOOTER
        out.append(ChoiceProblem(str(row.get("id", i - 1)), question, labels, gold))
    return out


# --------------------------------------------------------------------------- the model's label probabilities


def label_token_ids(tokenizer, labels: list[str], where: str) -> list[int]:
    """One token id per label (the reference asserts single-token labels): the label's own tokens, no space."""
    ids = [tokenizer(label, add_special_tokens=False)["input_ids"] for label in labels]
    for label, one in zip(labels, ids):
        if len(one) != 1:
            raise UserError(f"{where}: the label {label!r} is {len(one)} tokens for this tokenizer; the probability "
                            "estimator reads one next token per label (give single-token 'labels')")
    if len({one[0] for one in ids}) != len(ids):
        raise UserError(f"{where}: two labels share one token")
    return [one[0] for one in ids]


def prompts(tokenizer, p: ChoiceProblem, instruction: str, prefill: str) -> list[str]:
    """Turn 1's text, then turn 2's after each forced first answer, every one ending in the prefill."""
    def render(messages):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefill
    first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p.question}]
    second = [render(first + [{"role": "assistant", "content": f"{prefill} {x}\n"},
                              {"role": "user", "content": instruction_text(instruction, p.question)}])
              for x in p.labels]
    return [render(first)] + second


@torch.no_grad()
def next_label_probs(model, tokenizer, texts: list[str], label_ids: list[int]) -> list[list[float]]:
    """softmax over the label tokens' next-token logits after each text (right-padded batches, so every
    position keeps its unpadded position id)."""
    out = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for s in range(0, len(texts), BATCH):
        enc = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[s: s + BATCH]]
        width = max(map(len, enc))
        ids = torch.tensor([e + [pad] * (width - len(e)) for e in enc], device=model.device)
        mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in enc], device=model.device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        last = logits[torch.arange(len(enc)), torch.tensor([len(e) - 1 for e in enc])][:, label_ids]
        out += torch.softmax(last.float(), dim=-1).tolist()
    return out


def evaluate_choices(o, rows: list[dict]) -> tuple[dict, list[dict]]:
    """`eval --turns 2` on multiple-choice rows: (metrics, one {problem, labels, gold, p1, p2} row per problem,
    the row format `selfimprove metrics` reads back)."""
    problems = choice_problems(rows, o.data, o.prompt_column, o.answer_column)
    path = resolve_model_path(o.model)
    tokenizer, model = load_tokenizer(path, chat_template=False), load_model(path)
    if tokenizer.chat_template is None:
        raise UserError(f"two-turn evaluation extends a conversation, but the tokenizer of {o.model} has no chat "
                        "template")
    model.eval()
    work = []  # every problem checked (labels, lengths) before the first forward pass
    for i, p in enumerate(problems, 1):
        texts = prompts(tokenizer, p, o.instruction, o.prefill)
        longest = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
        if longest > context_length(model):
            raise UserError(f"data: {o.data} row {i}: its second turn is {longest} tokens, more than the model's "
                            f"context of {context_length(model)}")
        work.append((p, texts, label_token_ids(tokenizer, p.labels, f"data: {o.data} row {i}")))
    out = []
    for p, texts, label_ids in work:
        probs = next_label_probs(model, tokenizer, texts, label_ids)
        out.append({"problem": p.id, "labels": p.labels, "gold": p.gold, "p1": probs[0], "p2": probs[1:]})
    m = label_metrics([(r["p1"], r["p2"], r["gold"]) for r in out])
    print(metrics_table(m, title=f"self-correction: {o.model} on {o.data} (label probabilities, {o.instruction})"))
    return m, out


def write_rows(rows: list[dict], path: str) -> None:
    """The per-problem probability rows as JSONL (whole lines; `selfimprove metrics` reads them back)."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
