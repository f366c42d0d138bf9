"""Shared-prefix forwards (selfimprove/prefix.py): the same log-probs, loss, gradients and entropy as the plain
padded forward; a model that ignores the custom mask falls back; a short run is the same either way."""

import json
import random
from collections import Counter

import pytest
import torch
from accelerate import Accelerator
from transformers import LlamaConfig, LlamaForCausalLM

from selfimprove import prefix
from selfimprove.algorithms import get_algorithm
from selfimprove.algorithms.common import aggregate
from selfimprove.batch import collate, token_logprobs
from selfimprove.errors import UserError
from selfimprove.logprobs import forward_logprobs
from selfimprove.loop import run
from selfimprove.recipe import load_recipe
from selfimprove.trace import Trace, Turn

V = 64


def tiny_llama(cls=LlamaForCausalLM):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2, pad_token_id=0)
    return cls(cfg).train()


def ids(rng, n):
    return [rng.randrange(3, V) for _ in range(n)]


def episode(rng, tid, gid, prompt, two_turn, j):
    """A prompt turn and a 1..6-token attempt; two-turn (SCoRe): then an instruction and a 1..4-token attempt."""
    c = ids(rng, rng.randint(1, 6))
    turns = [Turn("user", "q", prompt), Turn("assistant", "y", c, [-1.0] * len(c), trainable=True, reward=float(j % 2))]
    if two_turn:
        c2 = ids(rng, rng.randint(1, 4))
        turns += [Turn("user", "fix it", [7, 8]),
                  Turn("assistant", "y2", c2, [-1.2] * len(c2), trainable=True, reward=float(j % 2 == 0))]
    return Trace(id=tid, group_id=gid, task="t", prompt=[], turns=turns, reward=turns[-1].reward, policy_version=3)


def make_traces(two_turn=False):
    """Groups of 3, 2 and 1 (a singleton) with prompts of 5, 9 and 4 tokens, plus a trace whose group_id is
    group a's but whose prompt differs (it must not share a's prefix)."""
    rng = random.Random(0)
    out = []
    for gid, (plen, n) in {"a": (5, 3), "b": (9, 2), "c": (4, 1)}.items():
        prompt = ids(rng, plen)
        out += [episode(rng, f"{gid}-{j}", gid, prompt, two_turn, j) for j in range(n)]
    return out + [episode(rng, "a-x", "a", ids(rng, 5), two_turn, 3)]


def loss_and_grads(model, name, shared, **cfg_kw):
    algo = get_algorithm(name)
    cfg = algo.Config(**cfg_kw)
    traces = algo.prepare(make_traces(two_turn=name == "score"), cfg)
    batch = collate(traces, 0, algo.meta_keys)
    prefix.register([model], shared)
    model.zero_grad(set_to_none=True)
    stats = {"entropy_sum": 0.0, "entropy_tokens": 0}
    logp = token_logprobs(model, batch, stats)
    tok, _ = algo.loss(batch, logp, cfg)
    n_tok = float(batch["mask"].sum())
    loss = aggregate(tok, batch["mask"], cfg.loss_agg, n_tok, len(traces), 8, cfg.loss_constant)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads, logp.detach(), batch, stats, traces


@pytest.mark.parametrize("row_min", [128, 1])
@pytest.mark.parametrize("name,cfg", [("grpo", {"kl_coef": 0.0}), ("nft", {}), ("score", {"stage1_steps": 0})])
def test_loss_gradients_and_entropy_equal_the_plain_forward(name, cfg, row_min, monkeypatch):
    """row_min 1: a row holds at most the longest sequence, so a group continues in a new row (its prefix again)."""
    monkeypatch.setattr(prefix, "ROW_MIN", row_min)
    model = tiny_llama()
    loss0, g0, lp0, batch, st0, traces = loss_and_grads(model, name, False, **cfg)
    loss1, g1, lp1, _, st1, _ = loss_and_grads(model, name, True, **cfg)
    # rows share exactly when their prompts are equal: group a's 3 traces (not its 4th, whose prompt differs),
    # b's 2; the others alone
    prefixes, rows = prefix.plan(batch["input_ids"], batch["prefix_len"])
    assert [tuple(tr.turns[0].token_ids) for tr in traces] == [prefixes[g] for g in rows]
    assert sorted(Counter(rows).values())[-2:] == [2, 3] and 1 in Counter(rows).values()
    real = batch["attention_mask"][:, 1:].bool()  # every real target column, prompt columns included
    assert (lp0 - lp1).abs()[real].max() < 1e-5
    assert abs(loss0) > 1e-3 and loss1 == pytest.approx(loss0, abs=1e-6 * max(1.0, abs(loss0)))
    scale = max(float(g.abs().max()) for g in g0.values())
    assert scale > 1e-3
    worst = max(float((g0[k] - g1[k]).abs().max()) for k in g0)
    assert worst < 1e-5 * scale, (worst, scale)
    assert st0["entropy_tokens"] == st1["entropy_tokens"] == int(batch["mask"].sum())
    assert st1["entropy_sum"] == pytest.approx(st0["entropy_sum"], rel=1e-6)


