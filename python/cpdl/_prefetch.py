"""_prefetch — a Loader's batches delivered as CUDA tensors, step k+1 copied while step k trains.

Owns: DeviceBatch (a step's fields as device tensors) and DeviceFeed, which a
Loader opened with device="cuda" uses for next(): it takes each step's host
view from the loader, copies the shard from the registered (pinned) segment to
the device on a side CUDA stream with non_blocking copies, and keeps up to
`prefetch` further steps ready (a worker thread does the taking and copying,
so the training step only dequeues).
Invariants:
  * the C side holds at most one unreleased batch, so a step's slot is given
    back only after its copy has finished (the copy's event, synchronized on
    the host by whoever launched it), and before the next step is acquired;
  * with prefetch >= 1 only the worker thread calls into the C loader until
    close() has joined it;
  * a DeviceBatch is handed out only after the consumer stream (the current
    stream at next()) waits on its copy's event, and its memory is recorded for
    that stream, so the caching allocator never reuses it under the consumer;
  * close() waits for every copy in flight before the loader releases its slot
    and unregisters the region.
Resume: with prefetch >= 1 the worker has taken steps beyond the one in use,
and ranks may differ in how many, so state_dict() is refused (CPDL_ESTATE);
with prefetch=0 the step in use is the loader's held batch and the state is
exact (it starts at the next step).
Two engines. With prefetch >= 1 the copying is done by cpdl's own C thread
(NativeFeed over cpdl_device_feed_*, include/cpdl/device.h), which loads the
CUDA driver at run time and never takes the interpreter lock, so next() is
one ctypes call (the dequeue) plus one capsule and DLPack import per field,
with names and bool fields cached per layout; the steps' tensors live in the
feed's device buffers, each reused only after every tensor (and view) of its
step died and the consumer stream passed that point. Per field an import, not
one import of the block and views of it: a view costs torch more than an
import (autograd's view bookkeeping), measured by bench/handover_cpu.py. The Python worker (DeviceFeed) is
the prefetch=0 path, and the prefetch >= 1 fallback where the C feed cannot
start (no driver library it can load; a warning says so) or where
CPDL_PREFETCH_ENGINE=python asks for it.
Why one copy per step: a rank's shard of a slot is one dense block, so the
fields are copied as one byte span and viewed on the device (fewer launches
on the critical path); fields outside one tight span are copied one by one.
"""
import ctypes
import functools
import os
import queue
import threading
import warnings
from time import perf_counter as _perf
from collections.abc import Mapping

from . import _dlpack, _ffi
from ._ffi import Error


def resolve(device, prefetch):
    """(torch.device or None, prefetch) for Loader(device=..., prefetch=...).
    None for host views (device None or "cpu"). Raises before the loader
    opens, so every rank fails the same way without half a collective."""
    if prefetch is None:
        prefetch = 0
    if not isinstance(prefetch, int) or isinstance(prefetch, bool) or prefetch < 0:
        raise Error(_ffi.EARG, "prefetch=%r: expected an int >= 0 (steps copied to the device "
                    "ahead of the one in use)" % (prefetch,))
    if device is None:
        if prefetch:
            raise Error(_ffi.EARG, "prefetch=%d needs device=\"cuda\": host views need no "
                        "prefetch (the loader's slots already run ahead)" % prefetch)
        return None, 0
    try:
        import torch
    except ImportError as exc:
        raise Error(_ffi.EARG, "device=%r needs PyTorch (%s); use device=None for numpy views"
                    % (device, exc)) from None
    dev = torch.device(device)
    if dev.type == "cpu":
        if prefetch:
            raise Error(_ffi.EARG, "prefetch=%d needs device=\"cuda\", not \"cpu\"" % prefetch)
        return None, 0
    if dev.type != "cuda":
        raise Error(_ffi.EARG, "device=%r: cpdl copies to CUDA devices only (or use "
                    "device=None / \"cpu\" for host views)" % (device,))
    if not torch.cuda.is_available():
        raise Error(_ffi.EARG, "device=%r but CUDA is not available here (torch %s sees no "
                    "GPU); use device=None or \"cpu\" for host views, or run where a GPU is"
                    % (device, torch.__version__))
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev, prefetch


