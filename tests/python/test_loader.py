"""test_loader — cpdl.Loader under mpirun (every rank checks; verdicts are combined).

Usage: mpirun -np 4 /usr/bin/python3 tests/python/test_loader.py --cp 4 [--tp 1]
Covers: ctypes ABI of the loader structs against the C compiler; MPI started by
cpdl itself (the first Loader comes before mpi4py is imported); zero-copy views
(owndata False, not writeable, inside this rank's region) and torch tensors
sharing their memory; values: the replica's shards, gathered in CP order, form
a packed stream (labels[t] == input_ids[t+1], positions restart at each
document, the contract's padding on the tail) and every rank's view equals
cpdl.shard_batch of the unpadded batch rebuilt from them; TP peers see equal
data; exact resume through state_dict/load_state_dict; released batches;
errors carrying the C message; pin=True without CUDA warning once; a Loader
on an mpi4py communicator; cpdl.Source. Prints "N passed, M failed" (all ranks' sums).
"""
import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
import traceback
import warnings
import weakref

import numpy as np

from datafiles import write_llmc

import cpdl
from cpdl import _dlpack, _ffi
from cpdl import loader as cl

parser = argparse.ArgumentParser()
parser.add_argument("--cp", type=int, default=4)
parser.add_argument("--tp", type=int, default=1)
args = parser.parse_args()

SEQ_LEN = 61  # not a multiple of 2*cp: the tail is padded
BATCH = 2
PAD = 7
CONFIG = dict(seq_len=SEQ_LEN, batch=BATCH, steps=8, padding_token_id=PAD,
              source="synthetic:?seed=5&vocab=500", cp=args.cp, tp=args.tp, timeout_ms=30000)

passed = 0
failed = 0
rank = -1


def report(ok, what, detail=""):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print("FAIL [rank %d] %s %s" % (rank, what, detail), flush=True)


# ---- first Loader: MPI is not initialized yet --------------------------------

def mpi_initialized():
    flag = ctypes.c_int(0)
    cl._mpi_lib().MPI_Initialized(ctypes.byref(flag))
    return bool(flag.value)


was_initialized = mpi_initialized()
first = cpdl.Loader(**CONFIG)
rank = first.mesh.world_rank
report(not was_initialized and mpi_initialized() and cl._we_initialized_mpi,
       "Loader initialized MPI itself")

from mpi4py import MPI  # noqa: E402  (after: mpi4py must find MPI initialized)

comm = MPI.COMM_WORLD


def test_abi():
    if rank != 0:
        return
    structs = {name: _ffi.STRUCTS[name] for name in ("cpdl_config_t", "cpdl_mesh_coords_t",
                                                     "cpdl_view_field_t", "cpdl_batch_t")}
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "cpdl.h"',
             'int main(void) {']
    for cname, py in structs.items():
        lines.append('printf("%s %%zu\\n", sizeof(%s));' % (cname, cname))
        for fname, _ in py._fields_:
            lines.append('printf("%s.%s %%zu\\n", offsetof(%s, %s));'
                         % (cname, fname, cname, fname))
    lines.append("return 0; }")
    include = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(cpdl.__file__)))), "include")
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "abi.c"), os.path.join(tmp, "abi")
        with open(src, "w") as f:
            f.write("\n".join(lines))
        subprocess.run(["mpicc", "-I", include, src, "-o", exe], check=True,
                       capture_output=True, timeout=120)
        out = subprocess.run([exe], check=True, capture_output=True, text=True).stdout
    c = dict(line.split() for line in out.splitlines())
    for cname, py in structs.items():
        report(int(c[cname]) == ctypes.sizeof(py), "sizeof %s" % cname,
               "C %s ctypes %d" % (c[cname], ctypes.sizeof(py)))
        for fname, _ in py._fields_:
            off = int(c["%s.%s" % (cname, fname)])
            report(off == getattr(py, fname).offset, "offsetof %s.%s" % (cname, fname),
                   "C %d ctypes %d" % (off, getattr(py, fname).offset))


def check_views(batch):
    for name in batch:
        a = batch[name]
        inside = batch.region <= a.ctypes.data and \
            a.ctypes.data + a.nbytes <= batch.region + batch.region_bytes
        report(not a.flags.owndata and not a.flags.writeable and inside,
               "view of %s" % name, "owndata %s writeable %s inside %s"
               % (a.flags.owndata, a.flags.writeable, inside))
        try:
            a.flags.writeable = True
            report(False, "cannot make %s writeable" % name)
        except ValueError:
            report(True, "cannot make %s writeable" % name)
    tensors = batch.torch()
    for name, t in tensors.items():
        a = batch[name]
        report(t.data_ptr() == a.ctypes.data and tuple(t.shape) == a.shape
               and np.array_equal(t.numpy() if str(t.dtype) != "torch.bfloat16" else a, a),
               "torch %s shares memory" % name)


