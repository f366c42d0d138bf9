"""Format checks: pure string tests on the completion, 1.0 when the format holds, else 0.0."""

from __future__ import annotations

import re

_THINK = re.compile(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)


def think_format(traces, ctx=None) -> list[float]:
    """R1-Zero style: `<think>...</think><answer>...</answer>` and nothing else."""
    return [1.0 if _THINK.match(tr.completion.text) else 0.0 for tr in traces]


def regex_format(traces, ctx=None, pattern: str = r".+") -> list[float]:
    """1.0 when the whole completion matches `pattern` (re.fullmatch, DOTALL)."""
    rx = re.compile(pattern, re.DOTALL)
    return [1.0 if rx.fullmatch(tr.completion.text.strip()) else 0.0 for tr in traces]


def number_format(traces, ctx=None) -> list[float]:
    """The tiny world's answer format: the reply is one integer, ended by EOS (not truncated)."""
    return [
        1.0 if re.fullmatch(r"-?\d+", tr.completion.text.strip()) and tr.completion.finish_reason == "stop" else 0.0
        for tr in traces
    ]
