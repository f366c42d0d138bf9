"""Judge replies -> scores: parsing a self-judge's text, and Self-J's expected digit score.

`parse_score` reads a score from a judge reply: inside <answer>...</answer> when present (R1 style
think-then-answer), else the last number in the text; a value outside [lo, hi] or no number at all
is a parse failure, reported as None so the caller can apply the recipe's fallback and count it.
`expected_score` is Self-J's inference rule (nusnlp/Self-J judge.py): the probabilities of the ten
digit tokens at the first generated position, renormalised, give E[score] = sum_k k p(k).
"""

from __future__ import annotations

import math
import re

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def parse_score(reply: str, lo: float = 0.0, hi: float = 100.0) -> float | None:
    """The judge's score, or None when the reply has no number in range (a parse failure)."""
    if not reply or not reply.strip():
        return None
    tagged = _ANSWER.findall(reply)
    text = tagged[-1] if tagged else reply
    numbers = _NUMBER.findall(text)
    if not numbers:
        return None
    value = float(numbers[-1] if not tagged else numbers[0])
    if math.isnan(value) or not lo <= value <= hi:
        return None
    return value


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
