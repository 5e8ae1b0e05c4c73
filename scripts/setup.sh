#!/usr/bin/env bash
# Create .venv at the repository root (if missing) and install gdlab into it, editable, with
# the test tools. Safe to run again: it only installs what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # GDLAB_TORCH picks the torch to install (e.g. a CUDA build); by default the release the test
  # suite is checked with, else any torch>=2.4.
  if [ -n "${GDLAB_TORCH:-}" ]; then
    "${pip[@]}" "$GDLAB_TORCH"
  else
    "${pip[@]}" "torch==2.13.0" 2>/dev/null || "${pip[@]}" "torch>=2.4"
  fi
fi
# dev: the test tools; launchers: joblib and submitit launchers, the Optuna sweeper
"${pip[@]}" -e ".[dev,launchers]"
