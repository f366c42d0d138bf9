"""`transformers` generation backend: batched sampling with a KV cache, on any device.

Why a hand-written decode loop instead of `model.generate`: we need, for every sampled token,
its log-prob under the *unmodified* policy (temperature 1, no top-p: the pi_old of NFT/GRPO
ratios). `generate(output_logits=True)` would keep a [batch, vocab] tensor per step for the
whole generation (hundreds of GB for a 150k vocabulary at long lengths); here the log-prob is
gathered as each token is drawn and the logits are dropped. The loop also stops as soon as every
sequence has produced EOS.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from selfimprove.engines import Sample, Sampling


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator) -> torch.Tensor:
    """Draw one token per row from [B, V] logits with temperature and nucleus (top-p) filtering."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        # drop a token when the mass before it already reaches top_p (the first token always stays)
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class HFEngine:
    def __init__(self, model, tokenizer, seed: int = 0):
        self.model = model
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    # The trainer and this engine share one model object, so the weights are always current.
    def load_weights(self, named_tensors=None) -> None:
        return None

    def sleep(self) -> None:
        return None

    def wake(self) -> None:
        return None

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[list[Sample]]:
        flat = [p for p in prompts for _ in range(sampling.n)]
        samples: list[Sample] = []
        # longest prompts together: less padding per batch
        order = sorted(range(len(flat)), key=lambda i: -len(flat[i]))
        by_pos: dict[int, Sample] = {}
        for start in range(0, len(order), sampling.batch_size):
            idx = order[start : start + sampling.batch_size]
            for i, s in zip(idx, self._generate_batch([flat[i] for i in idx], sampling)):
                by_pos[i] = s
        samples = [by_pos[i] for i in range(len(flat))]
        return [samples[i * sampling.n : (i + 1) * sampling.n] for i in range(len(prompts))]

    @torch.inference_mode()
    def _generate_batch(self, prompts: list[list[int]], sp: Sampling) -> list[Sample]:
        model = self.model
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        B, L = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, L), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every row's next token is at column L
            ids[i, L - len(p) :] = torch.tensor(p)
            mask[i, L - len(p) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                    use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1].float()
        next_pos = pos[:, -1:] + 1
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        toks, lps = [], []
        for _ in range(sp.max_new_tokens):
            nxt = sample_token(logits, sp.temperature, sp.top_p, self.generator if device.type == "cpu" else None)
            lp = torch.log_softmax(logits, dim=-1).gather(-1, nxt[:, None]).squeeze(-1)
            nxt = torch.where(finished, torch.full_like(nxt, self.pad_id), nxt)
            toks.append(nxt)
            lps.append(lp)
            finished = finished | (nxt == self.eos_id)
            if bool(finished.all()):
                break
            mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=device)], dim=1)
            out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=next_pos,
                        past_key_values=out.past_key_values, use_cache=True)
            logits = out.logits[:, -1].float()
            next_pos = next_pos + 1
        if was_training:
            model.train()
        tok_rows = torch.stack(toks, 1).tolist()
        lp_rows = torch.stack(lps, 1).tolist()
        result = []
        for trow, lrow in zip(tok_rows, lp_rows):
            if self.eos_id in trow:
                k = trow.index(self.eos_id) + 1
                result.append(Sample(trow[:k], lrow[:k], "stop"))
            else:
                result.append(Sample(trow, lrow, "length"))
        return result
