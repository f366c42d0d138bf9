"""Packed (padding-free) forward passes and micro-batches by token budget (train.packing, train.micro_batch_tokens).

A packed forward runs a micro-batch's sequences concatenated into rows with position ids restarting at 0 per
sequence and no attention mask: transformers then builds a block-diagonal causal mask from the restarting
positions (masking_utils.find_packed_sequence_indices, for eager / sdpa / flex attention) or runs flash
attention's varlen kernels on one row [1, N], so each sequence attends only to itself. With a dense mask a
single row would cost N^2 in attention (up to 2x slower than padded on CPU at 64 sequences), hence rows as
long as the longest sequence there. Only the positions whose log-probs are used go through lm_head and
log_softmax (transformers' `logits_to_keep` as a boolean mask), and the result is scattered back into
collate's padded [B, L - 1] target columns: every algorithm's loss, `aggregate` and the entropy metric are
unchanged.

Whether a model packs correctly is measured, not looked up: a one-time probe per model object runs three
short sequences packed and padded and compares their log-probs (custom code that ignores position_ids, or
attention that leaks across the sequences, fails it); such models keep padded batches.
"""

from __future__ import annotations

import weakref

import torch

from selfimprove.batch import entropy_sum, micro_batches, token_logprobs
from selfimprove.errors import UserError

MODES = ("auto", "true", "false")
PROBE_LENGTHS = (7, 4, 3)  # packed as rows [7] and [4, 3] (one row for flash): a leak shows in the later ones
_probed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> (packs, max |difference|, why not)


def varlen(model) -> bool:
    """True where attention runs packed sequences without a dense mask (flash attention's varlen kernels, which
    transformers uses for one packed row). Wrappers (DDP, DeepSpeed) hold the model in `.module`."""
    for _ in range(3):
        config = getattr(model, "config", None)
        if config is not None:
            return "flash" in str(getattr(config, "_attn_implementation", None) or "")
        model = getattr(model, "module", None)
    return False


def rows_of(lengths: list[int], capacity: int) -> list[tuple[int, int]]:
    """(row, offset) of each sequence packed into rows of `capacity` tokens, first-fit by decreasing length."""
    used: list[int] = []
    out = [(0, 0)] * len(lengths)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r, u in enumerate(used) if u + lengths[i] <= capacity), len(used))
        if r == len(used):
            used.append(0)
        out[i] = (r, used[r])
        used[r] += lengths[i]
    return out


def packed_layout(batch, keep: torch.Tensor | None = None, one_row: bool = True):
    """The packed rows of a right-padded batch: (input ids [R, C], position ids [R, C], the target columns kept
    [B, L - 1] (bool), their flat positions in the rows [K], their target tokens [K]). `one_row`: all sequences
    in one row [1, N] (flash attention's varlen path); else rows as long as the longest sequence, filled first-fit
    (with a dense mask, attention costs rows x C^2: never more than the padded batch's). Row tails are a sequence
    of their own (positions from 0) whose logits nobody reads. `keep` [B, L - 1]: only these columns (e.g. the
    trained tokens) get log-probs; the others stay 0."""
    attn = batch["attention_mask"].bool()  # [B, L]: collate pads on the right
    B, L = attn.shape
    dev = attn.device
    lengths = attn.sum(1)
    lens = lengths.tolist()
    C = sum(lens) if one_row else max(lens)
    place = torch.tensor(rows_of(lens, C), device=dev)  # [B, 2]
    R = int(place[:, 0].max()) + 1
    base = place[:, 0] * C + place[:, 1]  # flat position of each sequence's first token
    col = torch.arange(L, device=dev)
    flat = (base[:, None] + col[None, :])[attn]  # [N]
    ids = torch.zeros(R * C, dtype=torch.long, device=dev)
    ids[flat] = batch["input_ids"][attn]
    used = torch.zeros(R, dtype=torch.long, device=dev).index_add_(0, place[:, 0], lengths)
    pos = torch.arange(C, device=dev)[None, :].repeat(R, 1)
    pos = torch.where(pos >= used[:, None], pos - used[:, None], pos).view(-1)  # the tail restarts at 0
    pos[flat] = col[None, :].expand(B, L)[attn]  # each sequence restarts at 0
    cols = col[None, :-1] < (lengths - 1)[:, None]  # [B, L - 1]: columns whose target is a real token
    if keep is not None and bool((cols & keep.bool()).any()):
        cols = cols & keep.bool()
    where = (base[:, None] + col[None, :-1])[cols]  # token (i, j) sits at base[i] + j; its logits score j + 1
    return ids.view(R, C), pos.view(R, C), cols, where, batch["targets"][cols]


_NO_KEEP: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # models whose forward takes no 2D logits_to_keep


