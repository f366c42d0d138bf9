"""SCoRe: two-turn self-correction RL (Kumar et al., arXiv 2409.12917, ICLR 2025).

Episode: y1 ~ pi(.|x), then x2 = x + y1 + instruction, y2 ~ pi(.|x2), built on token ids
(selfimprove/rollout.py); the instruction is never trained on. Rewards r1, r2 come from the
recipe's rewards applied to each attempt. Per token (algorithms.md 1.2, eq. 3 and 4):

  Stage I  (steps < stage1_steps):  -A(r2) log pi(y2|x2)  +  beta2 KL(pi || ref) on y1
           turn-1 tokens get no policy-gradient term; the strong KL pins attempt 1 to the base model.
  Stage II: -A(c1) log pi(y1|x1) - A(r2~) log pi(y2|x2) + beta1 [KL on y1 + KL on y2]
           with the shaped reward r2~ = r2 + alpha (r2 - r1)   (alpha 10: (0,1)->11, (1,0)->-10),
           and turn 1's credit c1 = r1 (`turn1_credit: reward`, the paper's instantaneous reward, gamma = 0,
           appendix A.2) or the return r1 + r2~ (`turn1_credit: return`, gamma = 1).

Stage I is on by default: the paper gives no split between the stages (its table gives only the total,
3000 MATH steps), so without `stage1_steps` it is half of train.steps, as in BY571/SCoRe (one epoch per
stage at equal batch sizes). `stage1_steps: 0` is the paper's "without Stage I" ablation (MATH: delta +2.2
against +4.4 with it).

A is the reward itself (REINFORCE without a baseline, as BY571/SCoRe) or minus the group mean
(`baseline: group`), optionally divided by the group std (`baseline: normalize`); the paper leaves
this open (1.8). Defaults are the paper's MATH values: alpha 10, beta1 0.01, beta2 0.1, T = 1.0, and its
MATH self-correction instruction (appendix C; `score_code` is its MBPP/HumanEval one).
KL against a frozen reference (or the adapters-off model with LoRA), per turn with its stage's coefficient:
k3 on sampled tokens in the loss (default; gradient (1 - ref/pi) grad log pi, in expectation grad KL(ref || pi)),
`full` (the exact per-token KL(pi || ref) over the vocabulary, in the loss), or k1 with `kl_in: reward`: each
turn's REINFORCE value becomes (its reward) - coef * sum over the turn of (log pi_old - log ref), the gradient of
KL(pi || ref). k1 in the loss has zero expected gradient (Stage I's beta2 anchor would do nothing): refused.
While it trains, every metrics.jsonl row has the step's r1, r2, Acc@t1/t2, delta, delta i->c and c->i
(`step_metrics`), and the run folder a plot of them (self_correction.png).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from selfimprove.algorithms import Algorithm
from selfimprove.algorithms.common import (
    KL_ESTIMATORS,
    KL_HELP,
    KL_IN_HELP,
    LOSS_AGGREGATIONS,
    MASK_TRUNCATED_HELP,
    choice_errors,
    groups,
    kl_errors,
    kl_penalty,
    kl_term,
)
from selfimprove.options import opt
from selfimprove.rollout import INSTRUCTIONS, passes

META_KEYS = ("score.kl1", "score.kl2")
STAGE1_HELP = ("rollout steps of Stage I, the rest of train.steps is Stage II; null: half of train.steps "
               "(the paper gives no split; BY571/SCoRe: one epoch per stage); 0: the paper's 'without Stage I' "
               "ablation")


@dataclass
class Config:
    name: str = opt("score", "the method")
    stage1_steps: int | None = opt(None, STAGE1_HELP)
    alpha: float = opt(10.0, "shaping bonus (paper: 10)")
    beta1: float = opt(0.01, "Stage II KL on both turns (paper, MATH)")
    beta2: float = opt(0.1, "Stage I KL on turn 1 (paper, MATH; 0.25 for code)")
    stage1_turn2_kl: float = opt(0.0, "Stage I KL on turn 2 (BY571: none)")
    kl_estimator: str = opt("k3", KL_HELP)
    kl_in: str = opt("loss", KL_IN_HELP)
    baseline: str = opt("none", "none (REINFORCE) | group (minus the group mean) | normalize (and / std)")
    turn1_credit: str = opt("reward", "Stage II, what turn 1's tokens are credited with: reward (r1, the paper's "
                            "instantaneous reward) | return (r1 + the shaped r2)")
    instruction: str = opt("score", f"{' | '.join(INSTRUCTIONS)} (presets: score = the paper's MATH "
                           "instruction, score_code = its code one) | any text ({question} is replaced)")
    loss_agg: str = opt("token-mean", "token-mean | seq-mean | dr-grpo | constant")
    loss_constant: float = opt(1000.0, "divisor for loss_agg = constant")
    mask_truncated: bool = opt(False, MASK_TRUNCATED_HELP)


def check(cfg: Config) -> list[str]:
    errs = choice_errors(cfg, {"baseline": ("none", "group", "normalize"), "kl_estimator": KL_ESTIMATORS,
                               "loss_agg": LOSS_AGGREGATIONS, "turn1_credit": ("reward", "return")})
    if min(cfg.beta1, cfg.beta2, cfg.stage1_turn2_kl, cfg.stage1_steps or 0) < 0:
        errs.append("algorithm.beta1, beta2, stage1_turn2_kl and stage1_steps must be >= 0")
    if cfg.alpha < 0 or cfg.loss_constant <= 0:
        errs.append("algorithm.alpha must be >= 0 and algorithm.loss_constant > 0")
    return errs + kl_errors(cfg.kl_estimator, cfg.kl_in, needs_reference(cfg))


def complete(cfg: Config, recipe) -> None:
    """Stage I's default length: half of train.steps (see the module docstring)."""
    if cfg.stage1_steps is None:
        cfg.stage1_steps = recipe.train.steps // 2


