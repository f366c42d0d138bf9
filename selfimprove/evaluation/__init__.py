"""Evaluation in one place.

    sampled.py   evaluations that sample: held-out accuracy (`evaluate`), `best_of_n` with any reward as
                 the picker, two-turn self-correction (`evaluate_two_turn`)
    metrics.py   the math, pure: pass@k, Acc@t1/t2, deltas, CL/CS/RSS, edit ratio, best-of-N statistics,
                 judge correlations and selective accuracy
    outcomes.py  self-correction metrics recomputed from files (`selfimprove metrics`)
    classification.py  CL/CS/RSS of multiple-choice data from label-token probabilities (no sampling)
    report.py    console tables and PNG plots
"""

from selfimprove.evaluation.metrics import best_of_n_stats, judge_report, outcome_metrics, pass_at_k, self_correction
from selfimprove.evaluation.outcomes import load_outcomes
from selfimprove.evaluation.sampled import best_of_n, evaluate, evaluate_two_turn

__all__ = ["best_of_n", "best_of_n_stats", "evaluate", "evaluate_two_turn", "judge_report", "load_outcomes",
           "outcome_metrics", "pass_at_k", "self_correction"]
