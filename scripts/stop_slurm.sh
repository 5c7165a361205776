#!/usr/bin/env bash
# Stop the single-node test cluster started by scripts/start_slurm.sh.
#
#   scripts/stop_slurm.sh [STATE_DIR] [--purge]   (default: $METANET_SLURM_DIR or /tmp/metanet-slurm)
#
# Cancels the cluster's remaining jobs, then stops slurmd, slurmctld and munged by the process
# ids in their pid files under STATE_DIR (never by name). --purge also removes STATE_DIR.
set -uo pipefail

STATE_DIR="${METANET_SLURM_DIR:-/tmp/metanet-slurm}"
PURGE=0
for a in "$@"; do
  case "$a" in
    --purge) PURGE=1 ;;
    *) STATE_DIR="$a" ;;
  esac
done
export PATH="$PATH:/usr/sbin:/sbin"
[ -d "$STATE_DIR" ] || { echo "stop_slurm: $STATE_DIR does not exist; nothing to stop" >&2; exit 0; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if alive "$STATE_DIR/slurmctld.pid" && [ -f "$STATE_DIR/slurm.conf" ]; then
  export SLURM_CONF="$STATE_DIR/slurm.conf"
  scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
  for _ in $(seq 40); do
    [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
    sleep 0.5
  done
fi

stop_pid() {  # stop_pid NAME PIDFILE
  local f="$2" pid
  [ -f "$f" ] || return 0
  pid="$(cat "$f")"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    echo "stop_slurm: stopped $1 (pid $pid)" >&2
  fi
  rm -f "$f"
}
stop_pid slurmd "$STATE_DIR/slurmd.pid"
stop_pid slurmctld "$STATE_DIR/slurmctld.pid"
stop_pid munged "$STATE_DIR/munged.pid"
if [ "$PURGE" = 1 ]; then
  rm -rf "$STATE_DIR"
fi
exit 0
