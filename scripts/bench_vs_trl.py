"""selfimprove's grpo vs TRL's GRPOTrainer on the same work, side by side, on CPU.

Same tiny model (the embedded one), prompts (arith), reward (math_correct), batch (8 prompts x 8
samples, 16 new tokens), learning rate, steps and torch threads; no vLLM, no KL, no gradient
checkpointing on either side. Each side runs in its own subprocess (so peak RSS is its own).
Prints per-step times, the median, peak memory, and as its last line `ratio: X.XX` = TRL's
seconds per step / ours (above 1: selfimprove is faster).

    .venv/bin/python scripts/bench_vs_trl.py [--steps 20] [--threads 2]
"""

from __future__ import annotations

import argparse
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
from selfimprove.algorithms import grpo  # noqa: E402
from selfimprove.config import DataConfig, Recipe, RewardSpec  # noqa: E402
from selfimprove.data import load_examples  # noqa: E402
from selfimprove.loop import run  # noqa: E402
from selfimprove.tiny.model import ensure_tiny  # noqa: E402

PROMPTS, N, NEW_TOKENS, LR = 8, 8, 16, 1e-5


def run_ours(args) -> dict:
    r = Recipe()
    r.model.path, r.data.train = "tiny", "arith"
    r.algorithm = grpo.Config(kl_coef=0.0, loss_agg="token-mean")
    r.rewards = [RewardSpec(fn="math_correct")]
    r.generation.n, r.generation.max_new_tokens, r.generation.temperature = N, NEW_TOKENS, 1.0
    r.train.steps, r.train.prompts_per_step, r.train.micro_batch_size = args.steps, PROMPTS, PROMPTS * N
    r.train.lr, r.train.threads = LR, args.threads
    r.log.out, r.log.name, r.log.progress, r.log.save_final, r.log.traces_every = tempfile.mkdtemp(), "bench", False, False, 0
    r.source = "bench"
    summary = run(r, log=lambda *a: None)
    rows = [json.loads(line) for line in open(os.path.join(summary["run_dir"], "metrics.jsonl"))]
    return {"step_s": [row["time/step"] for row in rows],
            "phases": {k: statistics.median(row[k] for row in rows) for k in rows[0] if k.startswith("time/")}}


def run_trl(args) -> dict:
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(args.threads)
    path = str(ensure_tiny())
    examples = load_examples("arith", DataConfig(), "train", n_train=PROMPTS * (args.steps + 2), seed=0)
    ds = Dataset.from_list([{"prompt": ex.prompt, "answer": ex.answer} for ex in examples])

    def math_correct(prompts, completions, answer, **kw):
        return [1.0 if is_equivalent(extract_answer(c[0]["content"]), a) else 0.0 for c, a in zip(completions, answer)]

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, s, c, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, s, c, **kw):
            times.append(time.perf_counter() - self.t)

    cfg = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=PROMPTS * N, num_generations=N,
        max_completion_length=NEW_TOKENS, temperature=1.0, learning_rate=LR, max_steps=args.steps, beta=0.0,
        use_cpu=True, report_to="none", logging_steps=1, save_strategy="no", gradient_checkpointing=False,
        bf16=False, seed=0, dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(path), reward_funcs=math_correct, args=cfg,
                          train_dataset=ds, processing_class=AutoTokenizer.from_pretrained(path), callbacks=[Timer()])
    trainer.train()
    return {"step_s": times}


def child(which: str, args) -> None:
    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    result = run_ours(args) if which == "ours" else run_trl(args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", choices=["ours", "trl"])
    args = p.parse_args()
    if args.only:
        child(args.only, args)
        return
    ensure_tiny()  # build outside the timed runs
    results = {}
    for which in ("ours", "trl"):
        out = subprocess.run([sys.executable, __file__, "--only", which, "--steps", str(args.steps),
                              "--threads", str(args.threads)], capture_output=True, text=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode or not line:
            sys.exit(f"{which} failed:\n{out.stderr[-3000:]}")
        results[which] = json.loads(line[-1][7:])
    skip = 2  # first steps pay one-off costs (allocations, lazy imports)
    med = {k: statistics.median(v["step_s"][skip:]) for k, v in results.items()}
    print(f"workload: {PROMPTS} prompts x {N} samples, {NEW_TOKENS} new tokens, {args.steps} steps, "
          f"{args.threads} threads, tiny model, grpo (no KL), CPU")
    for k in ("ours", "trl"):
        steps = " ".join(f"{s:.3f}" for s in results[k]["step_s"])
        print(f"{k:5s} step s: {steps}")
    print(f"{'':5s} {'median s/step':>14s} {'steps/s':>8s} {'peak RSS MB':>12s}")
    for k in ("ours", "trl"):
        print(f"{k:5s} {med[k]:14.3f} {1 / med[k]:8.2f} {results[k]['peak_rss_mb']:12.0f}")
    if "phases" in results["ours"]:
        print("ours, median seconds per phase: " + ", ".join(f"{k[5:]} {v:.3f}" for k, v in results["ours"]["phases"].items()))
    print(f"ratio: {med['trl'] / med['ours']:.2f}")


if __name__ == "__main__":
    main()
