"""cpdl — Python binding (ctypes + numpy, no build step of its own).

shard_batch() / shard_batch_all() prepare a collated batch for context
parallelism exactly as the contract says
(docs/design.md#batch-preparation--the-contract), through the cpdl_prep_*
functions of libcpdl_prep.so (the MPI-free layer: libmpi is not loaded for
them; a build without it serves them from libcpdl.so). Loader and Source use
libcpdl.so, loaded with libmpi by the first of them. Importing loads neither
library; it fails with an ImportError naming what was tried when no library
can be found. The search (cpdl/_ffi.py): $CPDL_LIBRARY (with
$CPDL_PREP_LIBRARY, else libcpdl_prep.so beside it), else the copy `pip
install .` put in cpdl/_native/, else <repo>/build/, else other <repo>/build*/
directories, else the system loader path.
bfloat16 has no numpy dtype: pass its bits as uint16 with dtypes={name: "bfloat16"}.
"""
from . import _ffi
from .prep import Error, shard_batch, shard_batch_all, strerror

_ffi.check_findable()

__all__ = ["Error", "shard_batch", "shard_batch_all", "strerror", "library_path",
           "__version__"]

# Loader (zero-copy batches; torch via DLPack, cpdl.torch for the NeMo drop-in)
# and Source (a data source's samples). cpdl.torch is imported on demand only.
from .loader import Batch, Loader, Mesh  # noqa: E402
from .source import Source  # noqa: E402

from ._launch import coords_from_mesh, megatron_coords  # noqa: E402

__all__ += ["Batch", "Loader", "Mesh", "Source", "coords_from_mesh", "megatron_coords"]


def __getattr__(name):
    # library_path: where libcpdl.so was loaded from (asking loads it, and libmpi).
    if name == "library_path":
        return _ffi.full().path
    # __version__: the library's cpdl_version() (CMake's project(VERSION), the one
    # place it is written); asking loads the MPI-free prep library only.
    if name == "__version__":
        return _ffi.prep().cpdl_version().decode()
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
