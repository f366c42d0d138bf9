"""Reading a recipe: YAML + `section.key=value` overrides -> the typed recipe of its method.

`algorithm.name` decides the shape: an on-policy algorithm (nft, grpo, rft, score, ssr, or a module
path) binds `config.Recipe` with the algorithm's own `Config` as the `algorithm:` section; an offline
program (selfj, reward_model) binds the program's own recipe dataclass. Either way every key is a typed
field, an unknown key or a wrong type is one line naming it, and value checks run here, before anything
is loaded.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from selfimprove.algorithms import ALGORITHMS, get_algorithm
from selfimprove.config import Recipe, validate
from selfimprove.data import get_task, task_options
from selfimprove.errors import UserError
from selfimprove.options import apply_overrides, bind, plain, read_yaml
from selfimprove.programs import PROGRAMS, get_program

DEFAULT_ALGORITHM = "nft"


def _algorithm_section(raw: dict, source: str) -> dict:
    algo_raw = plain(raw.get("algorithm")) or {"name": DEFAULT_ALGORITHM}
    if isinstance(algo_raw, str):  # `algorithm: grpo` is the name alone
        algo_raw = {"name": algo_raw}
    if not isinstance(algo_raw, dict):
        raise UserError(f"algorithm: expected a mapping (algorithm: {{name: nft, ...}}), got {algo_raw!r}")
    if "name" not in algo_raw:
        raise UserError(f"{source}: the algorithm section needs a 'name' (e.g. algorithm: {{name: nft}})")
    return {**algo_raw, "name": plain(algo_raw["name"])}


def learning_errors(recipe, algo) -> list[str]:
    """Settings under which the method cannot learn: errors, not a run that trains on nothing."""
    g, why = recipe.generation, algo.needs_groups(recipe.algorithm)
    errs = []
    if g.n < 2 and why:
        errs.append(f"generation.n=1: {algo.name} learns by comparing the samples of a group ({why}); "
                    "set generation.n >= 2")
    # explicitly `sampler` (auto resolves to trainer on vllm): is/tis themselves recompute pi_old on the trainer
    chosen = getattr(recipe.algorithm, "old_logprobs", None)  # only methods that have the option (NFT, RFT)
    if chosen == "sampler" and g.mismatch_correction != "none":
        errs.append(f"algorithm.old_logprobs=sampler contradicts generation.mismatch_correction="
                    f"{g.mismatch_correction}, which recomputes pi_old on the trainer and weights by pi_old/pi_engine")
    if g.temperature == 0:
        errs.append("generation.temperature=0 is greedy: in training every sample of a prompt is the same and "
                    "the sampler's probabilities are not the policy's; set generation.temperature > 0")
    return errs


def bind_recipe(raw: dict, source: str = ""):
    """The typed recipe of a raw mapping (a YAML file with its overrides applied)."""
    raw = {k: v for k, v in raw.items() if k != "source"}
    algo_raw = _algorithm_section(raw, source)
    program = get_program(algo_raw["name"]) if isinstance(algo_raw["name"], str) else None
    if program is not None:
        recipe = bind(program.Recipe, {**raw, "algorithm": algo_raw}, "")
        errors = program.check(recipe)
    else:
        name = algo_raw["name"]
        if isinstance(name, str) and name not in ALGORITHMS and "." not in name:
            near = difflib.get_close_matches(name, [*ALGORITHMS, *PROGRAMS], n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f" (known: {', '.join([*ALGORITHMS, *PROGRAMS])})"
            raise UserError(f"unknown algorithm '{name}'{hint}")
        algo = get_algorithm(name)
        recipe = bind(Recipe, {k: v for k, v in raw.items() if k != "algorithm"}, "")
        recipe.algorithm = bind(algo.Config, algo_raw, "algorithm")
        validate(recipe)
        algo.complete(recipe.algorithm, recipe)  # defaults read from other sections (SCoRe's Stage I length)
        errors = algo.check(recipe.algorithm) + learning_errors(recipe, algo)
    for err in errors:
        raise UserError(err)
    task = get_task(recipe.data.train)
    if task is not None:
        task_options(task, recipe.data.task_options)
    recipe.source = source
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None):
    """A recipe file with `key=value` / `section.key=value` overrides; mistakes name the file and the key."""
    raw = read_yaml(path, "recipe")
    try:
        return bind_recipe(apply_overrides(raw, overrides or []), str(path))
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
