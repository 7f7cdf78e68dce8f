#!/bin/sh
# fault_matrix.sh — drive one cell of the fault matrix (tests/mpi/fault_matrix.c)
# and check what the program itself cannot: the bound on the whole job, that
# no process of the job remains, what is left in /dev/shm and that
# `cpdl sweep --remove` removes exactly the leftover of a dead creator (R5).
#
# usage: fault_matrix.sh MPIEXEC EXE CPDL_BIN POINT VICTIM kill|error NP EXPECT [CONFIG]
#   EXPECT: survivors  — every rank but the victim prints PASS (CPDL_EPEER
#                        naming it within 10 s), run with --enable-recovery;
#                        nothing of the job is left in /dev/shm;
#           survivors-leftover — the same, but the victim is a leader that
#                        died between creating and unlinking its segment:
#                        the segment stays until `cpdl sweep --remove`;
#           all        — every rank prints PASS (error mode);
#           aborted    — a death inside open: mpirun ends the job (no hang:
#                        within the outer bound); nothing of the job runs
#                        afterwards;
#           leftover   — aborted, and the victim's segment stays in /dev/shm
#                        until `cpdl sweep --remove` removes it and only it.
set -u
here=$(dirname "$0")
. "$here/lib.sh"
private_shm 512m "$0" "$@"

mpiexec=$1 exe=$2 cpdl=$3 point=$4 victim=$5 mode=$6 np=$7 expect=$8
config=${9:-}
mpirun_env
out=$(mktemp) || exit 1
trap 'rm -f "$out"' EXIT

recovery=""
case $expect in survivors*) recovery="--enable-recovery" ;; esac
# Only a hang bound on the whole job: its wall time includes mpirun's
# start-up, which a loaded machine stretches. The time cpdl controls — from
# the failing call to the survivors' error — is bounded by the program itself.
bound=60
start=$(date +%s)
# shellcheck disable=SC2086
timeout -k 5 $bound "$mpiexec" --oversubscribe --bind-to none $recovery -np "$np" \
  "$exe" "$point" "$victim" "$mode" "$config" >"$out" 2>&1
rc=$?
took=$(( $(date +%s) - start ))
cat "$out"
pids=""
r=0
while [ $r -lt "$np" ]; do pids="$pids$(rank_pid "$out" $r) "; r=$((r + 1)); done
say "--- mpirun exit $rc after ${took}s (private /dev/shm: $CPDL_REL_PRIVATE_SHM; job pids: $pids)"

check "every rank started (pids: $pids)" [ "$(echo $pids | wc -w)" -eq "$np" ]
check "mpirun finished within ${bound}s" [ "$rc" -ne 124 ]
left=$(wait_gone 10 $pids) # mpirun's last SIGKILLs are asynchronous
check "no process of the job remains ($left)" [ -z "$left" ]
reap $left
passes=$(grep -c "^fault matrix: rank [0-9]* PASS" "$out")
check "no rank reports FAIL" [ "$(grep -c 'FAIL\|CHECK(' "$out")" -eq 0 ]

case $expect in
survivors*)
  # Each survivor's PASS includes its CPDL_EPEER within 10 s of its call.
  check "every survivor passed ($passes of $((np - 1)))" [ "$passes" -eq $((np - 1)) ] ;;
all)
  check "every rank passed ($passes of $np)" [ "$passes" -eq "$np" ]
  check "mpirun exit 0" [ "$rc" -eq 0 ] ;;
aborted|leftover)
  check "the job failed (mpirun exit $rc)" [ "$rc" -ne 0 ] ;;
esac

segs=$(job_segments $pids)
if [ "$expect" != leftover ] && [ "$expect" != survivors-leftover ]; then
  check "nothing of the job left in /dev/shm ($segs)" [ -z "$segs" ]
else
  victim_pid=$(rank_pid "$out" "$victim")
  check "the dead leader's segment is left ($segs)" [ "$(echo $segs | wc -w)" -eq 1 ]
  check "it carries the dead creator's pid $victim_pid" \
    [ -n "$(job_segments $victim_pid)" ]
  uid=$(id -u)
  # Decoys sweep must leave alone: a live creator (this shell), another
  # uid, another prefix.
  live="/dev/shm/cpdl-$uid-$$-00000000decoy001"
  other="/dev/shm/cpdl-$((uid + 1))-$victim_pid-00000000decoy002"
  foreign="/dev/shm/cpdx-$uid-$victim_pid-00000000decoy003"
  for f in "$live" "$other" "$foreign"; do (umask 077 && : >"$f"); done
  listed=$("$cpdl" sweep)
  say "$listed"
  check "cpdl sweep lists it" sh -c "echo \"\$0\" | grep -q '$segs'" "$listed"
  check "cpdl sweep (list) removes nothing" [ -e "/dev/shm/$segs" ]
  removed=$("$cpdl" sweep --remove)
  say "$removed"
  check "cpdl sweep --remove removes it" [ ! -e "/dev/shm/$segs" ]
  for f in "$live" "$other" "$foreign"; do
    check "cpdl sweep --remove leaves $f" [ -e "$f" ]
    rm -f "$f"
  done
fi

if [ $fail -eq 0 ]; then say "fault matrix $point:$victim:$mode: PASS"; else say "fault matrix $point:$victim:$mode: FAIL"; fi
exit $fail
