"""Property-based fuzzing of the command line (hypothesis): whatever a user types, `main` ends with exit code 0,
or with 2 and exactly one stderr line `error: ...`; no other code, no exception escaping `main`. A `train`
that succeeds saves only finite weights.

Cost control. Every example runs in-process on the small `mini_model`, on a tiny base (1 step, 2 prompts x 2
samples of 3 tokens, train.max_seconds=20). A valid value of a size knob can be huge (train.steps=10**9,
generation.n=10**6, --k 10**6, --epochs 1e308, model.lora_r=10**9, threads=10**6): that is a request for a long
run or a memory blow-up, not a mistake, so such values are clamped to a small cap (BOUNDS) while negative,
zero, non-integer, non-finite and wrongly typed values of the same knobs are still drawn. max_seconds alone
would not do: it does not bound one huge step, a huge LoRA rank or spawning 10**6 threads. `tiny` is only
fuzzed with at least one junk option or word: a valid `tiny` builds the embedded model (minutes).

Reproducible (derandomize=True, no example database) and bounded: no shrinking phase, whose time has no cap
here (each example may load a model); a failure is reported with the unshrunk example.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from selfimprove.algorithms.nft import Config as NFTConfig
from selfimprove.cli import main
from selfimprove.commands import COMMANDS
from selfimprove.config import Recipe
from selfimprove.hub import NAMED_MODELS
from selfimprove.options import describe
from tests.conftest import BASE_RECIPE


def fuzz_settings(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    phases=(Phase.explicit, Phase.generate), report_multiple_bugs=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.filter_too_much, HealthCheck.data_too_large])


# --------------------------------------------------------------------------- values

SPECIAL_STRINGS = ["", " ", "nan", "NaN", "null", "~", "true", "no", "1e-3", "1e999", ".inf", "-.inf", "0x10", "[",
                   "{", "}", "a: b", "- x", "'", '"', "{question}", "{answer}", "%s", "nft", "grpo", "rft", "auto",
                   "arith", "math_correct", "x.y:z", ":", "..", ".", "run", "-1", "0", "1", "é", "\t", "a\nb"]
ALPHABET = "abcxyz0129_-.:;,!? {}[]'\"#*&|=+é"  # no '/', '\\' or '~': a path stays inside the example's folder
STRINGS = st.one_of(st.sampled_from(SPECIAL_STRINGS),
                    st.text(alphabet=ALPHABET, max_size=12).filter(lambda s: s not in NAMED_MODELS))
INTS = st.one_of(st.integers(-3, 10), st.sampled_from([-2**63, -2**31, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63,
                                                       10**30]), st.integers())
FLOATS = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0.0, 1e308, -1e308, 5e-324, 1e-12, 0.5,
                                    0.999999, 1.0, 1.5, 2.0]), st.floats(allow_nan=True, allow_infinity=True))
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, STRINGS)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3),
                   st.dictionaries(st.sampled_from(["fn", "weight", "name", "kwargs", "a", "lr"]), SCALARS,
                                   max_size=2))
TYPED = {"int": INTS, "float": FLOATS, "bool": st.booleans(), "str": STRINGS, "str | null": STRINGS,
         "dict": st.dictionaries(STRINGS, SCALARS, max_size=2),
         "list": st.lists(st.fixed_dictionaries({"fn": st.sampled_from(["math_correct", "number_format", "chrf"])},
                                                optional={"weight": FLOATS, "name": STRINGS}), max_size=3),
         "Any": st.sampled_from(["nft", "grpo", "rft", "score", "ssr", {"name": "grpo"}, {"name": "rft", "omega": 1}])}


def value_for(type_name: str):
    """Mostly a value of the option's own type (edge cases included), else anything: both sides get fuzzed."""
    typed = TYPED.get(type_name)
    return st.one_of(typed, typed, VALUES) if typed is not None else VALUES


def keyed(types: dict, junk: list[str]):
    """(key, value) with a real key (its type known) or, less often, a junk one."""
    return st.sampled_from(sorted(types) + junk).flatmap(lambda k: st.tuples(st.just(k), value_for(types.get(k, ""))))

# the caps of the size knobs (see the module docstring): a value above its cap is replaced by the cap
BOUNDS = {"train.steps": 3, "train.prompts_per_step": 8, "generation.n": 8, "generation.max_new_tokens": 16,
          "generation.batch_size": 64, "eval.n": 8, "eval.max_new_tokens": 16, "eval.batch_size": 64,
          "train.threads": 4, "model.lora_r": 8, "model.lora_alpha": 10**6, "train.micro_batch_size": 64,
          "train.mini_batches": 16, "log.traces_per_step": 16,
          # subcommand options
          "n": 8, "k": 4, "rows": 8, "max_new_tokens": 8, "turns": 3, "epochs": 2, "batch_size": 16, "threads": 4}


