"""prep — shard_batch()/shard_batch_all(): the batch-preparation contract
(docs/design.md#batch-preparation--the-contract) through
cpdl_prep_plan_create + cpdl_prep_execute.

Invariants: the caller's arrays are never written (C only reads them; copies
are made only to get C-contiguous, native-endian memory); every output array
is a view into one numpy uint8 buffer allocated here, 64-byte aligned, so the
plan's 64-byte field offsets stay aligned; the plan is destroyed on every path.
"""
import ctypes
from collections.abc import Mapping
import operator

import numpy as np

from . import _ffi
from . import fields as F
from ._ffi import Error, strerror  # noqa: F401 (cpdl.prep.Error, cpdl.prep.strerror)

_NUMPY_TO_CPDL = {
    np.dtype(np.bool_): _ffi.DTYPE_BOOL,
    np.dtype(np.uint8): _ffi.DTYPE_UINT8,
    np.dtype(np.int32): _ffi.DTYPE_INT32,
    np.dtype(np.int64): _ffi.DTYPE_INT64,
    np.dtype(np.float16): _ffi.DTYPE_FLOAT16,
    np.dtype(np.float32): _ffi.DTYPE_FLOAT32,
    np.dtype(np.float64): _ffi.DTYPE_FLOAT64,
}
# numpy has no bfloat16: its raw bits travel as uint16 (see shard_batch's dtypes=).
_CPDL_TO_NUMPY = {v: k for k, v in _NUMPY_TO_CPDL.items()}
_CPDL_TO_NUMPY[_ffi.DTYPE_BFLOAT16] = np.dtype(np.uint16)
_CPDL_DTYPE_BY_NAME = {"bool": _ffi.DTYPE_BOOL, "uint8": _ffi.DTYPE_UINT8,
                       "int32": _ffi.DTYPE_INT32, "int64": _ffi.DTYPE_INT64,
                       "float16": _ffi.DTYPE_FLOAT16, "bfloat16": _ffi.DTYPE_BFLOAT16,
                       "float32": _ffi.DTYPE_FLOAT32, "float64": _ffi.DTYPE_FLOAT64}

_ALIGN = 64

def _check(rc):
    """Error for a failed call into the prep library, with its message."""
    _ffi._check(rc, _ffi.prep())


class _Inputs:
    """The input fields as a cpdl_tensor_t array; keeps the arrays and name
    bytes alive as long as the C side may look at them."""

    def __init__(self, batch, loss_mask, dtypes):
        if not isinstance(batch, Mapping):
            raise TypeError("cpdl: batch must be a dict of numpy arrays, got %s"
                            % type(batch).__name__)
        items = list(batch.items())
        if loss_mask is not None:
            if F.LOSS_MASK in batch:
                raise ValueError("cpdl: loss_mask given both in the batch and as keyword; "
                                 "pass it once")
            items.append((F.LOSS_MASK, loss_mask))
        dtypes = dict(dtypes or {})
        names = {name for name, _ in items}
        for name in dtypes:
            if name not in names:
                raise ValueError("cpdl: dtypes names '%s', which is not a field of the batch"
                                 % name)
        lib = _ffi.prep()
        self.arrays = []
        self.names = []
        self.tensors = (_ffi.Tensor * max(len(items), 1))()
        self.count = len(items)
        for i, (name, value) in enumerate(items):
            if not isinstance(name, str):
                raise TypeError("cpdl: field names must be str, got %r" % (name,))
            array = np.asarray(value)
            if not array.dtype.isnative:
                array = array.astype(array.dtype.newbyteorder("="))
            if not array.flags.c_contiguous:
                array = np.ascontiguousarray(array)
            if name in dtypes:
                code = _CPDL_DTYPE_BY_NAME.get(dtypes[name])
                if code is None:
                    raise ValueError("cpdl: dtypes['%s'] = %r is not a cpdl dtype (%s)"
                                     % (name, dtypes[name], ", ".join(_CPDL_DTYPE_BY_NAME)))
                if array.dtype.itemsize != lib.cpdl_dtype_size(code):
                    raise ValueError("cpdl: field '%s' is %s (%d bytes) but dtypes says %s"
                                     % (name, array.dtype, array.dtype.itemsize, dtypes[name]))
            else:
                code = _NUMPY_TO_CPDL.get(array.dtype)
                if code is None:
                    raise TypeError(
                        "cpdl: field '%s' has dtype %s; supported: bool, uint8, int32, int64, "
                        "float16, float32, float64 (bfloat16 as uint16 with dtypes={'%s': "
                        "'bfloat16'})" % (name, array.dtype, name))
            if array.ndim > _ffi.CPDL_MAX_DIMS:
                raise ValueError("cpdl: field '%s' has %d dimensions; at most %d are supported"
                                 % (name, array.ndim, _ffi.CPDL_MAX_DIMS))
            encoded = name.encode()
            t = self.tensors[i]
            t.name = encoded
            t.dtype = code
            t.ndim = array.ndim
            for d, extent in enumerate(array.shape):
                t.shape[d] = extent
            t.data = array.ctypes.data
            self.arrays.append(array)
            self.names.append(encoded)


