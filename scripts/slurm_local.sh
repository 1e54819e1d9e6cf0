#!/usr/bin/env bash
# A real Slurm cluster on this machine (two nodes, one host), for `exp run --backend slurm` and its tests.
# Debian's slurm-wlm (22.05 on bookworm) and munge; no systemd, so the daemons are started by hand.
#
#   scripts/slurm_local.sh start    install (if missing), configure, start, prove with a smoke job
#   scripts/slurm_local.sh stop     stop slurmd, slurmctld and munged (running jobs keep running)
#   scripts/slurm_local.sh status   one line; exit 0 when munge, the controller and the node are up
#
# Needs root. Idempotent: `start` on a running cluster with a current config only re-proves it
# (a ~1 s smoke job, skipped while the node is fully allocated). The config is generated from this
# host's name and size on every start; when it differs from the one in place the daemons are
# restarted with it, and a changed hostname (a fresh CI container) also clears the old state.
#
# Choices that matter (Slurm 22.05 in a container):
# - Accounting is off (no slurmdbd), so `sacct` has nothing: finished jobs are read with
#   `scontrol show job ID` while slurmctld keeps their record, MinJobAge=600 s (default 300).
# - SelectTypeParameters=CR_Core: memory is not a consumable, so a job without --mem does not
#   take the whole node's memory and block the next job (it would with CR_Core_Memory).
# - No cgroups: proctrack/linuxproc, task/none, jobacct_gather/none, and no cgroup.conf
#   (22.05 has no CgroupPlugin=disabled; slurmd refuses to start with it).
# - Addresses are 127.0.0.1 (SlurmctldHost=HOST(127.0.0.1), NodeAddr=127.0.0.1), so nothing
#   depends on the hostname resolving. Jobs run as root (SlurmUser=root).
# - SchedulerParameters=batch_sched_delay=0,sched_min_interval=0: a trivial job completes in ~1 s.
# - Two nodes on one machine (Debian builds slurmd with multiple-slurmd): HOST and HOST-n2, each its
#   own slurmd (`slurmd -N NAME`) on its own port, both NodeHostname=HOST. A 2-node job really runs
#   one task per node (srun), so multi-node launches are tested, not only rendered.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
LOG_DIR=/var/log/slurm
SPOOL_CTLD=/var/spool/slurmctld
SPOOL_D=/var/spool/slurmd
RUN_DIR=/run/slurm
HOST_MARK="$SPOOL_CTLD/.slurm_local_host"
MUNGE_KEY=/etc/munge/munge.key
MUNGE_PID=/run/munge/munged.pid
SMOKE_LIMIT_S="${SLURM_LOCAL_SMOKE_LIMIT_S:-60}"
HOST="$(hostname -s 2>/dev/null || cut -d. -f1 /proc/sys/kernel/hostname)"
NODES=("$HOST" "$HOST-n2")

say() { echo "slurm_local: $*"; }

# Fail with the tails of the daemon logs, which is where the reason is.
die() {
  echo "slurm_local: error: $*" >&2
  local f
  for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" /var/log/munge/munged.log; do
    [ -s "$f" ] || continue
    echo "---- tail of $f" >&2
    tail -n 15 "$f" >&2
  done
  exit 1
}

need_root() { [ "$(id -u)" = 0 ] || { echo "slurm_local: error: must run as root (it installs packages and starts daemons)" >&2; exit 1; }; }

# PIDs whose command name is exactly $1 (no procps needed; slurmscriptd has its own name).
pids_of() {
  local d name
  for d in /proc/[0-9]*; do
    read -r name 2>/dev/null <"$d/comm" || continue
    [ "$name" = "$1" ] && echo "${d#/proc/}"
  done
  return 0
}
running() { [ -n "$(pids_of "$1")" ]; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
    && command -v sbatch >/dev/null && command -v munged >/dev/null; then
    return
  fi
  say "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  # Keep the packages' init scripts from starting daemons with their default config.
  local policy=/usr/sbin/policy-rc.d added=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && added=1
  fi
  local rc=0 log
  log="$(mktemp /tmp/slurm-local-apt.XXXXXX)"
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends slurm-wlm munge; } >"$log" 2>&1 || rc=$?
  [ -n "$added" ] && rm -f "$policy"
  if [ "$rc" != 0 ]; then
    tail -n 20 "$log" >&2
    die "apt-get could not install slurm-wlm and munge (exit $rc; log $log)"
  fi
  rm -f "$log"
  say "installed $(slurmctld -V)"
}

