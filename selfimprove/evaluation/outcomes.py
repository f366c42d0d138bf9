"""Self-correction metrics recomputed offline (`selfimprove metrics`): from a traces file written by
`selfimprove eval --turns 2 --traces`, or from minimal rows `{"problem", "correct1", "correct2"}`
written by any other system (groups may differ in size), or from label-probability rows
`{"p1": [...], "p2": [[...], ...], "gold": ...}` (`eval --turns 2` on multiple-choice data writes them;
`classification.label_metrics`).
"""

from __future__ import annotations

from collections import defaultdict

from selfimprove.data import jsonl_objects
from selfimprove.errors import UserError
from selfimprove.evaluation.classification import label_metrics, probability_row
from selfimprove.evaluation.metrics import edit_ratio, self_correction
from selfimprove.rollout import CORRECT_THRESHOLD, passes

TRUTH = {True: True, False: False}  # 1 and 0 are equal to True and False as keys


def load_outcomes(path: str, threshold: float = CORRECT_THRESHOLD) -> dict:
    """Metrics from a JSONL file of traces (two assistant turns with rewards) or minimal rows."""
    groups: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    edits: list[float] = []
    rows = jsonl_objects(path, "metrics")
    if rows and "p1" in rows[0][1]:  # label probabilities, one row per problem
        return label_metrics([probability_row(row, path, no) for no, row in rows])
    for no, row in rows:
        if "turns" in row:
            problem, c1, c2, texts = _from_trace(row, path, no, threshold)
            edits.append(edit_ratio(*texts))
        else:
            for key in ("problem", "correct1", "correct2"):
                if key not in row:
                    raise UserError(f"metrics: {path} line {no} has no '{key}' field")
            problem = str(row["problem"])
            c1, c2 = (_truth(row[key], key, path, no) for key in ("correct1", "correct2"))
        groups[problem][0].append(c1)
        groups[problem][1].append(c2)
    if not groups:
        raise UserError(f"metrics: {path} has no rows")
    m = self_correction(list(groups.values()))
    m["edit_ratio"] = sum(edits) / len(edits) if edits else None
    return m


def _truth(value, key, path, no) -> bool:
    if isinstance(value, (bool, int)) and value in TRUTH:
        return TRUTH[value]
    raise UserError(f"metrics: {path} line {no}: '{key}' is {value!r}, not a truth value (true/false/0/1)")


def _from_trace(row: dict, path: str, no: int, threshold: float):
    assistant = [t for t in row.get("turns", []) if isinstance(t, dict) and t.get("role") == "assistant"]
    if len(assistant) < 2:
        raise UserError(f"metrics: {path} line {no}: a trace needs two assistant turns, it has {len(assistant)}")
    r1, r2 = assistant[0].get("reward"), assistant[1].get("reward")
    if not isinstance(r1, (int, float)) or not isinstance(r2, (int, float)):
        raise UserError(f"metrics: {path} line {no}: both assistant turns need a numeric 'reward'")
    if "group_id" not in row:
        raise UserError(f"metrics: {path} line {no} has no 'group_id' field")
    texts = (assistant[0].get("text", ""), assistant[1].get("text", ""))
    return str(row["group_id"]), passes(r1, threshold), passes(r2, threshold), texts
