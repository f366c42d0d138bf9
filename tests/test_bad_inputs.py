"""A catalogue of bad inputs: every subcommand, every kind of input a user can get wrong.

The promise (README, "CLI"): a user mistake prints ONE line `error: ...` naming the cause, exits with code 2,
shows no traceback and leaves nothing behind on disk. Each case runs `selfimprove.cli.main(argv)` in-process on
the small `mini_model` (256-token context) and checks all four, the last against a snapshot of every file and
folder under tmp_path (and the shared mini model) before and after. A case is (id, build, *patterns): build(env)
writes the inputs and returns argv; every pattern is a loose case-insensitive regex that must match the line
(one names WHICH key / option / file / row, most also the concept), so the exact wording may change.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

import selfimprove.commands as commands
from selfimprove.cli import main
from tests.conftest import BASE_RECIPE

RANGE = r"finite|range|>|<|must|positive|negative|at least|at most|between|in \[|in \(|invalid|not allowed"
FINITE = r"finite|nan|inf"
UTF8 = r"utf-?8|decode|encoding|text"
MISSING = r"not found|does not exist|no such|missing|exist"
OUT = r"--out|\bout\b"


# --------------------------------------------------------------------------- the check

def snapshot(*roots: Path) -> dict:
    """(root, relative path) -> (sha256, size) for every file, 'dir' for every folder."""
    out = {}
    for root in map(str, roots):
        for dirpath, dirnames, filenames in os.walk(root):
            out.update({(root, os.path.relpath(os.path.join(dirpath, d), root)): "dir" for d in dirnames})
            for f in filenames:
                p = os.path.join(dirpath, f)
                data = os.readlink(p).encode() if os.path.islink(p) else Path(p).read_bytes()
                out[(root, os.path.relpath(p, root))] = (hashlib.sha256(data).hexdigest(), len(data))
    return out


def check(argv, pattern, tmp_path, capsys, extra_roots=()):
    """rc 2, one stderr line `error: ...` matching every regex of `pattern`, nothing on disk changed."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    roots = [tmp_path, *extra_roots]
    before = snapshot(*roots)
    threads = torch.get_num_threads()
    capsys.readouterr()  # drop what building the inputs printed
    try:
        code = main([str(a) for a in argv])
    finally:
        torch.set_num_threads(threads)
    captured = capsys.readouterr()
    err, lines = captured.err, [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, f"rc={code}; stderr={err[-1500:]!r}; stdout tail={captured.out[-300:]!r}"
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}: {err[-1500:]!r}"
    assert lines[0].startswith("error: ") and len(lines[0]) > len("error: "), lines[0]
    for p in patterns:
        assert re.search(p, lines[0], re.I), f"{p!r} does not match {lines[0]!r}"
    after = snapshot(*roots)
    changed = sorted({k[1] for k in set(before) | set(after) if before.get(k) != after.get(k)})
    assert not changed, f"files created, changed or removed: {changed[:20]}"


# --------------------------------------------------------------------------- inputs
GOOD_ROWS = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(4)]
SFT_ROWS = [{"prompt": [{"role": "user", "content": f"{i}+1="}],
             "completion": [{"role": "assistant", "content": str(i + 1)}]} for i in range(2)]
JUDGE_ROWS = [{"question": "1+1=", "answer": "2"}, {"question": "2+2=", "answer": "5", "reference": "4"}]
OUTCOMES = [{"problem": p, "correct1": c, "correct2": not c} for p, c in (("a", True), ("b", False))]
LONG_PROMPT = "1+1=" * 400  # far beyond the mini model's 256 tokens


