#!/usr/bin/env bash
# Run the test suite. Creates/reuses the environment first (see scripts/ensure_env.sh).
#   ./run_tests.sh            every test (GPU tests skip, saying so, without a CUDA GPU)
#   ./run_tests.sh --fast     everything but the slow and GPU tests (pytest's default selection)
#   ./run_tests.sh --gpu      only the GPU tests (bench/gpu_check.sh runs these)
#   ./run_tests.sh ARGS...    any other arguments go to pytest (after the selection)
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_env.sh
marker=(-m "")
# one worker per core, each taking a whole test file at a time (its fixtures are set up once), the slowest files
# first (tests/conftest.py); -n 0 runs every test in this process
parallel=(-n "$(getconf _NPROCESSORS_ONLN)" --dist loadfile --no-loadscope-reorder)
case "${1:-}" in
  --fast) shift; marker=() ;;
  --gpu) shift; marker=(-m "gpu"); parallel=() ;;  # one process: the GPU tests measure speed
  --all) shift ;;  # the default since every test runs by default; kept for old habits
esac
if ! "$PY" -c "import xdist" 2>/dev/null; then
  echo "[tests] pytest-xdist is missing: the tests run in one process (pip install -e '.[dev]' runs them in parallel)"
  parallel=()
fi
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
exec "$PY" -m pytest "${marker[@]}" "${parallel[@]}" "$@"