def check_values(batch, mesh):
    """The replica's shards in CP order form the contract's padded batch."""
    mine = batch.copy()
    everyone = comm.allgather((mesh, mine))
    peers = sorted([(m.cp_rank, m.tp_rank, d) for m, d in everyone
                    if m.dp_rank == mesh.dp_rank], key=lambda x: (x[0], x[1]))
    for cp_rank, tp_rank, d in peers:  # TP peers of my CP rank hold what I hold
        if cp_rank == mesh.cp_rank and tp_rank != mesh.tp_rank:
            report(all(np.array_equal(d[k], mine[k]) for k in mine), "TP peer equal")
    shards = [d for cp_rank, tp_rank, d in peers if tp_rank == 0]
    report(len(shards) == mesh.cp_size, "one shard per cp rank")
    full = {k: np.concatenate([s[k] for s in shards], axis=1) for k in mine}
    padded = full["input_ids"].shape[1]
    report(padded % (2 * mesh.cp_size) == 0 and padded - SEQ_LEN < 2 * mesh.cp_size
           and full["input_ids"].shape[0] == BATCH, "padded length", padded)
    S = SEQ_LEN
    ids, labels = full["input_ids"], full["labels"]
    pos, seq = full["position_ids"], full["_packed_seq_ids"]
    # Packed windows: labels are the inputs shifted by one.
    report(np.array_equal(labels[:, :S - 1], ids[:, 1:S]), "labels[t] == input_ids[t+1]")
    # Documents: 1-based ordinals, non-decreasing by steps of 0 or 1; positions
    # restart at 0 where the ordinal changes and count up otherwise.
    step = np.diff(seq[:, :S], axis=1)
    report(seq[:, 0].min() >= 1 and step.min() >= 0 and step.max() <= 1, "document ordinals",
           seq[:, :S])
    restart = np.concatenate([np.ones((BATCH, 1), bool), step == 1], axis=1)
    expect = np.zeros_like(pos[:, :S])
    for b in range(BATCH):
        expect[b, 0] = pos[b, 0]  # a window may start inside a document
        for t in range(1, S):
            expect[b, t] = 0 if restart[b, t] else expect[b, t - 1] + 1
    report(np.array_equal(pos[:, :S], expect), "positions restart per document")
    # The contract's padding on the tail.
    tail = slice(S, padded)
    report((ids[:, tail] == PAD).all() and (labels[:, tail] == -100).all()
           and (seq[:, tail] == 0).all(), "pad values on the tail")
    report(np.array_equal(pos[:, tail], pos[:, S - 1:S] + np.arange(1, padded - S + 1)),
           "positions continue on the tail")
    # Every rank's view equals the pure preparation of the rebuilt batch.
    unpadded = {k: v[:, :S] for k, v in full.items()}
    want = cpdl.shard_batch(unpadded, mesh.cp_size, mesh.cp_rank, tp_size=mesh.tp_size,
                            padding_token_id=PAD)
    report(set(want) == set(mine) and all(np.array_equal(want[k], mine[k]) for k in want),
           "view == shard_batch(rebuilt batch)", sorted(want))


