"""selfimprove: LLM self-improvement training (NFT, GRPO/Dr.GRPO, RFT, SCoRe, SSR; Self-J judges, reward models)."""

from selfimprove.recipe import load_recipe
from selfimprove.trace import Trace, Turn

__all__ = ["Trace", "Turn", "load_recipe"]
__version__ = "0.1.0"
