"""_ffi — the binding's one door to C: finds and loads the libraries and
mirrors the headers under include/cpdl.h (cpdl/prep.h, source.h, loader.h,
loader_mpi.h) for ctypes.

Owns: the search for both libraries, every ctypes Structure (field for field
as in the headers; a change there must be made here too — tests/python/
test_shard_batch.py and test_loader.py compare sizes and offsets against the
C compiler), every argtypes/restype, the error codes (read from the C table at
load, never written here as numbers), Error and _check. The public modules
(prep, loader, source, torch, _launch, _prefetch) hold no ctypes declarations.

Two libraries, loaded on first use only (`import cpdl` loads neither):
  prep()  libcpdl_prep.so, the MPI-free layer (errors, dtypes, modes,
          cpdl_prep_*): shard_batch, strerror, Error. libmpi is not loaded.
          An older build without it falls back to libcpdl.so.
  full()  libcpdl.so (everything: loader, sources, state), after preloading
          libmpi RTLD_GLOBAL (Open MPI's plugins resolve libmpi's symbols
          globally). prep() is loaded first, so that the prep library's own
          calls bind inside itself, not to libcpdl.so's copies.
Each library keeps its own thread-local cpdl_last_error(): _check(rc, lib)
reads the message from the library whose call failed.

Search order, for each: $CPDL_LIBRARY alone if set (and for the prep layer
$CPDL_PREP_LIBRARY alone if set, else libcpdl_prep.so beside $CPDL_LIBRARY,
else $CPDL_LIBRARY); else the copy `pip install .` put in cpdl/_native/; else
<repo>/build/, the other <repo>/build*/ directories (newest first); else the
system loader's name.
"""
import ctypes
import ctypes.util
import glob
import os
import threading

# ---- constants of the headers ------------------------------------------------

CPDL_MAX_DIMS = 4
CPDL_MAX_FIELDS = 32
CPDL_NAME_MAX = 48
CPDL_SOURCE_MAX = 512
CPDL_STATE_VERSION = 3
OOB_OK, OOB_INPROGRESS = 0, 1  # CPDL_OOB_OK, CPDL_OOB_INPROGRESS

# cpdl_dtype_t
DTYPE_BOOL, DTYPE_UINT8, DTYPE_INT32, DTYPE_INT64 = 0, 1, 2, 3
DTYPE_FLOAT16, DTYPE_BFLOAT16, DTYPE_FLOAT32, DTYPE_FLOAT64 = 4, 5, 6, 7
DTYPE_COUNT = 8

# cpdl's own error codes lie in [CPDL_ERRNO_LAST, CPDL_ERRNO_FIRST] (cpdl/prep.h);
# cpdl_err_name() names each one of them in its table and says "CPDL_UNKNOWN"
# for the rest.
ERRNO_FIRST, ERRNO_LAST = -4001, -4099  # CPDL_ERRNO_FIRST, CPDL_ERRNO_LAST
_ERR_UNKNOWN = "CPDL_UNKNOWN"

_P = ctypes.POINTER


# ---- the prep layer: include/cpdl/prep.h's errors, dtypes and batch contract -

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
        ("metadata", _P(MetadataField)),
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


class FieldInfo(ctypes.Structure):
    """cpdl_field_info_t (cpdl/fields.h)"""
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("role", ctypes.c_int),
        ("dtype", ctypes.c_int),
    ]


# ---- the loader layer: configuration, loader, batch, control plane -----------

class Config(ctypes.Structure):
    """cpdl_config_t"""
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("cp", ctypes.c_int),
        ("tp", ctypes.c_int),
        ("order", ctypes.c_char * 16),
        ("seq_len", ctypes.c_int64),
        ("batch", ctypes.c_int),
        ("steps", ctypes.c_int64),
        ("slots", ctypes.c_int),
        ("mode", ctypes.c_int),
        ("seed", ctypes.c_uint64),
        ("source", ctypes.c_char * CPDL_SOURCE_MAX),
        ("collate", ctypes.c_char * 16),
        ("padding_token_id", ctypes.c_int64),
        ("position_ids", ctypes.c_int),
        ("loss_on_eot", ctypes.c_int),
        ("drop_last", ctypes.c_int),
        ("threads", ctypes.c_int),
        ("pin", ctypes.c_char * 64),
        ("timeout_ms", ctypes.c_int),
        ("epochs", ctypes.c_int64),
        ("schedule", ctypes.c_char * 16),
        ("cost", ctypes.c_char * 48),
        ("ring_bytes", ctypes.c_int64),
    ]


