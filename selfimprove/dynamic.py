"""DAPO's dynamic sampling with refill (Yu et al., arXiv 2503.14476; NFT's code keeps generating up to 10
batches): after `prepare` would drop a step's groups without signal (all correct / all wrong, all-equal
rewards), sample more prompts, up to `algorithm.max_refill_rounds` extra rounds, until each process holds
its share of prompts_per_step groups with signal. Surplus groups with signal of the last round are dropped
(DAPO truncates the batch to its size); the dropped all-equal groups stay in the step's traces (the metrics
count them; `prepare` drops them again).

Refill prompts are the next ones of the data stream: round k of step s reads positions
s * P + offset + k * P (P = prompts_per_step), and `state.data_offset` grows by P per round used, so the
stream is consumed in order, never repeated. The offset is saved in each checkpoint and restored on resume,
so a resumed run samples exactly the prompts (and seeds) of an uninterrupted one. Every process runs the
same number of rounds (the decision is a global vote), as a vLLM engine or ZeRO-3 gathers need.
"""

from __future__ import annotations

import time

from selfimprove.distributed import any_process, global_sums


def signal_groups(state, traces) -> list[str]:
    """Group ids, in order, that the method's `prepare` keeps (those that carry a learning signal)."""
    kept = {tr.group_id for tr in state.algo.prepare(traces, state.recipe.algorithm)}
    return list(dict.fromkeys(tr.group_id for tr in traces if tr.group_id in kept))


def refill(state, step: int, traces: list, sample, score, logged: dict) -> list:
    """The step's traces after up to max_refill_rounds extra rounds; the metrics refill/rounds (rounds used),
    refill/groups_kept (groups with signal, all processes) and refill/seconds go to `logged` (the step's
    logged values, averaged over processes into metrics.jsonl). `sample(state, step, round)` and
    `score(state, traces, step)` are the loop's. With 0 rounds: the traces unchanged, nothing logged."""
    rounds = state.algo.refill_rounds(state.recipe.algorithm)
    if not rounds:
        return traces
    t0, acc, per_step = time.perf_counter(), state.accelerator, state.recipe.train.prompts_per_step
    share = per_step // acc.num_processes
    have = len(signal_groups(state, traces))
    used = 0
    while used < rounds and any_process(acc, have < share):
        used += 1
        more = sample(state, step, used)
        score(state, more, step)
        ids = signal_groups(state, more)
        surplus = set(ids[max(share - have, 0):])
        traces = traces + [tr for tr in more if tr.group_id not in surplus]
        have += len(ids) - len(surplus)
    state.data_offset += used * per_step
    (kept,) = global_sums(acc, [have])
    logged.update({"refill/rounds": [used], "refill/groups_kept": [int(kept)],
                   "refill/seconds": [time.perf_counter() - t0]})
    return traces
