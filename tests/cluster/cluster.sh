#!/usr/bin/env bash
# tests/cluster/cluster.sh — a real Slurm cluster of several hosts on this machine, for the
# cluster tests (sourced). One munged, one slurmctld and N slurmd, each slurmd in its own
# UTS + mount + IPC + PID namespace (unshare) with its own hostname (n1..nN), its own tmpfs
# /dev/shm and /tmp, so the tasks srun starts there are separate hosts with separate shared
# memory; Open MPI talks TCP (loopback) between them. Everything lives in a private state dir
# with ports of its own, so several clusters (and other jobs) can run side by side; the
# harness stops only the processes it started (their pids are recorded).
#
#   source tests/cluster/cluster.sh
#   cluster_start 3            # exit 77 (skip) where namespaces or slurm are missing
#   srun -N 2 -n 4 --mpi=pmix ...   (SLURM_CONF is exported)
#   cluster_host_run n1 ls /dev/shm   # a command inside host n1's namespaces
#   cluster_stop               # also run from the EXIT trap cluster_start installs
#                              # (then $CLUSTER_ON_EXIT, if set)
#
# Programs run under srun must live outside /tmp (each host's /tmp is private).

CLUSTER_SELF=$(readlink -f "${BASH_SOURCE[0]}")

cluster_skip() {
  echo "SKIP: $*" >&2
  exit 77
}

cluster_log() { echo "cluster: $*" >&2; }

# A free TCP port block of $1 ports (none listening), from a range other jobs rarely use.
cluster_ports() {
  local n=$1 tries base p used
  for tries in $(seq 1 50); do
    base=$(( 20000 + (RANDOM % 2000) * 16 ))
    used=0
    for p in $(seq "$base" $((base + n - 1))); do
      if ss -Htln "sport = :$p" 2>/dev/null | grep -q .; then used=1; break; fi
    done
    [ "$used" = 0 ] && { echo "$base"; return 0; }
  done
  return 1
}

cluster_start() {
  local n=${1:-2} cpus=${CLUSTER_CPUS:-8}
  for t in slurmctld slurmd munged srun scontrol unshare; do
    command -v "$t" >/dev/null 2>&1 || [ -x "/usr/sbin/$t" ] ||
      cluster_skip "$t is not installed (scripts/install-deps installs slurm-wlm and munge)"
  done
  [ "$(id -u)" = 0 ] || cluster_skip "the cluster needs root (slurmd, namespaces)"
  unshare --uts --mount --ipc --pid --fork --mount-proc true 2>/dev/null ||
    cluster_skip "unshare --uts --mount --ipc --pid is not allowed here (a container without " \
                 "CAP_SYS_ADMIN?): no cluster"
  local root=${CLUSTER_ROOT:?set CLUSTER_ROOT to a directory outside /tmp (the build dir)}
  mkdir -p "$root"
  CLUSTER_DIR=$(mktemp -d "$root/state.XXXXXX")
  chmod 755 "$CLUSTER_DIR"
  CLUSTER_N=$n
  CLUSTER_PIDS=()
  trap 'cluster_stop; ${CLUSTER_ON_EXIT:-:}' EXIT
  local d=$CLUSTER_DIR port
  port=$(cluster_ports $((n + 1))) || cluster_skip "no free block of $((n + 1)) TCP ports"
  mkdir -p "$d/munge" "$d/state" "$d/log" "$d/run"
  chmod 700 "$d/munge"
  head -c 1024 /dev/urandom > "$d/munge/munge.key"
  chmod 400 "$d/munge/munge.key"
  /usr/sbin/munged --force --socket="$d/munge/sock" --key-file="$d/munge/munge.key" \
    --pid-file="$d/munge/pid" --log-file="$d/log/munged.log" --seed-file="$d/munge/seed" ||
    cluster_skip "munged did not start ($(tail -2 "$d/log/munged.log" 2>/dev/null))"
  for _ in $(seq 1 50); do [ -s "$d/munge/pid" ] && break; sleep 0.1; done
  CLUSTER_PIDS+=("$(cat "$d/munge/pid")")
  local ctl_host
  ctl_host=$(hostname -s)
  {
    echo "ClusterName=cpdl$(basename "$d" | tr -dc 'a-z0-9' | tr 'A-Z' 'a-z' | head -c 6)"
    echo "SlurmctldHost=$ctl_host(127.0.0.1)"
    echo "SlurmctldPort=$port"
    echo "SlurmUser=root"
    echo "SlurmdUser=root"
    echo "AuthType=auth/munge"
    echo "CredType=cred/munge"
    echo "AuthInfo=socket=$d/munge/sock"
    echo "StateSaveLocation=$d/state"
    echo "SlurmdSpoolDir=$d/spool/%n"
    echo "SlurmctldPidFile=$d/run/slurmctld.pid"
    echo "SlurmdPidFile=$d/run/slurmd.%n.pid"
    echo "SlurmctldLogFile=$d/log/slurmctld.log"
    echo "SlurmdLogFile=$d/log/slurmd.%n.log"
    echo "SlurmdParameters=config_overrides"
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/none"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_CPU"
    echo "SchedulerType=sched/builtin"
    echo "MpiDefault=none"
    echo "ReturnToService=2"
    echo "SlurmctldTimeout=30"
    echo "SlurmdTimeout=60"
    echo "InactiveLimit=0"
    echo "KillWait=5"
    echo "MinJobAge=5"
    echo "JobAcctGatherType=jobacct_gather/none"
    echo "AccountingStorageType=accounting_storage/none"
    echo "JobCompType=jobcomp/none"
    echo "LaunchParameters=enable_nss_slurm"
    local k
    for k in $(seq 1 "$n"); do
      echo "NodeName=n$k NodeAddr=127.0.0.1 NodeHostname=n$k Port=$((port + k)) CPUs=$cpus State=UNKNOWN"
    done
    echo "PartitionName=c Nodes=n[1-$n] Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES"
  } > "$d/slurm.conf"
  sed -i '/LaunchParameters=enable_nss_slurm/d' "$d/slurm.conf"
  export SLURM_CONF=$d/slurm.conf
  /usr/sbin/slurmctld -i -f "$d/slurm.conf" ||
    cluster_skip "slurmctld did not start: $(tail -3 "$d/log/slurmctld.log" 2>/dev/null)"
  for _ in $(seq 1 100); do [ -s "$d/run/slurmctld.pid" ] && break; sleep 0.1; done
  CLUSTER_PIDS+=("$(cat "$d/run/slurmctld.pid")")
  # The hosts resolve each other (torch.distributed's MASTER_ADDR is a hostname).
  { cat /etc/hosts; for k in $(seq 1 "$n"); do echo "127.0.0.1 n$k"; done; } > "$d/hosts"
  for k in $(seq 1 "$n"); do
    mkdir -p "$d/spool/n$k"
    # The namespace's init is slurmd itself: when it ends, every task of that host ends.
    setsid unshare --uts --mount --ipc --pid --fork --mount-proc --propagation private \
      sh -c "hostname n$k && mount -t tmpfs -o size=4g tmpfs /dev/shm && \
             mount -t tmpfs tmpfs /tmp && mount --bind '$d/hosts' /etc/hosts && \
             exec /usr/sbin/slurmd -D -N n$k -f '$d/slurm.conf'" \
      > "$d/log/slurmd.n$k.out" 2>&1 < /dev/null &
    CLUSTER_PIDS+=("$!")
    echo "$!" > "$d/run/unshare.n$k.pid"
  done
  local up=0
  for _ in $(seq 1 300); do
    up=$(sinfo -h -N -o '%N %t' 2>/dev/null | grep -cE ' (idle|mix|alloc)$' || true)
    [ "$up" = "$n" ] && break
    sleep 0.1
  done
  if [ "$up" != "$n" ]; then
    cluster_log "only $up of $n nodes came up:"
    sinfo -N 2>&1 | sed 's/^/  /' >&2
    tail -5 "$d"/log/slurmd.*.log "$d"/log/slurmd.*.out "$d/log/slurmctld.log" >&2 2>/dev/null
    exit 1
  fi
  cluster_log "$n hosts up (state $d, ports $port..$((port + n)))"
}

