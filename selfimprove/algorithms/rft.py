"""RFT: rejection-sampling fine-tuning on the policy's own correct samples (the NFT paper's baseline).

NFT's loss with the negative term switched off (neg_weight = 0): plain NLL on correct samples,
weighted per prompt by omega. The NFT paper states omega = 1 for RFT (our default); its scripts keep
omega = 1 - r_hat, available as `omega: 1-r`.
"""

from __future__ import annotations

from dataclasses import dataclass

from selfimprove.algorithms import nft

META_KEYS = nft.META_KEYS


@dataclass
class Config(nft.Config):
    name: str = "rft"
    omega: str = "1"
    neg_weight: float = 0.0


def check(cfg: Config) -> list[str]:
    errs = nft.check(cfg)
    if cfg.neg_weight != 0:
        errs.append("algorithm.neg_weight must be 0 for rft (use algorithm.name: nft for negatives)")
    return errs


prepare = nft.prepare
loss = nft.loss
