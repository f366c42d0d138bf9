"""A trained scalar reward model as a reward: `reward_model(traces, ctx, model="runs/x/reward_model")`.

The model is an `AutoModelForSequenceClassification` with one label, e.g. the `reward_model/` folder
of a `selfimprove train recipes/reward_model/...` run (or any Bradley-Terry RM saved in HF format).
Each trace is rendered exactly as in training (`encode`): the trace's chat prompt plus its last
assistant turn through the RM's own chat template, so the RM may use another tokenizer than the
policy. Multi-turn traces are scored as the last attempt answering the original prompt.

Recipe:  rewards: [{fn: reward_model, kwargs: {model: runs/rm/reward_model, normalize: sigmoid}}]
"""

from __future__ import annotations

import functools
import math

import torch
from transformers import AutoModelForSequenceClassification

from selfimprove.errors import UserError
from selfimprove.hub import from_pretrained, load_tokenizer, resolve_model

NORMALIZE = ("none", "sigmoid")


def encode(tokenizer, prompt: list[dict], completion: str) -> list[int]:
    """Token ids of prompt + answer through the chat template: the one rendering for training and scoring."""
    messages = list(prompt) + [{"role": "assistant", "content": completion}]
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


def score_ids(model, pad_id: int, rows: list[list[int]], batch_size: int = 64) -> list[float]:
    """Scalar scores of token-id rows, in order; rows are right-padded per batch (longest first: less padding)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    out = [0.0] * len(rows)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(rows[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for k, i in enumerate(idx):
            ids[k, : len(rows[i])] = torch.tensor(rows[i])
            mask[k, : len(rows[i])] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # [B, 1]
        for k, v in zip(idx, logits[:, 0].float().tolist()):
            out[k] = v
    if was_training:
        model.train()
    return out


@functools.lru_cache(maxsize=4)
def load_reward_model(path: str):
    """(model, tokenizer) of a saved RM, loaded once per path and process (rewards run every step)."""
    local = resolve_model(path, "reward_model")  # a missing folder is a UserError naming it
    tokenizer = load_tokenizer(local, "reward_model")
    on_gpu = torch.cuda.is_available()
    model = from_pretrained(AutoModelForSequenceClassification, local, "reward_model",
                            dtype=torch.bfloat16 if on_gpu else torch.float32)
    if model.config.num_labels != 1:
        raise UserError(f"reward_model: {path} has num_labels={model.config.num_labels}; a reward model has 1")
    # sequence classifiers pool the last non-pad token, so the config must know the pad id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.to("cuda" if on_gpu else "cpu").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


def reward_model(traces, ctx=None, model: str = "", normalize: str = "none", batch_size: int = 64) -> list[float]:
    """The RM's score of each trace's last answer; `normalize: sigmoid` maps it into (0, 1)."""
    if not model:
        raise UserError("reward 'reward_model' needs kwargs.model: the folder of a trained reward model")
    if normalize not in NORMALIZE:
        raise UserError(f"reward 'reward_model': normalize must be one of {', '.join(NORMALIZE)}, got '{normalize}'")
    rm, tokenizer = load_reward_model(model)
    limit = getattr(rm.config, "max_position_embeddings", None)
    rows = [encode(tokenizer, tr.prompt, tr.completion.text) for tr in traces]
    if limit:  # keep the answer end: the head reads the last token
        rows = [r[-limit:] for r in rows]
    scores = score_ids(rm, tokenizer.pad_token_id, rows, batch_size)
    if normalize == "sigmoid":
        return [1.0 / (1.0 + math.exp(-s)) for s in scores]
    return scores
