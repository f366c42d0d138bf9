"""selfimprove's grpo vs TRL's GRPOTrainer on the same work, side by side, on CPU.

Same model, prompts (arith), reward, batch (prompts x samples), max new tokens, temperature 1,
learning rate, steps and torch threads; no vLLM, no KL, no gradient checkpointing on either side.
Each side runs in its own subprocess (so peak RSS is its own). Prints per-step times, the median
(the first 2 steps skipped: one-off costs), peak memory, and as its last line `ratio: X.XX` = TRL's
seconds per step / ours (above 1: selfimprove is faster).

Shapes: `default` (8 prompts x 8 samples, 16 new tokens, lr 1e-5, 20 steps) and `quickstart`
(recipes/quickstart.yaml's 16 x 8, 8 new tokens, lr 1e-4, 100 steps: the first 100 steps, where few
groups are all-equal yet). `--variant NAME:key=value,...` also times our side with those recipe
overrides (e.g. `packed:train.packing=true`); each variant's median and its ratio to our default are
printed before the ratio line.

    .venv/bin/python scripts/bench_vs_trl.py [--shape quickstart] [--steps N] [--threads 2] [--variant ...]

`Work`, `measure` and `median_s` are the runners scripts/bench_scaling.py reuses.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reward.math import extract_answer, is_equivalent  # noqa: E402
from selfimprove.config import DataConfig  # noqa: E402
from selfimprove.data import load_examples  # noqa: E402
from selfimprove.loop import run  # noqa: E402
from selfimprove.options import apply_overrides  # noqa: E402
from selfimprove.recipe import bind_recipe  # noqa: E402
from selfimprove.tiny.model import ensure_tiny  # noqa: E402

SKIP = 2  # first steps pay one-off costs (allocations, lazy imports)


@dataclasses.dataclass
class Work:
    """One side's workload; both sides get the same one."""

    prompts: int = 8
    n: int = 8
    new_tokens: int = 16
    lr: float = 1e-5
    steps: int = 20
    threads: int = 2
    model: str = "tiny"  # "tiny" or a model folder
    reward: str = "math_correct"  # or "parity" (models that cannot do arith: a reward that varies in a group)


SHAPES = {"default": Work(), "quickstart": Work(prompts=16, n=8, new_tokens=8, lr=1e-4, steps=100)}


def _text(completion) -> str:
    return completion if isinstance(completion, str) else completion[0]["content"]


def math_correct(completions, answer, **kw) -> list[float]:
    return [1.0 if is_equivalent(extract_answer(_text(c)), a) else 0.0 for c, a in zip(completions, answer)]


def parity(completions, **kw) -> list[float]:
    """1 for a completion of an even number of characters: random text gets mixed groups, so neither
    side can skip an all-equal group."""
    return [float(len(_text(c)) % 2 == 0) for c in completions]


def model_path(work: Work) -> str:
    return str(ensure_tiny()) if work.model == "tiny" else work.model


def run_ours(work: Work, overrides: list[str]) -> dict:
    reward = "math_correct" if work.reward == "math_correct" else f"bench_vs_trl:{work.reward}"
    raw = {"seed": 0, "model": {"path": work.model}, "data": {"train": "arith"},
           "rewards": [{"fn": reward}], "algorithm": {"name": "grpo", "kl_coef": 0.0, "loss_agg": "token-mean"},
           "generation": {"n": work.n, "max_new_tokens": work.new_tokens, "temperature": 1.0},
           "train": {"steps": work.steps, "prompts_per_step": work.prompts, "micro_batch_size": work.prompts * work.n,
                     "lr": work.lr, "threads": work.threads},
           "log": {"out": tempfile.mkdtemp(), "name": "bench", "progress": False, "save_final": False,
                   "traces_every": 0}}
    recipe = bind_recipe(apply_overrides(raw, overrides), "bench")  # selfimprove's own key=value binding
    summary = run(recipe, log=lambda *a: None)
    rows = [json.loads(line) for line in open(os.path.join(summary["run_dir"], "metrics.jsonl"))]
    timed = rows[SKIP:] or rows
    return {"step_s": [row["time/step"] for row in rows],
            "phases": {k: statistics.median(row[k] for row in timed) for k in rows[0] if k.startswith("time/") and k != "time/elapsed"},
            "completion_len": statistics.mean(row["completion_len"] for row in rows)}


