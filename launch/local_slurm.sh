#!/bin/bash
# A real single-node SLURM on this machine, for tests and CI:   launch/local_slurm.sh start | stop | status
# start: installs Debian's slurmctld/slurmd/slurm-client/munge if missing (needs root), writes
#        /etc/slurm/slurm.conf, starts munged (as the munge user), slurmctld and slurmd, waits for `sinfo`.
# stop:  ends exactly the daemons it started, by their pid files (they detach).
# Settings that make it work without cgroups or accounting: proctrack/linuxproc, task/none, no sacct;
# cred_expire=10 so a requeued job may run again after ~10 s (not ~121 s); JobRequeue=1.
set -euo pipefail
STATE=${LOCAL_SLURM_DIR:-/var/tmp/recurrent_lm_slurm}
CONF=/etc/slurm/slurm.conf
HOST=$(hostname -s)

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
  [ "$(id -u)" = 0 ] || { echo "local_slurm.sh: SLURM is not installed and installing it needs root" >&2; exit 1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

write_conf() {
  mkdir -p "$STATE/state" "$STATE/spool" /etc/slurm
  cat > "$CONF" <<CONF
# Written by launch/local_slurm.sh: one node, no cgroups, no accounting.
ClusterName=recurrentlm
SlurmctldHost=$HOST(127.0.0.1)
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
JobRequeue=1
ReturnToService=2
KillWait=10
MinJobAge=600
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$(($(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 1024)) State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

start_munge() {
  munge -n >/dev/null 2>&1 && return  # a munged already answers
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  [ -f /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null;
                                   chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  runuser -u munge -- /usr/sbin/munged
  cp /run/munge/munged.pid "$STATE/munged.pid"
}

stop_pid() {  # stop_pid FILE: SIGTERM the daemon named in FILE, wait for it, remove FILE
  [ -f "$1" ] || return 0
  local pid; pid=$(cat "$1")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$1"
}

case "${1:-}" in
  start)
    if sinfo -h >/dev/null 2>&1; then echo "local SLURM already running"; exit 0; fi
    install_packages
    write_conf
    start_munge
    slurmctld
    slurmd
    for _ in $(seq 100); do
      if sinfo -h -o %T 2>/dev/null | grep -qE '^idle'; then echo "local SLURM up: $(sinfo -h)"; exit 0; fi
      sleep 0.2
    done
    echo "local_slurm.sh: the cluster did not come up; see $STATE/slurmctld.log and $STATE/slurmd.log" >&2
    exit 1 ;;
  stop)
    stop_pid "$STATE/slurmd.pid"
    stop_pid "$STATE/slurmctld.pid"
    stop_pid "$STATE/munged.pid"
    echo "local SLURM stopped" ;;
  status)
    sinfo ;;
  *)
    echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
