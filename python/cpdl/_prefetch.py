"""_prefetch — a Loader's batches delivered as CUDA tensors, step k+1 copied while step k trains.

Owns: DeviceBatch (a step's fields as device tensors) and DeviceFeed, which a
Loader opened with device="cuda" uses for next(): it takes each step's host
view from the loader, copies the shard from the registered (pinned) segment to
the device on a side CUDA stream with non_blocking copies, and keeps up to
`prefetch` further steps in flight.
Invariants:
  * the C side holds at most one unreleased batch, so a step's slot is given
    back only after its copy has finished (the copy's event, synchronized on
    the host — by then it is normally long done), and before the next step is
    acquired;
  * a DeviceBatch is handed out only after the consumer stream (the current
    stream at next()) waits on its copy's event, and its memory is recorded for
    that stream, so the caching allocator never reuses it under the consumer;
  * close() waits for every copy in flight before the loader releases its slot
    and unregisters the region.
Why one copy per step: a rank's shard of a slot is one dense block, so the
fields are copied as one byte span and viewed on the device (fewer launches
on the critical path); fields outside one tight span are copied one by one.
"""
import collections
from collections.abc import Mapping

from . import _dlpack, _lib
from .prep import Error

CPDL_EARG = -4001
CPDL_ESTATE = -4014


def resolve(device, prefetch):
    """(torch.device or None, prefetch) for Loader(device=..., prefetch=...).
    None for host views (device None or "cpu"). Raises before the loader
    opens, so every rank fails the same way without half a collective."""
    if prefetch is None:
        prefetch = 0
    if not isinstance(prefetch, int) or isinstance(prefetch, bool) or prefetch < 0:
        raise Error(CPDL_EARG, "prefetch=%r: expected an int >= 0 (steps copied to the device "
                    "ahead of the one in use)" % (prefetch,))
    if device is None:
        if prefetch:
            raise Error(CPDL_EARG, "prefetch=%d needs device=\"cuda\": host views need no "
                        "prefetch (the loader's slots already run ahead)" % prefetch)
        return None, 0
    try:
        import torch
    except ImportError as exc:
        raise Error(CPDL_EARG, "device=%r needs PyTorch (%s); use device=None for numpy views"
                    % (device, exc)) from None
    dev = torch.device(device)
    if dev.type == "cpu":
        if prefetch:
            raise Error(CPDL_EARG, "prefetch=%d needs device=\"cuda\", not \"cpu\"" % prefetch)
        return None, 0
    if dev.type != "cuda":
        raise Error(CPDL_EARG, "device=%r: cpdl copies to CUDA devices only (or use "
                    "device=None / \"cpu\" for host views)" % (device,))
    if not torch.cuda.is_available():
        raise Error(CPDL_EARG, "device=%r but CUDA is not available here (torch %s sees no "
                    "GPU); use device=None or \"cpu\" for host views, or run where a GPU is"
                    % (device, torch.__version__))
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev, prefetch


def _torch_dtype(code):
    import torch
    return {
        _lib.DTYPE_BOOL: torch.bool, _lib.DTYPE_UINT8: torch.uint8,
        _lib.DTYPE_INT32: torch.int32, _lib.DTYPE_INT64: torch.int64,
        _lib.DTYPE_FLOAT16: torch.float16, _lib.DTYPE_BFLOAT16: torch.bfloat16,
        _lib.DTYPE_FLOAT32: torch.float32, _lib.DTYPE_FLOAT64: torch.float64,
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
    host Batch (raising StopIteration at the end)."""

    def __init__(self, take, device, prefetch):
        import torch
        self._torch = torch
        self._take = take
        self.device = device
        self.prefetch = prefetch
        self._stream = torch.cuda.Stream(device=device)
        self._ready = collections.deque()  # (DeviceBatch, event)
        self._held = None  # (host Batch, event of its copy) not yet released
        self._exhausted = False

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

    def next(self):
        torch = self._torch
        while len(self._ready) <= self.prefetch and not self._exhausted:
            self._finish_held()  # one unreleased host batch at a time (the C rule)
            try:
                batch = self._take()
            except StopIteration:
                self._exhausted = True
                break
            dbatch, event, buf = self._launch(batch)
            self._held = (batch, event)
            self._ready.append((dbatch, event, buf))
        if not self._ready:
            self._finish_held()
            raise StopIteration
        dbatch, event, buf = self._ready.popleft()
        consumer = torch.cuda.current_stream(self.device)
        consumer.wait_event(event)
        # Memory allocated on the side stream, used on the consumer's.
        for tensor in ([buf] if buf is not None else dbatch._tensors.values()):
            if tensor.numel():
                tensor.record_stream(consumer)
        return dbatch

    def close(self):
        """Wait for every copy in flight and give the held slot back."""
        for _, event, _ in self._ready:
            event.synchronize()
        self._ready.clear()
        self._finish_held()
