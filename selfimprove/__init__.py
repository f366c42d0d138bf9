"""selfimprove: LLM self-improvement training (NFT, GRPO/Dr.GRPO, RFT, SCoRe, SSR; Self-J judges, reward models).

`from selfimprove import Trace, Turn, load_recipe`. The package root stays light: importing any
module of it (the rewards import `selfimprove.errors`) loads the record alone, and `load_recipe`
brings the recipe machinery on first use.
"""

import importlib

from selfimprove.trace import Trace, Turn

__all__ = ["Trace", "Turn", "load_recipe"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "load_recipe":  # PEP 562: on first use, not at `import selfimprove`
        return importlib.import_module("selfimprove.recipe").load_recipe
    raise AttributeError(f"module 'selfimprove' has no attribute '{name}'")