def _params(cp_size, tp_size, mode, padding_token_id, metadata_seq_dims, metadata_pad_values):
    lib = _ffi.prep()
    params = _ffi.PrepParams()
    lib.cpdl_prep_params_init(ctypes.byref(params))
    params.struct_size = ctypes.sizeof(_ffi.PrepParams)
    params.cp_size = operator.index(cp_size)
    params.tp_size = operator.index(tp_size)
    if isinstance(mode, str):
        parsed = ctypes.c_int()
        _check(lib.cpdl_mode_parse(mode.encode(), ctypes.byref(parsed)))
        params.mode = parsed.value
    else:
        params.mode = operator.index(mode)
    params.padding_token_id = operator.index(padding_token_id)
    seq_dims = dict(metadata_seq_dims or {})
    pad_values = dict(metadata_pad_values or {})
    for name in pad_values:
        if name not in seq_dims:
            raise ValueError("cpdl: metadata_pad_values names '%s' but metadata_seq_dims "
                             "does not; give its sequence dimension there" % name)
    keep = []
    if seq_dims:
        meta = (_ffi.MetadataField * len(seq_dims))()
        for i, (name, seq_dim) in enumerate(seq_dims.items()):
            encoded = name.encode()
            keep.append(encoded)
            meta[i].name = encoded
            meta[i].seq_dim = operator.index(seq_dim)
            meta[i].pad_value = float(pad_values.get(name, 0.0))
        keep.append(meta)
        params.metadata = meta
        params.n_metadata = len(seq_dims)
    return params, keep


def _prepare(batch, cp_size, cp_ranks, tp_size, loss_mask, padding_token_id,
             metadata_seq_dims, metadata_pad_values, mode, dtypes):
    """One plan, one execute for cp_ranks. Returns (per-rank dicts, the buffer,
    {name: view} of the shared fields)."""
    lib = _ffi.prep()
    inputs = _Inputs(batch, loss_mask, dtypes)
    params, keep_alive = _params(cp_size, tp_size, mode, padding_token_id,
                                 metadata_seq_dims, metadata_pad_values)
    plan = ctypes.c_void_p()
    _check(lib.cpdl_prep_plan_create(inputs.tensors, inputs.count, ctypes.byref(params),
                                     ctypes.byref(plan)))
    try:
        rank_bytes = lib.cpdl_prep_plan_rank_bytes(plan)
        shared_bytes = lib.cpdl_prep_plan_shared_bytes(plan)
        fields = []
        for i in range(lib.cpdl_prep_plan_nfields(plan)):
            f = lib.cpdl_prep_plan_field(plan, i).contents
            dtype = _CPDL_TO_NUMPY.get(f.dtype)
            if dtype is None:
                raise RuntimeError("cpdl: plan field %d has unknown dtype %d" % (i, f.dtype))
            shape = tuple(f.shape[d] for d in range(f.ndim))
            block = shared_bytes if f.shared else rank_bytes
            want = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if f.nbytes != want or f.offset + f.nbytes > block:
                raise RuntimeError("cpdl: plan field '%s' is inconsistent (offset %d, nbytes %d,"
                                   " shape %s, block %d)" % (f.name.decode(), f.offset, f.nbytes,
                                                            shape, block))
            fields.append((f.name.decode(), dtype, shape, bool(f.shared), f.offset))

        n = len(cp_ranks)
        total = n * rank_bytes + shared_bytes
        raw = np.empty(total + _ALIGN, dtype=np.uint8)
        start = (-raw.ctypes.data) % _ALIGN
        rank_ptrs = (ctypes.c_void_p * n)(*[raw.ctypes.data + start + k * rank_bytes
                                            for k in range(n)])
        shared_at = start + n * rank_bytes
        ranks = (ctypes.c_int * n)(*[operator.index(r) for r in cp_ranks])
        shared_ptr = raw.ctypes.data + shared_at if shared_bytes else None
        _check(lib.cpdl_prep_execute(plan, inputs.tensors, inputs.count, ranks, n,
                                     rank_ptrs, shared_ptr))
    finally:
        lib.cpdl_prep_plan_destroy(plan)
    # inputs and keep_alive (names, metadata array) had to outlive the C calls.
    del inputs, keep_alive

    shared_views = {}
    for name, dtype, shape, shared, offset in fields:
        if shared:
            view = np.ndarray(shape, dtype, buffer=raw, offset=shared_at + offset)
            shared_views[name] = view
    out = []
    for k in range(n):
        d = {}
        for name, dtype, shape, shared, offset in fields:
            if shared:
                d[name] = shared_views[name]
            else:
                d[name] = np.ndarray(shape, dtype, buffer=raw,
                                     offset=start + k * rank_bytes + offset)
        out.append(d)
    return out, raw, shared_views