class Env:
    """Writes a case's inputs under tmp_path and builds the argv of each subcommand on a cheap valid base."""

    def __init__(self, tmp_path: Path, mini_model: str, monkeypatch):
        self.tmp, self.model, self.monkeypatch = tmp_path, mini_model, monkeypatch

    def p(self, name: str) -> str:
        return str(self.tmp / name)

    def put(self, name: str, content=None) -> str:
        """bytes / str: a file; a list: JSONL rows; a dict: a folder of text files; None: nothing (a missing path)."""
        path = self.tmp / name
        if isinstance(content, dict):
            path.mkdir(parents=True, exist_ok=True)
            for fname, text in content.items():
                (path / fname).write_text(text)
        elif content is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, list):
                content = "".join(json.dumps(r) + "\n" for r in content)
            path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        return str(path)

    def recipe_dict(self, **sections) -> dict:
        recipe = {"model": {"path": self.model}, **json.loads(json.dumps(BASE_RECIPE))}
        recipe["train"]["steps"] = 1  # should a case wrongly pass, it stays short
        recipe["log"]["out"] = self.p("runs")
        for section, keys in sections.items():
            is_section = isinstance(keys, dict) and isinstance(recipe.get(section), dict)
            recipe[section] = {**recipe[section], **keys} if is_section else keys
        return recipe

    def train(self, *overrides, recipe: str | None = None, **sections) -> list:
        recipe = recipe or self.put("r.yaml", yaml.safe_dump(self.recipe_dict(**sections), sort_keys=False))
        return ["train", recipe, *overrides]

    def eval(self, *args, model: str | None = None) -> list:
        return ["eval", model or self.model, "--data", "arith", "--n", "2", "--max-new-tokens", "2", *args]

    def cct(self, *args, model: str | None = None) -> list:  # --keep-share 0 --rows 2: valid with any model
        return ["cct", model or self.model, "--data", "arith", "--out", self.p("cct.jsonl"), "--n", "2", "--k", "2",
                "--rows", "2", "--keep-share", "0", "--max-new-tokens", "2", *args]

    def sft(self, *args, model: str | None = None, data: str | None = None) -> list:
        return ["sft", model or self.model, data or self.put("sft.jsonl", SFT_ROWS), "--out", self.p("sft_out"),
                "--batch-size", "2", *args]

    def judge(self, *args, model: str | None = None, rows: str | None = None) -> list:
        return ["judge", model or self.model, rows or self.put("rows.jsonl", JUDGE_ROWS), "--out",
                self.p("scored.jsonl"), *args]

    def metrics(self, *args, file: str | None = None) -> list:
        return ["metrics", file or self.put("m.jsonl", OUTCOMES), *args]

    def forbid_work(self) -> None:
        """The case must fail before sampling or scoring anything: starting the work fails the case."""
        def boom(*args, **kwargs):
            raise AssertionError("the command started its work before rejecting the bad output path")
        for name in ("evaluate", "evaluate_two_turn", "best_of_n", "build_cct"):
            self.monkeypatch.setattr(commands, name, boom, raising=False)
        self.monkeypatch.setattr(commands.sj, "digit_probs", boom, raising=False)


def on(cmd: str, *args, _files: dict | None = None, _no_work: bool = False, **kw):
    """A case's build: Env.<cmd>(*args, **kw) after writing _files {name: content}; '{tmp}' in an argument
    is tmp_path, a keyword given as (name, content) is that file written; _no_work: see Env.forbid_work."""
    def build(e: Env) -> list:
        for name, content in (_files or {}).items():
            e.put(name, content)
        if _no_work:
            e.forbid_work()
        sub = [a.replace("{tmp}", str(e.tmp)) if isinstance(a, str) else a for a in args]
        return getattr(e, cmd)(*sub, **{k: e.put(*v) if isinstance(v, tuple) else v for k, v in kw.items()})
    return build


# --------------------------------------------------------------------------- recipes

RECIPES = [
    ("recipe-not-utf8", on("train", recipe=("bad.yaml", b"\xff\xfem\x00o\x00d\x00e\x00l\x00:")), r"bad\.yaml", UTF8),
    ("recipe-empty", on("train", recipe=("empty.yaml", "")), r"empty\.yaml", r"empty"),
    ("recipe-only-comment", on("train", recipe=("c.yaml", "# a comment\n")), r"c\.yaml", r"empty"),
    ("recipe-yaml-list", on("train", recipe=("list.yaml", "- a\n- b\n")), r"list\.yaml", r"mapping"),
    ("recipe-yaml-scalar", on("train", recipe=("sc.yaml", "42\n")), r"sc\.yaml", r"mapping"),
    ("recipe-invalid-yaml", on("train", recipe=("inv.yaml", "train: {lr: [1,\n  x: : 3\n")), r"inv\.yaml", r"yaml"),
    ("recipe-tab-indent", on("train", recipe=("tab.yaml", "train:\n\tlr: 1\n")), r"tab\.yaml", r"yaml"),
    ("recipe-duplicate-section", on("train", recipe=("d.yaml", "train: {}\ntrain: {}\n")), r"d\.yaml", r"dup.*train"),
    ("recipe-duplicate-key", on("train", recipe=("d.yaml", "train:\n  lr: 1\n  lr: 2\n")), r"d\.yaml", r"dup.*\blr\b"),
    ("recipe-unknown-key-override", on("train", "train.lrr=1"), r"train\.lrr"),
    ("recipe-unknown-section", on("train", trian={"lr": 1}), r"trian"),
    ("recipe-unknown-key-file", on("train", generation={"nn": 2}), r"generation\.nn"),
    ("recipe-wrong-type-override", on("train", "train.steps=abc"), r"train\.steps", r"integer"),
    ("recipe-wrong-type-file", on("train", generation={"n": "four"}), r"generation\.n", r"integer"),
    ("recipe-lr-list", on("train", "train.lr=[1]"), r"train\.lr", r"number"),
    ("recipe-bool-wrong", on("train", "log.progress=maybe"), r"log\.progress"),
    ("recipe-section-not-mapping", on("train", train=5), r"train"),
    ("recipe-override-3-levels", on("train", "train.x.y=1"), r"train\.x\.y"),
    ("recipe-missing-file", on("train", recipe=("nope.yaml", None)), r"nope\.yaml", MISSING),
    ("recipe-is-a-folder", on("train", recipe=("recipedir", {})), r"recipedir", MISSING + r"|folder|director"),
    ("recipe-none-given", lambda e: ["train"], r"recipe"),
    ("recipe-unknown-tracker", on("train", "log.report_to=[tensorboard, tensorbord]"), r"log\.report_to",
     r"tensorbord", r"accepted: tensorboard, wandb"),
]

