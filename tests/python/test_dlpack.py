"""test_dlpack — cpdl's ctypes DLPack export (no MPI).

Batches here are cpdl_batch_t structs filled by hand over numpy memory, so the
export path of cpdl.Batch (.torch(), .dlpack()) runs without a loader.
Covers: the DLPack struct layout (offsets from dlpack.h, computed by hand);
the round trip of every cpdl dtype through torch 1.13 (bool travels as uint8
and is viewed as torch.bool: torch 1.13 rejects kDLBool); memory sharing;
lifetime: an unconsumed capsule frees its record, a consumed one keeps the
Batch object alive exactly until torch frees the tensor (also from another
thread); a released batch refuses to export. Prints "N passed, M failed".
"""
import ctypes
import gc
import sys
import threading
import weakref

import numpy as np
import torch
from torch.utils.dlpack import from_dlpack

from cpdl import _dlpack, _ffi
from cpdl import loader as cl
import cpdl
from testutil import report, run

# cpdl dtype -> (numpy array maker, torch dtype expected)
rng = np.random.default_rng(3)
CASES = {
    _ffi.DTYPE_BOOL: (lambda s: rng.random(s) > 0.5, torch.bool),
    _ffi.DTYPE_UINT8: (lambda s: rng.integers(0, 256, s).astype(np.uint8), torch.uint8),
    _ffi.DTYPE_INT32: (lambda s: rng.integers(-2**31, 2**31, s).astype(np.int32), torch.int32),
    _ffi.DTYPE_INT64: (lambda s: rng.integers(-2**62, 2**62, s), torch.int64),
    _ffi.DTYPE_FLOAT16: (lambda s: rng.standard_normal(s).astype(np.float16), torch.float16),
    _ffi.DTYPE_BFLOAT16: (lambda s: rng.integers(0, 2**16, s).astype(np.uint16), torch.bfloat16),
    _ffi.DTYPE_FLOAT32: (lambda s: rng.standard_normal(s).astype(np.float32), torch.float32),
    _ffi.DTYPE_FLOAT64: (lambda s: rng.standard_normal(s), torch.float64),
}


def make_batch(fields):
    """A cpdl.Batch over {name: (cpdl dtype, numpy array)}; no loader."""
    c = _ffi.CBatch()
    c.step = 11
    c.n_fields = len(fields)
    names = []
    for i, (name, (dtype, array)) in enumerate(fields.items()):
        f = c.fields[i]
        names.append(name.encode())
        f.name = names[-1]
        f.dtype = dtype
        f.ndim = array.ndim
        for d, n in enumerate(array.shape):
            f.shape[d] = n
        f.data = array.ctypes.data
        f.nbytes = array.nbytes
    batch = cl.Batch(None, c)
    batch._keep = (names, fields)  # the test's memory outlives the batch
    return batch


def test_layout():
    D = _dlpack
    want = {
        (D.DLDevice, "device_type"): 0, (D.DLDevice, "device_id"): 4,
        (D.DLDataType, "code"): 0, (D.DLDataType, "bits"): 1, (D.DLDataType, "lanes"): 2,
        (D.DLTensor, "data"): 0, (D.DLTensor, "device"): 8, (D.DLTensor, "ndim"): 16,
        (D.DLTensor, "dtype"): 20, (D.DLTensor, "shape"): 24, (D.DLTensor, "strides"): 32,
        (D.DLTensor, "byte_offset"): 40, (D.DLManagedTensor, "dl_tensor"): 0,
        (D.DLManagedTensor, "manager_ctx"): 48, (D.DLManagedTensor, "deleter"): 56,
    }
    for (struct, field), off in want.items():
        got = getattr(struct, field).offset
        report(got == off, "offset %s.%s" % (struct.__name__, field), got)
    sizes = {D.DLDevice: 8, D.DLDataType: 4, D.DLTensor: 48, D.DLManagedTensor: 64}
    for struct, size in sizes.items():
        report(ctypes.sizeof(struct) == size, "sizeof %s" % struct.__name__,
               ctypes.sizeof(struct))


