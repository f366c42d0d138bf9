"""Plain Hugging Face loading and saving shared by the policy and the scorers (judges, reward models).

Every model argument takes the same forms: a named model of the tiny world, a Hugging Face model folder,
a hub name, a selfimprove checkpoint folder (its `model/` folder is the model) or a PEFT adapter folder
(`adapter_config.json`: the base it names is loaded, the adapter applied and merged into it).

A base module: it imports nothing of selfimprove but errors, so `reward/` can use it too.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import torch
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


def hf_folder(path: str) -> str:
    """The Hugging Face folder of `path`: a selfimprove checkpoint (`step-N/`, trainer state beside
    `model/`) means its `model/`; anything else is itself."""
    p = Path(path).expanduser()
    if (p / "model").is_dir() and (p / "trainer_state.json").is_file():
        return str(p / "model")
    return path


def adapter_base(path: str) -> str | None:
    """The base model a PEFT adapter folder names (adapter_config.json), or None when `path` is no adapter."""
    config = Path(path).expanduser() / "adapter_config.json"
    if not config.is_file():
        return None
    try:
        base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError) as e:
        raise UserError(f"model: cannot read {config} ({type(e).__name__}: {e})") from None
    if not base:
        raise UserError(f"model: {config} names no base model (base_model_name_or_path)")
    return str(base)


def model_source(path: str, what: str = "model") -> str:
    """A local folder (which must hold config.json, or adapter_config.json for a PEFT adapter) or a hub
    name (only when online)."""
    path = hf_folder(path)
    p = Path(path).expanduser()
    if p.exists():
        if not ((p / "config.json").is_file() or (p / "adapter_config.json").is_file()):
            raise UserError(f"{what}: {path} is not a Hugging Face model folder (no config.json)")
        return str(p.resolve())  # absolute: a LoRA adapter records it as its base, to be found from anywhere
    looks_local = path.startswith((".", "/", "~")) or path.count("/") != 1
    if looks_local or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UserError(f"{what}: path does not exist: {path}")
    return path  # a hub name: transformers will fetch it (when online)


def from_pretrained(cls, path: str, what: str, **kwargs):
    """`cls.from_pretrained(path)`, every way a shared folder can be broken (truncated or corrupt weights,
    an unknown model_type, a config that is not JSON, missing files) as one line naming `what` and `path`.
    A checkpoint folder loads its `model/`; a PEFT adapter folder loads as its base with the adapter merged."""
    path = hf_folder(path)
    base = adapter_base(path) if cls is not AutoTokenizer else None
    if base is not None:
        return _merged_adapter(cls, path, base, what, kwargs)
    try:
        return cls.from_pretrained(path, **kwargs)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError, SafetensorError, ...
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise UserError(f"{what}: cannot load {path} ({type(e).__name__}: {first.strip()[:200]})") from None


def base_source(path: str, base: str, what: str) -> str:
    """The local folder or hub name of the base model the adapter folder `path` names."""
    where = f"{what}: the adapter {path} names its base model {base}"
    if Path(base).expanduser().resolve() == Path(path).expanduser().resolve():
        raise UserError(f"{where}, which is the adapter itself")
    try:
        return resolve_model(base, what, log=lambda *a: None)
    except UserError as e:
        raise UserError(f"{where}, which cannot be found ({e})") from None


def _merged_adapter(cls, path: str, base: str, what: str, kwargs: dict):
    """The base model an adapter folder names, the adapter applied (PEFT) and merged into it: a plain model.
    The merged model's name is the adapter folder, so an adapter trained on top of it names this one as its
    base (a chain of adapters loads back the same way)."""
    from peft import PeftModel

    if "quantization_config" in kwargs:  # merging into NF4/int8 weights would round the adapter away
        raise UserError(f"{what}: {path} is a LoRA adapter; a quantized base cannot take it merged (merge it first: "
                        f"selfimprove export {path} --merge-lora --out DIR)")
    model = from_pretrained(cls, base_source(path, base, what), what, **kwargs)
    try:
        merged = PeftModel.from_pretrained(model, path).merge_and_unload()
    except Exception as e:  # a missing or damaged adapter_model.safetensors, an adapter of another architecture
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise UserError(f"{what}: cannot apply the adapter {path} to {base} ({type(e).__name__}: {first[:200]})") from None
    merged.name_or_path = path
    return merged


def load_tokenizer(path: str, what: str = "model", chat_template: bool = True, **options):
    """The tokenizer of `path` (an adapter folder without one: its base's), with EOS as the pad token when
    it has none. `options`: from_pretrained's (revision, trust_remote_code)."""
    path = hf_folder(path)
    base = adapter_base(path)
    if base is not None and not (Path(path).expanduser() / "tokenizer_config.json").is_file():
        path = base_source(path, base, what)
    tok = from_pretrained(AutoTokenizer, path, f"{what} tokenizer", **options)
    if tok.eos_token is None and tok.pad_token_id is None:
        raise UserError(f"{what}: the tokenizer of {path} has neither a pad nor an end-of-sequence token")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if chat_template and tok.chat_template is None:
        raise UserError(f"{what}: the tokenizer of {path} has no chat template")
    return tok


def cast_weights(state: dict, dtype: torch.dtype) -> dict:
    """`state`'s floating-point tensors as `dtype` copies on the CPU; tensors sharing memory (tied
    embeddings) stay shared, so save_pretrained still recognises them as tied."""
    done: dict = {}
    out = {}
    for name, t in state.items():
        if not (isinstance(t, torch.Tensor) and t.is_floating_point()):
            out[name] = t
            continue
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()))
        if key not in done:
            done[key] = t.detach().to(device="cpu", dtype=dtype)
        out[name] = done[key]
    return out


def save_model(model, folder: Path, dtype: torch.dtype, weights: dict | None = None) -> None:
    """`model` (or the state dict `weights` for it) as a Hugging Face folder in `dtype`, whatever precision
    it trains in; config.json records that dtype. A PEFT model saves its adapter alone."""
    state = weights if weights is not None else model.state_dict()
    if hasattr(model, "peft_config"):  # only the adapter is saved: cast nothing else
        state = {k: v for k, v in state.items() if "lora_" in k or "modules_to_save" in k}
    model.save_pretrained(folder, state_dict=cast_weights(state, dtype))
    config = Path(folder) / "config.json"
    if config.is_file():  # save_pretrained writes the parameters' dtype (fp32 master weights)
        data = json.loads(config.read_text(encoding="utf-8"))
        data["dtype"] = str(dtype).removeprefix("torch.")
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
