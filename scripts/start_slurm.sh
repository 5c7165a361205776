#!/usr/bin/env bash
# Start a single-node Slurm cluster on this machine, for tests (tests/test_slurm.py).
#
#   scripts/start_slurm.sh [STATE_DIR]          (default: $METANET_SLURM_DIR or /tmp/metanet-slurm)
#   source STATE_DIR/env.sh                     (sets SLURM_CONF; then sinfo, sbatch, squeue work)
#   scripts/stop_slurm.sh [STATE_DIR]
#
# What it does:
#   1. installs Debian's slurm-wlm and munge with apt-get if slurmctld is missing (root only);
#   2. creates a fresh munge key and starts munged on a private socket;
#   3. writes a minimal slurm.conf (this host is controller and only node, partition "debug",
#      no accounting, no cgroups) and starts slurmctld and slurmd;
#   4. waits until sinfo shows the node idle.
# Everything (config, key, sockets, spool, logs, pid files) lives under STATE_DIR; nothing in /etc
# is changed and the system's own Slurm configuration (if any) is not touched.
#
# Exit codes: 0 cluster up; 3 cannot start here (not root, apt unavailable, daemon failed):
# the reason is the last line on stderr.
set -euo pipefail

STATE_DIR="${1:-${METANET_SLURM_DIR:-/tmp/metanet-slurm}}"
WAIT_S="${METANET_SLURM_START_TIMEOUT:-60}"

die() { echo "start_slurm: $*" >&2; exit 3; }
log() { echo "start_slurm: $*" >&2; }

# ---------------------------------------------------------------- 1. packages
if ! command -v slurmctld >/dev/null 2>&1 && [ ! -x /usr/sbin/slurmctld ]; then
  [ "$(id -u)" = 0 ] || die "slurmctld is not installed and we are not root (install slurm-wlm and munge, or run as root)"
  command -v apt-get >/dev/null 2>&1 || die "slurmctld is not installed and apt-get is not available"
  log "installing slurm-wlm and munge with apt-get (about a minute) ..."
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q slurm-wlm munge >"/tmp/metanet-slurm-apt.log" 2>&1; then
    apt-get update -q >>"/tmp/metanet-slurm-apt.log" 2>&1 || true
    apt-get install -y -q slurm-wlm munge >>"/tmp/metanet-slurm-apt.log" 2>&1 \
      || die "apt-get install slurm-wlm munge failed (see /tmp/metanet-slurm-apt.log)"
  fi
fi
export PATH="$PATH:/usr/sbin:/sbin"
for exe in slurmctld slurmd munged mungekey sinfo; do
  command -v "$exe" >/dev/null 2>&1 || die "$exe not found after installation"
done
[ "$(id -u)" = 0 ] || die "the daemons must run as root here (SlurmUser=root); we are $(id -un)"

# ---------------------------------------------------------------- already running?
if [ -f "$STATE_DIR/env.sh" ] && [ -f "$STATE_DIR/slurmctld.pid" ] && kill -0 "$(cat "$STATE_DIR/slurmctld.pid")" 2>/dev/null \
   && SLURM_CONF="$STATE_DIR/slurm.conf" sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
  log "cluster already running ($STATE_DIR)"
  echo "SLURM_CONF=$STATE_DIR/slurm.conf"
  exit 0
fi

mkdir -p "$STATE_DIR"
chmod 0700 "$STATE_DIR"
STATE_DIR="$(cd "$STATE_DIR" && pwd -P)"
mkdir -p "$STATE_DIR"/{munge,ctld,spool,log}
chmod 0700 "$STATE_DIR/munge"

# ---------------------------------------------------------------- 2. munge
MUNGE_SOCKET="$STATE_DIR/munge/munge.socket"
if ! { [ -f "$STATE_DIR/munged.pid" ] && kill -0 "$(cat "$STATE_DIR/munged.pid")" 2>/dev/null; }; then
  rm -f "$STATE_DIR/munge/munge.key" "$MUNGE_SOCKET"*
  mungekey --create --keyfile="$STATE_DIR/munge/munge.key" >/dev/null 2>&1 \
    || dd if=/dev/urandom of="$STATE_DIR/munge/munge.key" bs=1024 count=1 status=none
  chmod 0400 "$STATE_DIR/munge/munge.key"
  munged --force --socket="$MUNGE_SOCKET" --key-file="$STATE_DIR/munge/munge.key" \
         --pid-file="$STATE_DIR/munged.pid" --log-file="$STATE_DIR/log/munged.log" \
         --seed-file="$STATE_DIR/munge/munged.seed" \
    || die "munged did not start (see $STATE_DIR/log/munged.log)"
fi
for _ in $(seq 50); do [ -S "$MUNGE_SOCKET" ] && break; sleep 0.1; done
[ -S "$MUNGE_SOCKET" ] || die "munged socket $MUNGE_SOCKET did not appear (see $STATE_DIR/log/munged.log)"

# ---------------------------------------------------------------- 3. slurm.conf and daemons
HOST="$(hostname -s)"
CPUS="$(nproc)"
MEM_MB="$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)"
[ -n "$MEM_MB" ] || MEM_MB="$(free -m | awk '/^Mem:/ {print $2}')"
MARGIN=$(( MEM_MB / 10 > 512 ? MEM_MB / 10 : 512 ))
MEM_MB=$(( MEM_MB > MARGIN + 256 ? MEM_MB - MARGIN : 256 ))

cat >"$STATE_DIR/slurm.conf" <<EOF
# single-node test cluster written by scripts/start_slurm.sh
ClusterName=metanet-test
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=${METANET_SLURM_CRED_EXPIRE:-10}
SlurmctldPort=${METANET_SLURMCTLD_PORT:-16817}
SlurmdPort=${METANET_SLURMD_PORT:-16818}
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MinJobAge=300
# seconds between SIGTERM and SIGKILL on scancel/time limit (submitit jobs ignore SIGTERM)
KillWait=2
InactiveLimit=0
Waittime=0
# 'scontrol requeue' (submitit's preemption/timeout handling) is allowed by default (JobRequeue=1)
JobRequeue=1
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
echo "export SLURM_CONF=$STATE_DIR/slurm.conf" >"$STATE_DIR/env.sh"
export SLURM_CONF="$STATE_DIR/slurm.conf"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if ! alive "$STATE_DIR/slurmctld.pid"; then
  slurmctld -c -f "$SLURM_CONF" || die "slurmctld did not start (see $STATE_DIR/log/slurmctld.log)"
fi
if ! alive "$STATE_DIR/slurmd.pid"; then
  slurmd -f "$SLURM_CONF" || die "slurmd did not start (see $STATE_DIR/log/slurmd.log)"
fi

# ---------------------------------------------------------------- 4. wait for an idle node
state=""
for _ in $(seq $(( WAIT_S * 2 ))); do
  state="$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1 || true)"
  [ "$state" = "idle" ] && break
  sleep 0.5
done
if [ "$state" != "idle" ]; then
  tail -5 "$STATE_DIR/log/slurmctld.log" "$STATE_DIR/log/slurmd.log" >&2 || true
  die "node $HOST is '${state:-not listed}' after ${WAIT_S}s, not idle (logs in $STATE_DIR/log)"
fi
log "single-node Slurm cluster up: node $HOST ($CPUS CPUs, ${MEM_MB} MB), partition debug; state in $STATE_DIR"
echo "SLURM_CONF=$SLURM_CONF"