def _torch_dtype(code):
    import torch
    return {
        _ffi.DTYPE_BOOL: torch.bool, _ffi.DTYPE_UINT8: torch.uint8,
        _ffi.DTYPE_INT32: torch.int32, _ffi.DTYPE_INT64: torch.int64,
        _ffi.DTYPE_FLOAT16: torch.float16, _ffi.DTYPE_BFLOAT16: torch.bfloat16,
        _ffi.DTYPE_FLOAT32: torch.float32, _ffi.DTYPE_FLOAT64: torch.float64,
    }[code]


class DeviceBatch(Mapping):
    """One step's shard on the GPU: field name -> CUDA tensor (own memory: no
    lifetime rule beyond torch's), plus .step and .mesh. release() and
    `with batch:` do nothing and exist so host and device loops look alike."""

    def __init__(self, step, mesh, tensors):
        self.step = step
        self.mesh = mesh
        self._tensors = tensors

    def __getitem__(self, name):
        return self._tensors[name]

    def __iter__(self):
        return iter(self._tensors)

    def __len__(self):
        return len(self._tensors)

    def __repr__(self):
        return "<cpdl.DeviceBatch step %d fields=%s>" % (self.step, list(self._tensors))

    def torch(self):
        return dict(self._tensors)

    def release(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class DeviceFeed:
    """The loader's next() for device=cuda. `take` returns the loader's next
    host Batch (raising StopIteration at the end).

    prefetch=0: next() takes the step, launches its copy, makes the consumer
    wait for it and keeps the slot until the following next() (the copy must
    finish first). prefetch=N >= 1: a worker thread takes each step, copies it
    on the side stream, waits for that copy (off the training step's path),
    gives the slot back and queues the device batch, at most N ahead of the
    consumer; next() only dequeues, so its data wait is a queue get unless the
    loader is behind. The worker starts a step only once next() has returned
    (a credit per next()), so it does its Python work while the step trains
    and never holds the GIL that next() is waiting for.
    """

    def __init__(self, take, device, prefetch):
        import torch
        self._torch = torch
        self._take = take
        self.device = device
        self.prefetch = prefetch
        self._stream = torch.cuda.Stream(device=device)
        self._held = None  # prefetch=0: (host Batch, event of its copy) not yet released
        self._done = False
        self._queue = None
        self._stop = threading.Event()
        if prefetch:
            self._queue = queue.Queue()
            self._credits = threading.Semaphore(prefetch)
            self._worker = threading.Thread(target=self._work, name="cpdl-prefetch",
                                            daemon=True)
            self._worker.start()

    def _finish_held(self):
        if self._held is not None:
            batch, event = self._held
            self._held = None
            event.synchronize()  # the copy has read the slot: it may go back
            batch.release()

    def _span(self, batch):
        """(lo, hi) byte span covering every field if it is tight, else None."""
        fields = [f for f in batch._fields.values() if f[3]]
        if not fields:
            return None
        lo = min(f[0] for f in fields)
        hi = max(f[0] + f[3] for f in fields)
        total = sum(f[3] for f in fields)
        aligned = all((f[0] - lo) % 8 == 0 for f in fields)
        return (lo, hi) if aligned and hi - lo <= total + 4096 * len(fields) else None

    def _launch(self, batch):
        """Start the copy of `batch` on the side stream: (DeviceBatch, event, buffer)."""
        torch = self._torch
        from torch.utils.dlpack import from_dlpack
        tensors = {}
        span = self._span(batch)
        with torch.cuda.stream(self._stream):
            if span is not None:
                lo, hi = span
                host = from_dlpack(_dlpack.to_capsule(lo, (hi - lo,), _dlpack.KDL_UINT, 8, batch))
                buf = torch.empty(hi - lo, dtype=torch.uint8, device=self.device)
                buf.copy_(host, non_blocking=True)
                for name, (address, code, shape, nbytes) in batch._fields.items():
                    dtype = _torch_dtype(code)
                    if nbytes == 0:
                        tensors[name] = torch.empty(shape, dtype=dtype, device=self.device)
                        continue
                    off = address - lo
                    tensors[name] = buf[off:off + nbytes].view(dtype).view(shape)
            else:
                buf = None
                for name, (address, code, shape, nbytes) in batch._fields.items():
                    dtype = _torch_dtype(code)
                    out = torch.empty(shape, dtype=dtype, device=self.device)
                    if nbytes:
                        host = from_dlpack(_dlpack.to_capsule(address, (nbytes,),
                                                              _dlpack.KDL_UINT, 8, batch))
                        out.view(-1).view(torch.uint8).copy_(host, non_blocking=True)
                    tensors[name] = out
            event = torch.cuda.Event()
            event.record(self._stream)
        return DeviceBatch(batch.step, batch.mesh, tensors), event, buf

    def _work(self):
        """Worker (prefetch >= 1): copy each step, release its slot, queue it."""
        try:
            self._torch.cuda.set_device(self.device)  # per thread in torch
            while not self._stop.is_set():
                if not self._credits.acquire(timeout=0.1):
                    continue
                try:
                    batch = self._take()
                except StopIteration:
                    break
                item = self._launch(batch)
                item[1].synchronize()  # the copy has read the slot
                batch.release()
                self._queue.put(item)
            self._queue.put(("end", None))
        except BaseException as exc:  # noqa: BLE001 — handed to the consumer
            self._queue.put(("end", exc))

    def _hand_over(self, item):
        dbatch, event, buf = item
        consumer = self._torch.cuda.current_stream(self.device)
        consumer.wait_event(event)
        # Memory allocated on the side stream, used on the consumer's.
        for tensor in ([buf] if buf is not None else dbatch._tensors.values()):
            if tensor.numel():
                tensor.record_stream(consumer)
        return dbatch

    def next(self):
        if self._done:
            raise StopIteration
        if self._queue is None:
            self._finish_held()  # one unreleased host batch at a time (the C rule)
            try:
                batch = self._take()
            except StopIteration:
                self._done = True
                raise
            item = self._launch(batch)
            self._held = (batch, item[1])
            return self._hand_over(item)
        item = self._queue.get()
        if item[0] == "end":
            self._done = True
            if item[1] is not None:
                raise item[1]
            raise StopIteration
        dbatch = self._hand_over(item)
        self._credits.release()  # the worker may start the next step now
        return dbatch

    def check_state_save(self):
        if self.prefetch:
            raise Error(_ffi.ESTATE, "state_dict() with prefetch=%d: the prefetch worker has "
                        "already taken steps beyond the one in use (ranks may differ in how "
                        "many), so the state would skip them; open the loader with prefetch=0 "
                        "for the runs that save state (copies still go on a side stream), or "
                        "save before the first step" % self.prefetch)

    def close(self):
        """Stop the worker, wait for every copy in flight, give the held slot back."""
        if self._queue is not None:
            self._stop.set()
            self._worker.join()  # it finishes the step it is copying, then sees the stop
            self._queue = None
        self._finish_held()
        self._done = True


_capsule_new = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_char_p,
                                 ctypes.c_void_p)(("PyCapsule_New", ctypes.pythonapi))


