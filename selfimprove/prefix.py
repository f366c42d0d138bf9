"""Shared-prefix forwards: the n samples of a prompt run the prompt through the model once.

In a GRPO step every sample of a group starts with the same prompt; in the quickstart's shape about 2/3 of
the tokens of a padded update batch are that prompt repeated n times. Here (as in Prefix Grouper, arXiv
2506.05433) each distinct prompt of a micro-batch becomes one row, [prompt, rest of sample 1, rest of sample
2, ...], run in one forward pass under a 4D attention mask where each rest (the completion; for two-turn
traces attempt 1, the instruction and attempt 2) attends to the prompt and causally to itself only, at its
true positions. The prompt runs once, its gradient gathers every sample's, and no rest is padded to the
longest. The logits come back aligned with collate's target columns, so `batch.token_logprobs` and every
algorithm's loss are unchanged.

Rows share a prefix when their first turn's token ids are equal (checked, not taken from group_id). A model
is used this way only if a one-time probe on a tiny input gives the plain forward's log-probs
(`decide`, at setup); anything else (a model that ignores a custom 4D mask or position ids, flash attention,
which takes no 4D mask) runs the plain padded forward.
"""

from __future__ import annotations

import weakref

import torch

from selfimprove.errors import UserError

_ON: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model object -> True where shared forwards are used
ROW_MIN = 128  # tokens a shared row may always hold (whole groups of short completions share one prefix)
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

    One forward pass, a row per distinct prefix (Prefix Grouper's layout; more rows for a long group): [prefix, rest of member 1, rest
    of member 2, ...], each rest at its true positions (P, P + 1, ...), under a 4D mask where a rest token
    attends to the prefix and causally to its own rest only. Each row's tokens run once: no padding of the
    rests to the longest, no KV cache to copy, and one call instead of two (a forward's fixed cost is that
    of ~100 tokens of the tiny model)."""
    ids, attn, plen = batch["input_ids"], batch["attention_mask"], batch["prefix_len"]
    device = ids.device
    B, L = ids.shape
    lengths, starts, row_of = attn.sum(-1).tolist(), [0] * B, [0] * B
    prefixes, row_group = plan(ids, plen)
    # a row holds at most max(longest sequence, ROW_MIN) tokens (a longer group continues in a new row with its
    # prefix again): the dense mask's cost per row grows with its length squared, so long completions would
    # otherwise cost more attention than padded rows do
    cap = max(max(lengths), ROW_MIN)
    rows, pos, seg, open_row = [], [], [], {}  # seg: 0 the prefix, i + 1 trace i's rest; open_row: group -> row
    for i, (row, g) in enumerate(zip(ids.tolist(), row_group)):
        p = len(prefixes[g])
        rest = row[p : lengths[i]]
        r = open_row.get(g)
        if r is None or len(rows[r]) + len(rest) > cap:
            r = open_row[g] = len(rows)
            rows.append(list(prefixes[g]))
            pos.append(list(range(p)))
            seg.append([0] * p)
        row_of[i], starts[i] = r, len(rows[r])
        rows[r] += rest
        pos[r] += range(p, p + len(rest))
        seg[r] += [i + 1] * len(rest)
    R = max(len(r) for r in rows)
    row_ids = torch.tensor([r + [0] * (R - len(r)) for r in rows], device=device)  # padding: id 0 (masked out)
    row_pos = torch.tensor([q + [0] * (R - len(q)) for q in pos], device=device)
    sg = torch.tensor([q + [-1] * (R - len(q)) for q in seg], device=device)
    causal = torch.ones(R, R, dtype=torch.bool, device=device).tril()
    allowed = causal & (sg[:, None, :] >= 0) & ((sg[:, None, :] == 0) | (sg[:, None, :] == sg[:, :, None]))
    allowed |= torch.eye(R, dtype=torch.bool, device=device)  # a padding query sees itself: no NaN from softmax
    out = model(input_ids=row_ids, attention_mask=_mask4d(model, allowed[:, None]), position_ids=row_pos,
                use_cache=False).logits
    V, G = out.shape[-1], len(rows)
    flat = torch.cat([out.reshape(G * R, V), out.new_zeros(1, V)])
    # target column c of row i: the prefix's logits [g, c] for c < P_i (its last position predicts the first
    # token of the rest), the rest's [g, start_i + c - P_i] for P_i <= c < len_i - 1, else a zero row (padding)
    rg = torch.tensor(row_of, device=device)[:, None]
    c = torch.arange(L - 1, device=device)[None, :]
    p = plen[:, None]
    idx = torch.where(c < p, rg * R + c, rg * R + torch.tensor(starts, device=device)[:, None] + c - p)
    idx = torch.where(c < torch.tensor(lengths, device=device)[:, None] - 1, idx, G * R)
    return flat.index_select(0, idx.reshape(-1)).view(B, L - 1, V)


def _mask4d(model, allowed: torch.Tensor) -> torch.Tensor:
    """A custom [G, 1, R, R] mask as the model's attention takes it (transformers passes 4D masks through):
    boolean for sdpa and flex, additive (0 / the dtype's minimum) for eager."""
    inner = getattr(model, "module", model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    if getattr(inner.config, "_attn_implementation", "sdpa") != "eager":
        return allowed
    dtype = next(inner.parameters()).dtype
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


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


def decide(mode: str, model, pad_id: int, deepspeed: bool, say=print) -> bool:
    """train.shared_prefix for this run, decided on the float32 policy before accelerate wraps it (mixed
    precision would blur the comparison): auto uses it where the probe passes (not under DeepSpeed, whose
    ZeRO-3 has partitioned the weights by now: untested there); true demands it (an error where it cannot
    work). The reference is a copy of the policy (or the policy itself, LoRA)."""
    if mode == "false":
        return False
    if deepspeed and mode == "true":
        raise UserError("train.shared_prefix=true is not available under DeepSpeed (untested there); use auto or false")
    why = "DeepSpeed" if deepspeed else None
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


def _vocab(model) -> int:
    return int(model.get_input_embeddings().weight.shape[0])
