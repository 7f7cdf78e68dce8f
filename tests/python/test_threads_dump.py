"""python.threads_dump — the collate split across the loader threads changes no byte:
`cpdl run --dump D --dump-collated D` at dp 2, cp 2 (np 4) with --threads 1 and with
--threads 4 (and 3: rows that do not divide evenly) must write identical files, every
step, every rank, every field, in every mode: pack (contiguous, round_robin, continuous
positions), pad, thd, thd with schedule=balanced, an llmc file (stable mmap tokens) and
gpt: rows; pack and pad again with slots=2, where the sizing leaves one collate set (the
split then prepares, publishes, and fills the next step's rows in a phase of its own).
CPDL_SPLIT_MIN_BYTES=0 lets these small steps use every thread (the loader keeps steps
under 4 MiB on one). Prints "N passed, M failed"; exits non-zero on a failure.
"""
import filecmp
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from datafiles import write_llmc, write_megatron  # noqa: E402
import testutil  # noqa: E402

check = testutil.report
TMP = tempfile.mkdtemp(prefix="cpdl-threads-dump-")

rng = np.random.RandomState(11)
LLMC = os.path.join(TMP, "docs.bin")
write_llmc(LLMC, [rng.randint(0, 50000, size=rng.randint(1, 300)) for _ in range(400)])
write_megatron(os.path.join(TMP, "m"),
               [np.append(rng.randint(8, 60000, size=rng.randint(1, 200)), 7) for _ in range(300)])
GPT = "gpt:%s?num_samples=200&split=98,2,0&eod=7" % os.path.join(TMP, "m")
SYN = "synthetic:?samples=3000&mean=120&min=1&max=900"

BASE = ["--cp", "2", "--steps", "5", "--seed", "9"]
CASES = [
    ["--source", SYN, "--seq-len", "512", "--batch", "5"],
    ["--source", SYN, "--seq-len", "512", "--batch", "4", "--mode", "round_robin"],
    ["--source", SYN, "--seq-len", "300", "--batch", "3", "--position-ids", "continuous"],
    ["--source", SYN, "--seq-len", "256", "--batch", "6", "--collate", "pad"],
    ["--source", SYN, "--seq-len", "1024", "--batch", "1", "--mode", "thd"],
    ["--source", SYN, "--seq-len", "1024", "--batch", "1", "--mode", "thd", "--schedule",
     "balanced"],
    ["--source", "llmc:" + LLMC, "--seq-len", "400", "--batch", "4"],
    ["--source", GPT, "--seq-len", "64", "--batch", "4"],
]
ONE_SET = {"CPDL_SLOTS": "2"}  # slots = need: no room for a second collate set (sizing.c)
CASES = [(c, None) for c in CASES] + [(CASES[0], ONE_SET), (CASES[3], ONE_SET)]


def files(root):
    out = []
    for d, _, names in os.walk(root):
        out += [os.path.relpath(os.path.join(d, n), root) for n in names if n.endswith(".npy")]
    return sorted(out)


for i, (args, extra) in enumerate(CASES):
    env = testutil.mpi_env(dict({"CPDL_SPLIT_MIN_BYTES": "0"}, **(extra or {})))
    label = " ".join(a for a in args if not a.startswith(TMP)) + (" (one set)" if extra else "")
    dumps = {}
    for threads in (1, 4, 3):
        d = os.path.join(TMP, "case%d-t%d" % (i, threads))
        p = testutil.cpdl_run(4, BASE + args + ["--threads", str(threads), "--dump", d,
                                                "--dump-collated", d],
                              env=env, timeout=240, echo=True)
        check(p.returncode == 0, "%s --threads %d exited %d" % (label, threads, p.returncode))
        if extra and p.returncode == 0:
            check('"collate_sets": 1' in p.stdout, "%s: expected one collate set" % label)
        if p.returncode == 0:
            dumps[threads] = d
    if 1 not in dumps:
        continue
    want = files(dumps[1])
    check(len(want) >= 4 * 5, "%s: %d files dumped with --threads 1" % (label, len(want)))
    for threads, d in dumps.items():
        if threads == 1:
            continue
        got = files(d)
        check(got == want, "%s --threads %d dumped other files: %s" % (
            label, threads, sorted(set(got) ^ set(want))[:4]))
        same = [f for f in want if f in got and
                filecmp.cmp(os.path.join(dumps[1], f), os.path.join(d, f), shallow=False)]
        check(len(same) == len(want), "%s --threads %d: %d of %d files differ, e.g. %s" % (
            label, threads, len(want) - len(same), len(want),
            [f for f in want if f not in same][:3]))

shutil.rmtree(TMP, ignore_errors=True)
sys.exit(testutil.summary())
