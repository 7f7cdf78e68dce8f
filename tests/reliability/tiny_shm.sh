#!/bin/sh
# tiny_shm.sh — R1: a /dev/shm too small for the segment (4 MiB, as a
# too-small Docker --shm-size). The leader must fail before any rank maps:
# every rank gets CPDL_ENOSPACE with the path, the bytes needed, the bytes
# available and the fix; the job exits non-zero, never by SIGBUS; nothing is
# left in /dev/shm. Needs a mount namespace (unshare -m): without one the
# test is SKIPPED (exit 77), never passed.
#
# usage: tiny_shm.sh MPIEXEC CPDL_BIN MPI_RELIABILITY
set -u
here=$(dirname "$0")
. "$here/lib.sh"
private_shm 4m "$0" "$@" # re-runs this script with a 4 MiB /dev/shm, if it can
if [ "$CPDL_REL_PRIVATE_SHM" != 1 ]; then
  say "SKIPPED: cannot make a private /dev/shm (unshare -m + mount tmpfs needs CAP_SYS_ADMIN)"
  exit 77
fi
mpiexec=$1 cpdl=$2 rel=$3
mpirun_env
# Open MPI's own shared memory goes elsewhere: this /dev/shm is for cpdl.
export OMPI_MCA_btl_vader_backing_directory=/tmp
say "private /dev/shm: $(df -k /dev/shm | tail -n 1)"
out=$(mktemp) || exit 1
trap 'rm -f "$out"' EXIT

# 1. The command line tool: a clear error and a failing exit code.
timeout -k 5 60 "$mpiexec" --oversubscribe --bind-to none -np 2 \
  "$cpdl" run --cp 2 --seq-len 1M --steps 5 >"$out" 2>&1
rc=$?
cat "$out"
check "cpdl run fails (exit $rc)" [ "$rc" -ne 0 -a "$rc" -ne 124 ]
check "no rank died of a signal (SIGBUS)" [ "$rc" -lt 128 ]
check "no SIGBUS / Bus error in the output" [ "$(grep -ci 'sigbus\|bus error\|signal 7' "$out")" -eq 0 ]
for word in CPDL_ENOSPACE /dev/shm "bytes are available" "needs" "--shm-size" "slots"; do
  check "cpdl run's message has '$word'" grep -q -- "$word" "$out"
done
n=$(grep -c "^cpdl run: rank [0-9]*: open: CPDL_ENOSPACE: .*/dev/shm" "$out")
check "cpdl run prints the R1 message on each of its 2 ranks ($n)" [ "$n" -eq 2 ]

# 2. Every rank gets the message, from the library itself.
np=3
timeout -k 5 60 "$mpiexec" --oversubscribe --bind-to none -np $np \
  "$rel" open ENOSPACE /dev/shm "segment needs" "bytes are available" --shm-size \
  "seq_len=1M" >"$out" 2>&1
rc=$?
cat "$out"
check "every rank's open failed as expected (mpirun exit $rc)" [ "$rc" -eq 0 ]
n=$(grep -c "^reliability: rank [0-9]* open: CPDL_ENOSPACE: .*/dev/shm.*needs [0-9]* bytes, [0-9]* bytes are available.*--shm-size" "$out")
check "$n of $np ranks print the R1 message" [ "$n" -eq $np ]
left=$(ls /dev/shm | grep '^cpdl-' || true)
check "nothing left in /dev/shm ($left)" [ -z "$left" ]

if [ $fail -eq 0 ]; then say "tiny /dev/shm: PASS"; else say "tiny /dev/shm: FAIL"; fi
exit $fail
