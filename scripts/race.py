"""The learning race: held-out accuracy against training seconds, from the same tiny start, for
selfimprove NFT (recipes/quickstart.yaml), selfimprove GRPO (recipes/grpo/tiny_arith.yaml) and TRL's
GRPOTrainer (the GRPO recipe's shape: 16 prompts x 8 samples, 8 new tokens, no KL; `--trl-lr`).

The clock counts training-step time only: ours sums metrics' `time/step` (a step: generation,
reward, update); TRL's a callback's on_step_begin..on_step_end. At each mark (fine early: 2, 4, 6,
8, 10, 15, 20, 30, 45, 60, 90, 120 s, up to `--seconds`) the clock stops and the model is evaluated:
the same `--n` held-out arith problems, greedy, 8 new tokens, through selfimprove's `evaluate` with
an hf engine on the model object, for all three. Each method runs in its own process.

Prints accuracy gain (points over the shared start) at each evaluation, and as its last line the
times to `--gain` points, e.g. `ratio: TRL reaches +10.0 points at 8.0 s, selfimprove grpo at 4.0 s
(2.00x), nft at 6.0 s (1.33x)`.

    .venv/bin/python scripts/race.py [--seconds 60] [--n 500] [--gain 10] [--trl-lr 1e-4] [--grpo-lr 1e-4]
"""

from __future__ import annotations

import argparse
import json
import os
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from bench_vs_trl import math_correct  # noqa: E402

from reward import RewardContext, build_rewards  # noqa: E402
from selfimprove.config import DataConfig, EvalConfig, RewardSpec  # noqa: E402
from selfimprove.data import load_examples  # noqa: E402
from selfimprove.engines.hf import HFEngine  # noqa: E402
from selfimprove.evaluation import evaluate  # noqa: E402
from selfimprove.loop import train_step  # noqa: E402
from selfimprove.recipe import load_recipe  # noqa: E402
from selfimprove.resume import fresh  # noqa: E402
from selfimprove.state import setup  # noqa: E402
from selfimprove.tiny.model import ensure_tiny  # noqa: E402

MARKS = (2, 4, 6, 8, 10, 15, 20, 30, 45, 60, 90, 120)
RECIPES = {"nft": ROOT / "recipes/quickstart.yaml", "grpo": ROOT / "recipes/grpo/tiny_arith.yaml"}
METHODS = ("trl", "grpo", "nft")


def marks(seconds: float) -> list[float]:
    """The evaluation marks up to `seconds` (beyond 120 s: every 60 s), always ending at `seconds`."""
    out = [m for m in MARKS if m < seconds]
    while out and out[-1] + 60 < seconds and out[-1] >= MARKS[-1]:
        out.append(out[-1] + 60)
    return [*out, seconds]


def first_reaching(curve: list[tuple[float, float]], gain: float) -> float | None:
    """The clock of the first evaluation whose accuracy is at least `gain` points over the first's."""
    start = curve[0][1]
    return next((t for t, acc in curve if 100 * (acc - start) >= gain - 1e-9), None)  # accuracies are k / n: no float misses


def ratio_line(curves: dict[str, list[tuple[float, float]]], gain: float, seconds: float) -> str:
    t = {k: first_reaching(v, gain) for k, v in curves.items()}
    ours = [k for k in curves if k != "trl"]
    if t.get("trl") is None:
        head = f"ratio: TRL does not reach +{gain:.1f} points within {seconds:g} s"
        parts = [f"selfimprove {k} " + (f"at {t[k]:.1f} s" if t[k] is not None else "not either") for k in ours]
    else:
        head = f"ratio: TRL reaches +{gain:.1f} points at {t['trl']:.1f} s"
        parts = [(f"at {t[k]:.1f} s ({t['trl'] / t[k]:.2f}x)" if t[k] is not None else f"not within {seconds:g} s")
                 for k in ours]
        parts = [("selfimprove " if i == 0 else "") + f"{k} {p}" for i, (k, p) in enumerate(zip(ours, parts))]
    return ", ".join([head, *parts])


class Evaluator:
    """Held-out accuracy of a model object: the same problems, greedy decoding and reward for every method."""

    def __init__(self, n: int):
        data = DataConfig()
        self.examples = load_examples("arith", data, data.eval_split)[:n]
        self.rewards = build_rewards([RewardSpec(fn="math_correct")])
        self.cfg = EvalConfig(n=n, max_new_tokens=8)

    def __call__(self, model, tokenizer) -> float:
        engine = HFEngine(model, tokenizer)
        acc, _ = evaluate(engine, tokenizer, self.examples, self.rewards, self.cfg, RewardContext(tokenizer, engine))
        return acc


