"""Each user mistake: one line naming the cause, exit code 2, no traceback, no run folder."""

import json

import pytest

from selfimprove.cli import main

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
    (dict(reward="tests.test_cli_errors:bad_reward_len"), [], r"returned 1 values for 4 completions"),
    (dict(reward="tests.test_cli_errors:bad_reward_nan"), [], r"returned nan for completion 0"),
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
    import re

    assert re.search(pattern, err), err
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_empty_dataset(tmp_path, capsys, mini_model):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, err = run_cli(tmp_path, capsys, model=mini_model, train=str(empty))
    assert code == 2 and err == f"error: data: {empty} is empty"
    assert not (tmp_path / "runs").exists()
