#!/usr/bin/env bash
# The prepared GPU measurement (one H200, no package registry there): bare vLLM tokens/s (when vllm
# is installed), selfimprove's engine tokens/s, weight-push seconds and the per-phase split of a few
# NFT, SCoRe and GRPO steps on a ~0.46B Qwen2-shaped random model, GRPO also with asynchronous rollout
# (hf engine copy, max_staleness 1) and packed updates; prints one table, writes $OUT/gpu_check.json.
#   bash scripts/gpu_check.sh            # on the GPU machine (about 3-5 minutes)
#   bash scripts/gpu_check.sh --dry-run  # CPU: a 0.3M-parameter model, checks the script (tests run it)
# Missing pure-Python dependencies are installed from wheels/ when that folder exists
# (pip download them here and carry the folder along).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if [ -d wheels ]; then
  "$PY" -m pip install -q --no-index --find-links wheels -e . --no-deps 2>/dev/null || true
  "$PY" -m pip install -q --no-index --find-links wheels accelerate peft rich rapidfuzz math-verify sacrebleu 2>/dev/null || true
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PY" scripts/gpu_check.py --out "${OUT:-.}" "$@"
