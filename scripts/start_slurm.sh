#!/usr/bin/env bash
# Start a single-node Slurm cluster, with job accounting, on this machine (for tests/test_slurm.py).
#
#   scripts/start_slurm.sh STATE_DIR        prints SLURM_CONF=STATE_DIR/slurm.conf; export it, then
#                                           sinfo, sbatch, squeue and sacct talk to this cluster
#   scripts/stop_slurm.sh STATE_DIR [--purge]
#
# 1. installs Debian's slurm-wlm, slurmdbd, munge and mariadb-server with apt-get if missing (root only);
# 2. starts munged, a private MariaDB and slurmdbd (submitit reads job states with sacct, which needs
#    accounting), then slurmctld and slurmd: this host is controller and only node, partition "debug"
#    (the default, CPUs only: no GPUs), free ports;
# 3. waits until sinfo shows the node idle.
# Everything (config, keys, sockets, database, spool, logs, pid files) lives under STATE_DIR; nothing
# in /etc changes. Exit 0: up; exit 3: cannot start here (not root, no apt, a daemon failed), with the
# reason as the last line on stderr.
set -euo pipefail

STATE_DIR="${1:?usage: start_slurm.sh STATE_DIR}"
die() { echo "start_slurm: $*" >&2; exit 3; }

# ---------------------------------------------------------------- 1. packages
export PATH="$PATH:/usr/sbin:/sbin"
PACKAGES="slurm-wlm slurmdbd munge mariadb-server"
if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
  [ "$(id -u)" = 0 ] || die "$PACKAGES are not all installed and we are not root"
  command -v apt-get >/dev/null || die "$PACKAGES are not all installed and apt-get is not here"
  echo "start_slurm: installing $PACKAGES with apt-get (about a minute) ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  # shellcheck disable=SC2086
  { apt-get install -y -q --no-install-recommends $PACKAGES \
    || { apt-get update -q && apt-get install -y -q --no-install-recommends $PACKAGES; }; } \
    >/tmp/metanet-slurm-apt.log 2>&1 || die "apt-get install failed (see /tmp/metanet-slurm-apt.log)"
fi
[ "$(id -u)" = 0 ] || die "the daemons run as root here (SlurmUser=root); we are $(id -un)"

mkdir -p "$STATE_DIR"/{munge,db,ctld,spool,log}
STATE_DIR="$(cd "$STATE_DIR" && pwd -P)"
chmod 0700 "$STATE_DIR" "$STATE_DIR/munge"
LOG="$STATE_DIR/log"
free_port() {  # a random port nobody listens on
  local p
  while :; do
    p=$(( 20000 + RANDOM % 40000 ))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}
wait_for() {  # wait_for WHAT COMMAND...: until COMMAND succeeds, at most 30 s
  local what="$1" end=$(( SECONDS + 30 )); shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || die "$what did not start (logs in $LOG)"
    sleep 0.2
  done
}

# ---------------------------------------------------------------- 2. munge, MariaDB, slurmdbd
MUNGE_SOCKET="$STATE_DIR/munge/munge.socket"
mungekey --create --keyfile="$STATE_DIR/munge/munge.key" >/dev/null 2>&1 \
  || dd if=/dev/urandom of="$STATE_DIR/munge/munge.key" bs=1024 count=1 status=none
chmod 0400 "$STATE_DIR/munge/munge.key"
munged --force --socket="$MUNGE_SOCKET" --key-file="$STATE_DIR/munge/munge.key" --pid-file="$STATE_DIR/munged.pid" \
  --log-file="$LOG/munged.log" --seed-file="$STATE_DIR/munge/munged.seed" || die "munged did not start"
wait_for munged test -S "$MUNGE_SOCKET"

DB_PORT=$(free_port)
mariadb-install-db --user=root --datadir="$STATE_DIR/db" --skip-test-db --auth-root-authentication-method=socket \
  >"$LOG/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (see $LOG/mariadb-install.log)"
mariadbd --user=root --datadir="$STATE_DIR/db" --socket="$STATE_DIR/db.sock" --port="$DB_PORT" \
  --bind-address=127.0.0.1 --pid-file="$STATE_DIR/mariadbd.pid" --log-error="$LOG/mariadbd.log" \
  --skip-log-bin --innodb-buffer-pool-size=32M </dev/null >/dev/null 2>&1 &
wait_for MariaDB mariadb --socket="$STATE_DIR/db.sock" -u root -e "SELECT 1"
mariadb --socket="$STATE_DIR/db.sock" -u root \
  -e "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm'; GRANT ALL ON *.* TO 'slurm'@'127.0.0.1';"

DBD_PORT=$(free_port)
cat >"$STATE_DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=$STATE_DIR/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
EOF
chmod 0600 "$STATE_DIR/slurmdbd.conf"

# ---------------------------------------------------------------- 3. slurm.conf, slurmctld, slurmd
HOST="$(hostname -s)"
CPUS="$(getconf _NPROCESSORS_ONLN)"  # not nproc: it counts OMP_NUM_THREADS
MEM_MB="$(free -m | awk '/^Mem:/ {print int($2 * 0.9)}')"
cat >"$STATE_DIR/slurm.conf" <<EOF
# single-node test cluster written by scripts/start_slurm.sh
ClusterName=metanet-test
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=5
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# the munge socket of the commands' connections to slurmdbd (sacct, sacctmgr)
AccountingStoragePass=$MUNGE_SOCKET
JobCompType=jobcomp/none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
# seconds between SIGTERM and SIGKILL on scancel or a time limit
KillWait=2
InactiveLimit=0
Waittime=0
JobRequeue=1
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$STATE_DIR/slurm.conf"  # slurmdbd reads slurmdbd.conf from the same folder
slurmdbd || die "slurmdbd did not start (see $LOG/slurmdbd.log)"
wait_for slurmdbd sacctmgr -i show cluster
slurmctld -c -f "$SLURM_CONF" || die "slurmctld did not start (see $LOG/slurmctld.log)"
slurmd -f "$SLURM_CONF" || die "slurmd did not start (see $LOG/slurmd.log)"
wait_for "the node" bash -c "sinfo -h -n '$HOST' -o %T | grep -qx idle"
wait_for "accounting" sacct -n -X
echo "start_slurm: single-node Slurm cluster up: node $HOST ($CPUS CPUs), partition debug; state in $STATE_DIR" >&2
echo "SLURM_CONF=$SLURM_CONF"