# --------------------------------------------------------------------------- numeric ranges: "overrides:concept"
# (R: out of range, F: not finite; G, T: settings under which the method cannot learn); the message names the key

NUMERIC = """train.lr=.inf:F train.lr=.nan:F train.lr=-1:R train.lr=0:R train.max_grad_norm=-1:R train.max_grad_norm=0:R
seed=-1:R seed=4294967296:R train.adam_beta1=1.5:R train.adam_beta1=1:R train.adam_beta2=-0.1:R
train.weight_decay=-0.01:R train.threads=-1:R train.steps=-1:R train.prompts_per_step=0:R train.micro_batch_size=0:R
train.mini_batches=0:R train.warmup_steps=-3:R train.max_seconds=-1:R train.max_seconds=.inf:F
generation.temperature=-1:R generation.top_p=0:R generation.top_p=1.5:R generation.n=0:R
generation.max_new_tokens=0:R generation.batch_size=0:R generation.mismatch_cap=0.5:R eval.n=0:R
eval.temperature=-0.5:R eval.correct_threshold=.nan:F eval.max_new_tokens=0:R log.keep_last=0:R log.every=0:R
log.save_every=-1:R data.max_prompt_tokens=0:R model.lora_r=-2:R model.lora_dropout=1.5:R model.dtype=float64:R
algorithm.epsilon=0:R algorithm.correct_threshold=.nan:F train.on_nonfinite=ignore:R train.lr_schedule=exp:R
algorithm.name=grpo,generation.n=1:G algorithm.name=nft,generation.n=1:G
algorithm.name=grpo,generation.temperature=0:T algorithm.name=nft,generation.temperature=0:T""".split()
CONCEPT = {"R": RANGE, "F": FINITE, "G": r"group|>= ?2|two", "T": r"greedy|> ?0|same|identical"}
NUMERICS = [(f"range-{o.replace(',', '-')}", on("train", *o.split(",")), re.escape(o.split(",")[-1].split("=")[0]),
             CONCEPT[c]) for o, c in (x.rsplit(":", 1) for x in NUMERIC)]
NUMERICS += [(f"range-reward-weight-{w}", on("train", rewards=[{"fn": "math_correct", "weight": float(w)}]),
              r"rewards.*weight|weight", FINITE) for w in ("nan", "inf")]

# --------------------------------------------------------------------------- the run folder

def _readonly_out(e: Env) -> list:
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    os.chmod(e.put("ro", {}), 0o555)
    return e.train(f"log.out={e.p('ro/runs')}")


RUN = {"runs/run/config.yaml": "seed: 0\n", "runs/run/metrics.jsonl": '{"step": 1, "reward": 0.5}\n'}
RUN_FOLDER = [
    ("logname-absolute", on("train", "log.name={tmp}/abs"), r"log\.name"),
    ("logname-dotdot-slash", on("train", "log.name=../x"), r"log\.name"),
    ("logname-nested", on("train", "log.name=a/b"), r"log\.name"),
    ("logname-empty", on("train", "log.name="), r"log\.name"),
    ("logname-dotdot", on("train", "log.name=.."), r"log\.name"),
    ("logname-dot", on("train", "log.name=."), r"log\.name"),
    ("rerun-existing-run", on("train", "log.name=run", _files=RUN), r"\brun\b", r"exist", r"resume|overwrite"),
    ("resume-folder-without-checkpoint", on("train", "train.resume={tmp}/ckpt_empty", _files={"ckpt_empty": {}}),
     r"ckpt_empty", r"checkpoint|resume"),
    ("resume-missing-path", on("train", "train.resume={tmp}/no_ckpt"), r"no_ckpt", r"checkpoint|resume|exist|found"),
    ("logout-is-a-file", on("train", "log.out={tmp}/outfile", _files={"outfile": "x"}), r"outfile|log\.out",
     r"folder|director|file"),
    ("logout-read-only", _readonly_out, r"log\.out|\bro\b", r"permission|writ|read-only|cannot"),
]

