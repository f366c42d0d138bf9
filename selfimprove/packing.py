"""Packed (padding-free) forward passes and micro-batches by token budget (train.packing, train.micro_batch_tokens).

A packed forward runs a micro-batch's sequences concatenated into one row [1, N] (N = the sum of their
lengths) with position ids restarting at 0 per sequence and no attention mask: transformers then builds
a block-diagonal causal mask from the restarting positions (masking_utils.find_packed_sequence_indices, for
eager / sdpa / flex / flash attention), so each sequence attends only to itself. Only the positions whose
log-probs are used go through lm_head and log_softmax (transformers' `logits_to_keep` with indices), and
the result is scattered back into collate's padded [B, L - 1] target columns: every algorithm's loss,
`aggregate` and the entropy metric are unchanged.

Whether a model packs correctly is measured, not looked up: a one-time probe per model object runs two
short sequences packed and padded and compares their log-probs (custom code that ignores position_ids,
or attention that leaks across the sequences, fails it); such models keep padded batches.
"""

from __future__ import annotations

import weakref

import torch

from selfimprove.batch import entropy_sum, micro_batches, token_logprobs
from selfimprove.errors import UserError

MODES = ("auto", "true", "false")
PROBE_LENGTHS = (7, 4)  # two sequences of different length: the second would see the first if attention leaked
_probed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> (packs, max |difference|, why not)


def packed_layout(batch, keep: torch.Tensor | None = None):
    """The packed row of a right-padded batch: (input ids [N], position ids [N], target columns kept [B, L - 1]
    (bool), their positions in the packed row [K], their target tokens [K]). `keep` [B, L - 1]: only these
    columns (e.g. the trained tokens) get log-probs; the others stay 0."""
    attn = batch["attention_mask"].bool()  # [B, L]: collate pads on the right
    lengths = attn.sum(1)
    B, L = attn.shape
    ids = batch["input_ids"][attn]  # [N], the sequences one after the other
    starts = torch.cumsum(lengths, 0) - lengths
    pos = torch.arange(ids.shape[0], device=ids.device) - starts.repeat_interleave(lengths)
    col = torch.arange(L - 1, device=ids.device)
    cols = col[None, :] < (lengths - 1)[:, None]  # [B, L - 1]: columns whose target is a real token
    if keep is not None and bool((cols & keep.bool()).any()):
        cols = cols & keep.bool()
    where = (starts[:, None] + col[None, :])[cols]  # token at (i, j) sits at starts[i] + j; its logits score j + 1
    return ids, pos, cols, where, batch["targets"][cols]


def packed_logprobs(model, batch, stats: dict | None = None, trained_only: bool = False) -> torch.Tensor:
    """token_logprobs' result ([B, L - 1], float32) from one packed forward. `trained_only`: log-probs only at the
    trained columns (batch["mask"]; 0 elsewhere), which is all the losses read; else at every real target."""
    ids, pos, cols, where, targets = packed_layout(batch, batch["mask"] if trained_only else None)
    # use_cache=False: with a cache transformers does not look for packed position ids (masking_utils)
    logits = model(input_ids=ids[None], position_ids=pos[None], use_cache=False, logits_to_keep=where).logits[0]
    if logits.shape[0] == ids.shape[0]:  # a forward that ignores logits_to_keep returns every position
        logits = logits[where]
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

