"""One prepared GPU measurement (issue 5, item 7), and its CPU dry run.

Builds a Qwen2-shaped model with random weights locally (about 0.46B parameters on GPU; a 0.3M-parameter
one with --dry-run), then measures and prints one table:
  1. bare vLLM generation tokens/s (when vllm imports; else n/a),
  2. the same prompts through selfimprove's colocated vLLM engine (tokens/s) and its weight push
     (seconds, median of 3), and through the `hf` engine,
  3. the per-phase split (generate / reward / logprob / update / weight sync, median seconds per step)
     of a few NFT and SCoRe steps through `selfimprove.loop.run`, on the vLLM engine,
  4. the same for GRPO, and for GRPO with asynchronous rollout (`generation.max_staleness=1` on the hf
     engine's own copy: overlap of generation and update on one GPU) and packed updates (issue 14).
Without vllm the engine rows fall back to the `hf` engine (whose push is a no-op: it shares the
trainer's model). Random weights almost never emit EOS, so every sample runs to max_new_tokens: the
figures are throughput at a fixed length. A reward that varies on random text (a letter present or
not) keeps the update phase busy.

    python scripts/gpu_check.py [--dry-run] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from selfimprove.config import DataConfig, GenerationConfig  # noqa: E402
from selfimprove.data import encode_prompts, load_examples  # noqa: E402
from selfimprove.engines import Sampling, make_engine  # noqa: E402
from selfimprove.loop import run  # noqa: E402
from selfimprove.policy import load_model, load_tokenizer  # noqa: E402
from selfimprove.recipe import load_recipe  # noqa: E402
from selfimprove.tiny.model import CHAT_TEMPLATE, TinySpec, build_tokenizer  # noqa: E402


def build_model(out: Path, dry: bool) -> tuple[int, str]:
    tok = build_tokenizer(TinySpec())
    tok.chat_template = CHAT_TEMPLATE
    shape = (dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=256) if dry else  # head_dim 32: a size vLLM's CPU attention supports
             dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=2,
                  intermediate_size=5504))
    config = Qwen2Config(vocab_size=len(tok), max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, **shape)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return sum(p.numel() for p in model.parameters()), "bfloat16" if torch.cuda.is_available() else "float32"


def prompts_of(tokenizer, n: int) -> list[list[int]]:
    return encode_prompts(tokenizer, load_examples("arith", DataConfig(), "train", n_train=n, seed=5), 512)


def engine_measures(path: str, dtype: str, prompts, n: int, new: int, backend: str) -> tuple[float, float]:
    """(tokens/s, weight-push seconds) through selfimprove's engine: the hf engine, or the colocated
    vLLM engine fed by a trainer-side copy of the model (the push is the median of 3)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(path, dtype).to(device)
    engine = make_engine(backend, model, load_tokenizer(path), seed=0, gen=GenerationConfig(backend=backend),
                         model_path=path, dtype=dtype)
    sp = Sampling(n=n, temperature=1.0, max_new_tokens=new, batch_size=4096)
    engine.generate(prompts[:2], Sampling(n=1, max_new_tokens=4))  # warm-up (kernels, allocator)
    t = time.perf_counter()
    out = engine.generate(prompts, sp)
    if device == "cuda":
        torch.cuda.synchronize()
    tokens_per_s = sum(len(s.token_ids) for g in out for s in g) / (time.perf_counter() - t)
    pushes = []
    for _ in range(3):
        t = time.perf_counter()
        engine.load_weights()
        if device == "cuda":
            torch.cuda.synchronize()
        pushes.append(time.perf_counter() - t)
    engine.close()
    del engine, model
    if device == "cuda":
        torch.cuda.empty_cache()
    return tokens_per_s, sorted(pushes)[1]


def vllm_tokens_per_s(path: str, dtype: str, prompts, n: int, new: int):
    try:
        from vllm import LLM, SamplingParams
    except Exception as e:  # not installed on this machine: the row says so
        return f"n/a ({type(e).__name__})"
    llm = LLM(model=path, dtype=dtype, gpu_memory_utilization=0.3, max_model_len=1024, seed=0,
              enforce_eager=not torch.cuda.is_available())
    sp = SamplingParams(n=n, temperature=1.0, max_tokens=new, ignore_eos=True, logprobs=0)
    inputs = [{"prompt_token_ids": p} for p in prompts]
    llm.generate(inputs[:2], SamplingParams(max_tokens=4), use_tqdm=False)
    t = time.perf_counter()
    out = llm.generate(inputs, sp, use_tqdm=False)
    tokens = sum(len(c.token_ids) for o in out for c in o.outputs)
    seconds = time.perf_counter() - t
    llm.llm_engine.engine_core.shutdown()
    del llm
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return tokens / seconds


