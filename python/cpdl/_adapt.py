"""_adapt — what the framework adapters (cpdl.nemo, cpdl.megatron,
cpdl.torchtitan) share: torch tensors through cpdl's batch preparation
(docs/design.md#batch-preparation--the-contract) on their own device, the
global position of each local token for every layout, and small torch
helpers.

Invariants: the C core decides every output (fields, shapes, pads, errors);
this module only converts. CPU tensors go through cpdl.shard_batch (one
preparation pass for the ranks asked); CUDA tensors take cpdl.torch's
torch-ops path in contiguous mode (no host round trip) and a host round trip
otherwise. Outputs are fresh tensors on the inputs' device.
"""
import numpy as np
import torch

from . import prep
from . import fields as F
from .loader import Batch
from .torch import _to_numpy, _to_torch, shard_with_torch_ops

# Tests set this to run the GPU path (cpdl.torch's torch ops) on CPU tensors.
_TORCH_OPS_ON_CPU = False


def shard_tensors(fields, cp_size, cp_ranks, *, mode="contiguous", padding_token_id=0,
                  metadata=None):
    """{name: tensor} -> [{name: tensor}] for each CP rank in cp_ranks.

    fields: the batch fields that go through the contract (a loss mask is the
    entry "loss_mask"); metadata: {name: (seq_dim, pad value)} of fields the
    contract does not know. Raises cpdl.Error (the core's message) for a batch
    the contract rejects."""
    metadata = dict(metadata or {})
    seq_dims = {name: dim for name, (dim, _) in metadata.items()}
    pad_values = {name: pad for name, (_, pad) in metadata.items()}
    devices = {t.device for t in fields.values() if isinstance(t, torch.Tensor)}
    if len(devices) > 1:
        raise ValueError("cpdl: the batch's fields are on %s; put them on one device"
                         % sorted(str(d) for d in devices))
    device = devices.pop() if devices else torch.device("cpu")
    if (device.type != "cpu" or _TORCH_OPS_ON_CPU) and mode == "contiguous":
        out = []
        for rank in cp_ranks:
            batch = dict(fields)
            loss_mask = batch.pop(F.LOSS_MASK, None)
            shard_with_torch_ops(cp_size, rank, 1, batch, list(batch), loss_mask,
                                 padding_token_id, seq_dims, pad_values)
            out.append(batch)
        return out
    arrays, dtypes = {}, {}
    for name, value in fields.items():
        if isinstance(value, torch.Tensor) and value.device.type != "cpu":
            value = value.cpu()  # the host round trip of non-contiguous modes on a GPU
        array, override = _to_numpy(name, value)
        arrays[name] = array
        if override:
            dtypes[name] = override
    per_rank, _, _ = prep._prepare(arrays, cp_size, list(cp_ranks), 1, None, padding_token_id,
                                   seq_dims, pad_values, mode, dtypes)
    out = []
    for arrays_of_rank in per_rank:
        tensors = {}
        for name, array in arrays_of_rank.items():
            # Each rank's arrays view one fresh buffer; copy only what several
            # ranks share (the shared block) so every tensor is its own.
            t = _to_torch(np.array(array) if len(cp_ranks) > 1 else array,
                          dtypes.get(name) == "bfloat16")
            tensors[name] = t.to(device) if device.type != "cpu" else t
        out.append(tensors)
    return out


