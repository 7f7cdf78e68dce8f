"""test_device_feed — cpdl.Loader(device=..., prefetch=N) on cpdl's C copy thread.

CI has no GPU: CPDL_CUDA_LIBRARY names the tests' stand-in CUDA driver
(tests/mpi/fake_cuda.c), whose "device memory" is host memory and whose copies
run late (when their event is synchronized, after FAKE_CUDA_DELAY_US), and
the loader is given device "fake" (a CPU torch.device), so the C feed labels
its DLPack tensors as CPU memory. What is tested is the real path of
prefetch >= 1: NativeFeed over cpdl_device_feed_*, the DLPack import of every
field, step order and contents against a plain loader, tensors kept past
later steps and past close (never overwritten), a view kept past its
step (its buffer not written, and reused once the view died), early close with
steps queued, no copy reading a slot after it went back, every device buffer freed
once its tensors die, and the Python worker fallback when no driver loads.
Run under mpirun -np 2 (cp 2).
"""
import ctypes
import gc
import os
import statistics
import sys
import time
import warnings

import numpy as np
import torch

import testutil
from testutil import report

import cpdl
from cpdl import _prefetch

CONFIG = dict(cp=2, seq_len=4096, batch=2, steps=9, mode="round_robin", slots=2)
FAKE = ctypes.CDLL(os.environ["CPDL_CUDA_LIBRARY"])


def install_fake_device():
    real = _prefetch.resolve
    _prefetch.resolve = lambda device, prefetch: (
        (torch.device("cpu"), prefetch) if device == "fake" else real(device, prefetch))


def host_steps():
    with cpdl.Loader(**CONFIG) as loader:
        return [(b.step, {k: torch.from_numpy(np.array(v)) for k, v in b.items()})
                for b in loader]


def same(batch, want, what):
    step, fields = want
    report(batch.step == step, what + " step order", "%d != %d" % (batch.step, step))
    report(sorted(batch) == sorted(fields), what + " fields", str(sorted(batch)))
    for name, tensor in fields.items():
        t = batch[name]
        report(t.dtype == tensor.dtype and t.shape == tensor.shape and torch.equal(t, tensor),
               "%s step %d %s" % (what, step, name),
               "%s %s vs %s %s" % (t.dtype, tuple(t.shape), tensor.dtype, tuple(tensor.shape)))


