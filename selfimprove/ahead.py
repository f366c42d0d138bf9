"""A step's rollout (sample, score, DAPO's refill, SCoRe's second attempt), now or ahead of time.

`rollout` is the synchronous loop's: the step's traces are sampled with the weights being trained.
`Ahead` is asynchronous rollout (generation.max_staleness = k > 0, as verl's one-step-off-policy and
prime-rl's async level): while step s trains in the main thread, a background thread samples and scores
step s + 1's batch on an engine of its own (the hf engine's copy of the model, or a vLLM server). The
engine receives the trainer's weights at every k-th step (and at the step after a checkpoint), once the
step's batch is taken and before its refill rounds and the next batch, so a trained batch is at most k
updates old, and which weights sampled which batch depends only on the step numbers: the run is
deterministic, and a resumed one equals an uninterrupted one (the batch in flight is saved with each
checkpoint; with k > 1, from the periodic checkpoints). Each trace records the policy
version that sampled it; the loss uses the sampler's log-probs as pi_old (the ratio corrects the
staleness, as PPO's clipping does), plus generation.mismatch_correction where it is on.

The background thread does no collective: it samples, scores and adds second attempts on this process
alone (a user-facing failure becomes the batch's error); the vote on it and the refill rounds (global
counts) run in the main thread when the batch is taken. Evaluation and checkpoints wait for the batch in
flight first; with hf an evaluation runs on the trainer's own module, as the synchronous loop's does.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from accelerate.utils import gather_object

from reward import RewardContext, score
from selfimprove import dynamic
from selfimprove import rollout as sampling
from selfimprove.distributed import any_process, whole_parameters, zero_stage
from selfimprove.engines import Sampling
from selfimprove.engines.hf import HFEngine
from selfimprove.errors import UserError
from selfimprove.policy import frozen_copy
from selfimprove.trace import Trace


def sampling_of(g) -> Sampling:
    return Sampling.of(g)


def sample_step(state, step: int, extra: int = 0, version: int | None = None):
    """This process's share of the step's prompts (cycling through the training set), sampled with one
    random stream per (seed, global prompt position): the same samples with 1 or N processes. `extra` > 0:
    a refill round (dynamic.py), the next prompts_per_step prompts of the stream (state.data_offset).
    `version`: the policy version of the engine's weights (default: the step's own)."""
    t, acc = state.recipe.train, state.accelerator
    share = t.prompts_per_step // acc.num_processes
    first = (step + extra) * t.prompts_per_step + state.data_offset + acc.process_index * share
    examples = [state.train_examples[first + i] for i in range(share)]
    seeds = [state.recipe.seed * 1_000_000_007 + first + i for i in range(len(examples))]
    return sampling.sample(state.engine, state.tokenizer, examples, sampling_of(state.recipe.generation),
                           tag=f"s{step}{f'.{extra}' if extra else ''}-r{acc.process_index}",
                           max_prompt_tokens=state.recipe.data.max_prompt_tokens,
                           version=step if version is None else version, seeds=seeds)


def score_local(state, traces, step: int, logged: dict | None = None) -> UserError | None:
    """Score on this process; a reward's failure is returned (as the step's one line), not raised.
    `logged` collects what TRL-style rewards pass to log_metric."""
    try:
        ctx = RewardContext(state.tokenizer, state.engine, step, state.recipe.train.steps,
                            logged if logged is not None else {})
        score(traces, state.rewards, ctx)
    except UserError as e:
        return UserError(f"step {step + 1}: {e}")
    return None


def vote(state, error: UserError | None) -> None:
    """If a reward failed on any process, every process stops with an error (none waits forever)."""
    if any_process(state.accelerator, error is not None) and error is None:
        raise UserError(f"a reward failed on another process at step {state.step + 1} (its message is in that "
                        "process's output)")
    if error is not None:
        raise error


def score_everywhere(state, traces, step: int, logged: dict | None = None) -> None:
    vote(state, score_local(state, traces, step, logged))


def engine_weights(state):
    """The hf engine samples from the trainer's module, whose weights ZeRO-3 shards: gather them for
    generation and self-judging. vLLM engines, and the hf engine's copy, hold their own weights."""
    hf = state.recipe.generation.backend == "hf" and getattr(state.engine, "source", None) is None
    return whole_parameters(state.accelerator, state.model) if hf else nullcontext()


