"""Math answer checking: final-answer extraction, then equivalence through math-verify.

Extraction order: the last `\\boxed{...}`, a `Final Answer: ...` line (SCoRe/Minerva format),
a GSM8K `#### ...` line, an `<answer>...</answer>` tag, and otherwise the whole reply (the tiny
world answers with the bare number). Plain numbers on both sides are compared exactly without
math-verify: same verdict, but ~1000x cheaper, which matters when every rollout step checks
hundreds of samples; everything else (LaTeX, fractions, expressions, sets) goes to math-verify.
"""

from __future__ import annotations

import functools
import re
from fractions import Fraction

from math_verify import parse, verify

_FINAL = re.compile(r"final answer\s*(?:is)?\s*:?\s*(?:the final answer is)?\s*(.+)", re.IGNORECASE)
_HASH = re.compile(r"####\s*(.+)")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)(/\d+)?$")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), with nested braces."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i : j - 1] if depth == 0 else None


def extract_answer(text: str) -> str:
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    for pattern in (_FINAL, _HASH):
        found = pattern.findall(text)
        if found:
            ans = found[-1].strip()
            ans = re.sub(r"\.?\s*I hope it is correct\.?$", "", ans).strip()
            return ans.strip("$ .")
    tag = _ANSWER_TAG.findall(text)
    if tag:
        return tag[-1].strip()
    return text.strip()


def _as_number(s: str) -> Fraction | None:
    s = s.replace(",", "").replace(" ", "").strip("$")
    if not _NUMBER.match(s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


@functools.lru_cache(maxsize=65536)
def _parsed(s: str):
    """math-verify's parse (tens of ms per call), cached: the same wrong replies recur across samples."""
    # math-verify reads LaTeX inside $...$ (or \boxed); wrap bare answers so both sides parse alike
    return parse(s if "$" in s or "\\boxed" in s else f"${s}$")


def is_equivalent(pred: str, gold: str) -> bool:
    a, b = _as_number(pred), _as_number(gold)
    if a is not None and b is not None:
        return a == b
    if not pred.strip() or (b is not None and not any(c.isdigit() for c in pred)):
        return False  # nothing to compare, or a numeric reference and a reply without a single digit
    try:
        return bool(verify(_parsed(gold), _parsed(pred)))
    except Exception:  # math-verify can fail on malformed LaTeX: that answer is simply not correct
        return False


def math_correct(traces, ctx=None) -> list[float | None]:
    """1.0 when the final answer of the completion equals the reference, else 0.0; None without a reference."""
    out: list[float | None] = []
    for tr in traces:
        if tr.answer is None:
            out.append(None)
            continue
        pred = extract_answer(tr.completion.text)
        gold = extract_answer(tr.answer)
        out.append(1.0 if is_equivalent(pred, gold) else 0.0)
    return out


def exact_match(traces, ctx=None, strip: bool = True, ignore_case: bool = False) -> list[float | None]:
    """1.0 when the completion text equals the reference exactly (after optional strip / casefold)."""
    out: list[float | None] = []
    for tr in traces:
        if tr.answer is None:
            out.append(None)
            continue
        a, b = tr.completion.text, tr.answer
        if strip:
            a, b = a.strip(), b.strip()
        if ignore_case:
            a, b = a.casefold(), b.casefold()
        out.append(1.0 if a == b else 0.0)
    return out
