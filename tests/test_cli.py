"""The command line: one dialect for every subcommand (--config, flags, key=value, --help), and each user
mistake as one line naming the cause, exit code 2, no traceback, no run folder."""

import json
import re

import pytest

from selfimprove.cli import main, parse
from selfimprove.commands import COMMANDS, EvalOptions, TrainOptions

BASE = """
model: {{path: {model}}}
data: {{train: {train}, prompt_column: {pcol}, answer_column: answer}}
generation: {{n: 2, max_new_tokens: 4}}
rewards:
  - {{fn: {reward}}}
algorithm: {{name: nft}}
train: {{steps: 1, prompts_per_step: 2, micro_batch_size: 8}}
log: {{out: {out}, name: r, progress: false}}
"""


@pytest.fixture
def data_file(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) for i in range(4)) + "\n")
    return p


def run_cli(tmp_path, capsys, overrides=(), **fields):
    values = dict(model="tiny", train="arith", pcol="prompt", reward="math_correct", out=tmp_path / "runs")
    values.update(fields)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(BASE.format(**values))
    code = main(["train", str(recipe), *overrides])
    err = capsys.readouterr().err.strip()
    return code, err


def bad_reward_len(traces, ctx):
    return [1.0]


def bad_reward_nan(traces, ctx):
    return [float("nan")] * len(traces)


CASES = [
    (dict(), ["train.lr_rate=1"], r"unknown key 'train.lr_rate'; did you mean 'lr'"),
    (dict(), ["train.steps=many"], r"train.steps: expected an integer, got 'many'"),
    (dict(train="/nonexistent/d.jsonl"), [], r"data: file not found: /nonexistent/d.jsonl"),
    (dict(pcol="question"), [], r"has no prompt column 'question'"),
    (dict(pcol="prompt"), ["data.answer_column=solution"], r"row 1 has no answer column 'solution'"),
    (dict(reward="math_corect"), [], r"unknown reward 'math_corect'; did you mean 'math_correct'"),
    (dict(model="/nonexistent/model"), [], r"model: path does not exist: /nonexistent/model"),
    (dict(reward="tests.test_cli:bad_reward_len"), [], r"returned 1 values for 4 completions"),
    (dict(reward="tests.test_cli:bad_reward_nan"), [], r"returned nan for completion 0"),
    (dict(), ["data.max_prompt_tokens=3"], r"has \d+ tokens, more than data.max_prompt_tokens=3"),
    (dict(), ["generation.max_new_tokens=5000"], r"exceeds the model's context of 256 tokens"),
    (dict(), ["model.quantize=4bit"], r"model.quantize=4bit \(QLoRA\) trains LoRA adapters .*: set model.lora_r"),
    (dict(), ["model.quantize=4bit", "model.lora_r=8"],  # this machine: no bitsandbytes, no GPU
     r"model.quantize=4bit needs (bitsandbytes: pip install bitsandbytes|a CUDA GPU)"),
    (dict(), ["generation.backend=vllm"], r"generation.backend=vllm needs vLLM: pip install 'selfimprove\[vllm\]'"),
    (dict(), ["generation.mismatch_correction=clip"], r"generation.mismatch_correction must be none, is or tis"),
]


@pytest.mark.parametrize("fields,overrides,pattern", CASES)
def test_user_errors_exit_2_with_one_line(tmp_path, capsys, mini_model, data_file, fields, overrides, pattern):
    fields = dict(fields)
    if fields.get("model", "tiny") == "tiny":
        fields["model"] = mini_model
    if fields.get("pcol") or "reward" in fields and "tests." in fields["reward"]:
        fields.setdefault("train", str(data_file))
    code, err = run_cli(tmp_path, capsys, overrides, **fields)
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    assert re.search(pattern, err), err
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_empty_dataset(tmp_path, capsys, mini_model):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, err = run_cli(tmp_path, capsys, model=mini_model, train=str(empty))
    assert code == 2 and err == f"error: data: {empty} is empty"
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- the dialect of the subcommands


