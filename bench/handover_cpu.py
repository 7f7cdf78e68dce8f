"""handover_cpu — what NativeFeed.next() costs per step, part by part, without a GPU.

The C copy thread (src/device.c) runs on the tests' stand-in CUDA driver
(tests/mpi/fake_cuda.c, whose "device memory" is host memory), so the tensors
are CPU tensors; the Python, ctypes and DLPack work of next() is the same kind
of work as on a GPU. Between two next() calls the process does a "training
step" of --step-ms (a busy spin, as a thread waiting on .item() or an MPI
barrier does; --sleep sleeps instead), so next() runs with caches as a
training loop leaves them, not in a tight loop.
Variants, interleaved in rounds (the same loader config each time):
  after   NativeFeed.next as shipped: one ctypes call (no argtypes: its ctypes
          arguments made once), per field a capsule and a DLPack import, names
          and bool fields cached per layout
  before  the previous next(): the C call through argtypes, then per field the
          names, dtypes and pointers read through ctypes, a name lookup and an
          import
  block   one DLPack import of the step's whole block (uint8) and the fields
          as views of it (dtype views + as_strided), the single-import design
Parts per step (p50 and p90 over every step of every round, microseconds):
  stream (the consumer stream's handle), dequeue (the C call), build (capsules,
  imports, views, the batch), total (all of next()).
  python3 bench/handover_cpu.py [--seq-len 8192] [--steps 200] [--rounds 3]
  mpirun -np 2 python3 bench/handover_cpu.py --sleep   (cp = 2; with fewer cores than two
      spinning ranks plus their loader threads, spinning starves the loaders: sleep instead)
The stand-in driver: build/tests/mpi/libcpdl_fake_cuda.so (a test build), or name one with
CPDL_CUDA_LIBRARY (cc -shared -fPIC -o libfake.so tests/mpi/fake_cuda.c -lpthread).
"""
import argparse
import ctypes
import os
import random
import statistics
import sys
import time
from time import perf_counter

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, os.path.join(ROOT, "python"))
os.environ.setdefault("CPDL_CUDA_LIBRARY",
                      os.path.join(ROOT, "build", "tests", "mpi", "libcpdl_fake_cuda.so"))

import torch  # noqa: E402

import cpdl  # noqa: E402
from cpdl import _dlpack, _ffi, _prefetch  # noqa: E402


def fake_device():
    """device="fake": a CPU torch.device, so the C feed labels tensors as CPU."""
    real = _prefetch.resolve
    _prefetch.resolve = lambda device, prefetch: (
        (torch.device("cpu"), prefetch) if device == "fake" else real(device, prefetch))


def next_before(feed):
    """The previous NativeFeed.next (per field: ctypes reads, a name lookup, an import)."""
    t0 = perf_counter()
    stream = feed._stream()
    t1 = perf_counter()
    rc = feed._bench_next_c(feed._h, stream, feed._step_ref)  # through argtypes
    t2 = perf_counter()
    if rc:
        raise StopIteration
    s = feed._step
    tensors = {}
    n = s.n_fields
    pending = list(s.tensors[:n])
    cache = feed.__dict__.setdefault("_bench_names", {})
    try:
        for i in range(n):
            t = feed._from_dlpack(_prefetch._capsule_new(pending[i], b"dltensor", None))
            pending[i] = None
            if s.dtypes[i] == _ffi.DTYPE_BOOL:
                t = t.view(torch.bool)
            address = s.names[i]
            name = cache.get(address)
            if name is None:
                name = cache[address] = ctypes.string_at(address).decode()
            tensors[name] = t
    finally:
        for address in pending:
            if address:
                _prefetch._delete_managed(address)
    batch = _prefetch.DeviceBatch(s.step, feed._mesh, tensors)
    t3 = perf_counter()
    return batch, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)


def next_after(feed):
    feed.profile = []
    t0 = perf_counter()
    batch = feed.next()
    return batch, tuple(feed.profile[0]) + (perf_counter() - t0,)


