"""Packed (padding-free) updates: the same loss, gradients and entropy as padded batches, micro-batches by token
budget, the probe that decides whether a model packs, and the options (train.packing, train.micro_batch_tokens)."""

import json
import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from selfimprove import packing
from selfimprove.algorithms import grpo, nft, score
from selfimprove.algorithms.common import aggregate
from selfimprove.batch import collate, token_logprobs
from selfimprove.cli import main
from selfimprove.distributed import make_accelerator
from selfimprove.errors import UserError
from selfimprove.logprobs import forward_logprobs
from selfimprove.packing import logprobs, packed_layout, packed_logprobs, probe, rows_of, split, use_packing, varlen
from selfimprove.policy import load_model
from selfimprove.trace import Trace, Turn

PAD = 0


@pytest.fixture(scope="module")
def model(mini_model):
    return load_model(mini_model)


def ids(rng, n: int) -> list[int]:
    return [rng.randrange(3, 300) for _ in range(n)]


def single_turn(rng, n: int = 12) -> list[Trace]:
    """Groups of 4 with mixed lengths: prompts 2..8 tokens, completions 1..32 (3..40 tokens in all)."""
    out = []
    for i in range(n):
        comp = ids(rng, rng.randint(1, 32))
        out.append(Trace(id=f"t{i}", group_id=f"g{i // 4}", task="t", prompt=[], reward=float(i % 3 == 0),
                         turns=[Turn("user", "", ids(rng, rng.randint(2, 8))),
                                Turn("assistant", "", comp, [0.0] * len(comp), trainable=True)]))
    return out


def two_turn(rng, n: int = 8) -> list[Trace]:
    """SCoRe episodes: prompt, attempt 1 (trained), the instruction (not trained), attempt 2 (trained)."""
    out = []
    for i in range(n):
        a1, a2 = ids(rng, rng.randint(1, 14)), ids(rng, rng.randint(1, 14))
        r1, r2 = float(i % 2), float(i % 3 == 0)
        out.append(Trace(id=f"e{i}", group_id=f"g{i // 4}", task="t", prompt=[], reward=r2, policy_version=3, turns=[
            Turn("user", "", ids(rng, rng.randint(2, 6))),
            Turn("assistant", "", a1, [0.0] * len(a1), trainable=True, reward=r1),
            Turn("user", "", ids(rng, 4)),
            Turn("assistant", "", a2, [0.0] * len(a2), trainable=True, reward=r2)]))
    return out


def with_sampler_logprobs(model, traces, rng) -> None:
    """Sampler log-probs near the model's own (ratios near 1, some clipped), written on the trainable turns."""
    with torch.no_grad():
        lp = token_logprobs(model, collate(traces, PAD))
    for row, tr in zip(lp.tolist(), traces):
        pos = 0
        for turn in tr.turns:
            if turn.trainable:
                turn.logprobs = [v + rng.uniform(-0.3, 0.3) for v in row[pos - 1 : pos - 1 + len(turn.token_ids)]]
            pos += len(turn.token_ids)


def loss_and_grads(model, algo, cfg, traces, packed: bool, chunks=None):
    """The aggregated loss (whole-batch counts) and every parameter's gradient, accumulated over `chunks`."""
    model.zero_grad(set_to_none=True)
    n_tok = sum(len(t.token_ids) for tr in traces for t in tr.turns if t.trainable)
    total, stats = 0.0, {"entropy_sum": 0.0, "entropy_tokens": 0}
    for chunk in chunks or [traces]:
        batch = collate(chunk, PAD, algo.meta_keys)
        if algo.needs_reference(cfg):  # a reference a little off the policy: the KL term has a gradient
            with torch.no_grad():
                batch["ref_logp"] = token_logprobs(model, batch) - 0.1 * batch["mask"]
        tok, _ = algo.loss(batch, logprobs(model, batch, stats, packed), cfg)
        loss = aggregate(tok, batch["mask"], cfg.loss_agg, n_tok, len(traces), 32, cfg.loss_constant)
        loss.backward()
        total += loss.item()
    return total, {n: p.grad.clone() for n, p in model.named_parameters()}, stats


