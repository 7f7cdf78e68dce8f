#!/usr/bin/env bash
# cluster.layouts — layouts across hosts, each `srun --mpi=pmix cpdl run --dump`
# on 2 hosts byte for byte the same job on one host: a CP group spanning hosts
# (cp=4 over 2 + 2 ranks: one segment per host), tp across hosts, mode=thd, and
# the gpt: source (Megatron's blended order) with replicas on different hosts.
# usage: layouts.sh BUILD_DIR
CLUSTER_BUILD=$(readlink -f "$1")
source "$(dirname "$0")/cluster.sh"
source "$(dirname "$0")/lib.sh"
cluster_start 2

write_blend "$WORK"

layout() {
  local name=$1
  shift
  reference 4 "$WORK/$name-ref" "$@"
  cluster_idle 300
  timeout 120 srun -N 2 --ntasks-per-node 2 --mpi=pmix "$CPDL" run --quiet --json "$@" \
    --dump "$WORK/$name" > "$WORK/$name.log" 2>&1
  local rc=$?
  check "$name: srun exit 0 (exit $rc: $(tail -1 "$WORK/$name.log" | cut -c1-200))" [ $rc -eq 0 ]
  check "$name: every view identical to one host" same_views "$WORK/$name-ref" "$WORK/$name"
}
layout cp-across-hosts --cp 4 --seq-len 8K --steps 3 --source synthetic:
layout tp-across-hosts --cp 1 --tp 4 --seq-len 2K --batch 2 --steps 3 --source synthetic:
layout thd --cp 2 --mode thd --seq-len 512 --steps 3 --source synthetic:
layout gpt-replicas --cp 2 --seq-len 32 --batch 2 --steps 4 --seed 3 --source "$GPT_BLEND"
check "no segment left on any host" host_shm_empty
say "$failures failure(s)"
[ $failures -eq 0 ]
