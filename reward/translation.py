"""Translation rewards and metrics: chrF against a reference (sacrebleu), COMET-Kiwi (reference-free).

`extract="answer"` scores only the text inside the last <answer>...</answer> (R1-Zero style
replies, SSR's actor format); a reply without the tags then scores 0. `extract="none"` scores the
whole completion.
"""

from __future__ import annotations

import functools
import re

from sacrebleu.metrics import CHRF

from selfimprove.errors import UserError

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
EXTRACT = ("none", "answer")


def answer_text(text: str, extract: str = "none") -> str | None:
    """The part of a reply that is the translation (None when `extract="answer"` finds no tags)."""
    if extract == "none":
        return text.strip()
    if extract != "answer":
        raise UserError(f"extract must be one of {', '.join(EXTRACT)}, got '{extract}'")
    found = _ANSWER.findall(text)
    return found[-1].strip() if found else None


def chrf(traces, ctx=None, extract: str = "none", normalize: bool = True) -> list[float | None]:
    """Sentence chrF (chrF2, sacrebleu's defaults) of each completion against trace.answer; /100 when
    normalize. None for traces without a reference (training prompts of reference-free tasks)."""
    metric, out = CHRF(), []
    for tr in traces:
        if tr.answer is None:
            out.append(None)
            continue
        hyp = answer_text(tr.completion.text, extract)
        value = 0.0 if hyp is None else metric.sentence_score(hyp, [tr.answer]).score
        out.append(value / 100.0 if normalize else value)
    return out


@functools.lru_cache(maxsize=2)
def _comet(model: str):
    try:
        from comet import download_model, load_from_checkpoint
    except ImportError:
        raise UserError("comet_kiwi needs the COMET library: pip install unbabel-comet") from None
    try:
        return load_from_checkpoint(download_model(model))
    except Exception as e:  # gated / offline / unknown checkpoint: one line
        raise UserError(f"comet_kiwi: cannot load '{model}': {str(e).splitlines()[0]}") from None


def gated(trace, only_if: str | None) -> bool:
    """A trace an earlier reward named by `only_if` (e.g. the format check) did not pass (value None or < 1):
    it is not sent to a judge or an external scorer, and its score is None (the algorithm's format gate
    gives it format_failure)."""
    if not only_if:
        return False
    gate = trace.rewards.get(only_if)
    return gate is None or gate < 1.0


def comet_kiwi(traces, ctx=None, model: str = "Unbabel/wmt22-cometkiwi-da", extract: str = "none",
               batch_size: int = 16, gpus: int = 0, only_if: str | None = None) -> list[float | None]:
    """Reference-free quality estimation (SSR-X's external reward, algorithms.md 3.1): COMET-Kiwi of
    (source, translation). The source is the trace's bare source text (data.source_column; the tiny
    `translate` task sets it), never the filled prompt: an instruction in the source reads as an omission.
    Traces gated out by `only_if`, and replies without <answer> tags under `extract="answer"`, are not
    sent to the scorer: their value is None."""
    missing = next((tr.id for tr in traces if tr.source is None), None)
    if missing is not None:
        raise UserError(f"comet_kiwi: trace {missing} has no source text; set data.source_column to the column "
                        "holding the bare text to translate")
    keep, data = [], []
    for i, tr in enumerate(traces):
        mt = answer_text(tr.completion.text, extract)
        if mt is None or gated(tr, only_if):
            continue
        keep.append(i)
        data.append({"src": tr.source, "mt": mt})
    out: list[float | None] = [None] * len(traces)
    if data:
        scores = _comet(model).predict(data, batch_size=batch_size, gpus=gpus, progress_bar=False).scores
        for i, value in zip(keep, scores):
            out[i] = float(value)
    return out