# The pid of host $1's slurmd (the init of its namespaces), seen from here.
cluster_host_pid() {
  local k=${1#n}
  pgrep -P "$(cat "$CLUSTER_DIR/run/unshare.n$k.pid")" | head -1
}

# Run a command inside host $1's namespaces (its hostname, /dev/shm, /tmp, pids).
cluster_host_run() {
  local host=$1
  shift
  nsenter -t "$(cluster_host_pid "$host")" --uts --mount --ipc --pid -- "$@"
}

# Wait until no job of this cluster runs and every host is idle again (a
# killed step leaves its hosts "completing" for a while; a job submitted then waits).
cluster_idle() {
  for _ in $(seq 1 ${1:-300}); do
    if [ -z "$(squeue -h 2>/dev/null)" ] &&
       [ -z "$(sinfo -h -N -o '%t' 2>/dev/null | grep -v '^idle$')" ]; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

cluster_stop() {
  [ -n "${CLUSTER_DIR:-}" ] || return 0
  local d=$CLUSTER_DIR pid k
  scancel --quiet --full -u root 2>/dev/null || true
  # Each host's namespace init (slurmd): killing it ends every task of that host.
  for k in $(seq 1 "${CLUSTER_N:-0}"); do
    pid=$(pgrep -P "$(cat "$d/run/unshare.n$k.pid" 2>/dev/null)" 2>/dev/null | head -1)
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null
  done
  for pid in "${CLUSTER_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for _ in $(seq 1 50); do
    local alive=0
    for pid in "${CLUSTER_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${CLUSTER_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  for k in $(seq 1 "${CLUSTER_N:-0}"); do
    pid=$(pgrep -P "$(cat "$d/run/unshare.n$k.pid" 2>/dev/null)" 2>/dev/null | head -1)
    [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
  done
  if [ -n "${CLUSTER_KEEP:-}" ]; then
    cluster_log "kept $d"
  else
    rm -rf "$d"
  fi
  CLUSTER_DIR=
}
