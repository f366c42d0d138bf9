"""Packed against padded updates: seconds of one update (forward + backward) over a batch of mixed lengths.

64 sequences (prompt 12 tokens, completions 1..64 tokens, uniform), one micro-batch, the update's loss on the
completions' log-probs. Models: the embedded tiny model, and a randomly initialised Llama of about 10M
parameters (hidden 256, 8 layers) with the tiny tokenizer's vocabulary. Prints the median of --repeats timed
updates per side (after one warm-up) and, per model, `speed-up: X.XX` = padded seconds / packed seconds.

    .venv/bin/python scripts/bench_packing.py [--sequences 64] [--max-completion 64] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from selfimprove.batch import collate
from selfimprove.packing import logprobs, use_packing
from selfimprove.policy import load_model
from selfimprove.tiny.model import ensure_tiny
from selfimprove.trace import Trace, Turn


def traces(vocab: int, n: int, prompt: int, longest: int, seed: int = 0) -> list[Trace]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        comp = [rng.randrange(3, vocab) for _ in range(rng.randint(1, longest))]
        out.append(Trace(id=str(i), group_id=str(i // 8), task="t", prompt=[], turns=[
            Turn("user", "", [rng.randrange(3, vocab) for _ in range(prompt)]),
            Turn("assistant", "", comp, [0.0] * len(comp), trainable=True)]))
    return out


def update(model, batch, packed: bool) -> float:
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    logp = logprobs(model, batch, {"entropy_sum": 0.0, "entropy_tokens": 0}, packed)
    (-(logp * batch["mask"]).sum() / batch["mask"].sum()).backward()
    return time.perf_counter() - t0


def time_updates(model, batch, repeats: int) -> tuple[float, float]:
    """Median seconds (padded, packed), the two sides alternating so that a busy machine slows both alike."""
    update(model, batch, False), update(model, batch, True)  # warm-up
    times = [(update(model, batch, False), update(model, batch, True)) for _ in range(repeats)]
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=12)
    ap.add_argument("--max-completion", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = ensure_tiny()
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    models = {"tiny": load_model(str(path)),
              "llama-10M": LlamaForCausalLM(LlamaConfig(
                  vocab_size=len(tok), hidden_size=256, intermediate_size=1280, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True))}
    trs = traces(len(tok), args.sequences, args.prompt, args.max_completion)
    batch = collate(trs, tok.pad_token_id)
    real = int(batch["attention_mask"].sum())
    print(f"{args.sequences} sequences, {real} tokens, padded to {batch['input_ids'].numel()} "
          f"({1 - real / batch['input_ids'].numel():.0%} padding); threads {args.threads}")
    for name, model in models.items():
        model.train()
        assert use_packing("true", model, len(tok), "cpu")
        n_params = sum(p.numel() for p in model.parameters())
        padded, packed = time_updates(model, batch, args.repeats)
        print(f"{name} ({n_params / 1e6:.1f}M): padded {padded * 1000:.1f} ms, packed {packed * 1000:.1f} ms, "
              f"speed-up: {padded / packed:.2f}")


if __name__ == "__main__":
    main()
