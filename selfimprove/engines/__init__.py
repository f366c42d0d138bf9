"""Generation backends behind one small interface.

An engine turns token-id prompts into samples with token ids and the sampler's log-probs:

    engine.generate(prompts: list[list[int]], sampling: Sampling, seeds=None) -> list[list[Sample]]  # n per prompt
    # seeds: one per prompt; then each sample's randomness is its own (independent of batching and processes)
    engine.load_weights(named_tensors)   # push the trainer's current weights
    engine.sleep() / engine.wake()       # free / restore memory where the backend can

`hf.HFEngine` runs everywhere (it shares the trainer's model object, so load_weights is a no-op);
a vLLM backend drops in behind the same calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass
class Sampling:
    n: int = 1
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 16
    batch_size: int = 512  # sequences per forward batch


@dataclass
class Sample:
    token_ids: list[int]  # sampled ids, EOS included when it was sampled
    logprobs: list[float]  # log pi(token) under the unmodified policy (temperature 1, no top-p)
    finish_reason: str  # "stop" | "length"


class Engine(Protocol):
    def generate(self, prompts: list[list[int]], sampling: Sampling, seeds: list[int] | None = None) -> list[list[Sample]]: ...

    def load_weights(self, named_tensors) -> None: ...

    def sleep(self) -> None: ...

    def wake(self) -> None: ...


def make_engine(backend: str, model, tokenizer, seed: int = 0):
    if backend == "hf":
        from selfimprove.engines.hf import HFEngine

        return HFEngine(model, tokenizer, seed=seed)
    raise ValueError(f"unknown generation backend '{backend}'")
