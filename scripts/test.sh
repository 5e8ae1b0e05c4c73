#!/usr/bin/env bash
# Set everything up in .venv, then run the whole test suite, slow tests included, on all cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n auto "$@"
