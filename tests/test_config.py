from pathlib import Path

import pytest

from selfimprove.config import apply_overrides, load_recipe
from selfimprove.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_recipe_binds_to_typed_sections(tmp_path):
    r = load_recipe(write(tmp_path, "train: {lr: 1, steps: 3}\nalgorithm: {name: grpo, kl_coef: 0.04}\n"))
    assert r.train.lr == 1.0 and isinstance(r.train.lr, float)
    assert r.train.steps == 3
    assert r.algorithm.name == "grpo" and r.algorithm.kl_coef == 0.04
    assert r.rewards[0].fn == "math_correct"


def test_unknown_key_suggests_closest(tmp_path):
    with pytest.raises(UserError, match=r"unknown key 'train.lerning_rate'|unknown key 'train.lr_'") as e:
        load_recipe(write(tmp_path, "train: {lr_: 0.1}\n"))
    assert "did you mean 'lr'" in str(e.value)
    with pytest.raises(UserError, match=r"unknown key 'algorithm.epsilom'; did you mean 'epsilon'"):
        load_recipe(write(tmp_path, "algorithm: {name: nft, epsilom: 1}\n"))
    with pytest.raises(UserError, match=r"unknown key 'trian'; did you mean 'train'"):
        load_recipe(write(tmp_path, "trian: {lr: 1}\n"))


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(UserError, match=r"train.steps: expected an integer, got 'ten'"):
        load_recipe(write(tmp_path, "train: {steps: ten}\n"))
    with pytest.raises(UserError, match=r"eval.before: expected true or false"):
        load_recipe(write(tmp_path, "eval: {before: 3}\n"))


def test_overrides_parse_yaml_values_and_two_levels(tmp_path):
    p = write(tmp_path, "train: {lr: 0.1}\n")
    r = load_recipe(p, ["train.lr=3e-5", "seed=7", "algorithm.name=rft", "eval.before=true"])
    assert (r.train.lr, r.seed, r.algorithm.name, r.eval.before) == (3e-5, 7, "rft", True)
    with pytest.raises(UserError, match="at most two levels"):
        apply_overrides({}, ["a.b.c=1"])
    with pytest.raises(UserError, match="key=value"):
        apply_overrides({}, ["train.lr"])


def test_value_checks(tmp_path):
    with pytest.raises(UserError, match="algorithm.omega must be"):
        load_recipe(write(tmp_path, "algorithm: {name: nft, omega: half}\n"))
    with pytest.raises(UserError, match="unknown algorithm 'nfx'; did you mean 'nft'"):
        load_recipe(write(tmp_path, "algorithm: {name: nfx}\n"))
    assert load_recipe(write(tmp_path, "algorithm: grpo\n")).algorithm.name == "grpo"
    for text, msg in [("log: {every: 0}", "log.every must be >= 1"), ("log: {keep_last: 0}", "log.keep_last"),
                      ("eval: {temperature: -1}", "eval.temperature"), ("data: {ops: '/'}", "data.ops"),
                      ("data: {min_operand: 50, max_operand: 10}", "data.min_operand"),
                      ("train: {threads: -1}", "train.threads"), ("algorithm: [1]", "algorithm: expected a mapping")]:
        with pytest.raises(UserError, match=msg):
            load_recipe(write(tmp_path, text + "\n"))
    with pytest.raises(UserError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes").rglob("*.yaml")
                                        if not {"accelerate", "eval", "cct"} & set(p.parts)))
def test_every_recipe_loads_and_validates(path):
    from selfimprove.scoring import build_rewards

    r = load_recipe(ROOT / path)
    assert r.algorithm.name in ("nft", "grpo", "rft", "score", "reward_model", "selfj", "ssr")
    assert build_rewards(r.rewards)  # every reward name resolves


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes/accelerate").glob("*.yaml")))
def test_accelerate_profiles_are_valid_accelerate_configs(path):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(ROOT / path))
    assert cfg.num_processes >= 2
    assert cfg.distributed_type.value in ("MULTI_GPU", "DEEPSPEED")
    if "zero" in path:
        assert cfg.deepspeed_config["zero_stage"] == int(path.split("zero")[1][0])


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes/eval").glob("*.yaml")))
def test_eval_configs_bind_to_the_eval_flags(path):
    from selfimprove.cli import _apply_config, build_parser

    args = _apply_config(build_parser(), ["eval", "--config", str(ROOT / path)])
    assert args.model and args.turns == 2 and args.k >= 1 and args.reward == "math_correct"


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes/cct").glob("*.yaml")))
def test_cct_configs_bind_to_their_command_flags(path):
    from selfimprove.cli import _apply_config, build_parser

    command = "sft" if path.endswith("_sft.yaml") else "cct"
    args = _apply_config(build_parser(), [command, "--config", str(ROOT / path)])
    assert args.model == "tiny" and args.out