def run_ours(method: str, args) -> list[tuple[float, float]]:
    recipe = load_recipe(RECIPES[method], [
        "train.steps=1000000", "train.max_seconds=0", f"train.threads={args.threads}", "eval.before=false",
        "eval.after=false", "eval.every=0", "log.progress=false", "log.save_final=false", "log.traces_every=0",
        f"log.out={tempfile.mkdtemp()}", f"log.name=race-{method}",
        *([f"train.lr={args.grpo_lr}"] if method == "grpo" and args.grpo_lr else [])])
    state = setup(recipe, log=lambda *a: None)
    fresh(state)
    evaluate_now = Evaluator(args.n)
    curve, clock, step, todo = [(0.0, evaluate_now(state.model, state.tokenizer))], 0.0, 0, marks(args.seconds)
    while todo:
        state.step = step
        row, _ = train_step(state, step)
        clock, step = clock + row["time/step"], step + 1  # the step's own time: evaluations are not in it
        if clock >= todo[0]:
            curve.append((clock, evaluate_now(state.model, state.tokenizer)))
            todo = [m for m in todo if m > clock]
    return curve


def run_trl(args) -> list[tuple[float, float]]:
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(args.threads)
    path = str(ensure_tiny())
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    examples = load_examples("arith", DataConfig(), "train", n_train=16 * 4000, seed=0)
    ds = Dataset.from_list([{"prompt": ex.prompt, "answer": ex.answer} for ex in examples])
    evaluate_now = Evaluator(args.n)
    curve, todo = [(0.0, evaluate_now(model, tokenizer))], marks(args.seconds)

    class Clock(TrainerCallback):
        clock = 0.0

        def on_step_begin(self, a, s, c, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, s, c, **kw):
            self.clock += time.perf_counter() - self.t
            if self.clock >= todo[0]:
                curve.append((self.clock, evaluate_now(kw["model"], tokenizer)))
                todo[:] = [m for m in todo if m > self.clock]
                c.should_training_stop = not todo

    cfg = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=128, num_generations=8, max_completion_length=8,
        temperature=1.0, learning_rate=args.trl_lr, max_steps=4000, beta=0.0, use_cpu=True, report_to="none",
        logging_steps=10, save_strategy="no", gradient_checkpointing=False, bf16=False, seed=0,
        dataloader_num_workers=0,
    )
    GRPOTrainer(model=model, reward_funcs=math_correct, args=cfg, train_dataset=ds, processing_class=tokenizer,
                callbacks=[Clock()]).train()
    return curve


def measure(method: str, args) -> list[tuple[float, float]]:
    cmd = [sys.executable, __file__, "--child", method, "--seconds", str(args.seconds), "--n", str(args.n),
           "--threads", str(args.threads), "--trl-lr", str(args.trl_lr), "--grpo-lr", str(args.grpo_lr or 0)]
    out = subprocess.run(cmd, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not line:
        sys.exit(f"{method} failed:\n{(out.stderr or out.stdout)[-3000:]}")
    return [tuple(p) for p in json.loads(line[-1][7:])]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="training seconds per method")
    p.add_argument("--n", type=int, default=500, help="held-out problems")
    p.add_argument("--gain", type=float, default=10.0, help="points over the start for the ratio line")
    p.add_argument("--trl-lr", type=float, default=1e-4, help="TRL's learning rate")
    p.add_argument("--grpo-lr", type=float, default=None,
                   help="our GRPO's learning rate (default: recipes/grpo/tiny_arith.yaml's, 3e-5)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        warnings.filterwarnings("ignore")
        hf_logging.set_verbosity_error()
        print("RESULT " + json.dumps(run_trl(args) if args.child == "trl" else run_ours(args.child, args)))
        return
    ensure_tiny()
    curves = {m: measure(m, args) for m in METHODS}
    start = curves["trl"][0][1]
    print(f"held-out accuracy at the start: {start:.1%} ({args.n} problems, greedy); gain in points at "
          "training seconds (the clock at each evaluation)")
    for m, curve in curves.items():
        name = "TRL" if m == "trl" else f"selfimprove {m}"
        print(f"{name:16s} " + "  ".join(f"{t:5.1f}s {100 * (a - curve[0][1]):+5.1f}" for t, a in curve[1:]))
    print(ratio_line(curves, args.gain, args.seconds))


if __name__ == "__main__":
    main()
