"""loader — cpdl.Loader: iterate a cpdl loader's batches as zero-copy numpy views.

Owns: MPI start-up when nobody started it; the Batch object. (The ctypes
mirrors of cpdl_config_t, cpdl_batch_t, ... and the signatures are _ffi's;
every call here goes to libcpdl.so, loaded by the first Loader.)
Invariants: a Loader holds at most one unreleased batch (the C side's rule);
next() releases the previous one first. Every array handed out views the shared
segment read-only through a buffer whose base chain ends at its Batch, so the
Batch object outlives its arrays — but the *slot* does not: after release() the
leader may overwrite it (see Batch). Loaders are closed before MPI_Finalize.
A Loader belongs to the process that opened it: in a child after fork (a
DataLoader worker, multiprocessing, a subprocess helper before exec) every use
raises cpdl.Error naming the fork, close() only drops the child's copy, and
the exit handler leaves the parent's loaders and MPI alone.
"""
import atexit
import collections
import ctypes
import operator
import os
import re
from collections.abc import Mapping

import numpy as np

from . import _cuda, _dlpack, _ffi, _launch, _prefetch
from ._ffi import Config, CBatch, Error, MeshCoords

_STATE_MAGIC = b"CPDLSTAT"


def _check(rc):
    """Error for a failed call into libcpdl.so, with its message."""
    _ffi._check(rc, _ffi.full())


# cpdl dtype -> (numpy dtype of the view, DLPack code, bits). bfloat16 has no
# numpy dtype: its views are uint16 bit patterns, its torch tensors bfloat16.
_DTYPES = {
    _ffi.DTYPE_BOOL: (np.dtype(np.bool_), _dlpack.KDL_BOOL, 8),
    _ffi.DTYPE_UINT8: (np.dtype(np.uint8), _dlpack.KDL_UINT, 8),
    _ffi.DTYPE_INT32: (np.dtype(np.int32), _dlpack.KDL_INT, 32),
    _ffi.DTYPE_INT64: (np.dtype(np.int64), _dlpack.KDL_INT, 64),
    _ffi.DTYPE_FLOAT16: (np.dtype(np.float16), _dlpack.KDL_FLOAT, 16),
    _ffi.DTYPE_BFLOAT16: (np.dtype(np.uint16), _dlpack.KDL_BFLOAT, 16),
    _ffi.DTYPE_FLOAT32: (np.dtype(np.float32), _dlpack.KDL_FLOAT, 32),
    _ffi.DTYPE_FLOAT64: (np.dtype(np.float64), _dlpack.KDL_FLOAT, 64),
}

Mesh = collections.namedtuple("Mesh", _ffi.MESH_NAMES)
Mesh.__doc__ = "Where this rank sits: dp/cp/tp coordinates and sizes, node, group."


def _mesh_of(coords):
    return Mesh(*(getattr(coords, name) for name in _ffi.MESH_NAMES))


# ---- MPI -------------------------------------------------------------------

_mpi = None
_we_initialized_mpi = False
_mpi_init_pid = None  # the process that called MPI_Init here (a fork child did not)
_peer_failed = False  # a loader closed with CPDL_EPEER: a rank is gone
# Strong references: an open loader owns threads and a mapping, and closing
# is collective, so it cannot happen in __del__ at a random GC time; loaders
# not closed by the program are closed at exit.
_open_loaders = set()


def _mpi_lib():
    """libmpi (the one libcpdl.so links), to call MPI_Init* directly."""
    return _ffi.mpi()


def _mpi_initialized():
    flag = ctypes.c_int(0)
    _mpi_lib().MPI_Initialized(ctypes.byref(flag))
    return bool(flag.value)


def _ensure_mpi():
    """MPI_Init_thread(NULL, NULL, MULTIPLE) unless someone (mpi4py, the host program) already
    did; then, and only then, MPI_Finalize runs at exit, after our loaders
    are closed."""
    global _we_initialized_mpi, _mpi_init_pid
    mpi = _mpi_lib()
    flag = ctypes.c_int(0)
    mpi.MPI_Initialized(ctypes.byref(flag))
    if flag.value:
        return
    finalized = ctypes.c_int(0)
    mpi.MPI_Finalized(ctypes.byref(finalized))
    if finalized.value:
        raise Error(_ffi.EMPI, "MPI was already finalized in this process; a Loader needs MPI")
    # MPI_THREAD_MULTIPLE (3 in Open MPI and MPICH), as mpi4py asks: a job
    # across hosts runs cpdl's liveness thread on its own communicator.
    provided = ctypes.c_int(0)
    rc = mpi.MPI_Init_thread(None, None, 3, ctypes.byref(provided))
    if rc != 0:
        raise Error(_ffi.EMPI, "MPI_Init_thread failed with MPI error %d" % rc)
    _we_initialized_mpi = True
    _mpi_init_pid = os.getpid()


