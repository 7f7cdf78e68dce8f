"""_lib — finds and loads libcpdl.so and mirrors include/cpdl.h for ctypes.

Owns: the library search order, the ctypes Structures (field for field as in
cpdl.h; a change there must be made here too — tests/python/test_shard_batch.py
compares sizes and offsets against the C compiler), and every argtypes/restype.
Nothing here allocates batch memory; prep.py does.
"""
import ctypes
import ctypes.util
import glob
import os

CPDL_MAX_DIMS = 4
CPDL_MAX_FIELDS = 32
CPDL_NAME_MAX = 48

# cpdl_dtype_t
DTYPE_BOOL, DTYPE_UINT8, DTYPE_INT32, DTYPE_INT64 = 0, 1, 2, 3
DTYPE_FLOAT16, DTYPE_BFLOAT16, DTYPE_FLOAT32, DTYPE_FLOAT64 = 4, 5, 6, 7
DTYPE_COUNT = 8


class Tensor(ctypes.Structure):
    """cpdl_tensor_t"""
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("dtype", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("shape", ctypes.c_int64 * CPDL_MAX_DIMS),
        ("data", ctypes.c_void_p),
    ]


class MetadataField(ctypes.Structure):
    """cpdl_metadata_field_t"""
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("seq_dim", ctypes.c_int),
        ("pad_value", ctypes.c_double),
    ]


class PrepParams(ctypes.Structure):
    """cpdl_prep_params_t"""
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("cp_size", ctypes.c_int),
        ("tp_size", ctypes.c_int),
        ("mode", ctypes.c_int),
        ("padding_token_id", ctypes.c_int64),
        ("metadata", ctypes.POINTER(MetadataField)),
        ("n_metadata", ctypes.c_int),
    ]


class PrepField(ctypes.Structure):
    """cpdl_prep_field_t"""
    _fields_ = [
        ("name", ctypes.c_char * CPDL_NAME_MAX),
        ("dtype", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("shape", ctypes.c_int64 * CPDL_MAX_DIMS),
        ("seq_dim", ctypes.c_int),
        ("shared", ctypes.c_int),
        ("offset", ctypes.c_size_t),
        ("nbytes", ctypes.c_size_t),
    ]


# Symbols the binding calls; a library without them (a stale build) is skipped.
_SIGNATURES = {
    "cpdl_strerror": (ctypes.c_char_p, [ctypes.c_int]),
    "cpdl_err_name": (ctypes.c_char_p, [ctypes.c_int]),
    "cpdl_last_error": (ctypes.c_char_p, []),
    "cpdl_dtype_size": (ctypes.c_size_t, [ctypes.c_int]),
    "cpdl_dtype_name": (ctypes.c_char_p, [ctypes.c_int]),
    "cpdl_mode_parse": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int)]),
    "cpdl_prep_params_init": (None, [ctypes.POINTER(PrepParams)]),
    "cpdl_prep_plan_create": (ctypes.c_int, [ctypes.POINTER(Tensor), ctypes.c_int,
                                             ctypes.POINTER(PrepParams),
                                             ctypes.POINTER(ctypes.c_void_p)]),
    "cpdl_prep_plan_destroy": (None, [ctypes.c_void_p]),
    "cpdl_prep_plan_nfields": (ctypes.c_int, [ctypes.c_void_p]),
    "cpdl_prep_plan_field": (ctypes.POINTER(PrepField), [ctypes.c_void_p, ctypes.c_int]),
    "cpdl_prep_plan_rank_bytes": (ctypes.c_size_t, [ctypes.c_void_p]),
    "cpdl_prep_plan_shared_bytes": (ctypes.c_size_t, [ctypes.c_void_p]),
    "cpdl_prep_plan_seq_len": (ctypes.c_int64, [ctypes.c_void_p]),
    "cpdl_prep_plan_padded_len": (ctypes.c_int64, [ctypes.c_void_p]),
    "cpdl_prep_execute": (ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(Tensor), ctypes.c_int,
                                         ctypes.POINTER(ctypes.c_int), ctypes.c_int,
                                         ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]),
}

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


_PACKAGED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_native", "libcpdl.so")


def _candidates():
    """Paths to try, in order: $CPDL_LIBRARY alone if set; else the copy that
    `pip install .` put inside the package (cpdl/_native/); else build/, other
    build*/ dirs of the source tree (newest first), then the system loader's
    name."""
    env = os.environ.get("CPDL_LIBRARY")
    if env:
        return [env]
    if os.path.exists(_PACKAGED):
        return [_PACKAGED]
    paths = [os.path.join(_REPO_ROOT, "build", "libcpdl.so")]
    others = [p for p in glob.glob(os.path.join(_REPO_ROOT, "build*", "libcpdl.so"))
              if p not in paths]
    others.sort(key=lambda p: os.path.getmtime(p), reverse=True)
    paths += others
    paths.append(ctypes.util.find_library("cpdl") or "libcpdl.so.0")
    return paths


def _preload_mpi():
    # libcpdl.so links Open MPI, whose plugins (mca_*.so) resolve libmpi's
    # symbols globally; a library loaded RTLD_LOCAL would hide them.
    for name in ("libmpi.so.40", ctypes.util.find_library("mpi")):
        if not name:
            continue
        try:
            ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
            return
        except OSError:
            continue


def _load():
    _preload_mpi()
    tried = []
    for path in _candidates():
        if os.sep in path and not os.path.exists(path):
            tried.append("%s (not found)" % path)
            continue
        try:
            lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            tried.append("%s (%s)" % (path, exc))
            continue
        missing = [s for s in _SIGNATURES if not hasattr(lib, s)]
        if missing:
            tried.append("%s (stale build: lacks %s)" % (path, ", ".join(missing[:3])))
            continue
        for sym, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(lib, sym)
            fn.restype = restype
            fn.argtypes = argtypes
        return lib, path
    raise ImportError(
        "cpdl: cannot load libcpdl.so; tried:\n  " + "\n  ".join(tried) +
        "\nBuild it with `scripts/test` from the repository root, install the "
        "package with `pip install .`, or set CPDL_LIBRARY to the path of libcpdl.so.")


lib, path = _load()
