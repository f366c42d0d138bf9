"""The vLLM engines on vLLM's CPU build (venv B: `bash scripts/setup_vllm.sh`; `scripts/test.sh` runs
these there with `-m vllm`). Skipped where vLLM is not installed.

The tiny model in float32 on both sides: greedy tokens must be identical and log-probs equal to
float rounding; after a push the engine must follow the trainer's new weights.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

from reward import RewardContext, build_rewards
from selfimprove.config import DataConfig, EvalConfig, GenerationConfig, RewardSpec
from selfimprove.data import encode_prompts, load_examples
from selfimprove.engines import Sampling, make_engine
from selfimprove.evaluation import evaluate
from selfimprove.policy import load_model, load_tokenizer
from selfimprove.tiny.model import ensure_tiny

ROOT = Path(__file__).resolve().parents[2]
# the environment before any engine starts: vLLM writes LOCAL_WORLD_SIZE=1, LD_PRELOAD and its own
# ids into os.environ, and a launched child that inherits them hangs in its rendezvous
BASE_ENV = dict(os.environ)
GREEDY = Sampling(n=1, temperature=0, max_new_tokens=8)


@pytest.fixture(scope="module")
def tiny():
    path = str(ensure_tiny(log=lambda *a: None))
    tok = load_tokenizer(path)
    prompts = encode_prompts(tok, load_examples("arith", DataConfig(), "test")[:24], 512)
    return path, tok, prompts


@pytest.fixture(scope="module")
def engines(tiny):
    path, tok, _ = tiny
    model = load_model(path)
    engine = make_engine("vllm", model, tok, gen=GenerationConfig(backend="vllm", weight_bucket_mb=1),
                         model_path=path, dtype="float32")
    yield model, engine, make_engine("hf", model, tok)
    engine.close()


def assert_same(a, b, tol=1e-4):
    for x, y in zip(a, b, strict=True):
        assert [s.token_ids for s in x] == [s.token_ids for s in y]
        assert [s.finish_reason for s in x] == [s.finish_reason for s in y]
        for s, t in zip(x, y):
            assert s.logprobs == pytest.approx(t.logprobs, abs=tol)


def test_greedy_outputs_match_the_hf_engine(engines, tiny):
    model, vllm_engine, hf = engines
    prompts = tiny[2]
    out = vllm_engine.generate(prompts, GREEDY)
    assert_same(out, hf.generate(prompts, GREEDY))
    assert sum(s.finish_reason == "stop" for x in out for s in x) >= 20  # answers end with EOS, included
    assert all(x[0].token_ids[-1] == tiny[1].eos_token_id for x in out if x[0].finish_reason == "stop")


def test_seeded_samples_do_not_depend_on_batching(engines, tiny):
    _, vllm_engine, _ = engines
    prompts, sp = tiny[2][:6], Sampling(n=4, temperature=1.0, max_new_tokens=6)
    seeds = [101, 102, 103, 104, 105, 106]
    whole = vllm_engine.generate(prompts, sp, seeds=seeds)
    part = vllm_engine.generate(prompts[3:], sp, seeds=seeds[3:])
    assert [[s.token_ids for s in x] for x in whole[3:]] == [[s.token_ids for s in x] for x in part]
    assert len({tuple(s.token_ids) for x in whole for s in x}) > 6  # n samples per prompt differ


def test_stop_strings_top_k_and_penalty_match_the_hf_engine(engines, tiny):
    """The same options give the same completions on both engines: a stop string cuts after the token that
    completes it (kept in the output, finish_reason stop), top_k=1 is greedy, a repetition penalty applies."""
    model, engine, hf = engines
    _, tok, prompts = tiny
    full = hf.generate(prompts, GREEDY)
    texts = [tok.decode(g[0].token_ids, skip_special_tokens=True) for g in full]
    stop = next(t[i : i + 2] for t in texts for i in range(len(t) - 1) if 0 < sum(t[i : i + 2] in u for u in texts) < 6)
    for sp in (Sampling(n=1, temperature=0, max_new_tokens=8, stop=(stop,)),
               Sampling(n=2, temperature=1.0, top_k=1, max_new_tokens=8),
               Sampling(n=1, temperature=0, max_new_tokens=8, repetition_penalty=3.0)):
        assert_same(engine.generate(prompts, sp, seeds=list(range(len(prompts)))), hf.generate(prompts, sp))
    cut = engine.generate(prompts, Sampling(n=1, temperature=0, max_new_tokens=8, stop=(stop,)))
    assert any(g[0].finish_reason == "stop" and tok.decode(g[0].token_ids).endswith(stop) for g in cut)


def test_after_a_push_the_engine_follows_the_new_weights_in_few_calls(engines, tiny):
    model, vllm_engine, hf = engines
    prompts = tiny[2]
    before = hf.generate(prompts, GREEDY)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    after = hf.generate(prompts, GREEDY)
    assert [x[0].token_ids for x in after] != [x[0].token_ids for x in before]
    assert_same(vllm_engine.generate(prompts, GREEDY), before)  # not pushed yet: the old weights
    target = vllm_engine._vllm_model()
    calls, load = [], target.load_weights
    target.load_weights = lambda ws: calls.append(len(ws)) or load(ws)
    try:
        vllm_engine.load_weights()
    finally:
        target.load_weights = load
    assert sum(calls) == len(list(model.parameters())) and len(calls) < sum(calls) / 4  # buckets of 1 MB
    assert_same(vllm_engine.generate(prompts, GREEDY), after)


def test_lora_pushes_only_the_adapter(tiny):
    from peft import LoraConfig, get_peft_model

    path, tok, prompts = tiny
    model = get_peft_model(load_model(path), LoraConfig(r=4, lora_alpha=16, target_modules="all-linear"))
    engine = make_engine("vllm", model, tok, gen=GenerationConfig(backend="vllm"), model_path=path,
                         dtype="float32", lora_r=4)
    try:
        hf = make_engine("hf", model, tok)
        base = engine._vllm_model().model.embed_tokens.weight.clone()
        assert_same(engine.generate(prompts, GREEDY), hf.generate(prompts, GREEDY))  # B = 0: the base model
        torch.manual_seed(0)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.add_(torch.randn_like(p) * 0.3)
        engine.load_weights()
        assert_same(engine.generate(prompts, GREEDY), hf.generate(prompts, GREEDY))
        assert torch.equal(engine._vllm_model().model.embed_tokens.weight, base)  # base weights never sent
        files = sorted(Path(engine.lora_request.lora_path).iterdir())
        assert [f.name for f in files] == ["adapter_config.json", "adapter_model.safetensors"]
        assert files[1].stat().st_size < 1_000_000  # the adapter, not the 4 MB model
    finally:
        engine.close()


RECIPE = """
model: {{path: tiny}}
data: {{train: arith}}
generation: {{backend: {backend}, n: 8, max_new_tokens: 8, mismatch_correction: tis}}
rewards: [{{fn: math_correct}}]
algorithm: {{name: nft}}
train: {{steps: 6, prompts_per_step: 8, micro_batch_size: 64, lr: 3.0e-4, threads: 1}}
eval: {{before: true, after: true, n: 100, reward: math_correct, max_new_tokens: 8}}
log: {{out: {out}, name: {name}, progress: false, every: 1}}
"""


def _train(tmp_path, name, backend="vllm", launcher=()):
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(RECIPE.format(backend=backend, out=tmp_path / "runs", name=name))
    env = {**BASE_ENV, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([*launcher, "-m", "selfimprove", "train", str(recipe)], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / name
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return json.loads((run / "summary.json").read_text()), rows, run


def test_nft_steps_end_to_end_through_vllm(tmp_path, tiny):
    """Six NFT steps sampled by vLLM with truncated IS; the engine's final eval must equal the hf
    engine's on the saved checkpoint (greedy): every push reached the engine."""
    summary, rows, run = _train(tmp_path, "nft", launcher=(sys.executable,))
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and all(r["optimizer_steps"] == 1 for r in rows)
    assert all(r["mismatch/abs_log_ratio"] < 1e-4 and r["mismatch/clipped_frac"] == 0 for r in rows)
    assert all(r["time/weight_sync"] > 0 for r in rows)

    path, tok, _ = tiny
    final = load_model(str(run / "checkpoints" / "step-000006"))
    rewards = build_rewards([RewardSpec(fn="math_correct")])
    hf = make_engine("hf", final, tok)
    acc, _ = evaluate(hf, tok, load_examples("arith", DataConfig(), "test")[:100], rewards,
                      EvalConfig(n=100, max_new_tokens=8, reward="math_correct"), RewardContext(tok, hf, 0), 512)
    assert summary["accuracy_after"] == pytest.approx(acc)
    assert summary["accuracy_after"] != summary["accuracy_before"] or rows[-1]["grad_norm"] > 0

    # the final export (runs/NAME/final/, a clean HF folder with a model card) loads in vLLM as it is
    export = run / "final"
    assert (export / "README.md").is_file() and not (export / "trainer_state.json").exists()
    prompts = tiny[2]
    vfinal = make_engine("vllm", load_model(str(export)), tok, gen=GenerationConfig(backend="vllm"),
                         model_path=str(export), dtype="float32")
    try:
        assert_same(vfinal.generate(prompts, GREEDY), hf.generate(prompts, GREEDY))
    finally:
        vfinal.close()
