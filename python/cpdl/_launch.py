"""_launch — which control plane a Loader uses, and the torch.distributed one.

Owns: TorchOOB, a cpdl_oob_t (mirrored in _ffi) whose allgather is
torch.distributed.all_gather(async_op=True) on
a gloo group (CPU tensors); the launcher detection that picks MPI or
torch.distributed and refuses a silent world of one; the trainer's layout from
coords=, a DeviceMesh or Megatron-core's parallel_state.
Invariants: a request's tensors stay referenced until req_free (or forever if
cpdl abandons it after a peer died); callbacks never raise into C (an
exception becomes CPDL_EMPI and is kept for the error message).
"""
import ctypes
import os

from . import _ffi
from ._ffi import OOB_INPROGRESS, OOB_OK, Error, Layout, Oob


# ---- torch.distributed as the control plane -----------------------------------

class TorchOOB:
    """A cpdl_oob_t over a torch.distributed group; gloo is required (CPU
    tensors): with another backend a gloo group of the same ranks is made
    (collective over the default group, as torch's new_group always is)."""

    def __init__(self, group=None):
        import torch
        import torch.distributed as dist
        self._torch, self._dist = torch, dist
        if group is None:
            group = dist.group.WORLD
        if dist.get_backend(group) != "gloo":
            ranks = None if group is dist.group.WORLD else dist.get_process_group_ranks(group)
            group = dist.new_group(ranks=ranks, backend="gloo")
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self._requests = {}
        self._next_id = 1
        self.error = None
        self._failed = _ffi.EMPI  # what a callback returns when torch raised
        self._callbacks = (_ffi.OOB_ALLGATHER(self._allgather), _ffi.OOB_REQ(self._req_test),
                           _ffi.OOB_REQ(self._req_free))
        self.struct = Oob(ctypes.sizeof(Oob), *self._callbacks, None, self.size, self.rank)

    def _allgather(self, sbuf, rbuf, msglen, _info, req):
        try:
            torch = self._torch
            n = max(int(msglen), 1)  # gloo wants non-empty tensors
            mine = torch.zeros(n, dtype=torch.uint8)
            if msglen:
                ctypes.memmove(mine.data_ptr(), sbuf, msglen)
            out = [torch.empty(n, dtype=torch.uint8) for _ in range(self.size)]
            work = self._dist.all_gather(out, mine, group=self.group, async_op=True)
            key = self._next_id
            self._next_id += 1
            self._requests[key] = (work, mine, out, rbuf, int(msglen))
            req[0] = key
            return OOB_OK
        except Exception as exc:  # never into C
            self.error = exc
            return self._failed

    def _req_test(self, key):
        try:
            work, _, out, rbuf, msglen = self._requests[key]
            if not work.is_completed():
                return OOB_INPROGRESS
            work.wait()  # raises what the collective failed with
            for i, tensor in enumerate(out):
                if msglen:
                    ctypes.memmove(rbuf + i * msglen, tensor.data_ptr(), msglen)
            return OOB_OK
        except Exception as exc:
            self.error = exc
            return self._failed

    def _req_free(self, key):
        self._requests.pop(key, None)
        return OOB_OK


# ---- which launcher -----------------------------------------------------------

_SIZE_VARS = ("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE",
              "PALS_SIZE")


def launcher_world():
    """(name of the variable, size) of the first launcher variable that says
    the job has more than one process, or (None, 1)."""
    for var in _SIZE_VARS:
        text = os.environ.get(var, "")
        try:
            size = int(text)
        except ValueError:
            continue
        if size > 1:
            return var, size
    return None, 1


def srun_without_pmi():
    """True in a task of srun that has no PMI/PMIx server (srun without
    --mpi=pmix): MPI cannot see the other tasks there."""
    env = os.environ
    return "SLURM_STEP_ID" in env and not any(
        v in env for v in ("PMIX_RANK", "PMI_RANK", "PMI_FD", "OMPI_COMM_WORLD_SIZE"))


def torchrun_env():
    """True when the environment is torchrun's (or torchrun-style)."""
    env = os.environ
    return ("TORCHELASTIC_RUN_ID" in env or "LOCAL_RANK" in env) and "RANK" in env \
        and "WORLD_SIZE" in env


def _launcher_text():
    env = os.environ
    names = [v for v in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID",
                         "SLURM_NTASKS", "SLURM_PROCID", "OMPI_COMM_WORLD_SIZE", "MASTER_ADDR",
                         "MASTER_PORT") if v in env]
    return " ".join("%s=%s" % (v, env[v]) for v in names)


