"""The on-policy loop: sample -> reward -> prepare (advantages) -> logprobs -> update -> log -> checkpoint.

It reads top to bottom in `run`. The algorithm module supplies `prepare` and `loss`; everything
else (engines, rewards, aggregation over micro-batches and processes, logging) is shared.
Distribution is accelerate's: each process samples its own share of the step's prompts, and the
loss is scaled so that any number of processes and micro-batches gives the gradient of one batch.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from reward import RewardContext
from selfimprove.algorithms import get_algorithm
from selfimprove.algorithms.common import aggregate, frac_all_equal
from selfimprove.batch import collate, micro_batches, token_logprobs
from selfimprove.data import SYNTHETIC_TASKS, encode_prompts, load_examples, require_answers
from selfimprove.engines import Sampling, make_engine
from selfimprove.errors import UserError
from selfimprove.evaluate import evaluate, make_traces
from selfimprove.policy import (add_lora, context_length, frozen_copy, load_model, load_quantized, load_tokenizer,
                                resolve_model_path)
from selfimprove.distributed import (configure_deepspeed, make_accelerator, make_optimizer, weights_identical, whole_parameters,
                                     zero_stage)
from selfimprove.resume import fault, find_checkpoint, load_policy_weights, restore, rng_state, trim_logs
from selfimprove.runlog import RunLog, checkpoint_tmp, save_checkpoint
from selfimprove.scoring import build_rewards, score
from selfimprove.trace import dump_jsonl


@dataclass
class State:
    recipe: object
    algo: object
    accelerator: object
    model: object
    ref_model: object
    tokenizer: object
    optimizer: object
    scheduler: object
    engine: object
    rewards: list
    train_examples: list
    eval_examples: list
    run: RunLog
    step: int = 0
    history: list = field(default_factory=list)
    eval_traces: dict = field(default_factory=dict)
    eval_means: dict = field(default_factory=dict)  # tag -> {reward name: mean on the eval set}
    resume_from: object = None  # the checkpoint this run continues (train.resume), or None
    evals: list = field(default_factory=list)  # (step, accuracy) so far
    summary: dict = field(default_factory=dict)
    elapsed: float = 0.0  # training seconds before this process started (resumed runs)


def lr_lambda(train_cfg):
    total, warm = max(train_cfg.steps * train_cfg.mini_batches, 1), train_cfg.warmup_steps

    def f(i: int) -> float:
        if i < warm:
            return (i + 1) / warm
        frac = (i - warm) / max(total - warm, 1)
        if train_cfg.lr_schedule == "linear":
            return max(0.0, 1.0 - frac)
        if train_cfg.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))
        return 1.0

    return f


def setup(recipe, log=print) -> State:
    """Everything a user can get wrong is checked here, before anything is written."""
    from accelerate.utils import set_seed

    algo = get_algorithm(recipe.algorithm.name)
    accelerator = make_accelerator(recipe.model.dtype)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    set_seed(recipe.seed)
    world = accelerator.num_processes
    if recipe.train.prompts_per_step % world:
        raise UserError(f"train.prompts_per_step={recipe.train.prompts_per_step} must be divisible by the {world} processes")
    rewards = build_rewards(recipe.rewards)
    names = [r.name for r in rewards]
    if (recipe.eval.before or recipe.eval.after or recipe.eval.every) and recipe.eval.reward not in names:
        raise UserError(f"eval.reward '{recipe.eval.reward}' is not one of the recipe's rewards ({', '.join(names)})")
    d = recipe.data
    n_train = max(recipe.train.steps, 1) * recipe.train.prompts_per_step
    train_examples = load_examples(d.train, d, d.train_split, n_train=n_train, seed=recipe.seed)
    eval_examples = []
    if recipe.eval.before or recipe.eval.after or recipe.eval.every:
        eval_src = d.eval or (d.train if d.train in SYNTHETIC_TASKS else None)
        if eval_src is None:
            raise UserError("eval is on but data.eval is not set (a held-out file or dataset)")
        eval_examples = load_examples(eval_src, d, d.eval_split)[: recipe.eval.n]
        require_answers(eval_examples, eval_src, d.answer_column)

    path = resolve_model_path(recipe.model.path, log=log if accelerator.is_main_process else (lambda *a: None))
    tokenizer = load_tokenizer(path)
    if recipe.model.quantize != "none":  # QLoRA: a frozen quantized base, LoRA adapters train
        model = load_quantized(path, recipe.model)
    else:
        model = load_model(path, "float32")  # master weights; model.dtype sets the autocast precision
    ctx_len = context_length(model)
    # synthetic tasks are uniform: a sample of prompts stands for all; user data is checked whole
    sample = train_examples[:2000] if d.train in SYNTHETIC_TASKS else train_examples
    for examples, new, key in ((sample, recipe.generation.max_new_tokens, "generation"),
                               (eval_examples, recipe.eval.max_new_tokens, "eval")):
        ids = encode_prompts(tokenizer, examples, d.max_prompt_tokens)
        longest = max((len(x) for x in ids), default=0)
        if ids and longest + new > ctx_len:
            raise UserError(f"data: a prompt of {longest} tokens + {key}.max_new_tokens={new} "
                            f"exceeds the model's context of {ctx_len} tokens")
    if recipe.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if recipe.model.lora_r:
        model = add_lora(model, recipe.model)
    needs_ref = getattr(algo, "needs_reference", lambda c: False)(recipe.algorithm)
    # with LoRA the reference is the same model with its adapters switched off: no second copy
    ref_model = (model if recipe.model.lora_r else frozen_copy(model)) if needs_ref else None
    resume_from = find_checkpoint(recipe)
    # after the reference copy: the reference stays the starting model. Under ZeRO-3 the parameters
    # are already partitioned here; DeepSpeed's own checkpoint restores them in _resume
    if resume_from is not None and zero_stage(accelerator) != 3:
        load_policy_weights(model, resume_from, bool(recipe.model.lora_r))

    t = recipe.train
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], t, accelerator)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t))
    # the scheduler stays outside prepare(): accelerate's wrapper would step it once per process
    configure_deepspeed(accelerator, t)
    model, optimizer = accelerator.prepare(model, optimizer)
    if ref_model is not None and not recipe.model.lora_r:
        ref_model = ref_model.to(accelerator.device)
    engine = make_engine(recipe.generation.backend, accelerator.unwrap_model(model), tokenizer,
                         seed=recipe.seed * 1000 + accelerator.process_index, gen=recipe.generation,
                         model_path=str(path), dtype=recipe.model.dtype, accelerator=accelerator,
                         lora_r=recipe.model.lora_r)
    random.Random(recipe.seed).shuffle(train_examples)
    return State(recipe, algo, accelerator, model, ref_model, tokenizer, optimizer, scheduler, engine, rewards,
                 train_examples, eval_examples, RunLog(recipe, enabled=accelerator.is_main_process),
                 resume_from=resume_from)


def step_examples(state: State, step: int) -> list:
    """This process's share of the step's prompts, cycling through the training set."""
    t, acc = state.recipe.train, state.accelerator
    per_rank = t.prompts_per_step // acc.num_processes
    start = step * t.prompts_per_step + acc.process_index * per_rank
    n = len(state.train_examples)
    return [state.train_examples[(start + i) % n] for i in range(per_rank)]


def sampling_of(g) -> Sampling:
    return Sampling(n=g.n, temperature=g.temperature, top_p=g.top_p, max_new_tokens=g.max_new_tokens,
                    batch_size=g.batch_size)


def rollout(state: State, step: int):
    examples = step_examples(state, step)
    prompt_ids = encode_prompts(state.tokenizer, examples, state.recipe.data.max_prompt_tokens)
    # one random stream per (seed, global prompt position): the same samples with 1 or N processes
    t, acc = state.recipe.train, state.accelerator
    first = step * t.prompts_per_step + acc.process_index * (t.prompts_per_step // acc.num_processes)
    seeds = [state.recipe.seed * 1_000_000_007 + first + i for i in range(len(examples))]
    samples = state.engine.generate(prompt_ids, sampling_of(state.recipe.generation), seeds=seeds)
    return make_traces(examples, prompt_ids, samples, state.tokenizer,
                       tag=f"s{step}-r{state.accelerator.process_index}", version=step)


def _forward_logprobs(state: State, module, traces, context=nullcontext) -> list[list[float]]:
    """No-grad log-probs of the trainable tokens, per trace. `module` is never the DDP wrapper (its
    forward broadcasts buffers: a collective, and processes hold different numbers of traces);
    under ZeRO-3 every forward gathers parameters collectively, so all processes run as many
    micro-batches (padded with a one-token forward)."""
    acc, out = state.accelerator, []
    chunks = micro_batches(traces, state.recipe.train.micro_batch_size)
    if zero_stage(acc) == 3 and acc.num_processes > 1:
        most = int(acc.reduce(torch.tensor([len(chunks)], device=acc.device), "max").item())
        chunks += [[]] * (most - len(chunks))
    for chunk in chunks:
        with torch.no_grad(), context():
            if not chunk:
                module(input_ids=torch.tensor([[state.tokenizer.pad_token_id]], device=acc.device))
                continue
            batch = collate(chunk, state.tokenizer.pad_token_id, device=acc.device)
            out.extend(token_logprobs(module, batch).cpu().tolist())
    return out


def reference_logprobs(state: State, traces) -> list[list[float]]:
    """Reference-model log-probs of the trainable tokens, stored per trace for collation."""
    lora = state.recipe.model.lora_r
    # with LoRA the reference is the policy with its adapters switched off
    module = state.accelerator.unwrap_model(state.model) if lora else state.ref_model
    return _forward_logprobs(state, module, traces, module.disable_adapter if lora else nullcontext)


def policy_logprobs(state: State, traces) -> list[list[float]]:
    """The trainer's own log-probs of the sampled tokens, before the update (no gradient)."""
    return _forward_logprobs(state, state.accelerator.unwrap_model(state.model), traces)


