#!/bin/sh
# python.pip_install — `pip install .` of the repository into a fresh venv
# (--system-site-packages for numpy/torch, --no-build-isolation --no-index:
# offline, Debian's setuptools), then, from / and with none of the variables
# the in-tree tests use, `import cpdl` finds the packaged libcpdl.so and its
# plugins, a Loader runs under mpirun, and the `cpdl` console script works.
# The repository is copied first, so the build leaves nothing in the tree.
set -eu
src=$1
python=${2:-/usr/bin/python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/src"
(cd "$src" && tar --exclude='./build*' --exclude='./.git' --exclude='*.egg-info' -cf - .) |
  (cd "$tmp/src" && tar -xf -)
"$python" -m venv --system-site-packages "$tmp/venv"
"$tmp/venv/bin/pip" install --quiet --no-build-isolation --no-index "$tmp/src" >"$tmp/pip.log" 2>&1 ||
  { cat "$tmp/pip.log"; echo "FAIL: pip install ."; exit 1; }
rm -rf "$tmp/src" # the installed package must not need the source tree
cd /
unset PYTHONPATH CPDL_LIBRARY CPDL_PREP_LIBRARY CPDL_PLUGIN_PATH CPDL_BIN || true
"$tmp/venv/bin/python" - "$tmp/venv" <<'PY'
import os, sys
import cpdl
venv = sys.argv[1]
assert cpdl._ffi.prep().path.endswith("_native/libcpdl_prep.so"), cpdl._ffi.prep().path
assert cpdl._ffi.prep().path.startswith(venv), cpdl._ffi.prep().path
assert cpdl.library_path.startswith(venv), cpdl.library_path
src = cpdl.Source("synthetic:?seed=5")
assert len(src) > 0 and len(src[0]) > 0
print("ok: import cpdl from", cpdl.library_path)
PY
out=$(OMPI_MCA_rmaps_base_oversubscribe=1 mpirun --bind-to none -np 2 "$tmp/venv/bin/python" -c '
import cpdl
L = cpdl.Loader("cp=2 seq_len=256 steps=3 pin=none")
steps = [b.step for b in L]
L.close()
assert steps == [0, 1, 2], steps
print("rank", L.mesh.cp_rank, "steps", steps)')
echo "$out"
[ "$(echo "$out" | grep -c 'steps \[0, 1, 2\]')" -eq 2 ] || { echo "FAIL: Loader under mpirun"; exit 1; }
"$tmp/venv/bin/cpdl" inspect synthetic: | grep -q "_native/cpdl/cpdl-synthetic.so" ||
  { "$tmp/venv/bin/cpdl" inspect synthetic:; echo "FAIL: the cpdl console script"; exit 1; }
echo "1 passed, 0 failed"
