#!/bin/sh
# two_jobs.sh — R16: two cpdl jobs on one node at the same time. Both
# succeed, each with its own segment name (names carry the creator's pid and
# 64 random bits), and nothing is left in /dev/shm.
#
# usage: two_jobs.sh MPIEXEC CPDL_BIN
set -u
here=$(dirname "$0")
. "$here/lib.sh"
private_shm 512m "$0" "$@"
mpiexec=$1 cpdl=$2
mpirun_env
a=$(mktemp) b=$(mktemp) || exit 1
trap 'rm -f "$a" "$b"' EXIT
run_job() { # run_job <output file>
  timeout -k 5 120 "$mpiexec" --oversubscribe --bind-to none -np 2 \
    "$cpdl" run --cp 2 --seq-len 64K --steps 300 --json >"$1" 2>&1
}
run_job "$a" & ja=$!
run_job "$b" & jb=$!
# Both hold a segment at once: look while they run (each unlinks its name
# once its group attached, so names are seen only briefly; the check below
# is the one that matters: both complete).
seen=""
for _ in 1 2 3 4 5 6 7 8 9 10; do
  seen="$seen $(ls /dev/shm | grep '^cpdl-' | tr '\n' ' ')"
  sleep 0.05
done
wait $ja; ra=$?
wait $jb; rb=$?
cat "$a" "$b"
check "job A succeeded (exit $ra)" [ "$ra" -eq 0 ]
check "job B succeeded (exit $rb)" [ "$rb" -eq 0 ]
check "job A delivered 300 steps" grep -q '"steps": 300' "$a"
check "job B delivered 300 steps" grep -q '"steps": 300' "$b"
names=$(echo $seen | tr ' ' '\n' | sort -u | grep -c . || true)
say "distinct segment names seen while running: $names"
left=$(ls /dev/shm | grep '^cpdl-' || true)
if [ "${CPDL_REL_PRIVATE_SHM:-0}" = 1 ]; then
  check "nothing left in /dev/shm ($left)" [ -z "$left" ]
fi
if [ $fail -eq 0 ]; then say "two jobs: PASS"; else say "two jobs: FAIL"; fi
exit $fail