def mismatch_weights(batch, trainer_lp: torch.Tensor, mode: str, cap: float) -> tuple[torch.Tensor, dict]:
    """Engine/trainer mismatch correction: the samples came from the engine's pi_engine, the loss
    is built on the trainer's pi_old. The trainer's log-probs become old_logp (so the ratio compares
    the trainer with itself) and each token is weighted by w = pi_old / pi_engine, truncated at
    `cap` for `tis` (Yao et al. 2025, "truncated importance sampling": min(w, C))."""
    mask = batch["mask"]
    log_w = (trainer_lp - batch["old_logp"]) * mask
    w = torch.exp(log_w)
    clipped = (w > cap) & (mask > 0)
    if mode == "tis":
        w = w.clamp(max=cap)
    batch["old_logp"] = trainer_lp
    n = mask.sum().clamp(min=1)
    stats = {"mismatch/is_weight_mean": float((w * mask).sum() / n), "mismatch/clipped_frac": float(clipped.sum() / n),
             "mismatch/abs_log_ratio": float(log_w.abs().sum() / n)}
    return w * mask, stats


def update(state: State, traces, ref_lp, trainer_lp=None) -> dict:
    """mini_batches optimizer steps over the traces; gradient accumulation over micro-batches."""
    recipe, acc, model = state.recipe, state.accelerator, state.model
    cfg, t = recipe.algorithm, recipe.train
    agg_mode = getattr(cfg, "loss_agg", "token-mean")
    meta_keys = getattr(state.algo, "META_KEYS", ())
    zero_loss = getattr(state.algo, "zero_loss", None)  # traces whose gradient is exactly zero
    world = acc.num_processes
    deepspeed = acc.state.deepspeed_plugin is not None
    order = list(range(len(traces)))
    chunks = [order[i::t.mini_batches] for i in range(t.mini_batches)] if t.mini_batches > 1 else [order]
    stats: dict[str, float] = {"loss": 0.0, "grad_norm": 0.0}
    steps_taken = 0
    extra: dict[str, list] = {}
    for idx in chunks:
        n_tok = sum(sum(len(tu.token_ids) for tu in traces[i].turns if tu.trainable) for i in idx)
        live = [i for i in idx if not (zero_loss and zero_loss(traces[i], cfg))]
        counts = acc.reduce(torch.tensor([float(n_tok), float(len(idx)), float(len(live))], device=acc.device), "sum")
        if counts[2].item() == 0:  # nothing to learn on any process: no step (Adam's momentum would still move)
            continue
        mbs = micro_batches(live, t.micro_batch_size) or [[]]
        if deepspeed and world > 1:  # ZeRO reduces at every backward: every process runs as many
            most = int(acc.reduce(torch.tensor([len(mbs)], device=acc.device), "max").item())
            mbs += [[]] * (most - len(mbs))  # (empty ones are zero-loss backwards)
        for k, mb in enumerate(mbs):
            sync = nullcontext() if k == len(mbs) - 1 else acc.no_sync(model)
            if deepspeed:  # DeepSpeed reduces and steps inside backward at an accumulation boundary
                acc.gradient_state._set_sync_gradients(k == len(mbs) - 1)
            with sync:
                if not mb:  # nothing to train on this process: a zero loss keeps processes in step
                    ids = torch.tensor([[state.tokenizer.pad_token_id]], device=acc.device)
                    acc.backward(model(input_ids=ids).logits.sum() * 0.0)
                    continue
                batch = collate([traces[i] for i in mb], state.tokenizer.pad_token_id, meta_keys, acc.device)
                if ref_lp is not None:
                    batch["ref_logp"] = _pad_rows([ref_lp[i] for i in mb], batch["mask"].shape[1], acc.device)
                weight = None
                if trainer_lp is not None:
                    weight, mm = mismatch_weights(batch, _pad_rows([trainer_lp[i] for i in mb], batch["mask"].shape[1],
                                                                   acc.device), recipe.generation.mismatch_correction,
                                                  recipe.generation.mismatch_cap)
                    for key, v in mm.items():
                        extra.setdefault(key, []).append(v)
                logp = token_logprobs(model, batch)
                tok, metrics = state.algo.loss(batch, logp, cfg)
                if weight is not None:
                    tok = tok * weight
                loss = aggregate(tok, batch["mask"], agg_mode, counts[0].item(), counts[1].item(),
                                 recipe.generation.max_new_tokens, getattr(cfg, "loss_constant", 1000.0))
                acc.backward(loss * world)  # DDP averages gradients over processes; the sum is wanted
                stats["loss"] += loss.item() / len(chunks)  # this process's share of the mean mini-batch loss
                for key, v in metrics.items():
                    extra.setdefault(key, []).append(v)
        norm = acc.clip_grad_norm_(model.parameters(), t.max_grad_norm)  # DeepSpeed: its own clipping's norm
        stats["grad_norm"] += float(norm) if norm is not None else 0.0
        steps_taken += 1
        state.optimizer.step()
        state.scheduler.step()
        state.optimizer.zero_grad(set_to_none=True)
    stats["grad_norm"] /= len(chunks)
    stats["optimizer_steps"] = steps_taken
    stats.update({k: sum(v) / len(v) for k, v in extra.items()})
    return stats


