"""Recipes: YAML -> the typed recipe of the method (selfimprove/recipe.py, config.py); every shipped recipe binds."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from reward import build_rewards
from selfimprove.cli import parse
from selfimprove.commands import COMMANDS
from selfimprove.config import Recipe
from selfimprove.errors import UserError
from selfimprove.programs.train_judge import SelfJRecipe
from selfimprove.programs.train_rm import RewardModelRecipe
from selfimprove.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
DATA = "data: {train: arith}\n"


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_recipe_binds_to_typed_sections(tmp_path):
    r = load_recipe(write(tmp_path, DATA + "train: {lr: 1, steps: 3}\nalgorithm: {name: grpo, kl_coef: 0.04}\n"))
    assert isinstance(r, Recipe) and r.train.lr == 1.0 and isinstance(r.train.lr, float)
    assert r.train.steps == 3
    assert r.algorithm.name == "grpo" and r.algorithm.kl_coef == 0.04
    assert r.rewards[0].fn == "math_correct"


def test_library_defaults_are_a_real_models_and_data_is_required(tmp_path):
    r = load_recipe(write(tmp_path, DATA))
    assert r.model.path == "Qwen/Qwen2.5-0.5B-Instruct" and r.generation.max_new_tokens == 256
    assert r.algorithm.name == "nft"
    with pytest.raises(UserError, match="data.train is required"):
        load_recipe(write(tmp_path, "seed: 1\n"))


def test_unknown_key_suggests_closest(tmp_path):
    with pytest.raises(UserError, match=r"unknown key 'train.lr_'") as e:
        load_recipe(write(tmp_path, DATA + "train: {lr_: 0.1}\n"))
    assert "did you mean 'lr'" in str(e.value)
    with pytest.raises(UserError, match=r"unknown key 'algorithm.epsilom'; did you mean 'epsilon'"):
        load_recipe(write(tmp_path, DATA + "algorithm: {name: nft, epsilom: 1}\n"))
    with pytest.raises(UserError, match=r"unknown key 'trian'; did you mean 'train'"):
        load_recipe(write(tmp_path, DATA + "trian: {lr: 1}\n"))


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(UserError, match=r"train.steps: expected an integer, got 'ten'"):
        load_recipe(write(tmp_path, DATA + "train: {steps: ten}\n"))
    with pytest.raises(UserError, match=r"eval.before: expected true or false"):
        load_recipe(write(tmp_path, DATA + "eval: {before: 3}\n"))


def test_overrides_are_typed_by_their_field(tmp_path):
    p = write(tmp_path, DATA + "train: {lr: 0.1}\nalgorithm: {name: score}\n")
    r = load_recipe(p, ["train.lr=3e-5", "seed=7", "eval.before=true", "algorithm.instruction=Fix it: now",
                        "data.task_options={ops: '+'}"])
    assert (r.train.lr, r.seed, r.eval.before) == (3e-5, 7, True)
    assert r.algorithm.instruction == "Fix it: now"  # a string field keeps the text (not a YAML mapping)
    assert r.data.task_options == {"ops": "+"}
    assert load_recipe(p, ["algorithm.name=rft"]).algorithm.name == "rft"
    assert load_recipe(p, ["algorithm=grpo"]).algorithm.name == "grpo"


def test_value_checks(tmp_path):
    with pytest.raises(UserError, match="algorithm.omega must be"):
        load_recipe(write(tmp_path, DATA + "algorithm: {name: nft, omega: half}\n"))
    with pytest.raises(UserError, match="unknown algorithm 'nfx'; did you mean 'nft'"):
        load_recipe(write(tmp_path, DATA + "algorithm: {name: nfx}\n"))
    assert load_recipe(write(tmp_path, DATA + "algorithm: grpo\n")).algorithm.name == "grpo"
    for text, msg in [("log: {every: 0}", "log.every must be >= 1"), ("log: {keep_last: 0}", "log.keep_last"),
                      ("eval: {temperature: -1}", "eval.temperature"),
                      ("data: {train: arith, task_options: {ops: '/'}}", "data.task_options.ops"),
                      ("data: {train: arith, task_options: {min_operand: 50, max_operand: 10}}",
                       "data.task_options.min_operand"),
                      ("train: {threads: -1}", "train.threads"), ("algorithm: [1]", "algorithm: expected a mapping")]:
        with pytest.raises(UserError, match=msg):
            load_recipe(write(tmp_path, (DATA if "data:" not in text else "") + text + "\n"))
    with pytest.raises(UserError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_programs_have_their_own_sections(tmp_path):
    r = load_recipe(write(tmp_path, DATA + "algorithm: {name: selfj}\ntrain: {epochs: 3, batch_size: 16}\n"))
    assert isinstance(r, SelfJRecipe) and (r.train.epochs, r.train.batch_size, r.generation.n) == (3.0, 16, 4)
    with pytest.raises(UserError, match="unknown key 'train.prompts_per_step'"):  # an on-policy key means nothing here
        load_recipe(write(tmp_path, DATA + "algorithm: {name: reward_model}\ntrain: {prompts_per_step: 8}\n"))
    r = load_recipe(write(tmp_path, DATA + "algorithm: {name: reward_model, verifier: exact_match}\n"))
    assert isinstance(r, RewardModelRecipe) and r.algorithm.verifier == "exact_match" and r.generation.n == 8
    with pytest.raises(UserError, match="train.epochs must be > 0"):
        load_recipe(write(tmp_path, DATA + "algorithm: {name: selfj}\ntrain: {epochs: 0}\n"))


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes").rglob("*.yaml")
                                        if not {"accelerate", "eval", "cct"} & set(p.parts)))
def test_every_recipe_loads_and_validates(path):
    r = load_recipe(ROOT / path)
    assert r.algorithm.name in ("nft", "grpo", "rft", "score", "reward_model", "selfj", "ssr")
    if isinstance(r, Recipe):
        assert build_rewards(r.rewards)  # every reward name resolves


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes/accelerate").glob("*.yaml")))
def test_accelerate_profiles_are_valid_accelerate_configs(path):
    cfg = load_config_from_file(str(ROOT / path))
    assert cfg.num_processes >= 2
    assert cfg.distributed_type.value in ("MULTI_GPU", "DEEPSPEED")
    if "zero" in path:
        assert cfg.deepspeed_config["zero_stage"] == int(path.split("zero")[1][0])


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes").rglob("*.yaml")
                                        if {"eval", "cct"} & set(p.parts)))
def test_command_configs_bind_to_their_options(path):
    command = "sft" if path.endswith("_sft.yaml") else path.split("/")[1]
    options, _ = parse(COMMANDS[command][0], ["--config", str(ROOT / path)], command)
    assert options.model and options.out
    if command == "eval":
        assert options.turns == 2 and options.k >= 1 and options.reward == "math_correct"


def test_score_runs_stage1_by_default_for_half_of_train_steps(tmp_path):
    """No silent 'without Stage I' ablation: an unset stage1_steps is half of train.steps; 0 is the ablation."""
    p = write(tmp_path, DATA + "train: {steps: 301}\nalgorithm: {name: score}\n")
    assert load_recipe(p).algorithm.stage1_steps == 150
    assert load_recipe(p, ["train.steps=10"]).algorithm.stage1_steps == 5
    assert load_recipe(p, ["algorithm.stage1_steps=0"]).algorithm.stage1_steps == 0
    assert load_recipe(p, ["algorithm.stage1_steps=40"]).algorithm.stage1_steps == 40
    r = load_recipe(p)
    assert (r.algorithm.turn1_credit, r.algorithm.instruction) == ("reward", "score")
    with pytest.raises(UserError, match=r"turn1_credit.*'reward', 'return'|turn1_credit.*reward.*return"):
        load_recipe(p, ["algorithm.turn1_credit=shaped"])
    with pytest.raises(UserError, match=r"turn1_gets_shaped.*did you mean"):  # the old option is gone, with a hint
        load_recipe(p, ["algorithm.turn1_gets_shaped=true"])
    with pytest.raises(UserError, match="stage1_steps must be >= 0"):
        load_recipe(p, ["algorithm.stage1_steps=-1"])