def test_iterate():
    mesh = first.mesh
    report(mesh.cp_size == args.cp and mesh.tp_size == args.tp
           and mesh.dp_size == comm.size // (args.cp * args.tp), "mesh", mesh)
    steps = []
    previous = None
    for batch in first:
        report(batch.mesh == mesh and batch.step == len(steps), "step/mesh", batch.step)
        if previous is not None:
            report(previous.released, "next() released the previous batch")
        check_views(batch)
        check_values(batch, mesh)
        steps.append(batch.step)
        previous = batch
    report(steps == list(range(8)), "8 steps then StopIteration", steps)
    report(previous.released, "StopIteration released the last batch")
    try:
        next(first)
        report(False, "next after the end")
    except StopIteration:
        report(True, "next after the end")
    first.close()
    first.close()  # idempotent
    report(True, "close twice")


def test_release():
    with cpdl.Loader(**CONFIG) as loader:
        batch = next(loader)
        ids = batch["input_ids"]
        keep = np.array(ids)
        base = ids
        while isinstance(base, np.ndarray):
            base = base.base
        report(isinstance(base, memoryview) and base.readonly
               and base.obj.cpdl_batch is batch, "base chain ends at the batch")
        tensor = batch.torch()["input_ids"]
        batch.release()
        batch.release()  # harmless
        report(batch.released, "released flag")
        for what, call, call_args in (("batch[name]", batch.__getitem__, ("input_ids",)),
                                      ("torch()", batch.torch, ()),
                                      ("copy()", batch.copy, ())):
            try:
                call(*call_args)
                report(False, "%s after release raises" % what)
            except cpdl.Error as exc:
                report("released" in str(exc), "%s after release raises" % what, str(exc))
        report("input_ids" in batch and len(batch) >= 4, "names still listed after release")
        # The tensor keeps the Batch object (not the slot: the leader may
        # already have refilled it with a later step) until torch frees it.
        alive = weakref.ref(batch)
        exported = _dlpack.live_count()
        del batch, ids, base, call  # call: a bound method of the batch
        gc.collect()
        report(alive() is not None and exported >= 1, "tensor keeps its Batch object alive")
        report(tensor.data_ptr() != 0 and keep.shape == tuple(tensor.shape), "tensor intact")
        del tensor
        gc.collect()
        report(alive() is None and _dlpack.live_count() == exported - 1,
               "Batch object freed with the last tensor", _dlpack.live_count())
        with next(loader) as second:
            report(second.step == 1, "context manager batch")
        report(second.released, "with-block released it")
        third = next(loader)
        report(third.step == 2, "next after the with-block")


def torch_equal(tensor, array):
    return bool((tensor.numpy() == array).all())


def test_view_after_close():
    # Issue 12.8: arrays and tensors taken from a batch stay readable after
    # Loader.close() (no segfault): the mapping lives while a view does,
    # holding the last contents, read-only, still no copy.
    loader = cpdl.Loader(**CONFIG)
    batch = next(loader)
    ids = batch["input_ids"]
    tensor = batch.torch()["input_ids"]
    keep = np.array(ids)
    address = ids.__array_interface__["data"][0]
    loader.close()
    del batch
    gc.collect()
    # close() released the batch first, so the slot may hold a later step
    # (the leader prefetches until it stops): the last contents, then stable.
    after = np.array(ids)
    report(after.shape == keep.shape and after.dtype == keep.dtype,
           "array readable after close")
    report(np.array_equal(np.array(ids), after) and torch_equal(tensor, after),
           "array and tensor hold the same, stable contents after close")
    report(not ids.flags.writeable, "array still read-only after close")
    report(ids.__array_interface__["data"][0] == address, "still the zero-copy view")
    del ids, tensor
    gc.collect()


def run_steps(loader, n):
    return [(b.step, b.copy()) for _, b in zip(range(n), loader)]


def test_resume():
    with cpdl.Loader(**CONFIG) as a:
        got = []
        state = None
        for batch in a:
            got.append((batch.step, batch.copy()))
            if batch.step == 2:
                state = a.state_dict()
            if batch.step == 5:
                break
    report(isinstance(state, dict) and state.get("version") == 3 and state.get("step") == 3,
           "state_dict of a held step 2: version 3, step 3", state)
    # rank 0's dict, through JSON, on every rank (what a trainer's checkpoint does)
    state = json.loads(comm.bcast(json.dumps(state), root=0))
    for bad, what in (({**state, "version": 1}, "a dict of version 1"),
                      ({"version": 1, "words": [3, 0, 0, 0, 3, 0, 0, 0]}, "an old words dict"),
                      ({**state, "version": 2}, "a dict of the old per-replica version 2"),
                      ({**state, "version": 4}, "a dict of version 4")):
        with cpdl.Loader(**CONFIG) as b:
            try:
                b.load_state_dict(bad)
                report(False, "%s refused" % what)
            except cpdl.Error as exc:
                report(exc.name == "CPDL_ESTATE" and "version %d" % bad["version"] in str(exc),
                       "%s refused with CPDL_ESTATE naming its version" % what, str(exc))
    with cpdl.Loader(**CONFIG) as b:
        b.load_state_dict(state)
        again = run_steps(b, 3)
        report([s for s, _ in again] == [3, 4, 5], "resumed steps", [s for s, _ in again])
        same = all(set(x) == set(y) and all(np.array_equal(x[k], y[k]) for k in x)
                   for (_, x), (_, y) in zip(got[3:6], again))
        report(same, "resumed batches equal the first run's")
        try:
            b.load_state_dict(state)
            report(False, "load_state_dict after iterating refused")
        except cpdl.Error as exc:
            report(exc.name == "CPDL_ESTATE", "load_state_dict after iterating refused", str(exc))
    other = dict(CONFIG, seed=99)
    with cpdl.Loader(**other) as c:
        try:
            c.load_state_dict(state)
            report(False, "state of another config refused")
        except cpdl.Error as exc:
            report(exc.name == "CPDL_ECONFIG", "state of another config refused", str(exc))


def test_errors():
    size = comm.size
    bad = 3 if size % 3 else 5
    try:
        cpdl.Loader("seq_len=16 cp=%d" % bad)
        report(False, "cp=%d on %d ranks refused" % (bad, size))
    except cpdl.Error as exc:
        report(exc.name == "CPDL_EMESH" and "cp" in exc.message and exc.message,
               "cp=%d on %d ranks: cpdl.Error with the C message" % (bad, size), str(exc))
    try:
        cpdl.Loader(no_such_key=1)
        report(False, "unknown key refused")
    except cpdl.Error as exc:
        report("no_such_key" in str(exc), "unknown key named", str(exc))


def test_pin_without_cuda():
    from cpdl import _cuda
    if _cuda.available():
        return  # covered on GPU machines by examples/train_loop.py
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            with cpdl.Loader(pin=True, **CONFIG) as loader:
                run_steps(loader, 3)
                report(not loader.pinned, "not pinned without CUDA")
    mine = [w for w in caught if "pin=True" in str(w.message)]
    report(len(mine) == 1, "one warning without CUDA", [str(w.message) for w in mine])


def test_mpi4py_comm():
    # Reversed rank order: the loader's mesh follows the communicator given.
    reversed_comm = comm.Split(0, comm.size - 1 - comm.rank)
    with cpdl.Loader(comm=reversed_comm, **CONFIG) as loader:
        report(loader.mesh.world_rank == comm.size - 1 - comm.rank
               and loader.mesh.world_size == comm.size, "mesh of the given comm", loader.mesh)
        report(len(run_steps(loader, 2)) == 2, "iterate on an mpi4py comm")
    reversed_comm.Free()


def test_source():
    """cpdl.Source: a generated source (copies) and an llm.c shard (views of
    the mapping that stay valid after close)."""
    src = cpdl.Source("synthetic:?seed=5&vocab=500")
    n = len(src)
    a, b = src[0], src[1]
    report(n > 2 and a.ndim == 1 and not a.flags.writeable and a[a != src.eot].max() < 500
           and np.array_equal(src[0], a) and not np.array_equal(a[:8], b[:8]),
           "synthetic samples", (n, a[:8], b[:8]))
    docs = [[1, 2, 3], [9, 9], [4, 5, 6, 7]]
    eot = 50256
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "shard_%d.bin" % rank)
        write_llmc(path, docs, eot)
        src = cpdl.Source("llmc:" + path)
        views = [src[i] for i in range(len(src))]
        want = [np.array([eot] + d, dtype=np.uint16) for d in docs]
        report(len(src) == 3 and all(np.array_equal(v, w) and v.dtype == np.uint16
                                     and not v.flags.owndata and not v.flags.writeable
                                     for v, w in zip(views, want)),
               "llmc samples are read-only views", [v.tolist() for v in views])
        report(np.array_equal(src[-1], want[-1]), "negative index")
        try:
            src[3]
            report(False, "index out of range")
        except IndexError:
            report(True, "index out of range")
        src.close()
        try:
            len(src)
            report(False, "closed source refuses")
        except cpdl.Error as exc:
            report("closed" in str(exc), "closed source refuses", str(exc))
        gc.collect()
        report(all(np.array_equal(v, w) for v, w in zip(views, want)),
               "views outlive close()")
    try:
        cpdl.Source("nosuchscheme:x")
        report(False, "unknown scheme")
    except cpdl.Error as exc:
        report(exc.name == "CPDL_EPLUGIN" and "nosuchscheme" in str(exc), "unknown scheme",
               str(exc))


def main():
    for test in (test_abi, test_iterate, test_release, test_view_after_close, test_resume,
                 test_errors,
                 test_pin_without_cuda, test_mpi4py_comm, test_source):
        try:
            test()
        except Exception:  # noqa: BLE001
            report(False, test.__name__, traceback.format_exc())
    total_passed = comm.allreduce(passed)
    total_failed = comm.allreduce(failed)
    if rank == 0:
        print("%d passed, %d failed" % (total_passed, total_failed), flush=True)
    return 1 if total_failed else 0


if __name__ == "__main__":
    sys.exit(main())
