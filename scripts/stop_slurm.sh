#!/usr/bin/env bash
# Stop the single-node test cluster started by scripts/start_slurm.sh.
#
#   scripts/stop_slurm.sh STATE_DIR [--purge]
#
# Cancels the cluster's jobs, then stops slurmd, slurmctld, slurmdbd, MariaDB and munged by the
# process ids in their pid files under STATE_DIR (never by name). --purge also removes STATE_DIR.
set -uo pipefail

STATE_DIR="${1:?usage: stop_slurm.sh STATE_DIR [--purge]}"
[ -d "$STATE_DIR" ] || exit 0
export PATH="$PATH:/usr/sbin:/sbin" SLURM_CONF="$STATE_DIR/slurm.conf"
if [ -f "$SLURM_CONF" ] && scancel --full --quiet --user="$(id -un)" 2>/dev/null; then
  for _ in $(seq 40); do  # up to 20 s: a job's processes end before the daemons go
    [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
    sleep 0.5
  done
fi

stop_pid() {  # stop_pid PIDFILE: TERM, up to 5 s, then KILL
  local pid
  [ -f "$1" ] || return 0
  pid="$(cat "$1")"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$1"
}
for daemon in slurmd slurmctld slurmdbd mariadbd munged; do
  stop_pid "$STATE_DIR/$daemon.pid"
done
[ "${2:-}" = --purge ] && rm -rf "$STATE_DIR"
exit 0
