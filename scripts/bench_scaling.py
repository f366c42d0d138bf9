"""How the cost of a GRPO step grows: selfimprove against TRL's GRPOTrainer on identical work, on CPU.

Each cell runs each side in its own process through scripts/bench_vs_trl.py's runners (same model,
prompts, reward, samples, max new tokens, temperature 1, lr, no KL, threads): `--steps` timed steps
after `--warmup` untimed ones; the median seconds per step of each side, the ratio TRL / ours, peak
RSS, our per-phase medians (metrics.jsonl) and the mean completion length.

The grid varies one axis at a time around a base cell; the 81-cell product would take hours here:

    base     8 prompts x 8 samples x 64 tokens, the tiny model on arith (math_correct): the real task
             at the size bench_vs_trl.py times, small enough that the 128-prompt cell stays ~1 min
    prompts  8, 32, 128 per step (the base otherwise)
    samples  4, 8, 16 per prompt
    length   8, 64, 256 tokens at most, on `r1m`: the tiny model's shape randomly initialised with
             its EOS logit pinned so completion lengths are about geometric, mean a third of the cap
             (the trained tiny model answers in ~5 tokens whatever the cap)
    model    r1m, r10m, r50m (about 1M, 10M and 50M parameters, Llama-shaped, the tiny tokenizer),
             64 tokens, EOS pinned the same way

The random models are built once into the selfimprove cache (`bench-models/`; same weights for both
sides) and are rewarded by `parity` (an even number of characters): arith is out of their reach, and
a reward that splits groups keeps our skipping of all-equal groups from doing less work than TRL.
`--variant NAME:key=value,...` also times our side with those recipe overrides in every cell
(e.g. `packed:train.packing=true`, `async:generation.max_staleness=1`).

    .venv/bin/python scripts/bench_scaling.py [--steps 3] [--warmup 2] [--out results.json] [--variant ...]
    .venv/bin/python scripts/bench_scaling.py --quick --no-trl     # a smoke test: two small cells
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_vs_trl import Work, measure, parse_variant  # noqa: E402

from selfimprove.tiny.model import cache_root, ensure_tiny  # noqa: E402

SIZES = {"r1m": (128, 4, 4, 512), "r10m": (256, 10, 8, 1024), "r50m": (512, 12, 8, 2048)}  # hidden, layers, heads, mlp
BASE = {"prompts": 8, "n": 8, "tokens": 64, "model": "tiny"}
AXES = {"prompts": (8, 32, 128), "n": (4, 8, 16), "tokens": (8, 64, 256), "model": ("r1m", "r10m", "r50m")}
PINNED = 4.0  # the constant hidden feature that carries the EOS logit (the other features start near 0.02)


def eos_probability(cap: int, mean: float) -> float:
    """The per-token EOS probability p whose geometric length, cut at cap, has this mean."""
    lo, hi = 1e-6, 1.0
    for _ in range(60):  # the truncated mean (1 - (1-p)^cap) / p falls as p grows
        p = (lo + hi) / 2
        lo, hi = (lo, p) if (1 - (1 - p) ** cap) / p < mean else (p, hi)
    return (lo + hi) / 2


def build_random(name: str, cap: int, log=print) -> str:
    """A randomly initialised Llama of SIZES[name] with the tiny tokenizer, its EOS logit pinned near the
    value that makes the completion length about geometric with mean cap / 3. Cached by (name, cap)."""
    out = cache_root() / "bench-models" / f"{name}-cap{cap}"
    if (out / "config.json").exists():
        return str(out)
    tok = AutoTokenizer.from_pretrained(str(ensure_tiny()))
    hidden, layers, heads, mlp = SIZES[name]
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=1024,
                         tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        # feature 0 is a constant: set in every embedding, never written by a layer, never read by one;
        # after the final norm it is about the same at every position, so lm_head column 0 adds a
        # nearly constant logit: the EOS probability per token barely depends on the text
        model.model.embed_tokens.weight[:, 0] = PINNED
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0] = 0
            layer.mlp.down_proj.weight[0] = 0
            layer.input_layernorm.weight[0] = 0
            layer.post_attention_layernorm.weight[0] = 0
        model.lm_head.weight[:, 0] = 0
        model.lm_head.weight[tok.eos_token_id] = 0
        ids = torch.randint(3, len(tok), (8, 48), generator=torch.Generator().manual_seed(0))
        h = model.model(input_ids=ids).last_hidden_state  # (8, 48, hidden)
        logits = model.lm_head(h)
        specials = [i for i in tok.all_special_ids if i != tok.eos_token_id]
        keep = torch.ones(len(tok), dtype=torch.bool)
        keep[[tok.eos_token_id, *specials]] = False
        log_z = torch.logsumexp(logits[..., keep], -1).mean().item()  # the other tokens' mass
        p = eos_probability(cap, cap / 3)
        h0 = h[..., 0].mean().item()
        model.lm_head.weight[tok.eos_token_id, 0] = (log_z + math.log(p / (1 - p))) / h0
        model.lm_head.weight[specials, 0] = -30.0 / h0  # no pad/bos mid-answer: both sides would treat it alike
    model.generation_config.pad_token_id = tok.pad_token_id
    log(f"built {name} ({sum(q.numel() for q in model.parameters()) / 1e6:.1f}M params, EOS p {p:.3f}) in {out}")
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return str(out)


def cells(quick: bool) -> list[dict]:
    """Base cell, then one axis varied at a time (each distinct cell once); --quick: two small cells."""
    if quick:
        return [{"prompts": 4, "n": 4, "tokens": 8, "model": "tiny"}, {"prompts": 4, "n": 4, "tokens": 16, "model": "r1m"}]
    out = [dict(BASE)]
    for axis, values in AXES.items():
        for v in values:
            cell = {**BASE, axis: v}
            if axis == "model":
                cell["tokens"] = BASE["tokens"]
            if axis == "tokens":
                cell["model"] = "r1m"
            if cell not in out:
                out.append(cell)
    return out


def run_cell(cell: dict, args, variants) -> dict:
    steps = args.warmup + args.steps
    model = "tiny" if cell["model"] == "tiny" else build_random(cell["model"], cell["tokens"])
    work = Work(prompts=cell["prompts"], n=cell["n"], new_tokens=cell["tokens"], lr=1e-5, steps=steps,
                threads=args.threads, model=model, reward="math_correct" if cell["model"] == "tiny" else "parity")
    sides = {"ours": measure("ours", work, timeout=args.timeout)}
    if not args.no_trl:
        sides["trl"] = measure("trl", work, timeout=args.timeout)
    for name, items in variants:
        sides[name] = measure("ours", work, items, timeout=args.timeout)
    row = {**cell, "sides": {}}
    for side, res in sides.items():
        if "error" in res:
            print(f"  {side} failed:\n{res['error'][-1500:]}", flush=True)
            row["sides"][side] = {"error": res["error"][-1500:]}
            continue
        timed = res["step_s"][args.warmup:] or res["step_s"]
        row["sides"][side] = {"s_per_step": statistics.median(timed), "peak_rss_mb": res["peak_rss_mb"],
                              **{k: res[k] for k in ("phases", "completion_len") if k in res}}
    return row


def s_of(row, side):
    return row["sides"].get(side, {}).get("s_per_step")


def describe(row: dict, variants) -> str:
    ours, trl = s_of(row, "ours"), s_of(row, "trl")
    parts = [f"{row['prompts']}x{row['n']}x{row['tokens']} {row['model']}:"]
    for side in ("ours", "trl"):
        if s_of(row, side) is not None:
            parts.append(f"{side} {s_of(row, side):.3f} s/step ({row['sides'][side]['peak_rss_mb']:.0f} MB)")
    if ours and trl:
        parts.append(f"ratio {trl / ours:.2f}")
    if ours:
        o = row["sides"]["ours"]
        parts.append(f"len {o['completion_len']:.1f}; phases " + " ".join(
            f"{k[5:]} {v:.3f}" for k, v in o["phases"].items() if k != "time/step" and v >= 0.0005))
    for name, _ in variants:
        if s_of(row, name) is not None:
            parts.append(f"{name} {s_of(row, name):.3f}" + (f" ({ours / s_of(row, name):.2f}x)" if ours else ""))
    return " ".join(parts)


def table(rows: list[dict], variants) -> str:
    head = ["prompts", "samples", "max tokens", "model", "mean len", "ours s/step", "TRL s/step", "TRL/ours",
            "ours MB", "TRL MB", "generate", "update", *[f"{name} s/step (x ours)" for name, _ in variants]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        o, t = row["sides"].get("ours", {}), row["sides"].get("trl", {})
        ours, trl = o.get("s_per_step"), t.get("s_per_step")

        def f(x, spec=".3f"):
            return "failed" if x is None else format(x, spec)

        cols = [row["prompts"], row["n"], row["tokens"], row["model"], f(o.get("completion_len"), ".1f"), f(ours),
                f(trl), f(trl / ours if ours and trl else None, ".2f"), f(o.get("peak_rss_mb"), ".0f"),
                f(t.get("peak_rss_mb"), ".0f"), f(o.get("phases", {}).get("time/generate")),
                f(o.get("phases", {}).get("time/update"))]
        for name, _ in variants:
            v = s_of(row, name)
            cols.append(f"{v:.3f} ({ours / v:.2f}x)" if v and ours else "failed")
        lines.append("| " + " | ".join(str(c) for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3, help="timed steps per cell and side (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocations, lazy imports)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="two small cells (a smoke test)")
    p.add_argument("--no-trl", action="store_true", help="our side only")
    p.add_argument("--variant", type=parse_variant, action="append", default=[], help="NAME:key=value,...")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per side and cell")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    t0 = time.perf_counter()
    ensure_tiny()
    rows = []
    for cell in cells(args.quick):
        row = run_cell(cell, args, args.variant)
        print(describe(row, args.variant), flush=True)
        rows.append(row)
    wall = time.perf_counter() - t0
    print(f"\n{len(rows)} cells, {args.steps} timed steps after {args.warmup} per side, {args.threads} threads, "
          f"{wall:.0f} s wall\n")
    print(table(rows, args.variant))
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args) | {"variant": args.variant}, "wall_s": wall,
                                              "cells": rows}, indent=1))


if __name__ == "__main__":
    main()
