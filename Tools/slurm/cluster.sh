#!/usr/bin/env bash
# Throwaway single-node Slurm cluster for CI (Debian 12, root, no systemd).
#   cluster.sh start STATE_DIR   install if needed, start daemons, wait for idle node
#   cluster.sh stop  STATE_DIR   stop only the daemons `start` started (idempotent)
#   cluster.sh env   STATE_DIR   print `export SLURM_CONF=...` for eval
# Nothing under /etc/slurm is touched: every Slurm daemon and client honours
# SLURM_CONF. Only /etc/munge/munge.key (if missing) and /run/munge are global.
set -euo pipefail

usage() { echo "usage: $0 start|stop|env STATE_DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
CMD=$1
S=$(realpath -m "$2")         # absolute: daemons chdir away
CONF=$S/slurm.conf
PIDS=$S/started.pids          # "name pid" per daemon that WE started
export SLURM_CONF=$CONF
log() { echo "[slurm-cluster] $*" >&2; }

# Alive (not a zombie) and really that daemon (guards against pid reuse).
is_ours() { [ -n "$2" ] && [ "$(cat "/proc/$2/comm" 2>/dev/null)" = "$1" ] && ! grep -q '^State:.*Z' "/proc/$2/status" 2>/dev/null; }

any_alive() { local n p; while read -r n p; do is_ours "$n" "$p" && return 0; done <"$PIDS"; return 1; }

tree_pids() { local c; echo "$1"; for c in $(pgrep -P "$1" || true); do tree_pids "$c"; done; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Daemons fork into the background; the pid file is the only reliable pid.
wait_pidfile() { # name pidfile
  local p
  for _ in $(seq 100); do
    p=$(cat "$2" 2>/dev/null || true)
    if is_ours "$1" "$p"; then echo "$1 $p" >>"$PIDS"; log "$1 started (pid $p)"; return 0; fi
    sleep 0.1
  done
  log "$1 did not come up (no live pid in $2)"; return 1
}

do_stop() {
  [ -f "$PIDS" ] || { log "nothing recorded in $PIDS; nothing to stop"; return 0; }
  pid_of() { awk -v n="$1" '$1==n{print $2}' "$PIDS"; }
  # Cancel leftover jobs first so slurmd reaps their slurmstepd processes.
  if is_ours slurmctld "$(pid_of slurmctld)" && jobs=$(timeout 10 squeue -h -o %A 2>/dev/null) && [ -n "$jobs" ]; then
    log "cancelling leftover jobs: $(echo $jobs)"
    timeout 10 scancel $jobs || true
    for _ in $(seq 50); do [ -z "$(timeout 5 squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.2; done
  fi
  local name pid all=""
  for name in slurmd slurmctld munged; do   # reverse start order
    pid=$(pid_of $name)
    is_ours "$name" "$pid" || continue
    log "stopping $name (pid $pid)"
    all="$all $pid"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 150); do is_ours "$name" "$pid" || break; sleep 0.1; done
    if is_ours "$name" "$pid"; then log "$name ignored SIGTERM; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  done
  # Steps outlive slurmd; if jobs could not be cancelled (slurmctld dead), kill
  # the slurmstepd processes that inherited our SLURM_CONF, and their tasks.
  for pid in $(pgrep -x slurmstepd || true); do
    grep -qzx "SLURM_CONF=$CONF" "/proc/$pid/environ" 2>/dev/null || continue
    log "killing stray slurmstepd (pid $pid) and its tasks"
    all="$all $pid"
    kill -KILL $(tree_pids "$pid") 2>/dev/null || true
  done
  # Daemons are children of init; give it a moment to reap them so a following
  # `pgrep slurm` is clean (zombies stay if PID 1 never reaps; harmless).
  local left
  for _ in $(seq 50); do
    left=0; for pid in $all; do [ -e "/proc/$pid" ] && left=1; done
    [ $left = 0 ] && break; sleep 0.1
  done
  rm -f "$PIDS"
  log "stopped"
}

do_start() {
  if [ -f "$PIDS" ] && any_alive; then
    log "daemons from a previous start are still running; run '$0 stop $S' first"; exit 1
  fi
  case $S in *[[:space:]]*) log "STATE_DIR must not contain whitespace (slurm.conf paths)"; exit 2 ;; esac
  mkdir -p "$S"; rm -f "$PIDS"
  # On any failure: show why, and undo what we started.
  trap 'rc=$?; if [ $rc -ne 0 ]; then log "start failed; log tails:"; tail -n 20 "$S"/*.log >&2 || true; do_stop; fi' EXIT

  if ! command -v slurmctld >/dev/null || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null \
     || ! command -v pgrep >/dev/null; then
    log "installing slurm-wlm + munge + procps (log: $S/apt.log)"
    local t0=$SECONDS
    export DEBIAN_FRONTEND=noninteractive
    apt_install() { apt-get install -y -q --no-install-recommends slurm-wlm munge procps >>"$S/apt.log" 2>&1; }
    apt_install || { log "install failed; apt-get update and retry"; apt-get update -q >>"$S/apt.log" 2>&1; apt_install; }
    log "installed in $((SECONDS - t0)) s"
  fi

  # munge: reuse a working munged (never start a second one, never stop it).
  if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munged already running; reusing it"
  else
    if [ ! -s /etc/munge/munge.key ]; then
      log "creating /etc/munge/munge.key"
      install -d -o munge -g munge -m 0700 /etc/munge
      (umask 077; dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none)
      chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
    fi
    install -d -o munge -g munge -m 0755 /run/munge   # /run is tmpfs: gone after reboot
    for d in /var/log/munge /var/lib/munge; do [ -d $d ] || install -d -o munge -g munge -m 0700 $d; done
    rm -f /run/munge/munged.pid
    log "starting munged as user munge"
    runuser -u munge -- munged --force   # --force: tolerate a stale socket from a killed munged
    wait_pidfile munged /run/munge/munged.pid
    for _ in $(seq 50); do munge -n </dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  fi

  # Fresh state each start: no jobs/nodes recovered from a previous run.
  rm -rf "$S/ctld" "$S/spool"; mkdir -p "$S/ctld" "$S/spool"
  rm -f "$S"/*.pid
  local host cpus mem cport=6817
  host=$(hostname -s); cpus=$(nproc)
  mem=$(awk '/^MemTotal:/{print int($2/1024*0.9)}' /proc/meminfo)   # slurmd drains the node if config > real
  while ! port_free $cport || ! port_free $((cport + 1)); do cport=$((cport + 2)); done
  log "writing $CONF (node $host, $cpus CPUs, ${mem} MB, ports $cport/$((cport + 1)))"
  cat >"$CONF" <<EOF
# Generated by $0; throwaway single-node cluster.
ClusterName=quantkit
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$cport
SlurmdPort=$((cport + 1))
# Root daemons: no slurm-owned dirs needed, jobs run as the submitting root user.
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$S/ctld
SlurmdSpoolDir=$S/spool
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd.pid
SlurmctldLogFile=$S/slurmctld.log
SlurmdLogFile=$S/slurmd.log
# cgroup plugins do not work in this container.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Default batch_sched_delay=3 makes every start wait ~3 s; CI wants latency.
SchedulerParameters=batch_sched_delay=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

  local t1=$EPOCHREALTIME
  log "starting slurmctld"
  slurmctld -f "$CONF" >>"$S/slurmctld.log" 2>&1
  wait_pidfile slurmctld "$S/slurmctld.pid"
  log "starting slurmd"
  slurmd -f "$CONF" >>"$S/slurmd.log" 2>&1
  wait_pidfile slurmd "$S/slurmd.pid"

  log "waiting for node $host to become idle"
  local st=""
  for _ in $(seq 120); do
    st=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
    [ "$st" = idle ] && break
    sleep 0.5
  done
  [ "$st" = idle ] || { log "node not idle after 60 s (state: '${st:-none}')"; scontrol show node "$host" >&2 || true; exit 1; }
  log "node $host idle $(awk -v a="$t1" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}') s after slurmctld start"
  trap - EXIT
}

case $CMD in
  start) do_start ;;
  stop) do_stop ;;
  env) printf 'export SLURM_CONF=%q\n' "$CONF" ;;
  *) usage ;;
esac
