"""Shared-prefix forwards: the n samples of a prompt run the prompt through the model once.

In a GRPO step every sample of a group starts with the same prompt; in the quickstart's shape about 2/3 of
the tokens of a padded update batch are that prompt repeated n times. Here (as in Prefix Grouper, arXiv
2506.05433, and the HF engine's prefill) each distinct prompt of a micro-batch runs once with a KV cache, the
cache is copied to the rows that share the prompt by an index (differentiable: the gradients of the n copies
sum back into the one prompt pass), and only each row's rest (completion; for two-turn traces attempt 1, the
instruction and attempt 2) runs per row on top of it, at its true positions. The logits come back aligned with
collate's target columns, so `batch.token_logprobs` and every algorithm's loss are unchanged.

Rows share a prefix when their first turn's token ids are equal (checked, not taken from group_id). A model
is used this way only if a one-time probe on a tiny input gives the plain forward's log-probs
(`configure`, at setup); anything else (a cache the model cannot take so, gradient checkpointing, which drops
the cache in training) runs the plain padded forward.
"""

from __future__ import annotations

import inspect
import weakref

import torch
from transformers import DynamicCache

from selfimprove.errors import UserError

_ON: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model object -> True where shared forwards are used
PROBE_TOL = 1e-4  # float32 log-probs of a tiny input: the two paths differ by rounding only (~1e-6)


def usable(model, batch) -> bool:
    """Shared forwards for this model (configure) and this batch (every row has a first turn)."""
    return _ON.get(model, False) and "prefix_len" in batch and int(batch["prefix_len"].min()) > 0


def plan(input_ids: torch.Tensor, prefix_len: torch.Tensor) -> tuple[list[tuple], list[int]]:
    """Groups rows by their prefix's token ids: (the distinct prefixes in first-seen order, each row's index
    into them)."""
    keys: dict[tuple, int] = {}
    ids = input_ids.tolist()
    row_group = [keys.setdefault(tuple(row[:p]), len(keys)) for row, p in zip(ids, prefix_len.tolist())]
    return list(keys), row_group


def shared_logits(model, batch) -> torch.Tensor:
    """[B, L - 1, V] logits aligned with collate's target columns (column c scores token c + 1), as
    model(input_ids, attention_mask).logits[:, :-1] on every real token; padding columns hold zeros.

    Prefix pass: the G distinct prefixes, right-padded to Pmax, positions 0..P-1, one DynamicCache. Rest pass:
    row i's tokens from P_i on, right-padded to S, positions P_i.., attending to its prefix's cached keys
    (their padding masked out) and causally to its own tokens."""
    ids, attn, plen = batch["input_ids"], batch["attention_mask"], batch["prefix_len"]
    device = ids.device
    B, L = ids.shape
    lengths = attn.sum(-1)
    prefixes, row_group = plan(ids, plen)
    G, Pmax = len(prefixes), max(len(p) for p in prefixes)
    pre_ids = torch.zeros((G, Pmax), dtype=torch.long)  # padding: any id (masked out)
    pre_mask = torch.zeros((G, Pmax), dtype=torch.long)
    for g, p in enumerate(prefixes):
        pre_ids[g, : len(p)] = torch.tensor(p)
        pre_mask[g, : len(p)] = 1
    pre_ids, pre_mask = pre_ids.to(device), pre_mask.to(device)
    cache = DynamicCache()
    pos = torch.arange(Pmax, device=device).expand(G, Pmax)
    kw = cache_kwarg(model)
    pre = model(input_ids=pre_ids, attention_mask=pre_mask, position_ids=pos, use_cache=True, **{kw: cache}).logits
    if cache.get_seq_length() != Pmax:  # e.g. gradient checkpointing in training drops the cache
        raise RuntimeError("shared-prefix forward: the model did not fill the KV cache (gradient checkpointing?)")
    rg = torch.tensor(row_group, device=device)
    cache.batch_select_indices(rg)  # [G, ...] -> [B, ...] by index: the backward sums the copies' gradients
    rest = (lengths - plen).clamp(min=1)
    S = int(rest.max())
    cols = torch.arange(S, device=device)
    src = (plen[:, None] + cols).clamp(max=L - 1)
    rest_mask = (cols < (lengths - plen)[:, None]).long()
    rest_ids = ids.gather(1, src) * rest_mask  # padding: id 0 (masked out)
    out = model(input_ids=rest_ids, attention_mask=torch.cat([pre_mask[rg], rest_mask], 1),
                position_ids=plen[:, None] + cols, use_cache=True, **{kw: cache}).logits
    # target column c of row i: prefix logits [g, c] for c < P_i (the last prompt position predicts the first
    # token of the rest), rest logits [i, c - P_i] for P_i <= c < len_i - 1, else a zero row (padding)
    V = pre.shape[-1]
    flat = torch.cat([pre.reshape(G * Pmax, V), out.reshape(B * S, V), out.new_zeros(1, V)])
    c = torch.arange(L - 1, device=device)[None, :]
    p = plen[:, None]
    idx = torch.where(c < p, rg[:, None] * Pmax + c, G * Pmax + torch.arange(B, device=device)[:, None] * S + c - p)
    idx = torch.where(c < lengths[:, None] - 1, idx, G * Pmax + B * S)
    return flat.index_select(0, idx.reshape(-1)).view(B, L - 1, V)