MESH_NAMES = ("world_rank", "world_size", "dp_rank", "cp_rank", "tp_rank", "dp_size",
              "cp_size", "tp_size", "node", "group", "group_rank", "group_size")


class MeshCoords(ctypes.Structure):
    """cpdl_mesh_coords_t"""
    _fields_ = [(name, ctypes.c_int) for name in MESH_NAMES]


class ViewField(ctypes.Structure):
    """cpdl_view_field_t"""
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("dtype", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("shape", ctypes.c_int64 * CPDL_MAX_DIMS),
        ("data", ctypes.c_void_p),
        ("nbytes", ctypes.c_size_t),
    ]


class CBatch(ctypes.Structure):
    """cpdl_batch_t"""
    _fields_ = [
        ("step", ctypes.c_uint64),
        ("n_fields", ctypes.c_int),
        ("fields", ViewField * CPDL_MAX_FIELDS),
        ("mesh", MeshCoords),
        ("region", ctypes.c_void_p),
        ("region_bytes", ctypes.c_size_t),
        ("internal", ctypes.c_void_p),
    ]


class DeviceParams(ctypes.Structure):
    """cpdl_device_params_t"""
    _fields_ = [("struct_size", ctypes.c_size_t), ("prefetch", ctypes.c_int),
                ("device", ctypes.c_int), ("dl_device_type", ctypes.c_int)]


class DeviceStep(ctypes.Structure):
    """cpdl_device_step_t"""
    _fields_ = [
        ("step", ctypes.c_uint64),
        ("n_fields", ctypes.c_int),
        ("names", ctypes.c_void_p * CPDL_MAX_FIELDS),
        ("tensors", ctypes.c_void_p * CPDL_MAX_FIELDS),
        ("dtypes", ctypes.c_int * CPDL_MAX_FIELDS),
        ("mesh", MeshCoords),
        ("layout", ctypes.c_uint64),
    ]


# cpdl_oob_t's callbacks
OOB_ALLGATHER = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                 ctypes.c_void_p, _P(ctypes.c_void_p))
OOB_REQ = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)


class Oob(ctypes.Structure):
    """cpdl_oob_t"""
    _fields_ = [("struct_size", ctypes.c_size_t), ("allgather", OOB_ALLGATHER),
                ("req_test", OOB_REQ), ("req_free", OOB_REQ), ("coll_info", ctypes.c_void_p),
                ("n_oob_eps", ctypes.c_int), ("oob_ep", ctypes.c_int)]


class Layout(ctypes.Structure):
    """cpdl_layout_t"""
    _fields_ = [("struct_size", ctypes.c_size_t)] + [
        (name, ctypes.c_int) for name in ("dp_rank", "dp_size", "cp_rank", "cp_size",
                                          "tp_rank", "tp_size", "pp_rank", "pp_size")]


class ToolsMemory(ctypes.Structure):
    """cpdl_tools_memory_t (cpdl/tools.h): the loader's memory sizing"""
    _fields_ = [("struct_size", ctypes.c_size_t)] + [
        (name, ctypes.c_int) for name in ("slots", "slots_given", "slots_need", "slots_max",
                                          "n_regions", "collate_sets")] + [
        (name, ctypes.c_uint64) for name in (
            "budget_bytes", "rank_block_bytes", "shared_block_bytes", "slot_bytes",
            "ring_bytes", "ctrl_bytes", "segment_bytes", "collate_set_bytes", "collate_bytes",
            "group_bytes")]


