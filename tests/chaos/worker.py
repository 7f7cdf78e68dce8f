"""worker — one rank of a chaos job run through the Python binding (cpdl.Loader).

Run by tests/chaos/run under mpirun: `python3 worker.py SPEC.json`. The spec
(written by the harness) holds the configuration text, the steps this leg
delivers, an optional resume state to load and step to save at, and the
fault to inject on this rank (or none). Every rank dumps each step's view as
DUMP/step<k>/rank<r>/<field>.npy (the layout of `cpdl run --dump`) and logs
events, one JSON object a line, to OUT/rank<r>.jsonl: start (pid), step,
fault (what and when), error (cpdl.Error: where, message, wall time), end.
Exit status: 0 after a normal end (or a deliberate close out of turn), 3 after
a cpdl.Error, 1 when the injected exception escapes (the interpreter exits
through cpdl's atexit close, as a trainer's bug would), 4 when the harness's
own assumptions fail (a forked child that did not exit).
"""
import json
import os
import signal
import sys
import time

import numpy as np

import cpdl

RANK = int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))


class Log:
    def __init__(self, path):
        self.f = open(path, "w", buffering=1)

    def __call__(self, ev, **kw):
        kw["ev"] = ev
        kw.setdefault("t", time.time())
        self.f.write(json.dumps(kw) + "\n")
        self.f.flush()


def dump(root, step, batch):
    """Into a .tmp directory renamed when complete: a rank killed while it
    writes leaves no step that looks delivered."""
    d = os.path.join(root, "step%d" % step, "rank%d" % RANK)
    tmp = d + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    for name in batch:
        np.save(os.path.join(tmp, name + ".npy"), np.asarray(batch[name]))
    os.rename(tmp, d)


def fork_and_exit(log, loader, variant):
    """A process forked while the loader is open exits normally (as a
    DataLoader worker or a subprocess helper does); with variant "use" it
    first calls next() on the inherited loader, which must fail clearly.
    The parent waits at most 20 s: a child that does not exit is a hang."""
    report = os.path.join(os.path.dirname(log.f.name), "fork%d.txt" % RANK)
    pid = os.fork()
    if pid == 0:
        if variant == "use":
            try:
                next(loader)
                text = "next() in the child returned a batch"
            except cpdl.Error as exc:
                text = "error %s" % exc
            except BaseException as exc:  # noqa: BLE001 — whatever it is, report it
                text = "other %r" % exc
            with open(report, "w") as f:
                f.write(text)
        sys.exit(0)  # the normal exit: atexit handlers run in the child
    deadline = time.time() + 20
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            log("fork_child", status=status, report=open(report).read() if os.path.exists(report)
                else None)
            return
        time.sleep(0.02)
    log("fork_hang", pid=pid)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    sys.exit(4)


def inject(log, loader, fault):
    kind, variant = fault["kind"], fault.get("variant", "")
    log("fault", kind=kind, variant=variant, step=fault["step"])
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)  # the harness continues us after the timeout
        log("continued")
    elif kind == "exception":
        raise RuntimeError("chaos: an exception on rank %d at step %d" % (RANK, fault["step"]))
    elif kind == "close":
        try:
            loader.close()
            log("closed", rc=0)
        except cpdl.Error as exc:
            log("closed", rc=exc.code, msg=str(exc))
        sys.exit(0)
    elif kind == "fork":
        fork_and_exit(log, loader, variant)


def main():
    spec = json.load(open(sys.argv[1]))
    log = Log(os.path.join(spec["out"], "rank%d.jsonl" % RANK))
    log("start", pid=os.getpid())
    fault = spec.get("fault") if spec.get("fault", {}).get("rank") == RANK else None
    ckpt_fault = spec.get("fault") if spec.get("fault", {}).get("kind") == "ckpt_leave" else None
    where = "open"
    loader = None
    try:
        loader = cpdl.Loader(spec["config"])
        if spec.get("resume"):
            where = "load_state_dict"
            loader.load_state_dict(json.load(open(spec["resume"])))
        where = "next"
        for batch in loader:
            step = batch.step
            dump(spec["dump"], step, batch)
            log("step", step=step)
            if ckpt_fault and ckpt_fault["step"] == step:
                if RANK == ckpt_fault["rank"]:
                    variant = ckpt_fault["variant"]
                    log("fault", kind="ckpt_leave", variant=variant, step=step)
                    if variant == "kill":
                        os.kill(os.getpid(), signal.SIGKILL)
                    if variant == "close":
                        try:
                            loader.close()
                            log("closed", rc=0)
                        except cpdl.Error as exc:
                            log("closed", rc=exc.code, msg=str(exc))
                        sys.exit(0)
                    raise RuntimeError("chaos: rank %d leaves during the checkpoint at step %d"
                                       % (RANK, step))
                where = "state_dict"
                loader.state_dict()
                where = "next"
            elif fault and fault["step"] == step and fault["kind"] != "ckpt_leave":
                inject(log, loader, fault)
            if step in spec.get("checkpoints", []):
                where = "state_dict"
                state = loader.state_dict()
                where = "next"
            if spec.get("save_at") is not None and step + 1 == spec["save_at"]:
                where = "state_dict"
                state = loader.state_dict()
                if RANK == 0:
                    tmp = spec["save"] + ".tmp"
                    with open(tmp, "w") as f:
                        json.dump(state, f)
                    os.rename(tmp, spec["save"])
                log("saved", step=state["step"])
                break
        where = "close"
        loader.close()
    except cpdl.Error as exc:
        log("error", where=where, msg=str(exc))
        if loader is not None:
            try:
                loader.close()
            except cpdl.Error as exc2:
                log("close_error", msg=str(exc2))
        sys.exit(3)
    log("end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
