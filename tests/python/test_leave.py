"""test_leave — R19 from Python: a rank that raises at step 2 and exits.

Usage: python3 tests/python/test_leave.py <mpirun> [--np 3] [--raiser 1]
Runs itself under mpirun as workers: the raiser lets an exception escape at
step 2 (the interpreter exits through cpdl's atexit close); every other rank
must fail with cpdl.Error naming the rank that left within 2 s of the raise
(CLOCK_MONOTONIC timestamps printed by the workers: the time cpdl controls,
not the job's start-up), and no segment created by the job's processes may
remain in /dev/shm. Prints "N passed, M failed".
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import testutil
from testutil import report


def worker(raiser, out_dir):
    import cpdl
    loader = cpdl.Loader("source=synthetic: seq_len=4096 steps=1000000 timeout_ms=20000",
                         cp=int(os.environ["OMPI_COMM_WORLD_SIZE"]))
    rank = loader.mesh.world_rank
    # One file per rank: mpirun's forwarding may join lines of several ranks.
    report_file = open(os.path.join(out_dir, "rank%d.txt" % rank), "w", buffering=1)

    def say(line):
        report_file.write(line + "\n")
        print(line, flush=True)

    say("PID %d %d" % (rank, os.getpid()))
    try:
        for step, batch in enumerate(loader):
            if rank == raiser and step == 2:
                say("RAISE %d %.6f" % (rank, time.monotonic()))
                raise RuntimeError("a training bug on rank %d" % rank)
    except cpdl.Error as exc:
        say("ERROR %d %.6f %s" % (rank, time.monotonic(), str(exc).replace("\n", " ")))
        sys.exit(3)
    say("END %d without an error" % rank)


def driver(mpirun, np_, raiser):
    out_dir = tempfile.mkdtemp(prefix="cpdl-test-leave-")
    cmd = [mpirun, "--oversubscribe", "--bind-to", "none", "-np", str(np_), sys.executable,
           os.path.abspath(__file__), "--worker", "--raiser", str(raiser), "--out", out_dir]
    try:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=90, universal_newlines=True)
        out, rc = done.stdout, done.returncode
    except subprocess.TimeoutExpired as exc:
        out, rc = (exc.stdout or b"").decode(errors="replace"), None
    report(rc is not None, "the job ended (no hang)", out[-3000:])
    job_output, out = out, ""
    for name in sorted(os.listdir(out_dir)):
        with open(os.path.join(out_dir, name)) as f:
            out += f.read()
    shutil.rmtree(out_dir, ignore_errors=True)
    print("--- mpirun output ---\n" + job_output[-3000:])
    report(rc not in (None, 0), "the job failed (a rank raised)", "rc=%s" % rc)
    raises = [float(m.group(1)) for m in re.finditer(r"^RAISE %d (\S+)" % raiser, out, re.M)]
    errors = {int(m.group(1)): (float(m.group(2)), m.group(3))
              for m in re.finditer(r"^ERROR (\d+) (\S+) (.*)$", out, re.M)}
    pids = [int(m.group(1)) for m in re.finditer(r"^PID \d+ (\d+)", out, re.M)]
    report(len(raises) == 1, "rank %d raised once" % raiser, out[-2000:])
    survivors = [r for r in range(np_) if r != raiser]
    report(sorted(errors) == survivors, "every other rank failed with cpdl.Error",
           "got %s; output:\n%s" % (sorted(errors), out[-3000:]))
    for rank, (t, msg) in sorted(errors.items()):
        report("rank %d " % raiser in msg and "left" in msg,
               "rank %d's error names rank %d as the one that left" % (rank, raiser), msg)
        if raises:
            report(t - raises[0] < 2.0, "rank %d failed within 2 s of the raise" % rank,
                   "%.2f s" % (t - raises[0]))
            print("rank %d failed %.3f s after the raise" % (rank, t - raises[0]))
    report(len(pids) == np_, "every worker printed its pid", out[-2000:])
    uid = os.getuid()
    left = [n for n in os.listdir("/dev/shm")
            if any(n.startswith("cpdl-%d-%d-" % (uid, pid)) for pid in pids)]
    report(not left, "no segment of this job left in /dev/shm", str(left))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mpirun", nargs="?")
    parser.add_argument("--np", type=int, default=3)
    parser.add_argument("--raiser", type=int, default=1)
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.worker:
        worker(args.raiser, args.out)
        return 0
    return testutil.run([lambda: driver(args.mpirun, args.np, args.raiser)])


if __name__ == "__main__":
    sys.exit(main())