def test_lora_adapters_get_the_plain_forwards_gradients():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0,
                                                    init_lora_weights=False, task_type="CAUSAL_LM"))
    assert prefix.probe(model, V, 0) < 1e-5
    loss0, g0, *_ = loss_and_grads(model, "grpo", False, kl_coef=0.0)
    loss1, g1, *_ = loss_and_grads(model, "grpo", True, kl_coef=0.0)
    assert len(g0) == 2 * 7 * 2 and all("lora_" in k for k in g0)  # A and B of 7 linear layers x 2 layers
    scale = max(float(g.abs().max()) for g in g0.values())
    assert loss1 == pytest.approx(loss0, abs=1e-6) and scale > 1e-3
    assert max(float((g0[k] - g1[k]).abs().max()) for k in g0) < 1e-5 * scale
    with model.disable_adapter():  # the LoRA reference: the same object, adapters off
        assert prefix.probe(model, V, 0) < 1e-5


def test_no_grad_logprob_pass_equals_the_plain_one():
    model = tiny_llama()
    traces = make_traces()
    acc = Accelerator(cpu=True)
    prefix.register([model], False)
    plain = forward_logprobs(acc, model, traces, 4, 0)  # micro-batches of 4: groups split across them
    prefix.register([model], True)
    shared = forward_logprobs(acc, model, traces, 4, 0)
    for tr, a, b in zip(traces, plain, shared):
        n = len(tr.token_ids) - 1
        assert len(a) == len(b) and max(abs(x - y) for x, y in zip(a[:n], b[:n])) < 1e-5


class MaskIgnoringLlama(LlamaForCausalLM):
    """Custom code that builds its own causal mask and positions (ignores a 4D mask and position ids)."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, use_cache=None, **kw):
        return super().forward(input_ids=input_ids, use_cache=False)


def test_a_model_that_fails_the_probe_falls_back_to_the_plain_forward():
    said = []
    good, bad = tiny_llama(), tiny_llama(MaskIgnoringLlama)
    assert prefix.probe(good, V, 0) < 1e-5
    assert prefix.probe(bad, V, 0) > 1e-2  # its rests attend to each other
    assert bad.training  # the probe restores the training mode
    assert prefix.decide("auto", good, 0, False, said.append) is True and said == []
    assert prefix.decide("auto", bad, 0, False, said.append) is False
    assert len(said) == 1 and said[0].startswith("train.shared_prefix=auto: off (the model's shared-prefix forward "
                                                 "differs from its plain one (max log-prob difference ")
    with pytest.raises(UserError, match="train.shared_prefix=true: the model's shared-prefix forward differs"):
        prefix.decide("true", bad, 0, False)
    # off under DeepSpeed; false never probes
    assert prefix.decide("auto", good, 0, True, said.append) is False
    assert said[-1] == "train.shared_prefix=auto: off (DeepSpeed)"
    with pytest.raises(UserError, match="train.shared_prefix=true is not available under DeepSpeed"):
        prefix.decide("true", good, 0, True)
    assert prefix.decide("false", bad, 0, False) is False
    # a fallen-back model computes the plain forward's log-probs
    prefix.register([bad], False)
    batch = collate(make_traces(), 0)
    logits = bad(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    expect = torch.log_softmax(logits, -1).gather(-1, batch["targets"][..., None]).squeeze(-1)
    assert torch.equal(token_logprobs(bad, batch).detach(), expect.detach())


def test_shared_prefix_option_is_checked(write_recipe):
    with pytest.raises(UserError, match="train.shared_prefix must be auto, true or false, got 'yes'"):
        load_recipe(write_recipe(), ["train.shared_prefix=yes"])
    assert load_recipe(write_recipe(), ["train.shared_prefix=true"]).train.shared_prefix == "true"


def test_a_two_step_run_is_the_same_with_and_without_shared_prefix(write_recipe, tmp_path):
    rows = {}
    for mode in ("true", "false"):
        p = write_recipe(algorithm={"name": "grpo"}, eval={"before": False, "after": False})
        summary = run(load_recipe(p, [f"train.shared_prefix={mode}", "train.steps=2", f"log.name={mode}",
                                      "log.save_final=false"]), log=lambda *a: None)
        rows[mode] = [json.loads(x) for x in open(f"{summary['run_dir']}/metrics.jsonl")]
    on, off = rows["true"], rows["false"]
    assert len(on) == len(off) == 2
    assert on[0]["reward"] == off[0]["reward"]  # the same samples: generation does not use the option
    assert abs(off[0]["loss"]) > 1e-4 and on[0]["loss"] == pytest.approx(off[0]["loss"], abs=1e-5)
    assert on[0]["grad_norm"] == pytest.approx(off[0]["grad_norm"], rel=1e-4)
    assert on[1]["reward"] == pytest.approx(off[1]["reward"], abs=1e-6)
