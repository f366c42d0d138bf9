"""No-gradient log-prob passes before the update: the frozen reference's and the trainer's own, and the
engine/trainer mismatch correction built on the latter. `before_update` runs them in the loop's order."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from selfimprove.algorithms.common import sequence_kl
from selfimprove.batch import collate, token_logprobs
from selfimprove.distributed import equal_counts, pad_forward, zero_stage
from selfimprove.packing import packed_logprobs, split, use_packing


def forward_logprobs(accelerator, module, traces, micro_batch_size: int, pad_id: int,
                     context=nullcontext, tokens: int = 0, packed: bool = False) -> list[list[float]]:
    """No-grad log-probs of every target position, per trace. `module` is never the DDP wrapper (its
    forward broadcasts buffers: a collective, and processes hold different numbers of traces); under
    ZeRO-3 every forward gathers parameters collectively, so all processes run as many micro-batches
    (padded with a one-token forward). `tokens` > 0: micro-batches by token budget; `packed`: packed forwards
    (0 at padding columns, which no caller reads)."""
    out = []
    parts = split(traces, [len(tr.token_ids) for tr in traces], micro_batch_size, tokens, packed)
    chunks = equal_counts(accelerator, parts, zero_stage(accelerator) == 3)
    for chunk in chunks:
        with torch.no_grad(), context():
            if not chunk:
                pad_forward(module, pad_id, accelerator.device)
                continue
            batch = collate(chunk, pad_id, device=accelerator.device)
            out.extend((packed_logprobs(module, batch) if packed else token_logprobs(module, batch)).cpu().tolist())
    return out


def reference_logprobs(accelerator, model, ref_model, traces, micro_batch_size: int, pad_id: int,
                       lora: bool, tokens: int = 0, packed: bool = False) -> list[list[float]]:
    """Reference-model log-probs, stored per trace for collation; with LoRA the reference is the policy
    with its adapters switched off (no second copy)."""
    module = accelerator.unwrap_model(model) if lora else ref_model
    return forward_logprobs(accelerator, module, traces, micro_batch_size, pad_id,
                            module.disable_adapter if lora else nullcontext, tokens, packed)


class FullReference:
    """kl_estimator full: the reference's log-softmax over the vocabulary is computed per micro-batch inside the
    update (`attach`), so memory holds one micro-batch's [B, T, V], never the whole batch's."""

    def __init__(self, module, context=nullcontext):
        self.module, self.context = module, context

    def attach(self, batch) -> None:
        with torch.no_grad(), self.context():
            logits = self.module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            batch["ref_logsoftmax"] = torch.log_softmax(logits.float(), dim=-1)


def attach_reference(batch, ref, rows: list[int], device) -> None:
    """The micro-batch's reference: its whole distributions (FullReference), or its per-trace log-probs."""
    if isinstance(ref, FullReference):
        ref.attach(batch)
    else:
        batch["ref_logp"] = pad_rows([ref[i] for i in rows], batch["mask"].shape[1], device)


def turn_kl_sums(trace, ref_row: list[float]) -> list[float]:
    """Per trainable turn, the summed k1 = sum_t (log pi_old - log ref) over its sampled tokens (the sampler's
    log-probs; `ref_row` aligned with collate's target columns: token at position p is column p - 1)."""
    out, pos = [], 0
    for turn in trace.turns:
        n = len(turn.token_ids)
        if turn.trainable:
            out.append(sequence_kl(turn.logprobs or [], ref_row[pos - 1 : pos - 1 + n]))
        pos += n
    return out