def test_round_trip():
    shapes = [(3, 5), (2, 3, 4), (7,), (1, 2, 2, 3), (0, 4)]
    for dtype, (make, torch_dtype) in CASES.items():
        for shape in shapes:
            array = np.ascontiguousarray(make(shape))
            batch = make_batch({"f": (dtype, array)})
            t = batch.torch()["f"]
            where = "%s %s" % (torch_dtype, shape)
            report(t.dtype == torch_dtype and tuple(t.shape) == shape, "dtype/shape " + where,
                   "%s %s" % (t.dtype, tuple(t.shape)))
            if array.size:
                report(t.data_ptr() == array.ctypes.data, "shares memory " + where)
            bits = t.view(torch.int16).numpy().view(np.uint16) if torch_dtype == torch.bfloat16 \
                else t.numpy()
            report(np.array_equal(bits, array), "values " + where)
            view = batch["f"]
            report(view.dtype == (np.uint16 if dtype == _ffi.DTYPE_BFLOAT16 else array.dtype)
                   and np.array_equal(view, array) and not view.flags.writeable,
                   "numpy view " + where)
            # The DLPack protocol object (bool: kDLBool, refused by torch 1.13).
            try:
                t2 = from_dlpack(batch.dlpack("f"))
                report(t2.dtype == torch_dtype and (array.size == 0
                                                    or t2.data_ptr() == array.ctypes.data),
                       "__dlpack__ " + where, t2.dtype)
            except RuntimeError as exc:
                report(dtype == _ffi.DTYPE_BOOL and "code 6" in str(exc),
                       "__dlpack__ " + where, str(exc))
            report(batch.dlpack("f").__dlpack_device__() == (1, 0), "device CPU")


def test_scalar():
    array = np.array(42, dtype=np.int64)
    batch = make_batch({"s": (_ffi.DTYPE_INT64, array)})
    t = batch.torch()["s"]
    report(t.dim() == 0 and int(t) == 42, "0-d tensor", t)


def test_lifetime():
    gc.collect()
    base = _dlpack.live_count()
    array = np.arange(24, dtype=np.int64).reshape(4, 6)
    batch = make_batch({"x": (_ffi.DTYPE_INT64, array)})
    # An unconsumed capsule frees its record when it dies.
    capsule = batch._capsule("x", standard_bool=True)
    report(_dlpack.live_count() == base + 1, "capsule registered")
    del capsule
    report(_dlpack.live_count() == base, "unconsumed capsule freed")
    # A tensor keeps the Batch object alive until torch frees it.
    tensor = batch.torch()["x"]
    alive = weakref.ref(batch)
    del batch
    gc.collect()
    report(alive() is not None and _dlpack.live_count() == base + 1,
           "batch kept alive by its tensor")
    report(int(tensor.sum()) == int(array.sum()), "tensor readable after del batch")
    view = tensor[1:3]  # a view of the tensor shares its storage
    del tensor
    gc.collect()
    report(alive() is not None, "a view of the tensor keeps it too")
    del view
    gc.collect()
    report(alive() is None and _dlpack.live_count() == base, "all freed with the last tensor")
    # The deleter may run on another thread.
    batch = make_batch({"x": (_ffi.DTYPE_INT64, array)})
    holder = [batch.torch()["x"]]
    del batch
    thread = threading.Thread(target=holder.clear)
    thread.start()
    thread.join()
    gc.collect()
    report(_dlpack.live_count() == base, "deleter from another thread")
    # Many exports: nothing accumulates.
    batch = make_batch({"x": (_ffi.DTYPE_INT64, array)})
    for _ in range(2000):
        batch.torch()
    gc.collect()
    report(_dlpack.live_count() == base, "2000 exports, no growth", _dlpack.live_count())


def test_released():
    array = np.zeros(4, dtype=np.int32)
    batch = make_batch({"x": (_ffi.DTYPE_INT32, array)})
    batch.release()
    batch.release()
    for what, call in (("torch", batch.torch), ("dlpack", lambda: batch.dlpack("x")),
                       ("getitem", lambda: batch["x"])):
        try:
            call()
            report(False, "%s after release" % what)
        except cpdl.Error as exc:
            report("released" in str(exc) and exc.name == "CPDL_ESTATE",
                   "%s after release" % what, str(exc))


def main():
    return run((test_layout, test_round_trip, test_scalar, test_lifetime, test_released))


if __name__ == "__main__":
    sys.exit(main())
