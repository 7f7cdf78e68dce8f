#!/usr/bin/env bash
# cluster.resume — resume across a change of node count, exact: a job on 2
# hosts saves its state at step k (`srun --mpi=pmix cpdl run --save-state`),
# resumes on 1 host and saves again at step m, resumes on 3 hosts; the rows
# every rank's views held over the three legs are, byte for byte, those of one
# uninterrupted run on one host (resume_check.py). Each leg changes dp, and cp
# or tp where the case allows:
#   llmc: (a real llm.c shard), round_robin: dp2 cp2 -> dp1 cp4 -> dp3 cp2
#   gpt:  (Megatron files, the blended order): dp2 -> dp1 cp2 -> dp3 tp2
#   mode=thd (synthetic): dp2 cp2 -> dp1 cp4 -> dp3 cp2, the input/label pairs
#     of the collated rows compared (a thd row's padding follows cp)
# usage: resume.sh BUILD_DIR
CLUSTER_BUILD=$(readlink -f "$1")
source "$(dirname "$0")/cluster.sh"
source "$(dirname "$0")/lib.sh"
cluster_start 3

$PY - "$WORK" <<'PYEOF'
import os, sys
sys.path.insert(0, os.path.join(os.environ["PYTHONPATH"], "../tests/python"))
from datafiles import write_llmc
import resume_data
write_llmc(os.path.join(sys.argv[1], "shard.bin"), resume_data.documents())
PYEOF
write_blend "$WORK"

# leg NAME HOSTS TASKS_PER_HOST ARGS...: one leg under srun on HOSTS hosts.
leg() {
  local name=$1 hosts=$2 per=$3
  shift 3
  cluster_idle 300
  timeout 120 srun -N "$hosts" --ntasks-per-node "$per" --mpi=pmix "$CPDL" run --quiet --json \
    --pin none "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  check "$name: srun on $hosts host(s) exit 0 (exit $rc: $(tail -1 "$WORK/$name.log" | cut -c1-200))" \
    [ $rc -eq 0 ]
}

# resume_case NAME KIND REF_NP "REF ARGS" "COMMON ARGS" "A: hosts per args" "B: ..." "C: ..."
# A saves its state, B resumes it and saves at its end, C resumes B's.
resume_case() {
  local - name=$1 kind=$2 ref_np=$3 ref_args=$4 common=$5 dumps=() i=0 prev="" spec
  set -f # the URIs hold ? and &: split the arguments, glob nothing
  shift 5
  local ref_extra=()
  [ "$kind" = thd ] && ref_extra=(--dump-collated "$WORK/$name-ref")
  # shellcheck disable=SC2086
  reference "$ref_np" "$WORK/$name-ref" --pin none $common $ref_args "${ref_extra[@]}"
  check "$name: the uninterrupted run on one host ran" [ -d "$WORK/$name-ref/step0" ]
  for spec in "$@"; do
    i=$((i + 1))
    local d="$WORK/$name-leg$i" st="$WORK/$name.state$i" extra=()
    read -r hosts per args <<< "$spec"
    [ -n "$prev" ] && extra+=(--resume "$prev")
    [ $i -lt $# ] && extra+=(--save-state "$st")
    [ "$kind" = thd ] && extra+=(--dump-collated "$d")
    # shellcheck disable=SC2086
    leg "$name-leg$i" "$hosts" "$per" $common $args "${extra[@]}" --dump "$d"
    dumps+=("$d")
    prev=$st
  done
  check "$name: the three legs deliver the uninterrupted run's tokens" \
    $PY "$HERE/resume_check.py" "$kind" "$WORK/$name-ref" "${dumps[@]}"
}

T0=$(date +%s%N)
resume_case llmc views 1 "--steps 13" \
  "--seq-len 32 --batch 2 --mode round_robin --source llmc:$WORK/shard.bin" \
  "2 2 --cp 2 --steps 2" "1 4 --cp 4 --steps 5" "3 2 --cp 2 --steps 7"
resume_case gpt views 1 "--steps 13" \
  "--seq-len 32 --batch 2 --seed 3 --source $GPT_BLEND" \
  "2 1 --steps 2" "1 2 --cp 2 --steps 5" "3 2 --tp 2 --steps 7"
resume_case thd thd 2 "--cp 2 --steps 20" \
  "--seq-len 64 --batch 1 --mode thd --source synthetic:?samples=3000&mean=20" \
  "2 2 --cp 2 --steps 2" "1 4 --cp 4 --steps 5" "3 2 --cp 2 --steps 7"
say "the three cases took $(( ($(date +%s%N) - T0) / 1000000 )) ms"
check "no segment left on any host" host_shm_empty
say "$failures failure(s)"
[ $failures -eq 0 ]