def shard_batch(batch, cp_size, cp_rank, *, tp_size=1, loss_mask=None, padding_token_id=0,
                metadata_seq_dims=None, metadata_pad_values=None, mode="contiguous",
                dtypes=None):
    """Prepare one CP rank's part of a collated batch
    (docs/design.md#batch-preparation--the-contract, rules 1-7).

    batch: dict name -> numpy array, not modified. loss_mask: optional, passed
    to C as the field "loss_mask". metadata_seq_dims: {name: seq_dim} of extra
    per-token fields; metadata_pad_values: {name: pad value} (default 0).
    mode: "contiguous", "round_robin", "aux_only" or "thd" (docs/thd.md; the
    batch carries cu_seqlens_padded). dtypes: {name: cpdl dtype name}
    overrides, e.g. {"inputs_embeds": "bfloat16"} for bfloat16 bits held
    in a uint16 array (outputs of that field are uint16 arrays too).

    Returns {name: array} for rank cp_rank: the sequence fields' shards and the
    whole pass-through fields. The arrays are views into one buffer made for
    this call. Raises cpdl.Error (e.g. CPDL_EFIELD) with the library's message.
    """
    out, _, _ = _prepare(batch, cp_size, [cp_rank], tp_size, loss_mask, padding_token_id,
                         metadata_seq_dims, metadata_pad_values, mode, dtypes)
    return out[0]


def shard_batch_all(batch, cp_size, *, tp_size=1, loss_mask=None, padding_token_id=0,
                    metadata_seq_dims=None, metadata_pad_values=None, mode="contiguous",
                    dtypes=None):
    """Every CP rank's dict (index = cp_rank) from one preparation pass.

    All arrays are views into one buffer laid out as the loader's shared
    memory is: cp blocks of rank_bytes, then the shared block. Shared fields
    (pass-through fields, the aux_only primary) are the same read-only array
    object in every rank's dict. Arguments as shard_batch().
    """
    cp = operator.index(cp_size)
    # For cp < 1 the plan is refused before any rank is used; the library
    # phrases that error.
    ranks = list(range(cp)) if cp >= 1 else [0]
    out, _, shared_views = _prepare(batch, cp, ranks, tp_size, loss_mask,
                                    padding_token_id, metadata_seq_dims, metadata_pad_values,
                                    mode, dtypes)
    for view in shared_views.values():
        view.flags.writeable = False
    return out


def plan_fields(specs, cp_size, *, tp_size=1, padding_token_id=0, metadata_seq_dims=None,
                metadata_pad_values=None, mode="contiguous"):
    """What the contract makes of a batch, from names, dtypes and shapes alone
    (no data is read): the C core's plan, for callers that execute it
    themselves (cpdl.torch on GPU tensors).

    specs: {name: (cpdl dtype name, shape)}; a loss mask is the entry
    "loss_mask". Returns (seq_len, padded_len, [(name, dtype name, shape,
    seq_dim)]) — shape as one CP rank sees it, seq_dim -1 for a field passed
    through whole. Raises cpdl.Error with the library's message for a batch
    the contract rejects, exactly as shard_batch() would.
    """
    lib = _ffi.prep()
    items = list(specs.items())
    tensors = (_ffi.Tensor * max(len(items), 1))()
    names = []
    for i, (name, (dtype, shape)) in enumerate(items):
        code = _CPDL_DTYPE_BY_NAME.get(dtype)
        if code is None:
            raise TypeError("cpdl: field '%s' has dtype %s; supported: %s"
                            % (name, dtype, ", ".join(_CPDL_DTYPE_BY_NAME)))
        if len(shape) > _ffi.CPDL_MAX_DIMS:
            raise ValueError("cpdl: field '%s' has %d dimensions; at most %d are supported"
                             % (name, len(shape), _ffi.CPDL_MAX_DIMS))
        names.append(name.encode())
        t = tensors[i]
        t.name = names[-1]
        t.dtype = code
        t.ndim = len(shape)
        for d, extent in enumerate(shape):
            t.shape[d] = int(extent)
        t.data = None
    params, keep_alive = _params(cp_size, tp_size, mode, padding_token_id,
                                 metadata_seq_dims, metadata_pad_values)
    plan = ctypes.c_void_p()
    _check(lib.cpdl_prep_plan_create(tensors, len(items), ctypes.byref(params),
                                     ctypes.byref(plan)))
    try:
        by_code = {v: k for k, v in _CPDL_DTYPE_BY_NAME.items()}
        fields = []
        for i in range(lib.cpdl_prep_plan_nfields(plan)):
            f = lib.cpdl_prep_plan_field(plan, i).contents
            fields.append((f.name.decode(), by_code[f.dtype],
                           tuple(f.shape[d] for d in range(f.ndim)), int(f.seq_dim)))
        seq_len = int(lib.cpdl_prep_plan_seq_len(plan))
        padded = int(lib.cpdl_prep_plan_padded_len(plan))
    finally:
        lib.cpdl_prep_plan_destroy(plan)
    del names, keep_alive
    return seq_len, padded, fields