# --------------------------------------------------------------------------- data, as data.train and as eval --data
ROW = '{"prompt": "1+1=", "answer": "2"}\n'
DATA = [
    ("nonutf8-jsonl", "nonutf8.jsonl", ROW.encode() + b"\xff\xfe{}\n", r"nonutf8\.jsonl", UTF8),
    ("jsonl-list-line", "ll.jsonl", ROW + "[1, 2]\n", r"ll\.jsonl", r"(line|row) 2", r"object|mapping|list"),
    ("jsonl-bad-line", "badline.jsonl", ROW + '{"prompt": \n', r"badline\.jsonl", r"(line|row) 2"),
    ("json-truncated", "trunc.json", '[{"prompt": "1+1=", "answer": "2"}, {"pro', r"trunc\.json", r"json"),
    ("json-number-element", "numelem.json", '[{"prompt": "1+1=", "answer": "2"}, 5]', r"numelem\.json",
     r"(row|line|element|item) 2|object|mapping"),
    ("json-not-array", "obj.json", '{"prompt": ["a", "b"], "answer": ["1", "2"]}', r"obj\.json"),
    ("parquet-corrupt", "corrupt.parquet", b"\x00\x13not parquet\xfe" * 8 + b"PAR1", r"corrupt\.parquet"),
    ("folder-empty", "emptydir", {}, r"emptydir", r"dataset|folder|director"),
    ("folder-random-txt", "txtdir", {"random.txt": "hi\n"}, r"txtdir", r"dataset|folder|director"),
    ("message-no-role", "norole.jsonl", [{"prompt": [{"content": "hi"}], "answer": "2"}], r"norole\.jsonl", r"role"),
    ("message-content-not-str", "badcontent.jsonl", [{"prompt": [{"role": "user", "content": 5}], "answer": "2"}],
     r"badcontent\.jsonl", r"content"),
    ("prompt-is-number", "numprompt.jsonl", [{"prompt": 5, "answer": "2"}], r"numprompt\.jsonl", r"prompt"),
    ("prompt-column-missing", "noprompt.jsonl", [{"question": "1+1=", "answer": "2"}], r"noprompt\.jsonl", r"prompt"),
    ("answer-column-missing", "noanswer.jsonl", [{"prompt": "1+1="}], r"noanswer\.jsonl", r"answer"),
    ("file-empty", "empty.jsonl", "", r"empty\.jsonl", r"empty|no rows"),
    ("suffix-txt", "data.txt", "1+1=\n", r"data\.txt|\.txt", r"unsupported|type|suffix"),
    ("csv-not-utf8", "latin.csv", b"prompt,answer\n1+1=,2\n\xe9\xe8=,3\n", r"latin\.csv", UTF8),
    ("csv-no-prompt", "noprompt.csv", "question,answer\n1+1=,2\n", r"noprompt\.csv", r"prompt"),
    ("file-missing", "missing.jsonl", None, r"missing\.jsonl", MISSING),
]
DATA_CASES = [c for i, name, content, *pat in DATA for c in (
    (f"train-data-{i}", on("train", f"data.train={{tmp}}/{name}", _files={name: content}), *pat),
    (f"eval-data-{i}", on("eval", "--data", f"{{tmp}}/{name}", _files={name: content}), *pat))]

LONG = {"long.jsonl": [{"prompt": "1+1=", "answer": "2"}, {"prompt": LONG_PROMPT, "answer": "2"}]}
DATA_CASES += [(f"{cid}-prompt-too-long", on(cmd, *args, _files=LONG), r"long\.jsonl|prompt|row 2|example",
                r"token|context|long") for cid, cmd, *args in [
    ("train-data", "train", "data.train={tmp}/long.jsonl"),
    ("train-data-beyond-context", "train", "data.train={tmp}/long.jsonl", "data.max_prompt_tokens=100000"),
    ("eval-data", "eval", "--data", "{tmp}/long.jsonl"),
    ("eval-turns2", "eval", "--data", "{tmp}/long.jsonl", "--turns", "2", "--k", "2", "--temperature", "1"),
    ("eval-bestofn", "eval", "--data", "{tmp}/long.jsonl", "--k", "4", "--pick", "math_correct", "--temperature", "1"),
    ("cct", "cct", "--data", "{tmp}/long.jsonl")]]

# --------------------------------------------------------------------------- models, for every command that loads one

