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
run_job() { # run_job <output file>: prints "start end" (ns) to <file>.t
  t0=$(date +%s%N)
  timeout -k 5 120 "$mpiexec" --oversubscribe --bind-to none -np 2 \
    "$cpdl" run --cp 2 --seq-len 64K --steps 2000 --json >"$1" 2>&1
  r=$?
  echo "$t0 $(date +%s%N)" >"$1.t"
  return $r
}
run_job "$a" & ja=$!
run_job "$b" & jb=$!
wait $ja; ra=$?
wait $jb; rb=$?
cat "$a" "$b"
check "job A succeeded (exit $ra)" [ "$ra" -eq 0 ]
check "job B succeeded (exit $rb)" [ "$rb" -eq 0 ]
check "job A delivered 2000 steps" grep -q '"steps": 2000' "$a"
check "job B delivered 2000 steps" grep -q '"steps": 2000' "$b"
ca=$(sed -n 's/.*"checksum": \([0-9]*\).*/\1/p' "$a")
cb=$(sed -n 's/.*"checksum": \([0-9]*\).*/\1/p' "$b")
check "both saw the same data (checksums $ca, $cb): no cross-talk" [ -n "$ca" -a "$ca" = "$cb" ]
read sa ea <"$a.t"; read sb eb <"$b.t"
rm -f "$a.t" "$b.t"
say "job A ran $(( (ea - sa) / 1000000 )) ms, job B $(( (eb - sb) / 1000000 )) ms, overlapping $(( ( (ea < eb ? ea : eb) - (sa > sb ? sa : sb) ) / 1000000 )) ms"
check "the two jobs ran at the same time" [ "$sa" -lt "$eb" -a "$sb" -lt "$ea" ]
left=$(ls /dev/shm | grep '^cpdl-' || true)
if [ "${CPDL_REL_PRIVATE_SHM:-0}" = 1 ]; then
  check "nothing left in /dev/shm ($left)" [ -z "$left" ]
fi
if [ $fail -eq 0 ]; then say "two jobs: PASS"; else say "two jobs: FAIL"; fi
exit $fail
