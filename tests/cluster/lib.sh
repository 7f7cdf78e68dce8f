#!/usr/bin/env bash
# tests/cluster/lib.sh — what the cluster tests share (sourced after cluster.sh):
# the environment srun'd programs need, the same job on one host (mpirun), view
# comparison, the per-host /dev/shm check, and check/say.
#   CLUSTER_BUILD  the build dir (cpdl, libcpdl.so, plugins)
HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
SRC=$(readlink -f "$HERE/../..")
PY=/usr/bin/python3
CPDL=$CLUSTER_BUILD/cpdl
# Open MPI between the "hosts": TCP over loopback (they share this machine's network).
export OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo OMPI_MCA_btl=self,vader,tcp
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export CPDL_PLUGIN_PATH=$CLUSTER_BUILD/plugins CPDL_LIBRARY=$CLUSTER_BUILD/libcpdl.so
export PYTHONPATH=$SRC/python
unset CPDL_RANKS_PER_NODE
failures=0
say() { echo "cluster test: $*"; }
check() {
  local what=$1
  shift
  if "$@"; then say "ok   $what"; else say "FAIL $what"; failures=$((failures + 1)); fi
}
# State and work dirs outside every host's private /tmp.
export CLUSTER_ROOT=${CLUSTER_ROOT:-$CLUSTER_BUILD/tests}
mkdir -p "$CLUSTER_ROOT"
WORK=$(mktemp -d "$CLUSTER_ROOT/cluster-work.XXXXXX")
cleanup_work() { rm -rf "$WORK"; }
CLUSTER_ON_EXIT=cleanup_work
trap cleanup_work EXIT # until cluster_start installs its own (which calls it too)

# write_blend DIR: two Megatron indexed datasets, DIR/a (uint16) and DIR/b (int32),
# of short documents ending in EOD 7; GPT_BLEND is a gpt: source blending them.
write_blend() {
  $PY - "$1" <<'PYEOF'
import os, sys
import numpy as np
sys.path.insert(0, os.path.join(os.environ["PYTHONPATH"], "../tests/python"))
from datafiles import write_megatron
rng = np.random.RandomState(5)
write_megatron(os.path.join(sys.argv[1], "a"),
               [np.append(rng.randint(8, 60000, size=rng.randint(1, 60)), 7) for _ in range(200)],
               np.uint16)
write_megatron(os.path.join(sys.argv[1], "b"),
               [np.append(rng.randint(8, 60000, size=rng.randint(1, 90)), 7) for _ in range(100)],
               np.int32)
PYEOF
}
GPT_BLEND="gpt:0.5,$WORK/a,0.5,$WORK/b?num_samples=64&split=98,2,0&eod=7"

# reference NP DIR ARGS...: `mpirun -np NP cpdl run ARGS --dump DIR` on this one host.
reference() {
  local np=$1 dir=$2
  shift 2
  timeout 120 mpirun --oversubscribe --bind-to none -np "$np" \
    "$CPDL" run --quiet --json "$@" --dump "$dir" > "$dir.log" 2>&1
}

# same_views A B: every file of both trees, byte for byte (numpy-loaded: the
# Python dumps' npy headers may be spelled differently).
same_views() {
  $PY - "$1" "$2" <<'PYEOF'
import os, sys
import numpy as np
a, b = sys.argv[1], sys.argv[2]
def files(root):
    return {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root)
            for f in fs if f.endswith(".npy")}
fa, fb = files(a), files(b)
if not fa or fa != fb:
    print("different files: %d vs %d, only in one: %s" % (len(fa), len(fb), sorted(fa ^ fb)[:5]))
    sys.exit(1)
bad = [f for f in sorted(fa) if (lambda x, y: x.dtype != y.dtype or x.shape != y.shape
       or x.tobytes() != y.tobytes())(np.load(os.path.join(a, f)), np.load(os.path.join(b, f)))]
if bad:
    print("different views:", bad[:5])
    sys.exit(1)
print("%d views identical" % len(fa))
PYEOF
}

# host_shm_empty: no cpdl segment in any host's /dev/shm.
host_shm_empty() {
  local k left=""
  for k in $(seq 1 "$CLUSTER_N"); do
    left="$left$(cluster_host_run "n$k" sh -c 'ls /dev/shm | grep "^cpdl-" || true')"
  done
  [ -z "$left" ] || { say "left in /dev/shm: $left"; return 1; }
}
