#!/usr/bin/env bash
# Set up coscale in ./.venv from scratch (idempotent): Python 3.11+, CPU PyTorch 2.13.0 pinned.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch is pinned exactly (a bare or ranged torch requirement would pull a multi-GB CUDA build).
.venv/bin/python -m pip install --quiet "torch==2.13.0" -e '.[dev]'
.venv/bin/coscale --help >/dev/null
echo "coscale installed in $(pwd)/.venv"
