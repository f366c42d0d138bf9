"""`selfimprove config ALGO` prints a complete default recipe that loads as is, and TRL's option names get a
hint naming the key here (issue 12, familiar names)."""

import pytest

from selfimprove.algorithms import ALGORITHMS, get_algorithm
from selfimprove.cli import main
from selfimprove.options import to_plain
from selfimprove.programs import PROGRAMS
from selfimprove.recipe import load_recipe


@pytest.mark.parametrize("name", [*ALGORITHMS, *PROGRAMS])
def test_the_printed_recipe_loads_and_holds_every_default(name, tmp_path, capsys):
    assert main(["config", name]) == 0
    text = capsys.readouterr().out
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    recipe = load_recipe(path, ["data.train=arith"])
    assert recipe.algorithm.name == name
    defaults = type(recipe)()
    loaded, expected = to_plain(recipe), to_plain(defaults)
    for section in ("model", "generation", "train", "log"):
        assert loaded[section] == expected[section], section
    algo_defaults = type(recipe.algorithm)()
    if name in ALGORITHMS:  # defaults that depend on other sections (SCoRe: Stage I = half of train.steps)
        get_algorithm(name).complete(algo_defaults, recipe)
    assert loaded["algorithm"] == to_plain(algo_defaults)
    if name == "score":
        assert "stage1_steps: null" in text and recipe.algorithm.stage1_steps == recipe.train.steps // 2 > 0
    assert "# samples per prompt" in text or name in PROGRAMS  # every key carries its description


@pytest.mark.parametrize("override,hint", [
    ("train.learning_rate=1e-5", "TRL's learning_rate is 'train.lr' here"),
    ("generation.num_generations=4", "TRL's num_generations is 'generation.n' here"),
    ("train.max_completion_length=64", "TRL's max_completion_length is 'generation.max_new_tokens' here"),
    ("algorithm.beta=0.04", "TRL's beta is 'algorithm.kl_coef' here"),
])
def test_trl_option_names_get_a_hint_with_the_key_here(override, hint, write_recipe, capsys):
    recipe = write_recipe(algorithm={"name": "grpo"})
    assert main(["train", str(recipe), override]) == 2
    err = capsys.readouterr().err
    assert hint in err and len(err.strip().splitlines()) == 1


def test_a_trl_name_the_method_lacks_gets_the_nearest_key(write_recipe, capsys):
    recipe = write_recipe(algorithm={"name": "score"})
    assert main(["train", str(recipe), "algorithm.beta=0.04"]) == 2
    assert "did you mean 'beta" in capsys.readouterr().err  # beta1 or beta2, not kl_coef
