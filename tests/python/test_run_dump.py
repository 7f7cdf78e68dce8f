"""test_run_dump — `cpdl run` end to end, checked independently of the C code.

1. `mpirun cpdl run --dump D --dump-collated D` for several meshes and modes:
   every rank's dumped view of every step must equal tests/python/reference.py
   (docs/design.md's contract in plain numpy) applied to the leader's collated batch,
   with the parameters recorded in the rank's meta.json.
2. Exact resume: 20 steps uninterrupted vs 10 + --save-state/--resume + 10;
   the dumps of steps 10..19 must be identical byte for byte.
Prints "N passed, M failed" and exits non-zero on any failure.
"""
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402
import testutil  # noqa: E402

check = testutil.report


def run(np_, args, env_extra=None):
    return testutil.cpdl_run(np_, args, env=testutil.mpi_env(env_extra), timeout=240, echo=True)


def load_dir(path):
    return {f[:-4]: np.load(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".npy")}


def check_dump(root, label):
    steps = sorted(d for d in os.listdir(root) if d.startswith("step"))
    check(len(steps) > 0, "%s: no steps dumped" % label)
    for step in steps:
        sdir = os.path.join(root, step)
        ranks = sorted(d for d in os.listdir(sdir) if d.startswith("rank"))
        for rank in ranks:
            meta = json.load(open(os.path.join(sdir, rank, "meta.json")))
            got = load_dir(os.path.join(sdir, rank))
            collated = load_dir(os.path.join(sdir, "group%d" % meta["group"], "collated"))
            loss_mask = collated.pop("loss_mask", None)
            want = reference.shard(collated, meta["cp_size"], meta["cp_rank"],
                                   tp_size=meta["tp_size"], loss_mask=loss_mask,
                                   padding_token_id=meta["padding_token_id"], mode=meta["mode"])
            ok = set(got) == set(want)
            for name in want:
                if name in got:
                    ok = ok and got[name].dtype == want[name].dtype
                    ok = ok and np.array_equal(got[name], want[name])
            check(ok, "%s %s %s: view differs from the reference contract (fields %s vs %s)"
                  % (label, step, rank, sorted(got), sorted(want)))


CASES = [
    (4, "--cp 4 --seq-len 1001"),
    (4, "--cp 2 --tp 2 --seq-len 777 --batch 2"),
    (4, "--cp 4 --seq-len 64 --mode round_robin"),
    (4, "--cp 4 --seq-len 99 --mode aux_only"),
    (3, "--cp 3 --seq-len 50 --collate pad --batch 3"),
    (4, "--cp 2 --seq-len 300 --position-ids continuous"),
]

with tempfile.TemporaryDirectory() as tmp:
    for i, (np_, args) in enumerate(CASES):
        d = os.path.join(tmp, "case%d" % i)
        p = run(np_, args.split() + ["--steps", "4", "--dump", d, "--dump-collated", d])
        check(p.returncode == 0, "cpdl run %s exited %d" % (args, p.returncode))
        if p.returncode == 0:
            check_dump(d, args)
    # fake nodes: two groups (one per fake node) of one replica
    d = os.path.join(tmp, "fakenodes")
    p = run(4, "--cp 4 --seq-len 500 --steps 3 --dump".split() + [d, "--dump-collated", d],
            {"CPDL_RANKS_PER_NODE": "2"})
    check(p.returncode == 0, "fake nodes run exited %d" % p.returncode)
    if p.returncode == 0:
        check_dump(d, "fake nodes")

    # exact resume
    full, first, second = (os.path.join(tmp, n) for n in ("full", "first", "second"))
    state = os.path.join(tmp, "state")
    common = "--cp 2 --tp 2 --seq-len 333 --batch 2 --seed 7".split()
    p1 = run(4, common + ["--steps", "20", "--dump", full])
    p2 = run(4, common + ["--steps", "10", "--dump", first, "--save-state", state])
    p3 = run(4, common + ["--steps", "20", "--dump", second, "--resume", state])
    check(p1.returncode == 0 and p2.returncode == 0 and p3.returncode == 0, "resume runs failed")
    if p3.returncode == 0:
        resumed = sorted(os.listdir(second))
        check(resumed == ["step%d" % k for k in sorted(range(10, 20), key=str)] or
              sorted(resumed) == sorted("step%d" % k for k in range(10, 20)),
              "resumed run dumped %s, expected steps 10..19" % resumed)
        for k in range(10, 20):
            for r in range(4):
                a = load_dir(os.path.join(full, "step%d" % k, "rank%d" % r))
                b = load_dir(os.path.join(second, "step%d" % k, "rank%d" % r))
                check(set(a) == set(b) and all(np.array_equal(a[n], b[n]) for n in a),
                      "resumed step %d rank %d differs from the uninterrupted run" % (k, r))
    # a bad option is a clear error
    p = run(2, ["--cp", "3"])
    check(p.returncode != 0 and "cp" in p.stderr, "cp=3 on 2 ranks: no clear error: %r" % p.stderr)

sys.exit(testutil.summary())