# Every structure, by its C name (the ABI tests walk this).
STRUCTS = {
    "cpdl_tensor_t": Tensor, "cpdl_metadata_field_t": MetadataField,
    "cpdl_prep_params_t": PrepParams, "cpdl_prep_field_t": PrepField,
    "cpdl_config_t": Config, "cpdl_mesh_coords_t": MeshCoords,
    "cpdl_view_field_t": ViewField, "cpdl_batch_t": CBatch,
    "cpdl_oob_t": Oob, "cpdl_layout_t": Layout, "cpdl_tools_memory_t": ToolsMemory,
}


# ---- signatures --------------------------------------------------------------

# libcpdl_prep.so's (libcpdl.so has them too). A library without one of them
# is a stale build and is skipped.
PREP_SIGNATURES = {
    "cpdl_strerror": (ctypes.c_char_p, [ctypes.c_int]),
    "cpdl_version": (ctypes.c_char_p, []),
    "cpdl_err_name": (ctypes.c_char_p, [ctypes.c_int]),
    "cpdl_last_error": (ctypes.c_char_p, []),
    "cpdl_dtype_size": (ctypes.c_size_t, [ctypes.c_int]),
    "cpdl_dtype_name": (ctypes.c_char_p, [ctypes.c_int]),
    "cpdl_mode_parse": (ctypes.c_int, [ctypes.c_char_p, _P(ctypes.c_int)]),
    "cpdl_field_info": (_P(FieldInfo), [ctypes.c_int]),
    "cpdl_field_role_name": (ctypes.c_char_p, [ctypes.c_int]),
    "cpdl_prep_params_init": (None, [_P(PrepParams)]),
    "cpdl_prep_plan_create": (ctypes.c_int, [_P(Tensor), ctypes.c_int, _P(PrepParams),
                                             _P(ctypes.c_void_p)]),
    "cpdl_prep_plan_destroy": (None, [ctypes.c_void_p]),
    "cpdl_prep_plan_nfields": (ctypes.c_int, [ctypes.c_void_p]),
    "cpdl_prep_plan_field": (_P(PrepField), [ctypes.c_void_p, ctypes.c_int]),
    "cpdl_prep_plan_rank_bytes": (ctypes.c_size_t, [ctypes.c_void_p]),
    "cpdl_prep_plan_shared_bytes": (ctypes.c_size_t, [ctypes.c_void_p]),
    "cpdl_prep_plan_seq_len": (ctypes.c_int64, [ctypes.c_void_p]),
    "cpdl_prep_plan_padded_len": (ctypes.c_int64, [ctypes.c_void_p]),
    "cpdl_prep_execute": (ctypes.c_int, [ctypes.c_void_p, _P(Tensor), ctypes.c_int,
                                         _P(ctypes.c_int), ctypes.c_int,
                                         _P(ctypes.c_void_p), ctypes.c_void_p]),
}

