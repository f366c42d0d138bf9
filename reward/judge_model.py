"""A trained Self-J judge as a reward (Ye & Ng, arXiv 2409.00935; algorithms.md sections 4.3 and 4.6).

The judge (a `selfimprove train recipes/selfj/...` run's `judge/` folder) rates each completion
reference-free: the student view of (question = the last prompt message, answer = the completion),
scored as E[digit] of its first generated token. Usable as an RL reward and for best-of-N selection
(the paper's AlpacaEval use). A template with {reference} rates with the trace's reference answer.
"""

from __future__ import annotations

_JUDGES: dict[str, tuple] = {}  # resolved path -> (model, tokenizer): loaded once per process


def load_judge(model: str):
    import torch

    from selfimprove.policy import load_model, load_tokenizer, resolve_model_path

    path = resolve_model_path(model)
    if path not in _JUDGES:
        judge = load_model(path).to("cuda" if torch.cuda.is_available() else "cpu")
        judge.eval()
        _JUDGES[path] = (judge, load_tokenizer(path))
    return _JUDGES[path]


def judge_model(traces, ctx=None, model: str = "", template: str | None = None, normalize: bool = True,
                batch_size: int = 64) -> list[float]:
    """Expected judge score per trace: in [0, 1] (score / 9) when normalize, else in [0, 9]."""
    from selfimprove import selfj as sj
    from selfimprove.errors import UserError

    if not model:
        raise UserError("judge_model: set rewards[].kwargs.model to a trained judge folder")
    template = template or sj.STUDENT_TEMPLATE
    if "{answer}" not in template:
        raise UserError("judge_model: the template has no {answer} placeholder")
    refs = None
    if "{reference}" in template:
        missing = next((tr.id for tr in traces if tr.answer is None), None)
        if missing is not None:
            raise UserError(f"judge_model: the template uses {{reference}} but trace {missing} has no reference answer")
        refs = [tr.answer for tr in traces]
    judge, tokenizer = load_judge(model)
    scores = sj.judge_scores(judge, tokenizer, [sj.question_of(tr) for tr in traces],
                             [tr.completion.text for tr in traces], refs, template, batch_size)
    for tr, (s, _) in zip(traces, scores):
        tr.meta["judge_model.score"] = s
    return [s / 9.0 if normalize else s for s, _ in scores]
