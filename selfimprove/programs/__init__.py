"""Offline programs: training that is not on-policy RL (a judge, a reward model), listed in `PROGRAMS`.

A program owns its loop (`train(recipe, log) -> summary`) and its recipe: a dataclass of typed
sections, where `algorithm:` holds the program's own options and `train:` is `FitConfig` (epochs,
batch size, optimizer), never the on-policy `TrainConfig` with other meanings. `selfimprove train`
dispatches on `algorithm.name` to a program or to the on-policy loop.

    ALGORITHMS (algorithms/)   nft, grpo, rft, score, ssr   -> loop.run
    PROGRAMS   (programs/)     selfj (train_judge.py), reward_model (train_rm.py)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from selfimprove.config import (
    DataConfig,
    LogConfig,
    ModelConfig,
    OptimConfig,
    check_data,
    check_log,
    check_model,
    check_optim,
    check_ranges,
    check_sampling,
    check_seed,
)
from selfimprove.errors import UserError
from selfimprove.options import opt

PROGRAMS = {
    "selfj": "selfimprove.programs.train_judge",
    "reward_model": "selfimprove.programs.train_rm",
}


@dataclass(frozen=True)
class Program:
    """One offline program. Recipe: its recipe dataclass (with `algorithm` = its Config); train: (recipe, log)
    -> summary dict (also written to the run folder); check: (recipe) -> value errors, before anything runs."""

    name: str
    Recipe: type
    train: Callable[[Any, Callable], dict]
    check: Callable[[Any], list[str]]


def get_program(name: str) -> Program | None:
    """The registered program `name`, or None (an on-policy algorithm, or unknown)."""
    if name not in PROGRAMS:
        return None
    return importlib.import_module(PROGRAMS[name]).PROGRAM


@dataclass
class SamplingConfig:
    """`generation:` of a program: how the policy samples the answers it learns from (hf engine)."""

    n: int = opt(4, "samples per prompt")
    temperature: float = opt(1.0, "sampling temperature (0: greedy)")
    top_p: float = opt(1.0, "nucleus sampling")
    max_new_tokens: int = opt(256, "tokens per answer at most")
    batch_size: int = opt(512, "sequences per generate call")


@dataclass
class FitConfig(OptimConfig):
    """`train:` of a program: passes over a fixed dataset (and the optimizer fields of every `train:`)."""

    micro_batch_size: int = opt(8, "examples per forward/backward (gradient accumulation)")
    epochs: float = opt(1.0, "passes over the training examples")
    batch_size: int = opt(64, "examples per optimizer step, over all processes")
    max_steps: int = opt(0, "> 0: stop after this many optimizer steps")


@dataclass
class ProgramRecipe:
    """The sections every program's recipe has; a program re-declares generation, algorithm and train
    with its own types and defaults."""

    seed: int = opt(0, "random seed")
    model: ModelConfig = opt(ModelConfig(), "the starting model")
    data: DataConfig = opt(DataConfig(), "the program's data")
    generation: SamplingConfig = opt(SamplingConfig(), "how the policy samples")
    algorithm: Any = opt(None, "the program's options")
    train: FitConfig = opt(FitConfig(), "training")
    log: LogConfig = opt(LogConfig(), "the run folder")
    source: str = opt("", "the recipe file it came from (set by load_recipe)")


def check_program_recipe(recipe: ProgramRecipe) -> None:
    """The sections every program recipe shares (model, data, generation, train, log)."""
    check_seed(recipe.seed)
    check_model(recipe.model)
    check_data(recipe.data)
    check_sampling(recipe.generation)
    check_optim(recipe.train)
    check_ranges(recipe.train, "train.", {"epochs": ">0", "batch_size": ">=1", "max_steps": ">=0"})
    check_log(recipe.log)
    if recipe.log.report_to:  # not wired into the judge and reward-model programs yet: say so, never ignore it
        raise UserError("log.report_to: experiment trackers are not wired into the selfj and reward_model programs "
                        "yet (on-policy recipes only)")