# libcpdl.so's own, on top of PREP_SIGNATURES. cpdl_loader_open_mpi's MPI_Comm
# is typed per MPI library: see open_mpi().
FULL_SIGNATURES = dict(PREP_SIGNATURES, **{
    "cpdl_config_init": (None, [_P(Config)]),
    "cpdl_config_set": (ctypes.c_int, [_P(Config), ctypes.c_char_p, ctypes.c_char_p]),
    "cpdl_config_parse": (ctypes.c_int, [_P(Config), ctypes.c_char_p]),
    "cpdl_config_from_env": (ctypes.c_int, [_P(Config)]),
    "cpdl_loader_open_world": (ctypes.c_int, [_P(Config), _P(ctypes.c_void_p)]),
    "cpdl_loader_open_oob": (ctypes.c_int, [_P(Oob), _P(Layout), _P(Config),
                                            _P(ctypes.c_void_p)]),
    "cpdl_loader_next": (ctypes.c_int, [ctypes.c_void_p, _P(CBatch)]),
    "cpdl_batch_release": (ctypes.c_int, [ctypes.c_void_p, _P(CBatch)]),
    "cpdl_loader_mesh": (ctypes.c_int, [ctypes.c_void_p, _P(MeshCoords)]),
    "cpdl_loader_segment_bytes": (ctypes.c_size_t, [ctypes.c_void_p]),
    "cpdl_tools_memory": (ctypes.c_int, [ctypes.c_void_p, _P(ToolsMemory)]),
    "cpdl_loader_state_size": (ctypes.c_int, [ctypes.c_void_p, _P(ctypes.c_size_t)]),
    "cpdl_loader_state_save": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                              _P(ctypes.c_size_t)]),
    "cpdl_loader_state_restore": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p,
                                                 ctypes.c_size_t]),
    "cpdl_loader_close": (ctypes.c_int, [ctypes.c_void_p]),
    "cpdl_loader_mapping_retain": (ctypes.c_void_p, [ctypes.c_void_p]),
    "cpdl_mapping_release": (None, [ctypes.c_void_p]),
    "cpdl_source_open": (ctypes.c_int, [ctypes.c_char_p, _P(ctypes.c_void_p)]),
    "cpdl_source_count": (ctypes.c_int64, [ctypes.c_void_p]),
    "cpdl_source_eot": (ctypes.c_int64, [ctypes.c_void_p]),
    "cpdl_source_read": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int64, _P(ctypes.c_void_p),
                                        _P(ctypes.c_int64), _P(ctypes.c_int)]),
    "cpdl_source_name": (ctypes.c_char_p, [ctypes.c_void_p]),
    "cpdl_source_document_count": (ctypes.c_int64, [ctypes.c_void_p]),
    "cpdl_source_batch_count": (ctypes.c_int64, [ctypes.c_void_p]),
    "cpdl_source_close": (None, [ctypes.c_void_p]),
    "cpdl_loader_open_mpi": (ctypes.c_int, None),  # argtypes per MPI: open_mpi()
    "cpdl_device_feed_open": (ctypes.c_int, [ctypes.c_void_p, _P(DeviceParams),
                                             _P(ctypes.c_void_p)]),
    "cpdl_device_feed_next": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t, _P(DeviceStep)]),
    "cpdl_device_feed_close": (ctypes.c_int, [ctypes.c_void_p]),
})

# The MPI calls the binding makes itself (starting MPI when nobody did).
MPI_SIGNATURES = {
    "MPI_Initialized": (ctypes.c_int, [_P(ctypes.c_int)]),
    "MPI_Finalized": (ctypes.c_int, [_P(ctypes.c_int)]),
    "MPI_Init": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p]),
    "MPI_Init_thread": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                                       _P(ctypes.c_int)]),
    "MPI_Finalize": (ctypes.c_int, []),
    "MPI_Comm_size": (ctypes.c_int, [ctypes.c_void_p, _P(ctypes.c_int)]),
}


# ---- finding the libraries ---------------------------------------------------

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_NATIVE = os.path.join(_PACKAGE, "_native")
_REPO_ROOT = os.path.dirname(os.path.dirname(_PACKAGE))
FULL_NAME, PREP_NAME = "libcpdl.so", "libcpdl_prep.so"


def _build_dirs():
    """<repo>/build, then the other <repo>/build*/ holding a cpdl library,
    the most recently built first."""
    first = os.path.join(_REPO_ROOT, "build")
    others = {os.path.dirname(p) for name in (FULL_NAME, PREP_NAME)
              for p in glob.glob(os.path.join(_REPO_ROOT, "build*", name))}
    others.discard(first)

    def newest(d):
        return max(os.path.getmtime(os.path.join(d, n)) for n in (FULL_NAME, PREP_NAME)
                   if os.path.exists(os.path.join(d, n)))
    return [first] + sorted(others, key=newest, reverse=True)


def _beside(full_path):
    """The prep library beside a libcpdl.so path (libcpdl.so.0.1.0 ->
    libcpdl_prep.so.0.1.0 first, then libcpdl_prep.so)."""
    folder, base = os.path.split(full_path)
    paths = []
    if base.startswith(FULL_NAME):
        paths.append(os.path.join(folder, PREP_NAME + base[len(FULL_NAME):]))
    plain = os.path.join(folder, PREP_NAME)
    if plain not in paths:
        paths.append(plain)
    return paths


