"""The on-policy loop: sample -> reward -> prepare (advantages) -> logprobs -> update -> log -> checkpoint.

It reads top to bottom in `run`. The method is an `Algorithm` record (algorithms/__init__.py): it
supplies `prepare` and `loss`, and the loop reads its fields; everything else (engines, rewards,
aggregation over micro-batches and processes, logging, checkpoints) is shared. Distribution is
accelerate's: each process samples its own share of the step's prompts, and the loss is scaled so that
any number of processes and micro-batches gives the gradient of one batch.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext

import torch
from accelerate.utils import gather_object

from reward import RewardContext
from selfimprove import checkpoint
from selfimprove.ahead import Ahead, engine_weights, rollout
from selfimprove.algorithms.common import aggregate, frac_all_equal
from selfimprove.batch import collate
from selfimprove.distributed import (
    accumulation_boundary,
    any_process,
    empty_backward,
    equal_counts,
    global_sums,
    uses_deepspeed,
    weights_identical,
)
from selfimprove.errors import Interrupted, UserError
from selfimprove.evaluation import evaluate
from selfimprove.evaluation.report import plot_run, summary_table
from selfimprove.export import write_final
from selfimprove.interrupts import Interrupts
from selfimprove.logprobs import attach_reference, before_update, mismatch_weights, pad_rows
from selfimprove.optim import anneal_start
from selfimprove.packing import logprobs, split
from selfimprove.progress import progress_bar, progress_line
from selfimprove.resume import failure, fresh, interrupted, resume, save
from selfimprove.state import State, setup
from selfimprove.trace import dump_jsonl


def update(state: State, traces, ref_lp, trainer_lp=None) -> dict:
    """mini_batches optimizer steps over the traces; gradient accumulation over micro-batches.

    Each mini-batch's loss is normalised by counts over the whole mini-batch on every process, so any
    split into micro-batches and processes gives the gradient of one batch (the backward is scaled by
    the number of processes because DDP averages gradients)."""
    recipe, acc, model, algo = state.recipe, state.accelerator, state.model, state.algo
    cfg, t = recipe.algorithm, recipe.train
    order = list(range(len(traces)))
    chunks = [order[i::t.mini_batches] for i in range(t.mini_batches)] if t.mini_batches > 1 else [order]
    stats = {"loss": 0.0, "grad_norm": 0.0, "skipped_nonfinite": 0, "entropy_sum": 0.0, "entropy_tokens": 0}
    extra, steps_taken = {}, 0
    for idx in chunks:
        n_tok = sum(sum(len(tu.token_ids) for tu in traces[i].turns if tu.trainable) for i in idx)
        live = [i for i in idx if not algo.zero_loss(traces[i], cfg)]  # traces whose gradient is exactly zero: skipped
        n_tok, n_seq, n_live = global_sums(acc, [n_tok, len(idx), len(live)])
        if n_live == 0:  # nothing to learn on any process: no step (Adam's momentum would still move)
            continue
        # under DeepSpeed ZeRO reduces at every backward: every process runs as many micro-batches
        lengths = [len(traces[i].token_ids) for i in live]  # micro-batches by count, or by tokens (packing.split)
        mbs = equal_counts(acc, split(live, lengths, t.micro_batch_size, t.micro_batch_tokens, state.packing) or [[]],
                           uses_deepspeed(acc))
        chunk_loss = 0.0
        for k, mb in enumerate(mbs):
            with accumulation_boundary(acc, model, last=k == len(mbs) - 1):
                if not mb:  # nothing to train on this process: a zero loss keeps processes in step
                    empty_backward(acc, model, state.tokenizer.pad_token_id)
                    continue
                batch = collate([traces[i] for i in mb], state.tokenizer.pad_token_id, algo.meta_keys, acc.device)
                width = batch["mask"].shape[1]
                if ref_lp is not None:  # per-trace log-probs, or the whole distributions (kl_estimator full)
                    attach_reference(batch, ref_lp, mb, acc.device)
                weight = None
                if trainer_lp is not None:
                    g = recipe.generation
                    weight, mm = mismatch_weights(batch, pad_rows([trainer_lp[i] for i in mb], width, acc.device),
                                                  g.mismatch_correction, g.mismatch_cap)
                    _collect(extra, mm)
                tok, metrics = algo.loss(batch, logprobs(model, batch, stats, state.packing), cfg)  # + the policy's entropy
                if weight is not None:
                    tok = tok * weight
                loss = aggregate(tok, batch["mask"], cfg.loss_agg, n_tok, n_seq, recipe.generation.max_new_tokens,
                                 cfg.loss_constant, acc.num_processes)
                acc.backward(loss * acc.num_processes)  # DDP averages gradients over processes; the sum is wanted
                chunk_loss += loss.item() / len(chunks)  # this process's share of the mean mini-batch loss
                _collect(extra, metrics)
        norm = acc.clip_grad_norm_(model.parameters(), t.max_grad_norm)  # DeepSpeed: its own clipping's norm
        norm = float(norm) if norm is not None else 0.0  # the global norm: every process decides alike
        # a NaN/inf loss or gradient would make every weight NaN at the optimizer step (the norm is global; a
        # loss is this process's, hence the vote)
        if any_process(acc, not (math.isfinite(norm) and math.isfinite(chunk_loss))):
            state.optimizer.zero_grad(set_to_none=True)
            if t.on_nonfinite == "stop":
                raise UserError(f"step {state.step + 1}: the gradient norm is {norm} (loss {chunk_loss:.4g}); "
                                "stopped before the update (train.on_nonfinite=skip skips such steps)")
            stats["skipped_nonfinite"] += 1
            continue
        stats["loss"] += chunk_loss
        stats["grad_norm"] += norm
        steps_taken += 1
        state.optimizer.step()
        state.scheduler.step()
        state.optimizer.zero_grad(set_to_none=True)
    stats["grad_norm"] /= len(chunks)
    stats["optimizer_steps"] = steps_taken
    stats.update({k: sum(v) / len(v) for k, v in extra.items()})
    return stats


def _collect(extra: dict, metrics: dict) -> None:
    for key, v in metrics.items():
        extra.setdefault(key, []).append(v)


def run_eval(state: State, tag: str) -> float:
    """Accuracy on the eval set; each process scores a shard, the counts are summed."""
    acc = state.accelerator
    shard = state.eval_examples[acc.process_index :: acc.num_processes]
    engine = state.engine if state.ahead is None else state.ahead.eval_engine(state, state.step + (tag != "before"))
    ctx = RewardContext(state.tokenizer, engine, state.step)
    with engine_weights(state):
        accuracy, traces = evaluate(engine, state.tokenizer, shard, state.rewards, state.recipe.eval, ctx,
                                    state.recipe.data.max_prompt_tokens)
    state.eval_traces[tag] = traces  # the main process writes its shard with the run folder
    correct = round(accuracy * len(shard))
    totals = acc.reduce(torch.tensor([correct, len(shard)], dtype=torch.int64, device=acc.device), "sum").tolist()
    # the mean of every reward too (chrF, a judge's score, ...), over the traces it applies to
    sums = [float(sum(v for tr in traces if (v := tr.rewards.get(r.name)) is not None)) for r in state.rewards]
    counts = [float(sum(tr.rewards.get(r.name) is not None for tr in traces)) for r in state.rewards]
    red = acc.reduce(torch.tensor(sums + counts, dtype=torch.float64, device=acc.device), "sum").tolist()
    k = len(state.rewards)
    state.eval_means[tag] = {r.name: round(red[i] / red[k + i], 6) for i, r in enumerate(state.rewards) if red[k + i]}
    return totals[0] / max(totals[1], 1)


def train_step(state: State, step: int) -> tuple[dict, list]:
    """One rollout step; returns (metrics, traces). Asynchronous rollout (state.ahead): the step's batch was
    sampled behind the previous update, and the next one is sampled behind this one."""
    t0, ahead = time.perf_counter(), state.ahead
    if ahead is None:
        traces, logged, t_gen, t_reward = rollout(state, step)
    else:
        traces, logged, t_gen, t_reward, waited = ahead.take(state, step)
        t_push = ahead.submit(state, step)
    t2 = time.perf_counter()
    # engine asleep; reference / trainer passes; prepare (advantages) and mask_truncated
    train_traces, ref_lp, trainer_lp = before_update(state, traces)
    t3 = time.perf_counter()
    stats = update(state, train_traces, ref_lp, trainer_lp)
    t4 = time.perf_counter()
    if ahead is None:
        state.engine.load_weights()  # the HF engine shares the model; vLLM engines receive the new weights
    t5 = time.perf_counter()
    row = step_metrics(state, step, traces, train_traces, stats)
    row.update(logged_means(state.accelerator, logged))
    row.update({"time/generate": t_gen, "time/reward": t_reward, "time/logprob": t3 - t2, "time/update": t4 - t3,
                "time/weight_sync": t5 - t4 if ahead is None else t_push, "time/step": t5 - t0,
                "tokens_per_s": row.pop("gen_tokens") / max(t5 - t0, 1e-9)})
    if ahead is not None:  # the rollout's seconds on the critical path, and the sampler's lag
        row["time/rollout_wait"] = waited
        row["staleness"] = sum(step - tr.policy_version for tr in traces) / max(len(traces), 1)
    row.update(stats)
    return row, traces


def logged_means(acc, logged: dict) -> dict:
    """The mean of every value TRL-style rewards logged with log_metric this step, over all processes."""
    if acc.num_processes > 1:  # each process may log other names: gather the dicts, not a fixed vector
        merged: dict = {}
        for part in gather_object([logged]):
            for name, values in part.items():
                merged.setdefault(name, []).extend(values)
        logged = merged
    return {name: sum(v) / len(v) for name, v in logged.items() if v}


def step_metrics(state: State, step: int, traces, train_traces, stats: dict) -> dict:
    """The step's metrics.jsonl row, summed over processes (times are added by the caller)."""
    gen_tokens = sum(len(t.token_ids) for tr in traces for t in tr.turns if t.trainable)
    local = {"reward": sum(tr.reward for tr in traces), "n": len(traces), "gen_tokens": gen_tokens,
             "loss": stats.pop("loss"), "n_train": len(train_traces), "frac_all_equal": frac_all_equal(traces),
             "judge_parse_failures": sum(bool(tr.meta.get("judge.parse_failed")) for tr in traces),
             "entropy_sum": stats.pop("entropy_sum"), "entropy_tokens": stats.pop("entropy_tokens")}
    lengths = [len(tr.completion.token_ids) for tr in traces]
    local["reward_sq"] = sum(tr.reward * tr.reward for tr in traces)  # inf, not OverflowError, for a huge reward
    local["truncated"] = sum(tr.completion.finish_reason == "length" for tr in traces)
    for r in state.rewards:
        vals = [tr.rewards[r.name] for tr in traces if tr.rewards.get(r.name) is not None]
        local[f"reward/{r.name}"] = sum(vals)
        local[f"sq/{r.name}"] = sum(v * v for v in vals)
        local[f"count/{r.name}"] = len(vals)
    extra = state.algo.step_metrics(traces, state.recipe.algorithm)  # sums, as means over all traces below
    local.update(extra)
    keys = sorted(local)
    tot = dict(zip(keys, global_sums(state.accelerator, [local[k] for k in keys])))
    # the longest and (negated) shortest completion over every process, in one reduction
    longest, neg_shortest = state.accelerator.reduce(torch.tensor([max(lengths, default=0), -min(lengths, default=0)],
                                                                  device=state.accelerator.device), "max").tolist()
    n = max(tot["n"], 1)
    row = {"step": step + 1, "reward": tot["reward"] / n, "reward_std": _std(tot["reward_sq"], tot["reward"], n)}
    row.update({k: tot[k] / n for k in extra})
    for r in state.rewards:
        count = tot[f"count/{r.name}"]  # null when the reward applied to no trace (e.g. chrF without references)
        row[f"rewards/{r.name}"] = tot[f"reward/{r.name}"] / count if count else None
        row[f"rewards/{r.name}/std"] = _std(tot[f"sq/{r.name}"], tot[f"reward/{r.name}"], count) if count else None
    row.update({
        "loss": tot["loss"], "grad_norm": stats.pop("grad_norm"), "lr": state.scheduler.get_last_lr()[0],
        "frac_all_equal": tot["frac_all_equal"] / state.accelerator.num_processes, "samples": int(tot["n"]),
        "trained_samples": int(tot["n_train"]), "judge/parse_failures": int(tot["judge_parse_failures"]),
        "completion_len": tot["gen_tokens"] / max(tot["n"], 1), "gen_tokens": tot["gen_tokens"],
        "completion_len/min": int(-neg_shortest), "completion_len/max": int(longest),
        "truncated_share": tot["truncated"] / n,  # completions cut at max_new_tokens (no EOS)
        # the mean per-token entropy over the trained tokens of every forward pass of the update (TRL's entropy)
        "entropy": tot["entropy_sum"] / tot["entropy_tokens"] if tot["entropy_tokens"] else None,
    })
    return row