def assert_same(a, b, rel: float = 1e-5) -> None:
    (loss_a, grads_a, stats_a), (loss_b, grads_b, stats_b) = a, b
    assert loss_a == pytest.approx(loss_b, rel=rel, abs=1e-7)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        scale = float(grads_b[name].abs().max())
        assert scale > 0, name  # every parameter takes part (no vacuous comparison)
        assert float((grads_a[name] - grads_b[name]).abs().max()) <= rel * scale, name
    assert stats_a["entropy_tokens"] == stats_b["entropy_tokens"] > 0
    assert stats_a["entropy_sum"] == pytest.approx(stats_b["entropy_sum"], rel=rel)


CASES = {
    "nft": (nft, lambda: nft.Config(filter_groups=False), single_turn),
    "grpo": (grpo, lambda: grpo.Config(kl_coef=0.05), single_turn),
    "grpo-seq-mean": (grpo, lambda: grpo.Config(loss_agg="seq-mean"), single_turn),
    "score": (score, lambda: score.Config(stage1_steps=0, beta1=0.1), two_turn),
}


@pytest.mark.parametrize("one_row", [False, True], ids=["rows", "one-row"])
@pytest.mark.parametrize("case", CASES)
def test_packed_loss_and_every_gradient_equal_the_padded_ones(model, case, one_row, monkeypatch):
    monkeypatch.setattr(packing, "varlen", lambda m: one_row)  # one row is flash attention's layout (GPU)
    algo, make_cfg, make = CASES[case]
    rng = random.Random(0)
    cfg, traces = make_cfg(), make(rng)
    with_sampler_logprobs(model, traces, rng)
    traces = algo.ALGORITHM.prepare(traces, cfg)
    lengths = [len(tr.token_ids) for tr in traces]
    assert max(lengths) >= 2 * min(lengths)  # mixed lengths: padding is at least half of some rows
    padded = loss_and_grads(model, algo.ALGORITHM, cfg, traces, packed=False)
    packed = loss_and_grads(model, algo.ALGORITHM, cfg, traces, packed=True)
    assert abs(padded[0]) > 1e-4
    assert_same(packed, padded)


def test_token_budget_micro_batches_accumulate_the_one_batch_gradient(model):
    rng = random.Random(1)
    cfg, traces = nft.Config(filter_groups=False), single_turn(rng, 16)
    with_sampler_logprobs(model, traces, rng)
    traces = nft.prepare(traces, cfg)
    lengths = [len(tr.token_ids) for tr in traces]
    parts = split(list(range(len(traces))), lengths, 64, 60, packed=True)
    assert sum(parts, []) == list(range(len(traces))) and len(parts) >= 4
    for p in parts:  # at most 60 tokens each, or one longer sequence alone
        assert sum(lengths[i] for i in p) <= 60 or len(p) == 1
    chunks = [[traces[i] for i in p] for p in parts]
    one = loss_and_grads(model, nft.ALGORITHM, cfg, traces, packed=False)
    assert_same(loss_and_grads(model, nft.ALGORITHM, cfg, traces, packed=True, chunks=chunks), one)


def test_split_counts_tokens_as_the_forward_sees_them():
    lengths = [10, 30, 5, 5, 50, 8]
    items = list("abcdef")
    assert split(items, lengths, 4, 0, packed=True) == [list("abcd"), list("ef")]  # off: micro_batch_size
    assert split(items, lengths, 4, 40, packed=True) == [["a", "b"], ["c", "d"], ["e"], ["f"]]
    # padded: count x longest (a, b: 2 x 30 = 60 > 40; c, d, then e alone: 50 > 40)
    assert split(items, lengths, 4, 40, packed=False) == [["a"], ["b"], ["c", "d"], ["e"], ["f"]]


