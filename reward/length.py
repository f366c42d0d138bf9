"""Length shaping: DAPO's soft overlong punishment (Yu et al., arXiv 2503.14476, eq. 13), as TRL's
`trl.rewards.get_soft_overlong_punishment` computes it, on the completion's token count (EOS included)."""

from __future__ import annotations

from selfimprove.errors import UserError


def overlong_penalty(traces, ctx=None, max_completion_len: int = 0, soft_punish_cache: int = 0) -> list[float]:
    """0 up to L_max - L_cache tokens, then linearly down to -1 at L_max, and -1 beyond:

        R(y) = 0                                  |y| <= L_max - L_cache
               ((L_max - L_cache) - |y|) / L_cache   L_max - L_cache < |y| <= L_max
               -1                                 |y| > L_max
    """
    L, cache = max_completion_len, soft_punish_cache
    out = []
    for tr in traces:
        n = len(tr.completion.token_ids)
        out.append(0.0 if n <= L - cache else ((L - cache - n) / cache if n <= L else -1.0))
    return out


def _validate(kwargs: dict) -> None:
    L, cache = kwargs.get("max_completion_len"), kwargs.get("soft_punish_cache", 0)
    if not isinstance(L, int) or isinstance(L, bool) or L < 1:
        raise UserError(f"reward overlong_penalty: kwargs.max_completion_len must be an integer >= 1 (L_max, "
                        f"usually generation.max_new_tokens), got {L!r}")
    if not isinstance(cache, int) or isinstance(cache, bool) or not 0 <= cache <= L:
        raise UserError(f"reward overlong_penalty: kwargs.soft_punish_cache must be an integer in [0, "
                        f"max_completion_len={L}], got {cache!r}")


overlong_penalty.validate_kwargs = _validate
