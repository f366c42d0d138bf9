"""Scoring: reward functions, the registry, the recipe's weighted sum, judges at inference.

A leaf package: it imports from `selfimprove` only base pieces (errors, the trace record, the engine
contract, plain Hugging Face loading), never the loop, the algorithms or the programs.

    registry.py      REWARDS, resolve ("name" | "pkg.mod:fn"), TRL adapter, RewardContext, build_rewards, score
    math.py          math_correct, exact_match            format.py      think/regex/number format checks
    translation.py   chrf, comet_kiwi                     self_judge.py  the policy judges itself (self_judge)
    selfj.py         a trained Self-J judge: views, digit probabilities, E[score], judge_model
    reward_model.py  a trained scalar reward model (reward_model)
    length.py        overlong_penalty (DAPO's soft overlong punishment)
"""

from reward.registry import REWARDS, BoundReward, RewardContext, build_rewards, resolve, score, trl_adapter

__all__ = ["REWARDS", "BoundReward", "RewardContext", "build_rewards", "resolve", "score", "trl_adapter"]