class Block:
    """The single-import design on the same steps: the C feed's per-field
    tensors are taken (and given back after the step, outside the timing);
    what is timed is one capsule + import of the whole span as uint8 and the
    fields made as views of it."""

    def __init__(self):
        self.keep = []
        self.plan_layout = None

    @staticmethod
    @_dlpack._DELETER
    def _noop(managed):  # the per-field tensors own the memory in this emulation
        pass

    def managed(self, s):
        """A DLManagedTensor over [first field, end of last field) as uint8."""
        n = s.n_fields
        fields = [ctypes.cast(s.tensors[i], ctypes.POINTER(_dlpack.DLManagedTensor)).contents
                  for i in range(n)]
        lo = min(f.dl_tensor.data for f in fields)
        hi = max(f.dl_tensor.data + self.nbytes(f.dl_tensor) for f in fields)
        m = _dlpack.DLManagedTensor()
        shape = (ctypes.c_int64 * 1)(hi - lo)
        strides = (ctypes.c_int64 * 1)(1)
        t = m.dl_tensor
        t.data, t.device, t.ndim = lo, _dlpack.DLDevice(_dlpack.KDL_CPU, 0), 1
        t.dtype = _dlpack.DLDataType(_dlpack.KDL_UINT, 8, 1)
        t.shape = ctypes.cast(shape, ctypes.POINTER(ctypes.c_int64))
        t.strides = ctypes.cast(strides, ctypes.POINTER(ctypes.c_int64))
        m.deleter = self._noop
        self.keep.append((m, shape, strides))
        if s.layout != self.plan_layout:
            self.plan(s, fields, lo)
        return ctypes.addressof(m), [s.tensors[i] for i in range(n)]

    @staticmethod
    def nbytes(t):
        n = t.dtype.bits // 8
        for d in range(t.ndim):
            n *= t.shape[d]
        return n

    def plan(self, s, fields, lo):
        dtypes = {(0, 32): torch.int32, (0, 64): torch.int64, (1, 8): torch.uint8,
                  (2, 16): torch.float16, (2, 32): torch.float32, (2, 64): torch.float64,
                  (4, 16): torch.bfloat16}
        plan, kinds = [], []
        for i, f in enumerate(fields):
            t = f.dl_tensor
            dt = torch.bool if s.dtypes[i] == _ffi.DTYPE_BOOL else dtypes[(t.dtype.code,
                                                                          t.dtype.bits)]
            size = t.dtype.bits // 8
            shape = tuple(t.shape[d] for d in range(t.ndim))
            strides = tuple(t.strides[d] for d in range(t.ndim))
            if dt not in kinds:
                kinds.append(dt)
            plan.append((ctypes.string_at(s.names[i]).decode(), kinds.index(dt), shape, strides,
                         (t.data - lo) // size))
        self.plan_layout, self.fields, self.kinds = s.layout, plan, tuple(kinds)

    def next(self, feed):
        t0 = perf_counter()
        feed._stream_arg.value = feed._stream()
        t1 = perf_counter()
        rc = feed._next_raw(*feed._next_args)  # the dequeue as shipped
        t2 = perf_counter()
        if rc:
            raise StopIteration
        s = feed._step
        address, taken = self.managed(s)  # the C side of the design: not timed
        t3 = perf_counter()
        base = feed._from_dlpack(_prefetch._capsule_new(address, b"dltensor", None))
        typed = [base.view(dt) for dt in self.kinds]
        tensors = {name: typed[k].as_strided(shape, strides, offset)
                   for name, k, shape, strides, offset in self.fields}
        batch = _prefetch.DeviceBatch(s.step, feed._mesh, tensors)
        t4 = perf_counter()
        for p in taken:
            _prefetch._delete_managed(p)
        self.keep.clear()
        return batch, (t1 - t0, t2 - t1, t4 - t3, (t2 - t0) + (t4 - t3))


def training_step(ms, sleep):
    if ms <= 0:
        return
    if sleep:
        time.sleep(ms / 1e3)
        return
    end = perf_counter() + ms / 1e3
    while perf_counter() < end:
        pass


def run_variant(name, args, cp):
    kw = dict(cp=cp, seq_len=args.seq_len, batch=args.batch, steps=args.steps + 2,
              mode=args.mode)
    parts = []
    block = Block()
    with cpdl.Loader(device="fake", prefetch=args.prefetch, **kw) as loader:
        feed = loader._feed
        assert isinstance(feed, _prefetch.NativeFeed), type(feed).__name__
        feed._bench_next_c = feed._lib.cpdl_device_feed_next  # the previous call, bound once
        take = {"after": next_after, "before": next_before,
                "block": block.next}[name]
        fields = None
        for _ in range(args.steps):
            training_step(args.step_ms, args.sleep)
            try:
                batch, part = take(feed)
            except StopIteration:
                break
            parts.append(part)
            fields = fields or sorted(batch)
            del batch
    return parts[2:], fields


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seq-len", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--mode", default="round_robin")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prefetch", type=int, default=1)
    ap.add_argument("--step-ms", type=float, default=20.0, help="the training step between two "
                    "next() calls (0: a tight loop, hot caches)")
    ap.add_argument("--sleep", action="store_true", help="sleep through the step instead of "
                    "spinning")
    ap.add_argument("--variants", default="before,after,block")
    args = ap.parse_args()
    fake_device()
    cp, rank = 1, 0
    if "OMPI_COMM_WORLD_SIZE" in os.environ or "PMI_SIZE" in os.environ:
        from mpi4py import MPI
        cp, rank = MPI.COMM_WORLD.Get_size(), MPI.COMM_WORLD.Get_rank()
    names = args.variants.split(",")
    results = {n: [] for n in names}
    fields = None
    order = random.Random(7)
    for _ in range(args.rounds):
        todo = list(names)
        order.shuffle(todo)  # every rank the same order (collective loader opens)
        for n in todo:
            parts, fields = run_variant(n, args, cp)
            results[n] += parts
    if rank:
        return
    print("next() on the C feed, stand-in driver, torch %s, cp=%d, S=%d, batch %d, fields %s; "
          "%s %.1f ms between steps; %d rounds of %d steps" % (
              torch.__version__, cp, args.seq_len, args.batch, fields,
              "sleep" if args.sleep else "spin", args.step_ms, args.rounds, args.steps))
    print("| variant | stream p50 | dequeue p50 | build p50 | total p50 | total p90 | (us) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n in names:
        rows = results[n]
        if not rows:
            continue

        def p(j, q=50):
            v = sorted(r[j] for r in rows)
            return v[min(len(v) - 1, int(len(v) * q / 100))] * 1e6
        print("| %s | %.1f | %.1f | %.1f | %.1f | %.1f | %d steps |" % (
            n, p(0), p(1), p(2), p(3), p(3, 90), len(rows)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
