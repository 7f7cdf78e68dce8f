#!/bin/sh
# enospc_race.sh — R2: the space is gone between cpdl's free-space check and
# the allocation. A preloaded shim makes statvfs report 1 TiB free on a
# 4 MiB private /dev/shm, so the check passes and posix_fallocate must fail:
# its return value (it does not set errno) has to become the same
# CPDL_ENOSPACE error on every rank, never a SIGBUS, and nothing may be left
# in /dev/shm. SKIPPED (77) without a mount namespace.
#
# usage: enospc_race.sh MPIEXEC MPI_RELIABILITY SHIM_SO
set -u
here=$(dirname "$0")
. "$here/lib.sh"
private_shm 4m "$0" "$@" # re-runs this script with a 4 MiB /dev/shm, if it can
if [ "$CPDL_REL_PRIVATE_SHM" != 1 ]; then
  say "SKIPPED: cannot make a private /dev/shm (unshare -m + mount tmpfs needs CAP_SYS_ADMIN)"
  exit 77
fi
mpiexec=$1 rel=$2 shim=$3
mpirun_env
export OMPI_MCA_btl_vader_backing_directory=/tmp
# Under ASan the shim comes before the ASan runtime in the link order.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}:verify_asan_link_order=0"
out=$(mktemp) || exit 1
trap 'rm -f "$out"' EXIT
np=2
timeout -k 5 60 "$mpiexec" --oversubscribe --bind-to none -np $np -x LD_PRELOAD="$shim" \
  "$rel" open ENOSPACE /dev/shm "segment needs" "bytes are available" --shm-size \
  "seq_len=1M" >"$out" 2>&1
rc=$?
cat "$out"
check "the shim made the free-space check pass (1 TiB reported)" \
  grep -q "1099511627776 bytes are available" "$out"
check "every rank's open failed as expected (mpirun exit $rc)" [ "$rc" -eq 0 ]
n=$(grep -c "^reliability: rank [0-9]* open: CPDL_ENOSPACE: " "$out")
check "$n of $np ranks report CPDL_ENOSPACE" [ "$n" -eq $np ]
check "the message says the reservation (posix_fallocate) failed" \
  grep -q "reserving the segment failed (posix_fallocate" "$out"
left=$(ls /dev/shm | grep '^cpdl-' || true)
check "nothing left in /dev/shm ($left)" [ -z "$left" ]
if [ $fail -eq 0 ]; then say "ENOSPC race: PASS"; else say "ENOSPC race: FAIL"; fi
exit $fail