def torch_ready():
    """'initialized', 'initializable' (env:// can rendezvous) or None."""
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    if not dist.is_available():
        return None
    if dist.is_initialized():
        return "initialized"
    env = os.environ
    if all(env.get(v) for v in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")):
        return "initializable"
    return None


def torch_oob(process_group=None):
    """A TorchOOB, initializing torch.distributed (gloo, env://) if needed."""
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return TorchOOB(process_group)


def refuse_world_of_one(var, size, why):
    """Raise on every process: the launcher says `size` processes, cpdl cannot
    reach them."""
    launcher = ("torchrun" if torchrun_env() else "Slurm (srun)" if var == "SLURM_NTASKS"
                else "an MPI launcher" if var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE")
                else "a launcher")
    raise Error(_ffi.EMESH, "cpdl: launched by %s for %d processes (%s) but %s; cpdl will not "
                "run as a world of one. Fix: call torch.distributed.init_process_group() before "
                "cpdl.Loader (torchrun sets MASTER_ADDR/MASTER_PORT for it), pass "
                "process_group= or comm=, or launch with mpirun / srun --mpi=pmix"
                % (launcher, size, _launcher_text() or var, why))


# ---- the trainer's layout -----------------------------------------------------

_AXES = ("dp", "cp", "tp")


def _pair(value, axis):
    try:
        rank, size = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError("cpdl: coords[%r] must be (rank, size), got %r" % (axis, value)) from None
    if size < 1 or not 0 <= rank < size:
        raise ValueError("cpdl: coords[%r] = (%d, %d) is not a rank of a dimension of that size"
                         % (axis, rank, size))
    return rank, size


def layout_from_coords(coords):
    """{"dp": (rank, size), "cp": ..., "tp": ..., "pp": ...} -> Layout; a
    missing axis is (0, 1)."""
    unknown = set(coords) - set(_AXES) - {"pp"}
    if unknown:
        raise ValueError("cpdl: coords has unknown dimensions %s (use dp, cp, tp; pp must be 1)"
                         % sorted(unknown))
    values = {axis: _pair(coords.get(axis, (0, 1)), axis) for axis in _AXES + ("pp",)}
    layout = Layout(ctypes.sizeof(Layout))
    for axis, (rank, size) in values.items():
        setattr(layout, axis + "_rank", rank)
        setattr(layout, axis + "_size", size)
    return layout


def coords_from_mesh(mesh, dims=None):
    """cpdl coords from a DeviceMesh (or any object with mesh_dim_names,
    get_local_rank(mesh_dim=name) and size(mesh_dim=name)). dims maps each
    cpdl axis to a mesh dimension name, or a tuple of names flattened slowest
    first (e.g. {"dp": ("dp_replicate", "dp_shard")}); by default each axis
    whose name is a mesh dimension. A pp dimension of size > 1 is refused by
    the library."""
    names = tuple(getattr(mesh, "mesh_dim_names", None) or ())
    if dims is None:
        dims = {axis: axis for axis in _AXES + ("pp",) if axis in names}
    coords = {}
    for axis, dim in dims.items():
        parts = (dim,) if isinstance(dim, str) else tuple(dim)
        rank, size = 0, 1
        for part in parts:
            if part not in names:
                raise ValueError("cpdl: dims[%r] names mesh dimension %r, but the mesh has %s"
                                 % (axis, part, list(names)))
            r, s = int(mesh.get_local_rank(mesh_dim=part)), int(mesh.size(mesh_dim=part))
            rank, size = rank * s + r, size * s
        coords[axis] = (rank, size)
    return coords


def megatron_coords():
    """cpdl coords from Megatron-core's parallel_state (initialized by the
    trainer): data-, context- and tensor-parallel rank and size; None when
    megatron.core is not importable or not initialized."""
    try:
        from megatron.core import parallel_state as ps
    except ImportError:
        return None
    if not ps.model_parallel_is_initialized():
        return None
    coords = {
        "dp": (ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()),
        "cp": (ps.get_context_parallel_rank(), ps.get_context_parallel_world_size()),
        "tp": (ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()),
    }
    pp = ps.get_pipeline_model_parallel_world_size()
    if pp > 1:
        coords["pp"] = (ps.get_pipeline_model_parallel_rank(), pp)
    return coords