def test_flags_key_values_and_config_files_bind_the_same_options(tmp_path):
    cfg = tmp_path / "e.yaml"
    cfg.write_text("model: tiny\ndata: arith\nn: 50\nmax-new-tokens: 8\ninstruction: reask\n")
    o, _ = parse(EvalOptions, ["--config", str(cfg), "--n", "20", "temperature=0.5", "--instruction=Fix it: now",
                               "pick_kwargs={model: runs/x/judge}"], "eval")
    assert (o.model, o.data, o.n, o.max_new_tokens, o.temperature) == ("tiny", "arith", 20, 8, 0.5)
    assert o.instruction == "Fix it: now" and o.pick_kwargs == {"model": "runs/x/judge"}
    o, _ = parse(EvalOptions, ["m", "--data", "d.jsonl", "--answer-column", "null"], "eval")
    assert (o.model, o.data, o.answer_column) == ("m", "d.jsonl", None)
    o, _ = parse(EvalOptions, ["runs/a=b", "--data", "x=y.jsonl", "--temperature", "-1"], "eval")
    assert (o.model, o.data, o.temperature) == ("runs/a=b", "x=y.jsonl", -1.0)  # paths with '=' stay words
    o, overrides = parse(TrainOptions, ["--config", "r.yaml", "train.lr=1", "--train.steps", "5", "seed=2"], "train")
    assert o.recipe == "r.yaml" and overrides == ["train.lr=1", "train.steps=5", "seed=2"]  # the recipe's overrides
    o, _ = parse(EvalOptions, ["config=" + str(cfg), "model=m"], "eval")
    assert (o.model, o.n) == ("m", 50)
    assert parse(COMMANDS["tiny"][0], ["--no-force"], "tiny")[0].force is False
    assert parse(COMMANDS["tiny"][0], ["--force"], "tiny")[0].force is True


@pytest.mark.parametrize("argv,message", [
    (["eval", "tiny", "--data", "arith", "--nn", "3"], "unknown option '--nn'; did you mean 'n'"),
    (["eval", "tiny", "--data", "arith", "n=many"], "n: expected an integer, got 'many'"),
    (["eval", "tiny"], "selfimprove eval needs data (--data, or 'data:' in --config)"),
    (["eval", "--data", "arith"], "selfimprove eval needs model (an argument, or 'model:' in --config)"),
    (["eval", "tiny", "extra", "--data", "arith"], "unexpected argument 'extra'"),
    (["eval", "tiny", "--data", "arith", "--n"], "--n needs a value"),
    (["metrics"], "selfimprove metrics needs file"),
    (["sft", "tiny", "d.jsonl", "--epocs", "2"], "unknown option '--epocs'; did you mean 'epochs'"),
    (["train", "/nonexistent.yaml"], "recipe file not found: /nonexistent.yaml"),
    (["train", "recipes/quickstart.yaml", "data.task_options.ops=+"], "keys are at most 2 levels deep"),
    (["train", "recipes/quickstart.yaml", "algorithm.name=selfjj"], "unknown algorithm 'selfjj'; did you mean 'selfj'"),
    (["train", "recipes/quickstart.yaml", "--config", "recipes/quickstart.yaml"], "give the recipe once"),
    (["eval", "tiny", "--data", "arith", "--temperature", "-1"], "--temperature must be 0 (greedy) or >= 1e-05, got -1.0"),
    (["eval", "tiny", "--data", "arith", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
    (["eval", "tiny", "--data", "arith", "--turns", "2", "--k", "2", "--pick", "math_correct"], "does not go with --turns 2"),
    (["nope"], "unknown command 'nope'"),
])
def test_command_line_mistakes_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_config_file_keys_are_checked(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: tiny\ndata: arith\nturn: 2\n")
    assert main(["eval", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {cfg}: unknown key 'turn'; did you mean 'turns'? (the options of 'selfimprove eval')"
    cfg.write_text("- a list\n")
    assert main(["eval", "--config", str(cfg)]) == 2
    assert "a config is a mapping of keys" in capsys.readouterr().err


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_lists_every_option_with_type_and_default(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    cls = COMMANDS[command][0]
    for name, f in cls.__dataclass_fields__.items():
        assert re.search(rf"^  {name}\s+\S", out, re.M), name
        assert f.metadata.get("help"), f"{command} option '{name}' has no description"
    if command == "train":  # every recipe key of every section, algorithm and program
        for key in ("model.path", "train.lr", "eval.correct_threshold", "log.keep_last", "algorithm.omega",
                    "algorithm.stage1_steps", "algorithm.format_reward", "algorithm.teacher_template",
                    "algorithm.pairs_from", "train.epochs"):
            assert re.search(rf"^  {re.escape(key)}\s+\S.* = ", out, re.M), key


def test_main_help_lists_the_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in COMMANDS)
    assert main([]) == 2