def render(value) -> str:
    """A value as typed on the command line (YAML text; strings verbatim, read by the option's type)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf") if math.isinf(value) else repr(value)
    if isinstance(value, (int, str)):
        return str(value)
    return json.dumps(value)


def bounded(key: str, text: str) -> str:
    """`text` with a number above the cap of `key` replaced by the cap (other values untouched)."""
    cap = BOUNDS.get(key.lstrip("-").replace("-", "_"))
    if cap is None:
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    big = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and value > cap
    return str(cap) if big else text


# --------------------------------------------------------------------------- running main


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    threads = torch.get_num_threads()
    capsys.readouterr()
    try:
        code = main(argv)
    finally:
        torch.set_num_threads(threads)
    return code, capsys.readouterr().err


def assert_clean_outcome(code, err: str, argv: list[str]) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code in (0, 2), f"rc={code!r} for {argv!r}; stderr tail: {err[-800:]!r}"
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, \
            f"rc=2 for {argv!r} but stderr is not one 'error: ' line: {err[-800:]!r}"


class Examples:
    """A fresh folder per example (the command's working directory) under tmp_path."""

    def __init__(self, tmp_path: Path):
        self.root, self.count = tmp_path, itertools.count()

    def folder(self) -> Path:
        d = self.root / f"ex{next(self.count)}"
        d.mkdir()
        return d


@pytest.fixture
def examples(tmp_path):
    cwd = os.getcwd()
    yield Examples(tmp_path)
    os.chdir(cwd)


# --------------------------------------------------------------------------- train with random overrides

TRAIN_KEYS = {r[0]: r[1] for r in [*describe(Recipe), *describe(NFTConfig, "algorithm.")] if r[1] != "section"}
JUNK_KEYS = ["nosuch", "train.nosuch", "nosuch.lr", "train.lr.x", "train.", ".lr", "log..name", "TRAIN.LR", "train-lr",
             "algorithm.omega.x", "rewards.fn", "eval.reward.x", "x" * 40]
OVERRIDES = st.lists(keyed(TRAIN_KEYS, JUNK_KEYS), min_size=1, max_size=3)


def small_recipe(folder: Path, model: str, name: str) -> Path:
    recipe = json.loads(json.dumps(BASE_RECIPE))
    recipe["model"] = {"path": model}
    recipe["generation"] = {"n": 2, "max_new_tokens": 3}
    recipe["train"].update(steps=1, prompts_per_step=2, micro_batch_size=8, max_seconds=20)
    recipe["eval"].update(n=4, before=False, after=False)
    recipe["log"].update(out=str(folder / "runs"), name=name, progress=False)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def assert_checkpoints_finite(root: Path, pattern: str = "**/checkpoints/step-*/model/*.safetensors") -> None:
    for f in sorted(root.glob(pattern)):
        bad = [k for k, t in load_file(str(f)).items() if t.is_floating_point() and not torch.isfinite(t).all()]
        assert not bad, f"{f} holds non-finite tensors: {bad[:5]}"


@fuzz_settings(25)
@given(overrides=OVERRIDES)
@example(overrides=[("train.lr", 1e308)])  # finite but absurd: the weights overflow; never save them
@example(overrides=[("train.lr", 1e30), ("train.max_grad_norm", 1e308)])
@example(overrides=[("algorithm.max_log_ratio", 1e308), ("train.lr", 1.0)])
@example(overrides=[("algorithm.loss_agg", "constant"), ("algorithm.loss_constant", 5e-324)])
@example(overrides=[("rewards", [{"fn": "math_correct", "weight": 1e308}, {"fn": "number_format", "weight": -1e308}])])
@example(overrides=[("generation.temperature", 5e-324)])
@example(overrides=[("generation.top_p", 5e-324)])
@example(overrides=[("model.dtype", "float16")])
@example(overrides=[("model.lora_r", 2), ("model.lora_alpha", 10**6)])
@example(overrides=[("train.weight_decay", 1e308)])
@example(overrides=[("seed", 2**32 - 1), ("train.resume", "auto")])
@example(overrides=[("algorithm.rhat_min", 5e-324), ("algorithm.rhat_max", 0.999999)])
@example(overrides=[("train.on_nonfinite", "skip"), ("train.lr", 1e308)])
def test_train_with_random_overrides(overrides, mini_model, examples, capsys):
    folder = examples.folder()
    os.chdir(folder)  # a relative log.out or data path stays inside the example's folder
    recipe = small_recipe(folder, mini_model, f"fz-{folder.name}")
    argv = ["train", str(recipe), *[f"{k}={bounded(k, render(v))}" for k, v in overrides]]
    code, err = run_main(argv, capsys)
    assert_clean_outcome(code, err, argv)
    if code == 0:
        assert_checkpoints_finite(folder)
        # log.out='..' writes next to the example's folder
        assert_checkpoints_finite(folder.parent, "*/checkpoints/step-*/model/*.safetensors")


# --------------------------------------------------------------------------- the other subcommands with random flags

JUNK_OPTIONS = ["nosuch", "nn", "outt", "kk", "data_", "-", "_", "x" * 30, "n-n"]  # not 'config': `--config ''` is none


def flags(command: str, real: bool = True):
    """1-3 flags of `command`: real or junk option names, in every spelling of the dialect, with random values."""
    types = {r[0]: r[1] for r in describe(COMMANDS[command][0]) if r[0] != "force"} if real else {}
    form = st.sampled_from(["--{k} {v}", "--{k}={v}", "{k}={v}", "--{k} {v}", "--{k}={v}", "--{k}", "{v}"])

    def spell(item):
        (key, value), dashed, fmt = item
        key = key.replace("_", "-") if dashed else key
        text = bounded(key, render(value))
        return fmt.format(k=key, v=text).split(" ", 1) if fmt == "--{k} {v}" else [fmt.format(k=key, v=text)]

    one = st.tuples(keyed(types, JUNK_OPTIONS), st.booleans(), form).map(spell)
    return st.lists(one, min_size=1, max_size=3).map(lambda parts: [a for p in parts for a in p])


SFT_ROWS = [{"prompt": [{"role": "user", "content": f"{i}+1="}],
             "completion": [{"role": "assistant", "content": str(i + 1)}]} for i in range(2)]
JUDGE_ROWS = [{"question": "1+1=", "answer": "2"}, {"question": "2+2=", "answer": "5", "reference": "4"}]
OUTCOMES = [{"problem": p, "correct1": c, "correct2": not c} for p, c in (("a", True), ("b", False))]


def base_argv(command: str, folder: Path, model: str) -> list[str]:
    """A cheap valid invocation of `command` in `folder` (the random flags come after it: later wins)."""
    def jsonl(name, rows):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(folder / name)
    return {
        "eval": lambda: ["eval", model, "--data", "arith", "--n", "2", "--max-new-tokens", "2"],
        "cct": lambda: ["cct", model, "--data", "arith", "--out", "cct.jsonl", "--n", "2", "--k", "2", "--rows", "2",
                        "--keep-share", "0", "--max-new-tokens", "2"],
        "sft": lambda: ["sft", model, jsonl("sft.jsonl", SFT_ROWS), "--out", "sft_out", "--batch-size", "2"],
        "judge": lambda: ["judge", model, jsonl("rows.jsonl", JUDGE_ROWS), "--out", "scored.jsonl"],
        "metrics": lambda: ["metrics", jsonl("m.jsonl", OUTCOMES)],
        "tiny": lambda: ["tiny"],
    }[command]()


def check_command(command: str, extra: list[str], mini_model, examples, capsys) -> None:
    folder = examples.folder()
    os.chdir(folder)
    argv = [*base_argv(command, folder, mini_model), *extra]
    code, err = run_main(argv, capsys)
    assert_clean_outcome(code, err, argv)
    if command == "tiny":  # only junk was given: a valid `tiny` would have built the embedded model
        assert code == 2, f"{argv!r} did not fail"


@fuzz_settings(30)
@given(extra=flags("eval"))
@example(extra=["--turns", "2", "--k", "2", "--temperature", "1", "--plot", "p.png", "--traces", "t.jsonl"])
@example(extra=["--k", "3", "--pick", "self_judge", "--temperature", "5e-324"])
@example(extra=["--temperature", "1e308", "--seed", "4294967295"])
def test_eval_with_random_flags(extra, mini_model, examples, capsys):
    check_command("eval", extra, mini_model, examples, capsys)


@fuzz_settings(20)
@given(extra=flags("cct"))
@example(extra=["--plain-share", "0.999", "--rows", "8"])
def test_cct_with_random_flags(extra, mini_model, examples, capsys):
    check_command("cct", extra, mini_model, examples, capsys)


@fuzz_settings(12)
@given(extra=flags("sft"))
@example(extra=["--lr", "1e308"])
@example(extra=["--epochs", "5e-324"])
def test_sft_with_random_flags(extra, mini_model, examples, capsys):
    check_command("sft", extra, mini_model, examples, capsys)


@fuzz_settings(25)
@given(extra=flags("judge"))
@example(extra=["--template", "{question}{answer}{0}"])
@example(extra=["--question-column", "answer", "--batch-size", "1"])
def test_judge_with_random_flags(extra, mini_model, examples, capsys):
    check_command("judge", extra, mini_model, examples, capsys)


@fuzz_settings(40)
@given(extra=flags("metrics"))
@example(extra=["--correct-threshold", "5e-324", "--out", "m.json"])
def test_metrics_with_random_flags(extra, mini_model, examples, capsys):
    check_command("metrics", extra, mini_model, examples, capsys)


@fuzz_settings(40)
@given(extra=flags("tiny", real=False))
def test_tiny_with_junk(extra, mini_model, examples, capsys):
    check_command("tiny", extra, mini_model, examples, capsys)
