"""RFT: rejection-sampling fine-tuning on the policy's own correct samples (the NFT paper's baseline).

NFT's loss with the negative term switched off (neg_weight = 0): plain NLL on correct samples,
weighted per prompt by omega. The NFT paper states omega = 1 for RFT (our default); its scripts keep
omega = 1 - r_hat, available as `omega: 1-r`.
"""

from __future__ import annotations

from dataclasses import dataclass

from selfimprove.algorithms import Algorithm, nft
from selfimprove.options import opt


@dataclass
class Config(nft.Config):
    name: str = opt("rft", "the method")
    omega: str = opt("1", "prompt weight: 1 (the NFT paper's RFT) | 1-r (its scripts) | sqrt")
    neg_weight: float = opt(0.0, "0: no negative term (RFT)")


def check(cfg: Config) -> list[str]:
    errs = nft.check(cfg)
    if cfg.neg_weight != 0:
        errs.append("algorithm.neg_weight must be 0 for rft (use algorithm.name: nft for negatives)")
    return errs


ALGORITHM = Algorithm(name="rft", Config=Config, prepare=nft.prepare, loss=nft.loss, check=check,
                      meta_keys=nft.META_KEYS, needs_groups=nft.needs_groups)