TOKENIZER_FILES = ("tokenizer", "vocab", "merges", "special_tokens_map", "added_tokens", "chat_template")
MODELS = [  # (id, how the copy of the mini model is broken, patterns)
    ("weights-truncated", lambda m: os.truncate(m / "model.safetensors", os.path.getsize(m / "model.safetensors") // 2),
     r"m-weights-truncated"),
    ("unknown-model-type", lambda m: (m / "config.json").write_text(re.sub(
        r'"model_type": *"[^"]*"', '"model_type": "nosuchmodel"', (m / "config.json").read_text())),
     r"m-unknown-model-type|nosuchmodel"),
    ("no-tokenizer", lambda m: [f.unlink() for f in list(m.iterdir()) if f.name.startswith(TOKENIZER_FILES)],
     r"m-no-tokenizer", r"tokenizer"),
    ("no-config", lambda m: (m / "config.json").unlink(), r"m-no-config", r"config"),
    ("missing-path", None, r"m-missing-path", MISSING),
    ("config-not-json", lambda m: (m / "config.json").write_text('{"model_type": "llama", '),
     r"m-config-not-json|config\.json", r"json|config"),
]


def _model(name: str, breaks):
    def make(e: Env) -> str:
        if breaks is not None:
            shutil.copytree(e.model, e.tmp / name)
            breaks(e.tmp / name)
        return e.p(name)
    return make


MODEL_CASES = [c for i, b, *pat in MODELS for m in [_model(f"m-{i}", b)] for c in (
    (f"train-model-{i}", lambda e, m=m: e.train(f"model.path={m(e)}"), *pat),
    *((f"{cmd}-model-{i}", lambda e, m=m, cmd=cmd: getattr(e, cmd)(model=m(e)), *pat) for cmd in
      ("eval", "judge", "cct", "sft")))]

# --------------------------------------------------------------------------- rewards and algorithms

def _badmod(e: Env) -> list:
    e.put("badmod_xyz.py", "def f(:\n    return 1\n")
    e.monkeypatch.syspath_prepend(str(e.tmp))
    return e.train(rewards=[{"fn": "badmod_xyz:f"}])


REWARDS_ALGOS = [
    ("reward-empty-module", on("train", rewards=[{"fn": ":foo"}]), r":foo"),
    ("reward-relative-module", on("train", rewards=[{"fn": "..x:y"}]), r"\.\.x"),
    ("reward-not-callable", on("train", rewards=[{"fn": "math:pi"}]), r"math:pi", r"callable|function|not a"),
    ("reward-empty-attr", on("train", rewards=[{"fn": "math:"}]), r"math:"),
    ("reward-no-colon", on("train", rewards=[{"fn": "os.path"}]), r"os\.path"),
    ("reward-module-missing", on("train", rewards=[{"fn": "tests.no_such_helper:f"}]), r"no_such_helper"),
    ("reward-attr-missing", on("train", rewards=[{"fn": "json:nosuchfn_xyz"}]), r"nosuchfn_xyz"),
    ("reward-module-syntax-error", _badmod, r"badmod_xyz", r"syntax|invalid|import|load"),
    ("reward-unknown-kwarg", on("train", rewards=[{"fn": "math_correct", "kwargs": {"foo": 1}}]), r"foo"),
    ("rewards-empty-list", on("train", rewards=[]), r"reward"),
    ("rewards-duplicate-name", on("train", rewards=[{"fn": "math_correct"}, {"fn": "math_correct"}]), r"math_correct"),
    ("rewards-not-a-list", on("train", rewards={"fn": "math_correct"}), r"rewards"),
    ("reward-no-fn", on("train", rewards=[{"weight": 1.0}]), r"rewards|fn"),
    ("eval-reward-not-a-reward", on("train", "eval.after=true", "eval.reward=exact_match"), r"eval\.reward"),
    ("algorithm-colon", on("train", "algorithm.name=:foo"), r":foo"),
    ("algorithm-not-an-algorithm-module", on("train", "algorithm.name=os.path"), r"os\.path"),
    ("algorithm-relative", on("train", "algorithm.name=..x"), r"\.\.x"),
    ("algorithm-missing-module", on("train", "algorithm.name=nosuch_pkg_xyz.algo"), r"nosuch_pkg_xyz"),
    ("algorithm-name-number", on("train", "algorithm.name=5"), r"algorithm"),
    ("algorithm-bad-choice", on("train", "algorithm.omega=2"), r"omega"),
    ("algorithm-unknown-key", on("train", "algorithm.nosuch=1"), r"algorithm\.nosuch"),
]

# --------------------------------------------------------------------------- eval options

def _ecfg(text: str):
    return lambda e: ["eval", "--config", e.put("ecfg.yaml", f"model: {e.model}\ndata: arith\n{text}")]


BEST = ("--k", "4", "--pick", "math_correct", "--temperature", "1")  # best-of-N
EVAL = [
    ("eval-n-0", on("eval", "--n", "0"), r"--n\b|\bn\b", RANGE),
    ("eval-k-0", on("eval", "--k", "0"), r"--k\b|\bk\b", RANGE),
    ("eval-turns-3", on("eval", "--turns", "3"), r"turns", r"1 or 2|must"),
    ("eval-max-new-tokens-0", on("eval", "--max-new-tokens", "0"), r"max.new.tokens", RANGE),
    ("eval-max-new-tokens-over-context", on("eval", "--max-new-tokens", "1000"), r"max.new.tokens", r"context"),
    ("eval-temperature-neg", on("eval", "--temperature", "-1"), r"temperature", RANGE),
    ("eval-temperature-inf", on("eval", "--temperature", ".inf"), r"temperature", FINITE),
    ("eval-threads-neg", on("eval", "--threads", "-1"), r"threads", RANGE),
    ("eval-correct-threshold-nan", on("eval", "--correct-threshold", ".nan"), r"correct.threshold", FINITE),
    ("eval-seed-neg", on("eval", "--seed", "-1"), r"seed", RANGE),
    ("eval-seed-huge", on("eval", "--seed", "4294967296"), r"seed", RANGE),
    ("eval-out-missing-folder", on("eval", "--out", "{tmp}/no/res.json", _no_work=True), r"res\.json|" + OUT),
    ("eval-out-is-a-folder", on("eval", "--out", "{tmp}/outdir", _files={"outdir": {}}, _no_work=True),
     r"outdir|" + OUT),
    ("eval-traces-missing-folder", on("eval", "--traces", "{tmp}/no/t.jsonl", _no_work=True), r"t\.jsonl|traces"),
    ("eval-turns2-plot-missing-folder", on("eval", "--turns", "2", "--k", "2", "--temperature", "1", "--plot",
                                           "{tmp}/no/p.png", _no_work=True), r"p\.png|plot"),
    ("eval-bestofn-out-missing-folder", on("eval", *BEST, "--out", "{tmp}/no/best.json", _no_work=True),
     r"best\.json|" + OUT),
    ("eval-pick-without-k", on("eval", "--pick", "math_correct"), r"pick", r"--k|\bk\b"),
    ("eval-bestofn-unknown-pick", on("eval", "--k", "4", "--pick", "nosuch_reward"), r"nosuch_reward"),
    ("eval-bestofn-judge-without-model", on("eval", "--k", "4", "--pick", "judge_model"), r"judge_model|model"),
    ("eval-bestofn-unknown-pick-kwarg", on("eval", *BEST, "--pick-kwargs", "{foo: 1}"), r"foo"),
    ("eval-turns2-k-0", on("eval", "--turns", "2", "--k", "0"), r"--k\b|\bk\b", RANGE),
    ("eval-unknown-reward", on("eval", "--reward", "nosuch_reward"), r"nosuch_reward"),
    ("eval-unknown-option", on("eval", "--bogus", "1"), r"bogus"),
    ("eval-n-not-int", on("eval", "--n", "many"), r"\bn\b", r"integer"),
    ("eval-bad-task-options", on("eval", "--task-options", "{nosuch: 1}"), r"nosuch|task_options"),
    ("eval-config-n-abc", _ecfg("n: abc\n"), r"\bn\b", r"integer"),
    ("eval-config-task-options-5", _ecfg("task_options: 5\n"), r"task_options", r"mapping"),
    ("eval-config-max-new-tokens-list", _ecfg("max_new_tokens: [1]\n"), r"max_new_tokens", r"integer"),
    ("eval-config-unknown-key", _ecfg("nosuchkey: 1\n"), r"nosuchkey"),
    ("eval-config-not-utf8", lambda e: ["eval", "--config", e.put("ecfg.yaml", b"model: \xff\n")], r"ecfg\.yaml", UTF8),
    ("eval-config-missing", lambda e: ["eval", "--config", e.p("nocfg.yaml")], r"nocfg\.yaml", MISSING),
    ("eval-config-duplicate-key", lambda e: ["eval", "--config", e.put("ecfg.yaml", "model: a\nmodel: b\n")],
     r"ecfg\.yaml", r"duplicate"),
]

# --------------------------------------------------------------------------- metrics

def _m(content, *args):
    return on("metrics", *args, file=("m.jsonl", content))


METRICS = [
    ("metrics-missing-file", _m(None), r"m\.jsonl", MISSING),
    ("metrics-not-utf8", _m(b'{"problem": "a", "correct1": 1, "correct2": 0}\n\xff\n'), r"m\.jsonl", UTF8),
    ("metrics-line-not-json", _m(json.dumps(OUTCOMES[0]) + "\nnot json\n"), r"m\.jsonl", r"line 2"),
    ("metrics-line-a-list", _m("[1, 2]\n"), r"m\.jsonl", r"line 1"),
    ("metrics-row-missing-field", _m([{"problem": "a", "correct1": True}]), r"m\.jsonl", r"line 1", r"correct2"),
    ("metrics-not-a-truth-value", _m([{"problem": "a", "correct1": "yes", "correct2": 0}]), r"m\.jsonl", r"correct1"),
    ("metrics-empty", _m(""), r"m\.jsonl", r"empty|no rows"),
    ("metrics-file-is-a-folder", on("metrics", file=("mdir", {})), r"mdir"),
    ("metrics-out-missing-folder", on("metrics", "--out", "{tmp}/no/m.json"), r"m\.json|" + OUT),
    ("metrics-correct-threshold-inf", on("metrics", "--correct-threshold", ".inf"), r"correct.threshold", FINITE),
    ("metrics-trace-one-turn", _m([{"turns": [{"role": "assistant", "reward": 1}]}]), r"m\.jsonl", r"line 1"),
]

# --------------------------------------------------------------------------- cct
CCT = [
    ("cct-rows-0", on("cct", "--rows", "0"), r"--rows|\brows\b", RANGE),
    ("cct-k-0", on("cct", "--k", "0"), r"--k\b|\bk\b", RANGE),
    ("cct-keep-share-1.5", on("cct", "--keep-share", "1.5"), r"keep.share", RANGE),
    ("cct-keep-share-nan", on("cct", "--keep-share", ".nan"), r"keep.share", FINITE),
    ("cct-plain-share-neg", on("cct", "--plain-share", "-0.1"), r"plain.share", RANGE),
    ("cct-plain-share-1", on("cct", "--plain-share", "1.0"), r"plain.share", RANGE),
    ("cct-out-missing-folder", on("cct", "--out", "{tmp}/no/cct.jsonl", _no_work=True), r"cct\.jsonl|" + OUT),
    ("cct-n-0", on("cct", "--n", "0"), r"--n\b|\bn\b", RANGE),
    ("cct-max-new-tokens-0", on("cct", "--max-new-tokens", "0"), r"max.new.tokens", RANGE),
    ("cct-threads-neg", on("cct", "--threads", "-1"), r"threads", RANGE),
    ("cct-temperature-neg", on("cct", "--temperature", "-1"), r"temperature", RANGE),
    ("cct-seed-neg", on("cct", "--seed", "-1"), r"seed", RANGE),
    ("cct-threshold-nan", on("cct", "--correct-threshold", ".nan"), r"correct.threshold", FINITE),
    ("cct-data-missing", on("cct", "--data", "nosuchtask.jsonl"), r"nosuchtask", MISSING),
    ("cct-no-out", lambda e: ["cct", e.model, "--data", "arith"], r"\bout\b"),
]

# --------------------------------------------------------------------------- sft
LONG_SFT = [{**SFT_ROWS[0], "prompt": [{"role": "user", "content": "hi " * 999}]}]
SFT = [
    ("sft-epochs-neg", on("sft", "--epochs", "-1"), r"epochs", RANGE),
    ("sft-epochs-0", on("sft", "--epochs", "0"), r"epochs", RANGE),
    ("sft-epochs-nan", on("sft", "--epochs", ".nan"), r"epochs", FINITE),
    ("sft-lr-neg", on("sft", "--lr", "-1"), r"\blr\b", RANGE),
    ("sft-lr-inf", on("sft", "--lr", ".inf"), r"\blr\b", FINITE),
    ("sft-batch-size-0", on("sft", "--batch-size", "0"), r"batch.size", RANGE),
    ("sft-seed-neg", on("sft", "--seed", "-1"), r"seed", RANGE),
    ("sft-data-missing", on("sft", data=("nodata.jsonl", None)), r"nodata\.jsonl", MISSING),
    ("sft-rows-without-completion", on("sft", data=("d.jsonl", GOOD_ROWS)), r"d\.jsonl", r"prompt|completion",
     r"row 1"),
    ("sft-data-not-utf8", on("sft", data=("d.jsonl", b'{"prompt": "a", "completion": "b"}\n\xff\n')), r"d\.jsonl",
     UTF8),
    ("sft-data-empty", on("sft", data=("d.jsonl", "")), r"d\.jsonl", r"empty|no rows"),
    ("sft-data-line-not-json", on("sft", data=("d.jsonl", '{"prompt": "a", "completion": "b"}\nnope\n')),
     r"d\.jsonl", r"line 2|row 2"),
    ("sft-row-wrong-types", on("sft", data=("d.jsonl", [{"prompt": 5, "completion": [1]}])), r"d\.jsonl",
     r"row 1|prompt"),
    ("sft-out-parent-missing", on("sft", "--out", "{tmp}/no/deeper/out"), r"no/deeper|" + OUT),
    ("sft-row-beyond-context", on("sft", data=("d.jsonl", LONG_SFT)), r"d\.jsonl|row 1", r"token|context|long"),
    ("sft-no-out", lambda e: ["sft", e.model, e.put("sft.jsonl", SFT_ROWS)], r"\bout\b"),
]

# --------------------------------------------------------------------------- judge
JUDGE = [
    ("judge-batch-size-0", on("judge", "--batch-size", "0"), r"batch.size", RANGE),
    ("judge-threads-neg", on("judge", "--threads", "-1"), r"threads", RANGE),
    ("judge-input-missing", on("judge", rows=("norows.jsonl", None)), r"norows\.jsonl", MISSING),
    ("judge-input-line-not-json", on("judge", rows=("rows.jsonl", json.dumps(JUDGE_ROWS[0]) + "\n{oops\n")),
     r"rows\.jsonl", r"line 2"),
    ("judge-input-not-utf8", on("judge", rows=("rows.jsonl", b'{"question": "\xff", "answer": "2"}\n')),
     r"rows\.jsonl", UTF8),
    ("judge-row-missing-question", on("judge", rows=("rows.jsonl", [{"answer": "2"}])), r"rows\.jsonl", r"question",
     r"row 1|line 1"),
    ("judge-input-empty", on("judge", rows=("rows.jsonl", "")), r"rows\.jsonl", r"empty|no rows"),
    ("judge-out-missing-folder", on("judge", "--out", "{tmp}/no/scored.jsonl", _no_work=True),
     r"scored\.jsonl|" + OUT),
    ("judge-template-without-answer", on("judge", "--template", "Q: {question} rate it"), r"template", r"answer"),
    ("judge-template-unknown-field", on("judge", "--template", "Q: {question} A: {answer} {bogus}"), r"template",
     r"bogus"),
    ("judge-reference-template-without-reference", on("judge", "--reference-template", "Q: {question} A: {answer}"),
     r"reference.template", r"reference"),
    ("judge-model-not-a-model-folder", on("judge", model=("notamodel", {"readme.txt": "x"})), r"notamodel"),
    ("judge-question-beyond-context", on("judge", rows=("rows.jsonl", [{"question": LONG_PROMPT, "answer": "2"}])),
     r"rows\.jsonl|row 1|question", r"token|context|long"),
]

# --------------------------------------------------------------------------- tiny and the dispatcher
OTHER = [
    ("tiny-unknown-option", lambda e: ["tiny", "--size", "3"], r"size"),
    ("tiny-positional-word", lambda e: ["tiny", "word"], r"word"),
    ("tiny-unknown-key-value", lambda e: ["tiny", "size=3"], r"size"),
    ("eval-option-without-value", lambda e: ["eval", e.model, "--data"], r"--data"),
    ("judge-no-input", lambda e: ["judge", e.model], r"input"),
    ("metrics-extra-word", lambda e: ["metrics", "a.jsonl", "b.jsonl"], r"b\.jsonl"),
]

CASES = [pytest.param(c[1], c[2:], id=c[0]) for c in RECIPES + NUMERICS + RUN_FOLDER + DATA_CASES + MODEL_CASES
         + REWARDS_ALGOS + EVAL + METRICS + CCT + SFT + JUDGE + OTHER]


@pytest.fixture
def env(tmp_path, mini_model, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # an imported user module must not leave __pycache__
    monkeypatch.chdir(tmp_path)  # whatever a command writes to a relative path lands in the snapshot
    yield Env(tmp_path, mini_model, monkeypatch)
    for p in [p for p in tmp_path.rglob("*") if p.is_dir()]:  # a read-only folder would stop pytest cleaning up
        p.chmod(0o755)


@pytest.mark.parametrize("build,pattern", CASES)
def test_bad_input_is_one_line_exit_2_nothing_written(build, pattern, env, tmp_path, mini_model, capsys):
    check(build(env), pattern, tmp_path, capsys, extra_roots=[Path(mini_model)])


def test_the_catalogue_is_large_and_its_ids_distinct():
    assert len(CASES) >= 90 and len({c.id for c in CASES}) == len(CASES)
