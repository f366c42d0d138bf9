"""The weight push's buckets (engines/weights.py) and the engine/trainer mismatch weights."""

import math

import pytest
import torch

from selfimprove.engines.weights import engine_name, weight_buckets
from selfimprove.logprobs import mismatch_weights
from selfimprove.policy import load_model


def test_engine_names_drop_peft_and_wrapper_prefixes():
    assert engine_name("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight") == \
        "model.layers.0.self_attn.q_proj.weight"
    assert engine_name("model.norm.weight") == "model.norm.weight"
    assert engine_name("model._checkpoint_wrapped_module.layers.1.mlp.up_proj.weight") == "model.layers.1.mlp.up_proj.weight"


def test_buckets_cover_every_weight_once_in_order_and_are_large(mini_model):
    model = load_model(mini_model)
    named = list(model.named_parameters())
    bucket_bytes = 1 << 20
    buckets = list(weight_buckets(model, bucket_bytes))
    flat = [x for b in buckets for x in b]
    assert [n for n, _ in flat] == [n for n, _ in named]
    assert all(torch.equal(t, p) for (_, t), (_, p) in zip(flat, named))
    total = sum(p.numel() * 4 for _, p in named)
    assert 1 < len(buckets) <= math.ceil(total / bucket_bytes) and len(buckets) < len(named) / 4
    for b in buckets[:-1]:  # every bucket but the last reaches the size: few calls, not one per tensor
        assert sum(t.numel() * 4 for _, t in b) >= bucket_bytes


def test_lora_pushes_only_the_adapter_and_base_names_are_clean(mini_model):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load_model(mini_model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    adapter = [n for b in weight_buckets(model, 1 << 30, adapters_only=True) for n, _ in b]
    assert adapter and all("lora_A" in n or "lora_B" in n for n in adapter)
    assert len(adapter) == 4 * 2 * 2  # 4 layers x (q, v) x (A, B)
    base = [n for b in weight_buckets(model, 1 << 30) for n, _ in b]
    plain = [n for n, _ in load_model(mini_model).named_parameters()]
    assert base == plain  # what a full push sends: the HF names the engine loads


def test_mismatch_weights_worked_numbers():
    batch = {"mask": torch.tensor([[1.0, 1.0, 0.0]]), "old_logp": torch.tensor([[-1.5, -0.5, -3.0]])}
    trainer = torch.tensor([[-1.0, -2.0, -9.0]])
    w, stats = mismatch_weights(dict(batch), trainer, "is", 1.5)
    assert w.tolist()[0] == pytest.approx([math.exp(0.5), math.exp(-1.5), 0.0], rel=1e-6)
    b = dict(batch)
    w, stats = mismatch_weights(b, trainer, "tis", 1.5)  # truncated at the cap
    assert w.tolist()[0] == pytest.approx([1.5, math.exp(-1.5), 0.0], rel=1e-6)
    assert torch.equal(b["old_logp"], trainer)  # the ratio then compares the trainer with itself
    assert stats["mismatch/clipped_frac"] == pytest.approx(0.5)
    assert stats["mismatch/abs_log_ratio"] == pytest.approx(1.0)
    assert stats["mismatch/is_weight_mean"] == pytest.approx((1.5 + math.exp(-1.5)) / 2, rel=1e-6)