def _paths(prep_layer):
    """(paths to try in order, whether the system loader's names follow them):
    they do not when the environment or the installed package names the
    libraries."""
    env_prep = os.environ.get("CPDL_PREP_LIBRARY")
    env = os.environ.get("CPDL_LIBRARY")
    if prep_layer and env_prep:
        return [env_prep], False
    if env:
        return ((_beside(env) + [env]) if prep_layer else [env]), False
    names = (PREP_NAME, FULL_NAME) if prep_layer else (FULL_NAME,)
    if any(os.path.exists(os.path.join(_NATIVE, n)) for n in names):
        return [os.path.join(_NATIVE, n) for n in names], False
    return [os.path.join(d, n) for d in _build_dirs() for n in names], True


def _stems(prep_layer):
    return ("cpdl_prep", "cpdl") if prep_layer else ("cpdl",)


def candidates(prep_layer):
    """What to try in order, for libcpdl.so (prep_layer False) or for the prep
    layer, where each place offers libcpdl_prep.so and then libcpdl.so (an
    older build has only that): paths, then the system loader's names."""
    paths, system = _paths(prep_layer)
    if system:
        paths += [ctypes.util.find_library(s) or "lib%s.so.0" % s for s in _stems(prep_layer)]
    return paths


def _import_error(what, tried):
    return ImportError(
        "cpdl: cannot load %s; tried:\n  " % what + "\n  ".join(tried) +
        "\nBuild it with `scripts/test` from the repository root, install the "
        "package with `pip install .`, or set CPDL_LIBRARY to the path of libcpdl.so "
        "(and CPDL_PREP_LIBRARY to libcpdl_prep.so's, if it is not beside it).")


def check_findable():
    """Raise ImportError, naming what was tried, when the prep layer can come
    from nowhere: no candidate path exists and the system loader knows no
    cpdl library. Nothing is loaded: `import cpdl` calls this so a missing
    build is still reported at import."""
    paths, system = _paths(prep_layer=True)
    if any(os.path.exists(p) for p in paths):
        return
    if system and any(ctypes.util.find_library(s) for s in _stems(prep_layer=True)):
        return
    tried = ["%s (not found)" % p for p in paths]
    if system:
        tried += ["lib%s.so (unknown to the system loader)" % s for s in _stems(True)]
    raise _import_error("libcpdl_prep.so or libcpdl.so", tried)


class Library:
    """A loaded cpdl library: .path, .cdll, and its functions as attributes."""

    def __init__(self, cdll, path):
        self.cdll = cdll
        self.path = path

    def __getattr__(self, name):
        return getattr(self.cdll, name)

    def last_error(self):
        """This library's message of the last failure on this thread."""
        return self.cdll.cpdl_last_error().decode(errors="replace")


def _open(what, paths, signatures, mode):
    tried = []
    for path in paths:
        if os.sep in path and not os.path.exists(path):
            tried.append("%s (not found)" % path)
            continue
        try:
            cdll = ctypes.CDLL(path, mode=mode)
        except OSError as exc:
            tried.append("%s (%s)" % (path, exc))
            continue
        missing = [s for s in signatures if not hasattr(cdll, s)]
        if missing:
            tried.append("%s (stale build: lacks %s)" % (path, ", ".join(missing[:3])))
            continue
        for sym, (restype, argtypes) in signatures.items():
            fn = getattr(cdll, sym)
            fn.restype = restype
            if argtypes is not None:
                fn.argtypes = argtypes
        return Library(cdll, path)
    raise _import_error(what, tried)


_lock = threading.RLock()
_prep = None
_full = None
_mpi = None


def prep():
    """The prep layer's library (libcpdl_prep.so, else libcpdl.so), loaded on
    first use, without libmpi. RTLD_LOCAL: its exports must not interpose on
    libcpdl.so's own copies."""
    global _prep
    if _prep is None:
        with _lock:
            if _prep is None:
                _prep = _open("libcpdl_prep.so or libcpdl.so", candidates(prep_layer=True),
                              PREP_SIGNATURES, ctypes.RTLD_LOCAL)
    return _prep


