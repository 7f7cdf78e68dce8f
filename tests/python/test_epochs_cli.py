"""test_epochs_cli — `cpdl run` ends where it should, on every replica alike.

1. Token sources with --steps 0 end after --epochs passes (default 1): under
   mpirun with dp 2 and 3, every rank dumps exactly the same steps 0..N-1,
   N > 0, the JSON says N, and two epochs hold more steps than one; --steps
   and --epochs together end at the earlier.
2. npy: step directories step0..step11 come back in numeric order; with dp 2,
   3 batches give every rank 1 step (drop_last=1) or 2 (drop_last=0, wrapping
   to batch 0); 4 batches at dp 2 with drop_last=0 give exactly 2 steps each and
   every batch once; the JSON reports the data's seq_len and batch.
3. CLI details: `run --help` under mpirun exits 0; `sweep --help` exits 0;
   `inspect --limit abc` is an error; a misspelt CPDL_* variable warns with
   the closest key; a flag beats a bad CPDL_* value of its key; a repeated URI
   query key and `npy:` without a path are clear errors; per-node tokens/s is
   at most np x per-rank.
Prints "N passed, M failed" and exits non-zero on any failure.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testutil  # noqa: E402
from datafiles import write_llmc, write_npy_steps  # noqa: E402
from testutil import CPDL, mpi_env, mpirun  # noqa: E402

check = testutil.report


def run(np_, args, env_extra=None, timeout=60):
    """cpdl run in a clean environment: (exit code, its JSON summary, stderr)."""
    try:
        p = testutil.cpdl_run(np_, args, env=mpi_env(env_extra, clean=True), timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, None, "timed out after %ds: %s" % (timeout, " ".join(args))
    summary = None
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            summary = json.loads(line)
    return p.returncode, summary, p.stderr


def cli(args, env_extra=None):
    p = subprocess.run([CPDL] + args, env=mpi_env(env_extra, clean=True), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


def dumped_steps(root):
    """{rank: sorted step numbers} from DIR/step<k>/rank<r>."""
    per_rank = {}
    for step in os.listdir(root):
        for rank in os.listdir(os.path.join(root, step)):
            per_rank.setdefault(int(rank[4:]), []).append(int(step[4:]))
    return {r: sorted(s) for r, s in per_rank.items()}


def llmc_docs(n_docs=40):
    rng = np.random.default_rng(3)
    return [rng.integers(0, 50000, int(rng.integers(1, 60))) for _ in range(n_docs)]


def constant_steps(n, seq=8, rows=1):
    """n steps whose input_ids and labels hold k in step k."""
    return [{name: np.full((rows, seq), k, dtype=np.int64) for name in ("input_ids", "labels")}
            for k in range(n)]


def epoch_runs(tmp):
    llmc = os.path.join(tmp, "shard.bin")
    write_llmc(llmc, llmc_docs())
    sources = ["synthetic:?samples=41&mean=40&max=120", "llmc:" + llmc]
    for source in sources:
        for np_, collate in ((2, "pack"), (3, "pad")):
            counts = {}
            for epochs in (1, 2):
                dump = os.path.join(tmp, "dump")
                shutil.rmtree(dump, ignore_errors=True)
                args = ["--steps", "0", "--seq-len", "32", "--batch", "2", "--collate", collate,
                        "--source", source, "--dump", dump]
                if epochs != 1:
                    args += ["--epochs", str(epochs)]
                rc, summary, err = run(np_, args)
                what = "%s %s np=%d epochs=%d" % (source, collate, np_, epochs)
                check(rc == 0, "%s: exit %s: %s" % (what, rc, err))
                if rc != 0:
                    continue
                steps = dumped_steps(dump)
                n = len(steps.get(0, []))
                check(n > 0, "%s: no steps" % what)
                check(sorted(steps) == list(range(np_)), "%s: ranks %s" % (what, sorted(steps)))
                for r, s in steps.items():
                    check(s == list(range(n)), "%s: rank %d got steps %s, rank 0 %d" % (what, r, s, n))
                check(summary and summary["steps"] == n,
                      "%s: JSON steps %s, dumped %d" % (what, summary and summary["steps"], n))
                counts[epochs] = n
            if len(counts) == 2 and np_ == 2:
                check(counts[2] > counts[1], "%s %s np=%d: 2 epochs %d steps, 1 epoch %d" %
                      (source, collate, np_, counts[2], counts[1]))
                # both set: the earlier end wins
                for steps, want in ((10 ** 6, counts[1]),):
                    rc, summary, err = run(np_, ["--steps", str(steps), "--epochs", "1",
                                                 "--seq-len", "32", "--batch", "2",
                                                 "--collate", collate, "--source", source])
                    check(rc == 0 and summary["steps"] == want,
                          "%s --steps %d --epochs 1: %s %s" % (source, steps, summary, err))


def npy_runs(tmp):
    twelve = os.path.join(tmp, "twelve")
    write_npy_steps(twelve, constant_steps(12))
    dump = os.path.join(tmp, "dump12")
    rc, summary, err = run(1, ["--steps", "0", "--source", "npy:" + twelve, "--dump", dump])
    check(rc == 0, "npy 12 steps: %s" % err)
    if rc == 0:
        got = [int(np.load(os.path.join(dump, "step%d" % k, "rank0", "input_ids.npy"))[0, 0])
               for k in range(12)]
        check(got == list(range(12)), "npy order: %s" % got)
        check(summary["seq_len"] == 8 and summary["batch"] == 1,
              "npy JSON reports the data's shape: %s" % summary)

    three = os.path.join(tmp, "three")
    write_npy_steps(three, constant_steps(3))
    for drop_last, want in ((1, {0: [0], 1: [1]}), (0, {0: [0, 2], 1: [1, 0]})):
        dump = os.path.join(tmp, "dump3_%d" % drop_last)
        rc, summary, err = run(2, ["--steps", "0", "--drop-last", str(drop_last),
                                   "--source", "npy:" + three, "--dump", dump])
        check(rc == 0, "npy dp=2 drop_last=%d: %s" % (drop_last, err))
        if rc != 0:
            continue
        steps = dumped_steps(dump)
        got = {r: [int(np.load(os.path.join(dump, "step%d" % k, "rank%d" % r,
                                            "input_ids.npy"))[0, 0]) for k in s]
               for r, s in steps.items()}
        check(got == want, "npy dp=2 drop_last=%d: batches per rank %s, want %s" %
              (drop_last, got, want))
        check(summary["steps"] == len(want[0]), "npy JSON steps %s" % summary["steps"])

    # n % dp == 0 with drop_last=0: nothing wraps, exactly n/dp steps per replica, and the
    # pass delivers every batch once (whichever replica gets which)
    four = os.path.join(tmp, "four")
    write_npy_steps(four, constant_steps(4))
    dump = os.path.join(tmp, "dump4_0")
    rc, summary, err = run(2, ["--steps", "0", "--drop-last", "0", "--source", "npy:" + four,
                               "--dump", dump])
    check(rc == 0, "npy 4 batches dp=2 drop_last=0: %s" % err)
    if rc == 0:
        steps = dumped_steps(dump)
        got = {r: [int(np.load(os.path.join(dump, "step%d" % k, "rank%d" % r,
                                            "input_ids.npy"))[0, 0]) for k in s]
               for r, s in steps.items()}
        check(sorted(got) == [0, 1] and all(len(v) == 2 for v in got.values())
              and sorted(got[0] + got[1]) == [0, 1, 2, 3] and summary["steps"] == 2,
              "npy 4 batches dp=2 drop_last=0: batches per rank %s (steps %s), want 2 each, "
              "every batch once" % (got, summary["steps"]))


def cli_details(tmp):
    p = subprocess.run(mpirun(2, [CPDL, "run", "--help"]), env=mpi_env(clean=True),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    check(p.returncode == 0 and "--epochs" in p.stdout,
          "mpirun cpdl run --help: exit %d: %s" % (p.returncode, p.stderr[-400:]))
    rc, out, err = cli(["sweep", "--help"])
    check(rc == 0 and "usage" in out, "sweep --help: exit %d" % rc)
    rc, out, err = cli(["inspect", "synthetic:?samples=5", "--limit", "abc"])
    check(rc == 2 and "--limit" in err and "abc" in err, "inspect --limit abc: exit %d %s" % (rc, err))
    base = ["--steps", "2", "--seq-len", "64"]
    rc, summary, err = run(1, base, {"CPDL_SEQLEN": "128"})
    check(rc == 0 and "CPDL_SEQLEN" in err and "CPDL_SEQ_LEN" in err,
          "misspelt CPDL_SEQLEN: exit %s, stderr %r" % (rc, err))
    rc, summary, err = run(1, base, {"CPDL_SEQ_LEN": "abc"})
    check(rc == 0 and summary and summary["seq_len"] == 64,
          "--seq-len beats CPDL_SEQ_LEN=abc: exit %s %s" % (rc, err))
    rc, summary, err = run(1, ["--steps", "2"], {"CPDL_SEQ_LEN": "abc"})
    check(rc == 2 and "CPDL_SEQ_LEN" in err, "CPDL_SEQ_LEN=abc alone is an error: %s" % rc)
    rc, summary, err = run(1, ["--source", "synthetic:?seed=1&seed=2"] + base)
    check(rc != 0 and "'seed'" in err and "more than once" in err, "repeated key: %s" % err)
    rc, summary, err = run(1, ["--source", "npy:"] + base)
    check(rc != 0 and "no directory given" in err, "npy: without a path: %s" % err)
    rc, summary, err = run(2, ["--steps", "20", "--seq-len", "256"])
    check(rc == 0 and summary["tokens_per_s_per_node"] <=
          summary["np"] * summary["tokens_per_s_per_rank"] * 1.0001 and
          summary["tokens_per_s_slowest_rank"] <= summary["tokens_per_s_per_rank"] * 1.0001,
          "rates consistent: %s" % summary)


def main():
    tmp = tempfile.mkdtemp(prefix="cpdl-epochs-")
    try:
        epoch_runs(tmp)
        npy_runs(tmp)
        cli_details(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(testutil.summary())


if __name__ == "__main__":
    main()