# The config for this host, on stdout. Deterministic: same machine, same text.
render_config() {
  local cpus mem topo detected
  cpus="$(nproc)"
  mem=$(( $(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo) * 9 / 10 ))
  # Use slurmd's view of the sockets/cores when it agrees with nproc (quiets a warning);
  # otherwise (a cpuset-limited container) just the CPU count.
  topo="CPUs=$cpus"
  detected="$(slurmd -C 2>/dev/null | head -n 1 || true)"
  if [[ "$detected" =~ CPUs=([0-9]+)\ Boards=([0-9]+)\ SocketsPerBoard=([0-9]+)\ CoresPerSocket=([0-9]+)\ ThreadsPerCore=([0-9]+) ]] \
    && [ "${BASH_REMATCH[1]}" = "$cpus" ]; then
    topo="CPUs=$cpus Boards=${BASH_REMATCH[2]} SocketsPerBoard=${BASH_REMATCH[3]} CoresPerSocket=${BASH_REMATCH[4]} ThreadsPerCore=${BASH_REMATCH[5]}"
  fi
  cat <<EOF
# Generated by scripts/slurm_local.sh for host $HOST; rewritten on every start. Do not edit.
ClusterName=expkit
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
ReturnToService=2
# Finished jobs stay visible to 'scontrol show job' this long (s); there is no accounting.
MinJobAge=600
KillWait=30
MessageTimeout=10
SlurmctldTimeout=30
SlurmdTimeout=30
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$SPOOL_CTLD
SlurmdSpoolDir=$SPOOL_D/%n
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
NodeName=${NODES[0]} NodeAddr=127.0.0.1 NodeHostname=$HOST Port=6818 $topo RealMemory=$mem State=UNKNOWN
NodeName=${NODES[1]} NodeAddr=127.0.0.1 NodeHostname=$HOST Port=6819 $topo RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=${NODES[0]},${NODES[1]} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
}

start_munge() {
  if running munged && munge -n >/dev/null 2>&1; then return; fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  chmod 0755 /run/munge
  chmod 0700 /var/log/munge /var/lib/munge
  if [ ! -s "$MUNGE_KEY" ]; then
    say "creating $MUNGE_KEY"
    dd if=/dev/urandom bs=1024 count=1 of="$MUNGE_KEY" status=none
  fi
  chown munge:munge "$MUNGE_KEY"
  chmod 0400 "$MUNGE_KEY"
  if ! running munged; then
    runuser -u munge -- /usr/sbin/munged || die "munged did not start"
  fi
  local _
  for _ in $(seq 50); do munge -n >/dev/null 2>&1 && return; sleep 0.1; done
  die "munged is not answering"
}

ctld_answers() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

start_slurmctld() {
  running slurmctld || slurmctld || die "slurmctld did not start"
  local _
  for _ in $(seq 150); do ctld_answers && return; running slurmctld || break; sleep 0.1; done
  die "slurmctld is not answering"
}

# One slurmd per node name; a running one is found by its pid file.
slurmd_running() {
  local pid
  pid="$(cat "$RUN_DIR/slurmd-$1.pid" 2>/dev/null)" || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = slurmd ]
}

start_slurmd() {
  local node
  for node in "${NODES[@]}"; do
    mkdir -p "$SPOOL_D/$node"
    slurmd_running "$node" || slurmd -N "$node" || die "slurmd -N $node did not start"
  done
}

# A node's state as sinfo prints it: idle, mixed, allocated, completing, down*, drained, ...
node_state() { sinfo -h -n "${1:-$HOST}" -o %T 2>/dev/null | head -n 1; }

node_usable() {
  case "$1" in idle|mixed|allocated|completing|idle-|mixed-|planned) return 0 ;; *) return 1 ;; esac
}

wait_node() {
  local node state _
  for node in "${NODES[@]}"; do
    for _ in $(seq 150); do
      state="$(node_state "$node")"
      node_usable "$state" && continue 2
      case "$state" in
        down*|drain*|fail*|unknown*|idle\*) scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true ;;
      esac
      sleep 0.2
    done
    die "node $node is not usable after 30 s (state: ${state:-none})"
  done
}