def _std(sum_sq: float, total: float, n: float) -> float | None:
    """Population standard deviation from a sum of squares and a sum (over every process); None when a
    reward was too large for it to be finite."""
    var = sum_sq / n - (total / n) * (total / n)
    return math.sqrt(max(var, 0.0)) if math.isfinite(var) else None


def run(recipe, log=print) -> dict:
    """Train with `recipe`; returns the summary (also written to the run folder). A signal (Ctrl-C, SIGTERM,
    SLURM's pre-emption) finishes the step, saves a checkpoint and raises `Interrupted`; a failure after
    the first step leaves the run folder consistent for `train.resume=auto` and says so."""
    with Interrupts() as interrupts:
        state = setup(recipe, log=log)
        try:
            return _train(state, interrupts, log)
        except Interrupted:
            raise
        except (UserError, OSError) as e:
            if state.ahead is not None:
                state.ahead.close(wait=False)
            state.engine.close()
            raise failure(state, e) from None


def _train(state: State, interrupts: Interrupts, log) -> dict:
    recipe, acc, run = state.recipe, state.accelerator, state.run
    t_cfg, e_cfg, l_cfg = recipe.train, recipe.eval, recipe.log
    summary = state.summary = {"algorithm": recipe.algorithm.name, "model": recipe.model.path}
    evals = state.evals
    state.ahead = Ahead(state) if recipe.generation.max_staleness else None  # asynchronous rollout (ahead.py)
    start = resume(state, log) if state.resume_from is not None else fresh(state)
    if e_cfg.before and start == 0:
        summary["accuracy_before"] = run_eval(state, "before")
        evals.append((0, summary["accuracy_before"]))
        if acc.is_main_process:
            log(f"held-out accuracy before training: {summary['accuracy_before']:.1%} (n={len(state.eval_examples)})")

    # a bar on a terminal; under nohup or SLURM (stdout not a terminal) a plain line every log.every steps
    progress = progress_bar(acc.is_main_process and l_cfg.progress and sys.stdout.isatty())
    t_start, steps_done = time.perf_counter(), start
    with progress or nullcontext():
        task = progress.add_task("training", total=t_cfg.steps, completed=start) if progress else None
        for step in range(start, t_cfg.steps):
            if any_process(acc, interrupts.received is not None):
                interrupted(state, interrupts, steps_done, start, state.elapsed + time.perf_counter() - t_start)
            checkpoint.fault("at_step", step + 1)
            state.step = step
            row, traces = train_step(state, step)
            steps_done = step + 1
            elapsed = state.elapsed + float(acc.reduce(torch.tensor([time.perf_counter() - t_start], device=acc.device), "max"))
            row["time/elapsed"] = elapsed
            if e_cfg.every and steps_done % e_cfg.every == 0 and steps_done < t_cfg.steps:
                row["eval/accuracy"] = run_eval(state, f"step{steps_done}")
                evals.append((steps_done, row["eval/accuracy"]))
            state.history.append(row)
            _watch_rewards(state, row, log)
            if steps_done % l_cfg.every == 0 or steps_done == 1 or "eval/accuracy" in row:
                run.metrics(row)
            if l_cfg.traces_every and (steps_done % l_cfg.traces_every == 0 or steps_done == 1):
                run.traces(traces[: l_cfg.traces_per_step], steps_done)  # + the trackers' completions table
            if (l_cfg.save_every and steps_done % l_cfg.save_every == 0) or steps_done == anneal_start(t_cfg):
                save(state, steps_done, elapsed)
            if progress:
                progress.update(task, advance=1, description=f"reward {row['reward']:.3f}")
            elif acc.is_main_process and l_cfg.progress and steps_done % l_cfg.every == 0:
                log(progress_line(row, t_cfg, elapsed - state.elapsed, steps_done - start))
            if t_cfg.max_seconds and elapsed >= t_cfg.max_seconds:
                break
    if any_process(acc, interrupts.received is not None):  # a signal during the last step or the evaluation
        interrupted(state, interrupts, steps_done, start, state.elapsed + time.perf_counter() - t_start)
    train_seconds = state.elapsed + time.perf_counter() - t_start
    summary.update({"steps": steps_done, "train_seconds": round(train_seconds, 2)})
    if l_cfg.save_final and steps_done > start and not (l_cfg.save_every and steps_done % l_cfg.save_every == 0):
        save(state, steps_done, train_seconds)
    if e_cfg.after:
        summary["accuracy_after"] = run_eval(state, "after")
        evals.append((steps_done, summary["accuracy_after"]))
        if acc.is_main_process:
            log(f"held-out accuracy after training:  {summary['accuracy_after']:.1%} (n={len(state.eval_examples)})")
    if evals:
        summary["n_eval"] = len(state.eval_examples)
    for tag in ("before", "after"):
        if tag in state.eval_means:
            summary[f"eval_rewards_{tag}"] = state.eval_means[tag]
    if acc.num_processes > 1:
        summary["processes"] = acc.num_processes
        summary["ranks_weights_identical"], summary["weights_sha256"] = weights_identical(acc, state.model)
    _finish(state, summary, evals, log)
    acc.wait_for_everyone()
    if state.ahead is not None:
        state.ahead.close()
    state.engine.close()
    acc.end_training()  # tear the process group down before exit (gloo aborts at exit otherwise)
    write_final(state, log)  # final/ (and its push) after the processes part: no barrier waits on an upload
    return summary