@torch.no_grad()
def probe(model, vocab: int, pad_id: int) -> float:
    """Max |log-prob difference| between the shared and the plain forward on a tiny input (two prompts of
    different lengths, each with two rests of different lengths); inf where the shared forward fails."""
    g = torch.Generator().manual_seed(0)
    rows = [(5, 3), (5, 1), (3, 4), (3, 2)]
    prompts = {5: torch.randint(3, vocab, (5,), generator=g), 3: torch.randint(3, vocab, (3,), generator=g)}
    L = max(p + r for p, r in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, (p, r) in enumerate(rows):
        ids[i, :p] = prompts[p]
        ids[i, p : p + r] = torch.randint(3, vocab, (r,), generator=g)
        attn[i, : p + r] = 1
    device = next(model.parameters()).device
    batch = {"input_ids": ids.to(device), "attention_mask": attn.to(device),
             "prefix_len": torch.tensor([p for p, _ in rows], device=device)}
    was_training = model.training
    model.eval()  # dropout off: the two paths must see the same function
    try:
        plain = torch.log_softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                                  .logits[:, :-1].float(), -1)
        shared = torch.log_softmax(shared_logits(model, batch).float(), -1)
    except Exception:  # a model whose forward does not take the cache this way: the plain path
        return float("inf")
    finally:
        model.train(was_training)
    real = attn[:, 1:].bool().to(device)
    return float((plain - shared).abs()[real].max())


def decide(mode: str, model, pad_id: int, gradient_checkpointing: bool, deepspeed: bool, say=print) -> bool:
    """train.shared_prefix for this run, decided on the float32 policy before accelerate wraps it (mixed
    precision would blur the comparison): auto uses it where the probe passes (not under gradient
    checkpointing, which drops the cache in training, nor under DeepSpeed, whose ZeRO-3 has partitioned the
    weights by now and is untested with two forwards per backward); true demands it (an error where it
    cannot work). The reference is a copy of the policy (or the policy itself, LoRA)."""
    if mode == "false":
        return False
    if deepspeed and mode == "true":
        raise UserError("train.shared_prefix=true is not available under DeepSpeed (untested there); use auto or false")
    why = ("model.gradient_checkpointing drops the KV cache in training" if gradient_checkpointing
           else "DeepSpeed" if deepspeed else None)
    if why is None:
        worst = probe(model, _vocab(model), 0 if pad_id is None else pad_id)
        if not worst < PROBE_TOL:
            why = f"the model's shared-prefix forward differs from its plain one (max log-prob difference {worst:.3g})"
    if why is not None and mode == "true":
        raise UserError(f"train.shared_prefix=true: {why}; use auto or false")
    if why is not None:
        say(f"train.shared_prefix=auto: off ({why})")
    return why is None


def register(models, on: bool) -> None:
    """Every object the run calls forward on (the policy as prepared, unwrapped, the reference) gets the
    decision: batch.token_logprobs asks `usable(model, batch)`."""
    for m in models:
        if m is not None:
            _ON[m] = on


def cache_kwarg(model) -> str:
    """The forward's name for the KV cache: `cache` in transformers 5's models (past_key_values, deprecated
    there, still in older and custom code). Looked up on the transformers model under a DDP or PEFT wrapper."""
    inner = getattr(model, "module", model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def _vocab(model) -> int:
    return int(model.get_input_embeddings().weight.shape[0])
