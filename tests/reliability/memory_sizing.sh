#!/bin/sh
# memory_sizing.sh — the memory sized by need (docs/design.md#memory-sized-by-need):
# `cpdl run --json`'s "memory" field agrees with the formula
#   slot_bytes = n_regions * rank_block_bytes + shared_block_bytes
#   slots = clamp(budget_bytes / slot_bytes, 2, 4)   (slots= overrides)
#   segment_bytes = ctrl_bytes + slots * slot_bytes
#   collate_bytes = collate_sets * collate_set_bytes + (S + 1) * 8
# for small and large steps, a budget, an override and two groups per node,
# and with the segment the leader really created: a leader killed just
# before it unlinks leaves its segment in a private /dev/shm, whose file size
# must be segment_bytes. Needs a mount namespace (unshare -m): without one
# the test is SKIPPED (exit 77), never passed.
#
# usage: memory_sizing.sh MPIEXEC CPDL_BIN
set -u
here=$(dirname "$0")
. "$here/lib.sh"
private_shm 512m "$0" "$@"
if [ "$CPDL_REL_PRIVATE_SHM" != 1 ]; then
  say "SKIPPED: cannot make a private /dev/shm (unshare -m + mount tmpfs needs CAP_SYS_ADMIN)"
  exit 77
fi
mpiexec=$1 cpdl=$2
mpirun_env
export OMPI_MCA_btl_vader_backing_directory=/tmp
py=/usr/bin/python3
[ -x "$py" ] || py=python3
out=$(mktemp) || exit 1
trap 'rm -f "$out"' EXIT

# check_json <np> <expected slots> <expected collate sets> <expected node groups> <cpdl run args...>
check_json() {
  np=$1 slots=$2 sets=$3 groups=$4; shift 4
  timeout -k 5 120 "$mpiexec" --oversubscribe --bind-to none -np "$np" \
    "$cpdl" run --json --steps 3 "$@" >"$out" 2>&1
  rc=$?
  check "cpdl run $* (np $np) succeeds (exit $rc)" [ "$rc" -eq 0 ]
  verdict=$("$py" - "$out" "$slots" "$sets" "$groups" <<'EOF'
import json, sys
line = [l for l in open(sys.argv[1]) if l.startswith("{")][-1]
d = json.loads(line); m = d["memory"]
want_slots, want_sets, want_groups = map(int, sys.argv[2:5])
S, B = d["seq_len"], d["batch"]
bad = []
def eq(what, got, want):
    if got != want:
        bad.append("%s: %r, expected %r" % (what, got, want))
eq("slot_bytes", m["slot_bytes"], m["n_regions"] * m["rank_block_bytes"] + m["shared_block_bytes"])
if m["slots_given"] == 0:
    eq("slots (formula)", m["slots"],
       max(m["slots_need"], min(m["slots_max"], m["budget_bytes"] // m["slot_bytes"])))
else:
    eq("slots (given)", m["slots"], m["slots_given"])
eq("slots", m["slots"], want_slots)
eq("top-level slots", d["slots"], m["slots"])
eq("ring_bytes", m["ring_bytes"], m["slots"] * m["slot_bytes"])
eq("segment_bytes", m["segment_bytes"], m["ctrl_bytes"] + m["ring_bytes"])
eq("top-level segment_bytes", d["segment_bytes"], m["segment_bytes"])
eq("collate_sets", m["collate_sets"], want_sets)
eq("collate_set_bytes (pack: 4 int64 fields)", m["collate_set_bytes"], 4 * B * S * 8)
eq("collate_bytes", m["collate_bytes"], m["collate_sets"] * m["collate_set_bytes"] + (S + 1) * 8)
eq("group_bytes", m["group_bytes"], m["segment_bytes"] + m["collate_bytes"])
eq("node_groups", m["node_groups"], want_groups)
eq("node_bytes", m["node_bytes"], m["node_groups"] * m["group_bytes"])
eq("n_regions (cp ranks of a group)", m["n_regions"], d["cp"])
print("ok %d" % m["segment_bytes"] if not bad else "; ".join(bad))
EOF
)
  say "  $verdict"
  good=0
  case $verdict in ok*) seg_bytes=${verdict#ok }; good=1 ;; esac
  check "the memory field of cpdl run $* is the formula's" [ "$good" -eq 1 ]
}

# check_file <np> <segment bytes> <cpdl run args...>: the leader dies before
# unlinking; the segment it left has exactly the reported size.
check_file() {
  np=$1 want=$2; shift 2
  ls /dev/shm | grep '^cpdl-' | while read -r s; do rm -f "/dev/shm/$s"; done
  CPDL_FAULT=before_unlink:0 timeout -k 5 120 "$mpiexec" --oversubscribe --bind-to none \
    -np "$np" -x CPDL_FAULT "$cpdl" run --steps 3 "$@" >"$out" 2>&1
  seg=$(ls /dev/shm | grep '^cpdl-' | head -n 1)
  size=0
  [ -n "$seg" ] && size=$(stat -c %s "/dev/shm/$seg")
  check "the killed leader's segment ($seg) is $want bytes, as reported ($size)" \
    [ -n "$seg" -a "$size" -eq "$want" ]
  rm -f "/dev/shm/$seg"
}

# 1M tokens at cp 2: a step is 32 MiB, the 64 MiB default holds 2; no second collate set.
check_json 2 2 1 1 --cp 2 --seq-len 1M
check_file 2 "$seg_bytes" --cp 2 --seq-len 1M
# 128K: 4 MiB a step, the lookahead cap of 4 slots, collation pipelined (2 sets).
check_json 2 4 2 1 --cp 2 --seq-len 128K
# A budget of 100 MiB at 1M: 3 slots, room to run ahead, so 2 sets.
check_json 2 3 2 1 --cp 2 --seq-len 1M --ring-bytes 100M
check_file 2 "$seg_bytes" --cp 2 --seq-len 1M --ring-bytes 100M
# slots= overrides: 5 slots of an 8K step (one loader thread below 4 MiB: 1 set).
check_json 2 5 1 1 --cp 2 --seq-len 8K --slots 5
# Two groups on the node (dp 2): the node's bytes are both groups'.
check_json 4 4 1 2 --cp 2 --seq-len 64K
# A budget that cannot hold two steps is an error that gives the bytes needed.
timeout -k 5 120 "$mpiexec" --oversubscribe --bind-to none -np 2 \
  "$cpdl" run --cp 2 --seq-len 1M --steps 3 --ring-bytes 40M >"$out" 2>&1
rc=$?
check "ring_bytes below two steps fails (exit $rc)" [ "$rc" -ne 0 -a "$rc" -lt 128 ]
check "and says how many bytes it needs" grep -q "set ring_bytes >= 67108864" "$out"
left=$(ls /dev/shm | grep '^cpdl-' || true)
check "nothing left in /dev/shm ($left)" [ -z "$left" ]

if [ $fail -eq 0 ]; then say "memory sizing: PASS"; else say "memory sizing: FAIL"; fi
exit $fail
