"""`transformers` generation backend: batched sampling with a KV cache, on any device.

Why a hand-written decode loop instead of `model.generate`: we need, for every sampled token,
its log-prob under the *unmodified* policy (temperature 1, no top-p: the pi_old of NFT/GRPO
ratios). `generate(output_logits=True)` would keep a [batch, vocab] tensor per step for the
whole generation (hundreds of GB for a 150k vocabulary at long lengths); here the log-prob is
gathered as each token is drawn and the logits are dropped. The loop also stops as soon as every
sequence has produced EOS, drops finished rows from the batch (seeded and greedy decoding), and
prefills each prompt once for its n samples.
"""

from __future__ import annotations

import torch
from transformers import (
    DynamicCache,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    StopStringCriteria,
    TopKLogitsWarper,
)

from selfimprove.engines.base import Sample, Sampling


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator,
                 uniforms: torch.Tensor | None = None, top_k: int = 0, min_p: float = 0.0) -> torch.Tensor:
    """Draw one token per row from [B, V] logits with temperature, then top-k, min-p and nucleus (top-p)
    filtering (transformers' order). With `uniforms` ([B] in [0, 1)) each row is drawn by inverse CDF from
    its own number, so a row's token does not depend on which other rows share the batch (or the process)."""
    if temperature == 0:
        return logits.argmax(-1)
    scores = logits / temperature
    if top_k > 0:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if min_p > 0:
        scores = MinPLogitsWarper(min_p)(None, scores)
    probs = torch.softmax(scores, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        # drop a token when the mass before it already reaches top_p (the first token always stays)
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    if uniforms is not None:
        cdf = probs.cumsum(-1)
        # right side: the first token whose cdf exceeds u, so a filtered (zero-probability) token is never drawn
        u = (uniforms * cdf[:, -1])[:, None]
        return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def row_uniforms(seeds: list[int], n: int, steps: int, device) -> torch.Tensor:
    """[len(seeds) * n, steps] uniforms: sample j of the prompt with seed s draws from its own stream."""
    rows = []
    for s in seeds:
        for j in range(n):
            g = torch.Generator().manual_seed((s * 1_000_003 + j) % (1 << 63))
            rows.append(torch.rand(steps, generator=g, dtype=torch.float64))
    return torch.stack(rows).to(device=device, dtype=torch.float32)


class HFEngine:
    def __init__(self, model, tokenizer, seed: int = 0, source=None):
        self.model = model
        self.compact = True  # finished rows leave the decoding batch (see _generate_batch)
        self.source = source  # asynchronous rollout: `model` is this engine's own copy of the trainer's `source`
        self.tokenizer = tokenizer
        self._stop_criteria: dict[tuple[str, ...], StopStringCriteria] = {}  # built once per set of stop strings
        self.eos_id = tokenizer.eos_token_id
        # every end-of-turn id: Qwen and Llama-3 configs list several (e.g. <|im_end|> and <|endoftext|>)
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        extra = gen_eos if isinstance(gen_eos, list) else ([gen_eos] if gen_eos is not None else [])
        self.stop_ids = sorted({self.eos_id, *extra} - {None})
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        device = next(model.parameters()).device
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def load_weights(self) -> None:
        """Shared with the trainer: the weights are always current. A copy (asynchronous rollout): the trainer's
        weights are copied into it, in the copy's dtype."""
        if self.source is None:
            return
        with torch.no_grad():
            for dst, src in zip(self.model.parameters(), self.source.parameters(), strict=True):
                dst.copy_(src)

    def sleep(self) -> None:
        return None

    def wake(self) -> None:
        return None

    def close(self) -> None:
        return None

    def generate(self, prompts: list[list[int]], sampling: Sampling, seeds: list[int] | None = None) -> list[list[Sample]]:
        """n samples per prompt. With `seeds` (one per prompt) every sample has its own random stream, so
        the samples are the same however the prompts are split over batches and processes."""
        n = sampling.n
        per_batch = max(1, sampling.batch_size // n)  # prompts per forward batch (each becomes n rows)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths: less padding
        out: dict[int, list[Sample]] = {}
        for start in range(0, len(order), per_batch):
            idx = order[start : start + per_batch]
            rows = self._generate_batch([prompts[i] for i in idx], sampling,
                                        None if seeds is None else [seeds[i] for i in idx])
            for k, i in enumerate(idx):
                out[i] = rows[k * n : (k + 1) * n]
        return [out[i] for i in range(len(prompts))]

    @torch.inference_mode()
    def _generate_batch(self, prompts: list[list[int]], sp: Sampling, seeds: list[int] | None = None) -> list[Sample]:
        """Rows come back prompt-major: prompt 0's n samples, then prompt 1's, ..."""
        model = self.model
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        P, L = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((P, L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((P, L), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every row's next token is at column L
            ids[i, L - len(p) :] = torch.tensor(p)
            mask[i, L - len(p) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        # Prefill each prompt once, then copy its KV cache to its n samples (a shared prefix):
        # n times less prefill compute than repeating the prompt n times.
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                    use_cache=True, logits_to_keep=1)
        n = sp.n
        if n > 1:
            out.past_key_values.batch_repeat_interleave(n)
        logits = out.logits[:, -1].float().repeat_interleave(n, dim=0)
        mask = mask.repeat_interleave(n, dim=0)
        next_pos = pos[:, -1:].repeat_interleave(n, dim=0) + 1
        B = P * n
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        end = torch.full((B,), -1, dtype=torch.long, device=device)  # the step at which each row stopped
        stop = torch.tensor(self.stop_ids, device=device)
        stop_strings = self._stop_strings(sp.stop)
        # repetition penalty: over the prompt's tokens and the completion's; padding is replaced by the row's
        # last prompt token (left padding: column L-1 is always real), which the penalty already counts
        seen = None
        if sp.repetition_penalty != 1:
            rows = ids.repeat_interleave(n, dim=0)
            seen = torch.where(mask.bool(), rows, rows[:, -1:])
        u = row_uniforms(seeds, n, sp.max_new_tokens, device) if seeds is not None and sp.temperature > 0 else None
        # finished rows leave the batch (their KV cache too) once they are a quarter of it: decoding costs the
        # tokens sampled, not rows x the longest. Only where no shared generator draws (seeded rows, greedy):
        # there a row's tokens do not depend on which rows share its batch
        compact = self.compact and (u is not None or sp.temperature == 0)
        toks = torch.full((B, sp.max_new_tokens), self.pad_id, dtype=torch.long, device=device)
        lps = torch.zeros((B, sp.max_new_tokens), device=device)
        live = torch.arange(B, device=device)  # the rows in the batch, by their index in the output
        cache, steps = out.past_key_values, 0
        for t in range(sp.max_new_tokens):
            scores = logits if seen is None else RepetitionPenaltyLogitsProcessor(sp.repetition_penalty)(seen, logits)
            nxt = sample_token(scores, sp.temperature, sp.top_p, self.generator, None if u is None else u[live, t],
                               sp.top_k, sp.min_p)
            # the log-prob under the unmodified policy (no temperature, filtering or penalty): pi_old
            lp = torch.log_softmax(logits, dim=-1).gather(-1, nxt[:, None]).squeeze(-1)
            done = finished[live]
            nxt = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)
            toks[live, t], lps[live, t], steps = nxt, lp, t + 1
            if seen is not None:
                seen = torch.cat([seen, nxt[:, None]], dim=1)
            ends = torch.isin(nxt, stop)
            if stop_strings is not None:  # a stop string completed by this token (in the completion only)
                ends = ends | stop_strings(toks[live, : t + 1], None).to(device)
            end[live] = torch.where(~done & ends, torch.full_like(nxt, t), end[live])
            done = done | ends
            finished[live] = done
            if bool(done.all()):
                break
            if compact and int(done.sum()) * 4 >= len(live):
                keep = (~done).nonzero().squeeze(-1)
                cache.batch_select_indices(keep)
                live, mask, next_pos, nxt = live[keep], mask[keep], next_pos[keep], nxt[keep]
                seen = seen[keep] if seen is not None else None
            mask = torch.cat([mask, torch.ones((len(live), 1), dtype=mask.dtype, device=device)], dim=1)
            out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=next_pos, past_key_values=cache,
                        use_cache=True)
            logits = out.logits[:, -1].float()
            next_pos = next_pos + 1
        if was_training:
            model.train()
        tok_rows = toks[:, :steps].tolist()
        lp_rows = lps[:, :steps].tolist()
        return [Sample(trow[: e + 1], lrow[: e + 1], "stop") if e >= 0 else Sample(trow, lrow, "length")
                for trow, lrow, e in zip(tok_rows, lp_rows, end.tolist())]

    def _stop_strings(self, stop: tuple[str, ...]) -> StopStringCriteria | None:
        """transformers' stop-string matcher (it finds a string spread over several tokens, or ending inside the
        last one), built once per set of strings: it preprocesses the whole vocabulary."""
        if not stop:
            return None
        key = tuple(stop)
        if key not in self._stop_criteria:
            self._stop_criteria[key] = StopStringCriteria(self.tokenizer, list(key))
        return self._stop_criteria[key]