def second_attempt(state, traces, step: int, logged: dict | None = None) -> UserError | None:
    """Two-turn methods: attempt 2 after the instruction, scored again (each attempt's reward on its turn)."""
    recipe = state.recipe
    sampling.add_second_attempt(state.engine, state.tokenizer, traces, state.algo.instruction(recipe.algorithm),
                                sampling_of(recipe.generation), chat_kwargs=recipe.data.chat_template_kwargs)
    error = score_local(state, traces, step, logged)
    if error is None:
        sampling.keep_attempt_reward(traces, 1)
    return error


def rollout(state, step: int) -> tuple[list, dict, float, float]:
    """The synchronous rollout: (traces, logged, generation seconds, reward seconds)."""
    t0, logged = time.perf_counter(), {}
    with engine_weights(state):
        traces = sample_step(state, step)
        t1 = time.perf_counter()
        score_everywhere(state, traces, step, logged)
        traces = dynamic.refill(state, step, traces, sample_step, score_everywhere, logged)  # DAPO's refill
        t2 = time.perf_counter()
        if state.algo.instruction is not None:
            vote(state, second_attempt(state, traces, step))
            t_ext = time.perf_counter()  # attempt 2 counts as generation, its scoring as reward
            t1, t2 = t1 + (t_ext - t2), t_ext
    return traces, logged, t1 - t0, t2 - t1


@dataclass
class Batch:
    """A rollout sampled ahead: its traces, what its rewards logged, its seconds, a reward's failure."""

    traces: list
    logged: dict = field(default_factory=dict)
    t_generate: float = 0.0
    t_reward: float = 0.0
    error: UserError | None = None


def _ahead(state, step: int, version: int) -> Batch:
    """The background part of step `step`'s rollout: local work only (no collective). A user-facing failure
    (a reward's, a server's) is the batch's error: the main thread votes on it, so every process stops."""
    try:
        return _sample_and_score(state, step, version)
    except UserError as e:  # a reward's failure is returned, not raised: this is sampling's (a server's)
        return Batch([], error=UserError(f"step {step + 1}: {e}"))


def _sample_and_score(state, step: int, version: int) -> Batch:
    t0, logged = time.perf_counter(), {}
    traces = sample_step(state, step, version=version)
    t1 = time.perf_counter()
    error = score_local(state, traces, step, logged)
    t_gen, t_rew = t1 - t0, time.perf_counter() - t1
    if error is None and state.algo.instruction is not None:
        t2 = time.perf_counter()
        error = second_attempt(state, traces, step)
        t_gen += time.perf_counter() - t2  # with its scoring, as the synchronous loop's split roughly
    return Batch(traces, logged, t_gen, t_rew, error)


