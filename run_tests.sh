#!/usr/bin/env bash
# Run the test suite. Creates/reuses the environment first (see scripts/ensure_env.sh).
#   ./run_tests.sh            default suite (everything but slow and GPU tests)
#   ./run_tests.sh --all      also the slow tests
#   ./run_tests.sh --gpu      only the GPU tests (bench/gpu_check.sh runs these)
#   ./run_tests.sh ARGS...    any other arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_env.sh
marker=()
case "${1:-}" in
  --all) shift; marker=(-m "not gpu") ;;
  --gpu) shift; marker=(-m "gpu") ;;
esac
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
exec "$PY" -m pytest "${marker[@]}" "$@"
