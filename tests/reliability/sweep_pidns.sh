#!/bin/sh
# sweep_pidns.sh — R26: `cpdl sweep --remove` from another PID namespace that shares
# /dev/shm (containers of one pod: IPC shared, PIDs not) never removes a segment whose
# creator it cannot see.
#  1. a live job: the leader stops itself right after creating its segment
#     (CPDL_FAULT=after_create:0:stop), so the real segment sits in /dev/shm with a
#     live creator. `unshare -p -f --mount-proc cpdl sweep --remove` keeps it and says
#     why; a sweep in our own namespace keeps it too (alive); SIGCONT: the job completes.
#  2. a dead creator (CPDL_FAULT=after_create:0 kills the leader): from the other
#     namespace the segment is kept ("cannot prove"), from ours it is removed.
# Needs a private /dev/shm (unshare -m) and unshare -p; exit 77 (SKIPPED) without.
#
# usage: sweep_pidns.sh MPIEXEC CPDL_BIN
set -u
here=$(dirname "$0")
. "$here/lib.sh"
private_shm 64m "$0" "$@"
mpiexec=$1 cpdl=$2
if [ "${CPDL_REL_PRIVATE_SHM:-0}" != 1 ]; then
  say "SKIPPED: no private /dev/shm (unshare -m not permitted); sweep --remove must not run on a shared one"
  exit 77
fi
if ! unshare -p -f --mount-proc true 2>/dev/null; then
  say "SKIPPED: unshare -p -f --mount-proc is not permitted here"
  exit 77
fi
mpirun_env
out=$(mktemp) || exit 1
trap 'rm -f "$out" "$out.sweep"' EXIT

segments() { ls /dev/shm | grep "^cpdl-$(id -u)-" || true; }

# 1. a live creator, stopped inside open
CPDL_FAULT=after_create:0:stop timeout -k 5 120 "$mpiexec" --oversubscribe --bind-to none -np 2 \
  -x CPDL_FAULT "$cpdl" run --cp 2 --steps 20 --seq-len 64 --json >"$out" 2>&1 &
job=$!
waited=0
while [ -z "$(segments)" ] && [ $waited -lt 600 ]; do sleep 0.1; waited=$((waited + 1)); done
seg=$(segments)
check "the stopped leader's segment exists ($seg)" [ -n "$seg" ]
leader=$(echo "$seg" | sed -n 's/^cpdl-[0-9]*-\([0-9]*\)-.*/\1/p')
unshare -p -f --mount-proc "$cpdl" sweep --remove >"$out.sweep" 2>&1
cat "$out.sweep"
check "another PID namespace keeps the live job's segment" [ -e "/dev/shm/$seg" ]
check "and says why (another PID namespace)" grep -q "kept: cannot prove its creator dead: its creator ran in another PID namespace" "$out.sweep"
check "and counts it as kept" grep -q "1 segment kept" "$out.sweep"
"$cpdl" sweep --remove >"$out.sweep" 2>&1
check "our own sweep keeps it (the creator lives)" [ -e "/dev/shm/$seg" ]
kill -CONT "$leader" 2>/dev/null
wait $job; rc=$?
cat "$out"
check "the job, continued, completes (exit $rc)" [ "$rc" -eq 0 ]
check "with its 20 steps" grep -q '"steps": 20' "$out"
check "and leaves nothing" [ -z "$(segments)" ]

# 2. a dead creator: the other namespace cannot tell, ours can
CPDL_FAULT=after_create:0 timeout -k 5 120 "$mpiexec" --oversubscribe --bind-to none -np 2 \
  -x CPDL_FAULT "$cpdl" run --cp 2 --steps 20 --seq-len 64 >"$out" 2>&1
seg=$(segments)
check "the killed leader left its segment ($seg)" [ -n "$seg" ]
unshare -p -f --mount-proc "$cpdl" sweep --remove >"$out.sweep" 2>&1
cat "$out.sweep"
check "another PID namespace keeps a segment it cannot judge" [ -n "$seg" -a -e "/dev/shm/$seg" ]
"$cpdl" sweep --remove >"$out.sweep" 2>&1
cat "$out.sweep"
check "our own sweep removes the dead creator's segment" [ -z "$(segments)" ]
if [ $fail -eq 0 ]; then say "sweep across PID namespaces: PASS"; else say "sweep across PID namespaces: FAIL"; fi
exit $fail
