"""Loading the policy (and a frozen reference) as ordinary Hugging Face models."""

from __future__ import annotations

import copy

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from selfimprove.errors import UserError
from selfimprove.hub import NAMED_MODELS, from_pretrained, load_tokenizer, resolve_model

__all__ = ["NAMED_MODELS", "load_tokenizer", "load_model", "resolve_model_path", "hub_options", "model_options"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
def resolve_model_path(path: str, log=print) -> str:
    """A named model of the tiny world (built on first use), a local HF folder or a hub name."""
    return resolve_model(path, "model", log)


def hub_options(cfg) -> dict:
    """model.revision and model.trust_remote_code, for every from_pretrained of model.path (model and tokenizer).
    Only what the recipe sets: transformers' own defaults stay in charge otherwise."""
    out = {}
    if cfg is not None and getattr(cfg, "revision", None):
        out["revision"] = cfg.revision
    if cfg is not None and getattr(cfg, "trust_remote_code", False):
        out["trust_remote_code"] = True  # runs the repository's Python code: the user opted in
    return out


def model_options(cfg) -> dict:
    """hub_options plus model.attn_implementation (checked against transformers' registry of attention functions)."""
    out = hub_options(cfg)
    attn = getattr(cfg, "attn_implementation", None) if cfg is not None else None
    if attn is not None:
        known = ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]  # with any a user registered
        if attn not in known and attn.count("/") != 1:  # org/repo: a kernel from the Hub (transformers' kernels)
            raise UserError(f"model.attn_implementation must be one of {', '.join(known)} or a Hub kernel "
                            f"(org/repo), got {attn!r}")
        out["attn_implementation"] = attn
    return out


def load_model(path: str, dtype: str = "float32", cfg=None):
    """The causal LM at `path`; `cfg` (a ModelConfig) adds revision, trust_remote_code and attn_implementation."""
    return from_pretrained(AutoModelForCausalLM, path, "model", dtype=DTYPES[dtype], **model_options(cfg))


def load_quantized(path: str, cfg):
    """QLoRA's base model (Dettmers et al. 2023): weights in bitsandbytes NF4 (double quantization)
    or int8, computed in bf16, prepared for k-bit training by PEFT; LoRA adapters then train on top."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError(f"model.quantize={cfg.quantize} needs bitsandbytes: pip install bitsandbytes") from None
    if not torch.cuda.is_available():
        raise UserError(f"model.quantize={cfg.quantize} needs a CUDA GPU (bitsandbytes' quantized kernels)")
    compute = DTYPES[cfg.dtype] if cfg.dtype != "float32" else torch.bfloat16
    bnb = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute) if cfg.quantize == "4bit"
           else BitsAndBytesConfig(load_in_8bit=True))
    from peft import prepare_model_for_kbit_training

    model = from_pretrained(AutoModelForCausalLM, path, "model", quantization_config=bnb, dtype=compute,
                            device_map={"": torch.cuda.current_device()}, **model_options(cfg))
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)


def context_length(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", 1 << 30))


def frozen_copy(model):
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def add_lora(model, cfg):
    """Wrap the model with LoRA adapters (PEFT); only the adapters train."""
    from peft import LoraConfig, get_peft_model

    target = cfg.lora_target if cfg.lora_target == "all-linear" else [m.strip() for m in cfg.lora_target.split(",")]
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=target, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora)
    except ValueError as e:  # e.g. a target module name the model does not have
        raise UserError(f"model.lora_target: {e}") from None
