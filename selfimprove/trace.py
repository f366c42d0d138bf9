"""The one record: everything between sampling and collation is a `list[Trace]` of plain values.

A trace is a token-level episode. Its `turns` hold every segment of the sequence in order
(the chat-formatted prompt, each sampled attempt, any instruction in between), each with its
token ids, so the model input is simply the concatenation of all turns' ids and the loss mask
is "the tokens of trainable turns". Nothing is re-tokenised from text between turns.
Tensors exist only from `batch.collate` to the optimizer step.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable


@dataclass
class Turn:
    role: str  # "user" | "assistant" | "judge" (the prompt is a non-trainable "user" turn)
    text: str
    token_ids: list[int]
    logprobs: list[float] | None = None  # sampler log-probs of token_ids; None when not sampled
    trainable: bool = False  # the loss covers these tokens
    reward: float | None = None  # per-turn score (SCoRe's r(y1), r(y2))
    finish_reason: str | None = None  # "stop" (EOS) | "length" (hit max_new_tokens)
    advantage: float | None = None  # per-turn advantage (multi-turn methods); None: the trace's


@dataclass
class Trace:
    id: str
    group_id: str  # the n samples of one prompt share it
    task: str  # routes rewards and metrics
    prompt: list[dict]  # chat messages shown to the model
    turns: list[Turn]
    answer: str | None = None  # reference answer, when the task has one
    rewards: dict[str, float | None] = field(default_factory=dict)  # named parts
    reward: float = 0.0  # weighted sum the algorithm uses
    advantage: float | None = None  # set by the algorithm's prepare()
    policy_version: int = 0  # optimizer steps of the weights that sampled it
    meta: dict = field(default_factory=dict)  # plain JSON values, e.g. {"nft.correct_rate": 0.25}
    columns: dict = field(default_factory=dict)  # the dataset row's other columns, by name (TRL-style rewards)
    prompt_text: str | None = None  # the prompt as given in standard (plain text) format; None: conversational
    source: str | None = None  # the bare source text (data.source_column): what source-based rewards score against

    @property
    def attempts(self) -> list[Turn]:
        """The sampled assistant turns in order: one for a single-turn trace, two for self-correction."""
        return [turn for turn in self.turns if turn.role == "assistant"]

    @property
    def completion(self) -> Turn:
        """The last assistant turn: what single-turn rewards score."""
        for turn in reversed(self.turns):
            if turn.role == "assistant":
                return turn
        raise ValueError(f"trace {self.id} has no assistant turn")

    @property
    def first_attempt(self) -> Turn:
        """Attempt 1 of a two-turn episode (the only attempt of a single-turn trace)."""
        return self._attempt(0)

    @property
    def second_attempt(self) -> Turn:
        """Attempt 2 of a two-turn episode: the answer after the instruction (rollout.add_second_attempt)."""
        return self._attempt(1)

    def _attempt(self, k: int) -> Turn:
        attempts = self.attempts
        if len(attempts) <= k:
            raise ValueError(f"trace {self.id} has {len(attempts)} attempt(s), not {k + 1}")
        return attempts[k]

    @property
    def token_ids(self) -> list[int]:
        return [t for turn in self.turns for t in turn.token_ids]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Trace":
        d = dict(d)
        d["turns"] = [Turn(**t) for t in d["turns"]]
        return cls(**d)


def groups(traces: Iterable[Trace]) -> dict[str, list[Trace]]:
    """Traces by group_id (the n samples of one prompt), in first-seen order."""
    out: dict[str, list[Trace]] = {}
    for tr in traces:
        out.setdefault(tr.group_id, []).append(tr)
    return out


def dump_jsonl(traces: Iterable[Trace], path: str | os.PathLike, append: bool = False) -> None:
    """Write one JSON object per line. Whole lines only: each line is written and flushed at once."""
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        for tr in traces:
            f.write(json.dumps(tr.to_dict(), ensure_ascii=False) + "\n")
        f.flush()


def load_jsonl(path: str | os.PathLike) -> list[Trace]:
    out = []
    with open(Path(path), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(Trace.from_dict(json.loads(line)))
    return out
