#!/bin/sh
# config_differs.sh — R17 at the loader level: two ranks of one job with a
# different seq_len (set per rank through CPDL_SEQ_LEN). Open must fail on
# every rank with CPDL_ECONFIG naming seq_len, both through `cpdl run` and
# through the library (each rank prints its own result); nothing hangs and
# nothing is left in /dev/shm.
#
# usage: config_differs.sh MPIEXEC CPDL_BIN MPI_RELIABILITY
set -u
here=$(dirname "$0")
. "$here/lib.sh"
private_shm 256m "$0" "$@"
mpiexec=$1 cpdl=$2 rel=$3
mpirun_env
out=$(mktemp) || exit 1
trap 'rm -f "$out"' EXIT
mpmd() { # mpmd <program and arguments...>: rank 0 seq_len 1000, rank 1 2000
  timeout -k 5 60 "$mpiexec" --oversubscribe --bind-to none \
    -np 1 -x CPDL_SEQ_LEN=1000 "$@" : -np 1 -x CPDL_SEQ_LEN=2000 "$@" >"$out" 2>&1
}

mpmd "$cpdl" run --cp 2 --steps 3
rc=$?
cat "$out"
check "cpdl run fails (exit $rc)" [ "$rc" -ne 0 -a "$rc" -ne 124 ]
check "cpdl run names seq_len" grep -q "CPDL_ECONFIG.*seq_len" "$out"

mpmd "$rel" open ECONFIG seq_len 1000 2000 "cp=2"
rc=$?
cat "$out"
check "every rank's open failed as expected (mpirun exit $rc)" [ "$rc" -eq 0 ]
n=$(grep -c "^reliability: rank [0-9] open: CPDL_ECONFIG: .*seq_len" "$out")
check "$n of 2 ranks name seq_len" [ "$n" -eq 2 ]
if [ "${CPDL_REL_PRIVATE_SHM:-0}" = 1 ]; then
  left=$(ls /dev/shm | grep '^cpdl-' || true)
  check "nothing left in /dev/shm ($left)" [ -z "$left" ]
fi
if [ $fail -eq 0 ]; then say "config differs: PASS"; else say "config differs: FAIL"; fi
exit $fail