@atexit.register
def _at_exit():
    # atexit runs in reverse registration order: this was registered at
    # import, after mpi4py's own handler if mpi4py was imported first, so
    # loaders close before anybody's MPI_Finalize. Closing is collective:
    # every rank reaches it as it exits normally. A child after fork (sys.exit
    # in a DataLoader worker or a multiprocessing child) owns none of them:
    # closing the parent's loaders or finalizing its MPI from there would tear
    # down the parent's job, so it does nothing.
    me = os.getpid()
    for loader in list(_open_loaders):
        if loader._pid != me:
            continue
        try:
            loader.close()
        except Error:
            pass
    # After a peer died MPI_Finalize would wait for it for ever (Open MPI
    # fences every process, the dead one too, e.g. under mpirun
    # --enable-recovery): exit without it, as `cpdl run` does.
    if _we_initialized_mpi and _mpi_init_pid == me and not _peer_failed:
        mpi = _mpi_lib()
        finalized = ctypes.c_int(0)
        mpi.MPI_Finalized(ctypes.byref(finalized))
        if not finalized.value:
            mpi.MPI_Finalize()


def _world_comm():
    """MPI_COMM_WORLD as a pointer: Open MPI's is &ompi_mpi_comm_world (the
    library cpdl is built with)."""
    try:
        return ctypes.addressof(ctypes.c_char.in_dll(_mpi_lib(), "ompi_mpi_comm_world"))
    except ValueError:
        raise Error(_ffi.EMPI, "cpdl: cannot name MPI_COMM_WORLD in this MPI library; pass "
                    "comm=mpi4py.MPI.COMM_WORLD") from None


def _mpi_world_size():
    mpi = _mpi_lib()
    size = ctypes.c_int(0)
    if mpi.MPI_Comm_size(_world_comm(), ctypes.byref(size)) != 0:
        raise Error(_ffi.EMPI, "MPI_Comm_size(MPI_COMM_WORLD) failed")
    return size.value