def run_trl(work: Work) -> dict:
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(work.threads)
    path = model_path(work)
    examples = load_examples("arith", DataConfig(), "train", n_train=work.prompts * (work.steps + 2), seed=0)
    ds = Dataset.from_list([{"prompt": ex.prompt, "answer": ex.answer} for ex in examples])
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, s, c, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, s, c, **kw):
            times.append(time.perf_counter() - self.t)

    cfg = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=work.prompts * work.n, num_generations=work.n,
        max_completion_length=work.new_tokens, temperature=1.0, learning_rate=work.lr, max_steps=work.steps,
        beta=0.0, use_cpu=True, report_to="none", logging_steps=1, save_strategy="no",
        gradient_checkpointing=False, bf16=False, seed=0, dataloader_num_workers=0,
    )
    reward = math_correct if work.reward == "math_correct" else parity
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(path), reward_funcs=reward, args=cfg,
                          train_dataset=ds, processing_class=AutoTokenizer.from_pretrained(path), callbacks=[Timer()])
    trainer.train()
    return {"step_s": times}


def child(which: str, work: Work, overrides: list[str]) -> None:
    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    result = run_ours(work, overrides) if which == "ours" else run_trl(work)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def measure(which: str, work: Work, overrides: list[str] | None = None, timeout: float | None = None) -> dict:
    """One side in its own process: {"step_s", "peak_rss_mb", ours also "phases", "completion_len"};
    {"error": tail of its output} when it fails."""
    cmd = [sys.executable, __file__, "--child", which, "--work", json.dumps(dataclasses.asdict(work))]
    for item in overrides or []:
        cmd += ["--override", item]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not line:
        return {"error": (out.stderr or out.stdout)[-3000:]}
    return json.loads(line[-1][7:])


def median_s(result: dict) -> float:
    steps = result["step_s"]
    return statistics.median(steps[SKIP:] if len(steps) > SKIP else steps)


def parse_variant(text: str) -> tuple[str, list[str]]:
    """`NAME:key=value,key=value` -> (NAME, ["key=value", ...])."""
    name, sep, rest = text.partition(":")
    items = [s.strip() for s in rest.split(",") if s.strip()]
    if not sep or not name or not items or not all("=" in s for s in items):
        raise argparse.ArgumentTypeError(f"--variant '{text}' is not of the form NAME:section.key=value,...")
    return name, items


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", choices=sorted(SHAPES), default="default")
    p.add_argument("--steps", type=int, help="default: 20 (default shape), 100 (quickstart)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variant", type=parse_variant, action="append", default=[], help="NAME:key=value,...")
    p.add_argument("--child", choices=["ours", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--override", action="append", default=[], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, Work(**json.loads(args.work)), args.override)
        return
    work = dataclasses.replace(SHAPES[args.shape], threads=args.threads)
    work.steps = args.steps or work.steps
    ensure_tiny()  # build outside the timed runs
    results = {"ours": measure("ours", work), "trl": measure("trl", work)}
    results.update({name: measure("ours", work, items) for name, items in args.variant})
    for k, v in results.items():
        if "error" in v:
            sys.exit(f"{k} failed:\n{v['error']}")
    med = {k: median_s(v) for k, v in results.items()}
    print(f"workload ({args.shape}): {work.prompts} prompts x {work.n} samples, {work.new_tokens} new tokens, "
          f"lr {work.lr:g}, {work.steps} steps (median over steps {SKIP + 1}-{work.steps}), {work.threads} threads, "
          "tiny model, grpo (no KL), CPU")
    for k in results:
        print(f"{k:5s} step s: " + " ".join(f"{s:.3f}" for s in results[k]["step_s"]))
    print(f"{'':5s} {'median s/step':>14s} {'steps/s':>8s} {'peak RSS MB':>12s}")
    for k in results:
        print(f"{k:5s} {med[k]:14.3f} {1 / med[k]:8.2f} {results[k]['peak_rss_mb']:12.0f}")
    print("ours, median seconds per phase: " + ", ".join(f"{k[5:]} {v:.3f}" for k, v in results["ours"]["phases"].items()))
    for name, items in args.variant:
        print(f"variant {name} ({','.join(items)}): {med[name]:.3f} s/step, {med['ours'] / med[name]:.2f}x our default")
    print(f"ratio: {med['trl'] / med['ours']:.2f}")


if __name__ == "__main__":
    main()