def before_update(state, traces) -> tuple[list, object, list | None]:
    """What the update needs, in order: (train traces, reference, trainer log-probs or None).

    With kl_in = reward the reference scores every sampled trace before `prepare` (its summed k1 per turn goes
    to meta["kl.k1"], which `prepare` subtracts from the reward); with the KL in the loss the reference is the
    train traces' log-probs (k3) or a FullReference (full). The trainer's own log-probs are recomputed when
    generation.mismatch_correction is on, or when the method takes pi_old from the trainer (old_logprobs)."""
    recipe, algo, acc = state.recipe, state.algo, state.accelerator
    cfg, g, mb, pad = recipe.algorithm, recipe.generation, recipe.train.micro_batch_size, state.tokenizer.pad_token_id
    lora = bool(recipe.model.lora_r)
    split_by = (recipe.train.micro_batch_tokens, reference_packs(state))  # micro-batches by tokens; packed forwards
    state.engine.sleep()  # a vLLM engine frees its memory for the passes and the update (GPU)
    kl = algo.kl(cfg)
    if kl is not None and kl[1] == "reward":
        rows = reference_logprobs(acc, state.model, state.ref_model, traces, mb, pad, lora, *split_by)
        for tr, row in zip(traces, rows):
            tr.meta["kl.k1"] = turn_kl_sums(tr, row)
    train_traces = algo.train_traces(traces, cfg)  # prepare (advantages), then mask_truncated
    ref = None
    if kl is not None and kl[1] == "loss" and kl[0] == "full":
        module = acc.unwrap_model(state.model) if lora else state.ref_model
        ref = FullReference(module, module.disable_adapter if lora else nullcontext)
    elif kl is not None and kl[1] == "loss":
        ref = reference_logprobs(acc, state.model, state.ref_model, train_traces, mb, pad, lora, *split_by)
    recompute = g.mismatch_correction != "none" or algo.old_logprobs(cfg, g.backend) == "trainer"
    trainer_lp = policy_logprobs(acc, state.model, train_traces, mb, pad, recipe.train.micro_batch_tokens,
                                 state.packing) if recompute else None
    return train_traces, ref, trainer_lp


def reference_packs(state) -> bool:
    """Whether the reference's passes run packed: the policy packs and so does the reference module (a frozen copy
    has its own probe, cached per module; with LoRA it is the policy's module). Every process calls it alike."""
    if not state.packing or (state.ref_model is None and not state.recipe.model.lora_r):
        return False
    acc = state.accelerator
    module = acc.unwrap_model(state.model) if state.recipe.model.lora_r else state.ref_model
    return use_packing("auto", module, len(state.tokenizer), acc.device, state.recipe.model.dtype)


def policy_logprobs(accelerator, model, traces, micro_batch_size: int, pad_id: int, tokens: int = 0,
                    packed: bool = False) -> list[list[float]]:
    """The trainer's own log-probs of the sampled tokens, before the update."""
    return forward_logprobs(accelerator, accelerator.unwrap_model(model), traces, micro_batch_size, pad_id,
                            tokens=tokens, packed=packed)


def pad_rows(rows, width: int, device) -> torch.Tensor:
    """Per-trace lists as a zero-padded [B, width] tensor (aligned with collate's target columns)."""
    out = torch.zeros((len(rows), width))
    for i, r in enumerate(rows):
        out[i, : min(len(r), width)] = torch.tensor(r[:width])
    return out.to(device)


def mismatch_weights(batch, trainer_lp: torch.Tensor, mode: str, cap: float) -> tuple[torch.Tensor | None, dict]:
    """Engine/trainer mismatch correction: the samples came from the engine's pi_engine, the loss
    is built on the trainer's pi_old. The trainer's log-probs become old_logp (so the ratio compares
    the trainer with itself) and each token is weighted by w = pi_old / pi_engine, truncated at
    `cap` for `tis` (Yao et al. 2025, "truncated importance sampling": min(w, C)). Mode "none" (pi_old
    from the trainer, as NFT's code: `old_logprobs: trainer`): old_logp is replaced, no weight (None)."""
    mask = batch["mask"]
    log_w = (trainer_lp - batch["old_logp"]) * mask
    w = torch.exp(log_w)
    clipped = (w > cap) & (mask > 0)
    if mode == "tis":
        w = w.clamp(max=cap)
    batch["old_logp"] = trainer_lp
    n = mask.sum().clamp(min=1)
    stats = {"mismatch/is_weight_mean": float((w * mask).sum() / n), "mismatch/clipped_frac": float(clipped.sum() / n),
             "mismatch/abs_log_ratio": float(log_w.abs().sum() / n)}
    return (w * mask if mode != "none" else None), stats
