"""_cuda — page-locks ("pins") host memory with the CUDA runtime, if there is one.

Owns: finding libcudart at run time (nothing links it), cudaHostRegister /
cudaHostUnregister, and the one warning when CUDA is absent.
Why: a cpdl rank's region (all slots of its shard) is registered once, so a
`tensor.cuda(non_blocking=True)` of any later batch is an asynchronous DMA
straight from shared memory, with no pinned staging copy.
Consumers map the segment read-only, and cudaHostRegister needs write access
unless cudaHostRegisterReadOnly (CUDA >= 11.1) is passed: it is tried first.
"""
import ctypes
import glob
import os
import warnings

CUDA_HOST_REGISTER_PORTABLE = 0x01
CUDA_HOST_REGISTER_READ_ONLY = 0x08

_cudart = None
_cudart_error = None
_warned = False


def _candidates():
    names = ["libcudart.so", "libcudart.so.12", "libcudart.so.11.0"]
    # torch and the nvidia-* wheels carry their own copy.
    try:
        import torch  # noqa: F401  (only to find its lib directory)
        lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
        names += sorted(glob.glob(os.path.join(lib_dir, "libcudart*.so*")))
        site = os.path.dirname(os.path.dirname(torch.__file__))
        names += sorted(glob.glob(os.path.join(site, "nvidia", "cuda_runtime", "lib",
                                               "libcudart.so*")))
    except ImportError:
        pass
    return names


def _load():
    """The CUDA runtime library, or None (the reason is in _cudart_error)."""
    global _cudart, _cudart_error
    if _cudart is not None or _cudart_error is not None:
        return _cudart
    for name in _candidates():
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.cudaHostRegister.restype = ctypes.c_int
        lib.cudaHostRegister.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]
        lib.cudaHostUnregister.restype = ctypes.c_int
        lib.cudaHostUnregister.argtypes = [ctypes.c_void_p]
        lib.cudaGetDeviceCount.restype = ctypes.c_int
        lib.cudaGetDeviceCount.argtypes = [ctypes.POINTER(ctypes.c_int)]
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        lib.cudaGetErrorString.argtypes = [ctypes.c_int]
        lib.cudaGetLastError.restype = ctypes.c_int
        lib.cudaGetLastError.argtypes = []
        count = ctypes.c_int(0)
        rc = lib.cudaGetDeviceCount(ctypes.byref(count))
        if rc != 0 or count.value < 1:
            _cudart_error = "no CUDA device (%s: %s)" % (
                name, lib.cudaGetErrorString(rc).decode() if rc else "0 devices")
            return None
        _cudart = lib
        return lib
    _cudart_error = "no CUDA runtime library (tried libcudart.so, torch's and nvidia's copies)"
    return None


def warn_once(message):
    """One warning per process: pinning is an optimization, never an error."""
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def available():
    return _load() is not None


def register(address, nbytes):
    """Pin [address, address + nbytes). Returns True if pinned; otherwise
    warns once saying why and returns False."""
    lib = _load()
    if lib is None:
        warn_once("cpdl: pin=True ignored: %s; batches stay in pageable shared memory"
                  % _cudart_error)
        return False
    flags = CUDA_HOST_REGISTER_PORTABLE | CUDA_HOST_REGISTER_READ_ONLY
    rc = lib.cudaHostRegister(ctypes.c_void_p(address), nbytes, flags)
    if rc == 0:
        return True
    first = lib.cudaGetErrorString(rc).decode()
    lib.cudaGetLastError()  # clear it, so torch does not report it later
    # Without the read-only flag (CUDA < 11.1 or a driver that rejects it) the
    # runtime wants write access, which a consumer's read-only mapping lacks;
    # the leader's mapping may still register.
    rc = lib.cudaHostRegister(ctypes.c_void_p(address), nbytes, CUDA_HOST_REGISTER_PORTABLE)
    if rc == 0:
        return True
    lib.cudaGetLastError()
    warn_once("cpdl: pin=True ignored: cudaHostRegister of this rank's region (%d bytes at "
              "0x%x) failed with cudaHostRegisterReadOnly (%s) and without it (%s); the "
              "region is mapped read-only, which needs CUDA >= 11.1 to pin"
              % (nbytes, address, first, lib.cudaGetErrorString(rc).decode()))
    return False


def unregister(address):
    lib = _load()
    if lib is not None:
        lib.cudaHostUnregister(ctypes.c_void_p(address))