class Ahead:
    """Asynchronous rollout: one batch in flight on one background thread (see the module's docstring)."""

    def __init__(self, state):
        g, acc = state.recipe.generation, state.accelerator
        self.k = g.max_staleness
        self.shared = None  # hf: the engine on the trainer's own module, which evaluations keep using
        if g.backend == "hf":
            if zero_stage(acc) == 3:
                raise UserError("generation.max_staleness > 0 with the hf engine keeps a whole copy of the model, "
                                "which DeepSpeed ZeRO-3 shards; use generation.backend=vllm-server, or ZeRO-2")
            self.shared = state.engine
            state.engine = own_copy(state, acc.unwrap_model(state.model))
        elif hasattr(state.engine, "request_locally"):  # vllm-server: each process requests its own share
            state.engine.request_locally()
        # the sampler's own torch threads (OpenMP's count is per thread; a new one would take every core): half
        # the trainer's, as the two share the machine's cores while they overlap (measured: BENCHMARKS.md)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout", initializer=torch.set_num_threads,
                                       initargs=(max(1, torch.get_num_threads() // 2),))
        self.pending: tuple[int, Future | Batch] | None = None
        self.version = 0  # the policy version (updates done) of the engine's weights
        self.saved_at = -1  # the step a checkpoint was saved before: the engine receives the weights there
        self.t_push = 0.0

    def take(self, state, step: int) -> tuple[list, dict, float, float, float]:
        """Step `step`'s batch: (traces, logged, generation s, reward s, s waited for it). Without a batch in
        flight (the first step) it is sampled now, with the current weights. Then, the engine idle, it receives
        the trainer's weights (version `step`) at every k-th step and at the first step after a checkpoint,
        before the refill rounds sample (so a resumed run refills as an uninterrupted one); the vote on a
        failed reward and the refill rounds run here, in the main thread."""
        t0 = time.perf_counter()
        if self.pending is not None and self.pending[0] == step:
            batch = self.wait()
        else:
            if self.version != step:  # the engine holds other weights than the trainer's (not at a fresh start)
                self.push(state, step)
            batch = _ahead(state, step, self.version)
        waited = time.perf_counter() - t0
        vote(state, batch.error)
        t1 = time.perf_counter()
        if step % self.k == 0 or step == self.saved_at:
            self.push(state, step)
        self.t_push = time.perf_counter() - t1
        t1 = time.perf_counter()
        traces = dynamic.refill(state, step, batch.traces, self._sample, score_everywhere, batch.logged)
        return traces, batch.logged, batch.t_generate + time.perf_counter() - t1, batch.t_reward, waited

    def _sample(self, state, step: int, extra: int = 0):
        return sample_step(state, step, extra, version=self.version)

    def submit(self, state, step: int) -> float:
        """Before step `step`'s update: step + 1 is sampled behind it, with the engine's weights. Returns the
        seconds of this step's weight push (in `take`)."""
        if step + 1 < state.recipe.train.steps:
            self.pending = (step + 1, self.pool.submit(_ahead, state, step + 1, self.version))
        return self.t_push

    def push(self, state, version: int) -> None:
        """The trainer's weights (version = updates done) into the idle engine."""
        state.engine.load_weights()
        self.version = version

    def eval_engine(self, state, version: int):
        """The engine an evaluation uses, once the batch in flight is sampled: with hf the trainer's own module,
        as the synchronous loop evaluates (model.dtype's autocast, not the copy's rounding; no push); else the
        engine, given the current weights."""
        self.settle()
        if self.shared is not None:
            return self.shared
        self.push(state, version)
        return state.engine

    def wait(self) -> Batch:
        """The batch in flight, once sampled (it stays pending until taken)."""
        step, job = self.pending
        batch = job.result() if isinstance(job, Future) else job
        self.pending = None
        return batch

    def settle(self) -> None:
        """Let the batch in flight finish (before the engine evaluates or a checkpoint is written)."""
        if self.pending is not None and isinstance(self.pending[1], Future):
            self.pending = (self.pending[0], self.pending[1].result())

    def checkpoint_entry(self, accelerator) -> dict:
        """What a checkpoint keeps of the rollout in flight: every process's batch, the engine's version."""
        self.settle()
        mine = None
        if self.pending is not None:
            step, b = self.pending
            mine = {"step": step, "traces": [tr.to_dict() for tr in b.traces], "logged": b.logged,
                    "t_generate": b.t_generate, "t_reward": b.t_reward, "error": str(b.error) if b.error else None}
        batches = gather_object([mine]) if accelerator.num_processes > 1 else [mine]
        return {"version": self.version, "batches": batches}

    def restore(self, entry: dict | None, accelerator, start: int) -> None:
        """A resumed run: the batch that was in flight at the checkpoint; the engine gets the weights at `start`."""
        self.saved_at = start
        if not entry:
            return
        try:  # a checkpoint is data someone may hand over: a damaged entry is one line, not a traceback
            version, mine = int(entry["version"]), entry["batches"][accelerator.process_index]
            if mine is not None:
                traces = [Trace.from_dict(d) for d in mine["traces"]]
                error = UserError(mine["error"]) if mine["error"] else None
                batch = Batch(traces, dict(mine["logged"]), float(mine["t_generate"]), float(mine["t_reward"]), error)
                self.pending = (int(mine["step"]), batch)
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise UserError(f"train.resume: the checkpoint's batch in flight (trainer_state.json 'ahead') is damaged "
                            f"({type(e).__name__}: {e})") from None
        self.version = version

    def close(self, wait: bool = True) -> None:
        """Stop the thread; `wait=False` (a failure) does not wait for a batch nobody will read."""
        self.pool.shutdown(wait=wait, cancel_futures=True)


def own_copy(state, module) -> HFEngine:
    """An hf engine on a copy of the trainer's module, in model.dtype (as a vLLM engine holds its weights),
    with the same sampler seed as the shared engine it replaces."""
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    copy = frozen_copy(module)
    copy.__dict__.pop("forward", None)  # accelerate's autocast wrapper would call the trainer's own forward
    copy.to(dtypes[state.recipe.model.dtype])
    old = state.engine
    engine = HFEngine(copy, state.tokenizer, source=module)
    engine.generator.set_state(old.generator.get_state())
    return engine
