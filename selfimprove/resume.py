"""Where a run stands between steps: saving the loop's state, resuming it, and stopping cleanly.

`save` checkpoints the loop's own entries with the model (checkpoint.py does the files); `resume`
continues a checkpoint (optimizer, scheduler, RNG, logs, evaluations); `fresh` starts at step 0 (cutting
back the logs a failed earlier attempt of the same run folder left); `interrupted` saves the steps done
when a signal arrives and raises `Interrupted` with the resume command; `failure` is the one line of an
error during training, with the logs cut back to the last whole checkpoint so `resume=auto` continues.
"""

from __future__ import annotations

from selfimprove import checkpoint
from selfimprove.errors import Interrupted, UserError
from selfimprove.interrupts import Interrupts, signal_name
from selfimprove.state import State


def save(state: State, step: int, elapsed: float) -> None:
    # data_offset: the prompts refill rounds consumed (dynamic.py); the next step starts at data_position
    extra = {"data_position": step * state.recipe.train.prompts_per_step + state.data_offset,
             "data_offset": state.data_offset, "elapsed": elapsed,
             "evals": list(state.evals), "summary": dict(state.summary),
             "run": checkpoint.run_signature(state.recipe, state.accelerator.num_processes)}
    if state.ahead is not None:  # the batch in flight, sampled for step + 1; the engine gets the weights there
        extra["ahead"] = state.ahead.checkpoint_entry(state.accelerator)
        state.ahead.saved_at = step
    checkpoint.save(state.run, step, state.accelerator, state.model, state.tokenizer, state.optimizer,
                    state.scheduler, state.engine, extra, state.recipe.log.keep_last,
                    state.recipe.model.dtype)


def resume_hint(state: State) -> str:
    return f"train.resume=auto log.name={state.run.path.name}"


def interrupted(state: State, interrupts: Interrupts, steps_done: int, start: int, elapsed: float) -> None:
    """A signal arrived: save the steps done so far as a whole checkpoint and stop with the resume command."""
    signum = interrupts.received or 15  # another process got it: every process stops alike
    name = signal_name(signum)
    if steps_done == start:
        message = f"interrupted by {name} before a step was trained; nothing new was saved"
    else:
        saved = checkpoint.folder(state.run, steps_done)
        if not saved.is_dir():
            save(state, steps_done, elapsed)
        message = (f"interrupted by {name} after step {steps_done}: saved {saved}; continue with "
                   f"selfimprove train {state.recipe.source or 'RECIPE'} {resume_hint(state)}")
    if state.ahead is not None:
        state.ahead.close(wait=False)
    state.engine.close()
    state.accelerator.end_training()
    raise Interrupted(message if state.accelerator.is_main_process else "", signum)


def failure(state: State, e: Exception) -> UserError:
    """The one line of a failure during training, saying where the run folder stands. The logs are cut
    back to the last whole checkpoint, so `train.resume=auto` continues from a consistent folder."""
    message = str(e) if isinstance(e, UserError) else f"cannot write {e.filename or 'a file'}: {e.strerror or e}"
    run = state.run
    if not (run.enabled and run.path.is_dir()):
        return UserError(message)
    last = checkpoint.newest(run.path)
    try:
        checkpoint.trim_logs(run.path, last[0] if last else 0)
    except OSError:
        pass  # a full disk: resume trims them anyway
    where = f"checkpoint {last[1]} is the last whole one" if last else "it has no checkpoint yet"
    return UserError(f"{message} [run folder {run.path}: {where}; {resume_hint(state)} continues it]")


def fresh(state: State) -> int:
    """A run starting at step 0; with train.resume=auto and a folder without a checkpoint (a run that
    failed before its first one), its logs are cut back so they read as this run's alone."""
    if state.recipe.train.resume and state.run.enabled and state.run.path.is_dir():
        checkpoint.trim_logs(state.run.path, 0)
    return 0


def resume(state: State, log) -> int:
    """Continue from state.resume_from: optimizer, scheduler, RNG, logs, evaluations so far."""
    ts = checkpoint.restore(state.resume_from, state.accelerator, state.model, state.optimizer, state.scheduler,
                            state.engine)
    state.step = ts["step"]
    state.engine.load_weights()  # a vLLM engine loaded the starting checkpoint: give it the resumed weights
    state.elapsed = ts["elapsed"]
    state.data_offset = ts.get("data_offset", 0)
    if state.ahead is not None:
        state.ahead.restore(ts.get("ahead"), state.accelerator, ts["step"])  # checkpoints from before dynamic sampling's refill: none
    state.evals.extend(tuple(e) for e in ts["evals"])
    state.summary.update(ts["summary"])
    state.summary["resumed_from"] = str(state.resume_from)
    state.history = checkpoint.trim_logs(state.run.path, ts["step"]) if state.run.enabled else []
    if state.accelerator.is_main_process:
        log(f"resuming from {state.resume_from} (step {ts['step']})")
    return ts["step"]
