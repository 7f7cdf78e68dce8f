"""source — cpdl.Source(uri): a data source's samples as read-only numpy arrays.

Owns: the lifetime of the C handle (the cpdl_source_* signatures are _ffi's;
the calls go to libcpdl.so, loaded by the first Source).
Invariant: the C handle is closed only when the Source is closed AND no array
viewing it is alive (each view's base chain holds the _Handle), so a view of an
mmap-backed sample (llmc, megatron) never outlives its mapping. Sources whose
sample memory is reused by the next read (synthetic, the rest) return copies.
"""
import ctypes
import threading

import numpy as np

from . import _ffi
from ._ffi import Error


def _check(rc):
    """Error for a failed call into libcpdl.so, with its message."""
    _ffi._check(rc, _ffi.full())


_TOKEN_DTYPES = {2: np.dtype(np.uint16), 4: np.dtype(np.uint32), 8: np.dtype(np.int64)}
# Plugins whose samples are views of a file mapping valid until close
# (cpdl/source.h, cpdl_source_read).
_MAPPED = {"llmc", "megatron"}


# Which of the loader's seq_len/seed each scheme takes. The loader passes its
# own through the plugin ABI (cpdl_source_params_t); cpdl_source_open passes
# none, so this binding adds them to the URI, where a plugin reads them alike.
_TAKES = {"gpt": ("seq_len", "seed"), "synthetic": ("seed",)}


def _has_key(uri, key):
    query = uri.split("?", 1)[1] if "?" in uri else ""
    return any(part.split("=", 1)[0] == key for part in query.split("&") if part)


class _Handle:
    """Owns the cpdl_source_t*; closes it when the last reference goes."""

    def __init__(self, pointer):
        self.pointer = pointer
        self._lib = _ffi.full()  # held: module globals may be gone at exit

    def __del__(self):
        if self.pointer:
            self._lib.cpdl_source_close(self.pointer)
            self.pointer = None


class Source:
    """A data source opened from a URI ("synthetic:?seed=1", "llmc:/data/x.bin",
    "megatron:/data/corpus_text_document", "gpt:0.3,/data/a,0.7,/data/b?num_samples=K",
    ...); seq_len= and seed= are added to the URI's query when it lacks them and
    the source takes them, as the loader passes its own (gpt: both, synthetic:
    seed); other sources do not depend on them and are opened as given.
    len() is the sample count; source[i] is sample i's tokens as a read-only
    1-D numpy array (uint16, uint32 or int64 as the file stores them; gpt:
    gives Megatron's seq_len + 1 int64 tokens): a zero-copy view of the
    mapped file for llmc and megatron, a copy otherwise. Views stay valid after
    close(): the mapping lives until the last view is gone.
    Pre-collated sources (npy) have no token samples: indexing raises."""

    def __init__(self, uri, seq_len=None, seed=None):
        uri = str(uri)
        # seq_len= and seed= join the query when it lacks them, as the loader
        # passes its own (the gpt: source needs both: Megatron's --seq-length
        # and --seed).
        scheme = uri.split(":", 1)[0]
        takes = _TAKES.get(scheme, ())
        extra = ["%s=%d" % (key, int(value)) for key, value in
                 (("seq_len", seq_len), ("seed", seed)) if value is not None
                 and key in takes and not _has_key(uri, key)]
        if extra:
            uri += ("&" if "?" in uri else "?") + "&".join(extra)
        lib = _ffi.full()
        self._lib = lib
        pointer = ctypes.c_void_p()
        _check(lib.cpdl_source_open(str(uri).encode(), ctypes.byref(pointer)))
        self._handle = _Handle(pointer.value)
        self.uri = str(uri)
        self.name = lib.cpdl_source_name(pointer).decode()
        self._lock = threading.Lock()  # reads may reuse the plugin's buffer

    def _ptr(self):
        if self._handle is None:
            raise Error(_ffi.ESTATE, "source %s is closed" % self.uri)
        return self._handle.pointer

    def __len__(self):
        n = self._lib.cpdl_source_count(self._ptr())
        if n < 0:
            raise Error(n, self._lib.last_error())
        return int(n)

    @property
    def eot(self):
        """End-of-text token id, or -1."""
        return int(self._lib.cpdl_source_eot(self._ptr()))

    @property
    def document_count(self):
        return int(self._lib.cpdl_source_document_count(self._ptr()))

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("cpdl: sample %d out of range for %s (%d samples)"
                             % (index, self.uri, n))
        tokens = ctypes.c_void_p()
        count = ctypes.c_int64()
        width = ctypes.c_int()
        with self._lock:
            _check(self._lib.cpdl_source_read(self._ptr(), index, ctypes.byref(tokens),
                                        ctypes.byref(count), ctypes.byref(width)))
            dtype = _TOKEN_DTYPES.get(width.value)
            if dtype is None:
                raise Error(_ffi.EPLUGIN, "source %s returned %d-byte tokens"
                            % (self.uri, width.value))
            nbytes = count.value * dtype.itemsize
            if nbytes == 0:
                array = np.empty(0, dtype)
                array.flags.writeable = False
                return array
            raw = (ctypes.c_char * nbytes).from_address(tokens.value)
            if self.name not in _MAPPED:
                array = np.frombuffer(bytes(raw), dtype)  # immutable bytes: read-only
                return array
            raw.cpdl_source = self._handle  # base chain keeps the mapping alive
            return np.frombuffer(memoryview(raw).toreadonly(), dtype)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def close(self):
        """Drop this object's hold on the source; the C handle closes once no
        view of it is left."""
        self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return "<cpdl.Source %s (%s)>" % (self.uri, self.name)
