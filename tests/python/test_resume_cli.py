"""test_resume_cli — `cpdl run --save-state` / `--resume` with several replicas.

For each cell of resume_data.CELLS (dp 1..3, cp, tp, every source, both
collates): run A delivers STEPS steps and dumps every rank's view; run B stops
at STOP with --save-state; run C resumes from B's file and dumps. Every rank's
every field of steps STOP..STEPS-1 of C must equal A's byte for byte (the
resume file is written by rank 0 and restores every replica).
Also: --save-state into an unwritable path fails the run (non-zero exit);
a state file of another dp size resumes; one of another seq_len, seed or
source is refused naming the key; a truncated one is refused.
Prints "N passed, M failed" and exits non-zero on any failure.
"""
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import resume_data  # noqa: E402
import testutil  # noqa: E402

check = testutil.report


def run(np_, args):
    return testutil.cpdl_run(np_, ["--pin", "none"] + args)


def load_rank_dirs(root, step):
    """{rank dir: {field: array}} of one dumped step."""
    sdir = os.path.join(root, "step%d" % step)
    out = {}
    for rank in sorted(os.listdir(sdir)):
        rdir = os.path.join(sdir, rank)
        out[rank] = {f[:-4]: np.load(os.path.join(rdir, f))
                     for f in os.listdir(rdir) if f.endswith(".npy")}
    return out


def compare(full, resumed, label, np_):
    for step in range(resume_data.STOP, resume_data.STEPS):
        try:
            a = load_rank_dirs(full, step)
            b = load_rank_dirs(resumed, step)
        except OSError as exc:
            check(False, "%s: step %d not dumped" % (label, step), str(exc))
            continue
        check(len(a) == np_ and sorted(a) == sorted(b),
              "%s: step %d ranks %s vs %s" % (label, step, sorted(a), sorted(b)))
        for rank in a:
            x, y = a[rank], b.get(rank, {})
            same = set(x) == set(y) and all(x[k].dtype == y[k].dtype and
                                            np.array_equal(x[k], y[k]) for k in x)
            check(same, "%s: step %d %s differs from the uninterrupted run" % (label, step, rank))


def test_matrix():
    with tempfile.TemporaryDirectory() as tmp:
        for i, (np_, cp, tp, kind, collate) in enumerate(resume_data.CELLS):
            dp = np_ // (cp * tp)
            label = "np%d cp%d tp%d dp%d %s %s" % (np_, cp, tp, dp, kind, collate)
            common = ["--cp", str(cp), "--tp", str(tp), "--seq-len", str(resume_data.SEQ_LEN),
                      "--batch", str(resume_data.BATCH), "--collate", collate,
                      "--source", resume_data.source_uri(kind, tmp, dp)]
            full, resumed = os.path.join(tmp, "full%d" % i), os.path.join(tmp, "res%d" % i)
            state = os.path.join(tmp, "state%d" % i)
            pa = run(np_, common + ["--steps", str(resume_data.STEPS), "--dump", full])
            pb = run(np_, common + ["--steps", str(resume_data.STOP), "--save-state", state])
            pc = run(np_, common + ["--steps", str(resume_data.STEPS), "--resume", state,
                                    "--dump", resumed])
            ok = pa.returncode == 0 and pb.returncode == 0 and pc.returncode == 0
            check(ok, "%s: runs exited %d %d %d" % (label, pa.returncode, pb.returncode,
                                                    pc.returncode),
                  pa.stderr + pb.stderr + pc.stderr)
            if ok:
                compare(full, resumed, label, np_)


def test_refusals():
    with tempfile.TemporaryDirectory() as tmp:
        common = ["--cp", "2", "--seq-len", "64"]
        state = os.path.join(tmp, "st")
        p = run(4, common + ["--steps", "2", "--save-state", state])
        check(p.returncode == 0, "save exited %d" % p.returncode, p.stderr)
        # another dp size: the same file on 2 ranks (dp 1) continues the global order
        # (tests/python/test_global_order.py checks the rows)
        p = run(2, common + ["--steps", "4", "--resume", state])
        check(p.returncode == 0, "a state of dp 2 resumes on dp 1", p.stderr)
        # truncated: refused naming it
        with open(state, "rb") as f:
            blob = f.read()
        cut = os.path.join(tmp, "cut")
        with open(cut, "wb") as f:
            f.write(blob[:-16])
        p = run(4, common + ["--steps", "4", "--resume", cut])
        check(p.returncode != 0 and "CPDL_ESTATE" in p.stderr and "truncated" in p.stderr,
              "a truncated state is refused naming it", p.stderr)
        # another seed / source: CPDL_ECONFIG naming the key
        p = run(4, common + ["--seed", "77", "--steps", "4", "--resume", state])
        check(p.returncode != 0 and "CPDL_ECONFIG" in p.stderr and "seed=77" in p.stderr,
              "a state of another seed is refused naming seed", p.stderr)
        p = run(4, common + ["--source", "synthetic:?mean=41", "--steps", "4", "--resume", state])
        check(p.returncode != 0 and "CPDL_ECONFIG" in p.stderr and "source=" in p.stderr,
              "a state of another source is refused naming source", p.stderr)
        p = run(4, ["--cp", "2", "--seq-len", "128", "--steps", "4", "--resume", state])
        check(p.returncode != 0 and "seq_len=64" in p.stderr and "seq_len=128" in p.stderr,
              "a state of seq_len 64 with seq_len 128 is refused naming both", p.stderr)
        # a checkpoint that cannot be written fails the run on every rank
        bad = os.path.join(tmp, "no", "such", "dir", "st")
        p = run(4, common + ["--steps", "2", "--save-state", bad])
        check(p.returncode != 0, "--save-state into a missing directory exits non-zero",
              "rc %d\n%s" % (p.returncode, p.stderr))
        check("save-state" in p.stderr and bad in p.stderr,
              "--save-state into a missing directory names the file", p.stderr)
        check(not os.path.exists(os.path.dirname(bad)), "nothing created")


if __name__ == "__main__":
    sys.exit(testutil.run([test_matrix, test_refusals]))
