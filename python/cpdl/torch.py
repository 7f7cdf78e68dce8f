"""cpdl.torch — a drop-in for NeMo Automodel's Gemma4 contiguous-shard CP batch
function, computed by cpdl's C core (cpdl.shard_batch).

Owns: the translation torch <-> numpy for the contract's fields, and the
in-place rewrite of the caller's batch dict.
Invariants: only the contract's fields
(docs/design.md#batch-preparation--the-contract) go through C; every other
key — pass-through tensors, callables, flags — stays
the same object, untouched. Results are fresh writable tensors on the inputs'
device (nothing is shared with the inputs). CPU tensors go through the C core;
tensors on a GPU (as NeMo has them, after the host-to-device copy) take the
same contract in torch ops on that device: the C core's plan, built from names,
dtypes and shapes only, decides and validates (same fields, same errors), then
each output is this rank's slice plus only the padding that falls in it — no
host round trip, no padded copy of the whole batch. Both paths are bit-identical
(tests/python/test_torch_shard.py runs the torch-ops path on CPU tensors against
the C core).
"""
import contextlib

import numpy as np
import torch

from . import fields as F
from .prep import plan_fields, shard_batch



def _contract_fields():
    """docs/design.md#batch-preparation--the-contract: the vocabulary's
    per-token fields (cpdl/fields.h), attention_mask among them (consumed by
    rule 1); the per-document ones (thd's cu_seqlens, ...) pass through."""
    return tuple(f.name for f in F.table() if f.role != "documents")


_TORCH_DTYPE_NAMES = {torch.bool: "bool", torch.uint8: "uint8", torch.int32: "int32",
                      torch.int64: "int64", torch.float16: "float16",
                      torch.bfloat16: "bfloat16", torch.float32: "float32",
                      torch.float64: "float64"}


def _to_numpy(name, value):
    """(array, cpdl dtype override or None) for one CPU tensor or array."""
    if isinstance(value, torch.Tensor):
        if value.is_cuda or value.device.type != "cpu":
            raise ValueError("cpdl.torch: field '%s' is on %s; pass CPU tensors (cpdl prepares "
                             "batches in host memory: move it with .cpu() first, or shard "
                             "before the host-to-device copy)" % (name, value.device))
        value = value.detach()
        if value.dtype == torch.bfloat16:
            # numpy has no bfloat16: hand C the raw bits.
            return value.contiguous().view(torch.int16).numpy().view(np.uint16), "bfloat16"
        return value.numpy(), None
    return np.asarray(value), None


def _to_torch(array, bfloat16):
    if bfloat16:
        # torch has no uint16: reinterpret the bits as int16, then bfloat16.
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def make_contiguous_shard_cp_batch_and_ctx(cp_mesh, tp_mesh, batch, *, loss_mask=None,
                                           padding_token_id=0, extra_seq_keys=None,
                                           extra_pad_values=None, torch_ops=None):
    """Shard `batch` for this CP rank as the contract says
    (docs/design.md#batch-preparation--the-contract; NeMo Automodel's Gemma4
    make_contiguous_shard_cp_batch_and_ctx).

    cp_mesh / tp_mesh: objects with size() and get_local_rank() (torch
    DeviceMesh slices); tp_mesh None means tp_size 1. batch: dict of CPU
    tensors, changed IN PLACE: attention_mask removed, padding_mask /
    position_ids / _packed_seq_ids / loss_mask added as the contract says,
    every sequence field replaced by this rank's shard. Entries
    `_cp_metadata_seq_dims` ({name: seq_dim}) and `_cp_metadata_pad_values`
    ({name: pad}) are popped and name extra per-token fields (as do the
    extra_seq_keys / extra_pad_values keywords). Other keys are left as they
    are. Returns (contextlib.nullcontext, batch) — the class, as NeMo does.
    Tensors on a GPU stay there (the torch-ops path, see the module doc); all
    of the contract's tensors must then be on that one device. Raises
    ValueError for tensors on different devices, cpdl.Error for a batch the
    contract rejects (message from the C core). torch_ops: None picks the
    path by device; True forces the torch-ops path on CPU tensors too.
    """
    cp_size = int(cp_mesh.size())
    cp_rank = int(cp_mesh.get_local_rank())
    tp_size = int(tp_mesh.size()) if tp_mesh is not None else 1
    seq_dims = dict(batch.pop("_cp_metadata_seq_dims", None) or {})
    pad_values = dict(batch.pop("_cp_metadata_pad_values", None) or {})
    seq_dims.update(extra_seq_keys or {})
    pad_values.update(extra_pad_values or {})
    # Metadata that is not in the batch, or that is a known field, is not extra.
    contract = _contract_fields()
    seq_dims = {k: v for k, v in seq_dims.items() if k in batch and k not in contract}
    pad_values = {k: v for k, v in pad_values.items() if k in seq_dims}

    names = [n for n in list(contract) + list(seq_dims)
             if n in batch and batch[n] is not None]
    device = _device_of(batch, names, loss_mask)
    if torch_ops or (torch_ops is None and device is not None):
        return shard_with_torch_ops(cp_size, cp_rank, tp_size, batch, names, loss_mask,
                                    padding_token_id, seq_dims, pad_values)
    inputs, dtypes = {}, {}
    for name in names:
        array, override = _to_numpy(name, batch[name])
        inputs[name] = array
        if override:
            dtypes[name] = override
    mask = None
    if loss_mask is not None:
        mask, override = _to_numpy(F.LOSS_MASK, loss_mask)
        if override:
            dtypes[F.LOSS_MASK] = override
        inputs.pop(F.LOSS_MASK, None)  # the keyword wins over a batch entry

    out = shard_batch(inputs, cp_size, cp_rank, tp_size=tp_size, loss_mask=mask,
                      padding_token_id=padding_token_id, metadata_seq_dims=seq_dims,
                      metadata_pad_values=pad_values, dtypes=dtypes)
    for name in inputs:
        if name not in out:
            del batch[name]  # attention_mask (rule 1)
    if F.ATTENTION_MASK in batch and batch[F.ATTENTION_MASK] is None:
        del batch[F.ATTENTION_MASK]
    for name, array in out.items():
        batch[name] = _to_torch(array, dtypes.get(name) == "bfloat16")
    return contextlib.nullcontext, batch


