"""python.fork.np2 — a process forked after cpdl.Loader opened owns nothing of it (R24).

Under mpirun -np 2, every rank opens a Loader, takes two steps, then forks:
  exit: the child calls sys.exit(0) (cpdl's atexit handler runs in it);
  fall: the child returns out of main and the interpreter ends normally;
  use: the child calls next(), state_dict() and the C library's cpdl_loader_next /
    cpdl_batch_release / cpdl_loader_state_save directly: each fails with CPDL_ESTATE
    naming the fork; cpdl_loader_close in the child returns 0 and touches nothing;
  mp: a multiprocessing (fork) child tries next() and exits.
Each child must end within 30 s (no hang in a collective). The parent then takes every
remaining step and closes normally: no "left", no CPDL_EPEER, every step delivered.
"""
import ctypes
import multiprocessing
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testutil  # noqa: E402
from testutil import report  # noqa: E402

import cpdl  # noqa: E402
from cpdl import _ffi  # noqa: E402

STEPS = 12


def wait_child(pid, what, timeout=30.0):
    """The child's exit status, or None after killing it past the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    report(False, what + ": the child ended within %.0f s" % timeout, "killed it")
    return None


def child_use(loader):
    """In the child: every use fails naming the fork; exit status 0 if so."""
    bad = []
    for what, call in (("next", lambda: next(loader)), ("state_dict", loader.state_dict)):
        try:
            call()
            bad.append(what + " did not raise")
        except cpdl.Error as exc:
            if "fork" not in str(exc):
                bad.append("%s: %s" % (what, exc))
    lib = _ffi.full()
    handle = loader._handle
    rc = lib.cpdl_loader_next(handle, ctypes.byref(_ffi.CBatch()))
    if rc != _ffi.ESTATE or b"fork" not in lib.cpdl_last_error():
        bad.append("C next: %d %s" % (rc, lib.cpdl_last_error()))
    rc = lib.cpdl_batch_release(handle, ctypes.byref(_ffi.CBatch()))
    if rc != _ffi.ESTATE or b"fork" not in lib.cpdl_last_error():
        bad.append("C release: %d %s" % (rc, lib.cpdl_last_error()))
    buf = ctypes.create_string_buffer(1 << 16)
    used = ctypes.c_size_t(0)
    rc = lib.cpdl_loader_state_save(handle, buf, len(buf), ctypes.byref(used))
    if rc != _ffi.ESTATE or b"fork" not in lib.cpdl_last_error():
        bad.append("C state_save: %d %s" % (rc, lib.cpdl_last_error()))
    rc = lib.cpdl_loader_close(handle)  # local in a child: 0, no collective, no departure
    if rc != 0:
        bad.append("C close: %d %s" % (rc, lib.cpdl_last_error()))
    loader._handle = None  # closed above (Loader.close in a child does the same)
    if bad:
        print("child:", "; ".join(bad), flush=True)
    return 0 if not bad else 1


def mp_child(loader, queue):
    try:
        next(loader)
        queue.put("next did not raise")
    except cpdl.Error as exc:
        queue.put("ok" if "fork" in str(exc) else str(exc))


def main():
    # one group of both ranks (cp 2): whatever a child did to the ring would reach the peer
    loader = cpdl.Loader(source="synthetic:?samples=500", seq_len=64, batch=2, steps=STEPS,
                         cp=2, timeout_ms=20000)
    rank = loader.mesh.world_rank
    taken = [next(loader).step for _ in range(2)]

    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # atexit runs here: it must leave the parent's loader alone
    code = wait_child(pid, "exit")
    report(code == 0, "rank %d: child's sys.exit(0)" % rank, "exit %s" % code)

    pid = os.fork()
    if pid == 0:
        return "child"  # falls off the end of the script
    code = wait_child(pid, "fall")
    report(code == 0, "rank %d: child falling off the end" % rank, "exit %s" % code)

    taken.append(next(loader).step)
    pid = os.fork()
    if pid == 0:
        os._exit(child_use(loader))
    code = wait_child(pid, "use")
    report(code == 0, "rank %d: using the loader in a child fails naming the fork" % rank,
           "exit %s" % code)

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=mp_child, args=(loader, queue))
    proc.start()
    proc.join(30)
    alive = proc.is_alive()
    if alive:
        proc.kill()
        proc.join()
    report(not alive and proc.exitcode == 0, "rank %d: multiprocessing child ended" % rank,
           "exitcode %s" % proc.exitcode)
    report(not alive and queue.get(timeout=5) == "ok",
           "rank %d: multiprocessing child's next() names the fork" % rank)

    try:
        for batch in loader:
            taken.append(batch.step)
        loader.close()
    except cpdl.Error as exc:
        report(False, "rank %d: the parent carries on after its children" % rank, str(exc))
    report(taken == list(range(STEPS)), "rank %d: every step delivered to the parent" % rank,
           str(taken))
    return "parent"


if __name__ == "__main__":
    if main() == "child":
        sys.exit(0)  # the child's interpreter ends normally (atexit runs)
    sys.exit(testutil.summary())
