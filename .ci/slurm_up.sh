#!/usr/bin/env bash
# Start a real single-node Slurm cluster on this machine (for tests/test_slurm_executor.py).
#
#   .ci/slurm_up.sh            # installs slurm-wlm + munge if missing (root, apt), configures, starts
#   .ci/slurm_up.sh stop       # stops the daemons it started
#
# Writes /etc/slurm/slurm.conf for one node (this host, its CPUs and memory) and one partition
# `debug`; starts munged, slurmctld and slurmd as local daemons; waits until the node is idle.
# Exits non-zero with the reason when something cannot start: the Slurm test then skips, saying why.
set -uo pipefail
STATE=/var/lib/kdbench-slurm

if [ "${1:-}" = "stop" ]; then
    pkill -x slurmd; pkill -x slurmctld; pkill -x munged
    exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "slurm_up: slurm-wlm and munge are not installed, and this is not a root Debian machine" >&2
        exit 1
    fi
    apt-get update -qq >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1 || {
        echo "slurm_up: apt-get install slurm-wlm munge failed" >&2
        exit 1
    }
fi

if sinfo -h -o %T 2>/dev/null | grep -qE "idle|mixed|alloc"; then
    exit 0  # already up
fi

mkdir -p /etc/munge /var/log/munge /run/munge /etc/slurm "$STATE" /var/spool/slurmd /var/log/slurm
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /var/log/munge /run/munge 2>/dev/null || true
chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
pgrep -x munged >/dev/null || munged --force || { echo "slurm_up: munged did not start" >&2; exit 1; }

HOST=$(hostname -s)
CPUS=$(nproc)
MEMORY=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
cat > /etc/slurm/slurm.conf <<EOF
ClusterName=kdbench
SlurmctldHost=$HOST
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
JobRequeue=1
KillWait=5
NodeName=$HOST CPUs=$CPUS RealMemory=$MEMORY State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
cp /etc/slurm/slurm.conf /etc/slurm-llnl/slurm.conf 2>/dev/null || true

pgrep -x slurmctld >/dev/null || slurmctld || { echo "slurm_up: slurmctld did not start (see /var/log/slurm)" >&2; exit 1; }
pgrep -x slurmd >/dev/null || slurmd || { echo "slurm_up: slurmd did not start (see /var/log/slurm)" >&2; exit 1; }
for _ in $(seq 1 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE "idle|mixed|alloc"; then
        exit 0
    fi
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    sleep 1
done
echo "slurm_up: the node never became idle: $(sinfo -h 2>&1 | head -3)" >&2
exit 1
