#!/usr/bin/env bash
# The GPU check, in one go on a CUDA machine: the cuda-marked tests, then every benchmark on
# the GPU, each with a time limit, printing every figure. Needs the packages of the README's
# set-up (on a machine without them, install them first, e.g. from wheels carried along).
# Usage: bash scripts/gpu_check.sh            (from the repository root)
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
[ -x .venv/bin/python ] && py=.venv/bin/python
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
run() {  # run LIMIT_SECONDS COMMAND...: report, never stop the whole check on one failure
  local limit=$1; shift
  echo "=== $*"
  timeout "$limit" "$@" || { echo "!!! failed or timed out ($?): $*"; status=1; }
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
run 240 "$py" -m pytest -q -m cuda -p no:cacheprovider tests
run 120 "$py" scripts/bench_trainer.py --device cuda --steps 5000 --repeats 3
run 120 "$py" scripts/bench_regression.py --device cuda --repeats 7
run 60 "$py" scripts/bench_startup.py --repeats 3
if [ -f scripts/bench_population.py ]; then
  run 240 "$py" scripts/bench_population.py --device cuda
  run 300 "$py" scripts/bench_population.py --device cuda --compile --eager-k 1000000
fi
exit $status
