"""collate(traces) -> padded tensors: where the one record becomes tensors for the loss.

Every tensor is aligned to *targets*: column j scores token j + 1 of the sequence, so the model's
logits[:, :-1] line up with it. `mask` is 1 on tokens of trainable turns only (never on prompts,
instructions or judge text).
"""

from __future__ import annotations

import torch

from selfimprove import prefix


def collate(traces, pad_id: int, meta_keys=(), device="cpu") -> dict[str, torch.Tensor]:
    seqs = [tr.token_ids for tr in traces]
    L = max(len(s) for s in seqs)
    B = len(traces)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    attn = torch.zeros((B, L), dtype=torch.long)
    mask = torch.zeros((B, L - 1), dtype=torch.float32)
    old = torch.zeros((B, L - 1), dtype=torch.float32)
    tok_adv = torch.zeros((B, L - 1), dtype=torch.float32)  # per-token advantage (the turn's, else the trace's)
    turn_id = torch.zeros((B, L - 1), dtype=torch.long)  # 1 for the first trainable turn, 2 for the second...
    for i, tr in enumerate(traces):
        pos, k = 0, 0
        for turn in tr.turns:
            n = len(turn.token_ids)
            if n:
                ids[i, pos : pos + n] = torch.tensor(turn.token_ids)
                if turn.trainable:
                    # token at sequence position p is predicted at target column p - 1
                    k += 1
                    mask[i, pos - 1 : pos - 1 + n] = 1.0
                    turn_id[i, pos - 1 : pos - 1 + n] = k
                    adv = turn.advantage if turn.advantage is not None else (tr.advantage or 0.0)
                    tok_adv[i, pos - 1 : pos - 1 + n] = adv
                    if turn.logprobs is not None:
                        old[i, pos - 1 : pos - 1 + n] = torch.tensor(turn.logprobs)
            pos += n
        attn[i, :pos] = 1
    batch = {
        "input_ids": ids.to(device),
        "attention_mask": attn.to(device),
        "targets": ids[:, 1:].to(device),
        "mask": mask.to(device),
        "old_logp": old.to(device),
        "tok_adv": tok_adv.to(device),
        "turn_id": turn_id.to(device),
        # the first turn (the prompt) of every trace: rows with equal ones share its forward (prefix.py)
        "prefix_len": torch.tensor([len(tr.turns[0].token_ids) if tr.turns else 0 for tr in traces], device=device),
        "advantage": torch.tensor([tr.advantage or 0.0 for tr in traces], dtype=torch.float32, device=device),
        "reward": torch.tensor([tr.reward for tr in traces], dtype=torch.float32, device=device),
    }
    for key in meta_keys:
        batch[key] = torch.tensor([float(tr.meta[key]) for tr in traces], dtype=torch.float32, device=device)
    return batch


def token_logprobs(model, batch, stats: dict | None = None) -> torch.Tensor:
    """log pi(target token) for every target column: [B, L - 1], float32. With `stats`, the policy's entropy
    over the trained tokens (batch["mask"]) is added to stats["entropy_sum"] and their count to
    stats["entropy_tokens"], from the same log-probabilities (no second forward pass). With the reference's
    whole distributions in the batch (kl_estimator full), the policy's [B, L - 1, V] log-softmax is kept in
    batch["policy_logsoftmax"] for the exact KL (the graph keeps that tensor anyway: no extra memory)."""
    if prefix.usable(model, batch):  # each distinct prompt runs once (train.shared_prefix)
        logits = prefix.shared_logits(model, batch)
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    logp = torch.log_softmax(logits.float(), dim=-1)
    if "ref_logsoftmax" in batch:
        batch["policy_logsoftmax"] = logp
    if stats is not None:
        total, count = masked_entropy(logp, batch["mask"])
        stats["entropy_sum"] += total
        stats["entropy_tokens"] += count
    return logp.gather(-1, batch["targets"][..., None]).squeeze(-1)


@torch.no_grad()
def masked_entropy(logp: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """(sum, count) of the entropy -sum_v p log p of each position's distribution where mask is 1.
    logp: [B, T, V] log-probabilities; mask: [B, T]. entr(0) = 0, where p * log p would be 0 * -inf = nan."""
    return entropy_sum(logp[mask.bool()])  # only the trained positions: [N, V], not the whole padded [B, T, V]


@torch.no_grad()
def entropy_sum(rows: torch.Tensor) -> tuple[float, int]:
    """(sum, count) of the entropies of the rows of `rows` [N, V] (log-probabilities)."""
    total = 0.0
    for chunk in rows.split(128):  # exp() of a large vocabulary is a second [N, V] tensor: bound it
        total += float(torch.special.entr(chunk.exp()).sum())
    return total, int(rows.shape[0])


def micro_batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]
