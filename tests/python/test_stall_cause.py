"""python.stall_cause — a rank stopped past timeout_ms, once continued, blames nobody else.

One group of 3 ranks (cp 3, slots 2, timeout_ms 2000); after 1 s the test SIGSTOPs rank
STOPPED (2: a consumer; 0: the leader), waits 5 s (past the timeout) and sends SIGCONT.
  cli: `mpirun -np 3 cpdl run --timeout-ms 2000`: the job fails within 60 s (no hang); every
    rank that reports names the stopped rank as stalled and no other (the ranks that gave
    up exit without collectives, so mpirun may end the others before they report);
  library (Python, each rank keeps running until all three have reported; they end without
    MPI_Finalize, as after any verdict on a rank, so only the ending is checked): every rank's
    error — the stopped rank's too, once continued — names the stopped rank as stalled, no
    other rank, and nobody as "left" or "died".
Each rank's pid comes from a wrapper that writes it before exec'ing cpdl (or python).
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testutil  # noqa: E402
from testutil import CPDL, mpi_env, mpirun, report  # noqa: E402


def mapped_segment(pid):
    try:
        with open("/proc/%d/maps" % pid) as f:
            return "/dev/shm/cpdl-" in f.read()
    except OSError:
        return False


def stall(stopped, tmp, library):
    pids = os.path.join(tmp, "pids%d%s" % (stopped, "lib" if library else ""))
    os.makedirs(pids)
    wrapper = 'echo $$ > %s/$OMPI_COMM_WORLD_RANK; exec "$0" "$@"' % pids
    if library:
        argv = ["/usr/bin/python3", os.path.abspath(__file__), "--worker", pids]
    else:
        argv = [CPDL, "run", "--quiet", "--cp", "3", "--seq-len", "64", "--steps", "100000000",
                "--slots", "2", "--timeout-ms", "2000", "--source", "synthetic:?samples=1000"]
    p = subprocess.Popen(mpirun(3, ["sh", "-c", wrapper] + argv), env=mpi_env(clean=True),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    label = "%s, rank %d stopped" % ("library" if library else "cli", stopped)
    try:
        deadline = time.monotonic() + 60
        while len(os.listdir(pids)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        pid = int(open(os.path.join(pids, str(stopped))).read())
        while not mapped_segment(pid) and time.monotonic() < deadline:
            time.sleep(0.1)  # the loader is open once its segment is mapped
        time.sleep(1.0)  # running
        os.kill(pid, signal.SIGSTOP)
        time.sleep(5.0)  # past --timeout-ms 2000
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass  # cli: mpirun ended the stopped rank with the job
        out, _ = p.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        report(False, label + ": the job ended", "hung; output: " + out[-2000:])
        return
    errors = {}
    if library:
        # (the workers exit without MPI_Finalize after a verdict on a rank, which may never
        # come back: mpirun's exit status says "improperly"; that they ended is the check)
        for rank in range(3):
            path = os.path.join(pids, "error%d" % rank)
            if os.path.exists(path):
                errors[rank] = open(path).read()
        report(sorted(errors) == [0, 1, 2], label + ": every rank's next() failed",
               "ranks %s; output: %s" % (sorted(errors), out[-3000:]))
    else:
        report(p.returncode != 0, label + ": the job fails", "exit %d" % p.returncode)
        for line in out.splitlines():
            m = re.match(r"cpdl run: rank (\d+): next: (.*)", line)
            if m:
                errors.setdefault(int(m.group(1)), m.group(2))
        # a rank that gave up exits at once and mpirun then ends the others, so under load
        # only the first may get to print: every line printed is checked below
        report(len(errors) >= 1, label + ": the ranks report next()'s error",
               "ranks %s; output: %s" % (sorted(errors), out[-3000:]))
    for rank, msg in sorted(errors.items()):
        named = [int(r) for r in re.findall(r"rank (\d+) \(group rank \d+, pid \d+\) has not "
                                            r"released", msg)]
        named += [int(r) for r in re.findall(r"the leader is stalled or slow \(rank (\d+)", msg)]
        report(named and set(named) == {stopped} and "stalled" in msg,
               label + ": rank %d names rank %d as stalled" % (rank, stopped), msg)
        report(not re.search(r"\bleft the job\b|\bdied\b", msg),
               label + ": rank %d blames no departure or death" % rank, msg)


def worker(pids):
    """One rank of the library case: iterate until an error; report it; wait for the others."""
    import cpdl
    loader = cpdl.Loader(source="synthetic:?samples=1000", cp=3, seq_len=64, steps=10 ** 8,
                         slots=2, timeout_ms=2000)
    rank = loader.mesh.world_rank
    msg = "no error"
    try:
        for _ in loader:
            pass
    except cpdl.Error as exc:
        msg = str(exc)
    try:
        loader.close()
    except cpdl.Error:
        pass
    with open(os.path.join(pids, "error%d.tmp" % rank), "w") as f:
        f.write(msg)
    os.rename(os.path.join(pids, "error%d.tmp" % rank), os.path.join(pids, "error%d" % rank))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(
            os.path.exists(os.path.join(pids, "error%d" % r)) for r in range(3)):
        time.sleep(0.1)
    return 0


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        return worker(sys.argv[2])
    tmp = tempfile.mkdtemp(prefix="cpdl-stall-")
    try:
        if not shutil.which(testutil.MPIRUN):
            print("no mpirun")
            return 77
        for library in (False, True):
            for stopped in (2, 0):
                stall(stopped, tmp, library)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return testutil.summary()


if __name__ == "__main__":
    sys.exit(main())
