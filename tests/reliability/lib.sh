# lib.sh — helpers shared by the shell-driven reliability scenarios.
# Sourced, never run. Each scenario prints its verdict and exits 0 (pass),
# 1 (fail) or 77 (skipped: CTest SKIP_RETURN_CODE, with the reason printed).
#
# Scenarios prefer a private /dev/shm (a mount namespace with its own tmpfs):
# then "nothing left in /dev/shm" and `cpdl sweep --remove` are exact and
# never touch what other jobs on the machine keep there.

fail=0
say() { printf '%s\n' "$*"; }
check() { # check <description> <command...>
  desc=$1; shift
  if "$@"; then say "ok: $desc"; else say "FAIL: $desc"; fail=1; fi
}

# Re-run the calling script inside a new mount namespace with a fresh tmpfs
# on /dev/shm of $1 (e.g. 512m). Returns (without re-running) when that is
# impossible; CPDL_REL_PRIVATE_SHM=1 tells the script which case it is in.
private_shm() {
  size=$1; shift
  if [ -n "${REL_IN_PRIVATE_NS:-}" ]; then
    CPDL_REL_PRIVATE_SHM=1
    return 0
  fi
  CPDL_REL_PRIVATE_SHM=0
  if unshare -m sh -c 'mount -t tmpfs -o size=1m none /dev/shm' 2>/dev/null; then
    export REL_IN_PRIVATE_NS=1
    exec unshare -m sh -c \
      'mount -t tmpfs -o "size=$0" none /dev/shm && exec sh "$@"' \
      "$size" "$@"
  fi
  return 0
}

# Segments in /dev/shm created by any of the pids given.
job_segments() {
  for p in "$@"; do
    ls /dev/shm 2>/dev/null | grep "^cpdl-$(id -u)-$p-" || true
  done
}

# The pids among the arguments that still run (a zombie has ended; init
# reaps the orphans of a killed job on its own time).
live_pids() {
  for p in "$@"; do
    state=$(sed -n 's/^[0-9]* ([^)]*) \(.\).*/\1/p' "/proc/$p/stat" 2>/dev/null)
    if [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]; then printf '%s ' "$p"; fi
  done
}

# Wait up to $1 seconds for the other pids to end; print those still running.
wait_gone() {
  limit=$1; shift
  waited=0
  left=$(live_pids "$@")
  while [ -n "$left" ] && [ $waited -lt "$limit" ]; do
    sleep 1; waited=$((waited + 1)); left=$(live_pids "$@")
  done
  printf '%s' "$left"
}

# The pid of world rank $2 from the "<tag> rank R pid P" lines of file $1.
rank_pid() {
  sed -n "s/^.* rank $2 pid \([0-9]*\)\$/\1/p" "$1" | head -n 1
}

# End processes this scenario started and that outlived mpirun.
reap() {
  for p in "$@"; do kill -9 "$p" 2>/dev/null || true; done
}

mpirun_env() {
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  export OMPI_MCA_rmaps_base_oversubscribe=1
}