def _delete_managed(address):
    """Call a DLManagedTensor's deleter (one the consumer never took)."""
    managed = _dlpack.DLManagedTensor.from_address(address)
    managed.deleter(ctypes.cast(address, ctypes.POINTER(_dlpack.DLManagedTensor)))


class NativeFeed:
    """The loader's next() for device=cuda, prefetch >= 1, on cpdl's C copy
    thread (cpdl_device_feed_*). `handle` is the open C loader, which the feed
    owns for next/release until close(). dl_cpu=True labels the tensors as
    host memory: only for a stand-in driver whose "device memory" is host
    memory (the tests without a GPU)."""

    def __init__(self, handle, device, prefetch, mesh, dl_cpu=False):
        import torch
        self._torch = torch
        self.device = device
        self.prefetch = prefetch
        self._mesh = mesh
        self._lib = _ffi.full()
        self._h = ctypes.c_void_p()
        params = _ffi.DeviceParams(ctypes.sizeof(_ffi.DeviceParams), prefetch,
                                   device.index if device is not None and device.index else 0,
                                   1 if dl_cpu else 2)
        rc = self._lib.cpdl_device_feed_open(handle, ctypes.byref(params), ctypes.byref(self._h))
        if rc:
            raise Error(rc, self._lib.last_error())
        self._step = _ffi.DeviceStep()
        self._step_ref = ctypes.byref(self._step)
        # cpdl_device_feed_next without argtypes, called with ctypes objects
        # made once: no per-call argument conversion (about 9 us of a cold
        # call, bench/handover_cpu.py); _stream_arg.value is all set per step.
        self._next_raw = self._lib.cdll["cpdl_device_feed_next"]
        self._next_raw.restype = ctypes.c_int
        self._stream_arg = ctypes.c_size_t(0)
        self._next_args = (self._h, self._stream_arg, self._step_ref)
        self._from_dlpack = getattr(torch._C, "_from_dlpack", None) or \
            torch.utils.dlpack.from_dlpack
        self._layout, self._names, self._bools = None, (), ()
        self._bool = torch.bool
        self._done = False
        self.profile = None  # a list: next() appends (stream, C call, import) seconds
        if dl_cpu:
            self._stream = lambda: 0
        else:
            raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
            index = device.index or 0
            if raw is not None:  # the stream's handle, without a Stream object or a frame
                self._stream = functools.partial(raw, index)
            else:
                current = torch.cuda.current_stream
                self._stream = lambda: current(device).cuda_stream

    def _plan(self, s):
        """(names, bool_positions) for the step's layout, cached by its id."""
        n = s.n_fields
        names = tuple(ctypes.string_at(s.names[i]).decode() for i in range(n))
        bools = tuple(i for i in range(n) if s.dtypes[i] == _ffi.DTYPE_BOOL)
        self._layout, self._names, self._bools = s.layout, names, bools
        return names, bools

    def next(self):
        """One ctypes call, then per field a capsule and a DLPack import (the
        cheapest tensor torch makes: bench/handover_cpu.py measures it against
        one import and views); what depends only on the field layout is cached."""
        if self._done:
            raise StopIteration
        prof = self.profile
        if prof is not None:
            t0 = _perf()
        self._stream_arg.value = self._stream()
        if prof is not None:
            t1 = _perf()
        rc = self._next_raw(*self._next_args)
        if prof is not None:
            t2 = _perf()
        if rc:
            self._done = True
            if rc == _ffi.EEOF:
                raise StopIteration
            raise Error(rc, self._lib.last_error())
        s = self._step
        if s.layout == self._layout:
            names, bools = self._names, self._bools
        else:
            names, bools = self._plan(s)
        pointers = s.tensors[:len(names)]
        tensors = {}
        imported = 0
        new, imp = _capsule_new, self._from_dlpack
        try:
            for name in names:
                tensors[name] = imp(new(pointers[imported], b"dltensor", None))
                imported += 1
        finally:
            # Not imported (an exception): give them back.
            for address in pointers[imported:]:
                _delete_managed(address)
        for i in bools:  # bool travels as uint8 (see cpdl_device_step_t)
            tensors[names[i]] = tensors[names[i]].view(self._bool)
        batch = DeviceBatch(s.step, self._mesh, tensors)
        if prof is not None:
            prof.append((t1 - t0, t2 - t1, _perf() - t2))
        return batch

    def check_state_save(self):
        raise Error(_ffi.ESTATE, "state_dict() with prefetch=%d: the prefetch copy thread has "
                    "already taken steps beyond the one in use (ranks may differ in how many), "
                    "so the state would skip them; open the loader with prefetch=0 for the "
                    "runs that save state (copies still go on a side stream), or save before "
                    "the first step" % self.prefetch)

    def close(self):
        """Stop the copy thread and give the loader back; tensors handed out stay valid."""
        if self._h:
            h, self._h = self._h, None
            self._done = True
            rc = self._lib.cpdl_device_feed_close(h)
            if rc:
                raise Error(rc, self._lib.last_error())


def open_feed(handle, take, device, prefetch, mesh):
    """The device feed a Loader(device=..., prefetch=...) uses: the C copy
    thread for prefetch >= 1 unless it cannot start (then the Python worker,
    with a warning) or CPDL_PREFETCH_ENGINE=python; the Python path for 0."""
    engine = os.environ.get("CPDL_PREFETCH_ENGINE", "native")
    if engine not in ("native", "python"):
        raise Error(_ffi.EARG, "CPDL_PREFETCH_ENGINE=%r: expected native or python" % engine)
    if prefetch >= 1 and engine == "native":
        try:
            # A "cpu" device comes only from a stand-in (resolve() maps real
            # CPU use to host views): its driver's memory is host memory.
            return NativeFeed(handle, device, prefetch, mesh, dl_cpu=device.type == "cpu")
        except Error as exc:
            if exc.code != _ffi.EARG:
                raise
            warnings.warn("cpdl: prefetch on the Python worker: the C copy thread could not "
                          "start (%s)" % exc, RuntimeWarning, stacklevel=3)
    return DeviceFeed(take, device, prefetch)
