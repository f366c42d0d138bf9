#!/usr/bin/env bash
# The quickstart: installs what it needs, builds the tiny model on first use, trains it with NFT
# on CPU and prints held-out accuracy before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/selfimprove train recipes/quickstart.yaml "$@"
