#!/bin/sh
# cli_steps_differ.sh — `cpdl run` fails when its ranks delivered different
# numbers of steps (which the loader's agreed end rules out; the run must not
# report success if it ever happens): rank 1 ends its data early
# (CPDL_FAULT=waiting:1:eof@3, two steps instead of four), every rank exits,
# mpirun's exit is non-zero, rank 0 names each count and its ranks, no JSON
# summary is printed and no state is saved; the same run without the fault
# passes.
#
# usage: cli_steps_differ.sh MPIEXEC CPDL_BIN
set -u
here=$(dirname "$0")
. "$here/lib.sh"
private_shm 256m "$0" "$@"
mpiexec=$1 cpdl=$2
mpirun_env
out=$(mktemp) || exit 1
err=$(mktemp) || exit 1
state=$(mktemp -u)
trap 'rm -f "$out" "$err" "$state"' EXIT
# run <fault> <np> [options...]: cpdl run --json, 4 steps, one rank per replica
run() {
  fault=$1 np=$2
  shift 2
  CPDL_FAULT=$fault timeout -k 5 60 "$mpiexec" --oversubscribe --bind-to none -np "$np" \
    "$cpdl" run --json --pin none --seq-len 64 --steps 4 "$@" >"$out" 2>"$err"
  rc=$?
  cat "$out" "$err"
}
run "" 3 --save-state "$state"
check "without the fault: exit 0 ($rc)" [ "$rc" -eq 0 ]
check "without the fault: the summary says 4 steps" grep -q '"steps": 4,' "$out"
check "without the fault: the state is saved" [ -s "$state" ]
rm -f "$state"

run "waiting:1:eof@3" 3
check "rank 1 ends early: no hang (exit $rc)" [ "$rc" -ne 124 -a "$rc" -ne 137 ]
check "rank 1 ends early: the run fails (exit $rc)" [ "$rc" -ne 0 ]
check "rank 0 names every count and its ranks" \
  grep -q "different numbers of steps (4 steps: ranks 0, 2; 2 steps: rank 1)" "$err"
check "... once" [ "$(grep -c 'different numbers of steps' "$err")" -eq 1 ]
check "no JSON summary" [ ! -s "$out" ]
run "waiting:1:eof@3" 3 --save-state "$state"
check "with --save-state: the run fails (exit $rc)" [ "$rc" -ne 0 -a "$rc" -ne 124 ]
check "... naming the counts" grep -q "different numbers of steps (4 steps: ranks 0, 2" "$err"
check "... and saves no state" [ ! -e "$state" ]

run "waiting:0:eof@2" 4
check "rank 0 ends early (np 4): the run fails (exit $rc)" [ "$rc" -ne 0 -a "$rc" -ne 124 ]
check "... naming ranks 1-3 and 0" \
  grep -q "different numbers of steps (4 steps: ranks 1-3; 1 step: rank 0)" "$err"
if [ "$CPDL_REL_PRIVATE_SHM" = 1 ]; then
  left=$(ls /dev/shm | grep '^cpdl-' || true)
  check "nothing left in /dev/shm ($left)" [ -z "$left" ]
fi
if [ $fail -eq 0 ]; then say "cli steps differ: PASS"; else say "cli steps differ: FAIL"; fi
exit $fail