def _device_of(batch, names, loss_mask):
    """None when the contract's fields are host data (the C core's path), else
    the one non-CPU device they are all on."""
    items = [(n, batch[n]) for n in names] + ([(F.LOSS_MASK, loss_mask)]
                                              if loss_mask is not None else [])
    devices = {n: v.device for n, v in items if isinstance(v, torch.Tensor)}
    if all(d.type == "cpu" for d in devices.values()):
        return None
    first = next(n for n, d in devices.items() if d.type != "cpu")
    for name, value in items:
        where = devices.get(name, "host (%s)" % type(value).__name__)
        if where != devices[first]:
            raise ValueError("cpdl.torch: field '%s' is on %s but '%s' is on %s; put every "
                             "field of the batch on one device" % (name, where, first,
                                                                   devices[first]))
    return devices[first]


def shard_with_torch_ops(cp_size, cp_rank, tp_size, batch, names, loss_mask, padding_token_id,
                         seq_dims, pad_values):
    """The contract in torch ops on the tensors' own device (the GPU path of
    make_contiguous_shard_cp_batch_and_ctx; callable on CPU tensors too, which
    is how the tests hold it to the C core). names: the contract's fields
    present in batch. Changes batch in place, returns (nullcontext, batch)."""
    inputs = {n: batch[n] for n in names}
    from_batch = list(inputs)
    if loss_mask is not None:
        from_batch = [n for n in from_batch if n != F.LOSS_MASK]  # the keyword wins
        inputs[F.LOSS_MASK] = loss_mask
    specs = {}
    for name, t in inputs.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError("cpdl.torch: field '%s' is %s; on the torch-ops path every "
                            "field must be a torch.Tensor" % (name, type(t).__name__))
        if t.dtype not in _TORCH_DTYPE_NAMES:
            raise TypeError("cpdl.torch: field '%s' has dtype %s; supported: %s"
                            % (name, t.dtype, ", ".join(_TORCH_DTYPE_NAMES.values())))
        specs[name] = (_TORCH_DTYPE_NAMES[t.dtype], tuple(t.shape))
    S, padded, fields = plan_fields(specs, cp_size, tp_size=tp_size,
                                    padding_token_id=padding_token_id,
                                    metadata_seq_dims=seq_dims, metadata_pad_values=pad_values)
    if not 0 <= cp_rank < cp_size:
        raise ValueError("cpdl.torch: cp rank %d is outside [0, %d); check cp_mesh"
                         % (cp_rank, cp_size))
    shard = _Shard(S, padded // cp_size, cp_rank)
    primary = F.INPUT_IDS if F.INPUT_IDS in inputs else F.INPUTS_EMBEDS
    B = inputs[primary].shape[0]
    out = {}
    for name, dtype, shape, seq_dim in fields:
        out[name] = _field(name, inputs, shard, seq_dim, B, primary, padding_token_id,
                           pad_values, cp_size > 1 or tp_size > 1)
        got = out[name]
        if _TORCH_DTYPE_NAMES[got.dtype] != dtype or tuple(got.shape) != shape:
            raise RuntimeError("cpdl.torch: internal: field '%s' came out %s %s, the plan says "
                               "%s %s" % (name, got.dtype, tuple(got.shape), dtype, shape))
    for name in from_batch:
        if name not in out:
            del batch[name]  # attention_mask (rule 1)
    if F.ATTENTION_MASK in batch and batch[F.ATTENTION_MASK] is None:
        del batch[F.ATTENTION_MASK]
    batch.update(out)
    return contextlib.nullcontext, batch


class _Shard:
    """This rank's window [start, start + L) of the padded sequence: `real`
    positions come from the data, the `n_pad` after them are padding."""

    def __init__(self, seq_len, shard_len, rank):
        self.S, self.L, self.start = seq_len, shard_len, rank * shard_len
        self.real = max(0, min(shard_len, seq_len - self.start))
        self.n_pad = shard_len - self.real

    def take(self, t, dim):
        return t.narrow(dim, min(self.start, self.S), self.real)

    def padded(self, piece, dim, value):
        """piece (the real part) followed by n_pad copies of value along dim."""
        if self.n_pad == 0:
            return piece.clone(memory_format=torch.contiguous_format)
        shape = list(piece.shape)
        shape[dim] = self.n_pad
        fill = torch.full(shape, value, dtype=piece.dtype, device=piece.device)
        return torch.cat([piece, fill], dim=dim)


def _pad_value(name, primary, padding_token_id, pad_values):
    if name == F.INPUT_IDS:
        return padding_token_id
    if name == F.LABELS:
        return -100
    if name == F.PADDING_MASK:
        return True
    return pad_values.get(name, 0)


def _field(name, inputs, shard, seq_dim, B, primary, padding_token_id, pad_values, synth_pos):
    """One output field of this rank (rules 1-7 of the contract)."""
    if name == F.POSITION_IDS:
        return _positions(inputs.get(F.POSITION_IDS), shard, B, inputs[primary].device)
    if name == F.PADDING_MASK and F.PADDING_MASK not in inputs:
        return shard.padded(_is_padding(inputs[F.ATTENTION_MASK], shard), 1, True)
    if name == F.PACKED_SEQ_IDS and F.PACKED_SEQ_IDS not in inputs:
        mask = inputs.get(F.PADDING_MASK)
        if mask is not None:
            real = shard.take(mask, 1) == 0
        elif F.ATTENTION_MASK in inputs:
            real = ~_is_padding(inputs[F.ATTENTION_MASK], shard)
        else:
            real = torch.ones((B, shard.real), dtype=torch.bool, device=inputs[primary].device)
        return shard.padded(real.to(torch.int64), 1, 0)
    if name == F.LABELS and F.LABELS not in inputs:
        source = inputs[F.LOSS_MASK]  # rule 4: the loss mask stands in for labels
    else:
        source = inputs[name]
    if seq_dim < 0:
        return source  # passed through whole (nothing of the contract's does today)
    return shard.padded(shard.take(source, seq_dim), seq_dim,
                        _pad_value(name, primary, padding_token_id, pad_values))


def _is_padding(attention, shard):
    """Bool [B, real]: where this rank's real positions are padding (rule 1)."""
    if attention.dim() == 2:
        return shard.take(attention, 1) == 0
    diag = shard.take(shard.take(attention[:, 0], 1), 2).diagonal(dim1=1, dim2=2)
    return ~diag if attention.dtype == torch.bool else diag != 0


def _positions(given, shard, B, device):
    """Rule 3 and rule 6's padding: given positions continue last+1, last+2, ...;
    synthesized ones are 0..S-1, so this rank's are start..start+L-1."""
    if given is None:
        return torch.arange(shard.start, shard.start + shard.L, dtype=torch.int64,
                            device=device).expand(B, shard.L).clone()
    dim = given.dim() - 1
    if given.shape[dim - 1] != B:  # [1,S] or [3,1,S]: one row for every batch row
        shape = list(given.shape)
        shape[dim - 1] = B
        given = given.expand(shape)
    piece = shard.take(given, dim)
    if shard.n_pad == 0:
        return piece.clone(memory_format=torch.contiguous_format)
    last = given.narrow(dim, shard.S - 1, 1)
    first = shard.start + shard.real - shard.S + 1
    steps = torch.arange(first, first + shard.n_pad, dtype=given.dtype, device=given.device)
    steps = steps.view([shard.n_pad if d == dim else 1 for d in range(given.dim())])
    return torch.cat([piece, last + steps], dim=dim)
