"""Self-correction evaluation: two attempts per sample, then SCoRe's and CL/CS/RSS metrics.

`evaluate_two_turn` samples k first attempts per problem, asks for a second attempt after an
instruction (Reask by default), scores both turns with the same reward, and returns the metrics
of `selfimprove.metrics` plus the traces. `load_outcomes` reads them back from a traces file (or
from minimal rows `{"problem", "correct1", "correct2"}` written by any other system), so results
can be recomputed offline with `selfimprove metrics`.
"""

from __future__ import annotations

from collections import defaultdict

from selfimprove.data import encode_prompts, jsonl_objects
from selfimprove.engines import Sampling
from selfimprove.errors import UserError
from selfimprove.evaluate import make_traces
from selfimprove.metrics import edit_ratio, self_correction
from selfimprove.multiturn import add_second_attempt
from selfimprove.scoring import score
from selfimprove.trace import Trace

TRUTH = {True: True, False: False, 1: True, 0: False}


def _correct(tr: Trace, reward_name: str) -> bool:
    return (tr.rewards.get(reward_name) or 0.0) >= 0.5


def evaluate_two_turn(engine, tokenizer, examples, rewards, ctx, k: int, sampling: Sampling, instruction: str,
                      max_prompt_tokens: int = 512):
    """Return (metrics dict, traces). Each trace holds both attempts; turn rewards are the first reward's."""
    if k < 1:
        raise UserError(f"k must be >= 1, got {k}")
    prompt_ids = encode_prompts(tokenizer, examples, max_prompt_tokens)
    first = Sampling(n=k, temperature=sampling.temperature, top_p=sampling.top_p,
                     max_new_tokens=sampling.max_new_tokens, batch_size=sampling.batch_size)
    traces = make_traces(examples, prompt_ids, engine.generate(prompt_ids, first), tokenizer, tag="sc")
    name = rewards[0].name
    score(traces, rewards, ctx)
    for tr in traces:
        tr.turns[1].reward = tr.rewards[name]
        tr.meta["correct1"] = _correct(tr, name)
    add_second_attempt(engine, tokenizer, traces, instruction, sampling)
    score(traces, rewards, ctx)
    for tr in traces:
        tr.turns[3].reward = tr.rewards[name]
        tr.meta["correct2"] = _correct(tr, name)
    return outcome_metrics(traces), traces


def outcome_metrics(traces) -> dict:
    groups: dict[str, list] = defaultdict(list)
    for tr in traces:
        groups[tr.group_id].append(tr)
    problems = [([t.meta["correct1"] for t in g], [t.meta["correct2"] for t in g]) for g in groups.values()]
    m = self_correction(problems)
    m["edit_ratio"] = sum(edit_ratio(t.turns[1].text, t.turns[3].text) for t in traces) / len(traces)
    return m


def load_outcomes(path: str) -> dict:
    """Metrics from a JSONL file of traces (two assistant turns with rewards) or minimal rows."""
    groups: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    edits: list[float] = []
    for no, row in jsonl_objects(path, "metrics"):
        if "turns" in row:
            problem, c1, c2, texts = _from_trace(row, path, no)
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


def _from_trace(row: dict, path: str, no: int):
    assistant = [t for t in row.get("turns", []) if isinstance(t, dict) and t.get("role") == "assistant"]
    if len(assistant) < 2:
        raise UserError(f"metrics: {path} line {no}: a trace needs two assistant turns, it has {len(assistant)}")
    r1, r2 = assistant[0].get("reward"), assistant[1].get("reward")
    if not isinstance(r1, (int, float)) or not isinstance(r2, (int, float)):
        raise UserError(f"metrics: {path} line {no}: both assistant turns need a numeric 'reward'")
    if "group_id" not in row:
        raise UserError(f"metrics: {path} line {no} has no 'group_id' field")
    return str(row["group_id"]), r1 >= 0.5, r2 >= 0.5, (assistant[0].get("text", ""), assistant[1].get("text", ""))