def needs_reference(cfg: Config) -> bool:
    return max(cfg.beta1, cfg.beta2, cfg.stage1_turn2_kl) > 0


def shaped_reward(r1: float, r2: float, alpha: float) -> float:
    """Eq. 4's bonus: r2~ = r2 + alpha (r2 - r1)."""
    return r2 + alpha * (r2 - r1)


def instruction(cfg: Config) -> str:
    """The correction instruction between the attempts (rollout.INSTRUCTIONS names or any text)."""
    return cfg.instruction


def _advantages(values: list[float], baseline: str) -> list[float]:
    if baseline == "none" or len(values) < 2:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    centered = t - t.mean()
    if baseline == "normalize":
        centered = centered / (t.std() + 1e-4)
    return centered.tolist()


def prepare(traces, cfg: Config):
    """Per-turn advantages (on the turns) and per-turn KL coefficients (in meta), by stage. Each attempt's
    reward is on its turn (the loop's two-turn rollout keeps the combined reward of each attempt there)."""
    if cfg.stage1_steps is None:  # a Config built in Python, not through a recipe (complete)
        raise ValueError("algorithm.stage1_steps is unset: load the recipe with load_recipe, or set it")
    for group in groups(traces).values():
        stage1 = group[0].policy_version < cfg.stage1_steps
        r1 = [tr.first_attempt.reward for tr in group]
        r2 = [tr.second_attempt.reward for tr in group]
        r2s = [shaped_reward(a, b, cfg.alpha) for a, b in zip(r1, r2)]
        c1, c2 = (cfg.beta2, cfg.stage1_turn2_kl) if stage1 else (cfg.beta1, cfg.beta1)
        pen1, pen2 = _reward_kl(group, cfg, c1, 0), _reward_kl(group, cfg, c2, 1)
        if stage1:  # no reward term on attempt 1: only its KL penalty when kl_in = reward (else all zero)
            a1 = _advantages([-p for p in pen1], cfg.baseline) if any(pen1) else [0.0] * len(group)
            a2 = _advantages([r - p for r, p in zip(r2, pen2)], cfg.baseline)
        else:
            credit = [a + s for a, s in zip(r1, r2s)] if cfg.turn1_credit == "return" else r1
            a1 = _advantages([r - p for r, p in zip(credit, pen1)], cfg.baseline)
            a2 = _advantages([r - p for r, p in zip(r2s, pen2)], cfg.baseline)
        for tr, x1, x2, s in zip(group, a1, a2, r2s):
            tr.first_attempt.advantage, tr.second_attempt.advantage = x1, x2
            tr.meta["score.stage"] = 1 if stage1 else 2
            tr.meta["score.shaped_r2"] = s
            tr.meta["score.kl1"], tr.meta["score.kl2"] = c1, c2
    return traces


