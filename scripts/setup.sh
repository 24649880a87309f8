#!/usr/bin/env bash
# Set up (or update) the project's virtual environment in .venv: CPU PyTorch 2.13.0 and cddfuse
# with all extras (train, onnx, test, dev, serve, video, docs). Idempotent: when nothing changed since the last run
# (same pyproject.toml, package importable) it only checks. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
STAMP=.venv/.cddfuse-setup
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VPY" -c "import cddfuse, torch" >/dev/null 2>&1; then
  "$VPY" -c "import cddfuse, torch; print(f'cddfuse {cddfuse.__version__} ready (torch {torch.__version__}) in .venv')"
  exit 0
fi
"$VPY" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
# torch first and pinned, so that nothing below pulls a multi-GB CUDA build
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  "$VPY" -m pip install -q --disable-pip-version-check "torch==2.13.0"
fi
"$VPY" -m pip install -q --disable-pip-version-check -e ".[train,onnx,test,dev,serve,video,docs]"
echo "$want" > "$STAMP"
"$VPY" -c "import cddfuse, torch; print(f'cddfuse {cddfuse.__version__} ready (torch {torch.__version__}) in .venv')"
