"""Plain Hugging Face loading shared by the policy and the scorers (judges, reward models).

A base module: it imports nothing of selfimprove but errors, so `reward/` can use it too.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from transformers import AutoTokenizer

from selfimprove.errors import UserError

# models the project builds itself (the tiny world), by name: "module:function" returning the folder
NAMED_MODELS = {
    "tiny": "selfimprove.tiny.model:ensure_tiny",
    "tiny-correct": "selfimprove.tiny.variants:ensure_tiny_correct",  # + two-turn correction episodes (SCoRe)
    "tiny-translate": "selfimprove.tiny.variants:ensure_tiny_translate",  # + toy translation and judging it (SSR)
}


def resolve_model(path: str, what: str = "model", log=print) -> str:
    """A named model (built on first use, cached), a local folder (with config.json) or a hub name."""
    if path in NAMED_MODELS:
        module, _, fn = NAMED_MODELS[path].partition(":")
        return str(getattr(importlib.import_module(module), fn)(log=log))
    return model_source(path, what)


def model_source(path: str, what: str = "model") -> str:
    """A local folder (which must hold config.json) or a hub name (only when online)."""
    p = Path(path).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise UserError(f"{what}: {path} is not a Hugging Face model folder (no config.json)")
        return str(p)
    looks_local = path.startswith((".", "/", "~")) or path.count("/") != 1
    if looks_local or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UserError(f"{what}: path does not exist: {path}")
    return path  # a hub name: transformers will fetch it (when online)


def from_pretrained(cls, path: str, what: str, **kwargs):
    """`cls.from_pretrained(path)`, every way a shared folder can be broken (truncated or corrupt weights,
    an unknown model_type, a config that is not JSON, missing files) as one line naming `what` and `path`."""
    try:
        return cls.from_pretrained(path, **kwargs)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError, SafetensorError, ...
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise UserError(f"{what}: cannot load {path} ({type(e).__name__}: {first.strip()[:200]})") from None


def load_tokenizer(path: str, what: str = "model", chat_template: bool = True, **options):
    """The tokenizer of `path`, with EOS as the pad token when it has none. `options`: from_pretrained's
    (revision, trust_remote_code)."""
    tok = from_pretrained(AutoTokenizer, path, f"{what} tokenizer", **options)
    if tok.eos_token is None and tok.pad_token_id is None:
        raise UserError(f"{what}: the tokenizer of {path} has neither a pad nor an end-of-sequence token")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if chat_template and tok.chat_template is None:
        raise UserError(f"{what}: the tokenizer of {path} has no chat template")
    return tok