def test_layout_restarts_positions_and_keeps_only_real_targets():
    tr = [Trace(id=str(i), group_id="g", task="t", prompt=[], turns=[
        Turn("user", "", p), Turn("assistant", "", c, [0.0] * len(c), trainable=True)])
        for i, (p, c) in enumerate([([5, 6], [7, 8, 9]), ([10], [11]), ([12], [13, 14])])]
    b = collate(tr, PAD)
    packed_ids, pos, cols, where, targets = packed_layout(b, one_row=True)  # flash attention's one row
    assert packed_ids.tolist() == [[5, 6, 7, 8, 9, 12, 13, 14, 10, 11]]  # longest first
    assert pos.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1]]
    assert cols.tolist() == [[True] * 4, [True, False, False, False], [True, True, False, False]]
    assert where.tolist() == [0, 1, 2, 3, 8, 5, 6] and targets.tolist() == [6, 7, 8, 9, 11, 13, 14]
    # rows as long as the longest sequence (dense masks): [5-token], [3-token, 2-token]
    packed_ids, pos, cols, where, targets = packed_layout(b, one_row=False)
    assert packed_ids.tolist() == [[5, 6, 7, 8, 9], [12, 13, 14, 10, 11]]
    assert pos.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1]]
    assert where.tolist() == [0, 1, 2, 3, 8, 5, 6]
    b["attention_mask"][2, 2] = 0  # the third sequence one token shorter: the second row gets a tail
    packed_ids, pos, _, where, _ = packed_layout(b, one_row=False)
    assert packed_ids.tolist() == [[5, 6, 7, 8, 9], [10, 11, 12, 13, 0]] and pos.tolist()[1] == [0, 1, 0, 1, 0]
    trained = packed_layout(collate(tr[:2], PAD), collate(tr[:2], PAD)["mask"], one_row=False)  # the update's
    assert trained[3].tolist() == [1, 2, 3, 5]


def test_rows_are_filled_first_fit_by_decreasing_length_and_flash_takes_one_row():
    assert rows_of([3, 9, 5, 4, 2], 9) == [(2, 0), (0, 0), (1, 0), (1, 5), (2, 3)]  # rows [9], [5, 4], [3, 2]
    m = small(LlamaForCausalLM, LlamaConfig, "sdpa")
    assert varlen(m) is False and varlen(torch.nn.Module()) is False
    m.config._attn_implementation = "flash_attention_2"
    wrapped = torch.nn.Module()
    wrapped.module = m  # as DDP and DeepSpeed hold it
    assert varlen(m) is True and varlen(wrapped) is True


