#!/usr/bin/env bash
# cluster.launch — the Slurm launch paths of docs/launching.md on a cluster of
# 2 hosts, each giving every rank's views byte for byte as the same job on one
# host (mpirun), and the per-host shared memory:
#  1. srun --mpi=pmix cpdl run --dump
#  2. srun --mpi=pmix python3 train.py (cpdl.Loader, MPI control plane);
#     each host's /dev/shm held only its own group's segment (bytes per host)
#  3. srun python3 train.py --plane torch: torch.distributed (gloo), rank and
#     size from SLURM_PROCID/SLURM_NTASKS, MASTER_ADDR the first host
#  4. plain srun without PMIx or torch.distributed: every task refuses to be a
#     world of one, naming Slurm and the fix
# usage: launch.sh BUILD_DIR
CLUSTER_BUILD=$(readlink -f "$1")
source "$(dirname "$0")/cluster.sh"
source "$(dirname "$0")/lib.sh"
cluster_start 2
ARGS=(--cp 2 --seq-len 4K --batch 2 --steps 4 --seed 11 --source synthetic:)
CONFIG="cp=2 seq_len=4K batch=2 steps=4 seed=11 source=synthetic:"

reference 4 "$WORK/ref" "${ARGS[@]}"
check "the one-host reference ran" [ -d "$WORK/ref/step3" ]

cluster_idle 300
timeout 120 srun -N 2 --ntasks-per-node 2 --mpi=pmix "$CPDL" run --quiet --json "${ARGS[@]}" \
  --dump "$WORK/srun" > "$WORK/srun.log" 2>&1
rc=$?
check "srun --mpi=pmix cpdl run: exit 0 (exit $rc: $(tail -1 "$WORK/srun.log"))" [ $rc -eq 0 ]
check "srun --mpi=pmix cpdl run: views identical to one host" same_views "$WORK/ref" "$WORK/srun"

mkdir -p "$WORK/py"
cluster_idle 300
timeout 120 srun -N 2 --ntasks-per-node 2 --mpi=pmix $PY "$HERE/train.py" --out "$WORK/py" \
  --config "$CONFIG" --dump > "$WORK/py.log" 2>&1
rc=$?
check "srun --mpi=pmix python3 train.py: exit 0 (exit $rc: $(tail -2 "$WORK/py.log"))" [ $rc -eq 0 ]
check "srun --mpi=pmix python3 train.py: views identical to one host" \
  same_views "$WORK/ref" "$WORK/py"
# OPEN rank host pid group leader segment_bytes shm=name:bytes,...
check "every host maps only its own groups' segments" $PY - "$WORK/py" <<'PYEOF'
import collections, glob, sys
hosts = collections.defaultdict(dict)   # host -> {segment: bytes}
owner = {}
for path in glob.glob(sys.argv[1] + "/rank*.txt"):
    for line in open(path):
        if line.startswith("OPEN"):
            _, rank, host, pid, group, leader, size, shm = line.split()
            for item in shm[4:].split(","):
                name, _ = item.split(":")
                if name.startswith("cpdl-") and not name.endswith(".so"):
                    if owner.setdefault(name, host) != host:
                        print("segment %s mapped on %s and %s" % (name, owner[name], host))
                        sys.exit(1)
                    hosts[host][name] = int(size)
ok = sorted(hosts) == ["n1", "n2"] and all(len(s) == 1 for s in hosts.values())
for host in sorted(hosts):
    print("host %s: %d segment(s), %d bytes of /dev/shm" % (host, len(hosts[host]),
                                                            sum(hosts[host].values())))
sys.exit(0 if ok else 1)
PYEOF

mkdir -p "$WORK/torch"
cluster_idle 300
timeout 120 srun -N 2 --ntasks-per-node 2 $PY "$HERE/train.py" --out "$WORK/torch" \
  --config "$CONFIG" --plane torch --dump > "$WORK/torch.log" 2>&1
rc=$?
check "srun python3 train.py --plane torch: exit 0 (exit $rc: $(tail -2 "$WORK/torch.log"))" \
  [ $rc -eq 0 ]
check "srun, torch.distributed control plane: views identical to one host" \
  same_views "$WORK/ref" "$WORK/torch"

cluster_idle 300
timeout 120 srun -N 2 --ntasks-per-node 1 $PY -c "import cpdl; cpdl.Loader('$CONFIG')" \
  > "$WORK/one.log" 2>&1
rc=$?
check "plain srun without a control plane fails (exit $rc)" [ $rc -ne 0 ]
check "... on every task, naming Slurm and the world of one" \
  [ "$(grep -c 'Slurm (srun) for 2 processes.*world of one' "$WORK/one.log")" -eq 2 ]
check "no segment left on any host" host_shm_empty
say "$failures failure(s)"
[ $failures -eq 0 ]
