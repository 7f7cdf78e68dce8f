"""_dlpack — DLPack capsules for memory cpdl owns, built with ctypes.

Owns: the DLManagedTensor layout (dlpack.h v0.x, the version torch 1.13 reads),
the capsule's destructor and the tensor's deleter, and the keep-alive table.
Invariants: every DLManagedTensor handed out is in _LIVE until exactly one of
(the consumer's deleter call, the destructor of a capsule nobody consumed)
removes it; while it is there, its shape/strides arrays and its `owner` (the
object that keeps the memory valid) are alive. The two C callbacks are
module-level and additionally leaked on purpose, so a tensor freed during
interpreter shutdown never calls into a freed ctypes thunk.
"""
import ctypes
import threading

# DLDeviceType / DLDataTypeCode (dlpack.h)
KDL_CPU = 1
KDL_INT, KDL_UINT, KDL_FLOAT, KDL_BFLOAT, KDL_BOOL = 0, 1, 2, 4, 6

_CAPSULE_NAME = b"dltensor"
_USED_CAPSULE_NAME = b"used_dltensor"


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class DLManagedTensor(ctypes.Structure):
    pass


_DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(DLManagedTensor))
DLManagedTensor._fields_ = [
    ("dl_tensor", DLTensor),
    ("manager_ctx", ctypes.c_void_p),
    ("deleter", _DELETER),
]

_api = ctypes.pythonapi
_CAPSULE_DESTRUCTOR = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_api.PyCapsule_New.restype = ctypes.py_object
_api.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, _CAPSULE_DESTRUCTOR]
_api.PyCapsule_IsValid.restype = ctypes.c_int
_api.PyCapsule_IsValid.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_api.PyCapsule_GetPointer.restype = ctypes.c_void_p
_api.PyCapsule_GetPointer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]

# address of the DLManagedTensor -> (struct, shape, strides, owner)
_LIVE = {}
_LIVE_LOCK = threading.Lock()


def _forget(address):
    with _LIVE_LOCK:
        _LIVE.pop(address, None)


@_DELETER
def _deleter(managed):
    # Called by the consumer (torch) when its tensor's storage dies, from
    # whatever thread frees it; ctypes takes the GIL for us.
    _forget(ctypes.cast(managed, ctypes.c_void_p).value)


@_CAPSULE_DESTRUCTOR
def _capsule_destructor(capsule):
    # A consumer renames the capsule to "used_dltensor" and owns the tensor
    # from then on; only an unconsumed capsule still owns it here.
    if _api.PyCapsule_IsValid(capsule, _CAPSULE_NAME):
        _forget(_api.PyCapsule_GetPointer(capsule, _CAPSULE_NAME))


# Leak one reference to each thunk: see the module docstring.
_api.Py_IncRef.argtypes = [ctypes.py_object]
_api.Py_IncRef(ctypes.py_object(_deleter))
_api.Py_IncRef(ctypes.py_object(_capsule_destructor))


def live_count():
    """Number of exported tensors whose memory cpdl still keeps alive (tests)."""
    with _LIVE_LOCK:
        return len(_LIVE)


def to_capsule(data, shape, code, bits, owner):
    """A "dltensor" PyCapsule for a C-contiguous CPU tensor at address `data`.

    `owner` is kept alive until the consumer calls the deleter (or the capsule
    dies unconsumed); it must keep the memory at `data` valid that long.
    Strides are given explicitly (C order), so consumers that do not accept
    NULL strides work too.
    """
    ndim = len(shape)
    shape_arr = (ctypes.c_int64 * max(ndim, 1))(*shape)
    strides_arr = (ctypes.c_int64 * max(ndim, 1))()
    step = 1
    for d in range(ndim - 1, -1, -1):
        strides_arr[d] = step
        step *= max(int(shape[d]), 1)
    managed = DLManagedTensor()
    t = managed.dl_tensor
    t.data = data
    t.device = DLDevice(KDL_CPU, 0)
    t.ndim = ndim
    t.dtype = DLDataType(code, bits, 1)
    t.shape = ctypes.cast(shape_arr, ctypes.POINTER(ctypes.c_int64))
    t.strides = ctypes.cast(strides_arr, ctypes.POINTER(ctypes.c_int64))
    t.byte_offset = 0
    managed.manager_ctx = None
    managed.deleter = _deleter
    address = ctypes.addressof(managed)
    with _LIVE_LOCK:
        _LIVE[address] = (managed, shape_arr, strides_arr, owner)
    try:
        return _api.PyCapsule_New(address, _CAPSULE_NAME, _capsule_destructor)
    except BaseException:
        _forget(address)
        raise