def _pad_rows(rows, width: int, device) -> torch.Tensor:
    out = torch.zeros((len(rows), width))
    for i, r in enumerate(rows):
        out[i, : min(len(r), width)] = torch.tensor(r[:width])
    return out.to(device)


def engine_weights(state: State):
    """The hf engine samples from the trainer's module, whose weights ZeRO-3 shards: gather them for
    generation and self-judging. vLLM engines hold their own copy."""
    hf = state.recipe.generation.backend == "hf"
    return whole_parameters(state.accelerator, state.model) if hf else nullcontext()


def run_eval(state: State, tag: str) -> float:
    """Accuracy on the eval set; each process scores a shard, the counts are summed."""
    acc = state.accelerator
    shard = state.eval_examples[acc.process_index :: acc.num_processes]
    ctx = RewardContext(state.tokenizer, state.engine, state.step)
    with engine_weights(state):
        accuracy, traces = evaluate(state.engine, state.tokenizer, shard, state.rewards, state.recipe.eval, ctx,
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


def _score_everywhere(state: State, traces, step: int) -> None:
    """Score; if a reward fails on any process, every process stops with an error (none waits forever)."""
    acc, error = state.accelerator, None
    try:
        score(traces, state.rewards, RewardContext(state.tokenizer, state.engine, step))
    except UserError as e:
        error = e
    if acc.num_processes > 1:
        failed = acc.reduce(torch.tensor([1 if error else 0], device=acc.device), "sum").item()
        if failed and error is None:
            raise UserError(f"a reward failed on another process at step {step + 1} (its message is in that process's output)")
    if error is not None:
        raise error


def train_step(state: State, step: int) -> tuple[dict, list]:
    """One rollout step; returns (metrics, traces)."""
    acc, recipe = state.accelerator, state.recipe
    t0 = time.perf_counter()
    with engine_weights(state):
        traces = rollout(state, step)
        t1 = time.perf_counter()
        _score_everywhere(state, traces, step)
        t2 = time.perf_counter()
        extend = getattr(state.algo, "extend", None)  # multi-turn methods add turns to the scored episode
        if extend is not None:
            extend(traces, state.engine, state.tokenizer, sampling_of(recipe.generation), recipe.algorithm)
            t_ext = time.perf_counter()
            _score_everywhere(state, traces, step)
            t1, t2 = t1 + (t_ext - t2), time.perf_counter()  # attempt 2 counts as generation, its scoring as reward
    train_traces = state.algo.prepare(traces, recipe.algorithm)
    state.engine.sleep()  # a vLLM engine frees its memory for the update (GPU)
    ref_lp = reference_logprobs(state, train_traces) if state.ref_model is not None else None
    correct = recipe.generation.mismatch_correction != "none"
    trainer_lp = policy_logprobs(state, train_traces) if correct else None
    t3 = time.perf_counter()
    stats = update(state, train_traces, ref_lp, trainer_lp)
    t4 = time.perf_counter()
    state.engine.load_weights()  # the HF engine shares the model; vLLM engines receive the new weights
    t5 = time.perf_counter()

    gen_tokens = sum(len(t.token_ids) for tr in traces for t in tr.turns if t.trainable)
    local = {"reward": sum(tr.reward for tr in traces), "n": len(traces), "gen_tokens": gen_tokens,
             "loss": stats.pop("loss"),
             "n_train": len(train_traces), "frac_all_equal": frac_all_equal(traces),
             "judge_parse_failures": sum(bool(tr.meta.get("judge.parse_failed")) for tr in traces)}
    for r in state.rewards:
        vals = [tr.rewards[r.name] for tr in traces if tr.rewards.get(r.name) is not None]
        local[f"reward/{r.name}"] = sum(vals)
        local[f"count/{r.name}"] = len(vals)
    keys = sorted(local)
    tot = acc.reduce(torch.tensor([float(local[k]) for k in keys], device=acc.device), "sum")
    tot = dict(zip(keys, tot.tolist()))
    step_s = t5 - t0
    row = {"step": step + 1, "reward": tot["reward"] / max(tot["n"], 1)}
    for r in state.rewards:
        count = tot[f"count/{r.name}"]  # null when the reward applied to no trace (e.g. chrF without references)
        row[f"rewards/{r.name}"] = tot[f"reward/{r.name}"] / count if count else None
    row.update({
        "loss": tot["loss"], "grad_norm": stats.pop("grad_norm"), "lr": state.scheduler.get_last_lr()[0],
        "frac_all_equal": tot["frac_all_equal"] / acc.num_processes, "samples": int(tot["n"]),
        "trained_samples": int(tot["n_train"]), "judge/parse_failures": int(tot["judge_parse_failures"]), "completion_len": tot["gen_tokens"] / max(tot["n"], 1),
        "time/generate": t1 - t0, "time/reward": t2 - t1, "time/logprob": t3 - t2, "time/update": t4 - t3,
        "time/weight_sync": t5 - t4, "time/step": step_s, "tokens_per_s": tot["gen_tokens"] / max(step_s, 1e-9),
    })
    row.update(stats)
    return row, traces


def run(recipe, log=print) -> dict:
    """Train with `recipe`; returns the summary (also written to the run folder)."""
    state = setup(recipe, log=log)
    acc, run = state.accelerator, state.run
    t_cfg, e_cfg, l_cfg = recipe.train, recipe.eval, recipe.log
    summary = state.summary = {"algorithm": recipe.algorithm.name, "model": recipe.model.path}
    evals = state.evals
    start = _resume(state, log) if state.resume_from is not None else 0
    if e_cfg.before and start == 0:
        summary["accuracy_before"] = run_eval(state, "before")
        evals.append((0, summary["accuracy_before"]))
        if acc.is_main_process:
            log(f"held-out accuracy before training: {summary['accuracy_before']:.1%} (n={len(state.eval_examples)})")

    progress = _progress(acc.is_main_process and l_cfg.progress, t_cfg.steps)
    t_start, steps_done = time.perf_counter(), start
    with progress or nullcontext():
        task = progress.add_task("training", total=t_cfg.steps, completed=start) if progress else None
        for step in range(start, t_cfg.steps):
            fault("kill_at_step", step + 1)
            state.step = step
            row, traces = train_step(state, step)
            steps_done = step + 1
            elapsed = state.elapsed + float(acc.reduce(torch.tensor([time.perf_counter() - t_start], device=acc.device), "max"))
            row["time/elapsed"] = elapsed
            if e_cfg.every and steps_done % e_cfg.every == 0 and steps_done < t_cfg.steps:
                row["eval/accuracy"] = run_eval(state, f"step{steps_done}")
                evals.append((steps_done, row["eval/accuracy"]))
            state.history.append(row)
            if steps_done % l_cfg.every == 0 or steps_done == 1 or "eval/accuracy" in row:
                run.metrics(row)
            if l_cfg.traces_every and (steps_done % l_cfg.traces_every == 0 or steps_done == 1):
                run.traces(traces[: l_cfg.traces_per_step])
            if l_cfg.save_every and steps_done % l_cfg.save_every == 0:
                _checkpoint(state, steps_done, elapsed)
            if progress:
                progress.update(task, advance=1, description=f"reward {row['reward']:.3f}")
            if t_cfg.max_seconds and elapsed >= t_cfg.max_seconds:
                break
    train_seconds = state.elapsed + time.perf_counter() - t_start
    summary.update({"steps": steps_done, "train_seconds": round(train_seconds, 2)})
    if l_cfg.save_final and steps_done > start and not (l_cfg.save_every and steps_done % l_cfg.save_every == 0):
        _checkpoint(state, steps_done, train_seconds)
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
    getattr(state.engine, "close", lambda: None)()
    acc.end_training()  # tear the process group down before exit (gloo aborts at exit otherwise)
    return summary


def _checkpoint(state: State, step: int, elapsed: float) -> None:
    from accelerate.utils import gather_object

    acc = state.accelerator
    acc.wait_for_everyone()
    rng = gather_object([rng_state(state.engine)]) if acc.num_processes > 1 else [rng_state(state.engine)]
    deepspeed = acc.state.deepspeed_plugin is not None
    trainer_state = {"step": step, "optimizer": None if deepspeed else state.optimizer.state_dict(),
                     "scheduler": state.scheduler.state_dict(),
                     "rng": rng,  # one entry per process: each samples its own share of the prompts
                     "data_position": step * state.recipe.train.prompts_per_step, "elapsed": elapsed,
                     "evals": list(state.evals), "summary": dict(state.summary)}
    if deepspeed:
        # ZeRO shards the optimizer state: every process writes its own partition through DeepSpeed's
        # own checkpointing, into the not-yet-renamed folder (the rename below makes it whole)
        from accelerate.utils import broadcast_object_list

        tmp = [str(checkpoint_tmp(state.run, step))]
        broadcast_object_list(tmp, from_process=0)  # the main process's folder (names may hold a time)
        state.model.save_checkpoint(tmp[0] + "/deepspeed", tag="state", save_latest=False)
        acc.wait_for_everyone()
    # ZeRO-3: the whole weights, gathered (accelerate's get_state_dict); elsewhere the module's own
    weights = acc.get_state_dict(state.model) if zero_stage(acc) == 3 else None
    save_checkpoint(state.run, step, acc.unwrap_model(state.model), state.tokenizer, trainer_state,
                    state.recipe.log.keep_last, weights)
    acc.wait_for_everyone()


def _resume(state: State, log) -> int:
    """Continue from state.resume_from: optimizer, scheduler, RNG, logs, evaluations so far."""
    ts = restore(state, state.resume_from)
    state.engine.load_weights()  # a vLLM engine loaded the starting checkpoint: give it the resumed weights
    state.elapsed = ts["elapsed"]
    state.evals.extend(tuple(e) for e in ts["evals"])
    state.summary.update(ts["summary"])
    state.summary["resumed_from"] = str(state.resume_from)
    state.history = trim_logs(state.run.path, ts["step"]) if state.run.enabled else []
    if state.accelerator.is_main_process:
        log(f"resuming from {state.resume_from} (step {ts['step']})")
    return ts["step"]


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=False)


def _finish(state: State, summary: dict, evals, log) -> None:
    from selfimprove.report import plot_run, summary_table

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
    run.write_json("summary.json", summary)
    plot_run(run.path, state.history, evals)
    table = summary_table(summary)
    (run.path / "summary.txt").write_text(table + "\n")
    log(table)