def full():
    """libcpdl.so, loaded on first use after libmpi (RTLD_GLOBAL: the
    data-source plugins resolve its symbols)."""
    global _full
    if _full is None:
        with _lock:
            if _full is None:
                prep()  # first: its own calls bind inside it (see the module comment)
                try:
                    mpi()
                except Error:
                    pass  # libcpdl.so's own dependency on libmpi decides; its error is clearer
                _full = _open("libcpdl.so", candidates(prep_layer=False), FULL_SIGNATURES,
                              ctypes.RTLD_GLOBAL)
    return _full


def loaded():
    """(prep library or None, libcpdl.so or None) as loaded so far."""
    return _prep, _full


def mpi():
    """libmpi, opened RTLD_GLOBAL (Open MPI's plugins resolve its symbols
    globally, so libcpdl.so needs it that way) with MPI_SIGNATURES set."""
    global _mpi
    if _mpi is None:
        with _lock:
            if _mpi is None:
                last = None
                for name in ("libmpi.so.40", ctypes.util.find_library("mpi")):
                    if not name:
                        continue
                    try:
                        cdll = ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
                        break
                    except OSError as exc:
                        last = exc
                else:
                    raise Error(code("EMPI"), "cannot load libmpi (%s); import mpi4py and "
                                "pass comm= instead" % last)
                for sym, (restype, argtypes) in MPI_SIGNATURES.items():
                    fn = getattr(cdll, sym)
                    fn.restype = restype
                    fn.argtypes = argtypes
                _mpi = cdll
    return _mpi


_open_mpi = {}


def open_mpi(comm_type):
    """cpdl_loader_open_mpi with its MPI_Comm argument typed comm_type
    (c_void_p for Open MPI, c_int for MPICH); one function object per type,
    so no call changes another's argtypes."""
    fn = _open_mpi.get(comm_type)
    if fn is None:
        proto = ctypes.CFUNCTYPE(ctypes.c_int, comm_type, _P(Layout), _P(Config),
                                 _P(ctypes.c_void_p))
        fn = _open_mpi.setdefault(comm_type, proto(("cpdl_loader_open_mpi", full().cdll)))
    return fn


# ---- errors ------------------------------------------------------------------

_codes = None


def error_codes():
    """{"EARG": -4001, ...}: every code in the C library's table (CPDL_ERRNO_MAP),
    named without the CPDL_ prefix."""
    global _codes
    if _codes is None:
        name_of = prep().cpdl_err_name
        codes = {}
        for code in range(ERRNO_FIRST, ERRNO_LAST - 1, -1):
            name = name_of(code).decode()
            if name != _ERR_UNKNOWN and name.startswith("CPDL_"):
                codes[name[len("CPDL_"):]] = code
        _codes = codes
    return _codes


def code(name):
    """The value of error code CPDL_<name> ("EARG") in the library's table."""
    codes = error_codes()
    if name not in codes:
        raise AttributeError("cpdl: the library at %s has no error code CPDL_%s (it has %s); "
                             "the binding is newer than the library: rebuild it"
                             % (prep().path, name, ", ".join(sorted(codes))))
    return codes[name]


def __getattr__(name):
    """EARG, EEOF, ... as module attributes, from the C table."""
    if len(name) > 1 and name[0] == "E" and name[1:].isupper():
        return code(name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


def strerror(err):
    """Description of a cpdl error code (or -errno)."""
    return prep().cpdl_strerror(int(err)).decode(errors="replace")


class Error(RuntimeError):
    """A cpdl call failed. .code is the negative code, .name its symbolic name
    ("CPDL_EFIELD"), .message what cpdl_last_error() said."""

    def __init__(self, code, message=""):
        self.code = int(code)
        self.name = prep().cpdl_err_name(self.code).decode()
        self.message = message
        super().__init__("%s: %s" % (self.name, message or strerror(self.code)))


Error.__module__ = "cpdl"  # its public name (tracebacks, pickling): cpdl.Error


def _check(rc, lib):
    """Raise Error for a nonzero rc of a call into lib, with lib's message.
    Same OS thread as the failing call, so the thread-local message is ours."""
    if rc != 0:
        raise Error(rc, lib.last_error())
