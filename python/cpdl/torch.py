"""cpdl.torch — a drop-in for NeMo Automodel's Gemma4 contiguous-shard CP batch
function, computed by cpdl's C core (cpdl.shard_batch).

Owns: the translation torch <-> numpy for the contract's fields, and the
in-place rewrite of the caller's batch dict.
Invariants: only the contract's fields (DESIGN.md "Batch preparation") go
through C; every other key — pass-through tensors, callables, flags — stays
the same object, untouched. Results are CPU tensors over a fresh writable
buffer (torch.from_numpy on memory the result owns; nothing is shared with the
inputs). Inputs must be CPU tensors: a CUDA tensor is a ValueError naming it.
"""
import contextlib

import numpy as np
import torch

from .prep import shard_batch

# DESIGN.md: the sequence fields, plus attention_mask (consumed by rule 1).
_CONTRACT_FIELDS = ("input_ids", "inputs_embeds", "mm_token_type_ids", "_packed_seq_ids",
                    "per_layer_inputs", "padding_mask", "labels", "loss_mask",
                    "position_ids", "attention_mask")


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
                                           extra_pad_values=None):
    """Shard `batch` for this CP rank as DESIGN.md's contract says (NeMo
    Automodel's Gemma4 make_contiguous_shard_cp_batch_and_ctx).

    cp_mesh / tp_mesh: objects with size() and get_local_rank() (torch
    DeviceMesh slices); tp_mesh None means tp_size 1. batch: dict of CPU
    tensors, changed IN PLACE: attention_mask removed, padding_mask /
    position_ids / _packed_seq_ids / loss_mask added as the contract says,
    every sequence field replaced by this rank's shard. Entries
    `_cp_metadata_seq_dims` ({name: seq_dim}) and `_cp_metadata_pad_values`
    ({name: pad}) are popped and name extra per-token fields (as do the
    extra_seq_keys / extra_pad_values keywords). Other keys are left as they
    are. Returns (contextlib.nullcontext, batch) — the class, as NeMo does.
    Raises ValueError for a CUDA tensor, cpdl.Error for a batch the contract
    rejects (message from the C core).
    """
    cp_size = int(cp_mesh.size())
    cp_rank = int(cp_mesh.get_local_rank())
    tp_size = int(tp_mesh.size()) if tp_mesh is not None else 1
    seq_dims = dict(batch.pop("_cp_metadata_seq_dims", None) or {})
    pad_values = dict(batch.pop("_cp_metadata_pad_values", None) or {})
    seq_dims.update(extra_seq_keys or {})
    pad_values.update(extra_pad_values or {})
    # Metadata that is not in the batch, or that is a known field, is not extra.
    seq_dims = {k: v for k, v in seq_dims.items() if k in batch and k not in _CONTRACT_FIELDS}
    pad_values = {k: v for k, v in pad_values.items() if k in seq_dims}

    inputs, dtypes = {}, {}
    for name in list(_CONTRACT_FIELDS) + list(seq_dims):
        if name in batch and batch[name] is not None:
            array, override = _to_numpy(name, batch[name])
            inputs[name] = array
            if override:
                dtypes[name] = override
    mask = None
    if loss_mask is not None:
        mask, override = _to_numpy("loss_mask", loss_mask)
        if override:
            dtypes["loss_mask"] = override
        inputs.pop("loss_mask", None)  # the keyword wins over a batch entry

    out = shard_batch(inputs, cp_size, cp_rank, tp_size=tp_size, loss_mask=mask,
                      padding_token_id=padding_token_id, metadata_seq_dims=seq_dims,
                      metadata_pad_values=pad_values, dtypes=dtypes)
    for name in inputs:
        if name not in out:
            del batch[name]  # attention_mask (rule 1)
    if "attention_mask" in batch and batch["attention_mask"] is None:
        del batch["attention_mask"]
    for name, array in out.items():
        batch[name] = _to_torch(array, dtypes.get(name) == "bfloat16")
    return contextlib.nullcontext, batch
