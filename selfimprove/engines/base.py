"""The engine contract: sampling settings, one sample, and the protocol every backend implements.

Kept apart from the backends so that rewards (which query the policy through the engine) import the
contract alone.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol


@dataclass
class Sampling:
    n: int = 1
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 16
    batch_size: int = 512  # sequences per forward batch
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # 1: off; over the prompt's and the completion's tokens (vLLM, transformers)
    # a completion ends with the token that completes the first of these strings (finish_reason "stop"); the
    # string stays in the completion, so its text is the decoding of exactly the token ids trained on
    stop: tuple[str, ...] = ()

    @classmethod
    def of(cls, cfg, **override) -> Sampling:
        """The settings of a recipe section (GenerationConfig, EvalConfig: every field it has), then `override`."""
        values = {f.name: getattr(cfg, f.name) for f in fields(cls) if hasattr(cfg, f.name)}
        values.update(override)
        values["stop"] = tuple(values.get("stop") or ())
        return cls(**values)


@dataclass
class Sample:
    token_ids: list[int]  # sampled ids, EOS included when it was sampled
    logprobs: list[float]  # log pi(token) under the unmodified policy (temperature 1, no top-p)
    finish_reason: str  # "stop" | "length"


class Engine(Protocol):
    """`generate` samples n completions per token-id prompt (with `seeds`, one per prompt, each prompt's
    samples do not depend on batching or processes); `load_weights` pushes the trainer's current
    weights; `sleep`/`wake` free and restore memory around the update where the backend can; `close`
    shuts it down; `generator` is the torch generator the checkpoint saves (None: nothing to save)."""

    generator: object

    def generate(self, prompts: list[list[int]], sampling: Sampling, seeds: list[int] | None = None) -> list[list[Sample]]: ...

    def load_weights(self) -> None: ...

    def sleep(self) -> None: ...

    def wake(self) -> None: ...

    def close(self) -> None: ...
