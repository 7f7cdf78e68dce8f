"""cpdl — Python binding (ctypes + numpy, no build step of its own).

shard_batch() / shard_batch_all() prepare a collated batch for context
parallelism exactly as DESIGN.md's contract says, through libcpdl.so's
cpdl_prep_* functions. The library is found at $CPDL_LIBRARY, else
<repo>/build/libcpdl.so, else other <repo>/build*/ directories, else the
system loader path; importing fails with an ImportError naming what was tried.
bfloat16 has no numpy dtype: pass its bits as uint16 with dtypes={name: "bfloat16"}.
"""
from ._lib import path as library_path
from .prep import Error, shard_batch, shard_batch_all, strerror

__version__ = "0.1.0"  # CPDL_VERSION_MAJOR.MINOR.PATCH of include/cpdl.h

__all__ = ["Error", "shard_batch", "shard_batch_all", "strerror", "library_path",
           "__version__"]

# Loader (zero-copy batches; torch via DLPack, cpdl.torch for the NeMo drop-in)
# and Source (a data source's samples). cpdl.torch is imported on demand only.
from .loader import Batch, Loader, Mesh  # noqa: E402
from .source import Source  # noqa: E402

from ._launch import coords_from_mesh, megatron_coords  # noqa: E402

__all__ += ["Batch", "Loader", "Mesh", "Source", "coords_from_mesh", "megatron_coords"]