class IgnoresPositions(torch.nn.Module):
    """A model whose forward takes position ids but ignores them (as custom code may): packed rows would attend
    across sequences, so the probe must reject it."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None, logits_to_keep=0):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


class NoPositions(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def small(cls, cfg_cls, attn: str):
    torch.manual_seed(0)
    return cls(cfg_cls(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, attn_implementation=attn))


@pytest.mark.parametrize("cls,cfg_cls", [(LlamaForCausalLM, LlamaConfig), (Qwen2ForCausalLM, Qwen2Config)])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_the_probe_accepts_llama_and_qwen2_and_rejects_leaking_wrappers(cls, cfg_cls, attn):
    m = small(cls, cfg_cls, attn)
    m.train()
    lines = []
    assert use_packing("auto", m, 64, "cpu", say=lines.append) is True
    assert m.training  # the probe runs in eval mode and restores the mode
    assert len(lines) == 1 and "packed updates" in lines[0]
    ok, diff, _ = probe(m, 64, "cpu", 1e-3)
    assert ok and diff < 1e-5
    leaky = IgnoresPositions(m)
    ok, diff, why = probe(leaky, 64, "cpu", 1e-3)
    assert not ok and diff > 1e-3 and "differ" in why
    assert use_packing("auto", leaky, 64, "cpu", say=lines.append) is False
    assert "cannot pack" in lines[-1] and "IgnoresPositions" in lines[-1]
    assert use_packing("false", leaky, 64, "cpu") is False


def test_the_probe_runs_once_per_model_object(monkeypatch):
    m = small(LlamaForCausalLM, LlamaConfig, "sdpa")
    calls = []
    inner = m.forward
    monkeypatch.setattr(m, "forward", lambda *a, **k: calls.append(1) or inner(*a, **k))
    assert use_packing("auto", m, 64, "cpu") and use_packing(True, m, 64, "cpu")
    assert len(calls) == 2  # one padded and one packed forward, then the cached answer


def test_packing_true_on_a_model_that_cannot_is_one_error_line():
    for wrapper in (IgnoresPositions, NoPositions):
        with pytest.raises(UserError) as e:
            use_packing("true", wrapper(small(LlamaForCausalLM, LlamaConfig, "sdpa")), 64, "cpu")
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith("train.packing=true: ") and wrapper.__name__ in msg


def test_a_rejected_model_falls_back_to_padded_log_probs(model):
    leaky = IgnoresPositions(model)
    assert use_packing("auto", leaky, 300, "cpu") is False
    rng = random.Random(2)
    b = collate(single_turn(rng, 6), PAD)
    real = b["attention_mask"][:, 1:].bool()
    with torch.no_grad():
        expect = token_logprobs(model, b)
        assert torch.equal(logprobs(leaky, b, None, packed=False), expect)
        # what packing would have done to it: rows that see each other
        assert float((packed_logprobs(leaky, b) - expect)[real].abs().max()) > 1e-3
        assert float((packed_logprobs(model, b) - expect)[real].abs().max()) < 1e-4


def test_full_kl_keeps_padded_batches(model):
    b = collate(single_turn(random.Random(3), 4), PAD)
    b["ref_logsoftmax"] = torch.zeros(1)  # kl_estimator full: the policy's whole distributions are needed
    with torch.no_grad():
        logprobs(model, b, None, packed=True)
    assert b["policy_logsoftmax"].shape[:2] == b["mask"].shape


def run_loss(write_recipe, tmp_path, name: str, *overrides) -> list[dict]:
    path = write_recipe(name, train={"steps": 2, "micro_batch_size": 5}, log={"name": name, "progress": False})
    assert main(["train", str(path), "log.save_final=false", *overrides]) == 0
    return [json.loads(x) for x in (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("algo", ["nft", "grpo"])
def test_a_packed_run_has_the_padded_runs_first_step(write_recipe, tmp_path, capsys, algo):
    args = [f"algorithm.name={algo}", "algorithm.filter_groups=false"]
    if algo == "grpo":  # the reference's and the trainer's no-gradient passes run packed too
        args += ["algorithm.kl_coef=0.05", "generation.mismatch_correction=is"]
    padded = run_loss(write_recipe, tmp_path, f"padded-{algo}", *args)
    packed = run_loss(write_recipe, tmp_path, f"packed-{algo}", *args, "train.packing=true",
                      "train.micro_batch_tokens=80")
    assert "train.packing=true: packed updates" in capsys.readouterr().out
    first, again = padded[0], packed[0]
    assert first["reward"] == again["reward"] and first["samples"] == again["samples"]  # the same samples
    assert first["grad_norm"] > 1e-3  # on-policy the loss value is near 0; its gradient is not
    assert again["loss"] == pytest.approx(first["loss"], rel=1e-4, abs=1e-7)
    for key in ("grad_norm", "entropy", *(["kl", "mismatch/abs_log_ratio"] if algo == "grpo" else [])):
        assert again[key] == pytest.approx(first[key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("override,pattern", [
    ("train.packing=maybe", "train.packing must be auto, true or false, got 'maybe'"),
    ("train.micro_batch_tokens=-5", "train.micro_batch_tokens must be >= 0, got -5"),
])
def test_bad_packing_options_are_one_line(write_recipe, capsys, override, pattern):
    assert main(["train", str(write_recipe()), override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and err.endswith(pattern) and "\n" not in err  # after the recipe's path


def test_no_gradient_passes_by_tokens_and_packed_equal_the_padded_ones(model):
    traces = single_turn(random.Random(4), 10)
    acc = make_accelerator()
    padded = forward_logprobs(acc, model, traces, 4, PAD)
    packed = forward_logprobs(acc, model, traces, 4, PAD, tokens=50, packed=True)
    for tr, a, b in zip(traces, padded, packed):
        n = len(tr.token_ids) - 1  # the real target columns; the rest is padding nobody reads
        assert len(b) >= n and max(abs(x - y) for x, y in zip(a[:n], b[:n])) < 1e-4


class NoRowKeep(LlamaForCausalLM):
    """transformers before 5.2x: logits_to_keep indexes one dimension only (a 2D tensor raises IndexError)."""

    def forward(self, *args, logits_to_keep=0, **kw):
        if isinstance(logits_to_keep, torch.Tensor) and logits_to_keep.dim() > 1:
            raise IndexError("too many indices for tensor of dimension 3")
        return super().forward(*args, logits_to_keep=logits_to_keep, **kw)


def test_a_forward_without_2d_logits_to_keep_packs_from_every_position(model):
    torch.manual_seed(0)
    old = NoRowKeep(model.config).eval()
    old.load_state_dict(model.state_dict())
    batch = collate(single_turn(random.Random(1)), 0)
    with torch.no_grad():
        padded, packed = token_logprobs(old, batch), packed_logprobs(old, batch)
        again = packed_logprobs(old, batch)  # remembered: no failing forward the second time
    real = packed_layout(batch)[2]
    assert float((packed - padded)[real].abs().max()) < 1e-5 and torch.equal(packed, again)
    assert old in packing._NO_KEEP
