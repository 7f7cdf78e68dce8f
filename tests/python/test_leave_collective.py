"""test_leave_collective — R25 from Python: a rank leaves while the others are
in state_dict(), over both control planes.

Usage: python3 tests/python/test_leave_collective.py <mpirun>
Three workers of Loader(cp=3) take two steps; then rank 1 leaves — it raises
(the interpreter exits through cpdl's atexit close) or calls close() — while
ranks 0 and 2 are inside state_dict(). Launched by mpirun (the MPI control
plane) and torchrun-style (torch.distributed over gloo; this script is the
launcher, as in test_torchrun). Before, the close's collective matched the
save's: MPI aborted the job with MPI_ERR_TRUNCATE naming nobody, and gloo
killed rank 1 with SIGABRT. Every survivor must now fail with cpdl.Error
CPDL_EPEER naming rank 1 as having left, within 2 s of the leave
(CLOCK_MONOTONIC, printed by the workers); the leaver ends by its own exception
or close error, never by a signal; no segment of the job is left.
Prints "N passed, M failed".
"""
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import testutil  # noqa: E402
from testutil import report  # noqa: E402

LEAVER = 1
LAUNCH_VARS = ("OMPI_", "PMIX_", "PMI_", "SLURM_")


def worker(how, out_dir):
    import cpdl
    loader = cpdl.Loader("source=synthetic: seq_len=4096 steps=1000000 timeout_ms=20000", cp=3)
    rank = loader.mesh.world_rank
    report_file = open(os.path.join(out_dir, "rank%d.txt" % rank), "w", buffering=1)

    def say(line):
        report_file.write(line + "\n")

    say("PID %d %d" % (rank, os.getpid()))
    it = iter(loader)
    for _ in range(2):
        next(it)
    if rank == LEAVER:
        time.sleep(0.5)  # the others are in state_dict() by now
        say("LEAVE %d %.6f" % (rank, time.monotonic()))
        if how == "raise":
            raise RuntimeError("a training bug on rank %d" % rank)
        try:
            loader.close()
        except cpdl.Error as exc:
            say("CLOSED %d %s" % (rank, exc.name))
        sys.exit(4)
    try:
        loader.state_dict()
        say("SAVED %d without an error" % rank)
    except cpdl.Error as exc:
        say("ERROR %d %.6f %s %s" % (rank, time.monotonic(), exc.name,
                                     str(exc).replace("\n", " ")))
        sys.exit(3)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(plane, how, out_dir, mpirun):
    """[(returncode, output)] of the 3 workers (mpirun: one entry for the job)."""
    argv = [sys.executable, os.path.abspath(__file__), "--worker", how, out_dir]
    if plane == "mpi":
        try:
            p = subprocess.run(testutil.mpirun(3, argv), env=testutil.mpi_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               timeout=90)
            return [(p.returncode, p.stdout)]
        except subprocess.TimeoutExpired as exc:
            return [(None, str(exc.stdout))]
    port = free_port()
    procs = []
    for rank in range(3):
        env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCH_VARS)}
        env.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "3",
                    "LOCAL_WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(port), "TORCHELASTIC_RUN_ID": "cpdl-test",
                    "OMP_NUM_THREADS": "1"})
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            out += "\n(timed out)"
            p.returncode = None
        outputs.append((p.returncode, out))
    return outputs


def check(plane, how, mpirun):
    label = "%s/%s" % (plane, how)
    out_dir = tempfile.mkdtemp(prefix="cpdl-test-leavecoll-")
    outputs = launch(plane, how, out_dir, mpirun)
    text = ""
    for name in sorted(os.listdir(out_dir)):
        with open(os.path.join(out_dir, name)) as f:
            text += f.read()
        os.unlink(os.path.join(out_dir, name))
    os.rmdir(out_dir)
    job = "\n".join(out for _, out in outputs)
    report(all(rc is not None for rc, _ in outputs), "%s: no hang" % label, job[-3000:])
    report("MPI_ERR_TRUNCATE" not in job, "%s: no MPI_ERR_TRUNCATE" % label, job[-3000:])
    if plane == "torch":
        for rank, (rc, out) in enumerate(outputs):
            report(rc is not None and rc > 0, "%s: rank %d exits with an error code, not a "
                   "signal" % (label, rank), "rc %s: %s" % (rc, out[-1500:]))
    leaves = [float(m.group(1)) for m in re.finditer(r"^LEAVE %d (\S+)" % LEAVER, text, re.M)]
    errors = {int(m.group(1)): (float(m.group(2)), m.group(3), m.group(4))
              for m in re.finditer(r"^ERROR (\d+) (\S+) (\S+) (.*)$", text, re.M)}
    report(len(leaves) == 1, "%s: rank %d left once" % (label, LEAVER), text + job[-2000:])
    report(sorted(errors) == [0, 2], "%s: ranks 0 and 2 failed in state_dict()" % label,
           "%s\n%s" % (text, job[-3000:]))
    for rank, (t, name, msg) in sorted(errors.items()):
        report(name == "CPDL_EPEER" and "rank %d " % LEAVER in msg and "left" in msg,
               "%s: rank %d's error is CPDL_EPEER naming rank %d as having left"
               % (label, rank, LEAVER), "%s %s" % (name, msg))
        if leaves:
            report(t - leaves[0] < 2.0, "%s: rank %d failed within 2 s" % (label, rank),
                   "%.2f s" % (t - leaves[0]))
            print("%s: rank %d failed %.3f s after the leave: %s" % (label, rank,
                                                                   t - leaves[0], msg))
    pids = [int(m.group(1)) for m in re.finditer(r"^PID \d+ (\d+)", text, re.M)]
    time.sleep(0.2)
    left = [n for n in os.listdir("/dev/shm") if n.startswith("cpdl-") and
            any("-%d-" % pid in n for pid in pids)]
    report(not left, "%s: no segment of the job left" % label, str(left))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
        return 0
    mpirun = sys.argv[1] if len(sys.argv) > 1 else testutil.MPIRUN
    testutil.MPIRUN = mpirun
    for plane in ("mpi", "torch"):
        for how in ("close", "raise"):
            check(plane, how, mpirun)
    return testutil.summary()


if __name__ == "__main__":
    sys.exit(main())
