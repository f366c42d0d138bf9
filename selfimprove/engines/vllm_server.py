"""vLLM on other GPUs (server mode), through TRL's `VLLMClient`.

Start the server on the generation GPUs, then train on the others:

    CUDA_VISIBLE_DEVICES=4,5,6,7 trl vllm-serve --model MODEL --tensor-parallel-size 4 --logprobs-mode raw_logprobs
    CUDA_VISIBLE_DEVICES=0,1,2,3 accelerate launch --config_file recipes/accelerate/zero2.yaml -m selfimprove.cli \
        train RECIPE generation.backend=vllm-server generation.server_url=http://127.0.0.1:8000

(`--logprobs-mode raw_logprobs`: the sampler's log-probs are then those of the unmodified policy,
as the other engines return them; TRL's default is the temperature-processed ones.)

The main process gathers every process's prompts, sends one request per prompt (each with its
own seed, so samples do not depend on batching) and hands each process its share back. Weights
go out after each update over the server's NCCL weight-transfer group, in buckets
(engines/weights.py; gathered bucket by bucket under ZeRO-3).

Every call has a deadline: TRL's client waits forever on a server that accepts the connection but
never answers, so requests here carry `generation.server_timeout`, the health probe
`server_connect_timeout`, and the NCCL push runs under a watchdog. Each failure is one line that
names the URL, the call and the setting, instead of a hang.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object

from selfimprove.engines.base import Sample, Sampling
from selfimprove.engines.vllm_colocate import processing
from selfimprove.engines.weights import weight_buckets
from selfimprove.errors import UserError

CONCURRENCY = 64  # requests in flight (TRL's default generation concurrency)


def wait_for_server(url: str, connect_timeout: float, request_timeout: float, interval: float = 1.0) -> None:
    """Poll `url/health` until it answers 200, at most `connect_timeout` seconds."""
    import requests

    start = time.monotonic()
    while True:
        try:
            if requests.get(f"{url}/health", timeout=min(request_timeout, 10.0)).status_code == 200:
                return
            why = "it answers /health with an error"
        except requests.exceptions.RequestException as e:
            why = type(e).__name__
        if time.monotonic() - start >= connect_timeout:
            raise UserError(f"vllm-server: no vLLM server answering at {url} after {connect_timeout:.0f} s "
                            f"(generation.server_connect_timeout; last attempt: {why}). Start it with "
                            "`trl vllm-serve --model MODEL` or set generation.server_url")
        time.sleep(interval)


def with_deadline(fn, seconds: float, what: str):
    """Run fn() in a daemon thread; a hang past `seconds` becomes a UserError (the thread is abandoned)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(seconds)
    if th.is_alive():
        raise UserError(f"vllm-server: {what} did not finish within {seconds:.0f} s (generation.server_timeout)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


class VLLMServerEngine:
    generator = None  # the server seeds each request: nothing to checkpoint
    def __init__(self, model, tokenizer, *, gen, accelerator=None, seed: int = 0, lora_r: int = 0):
        accelerator = accelerator or Accelerator(cpu=True)  # a lone engine (tests, evaluation)
        self.model, self.acc, self.gen = model, accelerator, gen
        self.url = gen.server_url.rstrip("/")
        self.timeout = gen.server_timeout
        self.bucket_bytes = gen.weight_bucket_mb << 20
        self.lora = lora_r > 0
        self.client = None  # the main process's: requests, and the weight push
        self.communicator_ready = False
        self.local = False  # True: each process sends its own requests (asynchronous rollout: no collective)
        if accelerator.is_main_process:
            wait_for_server(self.url, gen.server_connect_timeout, self.timeout)
            self.client = self._make_client()
        self.http = self.client  # the client this process's requests go through
        accelerator.wait_for_everyone()

    def request_locally(self) -> None:
        """Asynchronous rollout: every process sends its own requests (from the rollout thread, which must do no
        collective) through a client of its own; the weight push stays the main process's."""
        if self.http is None:
            self.http = self._make_client()
        self.local = True

    def _make_client(self):
        import requests
        from requests.adapters import HTTPAdapter
        from trl.generation.vllm_client import VLLMClient
        from urllib3.util.retry import Retry

        timeout = self.timeout

        class DeadlineAdapter(HTTPAdapter):  # every request of the session gets the deadline
            def send(self, request, **kwargs):
                kwargs["timeout"] = kwargs.get("timeout") or timeout
                return super().send(request, **kwargs)

        try:
            client = VLLMClient(base_url=self.url, group_port=self.gen.server_group_port, connection_timeout=0.0)
        except requests.exceptions.RequestException as e:
            raise UserError(f"vllm-server: {self.url} stopped answering while connecting ({type(e).__name__})") from None
        # connection failures retry (transient); a read timeout does not (it would multiply the deadline)
        adapter = DeadlineAdapter(max_retries=Retry(total=3, connect=3, read=0, status=0, backoff_factor=1),
                                  pool_maxsize=CONCURRENCY)
        client.session.mount("http://", adapter)
        client.session.mount("https://", adapter)
        return client

    def _post(self, path: str, payload: dict) -> dict:
        import requests

        try:
            response = self.http.session.post(f"{self.url}{path}", json=payload)
        except requests.exceptions.Timeout:
            raise UserError(f"vllm-server: {self.url}{path} did not answer within {self.timeout:.0f} s "
                            "(generation.server_timeout)") from None
        except requests.exceptions.RequestException as e:
            raise UserError(f"vllm-server: {self.url}{path} failed: {type(e).__name__}") from None
        if response.status_code != 200:
            raise UserError(f"vllm-server: {self.url}{path} answered {response.status_code}: {response.text[:200]}")
        return response.json()

    # ---- sampling -----------------------------------------------------------------------------
    def _request(self, prompt: list[int], sp: Sampling, seed: int | None) -> list[Sample]:
        payload = {"model": self.http.model, "prompt": prompt, "n": sp.n, **processing(sp),
                   "max_tokens": sp.max_new_tokens, "logprobs": 0, "return_token_ids": True,
                   "return_tokens_as_token_ids": True}
        if seed is not None:
            payload["seed"] = seed % (1 << 63)
        choices = sorted(self._post("/v1/completions", payload)["choices"], key=lambda c: c["index"])
        rows = []
        for c in choices:
            ids = list(c["token_ids"])
            lps = (c.get("logprobs") or {}).get("token_logprobs") or [0.0] * len(ids)
            rows.append(Sample(ids, [float(x) for x in lps], "stop" if c.get("finish_reason") == "stop" else "length"))
        return rows

    def generate(self, prompts: list[list[int]], sampling: Sampling, seeds: list[int] | None = None) -> list[list[Sample]]:
        acc = self.acc
        if self.local:  # asynchronous rollout: this process's own requests, no collective (the rows are per prompt)
            with ThreadPoolExecutor(CONCURRENCY) as pool:
                return list(pool.map(lambda i: self._request(prompts[i], sampling, None if seeds is None else seeds[i]),
                                     range(len(prompts))))
        shares = gather_object([(prompts, seeds)]) if acc.num_processes > 1 else [(prompts, seeds)]
        results = [None] * len(shares)
        if acc.is_main_process:
            flat = [(p, None if s is None else s[i]) for p_list, s in shares for i, p in enumerate(p_list)]
            with ThreadPoolExecutor(CONCURRENCY) as pool:
                rows = list(pool.map(lambda ps: self._request(ps[0], sampling, ps[1]), flat))
            k = 0
            for r, (p_list, _) in enumerate(shares):
                results[r] = rows[k : k + len(p_list)]
                k += len(p_list)
        if acc.num_processes > 1:
            broadcast_object_list(results, from_process=0)
        return results[acc.process_index]

    # ---- weights ------------------------------------------------------------------------------
    def _ensure_communicator(self) -> None:
        if self.communicator_ready:
            return
        if self.acc.device.type != "cuda":
            raise UserError("vllm-server: the weight push goes over NCCL and needs the trainer on a CUDA GPU "
                            f"(the trainer runs on {self.acc.device.type}); use generation.backend=vllm or hf here")
        if self.client is not None:
            with_deadline(lambda: self.client.init_communicator(device=self.acc.device), self.timeout,
                          f"joining the NCCL weight group of {self.url} (port {self.gen.server_group_port})")
        self.communicator_ready = True

    def load_weights(self) -> None:
        """Stream the weights to the server in buckets (every process iterates: ZeRO-3 gathers are collective)."""
        if self.lora:
            raise UserError("vllm-server with LoRA: the server holds merged weights; use generation.backend=vllm "
                            "(adapter-only push) or train without model.lora_r")
        self._ensure_communicator()
        # one weight update on the server (prepared once, finalised once), one broadcast per bucket
        with self.client.weight_update() if self.client is not None else nullcontext():
            for bucket in weight_buckets(self.model, self.bucket_bytes):
                if self.client is not None:
                    meta = [(n, str(t.dtype).removeprefix("torch."), list(t.shape)) for n, t in bucket]
                    with_deadline(lambda m=meta, b=bucket: self.client.update_named_params(m, iter(b)),
                                  self.timeout, f"pushing {len(bucket)} tensors to {self.url}")
        if self.client is not None:
            self._post("/reset_prefix_cache", {})
        self.acc.wait_for_everyone()

    def sleep(self) -> None:  # the server's memory is its own
        return None

    def wake(self) -> None:
        return None

    def close(self) -> None:
        return None