def packed_logprobs(model, batch, stats: dict | None = None, trained_only: bool = False) -> torch.Tensor:
    """token_logprobs' result ([B, L - 1], float32) from one packed forward. `trained_only`: log-probs only at the
    trained columns (batch["mask"]; 0 elsewhere), which is all the losses read; else at every real target."""
    ids, pos, cols, where, targets = packed_layout(batch, batch["mask"] if trained_only else None, varlen(model))
    keep = torch.zeros(ids.numel(), dtype=torch.bool, device=ids.device)
    keep[where] = True
    # use_cache=False: with a cache transformers does not look for packed position ids (masking_utils)
    logits = None
    if model not in _NO_KEEP:
        try:
            logits = model(input_ids=ids, position_ids=pos, use_cache=False, logits_to_keep=keep.view(ids.shape)).logits
        except IndexError:  # transformers before 5.2x slices by a 1D logits_to_keep only: every position, then
            _NO_KEEP[model] = True
    if logits is None:
        logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits
    if logits.dim() == 3:  # a forward that ignores logits_to_keep returns every position
        logits = logits.reshape(-1, logits.shape[-1])[where]
    else:  # the kept positions in flat order: put them in the order of `where`
        logits = logits[torch.argsort(where).argsort()]
    logp = torch.log_softmax(logits.float(), dim=-1)  # [K, V]: never the padded [B, L - 1, V]
    if stats is not None:
        total, count = entropy_sum(logp[batch["mask"][cols].bool()])
        stats["entropy_sum"] += total
        stats["entropy_tokens"] += count
    lp = logp.gather(-1, targets[:, None]).squeeze(-1)  # [K]
    return lp.new_zeros(cols.shape).masked_scatter(cols, lp)


def logprobs(model, batch, stats: dict | None = None, packed: bool = False) -> torch.Tensor:
    """The update's log-probs: packed where the model packs, padded otherwise and with kl_estimator full (the exact
    KL needs the policy's whole [B, T, V] distributions in the padded layout of the reference's)."""
    if packed and "ref_logsoftmax" not in batch:
        return packed_logprobs(model, batch, stats, trained_only=True)
    return token_logprobs(model, batch, stats)


@torch.no_grad()
def probe(module, vocab_size: int, device, tol: float) -> tuple[bool, float, str]:
    """(packs, max |packed - padded| log-prob, why not), once per module object. Run in eval mode (no dropout)."""
    if module in _probed:
        return _probed[module]
    n = sum(PROBE_LENGTHS)
    seq = (torch.arange(n) * 7919 + 13) % vocab_size  # spread-out token ids, the same on every process
    ids = torch.zeros((len(PROBE_LENGTHS), max(PROBE_LENGTHS)), dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, part in enumerate(seq.split(PROBE_LENGTHS)):
        ids[i, : len(part)], attn[i, : len(part)] = part, 1
    batch = {"input_ids": ids.to(device), "attention_mask": attn.to(device), "targets": ids[:, 1:].to(device),
             "mask": attn[:, 1:].float().to(device)}
    was_training = module.training
    module.eval()
    try:
        padded = token_logprobs(module, batch)
        packed = packed_logprobs(module, batch)
    except TypeError as e:  # a forward without position_ids / use_cache / logits_to_keep (custom code)
        result = (False, float("inf"), f"its forward does not take packed inputs ({e})")
    else:
        real = packed_layout(batch)[2]
        diff = float((packed - padded)[real].abs().max())
        result = (diff <= tol, diff, "" if diff <= tol else f"packed log-probs differ from padded ones by {diff:.3g}")
    finally:
        module.train(was_training)
    _probed[module] = result
    return result


def use_packing(mode: str, module, vocab_size: int, device, dtype: str = "float32", say=None) -> bool:
    """train.packing resolved for `module`: false -> False; auto -> the probe's answer; true -> True, or one error
    line when the probe rejects the model. `say`: log the decision (once per run, for the policy)."""
    mode = str(mode).lower()  # YAML's true / false, or the names
    if mode == "false":
        return False
    # 16-bit autocast rounds packed and padded forwards differently; a leak across sequences is far larger
    ok, diff, why = probe(module, vocab_size, device, tol=1e-3 if dtype == "float32" else 5e-2)
    name = type(module).__name__
    if mode == "true" and not ok:
        raise UserError(f"train.packing=true: {name} cannot run packed sequences ({why}); use train.packing=auto "
                        "(padded batches where a model cannot pack) or false")
    if say is not None:
        say(f"train.packing={mode}: packed updates (probe: packed log-probs match padded within {diff:.1e})" if ok
            else f"train.packing=auto: {name} cannot pack ({why}); padded batches")
    return ok


def split(items: list, lengths: list[int], size: int, max_tokens: int, packed: bool) -> list[list]:
    """Micro-batches of `items` (in order): `size` items each when max_tokens is 0; else greedily at most max_tokens
    tokens each, counted as the forward sees them (the sum of lengths packed, count x longest padded). A longer
    sequence gets a micro-batch of its own. The loss is normalised by whole-mini-batch counts: any split gives the
    same gradient."""
    if max_tokens <= 0:
        return micro_batches(items, size)
    out, cur, total, longest = [], [], 0, 0
    for item, n in zip(items, lengths):
        cost = total + n if packed else (len(cur) + 1) * max(longest, n)
        if cur and cost > max_tokens:
            out.append(cur)
            cur, total, longest = [], 0, 0
        cur.append(item)
        total, longest = total + n, max(longest, n)
    return out + [cur] if cur else out

