"""Shared-prefix against plain padded forwards: one update forward+backward (GRPO's token log-probs and a
token-mean loss) of the quickstart's shape (16 prompts x 8 samples, 8 new tokens, sampled by the tiny model
itself), alternating the two paths so a busy machine slows both alike. Prints the median milliseconds of each
and, as its last line, `speedup: X.XX` (plain / shared).

    .venv/bin/python scripts/bench_prefix.py [--prompts 16] [--n 8] [--new-tokens 8] [--reps 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selfimprove import prefix  # noqa: E402
from selfimprove.batch import collate, token_logprobs  # noqa: E402
from selfimprove.config import DataConfig  # noqa: E402
from selfimprove.data import load_examples  # noqa: E402
from selfimprove.engines.base import Sampling  # noqa: E402
from selfimprove.engines.hf import HFEngine  # noqa: E402
from selfimprove.policy import load_model, load_tokenizer  # noqa: E402
from selfimprove.rollout import sample  # noqa: E402
from selfimprove.tiny.model import ensure_tiny  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = str(ensure_tiny())
    tok = load_tokenizer(path)
    model = load_model(path, "float32")
    examples = load_examples("arith", DataConfig(), "train", n_train=args.prompts, seed=0)[: args.prompts]
    traces = sample(HFEngine(model, tok, seed=0), tok, examples,
                    Sampling(n=args.n, max_new_tokens=args.new_tokens), tag="b", max_prompt_tokens=512)
    batch = collate(traces, tok.pad_token_id)
    model.train()
    real = int(batch["attention_mask"].sum())
    unique = sum(len(p) for p in prefix.plan(batch["input_ids"], batch["prefix_len"])[0])
    shared_tokens = unique + int((batch["attention_mask"].sum(-1) - batch["prefix_len"]).sum())
    print(f"{len(traces)} sequences, width {batch['input_ids'].shape[1]}: {batch['input_ids'].numel()} padded "
          f"tokens, {real} real; shared-prefix forwards run {shared_tokens}")

    def step(on: bool) -> float:
        prefix.register([model], on)
        model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        lp = token_logprobs(model, batch)
        ((lp * batch["mask"]).sum() / batch["mask"].sum()).backward()
        return time.perf_counter() - t

    times: dict[bool, list[float]] = {False: [], True: []}
    for on in (False, True):  # warm-up
        step(on)
    for _ in range(args.reps):
        for on in (False, True):
            times[on].append(step(on))
    plain, shared = (1000 * statistics.median(times[k]) for k in (False, True))
    print(f"plain: {plain:.1f} ms   shared prefix: {shared:.1f} ms (median of {args.reps})")
    print(f"speedup: {plain / shared:.2f}")


if __name__ == "__main__":
    main()
