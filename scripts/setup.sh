#!/usr/bin/env bash
# Create .venv and install selfimprove with its test tools (CPU torch from constraints-cpu.txt).
# Re-running is cheap: the install is skipped while pyproject.toml and the constraints are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.selfimprove-installed
want=$(cat pyproject.toml constraints-cpu.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # DS_BUILD_OPS=0: DeepSpeed (a test dependency) compiles its CPU ops on first use, not at install
  DS_BUILD_OPS=0 .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints-cpu.txt -e '.[dev]' 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  .venv/bin/python -c "import selfimprove, torch, transformers, trl" 
  echo "$want" > "$stamp"
fi