def _comm_handle(comm):
    """(value, ctypes type) of the MPI_Comm behind an mpi4py communicator.
    Open MPI's MPI_Comm is a pointer, MPICH's an int: read the handle field at
    the address mpi4py reports, with the width of the handle type."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise TypeError("cpdl: comm= needs an mpi4py communicator (%s)" % exc) from None
    if not isinstance(comm, MPI.Comm):
        raise TypeError("cpdl: comm must be an mpi4py MPI.Comm, got %s" % type(comm).__name__)
    address = MPI._addressof(comm)
    if MPI._sizeof(MPI.Comm) == ctypes.sizeof(ctypes.c_void_p):
        return ctypes.c_void_p.from_address(address).value, ctypes.c_void_p
    return ctypes.c_int.from_address(address).value, ctypes.c_int


# ---- Batch -----------------------------------------------------------------

class _Mapping:
    """One reference to a loader's read-only view mapping (the C side's
    cpdl_mapping_t). Every Batch holds the loader's, and each exported array
    or tensor holds its Batch, so the memory a view points at stays mapped as
    long as the view lives — even after Loader.close() — and is unmapped by
    whoever lets go last."""

    __slots__ = ("_ref", "_lib")

    def __init__(self, ref):
        self._ref = ref
        self._lib = _ffi.full()  # held: module globals may be gone at exit

    def __del__(self):
        ref, self._ref = self._ref, None
        if ref:
            self._lib.cpdl_mapping_release(ref)


class _FieldExport:
    """One field for the DLPack protocol (torch.from_dlpack(batch.dlpack(name)))."""

    __slots__ = ("_batch", "_field")

    def __init__(self, batch, field):
        self._batch = batch
        self._field = field

    def __dlpack_device__(self):
        return (_dlpack.KDL_CPU, 0)

    def __dlpack__(self, stream=None, max_version=None, dl_device=None, copy=None):
        # Newer consumers pass DLPack 1.0 keywords; a legacy "dltensor"
        # capsule is still a valid answer to max_version (1, 0).
        if stream is not None and stream != -1:
            raise BufferError("cpdl fields live in host memory; stream must be None")
        if copy:
            raise BufferError("cpdl exports views of shared memory only; use batch.copy()")
        if dl_device is not None and tuple(dl_device) != (_dlpack.KDL_CPU, 0):
            raise BufferError("cpdl fields live on the CPU, not on device %s" % (dl_device,))
        return self._batch._capsule(self._field, standard_bool=True)


class Batch(Mapping):
    """One step's view for this rank: a mapping field name -> read-only numpy
    array inside the shared segment (no copy), plus .step and .mesh.

    Lifetime: the arrays (and tensors from .torch()) point into this step's
    slot. After release() — explicit, at the end of a `with batch:` block, or
    implicitly when the Loader moves to the next step — the slot goes back to
    the leader, which will overwrite it with a later step, and after
    Loader.close() it is unmapped. So:
      * batch[name], .torch(), .copy() raise cpdl.Error("... released") after
        release; release() a second time does nothing;
      * arrays and tensors taken *before* release keep pointing at the slot:
        reading them later gives another step's data. After Loader.close()
        they stay readable (the mapping lives as long as they do: they hold
        the segment's last contents, read-only). Keep data beyond the step
        with batch.copy() or np.array(arr).
    Tensors from .torch() are writable in torch's eyes but the memory is
    mapped read-only: writing to them raises SIGSEGV.
    """

    def __init__(self, loader, cbatch):
        self._loader = loader
        # The views' memory lives while this does (after Loader.close() too).
        self._mapping = loader._mapping if loader is not None else None
        self._c = cbatch
        self.step = int(cbatch.step)
        self.mesh = _mesh_of(cbatch.mesh)
        self.region = int(cbatch.region or 0)
        self.region_bytes = int(cbatch.region_bytes)
        self._fields = {}
        for i in range(cbatch.n_fields):
            f = cbatch.fields[i]
            name = f.name.decode()
            if f.dtype not in _DTYPES:
                raise Error(_ffi.EDTYPE, "field '%s' has dtype %d, unknown to this binding"
                            % (name, f.dtype))
            shape = tuple(int(f.shape[d]) for d in range(f.ndim))
            self._fields[name] = (int(f.data or 0), f.dtype, shape, int(f.nbytes))
        self._arrays = {}
        self._released = False

    # Mapping
    def __getitem__(self, name):
        self._check_live(name)
        array = self._arrays.get(name)
        if array is None:
            if name not in self._fields:
                raise KeyError(name)
            array = self._arrays[name] = self._view(name)
        return array

    def __iter__(self):
        return iter(self._fields)

    def __len__(self):
        return len(self._fields)

    def __contains__(self, name):
        return name in self._fields

    def __repr__(self):
        state = "released" if self._released else "live"
        return "<cpdl.Batch step %d %s fields=%s>" % (self.step, state, list(self._fields))

    @property
    def released(self):
        return self._released

    def _check_live(self, name=None):
        if self._released:
            what = "field '%s' of " % name if name else ""
            raise Error(_ffi.ESTATE, "cannot use %sbatch of step %d: batch released (its slot "
                        "belongs to the leader again); keep data with batch.copy() or "
                        "np.array(arr) before release" % (what, self.step))

    def _view(self, name):
        address, dtype, shape, nbytes = self._fields[name]
        np_dtype = _DTYPES[dtype][0]
        want = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
        if want != nbytes:
            raise Error(_ffi.ECORRUPT, "field '%s': shape %s of %s needs %d bytes, the view says %d"
                        % (name, shape, np_dtype, want, nbytes))
        if nbytes == 0:
            array = np.empty(shape, np_dtype)
            array.flags.writeable = False
            return array
        raw = (ctypes.c_char * nbytes).from_address(address)
        raw.cpdl_batch = self  # base chain: array -> memoryview -> raw -> batch
        # A read-only buffer: numpy then refuses to flip the array writeable.
        return np.frombuffer(memoryview(raw).toreadonly(), np_dtype).reshape(shape)

    def _capsule(self, name, standard_bool):
        self._check_live(name)
        address, dtype, shape, _ = self._fields[name]
        _, code, bits = _DTYPES[dtype]
        if dtype == _ffi.DTYPE_BOOL and not standard_bool:
            code = _dlpack.KDL_UINT
        return _dlpack.to_capsule(address, shape, code, bits, self)

    def dlpack(self, name):
        """An object with __dlpack__/__dlpack_device__ for field `name`
        (bool is exported as kDLBool, which torch 1.13 does not accept: use
        batch.torch() there)."""
        self._check_live(name)
        if name not in self._fields:
            raise KeyError(name)
        return _FieldExport(self, name)

    def torch(self):
        """{name: CPU torch tensor} sharing memory with the numpy views, via
        DLPack (torch.from_numpy warns on read-only arrays). bool travels as
        uint8 and is viewed as torch.bool (torch 1.13 rejects kDLBool);
        bfloat16 fields become torch.bfloat16. Same lifetime rules as the
        arrays; see the class docstring."""
        import torch
        from torch.utils.dlpack import from_dlpack
        self._check_live()
        out = {}
        for name, (_, dtype, _, _) in self._fields.items():
            tensor = from_dlpack(self._capsule(name, standard_bool=False))
            if dtype == _ffi.DTYPE_BOOL:
                tensor = tensor.view(torch.bool)
            out[name] = tensor
        return out

    def copy(self):
        """{name: writable numpy copy} that stays valid after release."""
        self._check_live()
        return {name: np.array(self[name]) for name in self._fields}

    def release(self):
        """Give the slot back to the leader. A second call does nothing."""
        if self._released:
            return
        self._released = True
        self._arrays.clear()
        loader = self._loader
        if loader is not None and loader._handle is not None and loader._current is self:
            loader._current = None
            if loader._pid != os.getpid():
                return  # a fork's copy: the slot is the parent's to release
            _check(_ffi.full().cpdl_batch_release(loader._handle, ctypes.byref(self._c)))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False


# ---- Loader ----------------------------------------------------------------

def _value_text(key, value):
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value).encode()
    if isinstance(value, (str, int, float)) or hasattr(value, "__index__"):
        return str(value).encode()
    raise TypeError("cpdl: config key '%s' got %s; pass str, int, float or bool"
                    % (key, type(value).__name__))


def _text_keys(text):
    """The keys a "key=value ..." configuration text sets (as the C parser reads them)."""
    return set(re.findall(r"(?:^|[\s,])([A-Za-z_][A-Za-z0-9_]*)\s*=", text))


def _env_except(lib, cfg, given):
    """CPDL_<KEY> variables onto cfg, but not the keys the caller sets: a bad
    value of such a variable is overridden, as a command-line flag overrides
    it for the CLI (cpdl__config_from_env_except)."""
    if lib.cpdl_config_from_env(ctypes.byref(cfg)) == 0:
        return
    lib.cpdl_config_init(ctypes.byref(cfg))  # from_env changed nothing; go key by key
    for name, _ in Config._fields_:
        var = "CPDL_" + name.upper()
        if name == "struct_size" or name in given or var not in os.environ:
            continue
        rc = lib.cpdl_config_set(ctypes.byref(cfg), name.encode(), os.environ[var].encode())
        if rc:
            raise Error(rc, "environment variable %s: %s" % (var, lib.last_error()))


def make_config(config=None, **kwargs):
    """A cpdl_config_t: defaults, then CPDL_<KEY> environment variables, then
    `config` ("key=value ..." text, or a dict), then kwargs (seq_len=..., cp=...).
    A key the caller sets is not read from the environment, so its bad
    CPDL_<KEY> value is no error (as with the CLI's flags)."""
    lib = _ffi.full()
    cfg = Config()
    lib.cpdl_config_init(ctypes.byref(cfg))
    given = set(str(k) for k in kwargs)
    if isinstance(config, str):
        given |= _text_keys(config)
    elif isinstance(config, Mapping):
        given |= set(str(k) for k in config)
    _env_except(lib, cfg, given)
    items = []
    if isinstance(config, str):
        _check(lib.cpdl_config_parse(ctypes.byref(cfg), config.encode()))
    elif isinstance(config, Mapping):
        items += list(config.items())
    elif config is not None:
        raise TypeError("cpdl: config must be a 'key=value ...' string or a dict, got %s"
                        % type(config).__name__)
    items += list(kwargs.items())
    for key, value in items:
        _check(lib.cpdl_config_set(ctypes.byref(cfg), str(key).encode(),
                                   _value_text(key, value)))
    return cfg


class Loader:
    """cpdl's loader for this rank, as an iterator of Batch objects.

        loader = cpdl.Loader("source=synthetic: seq_len=4096", cp=4)
        for batch in loader:            # each next() releases the previous batch
            ids = batch["input_ids"]    # read-only numpy view, no copy
            ...

    Collective: every rank of the job creates it, iterates the same number
    of steps and closes it (close() or `with Loader(...) as loader:`; loaders
    still open at exit are closed before MPI_Finalize).
    The control plane (open/restore/close's collectives; never the data path):
      comm: an mpi4py communicator (any, e.g. a split of COMM_WORLD);
      process_group: a torch.distributed group (gloo is used; with another
        backend a gloo group of the same ranks is created);
      neither: torch.distributed when the process was launched by torchrun
        (RANK/WORLD_SIZE/LOCAL_RANK; initialized here from MASTER_ADDR/
        MASTER_PORT if nobody did), else MPI_COMM_WORLD (initialized here if
        nobody did, finalized at exit). A launcher that says more than one
        process while MPI sees one is never a silent world of one: cpdl.Error
        on every process, naming the launcher and the fix.
    The trainer's layout (instead of the config's order key):
      coords={"dp": (rank, size), "cp": (rank, size), "tp": (rank, size)};
      or mesh=<torch DeviceMesh> with dims={"dp": "dp_shard", "cp": "cp",
        "tp": "tp"} (a tuple of mesh dims is flattened, slowest first);
      or coords=cpdl.megatron_coords() under Megatron-core.
      The config's cp/tp follow the layout; the library checks the grid on
      every rank (CPDL_EMESH names the ranks that disagree). pp > 1 is refused.
    pin: register this rank's whole region with CUDA once (needs libcudart
    and a device; otherwise one warning and nothing else), so
    `tensor.cuda(non_blocking=True)` copies asynchronously from shared memory.
    device="cuda" (implies pin): next() gives a DeviceBatch of CUDA tensors,
    copied on a side stream; prefetch=N copies N steps ahead while the current
    one trains (see _prefetch.py). Without CUDA, device="cuda" is a cpdl.Error.
    Errors raise cpdl.Error carrying the library's message.
    """

    def __init__(self, config=None, comm=None, *, pin=False, device=None, prefetch=0,
                 process_group=None, mesh=None, dims=None, coords=None, **kwargs):
        self._handle = None
        self._mapping = None
        self._feed = None
        self._pid = os.getpid()  # the owner (see _live)
        device, prefetch = _prefetch.resolve(device, prefetch)
        pin = pin or device is not None
        self._current = None
        self._pinned = None
        self._pin = bool(pin)
        self._exhausted = False
        self._oob = None
        if mesh is not None:
            if coords is not None:
                raise ValueError("cpdl: pass mesh= or coords=, not both")
            coords = _launch.coords_from_mesh(mesh, dims)
        elif dims is not None:
            raise ValueError("cpdl: dims= maps cpdl axes to the dimensions of mesh=; pass a mesh")
        layout = _launch.layout_from_coords(coords) if coords is not None else None
        if layout is not None:
            kwargs.setdefault("cp", layout.cp_size)
            kwargs.setdefault("tp", layout.tp_size)
        cfg = make_config(config, **kwargs)
        lib = _ffi.full()
        handle = ctypes.c_void_p()
        layout_p = ctypes.byref(layout) if layout is not None else None
        if comm is not None and process_group is not None:
            raise ValueError("cpdl: pass comm= (MPI) or process_group= (torch), not both")
        if comm is None and process_group is None and not _launch.torchrun_env():
            var, size = _launch.launcher_world()
            if size > 1 and _launch.srun_without_pmi() and not _mpi_initialized():
                # Open MPI's MPI_Init aborts in a task srun started without
                # PMIx: never get there. torch.distributed if it can rendezvous.
                if _launch.torch_ready() is None:
                    _launch.refuse_world_of_one(var, size, "srun started it without PMIx (no "
                                                "PMIX_RANK), so MPI cannot see the other tasks, "
                                                "and torch.distributed cannot rendezvous")
                process_group = "torch"
            else:
                _ensure_mpi()
            if process_group is None and size > 1 and _mpi_world_size() == 1:
                # mpirun did not start us: srun without PMIx, or a launcher
                # of its own. torch.distributed if it can reach the others.
                if _launch.torch_ready() is None:
                    _launch.refuse_world_of_one(var, size, "MPI sees a world of one (no PMIx) "
                                                "and torch.distributed cannot rendezvous")
                process_group = "torch"
        elif comm is None and process_group is None:
            if _launch.torch_ready() is None:
                var, size = _launch.launcher_world()
                if size > 1:
                    _launch.refuse_world_of_one(var, size, "torch.distributed is not initialized "
                                                "and MASTER_ADDR/MASTER_PORT are not set")
                _ensure_mpi()
            else:
                process_group = "torch"
        if process_group is not None:
            self._oob = _launch.torch_oob(None if process_group == "torch" else process_group,
                                          timeout_ms=cfg.timeout_ms)
            rc = lib.cpdl_loader_open_oob(ctypes.byref(self._oob.struct), layout_p,
                                          ctypes.byref(cfg), ctypes.byref(handle))
            if rc and self._oob.error is not None:
                raise Error(rc, "%s (torch.distributed: %r)" % (lib.last_error(), self._oob.error))
            _check(rc)
        elif comm is None:
            _check(_ffi.open_mpi(ctypes.c_void_p)(_world_comm(), layout_p, ctypes.byref(cfg),
                                                  ctypes.byref(handle)))
        else:
            value, ctype = _comm_handle(comm)
            _check(_ffi.open_mpi(ctype)(value, layout_p, ctypes.byref(cfg),
                                        ctypes.byref(handle)))
        self._handle = handle
        self._mapping = _Mapping(lib.cpdl_loader_mapping_retain(handle))
        self._comm = comm
        coords = MeshCoords()
        _check(lib.cpdl_loader_mesh(handle, ctypes.byref(coords)))
        self.mesh = _mesh_of(coords)
        self.config = {name: (getattr(cfg, name).decode() if isinstance(getattr(cfg, name), bytes)
                              else getattr(cfg, name))
                       for name, _ in Config._fields_ if name != "struct_size"}
        _open_loaders.add(self)
        if device is not None:
            self._feed = _prefetch.open_feed(handle, self._next_host, device, prefetch, self.mesh)

    def _live(self):
        if self._pid != os.getpid():
            raise Error(_ffi.ESTATE, "this cpdl.Loader was opened by process %d and this "
                        "process (%d) is a fork of it (a DataLoader worker, multiprocessing, "
                        "a subprocess helper): a loader belongs to the process that opened it; "
                        "use it in the parent, or open a Loader in the child"
                        % (self._pid, os.getpid()))
        if self._handle is None:
            raise Error(_ffi.ESTATE, "the loader is closed")
        return self._handle

    @property
    def segment_bytes(self):
        return int(_ffi.full().cpdl_loader_segment_bytes(self._live()))

    @property
    def memory(self):
        """The group's memory sizing (cpdl_tools_memory_t, docs/design.md "Memory sized by
        need"): slots, bytes per slot, ring, segment and collate bytes, and the formula's
        inputs, as a dict."""
        mem = _ffi.ToolsMemory(struct_size=ctypes.sizeof(_ffi.ToolsMemory))
        _check(_ffi.full().cpdl_tools_memory(self._live(), ctypes.byref(mem)))
        return {name: int(getattr(mem, name)) for name, _ in mem._fields_ if name != "struct_size"}

    @property
    def pinned(self):
        """True once this rank's region is registered with CUDA."""
        return bool(self._pinned)

    def __iter__(self):
        return self

    def __next__(self):
        if self._feed is not None:
            self._live()
            return self._feed.next()
        return self._next_host()

    def _next_host(self):
        handle = self._live()
        if self._current is not None:
            self._current.release()
        if self._exhausted:
            raise StopIteration
        cbatch = CBatch()
        rc = _ffi.full().cpdl_loader_next(handle, ctypes.byref(cbatch))
        if rc == _ffi.EEOF:
            self._exhausted = True
            raise StopIteration
        _check(rc)
        batch = Batch(self, cbatch)
        self._current = batch
        if self._pin and self._pinned is None and batch.region and batch.region_bytes:
            # The region covers every slot of this rank's shard: once is enough.
            self._pinned = batch.region if _cuda.register(batch.region, batch.region_bytes) \
                else 0
        return batch

    next = __next__

    def state_dict(self):
        """Collective: every rank must call it at the same step (as a
        trainer's checkpoint code does). Returns the WHOLE job's resume state
        — the position in the global order of rows, the same on every rank —
        as {"version": 3, "step": k, "state": "<hex>"} (JSON and torch.save
        friendly); the dict any rank returns restores every rank of a job of
        any layout (dp, cp, tp, nodes), so rank 0 alone may write the
        checkpoint. A held
        batch counts as consumed: the state starts at the step after it."""
        handle = self._live()
        if self._feed is not None:
            self._feed.check_state_save()
        lib = _ffi.full()
        need = ctypes.c_size_t(0)
        _check(lib.cpdl_loader_state_size(handle, ctypes.byref(need)))
        buf = ctypes.create_string_buffer(need.value)
        used = ctypes.c_size_t(0)
        _check(lib.cpdl_loader_state_save(handle, buf, need, ctypes.byref(used)))
        blob = buf.raw[:used.value]
        return {"version": int.from_bytes(blob[8:16], "little"),
                "step": int.from_bytes(blob[24:32], "little"),
                "state": blob.hex()}

    def load_state_dict(self, state):
        """Collective; only before the first iteration (else cpdl.Error
        CPDL_ESTATE). Every rank loads the same dict (e.g. rank 0's
        state_dict(), read from its checkpoint), under this job's layout, which
        may differ from the saving job's. A state of another stream (seq_len,
        source, seed, ...) is cpdl.Error CPDL_ECONFIG naming the key; a damaged
        state or one of another version CPDL_ESTATE (the C library judges the version
        given here, so a dict of another version is refused as such)."""
        try:
            version = operator.index(state["version"])
            blob = state.get("state")
            if isinstance(blob, str):
                blob = bytes.fromhex(blob)
            elif blob is None:
                blob = _STATE_MAGIC + bytes(8)  # a dict of another version: no blob
            else:
                blob = bytes(blob)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError("cpdl: state must be {'version': int, 'step': int, 'state': hex "
                             "str} as state_dict() returns (%s)" % (exc,)) from None
        if len(blob) >= 16 and 0 <= version < 1 << 64:
            blob = blob[:8] + version.to_bytes(8, "little") + blob[16:]
        _check(_ffi.full().cpdl_loader_state_restore(self._live(), blob, len(blob)))

    def close(self):
        """Collective. Releases the held batch, unpins, closes. Idempotent.
        In a child after fork: only drops the child's copy (no collective, the
        parent's job is untouched)."""
        if self._handle is None:
            return
        if self._pid != os.getpid():
            handle, self._handle = self._handle, None
            self._mapping = None
            self._current = None
            self._feed = None  # its thread is the parent's
            _open_loaders.discard(self)
            _ffi.full().cpdl_loader_close(handle)  # local in a child: unmaps its copy
            return
        if self._feed is not None:
            self._feed.close()  # copies in flight read the slots: wait for them
        if self._current is not None:
            try:
                self._current.release()
            except Error:
                pass
        handle, self._handle = self._handle, None
        self._mapping = None  # batches and their views keep their own reference
        _open_loaders.discard(self)
        if self._pinned:
            _cuda.unregister(self._pinned)  # before the region is unmapped
        self._pinned = None
        rc = _ffi.full().cpdl_loader_close(handle)
        if rc == _ffi.EPEER:
            global _peer_failed
            _peer_failed = True
        _check(rc)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        # Leaving the block by an exception closes out of turn: the group is
        # told (R19) and close() returns CPDL_EPEER once it knows; the
        # exception in flight is the news, not that.
        if exc_type is None:
            self.close()
            return False
        try:
            self.close()
        except Error:
            pass
        return False
