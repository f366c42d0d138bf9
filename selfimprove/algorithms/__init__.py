"""On-policy algorithms: one module per method, each exporting one `Algorithm`, listed in `ALGORITHMS`.

The `Algorithm` record is the whole contract between a method and the loop (`loop.py`): the loop
samples, scores, calls `prepare`, collates, and calls `loss` per micro-batch; it reads the record's
fields and never looks inside the module. Adding a method is adding a file that ends with

    ALGORITHM = Algorithm(name="mine", Config=Config, prepare=prepare, loss=loss)

and a line here (or naming the module: `algorithm: {name: mylab.algos.mine}`). The offline programs
(Self-J judge training, reward-model training) are not on-policy and live in `selfimprove/programs`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from dataclasses import dataclass
from typing import Any, Callable

import torch

from selfimprove.errors import UserError
from selfimprove.trace import Trace

ALGORITHMS = {
    "nft": "selfimprove.algorithms.nft",
    "grpo": "selfimprove.algorithms.grpo",
    "rft": "selfimprove.algorithms.rft",
    "score": "selfimprove.algorithms.score",
    "ssr": "selfimprove.algorithms.ssr",
}


def no_errors(cfg) -> list[str]:
    return []


def never(*args) -> bool:
    return False


@dataclass(frozen=True)
class Algorithm:
    """One on-policy method, every hook with its default.

    Config:          the recipe's `algorithm:` section (a dataclass with `name`, `loss_agg` (token-mean |
                     seq-mean | dr-grpo | constant) and `loss_constant`, which the loop's aggregation reads)
    prepare:         (traces, cfg) -> the traces to train on, with advantages / labels set (may filter)
    loss:            (batch, logp [B, T], cfg) -> (per-token loss [B, T], metrics dict); aggregation over
                     tokens, micro-batches and processes is the loop's
    check:           (cfg) -> value errors of the section, one message each (before anything starts)
    meta_keys:       trace.meta entries collated into [B] tensors for `loss`
    needs_reference: (cfg) -> whether the loss reads `batch["ref_logp"]` (a frozen reference's log-probs)
    zero_loss:       (trace, cfg) -> True when the trace's loss and gradient are exactly zero: the loop
                     skips its forward/backward but still counts its tokens (the gradient is unchanged)
    needs_groups:    (cfg) -> a short reason when the method learns only by comparing the samples of a group (a
                     group baseline, dropping all-equal groups), else None: then generation.n=1 is an error
    instruction:     two-turn methods: (cfg) -> the instruction between attempt 1 and attempt 2; the loop
                     then samples attempt 2 after scoring attempt 1 and scores the episode again. None:
                     single-turn
    complete:        (cfg, recipe) -> None: fills the options whose default depends on other sections (SCoRe's
                     Stage I length is half of train.steps), when the recipe is read, before `check`
    step_metrics:    (traces, cfg) -> {metric: sum over the step's traces}: the loop adds the sums up over
                     processes and logs each divided by the number of traces (SCoRe: r1, r2, delta, ...); the
                     keys must not depend on the traces (every process reduces the same list)

    Optional Config fields the record reads (a user's Config may lack them; then the default holds):
    kl_estimator (k3) and kl_in (loss) when needs_reference; old_logprobs (sampler); max_refill_rounds (0).
    """

    name: str
    Config: type
    prepare: Callable[[list[Trace], Any], list[Trace]]
    loss: Callable[[dict, torch.Tensor, Any], tuple[torch.Tensor, dict]]
    check: Callable[[Any], list[str]] = no_errors
    meta_keys: tuple[str, ...] = ()
    needs_reference: Callable[[Any], bool] = never
    zero_loss: Callable[[Trace, Any], bool] = never
    needs_groups: Callable[[Any], str | None] = lambda cfg: None
    instruction: Callable[[Any], str] | None = None
    complete: Callable[[Any, Any], None] = lambda cfg, recipe: None
    step_metrics: Callable[[list[Trace], Any], dict[str, float]] = lambda traces, cfg: {}

    def train_traces(self, traces: list[Trace], cfg) -> list[Trace]:
        """`prepare`, then, with `algorithm.mask_truncated` (DAPO's overlong filtering, TRL's
        mask_truncated_completions), without the traces that have an attempt cut at max_new_tokens: they
        get no loss and no gradient, and their tokens do not count in the aggregation's denominators. They
        were in the batch when `prepare` computed the advantages, so they still count in group baselines
        (as in TRL, where only the loss is masked)."""
        kept = self.prepare(traces, cfg)
        if getattr(cfg, "mask_truncated", False):  # a user's Config may lack the option: then it is off
            kept = [tr for tr in kept if not truncated(tr)]
        return kept

    def kl(self, cfg) -> tuple[str, str] | None:
        """(estimator, place) of the method's KL to the reference: place "loss" (k3 or full, a loss term) or
        "reward" (k1, a detached penalty on the reward before `prepare`); None without a reference."""
        if not self.needs_reference(cfg):
            return None
        return getattr(cfg, "kl_estimator", "k3"), getattr(cfg, "kl_in", "loss")

    def old_logprobs(self, cfg, backend: str) -> str:
        """Where pi_old comes from: "sampler" (the engine's log-probs of the samples) or "trainer" (recomputed
        by the trainer before the update, no importance weight); "auto": trainer unless the engine is hf."""
        mode = getattr(cfg, "old_logprobs", "sampler")
        return ("sampler" if backend == "hf" else "trainer") if mode == "auto" else mode

    def refill_rounds(self, cfg) -> int:
        """Extra generation rounds of dynamic sampling (DAPO) when `prepare` drops groups: 0 = none."""
        return getattr(cfg, "max_refill_rounds", 0)

    def __post_init__(self):
        fields = {f.name for f in dataclasses.fields(self.Config)}
        missing = {"name", "loss_agg", "loss_constant"} - fields
        if missing:  # a user's algorithm module is input too: one line, not a traceback
            raise UserError(f"algorithm {self.name}: its Config lacks {sorted(missing)} (see Algorithm's docstring)")


def truncated(trace: Trace) -> bool:
    """A trained attempt of the trace was cut at max_new_tokens (finish_reason "length")."""
    return any(t.trainable and t.finish_reason == "length" for t in trace.turns)


def get_algorithm(name: str) -> Algorithm:
    """The registered method `name`, or the `ALGORITHM` of a module named by its import path."""
    if not isinstance(name, str):
        raise UserError(f"algorithm.name must be a string, got {name!r}")
    if name in ALGORITHMS:
        return importlib.import_module(ALGORITHMS[name]).ALGORITHM
    if "." not in name:
        near = difflib.get_close_matches(name, list(ALGORITHMS), n=1)
        hint = f"; did you mean '{near[0]}'?" if near else f" (known: {', '.join(ALGORITHMS)})"
        raise UserError(f"unknown algorithm '{name}'{hint}")
    if name.startswith(".") or name.endswith(".") or ".." in name or ":" in name:
        raise UserError(f"algorithm '{name}' is neither a known algorithm nor a module path (package.module)")
    try:
        module = importlib.import_module(name)
    except Exception as e:  # ImportError, or the user's module failing as it loads (a SyntaxError, ...)
        raise UserError(f"algorithm '{name}' cannot be imported ({type(e).__name__}: {' '.join(str(e).split())})") from None
    algo = getattr(module, "ALGORITHM", None)
    if not isinstance(algo, Algorithm):
        raise UserError(f"algorithm module '{name}' does not export ALGORITHM = Algorithm(name=..., Config=..., "
                        "prepare=..., loss=...) (README: Architecture)")
    return algo