smoke_job() {
  local out id state="" _
  out="$(mktemp /tmp/slurm-local-smoke.XXXXXX)"
  id="$(sbatch --parsable --job-name=slurm_local_smoke --chdir=/tmp --output="$out" --wrap 'echo ok' 2>&1)" \
    || { rm -f "$out"; die "sbatch refused the smoke job: $id"; }
  id="${id%%;*}"
  for _ in $(seq $(( SMOKE_LIMIT_S * 10 ))); do
    state="$(scontrol show job -o "$id" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')"
    if [ "$state" = COMPLETED ] && grep -qx ok "$out"; then rm -f "$out"; return 0; fi
    case "$state" in
      FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE)
        rm -f "$out"; die "smoke job $id ended $state" ;;
    esac
    sleep 0.1
  done
  scancel "$id" 2>/dev/null || true
  rm -f "$out"
  die "smoke job $id did not complete within $SMOKE_LIMIT_S s (state ${state:-unknown})"
}

# Stop the Slurm daemons (not munged); running job steps survive (slurmstepd is separate).
stop_slurm() {
  if ctld_answers; then scontrol shutdown >/dev/null 2>&1 || true; fi
  local d _ pid
  for _ in $(seq 100); do running slurmctld || running slurmd || return 0; sleep 0.1; done
  for d in slurmd slurmctld; do
    for pid in $(pids_of "$d"); do kill -TERM "$pid" 2>/dev/null || true; done
  done
  for _ in $(seq 100); do running slurmctld || running slurmd || return 0; sleep 0.1; done
  for d in slurmd slurmctld; do
    for pid in $(pids_of "$d"); do kill -KILL "$pid" 2>/dev/null || true; done
  done
}

cmd_start() {
  need_root
  install_packages
  local t0=$SECONDS new
  new="$(render_config)"
  if [ -f "$CONF" ] && [ "$new" = "$(cat "$CONF")" ] && cmd_status >/dev/null 2>&1; then
    local state
    state="$(node_state)"
    if [ "$state" = allocated ] || [ "$state" = completing ]; then
      say "already up on $HOST (node $state: smoke job skipped)"
    else
      smoke_job
      say "already up on $HOST; a smoke job completed"
    fi
    return
  fi

  mkdir -p "$CONF_DIR" "$LOG_DIR" "$SPOOL_CTLD" "$SPOOL_D" "$RUN_DIR"
  if [ -f "$CONF" ] && [ "$new" != "$(cat "$CONF")" ] && { running slurmctld || running slurmd; }; then
    say "config changed: restarting the Slurm daemons"
    stop_slurm
  fi
  if [ -s "$HOST_MARK" ] && [ "$(cat "$HOST_MARK")" != "$HOST" ]; then
    say "hostname changed ($(cat "$HOST_MARK") -> $HOST): clearing the old Slurm state"
    stop_slurm
    rm -rf "${SPOOL_CTLD:?}"/* "${SPOOL_D:?}"/*
  fi
  printf '%s\n' "$new" >"$CONF.tmp"
  mv "$CONF.tmp" "$CONF"
  echo "$HOST" >"$HOST_MARK"

  say "starting munged"
  start_munge
  say "starting slurmctld"
  start_slurmctld
  say "starting slurmd"
  start_slurmd
  wait_node
  say "running a smoke job"
  smoke_job
  say "up on $HOST: nodes ${NODES[*]} ($(nproc) CPUs each, $(slurmctld -V)) in $(( SECONDS - t0 )) s; a smoke job completed"
}

cmd_stop() {
  need_root
  stop_slurm
  local pid _
  if [ -s "$MUNGE_PID" ]; then
    pid="$(cat "$MUNGE_PID")"
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = munged ] && kill -TERM "$pid" 2>/dev/null || true
  fi
  for _ in $(seq 50); do running munged || break; sleep 0.1; done
  if running slurmctld || running slurmd || running munged; then
    echo "slurm_local: error: some daemons are still running" >&2
    exit 1
  fi
  say "stopped"
}

cmd_status() {
  command -v scontrol >/dev/null || { echo "down: Slurm is not installed"; return 1; }
  munge -n >/dev/null 2>&1 || { echo "down: munged does not answer"; return 1; }
  running slurmctld || { echo "down: slurmctld is not running"; return 1; }
  local node state states=()
  for node in "${NODES[@]}"; do
    slurmd_running "$node" || { echo "down: slurmd of node $node is not running"; return 1; }
  done
  ctld_answers || { echo "down: slurmctld does not answer"; return 1; }
  for node in "${NODES[@]}"; do
    state="$(node_state "$node")"
    node_usable "$state" || { echo "down: node $node ${state:-missing}"; return 1; }
    states+=("$node $state")
  done
  echo "up: node ${states[0]}, node ${states[1]}"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
