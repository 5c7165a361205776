#!/usr/bin/env bash
# Run the whole notebook chain with papermill.
#   ./run_all.sh [--profile NAME] [--data-dir PATH] [--executor local|slurm] [--from NN] [--only NN ...]
# Default: the demo profile, on the CPU, offline; the full data if found, else the shipped sample data/sample/.
# Executed notebooks go to outputs/notebooks/, figures to figures/, tables to results/tables/,
# the report to outputs/report.html.
set -euo pipefail
# No cd: relative --profile / --data-dir paths are the caller's.
export METANET_ROOT="${METANET_ROOT:-$(cd "$(dirname "$0")" && pwd)}"
source "$METANET_ROOT/scripts/ensure_env.sh"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
exec "$PY" -m metanet_utils.ops.pipeline --kernel metanet-kit "$@"
