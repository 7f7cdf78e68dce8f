#!/bin/sh
# cli_end_of_run.sh — `cpdl run` when a rank dies after its last step (or in
# another replica): the others have all their steps and meet at the end of
# the run, which cpdl agrees over its watched control plane, so each of them
# fails naming the dead rank instead of waiting for it for ever in a plain
# MPI collective. Under mpirun --enable-recovery nobody else ends the job.
# (Found by the chaos run, tests/chaos.)
#
# usage: cli_end_of_run.sh MPIEXEC CPDL_BIN
set -u
here=$(dirname "$0")
. "$here/lib.sh"
private_shm 256m "$0" "$@"
mpiexec=$1 cpdl=$2
mpirun_env
out=$(mktemp) || exit 1
trap 'rm -f "$out"' EXIT
# case <what> <np> <fault> <cpdl run options...>
case_run() {
  what=$1 np=$2 fault=$3; shift 3
  CPDL_FAULT=$fault timeout -k 5 60 "$mpiexec" --oversubscribe --bind-to none --enable-recovery \
    -np "$np" "$cpdl" run --quiet --pin none --seq-len 64 --timeout-ms 20000 "$@" >"$out" 2>&1
  rc=$?
  cat "$out"
  check "$what: no hang (timeout exit $rc)" [ "$rc" -ne 124 -a "$rc" -ne 137 ]
  victim=${fault#*:}; victim=${victim%%@*}
  n=$(grep -c "CPDL_EPEER: .*\brank $victim (.*died" "$out")
  check "$what: each of the $((np - 1)) survivors names rank $victim ($n)" [ "$n" -eq $((np - 1)) ]
}
# rank 2 dies holding its last step (3 steps): ranks 0, 1, 3 have theirs
case_run "last step, one replica" 4 "holding_slot:2@3" --cp 4 --steps 3
# dp 2: rank 3 (replica 1) dies at step 1; replica 0 delivers all 6 steps
case_run "another replica" 4 "waiting:3@2" --cp 2 --steps 6
left=$(ls /dev/shm | grep '^cpdl-' || true)
if [ "$CPDL_REL_PRIVATE_SHM" = 1 ]; then
  check "nothing left in /dev/shm ($left)" [ -z "$left" ]
fi
if [ $fail -eq 0 ]; then say "cli end of run: PASS"; else say "cli end of run: FAIL"; fi
exit $fail