RECIPE = """
model: {{path: {path}, dtype: {dtype}}}
data: {{train: arith}}
generation: {{backend: {backend}, n: {n}, temperature: 1.0, max_new_tokens: {new}, batch_size: 4096, max_model_len: 1024}}
rewards:
  - {{fn: regex_format, kwargs: {{pattern: "(?s).*e.*"}}}}
algorithm: {{name: {algo}{extra}}}
train: {{steps: {steps}, prompts_per_step: {prompts}, micro_batch_size: {micro}, lr: 1.0e-6}}
log: {{out: {out}, name: {algo}, every: 1, traces_every: 0, save_final: false, progress: false}}
"""


# the update paths of issue 14 beside the default GRPO step: asynchronous rollout (the hf engine's own copy
# samples the next batch behind the update: the colocated vLLM engine sleeps during it, and a vLLM server's
# NCCL push needs a second GPU) and packed (padding-free) micro-batches by token budget
VARIANTS = {"grpo": [], "grpo_async_hf": ["generation.backend=hf", "generation.max_staleness=1"],
            "grpo_packed": ["train.packing=true", "train.micro_batch_tokens=16384"]}


def phases(path: str, dtype: str, algo: str, out: Path, dry: bool, backend: str, name: str | None = None,
           overrides: tuple = ()) -> dict:
    name = name or algo
    extra = ", stage1_steps: 1, instruction: reask" if algo == "score" else ""
    text = RECIPE.format(backend=backend, path=path, dtype=dtype, n=4 if dry else 8, new=8 if dry else 256, algo=algo,
                         extra=extra, steps=3 if algo != "grpo" else 5, prompts=4 if dry else 32,
                         micro=8 if dry else 16, out=out)
    out.mkdir(parents=True, exist_ok=True)
    recipe_file = out / f"{name}.yaml"
    recipe_file.write_text(text)
    run(load_recipe(recipe_file, [f"log.name={name}", *overrides]), log=lambda *a: None)
    rows = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
    keys = ("time/generate", "time/reward", "time/logprob", "time/update", "time/weight_sync", "time/step")
    rows = rows[1:] if len(rows) > 2 else rows  # the first step pays one-off costs (and async's first rollout)
    return {k.split("/")[1]: sorted(r[k] for r in rows)[len(rows) // 2] for k in keys}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dry-run", action="store_true", help="a 0.3M-parameter model, few tokens: checks the script on CPU")
    ap.add_argument("--out", default=None, help="write results.json here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    t0 = time.perf_counter()
    params, dtype = build_model(work / "model", args.dry_run)
    prompts = prompts_of(load_tokenizer(str(work / "model")), 16 if args.dry_run else 256)
    n, new = (4, 16) if args.dry_run else (8, 256)
    res = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
           "params_M": round(params / 1e6, 1), "dtype": dtype, "prompts": len(prompts), "n": n, "max_new_tokens": new}
    model = str(work / "model")
    res["vllm_tokens_per_s"] = vllm_tokens_per_s(model, dtype, prompts, n, new)
    backend = "hf" if isinstance(res["vllm_tokens_per_s"], str) else "vllm"
    res["engine"] = backend  # the engine of the rows below: the colocated vLLM engine where vllm imports
    res["engine_tokens_per_s"], res["weight_push_s"] = engine_measures(model, dtype, prompts, n, new, backend)
    res["hf_engine_tokens_per_s"] = (res["engine_tokens_per_s"] if backend == "hf" else
                                     engine_measures(model, dtype, prompts, n, new, "hf")[0])
    for algo in ("nft", "score"):
        res[f"{algo}_phases_s"] = phases(model, dtype, algo, work / "runs", args.dry_run, backend)
    for name, overrides in VARIANTS.items():
        try:
            res[f"{name}_phases_s"] = phases(model, dtype, "grpo", work / "runs", args.dry_run, backend, name, overrides)
        except Exception as e:  # one variant's failure is a figure too; the others still run
            res[f"{name}_phases_s"] = f"failed: {type(e).__name__}: {str(e)[:200]}"
    res["total_s"] = round(time.perf_counter() - t0, 1)
    print(f"gpu_check on {res['device']}: Qwen2-shaped {res['params_M']}M params, {dtype}, "
          f"{len(prompts)} prompts x {n} samples x {new} tokens")
    print(f"{'measure':32s} value")
    for key, value in res.items():
        if isinstance(value, dict):
            value = "  ".join(f"{k} {v:.3f}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:,.1f}"
        print(f"{key:32s} {value}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