def _reward_kl(group, cfg: Config, coef: float, turn: int) -> list[float]:
    """coef x the turn's summed k1 per trace, the penalty on that turn's value (kl_in = reward: the loop stored
    the per-turn sums in meta["kl.k1"]); zeros otherwise."""
    if cfg.kl_in != "reward" or coef == 0:
        return [0.0] * len(group)
    return [coef * tr.meta["kl.k1"][turn] for tr in group]


def token_loss(logp, old_logp, tok_adv, turn_id, kl1, kl2, cfg: Config, ref_logp=None, kl=None):
    """Per-token loss [B, T]: REINFORCE (as a ratio to pi_old: the same gradient on-policy) + per-turn KL.
    `kl` is the per-token KL term [B, T] (common.kl_term); else the estimator's against `ref_logp`, if given."""
    tok = -torch.exp(logp - old_logp) * tok_adv
    if kl is None and ref_logp is not None:
        kl = kl_penalty(logp, ref_logp, cfg.kl_estimator)
    if kl is not None:
        coef = torch.where(turn_id == 1, kl1[:, None], torch.where(turn_id == 2, kl2[:, None], torch.zeros_like(logp)))
        tok = tok + coef * kl
    return tok


def loss(batch, logp, cfg: Config):
    in_loss = cfg.kl_in == "loss" and (batch.get("ref_logp") is not None or "ref_logsoftmax" in batch)
    kl = kl_term(batch, logp, cfg.kl_estimator) if in_loss else None
    tok = token_loss(logp, batch["old_logp"], batch["tok_adv"], batch["turn_id"], batch["score.kl1"],
                     batch["score.kl2"], cfg, kl=kl)
    metrics = {}
    if kl is not None:
        with torch.no_grad():
            for k in (1, 2):
                m = (batch["turn_id"] == k).float()
                metrics[f"kl_turn{k}"] = float((kl * m).sum() / m.sum().clamp(min=1))
    return tok, metrics


def step_metrics(traces, cfg: Config) -> dict[str, float]:
    """Sums over the step's episodes, which the loop adds up over processes and divides by their number:
    mean r1 and r2 (each attempt's combined reward), Acc@t1, Acc@t2, delta = Acc@t2 - Acc@t1 and its two
    parts, delta i->c (wrong, then right) and delta c->i (right, then wrong), as fractions of all episodes
    (algorithms.md 1.6; right = a reward >= 0.5, as `selfimprove eval`), and the stage (1 or 2)."""
    right = [(passes(tr.first_attempt.reward), passes(tr.second_attempt.reward)) for tr in traces]
    return {
        "selfcorrect/r1": sum(tr.first_attempt.reward or 0.0 for tr in traces),
        "selfcorrect/r2": sum(tr.second_attempt.reward or 0.0 for tr in traces),
        "selfcorrect/acc_t1": sum(a for a, _ in right), "selfcorrect/acc_t2": sum(b for _, b in right),
        "selfcorrect/delta": sum(int(b) - int(a) for a, b in right),
        "selfcorrect/delta_i2c": sum(not a and b for a, b in right),
        "selfcorrect/delta_c2i": sum(a and not b for a, b in right),
        "score/stage": sum(1 if tr.policy_version < (cfg.stage1_steps or 0) else 2 for tr in traces),
    }


def needs_groups(cfg: Config) -> str | None:
    return f"algorithm.baseline={cfg.baseline} subtracts the group's mean" if cfg.baseline != "none" else None


ALGORITHM = Algorithm(name="score", Config=Config, prepare=prepare, loss=loss, check=check, meta_keys=META_KEYS,
                      needs_reference=needs_reference, instruction=instruction, needs_groups=needs_groups,
                      complete=complete, step_metrics=step_metrics)