def run(want, prefetch, keep=1, stop_after=None):
    kept, got, waits = None, 0, []
    with cpdl.Loader(device="fake", prefetch=prefetch, **CONFIG) as loader:
        report(isinstance(loader._feed, _prefetch.NativeFeed), "prefetch=%d on the C feed"
               % prefetch, type(loader._feed).__name__)
        it = iter(loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            waits.append(time.perf_counter() - t0)
            same(batch, want[got], "prefetch=%d" % prefetch)
            if got == keep:
                kept = batch
            got += 1
            if stop_after is not None and got == stop_after:
                break
            time.sleep(0.005)  # a training step: the copy thread runs ahead meanwhile
    if stop_after is None:
        report(got == len(want), "prefetch=%d all steps" % prefetch, "%d of %d" % (got, len(want)))
    if kept is not None:  # after later steps and after close
        same(kept, want[keep], "prefetch=%d kept step" % prefetch)
    return waits


def test_native_feed():
    want = host_steps()
    report(len(want) == CONFIG["steps"], "host loader steps", str(len(want)))
    waits = []
    for prefetch in (1, 2):
        waits += run(want, prefetch)[2:]
    run(want, 3, keep=0, stop_after=2)  # closed with steps queued
    gc.collect()
    report(FAKE.fake_cuda_violations() == 0, "no copy read a slot after it was given back",
           str(FAKE.fake_cuda_violations()))
    report(FAKE.fake_cuda_allocs() == 0, "every device buffer freed with its tensors",
           str(FAKE.fake_cuda_allocs()))
    report(FAKE.fake_cuda_registered() == 0, "the region unregistered at close")
    print("next() on the C feed (stand-in driver, CPU tensors): median %.1f us over %d steps"
          % (statistics.median(waits) * 1e6, len(waits)))


def test_views_kept():
    """A view of a field (not the field's tensor) kept past its step keeps its
    device buffer: later steps never write it; once the view dies the buffer
    goes back to the feed and is reused (the driver's allocations stay at the
    few buffers prefetch needs, however many steps kept views)."""
    cfg = dict(CONFIG, steps=24)
    with cpdl.Loader(**cfg) as loader:
        want = [(b.step, {k: torch.from_numpy(np.array(v)) for k, v in b.items()})
                for b in loader]
    calls0 = FAKE.fake_cuda_alloc_calls()
    held, kept_views, got = [], 0, 0
    with cpdl.Loader(device="fake", prefetch=1, **cfg) as loader:
        for batch in loader:
            same(batch, want[got], "views kept")
            for item in list(held):
                until, step, view, expect = item
                if got >= until:  # two steps later (the buffer would be in use by now)
                    report(torch.equal(view, expect), "a view of step %d unchanged at step %d"
                           % (step, got), "the buffer was written while a view lived")
                    held.remove(item)
            if got % 3 == 0:  # keep a view only: the batch and its tensors are dropped
                name = sorted(batch)[got % len(batch)]
                view = batch[name].reshape(-1)[1:]
                held.append((got + 2, got, view, want[got][1][name].reshape(-1)[1:].clone()))
                kept_views += 1
            del batch
            got += 1
            time.sleep(0.002)
    report(got == len(want), "views kept: all steps", "%d of %d" % (got, len(want)))
    for until, step, view, expect in held:  # after close too
        report(torch.equal(view, expect), "a view of step %d unchanged after close" % step)
    held = view = item = expect = None  # the last references to the views
    gc.collect()
    calls = FAKE.fake_cuda_alloc_calls() - calls0
    # prefetch=1: the step in use, the one queued, the one copying, one kept by a view.
    report(calls <= 4, "buffers reused once their views died: %d allocations for %d steps "
           "with %d views kept" % (calls, got, kept_views), "%d allocations" % calls)
    report(FAKE.fake_cuda_allocs() == 0, "every buffer freed after the last view",
           str(FAKE.fake_cuda_allocs()))


class PythonWorker:
    """Stands in for _prefetch.DeviceFeed (whose CUDA streams a CPU lacks)."""

    def __init__(self, take, device, prefetch):
        self.prefetch = prefetch

    def close(self):
        pass


def test_fallback():
    saved = os.environ["CPDL_CUDA_LIBRARY"], _prefetch.DeviceFeed
    os.environ["CPDL_CUDA_LIBRARY"] = "/nonexistent/libcuda.so.1"
    _prefetch.DeviceFeed = PythonWorker
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            loader = cpdl.Loader(device="fake", prefetch=1, **CONFIG)
        try:
            report(isinstance(loader._feed, PythonWorker), "no driver: the Python worker",
                   type(loader._feed).__name__)
            report(any("CUDA driver" in str(w.message) for w in seen), "the warning says why",
                   str([str(w.message) for w in seen]))
        finally:
            loader.close()
        os.environ["CPDL_CUDA_LIBRARY"] = saved[0]
        os.environ["CPDL_PREFETCH_ENGINE"] = "python"
        with cpdl.Loader(device="fake", prefetch=1, **CONFIG) as loader:
            report(isinstance(loader._feed, PythonWorker), "CPDL_PREFETCH_ENGINE=python chosen")
    finally:
        os.environ["CPDL_CUDA_LIBRARY"] = saved[0]
        os.environ.pop("CPDL_PREFETCH_ENGINE", None)
        _prefetch.DeviceFeed = saved[1]


def test_state_refused():
    with cpdl.Loader(device="fake", prefetch=1, **CONFIG) as loader:
        next(loader)
        try:
            loader.state_dict()
            report(False, "state_dict() under prefetch=1 refused")
        except cpdl.Error as exc:
            report(exc.name == "CPDL_ESTATE" and "prefetch=0" in str(exc),
                   "state_dict() refusal names the fix", str(exc))


if __name__ == "__main__":
    install_fake_device()
    sys.exit(testutil.run([test_native_feed, test_views_kept, test_fallback,
                            test_state_refused]))