def padded_len(seq_len, multiple):
    return -(-seq_len // multiple) * multiple


def contiguous_indices(cp_size, cp_rank, padded_seq_len, device=None):
    """Rank r's global positions: [r*L, (r+1)*L), L = padded/cp."""
    if padded_seq_len % cp_size:
        raise ValueError("cpdl: padded_seq_len %d is not a multiple of cp_size %d"
                         % (padded_seq_len, cp_size))
    length = padded_seq_len // cp_size
    return torch.arange(cp_rank * length, (cp_rank + 1) * length, dtype=torch.long,
                        device=device)


def round_robin_indices(cp_size, cp_rank, padded_seq_len, device=None):
    """Chunks r and 2*cp-1-r of 2*cp equal chunks, in that order (head-tail)."""
    if padded_seq_len % (2 * cp_size):
        raise ValueError("cpdl: padded_seq_len %d is not a multiple of 2*cp_size = %d"
                         % (padded_seq_len, 2 * cp_size))
    chunk = padded_seq_len // (2 * cp_size)
    tail = 2 * cp_size - 1 - cp_rank
    return torch.cat([torch.arange(cp_rank * chunk, (cp_rank + 1) * chunk, dtype=torch.long),
                      torch.arange(tail * chunk, (tail + 1) * chunk, dtype=torch.long)]
                     ).to(device)


def thd_indices(cu_seqlens_padded, total_tokens, cp_size, cp_rank, device=None):
    """TransformerEngine's thd_get_partitioned_indices (int32, as TE returns
    it): per document of cu_seqlens_padded, chunk r then chunk 2*cp-1-r of
    its 2*cp chunks, documents in order. Every boundary must be a multiple
    of 2*cp and the last one total_tokens (a tail repeating it is allowed)."""
    cu = torch.as_tensor(cu_seqlens_padded).detach().to("cpu", torch.long).reshape(-1)
    if cu.numel() < 2 or int(cu[0]) != 0 or int(cu[-1]) != total_tokens:
        raise ValueError("cpdl: cu_seqlens_padded must run from 0 to the %d tokens of the "
                         "stream, got %s" % (total_tokens, cu.tolist()))
    if bool((cu % (2 * cp_size) != 0).any()) or bool((cu[1:] < cu[:-1]).any()):
        raise ValueError("cpdl: every document of cu_seqlens_padded %s must be a multiple of "
                         "2*cp = %d" % (cu.tolist(), 2 * cp_size))
    local = cu // cp_size
    token = torch.arange(total_tokens // cp_size, dtype=torch.long)
    doc = torch.searchsorted(local, token, right=True) - 1
    start, length = local[doc], local[doc + 1] - local[doc]
    offset = token - start
    half = length // 2
    # the second half's tokens continue at chunk 2*cp-1-r: offset counts the
    # first half's tokens too, so its multiplier is one chunk less (TE's form)
    skip = torch.where(offset < half, torch.full_like(offset, cp_rank),
                       torch.full_like(offset, 2 * cp_size - 2 - cp_rank))
    index = offset + start * cp_size + half * skip
    return index.to(torch.int32).to(device)


class CpMesh:
    """A stand-in for a 1-D CP DeviceMesh slice: size() and get_local_rank()
    (what the adapters read), for callers without a DeviceMesh."""

    def __init__(self, size, rank):
        self._size, self._rank = int(size), int(rank)

    def size(self):
        return self._size

    def get_local_rank(self):
        return self._rank

    def __repr__(self):
        return "CpMesh(size=%d, rank=%d)" % (self._size, self._rank)


def mesh_size_rank(mesh):
    """(size, rank) of a CP mesh; None means (1, 0)."""
    if mesh is None:
        return 1, 0
    return int(mesh.size()), int(mesh.get_local_rank())


_MODE_NAMES = ("contiguous", "round_robin", "aux_only", "thd")  # cpdl_mode_t order


def loader_mode(loader):
    """The layout name of a cpdl.Loader's mode= (cpdl_mode_t, include/cpdl/prep.h)."""
    mode = loader.config.get("mode", 0)
    return mode if isinstance(mode, str) else _MODE_NAMES[int(mode)]


def batch_tensors(batch, copy=True, device=None):
    """{name: tensor} of one loader step. A cpdl.Batch's tensors view its
    slot, which the leader rewrites once the loader moves on: with copy they
    are cloned (a trainer that takes several micro batches before using the
    first needs that). A DeviceBatch's (Loader(device="cuda")) are their own
    already. device: copy there synchronously — an asynchronous copy out of
    a slot could still be reading it when the next step releases it; for
    copies that overlap training open the loader with device="cuda",
    prefetch=1."""
    tensors = batch.torch() if hasattr(batch, "torch") else dict(batch)
    own = not isinstance(batch, Batch)  # a DeviceBatch, or a plain mapping of tensors
    if device is not None:
        return {k: v.to(device) for k, v in tensors.items()}
    if copy and not own:
        return {k: v.clone() for k, v in tensors.items()}
    return tensors
