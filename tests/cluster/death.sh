#!/usr/bin/env bash
# cluster.death — R27: a rank dies (SIGKILL), exits, or raises on one host while
# the other hosts' ranks run; every survivor on every host fails within 2 s with
# CPDL_EPEER naming the rank (and, for a death, its host); no segment is left on
# any host; nothing runs on. cpdl sees it itself (live.c), whatever the launcher:
#   srun --mpi=pmix (no --kill-on-bad-exit): kill, exit, raise; a kill while the
#     others are inside state_dict() (a collective never waits for ever); one
#     rank per host (nobody on the victim's host sees it: the heartbeat does)
#   mpirun --enable-recovery inside salloc (mpirun does not end the job itself)
# usage: death.sh BUILD_DIR [bench N]   (bench: N kills at random steps, times)
CLUSTER_BUILD=$(readlink -f "$1")
source "$(dirname "$0")/cluster.sh"
source "$(dirname "$0")/lib.sh"
cluster_start 3

# result DIR VICTIM: "<max survivor delay s> <survivors that erred> <survivors named it>"
result() {
  $PY - "$1" "$2" "$3" <<'PYEOF'
import glob, re, sys
out, victim, want = sys.argv[1], int(sys.argv[2]), sys.argv[3]
die, errs, named, ranks = None, {}, 0, set()
for path in glob.glob(out + "/rank*.txt"):
    for line in open(path):
        f = line.split(" ", 4)
        if f[0] == "OPEN":
            ranks.add(int(f[1]))
        if f[0] == "DIE":
            die = float(f[2])
        if f[0] == "ERROR":
            errs[int(f[1])] = float(f[2])
            msg = f[4] if len(f) > 4 else ""
            named += ("rank %d " % victim) in msg and re.search(want, msg) is not None
survivors = len(ranks) - 1
delay = max(errs.values()) - die if die is not None and errs else -1
print("%.3f %d %d %d" % (delay, len(errs), named, survivors))
PYEOF
}

# scenario NAME LAUNCH... -- TRAIN_ARGS...: run, then check the verdicts.
scenario() {
  local name=$1 victim=$2 want=$3
  shift 3
  local out="$WORK/$name"
  mkdir -p "$out"
  local t0=$SECONDS
  timeout -k 5 "${JOB_TIMEOUT:-60}" "$@" --out "$out" > "$out.log" 2>&1
  local took=$((SECONDS - t0))
  read -r delay erred named survivors <<< "$(result "$out" "$victim" "$want")"
  say "$name: survivors failed ${delay}s after the death ($erred of $survivors; $named named it); job took ${took}s"
  check "$name: every survivor failed with CPDL_EPEER" [ "$erred" -eq "$survivors" ]
  check "$name: every survivor named rank $victim ($want)" [ "$named" -eq "$survivors" ]
  check "$name: within 2 s ($delay s)" $PY -c "import sys; sys.exit(not 0 <= $delay < 2.0)"
  check "$name: no segment left on any host" host_shm_empty
  [ "$erred" -eq "$survivors" ] || tail -n 30 "$out.log" "$out"/rank*.txt
  cluster_idle 300 || { say "$name: the job still runs: cancelling"; scancel --full -u root; }
}

CONFIG="source=synthetic: seq_len=4096 steps=100000 cp=2 timeout_ms=60000"
cluster_idle 300
TRAIN=($PY "$HERE/train.py" --config "$CONFIG" --step-ms 20)
SRUN=(srun -N 3 --ntasks-per-node 2 --mpi=pmix)

if [ "${2:-}" = bench ]; then
  n=${3:-20}
  delays=()
  for i in $(seq 1 "$n"); do
    victim=$((RANDOM % 6)) step=$((3 + RANDOM % 40))
    out="$WORK/bench$i"
    mkdir -p "$out"
    timeout -k 5 60 "${SRUN[@]}" "${TRAIN[@]}" --die-rank $victim --die-step $step --how kill \
      --out "$out" > "$out.log" 2>&1
    read -r delay erred named survivors <<< "$(result "$out" $victim 'died')"
    say "kill $i: rank $victim at step $step: $erred of $survivors survivors named it, last after ${delay}s"
    delays+=("$delay")
    cluster_idle 300 || scancel --full -u root
  done
  printf '%s\n' "${delays[@]}" | sort -n | awk '{a[NR]=$1} END {printf "remote-death detection over %d kills: min %.3f s, median %.3f s, max %.3f s\n", NR, a[1], (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2), a[NR]}'
  exit 0
fi

# Victim rank 5 on host n3; survivors on n1, n2 and n3.
scenario srun-kill 5 'died' "${SRUN[@]}" "${TRAIN[@]}" --die-rank 5 --die-step 6 --how kill
scenario srun-exit 2 'died' "${SRUN[@]}" "${TRAIN[@]}" --die-rank 2 --die-step 6 --how exit
scenario srun-raise 3 'left|died' "${SRUN[@]}" "${TRAIN[@]}" --die-rank 3 --die-step 6 --how raise
scenario srun-kill-in-save 1 'died' "${SRUN[@]}" "${TRAIN[@]}" --die-rank 1 --die-step 6 \
  --save-step 6 --how kill
# One rank per host, cp=1: nobody on the victim's host to see it die.
scenario srun-kill-alone 1 'no sign of life|died' srun -N 3 --ntasks-per-node 1 --mpi=pmix \
  $PY "$HERE/train.py" --config "source=synthetic: seq_len=4096 steps=100000 timeout_ms=60000" \
  --step-ms 20 --die-rank 1 --die-step 6 --how kill
# mpirun inside an allocation (its daemons started by srun); --enable-recovery
# keeps mpirun from killing the survivors itself. Open MPI 4.1's mpirun then
# does not exit after the job's processes have: the timeout ends it.
JOB_TIMEOUT=15 scenario mpirun-kill 4 'died' salloc -N 3 --ntasks-per-node 2 mpirun --enable-recovery \
  --bind-to none "${TRAIN[@]}" --die-rank 4 --die-step 6 --how kill

say "$failures failure(s)"
[ $failures -eq 0 ]
