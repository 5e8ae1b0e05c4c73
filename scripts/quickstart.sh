#!/usr/bin/env bash
# Set everything up in .venv, then run the default experiment (extra arguments go to gdlab).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/gdlab "$@"
