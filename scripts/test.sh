#!/usr/bin/env bash
# The test command: install from scratch if needed, then lint, type-check and run every test tier.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export COSCALE_HOME=${COSCALE_HOME:-$(pwd)/.cache/coscale-test}
echo "== ruff"; .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