def _watch_rewards(state: State, row: dict, log) -> None:
    """A visible warning when a reward has applied to no trace (returned None for all) for 3 steps running.
    Weight-0 rewards are metrics (e.g. exact_match on the eval set only) and may well never apply in training."""
    for r in (r for r in state.rewards if r.weight):
        idle = state.reward_idle.get(r.name, 0) + 1 if row.get(f"rewards/{r.name}") is None else 0
        state.reward_idle[r.name] = idle
        if idle == 3 and state.accelerator.is_main_process:
            log(f"warning: reward '{r.name}' applied to no trace (returned None) for 3 steps running, up to step "
                f"{row['step']}: check its inputs (e.g. data.answer_column)")


def _finish(state: State, summary: dict, evals, log) -> None:
    run = state.run
    if not run.enabled:
        return
    if "accuracy_before" in summary and "accuracy_after" in summary:
        summary["accuracy_gain"] = summary["accuracy_after"] - summary["accuracy_before"]
    if state.history:
        last = state.history[-10:]
        summary["final_reward"] = sum(r["reward"] for r in last) / len(last)
        summary["step_seconds_median"] = sorted(r["time/step"] for r in state.history)[len(state.history) // 2]
    summary["run_dir"] = str(run.ensure())
    for tag, traces in state.eval_traces.items():
        if tag in ("before", "after"):
            dump_jsonl(traces, run.path / f"eval_{tag}.jsonl")
    run.summary(summary, summary["steps"])  # summary.json, and its numbers to the trackers at the last step
    plot_run(run.path, state.history, evals)
    table = summary_table(summary)
    (run.path / "summary.txt").write_text(table + "\n")
    log(table)
