"""Evaluation math, pure: self-correction metrics, best-of-N picks, judge correlations.

Self-correction (SCoRe's Acc@t1/t2 and deltas, Confidence-v.s.-Critique's CL/CS/RSS). Input: per problem, the k samples' first- and second-attempt correctness (k may differ between
problems). Per-question probabilities are taken over each problem's own samples, then averaged
over problems (algorithms.md 5.2), so with equal k everything reduces to pooled frequencies:

    P(a_i) = #c1 / k      Acc1 = mean_i P(a_i)       Acc2 = mean_i #c2 / k
    delta = Acc2 - Acc1 = delta_i2c - delta_c2i   (fractions of all problems, as in SCoRe)
    CL  = sum_i #(c1 and c2)/k / sum_i P(a_i)               keep a correct answer (confidence)
    CS  = sum_i #(not c1 and c2)/k / sum_i (1 - P(a_i))     fix a wrong one (critique)
    Acc2 = Acc1 * CL + (1 - Acc1) * CS                      (exact)
    RSS = (Acc2 - Acc1^2) / (2 Acc1 (1 - Acc1))             undefined (None) when Acc1 is 0 or 1
"""

from __future__ import annotations

import math
from math import comb

from rapidfuzz.distance import Levenshtein
from scipy.stats import pearsonr, spearmanr

from selfimprove.trace import groups

DECLINE_PERCENTS = (0, 10, 20, 30, 40, 50)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n - c, k) / C(n, k) for n samples with c correct."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def self_correction(problems: list[tuple[list[bool], list[bool]]], k: int | None = None) -> dict:
    """Metrics from [(first-attempt correctness, second-attempt correctness) per sample] per problem."""
    if not problems:
        raise ValueError("no problems to score")
    n = len(problems)
    p_a, acc2, both, fixed, broken = [], [], [], [], []
    pk1, pk2 = [], []
    for c1, c2 in problems:
        if len(c1) != len(c2) or not c1:
            raise ValueError("each problem needs the same number (>= 1) of first and second attempts")
        m = len(c1)
        p_a.append(sum(c1) / m)
        acc2.append(sum(c2) / m)
        both.append(sum(a and b for a, b in zip(c1, c2)) / m)
        fixed.append(sum((not a) and b for a, b in zip(c1, c2)) / m)
        broken.append(sum(a and (not b) for a, b in zip(c1, c2)) / m)
        kk = min(k or m, m)
        pk1.append(pass_at_k(m, sum(c1), kk))
        pk2.append(pass_at_k(m, sum(c2), kk))
    a1, a2 = sum(p_a) / n, sum(acc2) / n
    wrong_mass = sum(1 - p for p in p_a)
    cl = sum(both) / sum(p_a) if sum(p_a) > 0 else None
    cs = sum(fixed) / wrong_mass if wrong_mass > 0 else None
    rss = (a2 - a1 * a1) / (2 * a1 * (1 - a1)) if 0 < a1 < 1 else None
    ks = {len(c1) for c1, _ in problems}
    return {
        "acc_t1": a1, "acc_t2": a2, "delta": a2 - a1,
        "delta_i2c": sum(fixed) / n, "delta_c2i": sum(broken) / n,
        "cl": cl, "cs": cs, "rss": rss,
        "n_problems": n, "k": ks.pop() if len(ks) == 1 else sorted(ks),
        "pass_at_k_t1": sum(pk1) / n, "pass_at_k_t2": sum(pk2) / n,
    }


def edit_ratio(a: str, b: str) -> float:
    """Normalised Levenshtein distance between two attempts: 0 = identical, 1 = nothing shared.
    SCoRe's collapse diagnostic: a second attempt that never edits the first sits near 0."""
    return float(Levenshtein.normalized_distance(a, b))


def outcome_metrics(traces) -> dict:
    """Self-correction metrics of two-turn traces whose meta holds correct1 / correct2 (bools)."""
    problems = [([t.meta["correct1"] for t in g], [t.meta["correct2"] for t in g]) for g in groups(traces).values()]
    m = self_correction(problems)
    m["edit_ratio"] = sum(edit_ratio(t.first_attempt.text, t.second_attempt.text) for t in traces) / len(traces)
    return m


# --------------------------------------------------------------------------- best-of-N


def best_of_n_stats(traces, correct: dict[str, bool], scores: dict[str, float | None]) -> dict:
    """Accuracy of a picker's choice among each problem's N samples (the group), against simple pickers:
    the first sample (a random pick), the mean sample and the oracle (any sample correct). The pick is the
    highest-scored sample, ties to the earliest; an unscored (None) sample ranks last."""
    picked, first, mean, oracle = [], [], [], []
    for group in groups(traces).values():
        best = max(group, key=lambda tr: -math.inf if scores.get(tr.id) is None else scores[tr.id])
        picked.append(correct[best.id])
        first.append(correct[group[0].id])
        mean.append(sum(correct[tr.id] for tr in group) / len(group))
        oracle.append(any(correct[tr.id] for tr in group))
    n = max(len(picked), 1)
    return {"problems": len(picked), "picked": sum(picked) / n, "first_sample": sum(first) / n,
            "mean_sample": sum(mean) / n, "oracle": sum(oracle) / n}


# --------------------------------------------------------------------------- judges (Self-J, section 4.8)


def _usable(x, y) -> bool:
    return len(x) >= 2 and len(set(x)) > 1 and len(set(y)) > 1


def pearson(x, y) -> float | None:
    """Pearson r, or None when it is undefined (fewer than two points, or a constant side)."""
    return float(pearsonr(x, y).statistic) if _usable(x, y) else None


def spearman(x, y) -> float | None:
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
