"""cpdl.nemo — NeMo Automodel's context-parallel sharder contract on cpdl's core.

NeMo Automodel (components/distributed/context_parallel/sharder.py, read at
NVIDIA-NeMo/Automodel 36044ad3d139363fb6c73c24af2e7c6b65ec52f6) describes every
CP backend as a ContextParallelSharder whose shard_batch(cp_mesh, tp_mesh,
batch, *, loss_mask=None, padding_token_id=0) returns (ctx_factory, batch,
ShardLayout). This module gives the same functions for the layouts cpdl
prepares — contiguous (shard_batch_contiguous, with pad_multiple), Gemma4's
contiguous aux-only (shard_batch_contiguous_aux_only), torch context_parallel's
head-tail round robin (shard_batch_round_robin) and TE's THD
(shard_batch_thd) — computed by cpdl's C core (docs/design.md#batch-preparation--the-contract),
plus sharder() to build a ContextParallelSharder of one of them, and
ShardedBatches, which hands NeMo's step batches a cpdl.Loader already sharded
with a sharder that only reports their layout (docs/nemo.md).

Owns: the translation between NeMo's rules and cpdl's contract, where they
differ (which keys are sequence fields, the round robin's pad values, the
THD flattening). Invariants: results equal NeMo's function on the same
batch, key for key and bit for bit (tests/python/test_adapters.py against
a statement of NeMo's code); the batch dict is changed in place as NeMo's is;
keys NeMo leaves alone stay the same objects.
"""
import contextlib
import dataclasses
import functools

import torch

from . import _adapt

try:  # NeMo's own classes when NeMo is installed, so isinstance checks hold.
    from nemo_automodel.components.distributed.context_parallel.sharder import (  # noqa: F401
        ContextParallelSharder as _NemoSharder, ShardLayout)
except Exception:  # noqa: BLE001 — any import failure: use our own, same fields
    _NemoSharder = None

    @dataclasses.dataclass(frozen=True)
    class ShardLayout:
        """NeMo's ShardLayout: what a shard_batch learned about its layout."""
        local_token_global_indices: torch.Tensor = None
        original_seq_len: int = None
        padded_seq_len: int = None
        input_row_shape: tuple = None
        input_token_stream_positions: torch.Tensor = None


# Keys NeMo's contiguous/round-robin shard treats as sequence fields; cpdl's
# contract has more (mm_token_type_ids, per_layer_inputs, _packed_seq_ids, a
# batch "loss_mask"), which NeMo passes through whole unless named as extras.
_CPDL_ONLY_SEQUENCE_KEYS = ("mm_token_type_ids", "per_layer_inputs", "_packed_seq_ids",
                            "loss_mask")
_EXTRA_PREFIX = "cpdl_nemo_extra:"  # a NeMo extra key travels as cpdl metadata


def contiguous_local_indices(cp_mesh, padded_seq_len, device=None):
    """Global positions of this rank's tokens, contiguous layout (NeMo's)."""
    size, rank = _adapt.mesh_size_rank(cp_mesh)
    return _adapt.contiguous_indices(size, rank, padded_seq_len, device)


def round_robin_local_indices(cp_mesh, padded_seq_len, device=None):
    """Global positions of this rank's tokens, head-tail round robin (NeMo's)."""
    size, rank = _adapt.mesh_size_rank(cp_mesh)
    return _adapt.round_robin_indices(size, rank, padded_seq_len, device)


def identity_local_indices(cp_mesh, padded_seq_len, device=None):
    del cp_mesh
    return torch.arange(padded_seq_len, dtype=torch.long, device=device)


def _primary(batch):
    has_embeds, has_ids = "inputs_embeds" in batch, "input_ids" in batch
    if has_embeds == has_ids:
        raise ValueError("the CP dispatch requires exactly one of 'inputs_embeds' or "
                         "'input_ids' in batch")
    return "inputs_embeds" if has_embeds else "input_ids"


def _convert_attention_mask(batch):
    """NeMo's convert_attention_mask_to_padding_mask, in place."""
    attention = batch.pop("attention_mask", None)
    if attention is not None and "padding_mask" not in batch:
        if attention.ndim == 4:
            diagonal = torch.diagonal(attention[:, 0], dim1=-2, dim2=-1)
            batch["padding_mask"] = (diagonal.logical_not() if attention.dtype == torch.bool
                                     else diagonal != 0)
        else:
            batch["padding_mask"] = attention.bool().logical_not()


def _positions(batch, primary):
    """NeMo's position_ids normalization: arange when absent, [1,S] expanded."""
    ids = batch[primary]
    B, S = ids.shape[0], ids.shape[1]
    if "position_ids" not in batch:
        batch["position_ids"] = torch.arange(S, device=ids.device).unsqueeze(0).expand(
            B, -1).contiguous()
    elif batch["position_ids"].ndim == 2 and batch["position_ids"].shape[0] == 1 and B > 1:
        batch["position_ids"] = batch["position_ids"].expand(B, -1).contiguous()


def _no_grad(name, tensor):
    if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
        raise ValueError("cpdl.nemo: '%s' requires grad; cpdl prepares data tensors, so "
                         "shard it inside the model (the aux-only layout) or detach it" % name)


def _run_core(batch, fields, cp, ranks, mode, padding_token_id, extras):
    """fields of batch (+ extras: {key: (seq_dim, pad)}) through cpdl's core for
    the given virtual ranks; returns one dict of tensors per rank, with the
    extras under their own names and cpdl's synthesized fields left out."""
    inputs = {}
    for name in fields:
        _no_grad(name, batch[name])
        inputs[name] = batch[name]
    metadata = {}
    for key, (dim, pad) in extras.items():
        _no_grad(key, batch[key])
        inputs[_EXTRA_PREFIX + key] = batch[key]
        metadata[_EXTRA_PREFIX + key] = (dim, pad)
    outs = _adapt.shard_tensors(inputs, cp, ranks, mode=mode,
                                padding_token_id=padding_token_id, metadata=metadata)
    result = []
    for out in outs:
        named = {}
        for name, tensor in out.items():
            if name.startswith(_EXTRA_PREFIX):
                named[name[len(_EXTRA_PREFIX):]] = tensor
            elif name in fields or name == "labels":
                named[name] = tensor
        result.append(named)
    return result


def shard_batch_contiguous(cp_mesh, tp_mesh, batch, *, loss_mask=None, padding_token_id=0,
                           pad_multiple=1, extra_seq_keys=None, extra_pad_values=None,
                           shard_primary=True):
    """NeMo's shard_batch_contiguous on cpdl's core: pad every sequence field to
    cp * max(pad_multiple, 2), keep [r*L, (r+1)*L). batch is changed in place
    and returned with (contextlib.nullcontext, batch, ShardLayout).
    shard_primary=False leaves input_ids / inputs_embeds full length (the
    aux-only shard). pad_multiple: max(pad_multiple, 2) must be even (cpdl
    pads to a multiple of 2 * its CP size; each of NeMo's ranks is then
    max(pad_multiple, 2) / 2 consecutive ranks of cpdl's)."""
    del tp_mesh  # NeMo's contiguous shard does not use it either
    cp, rank = _adapt.mesh_size_rank(cp_mesh)
    _convert_attention_mask(batch)
    primary = _primary(batch)
    S = batch[primary].shape[1]
    _positions(batch, primary)
    labels_from_mask = "labels" not in batch or batch["labels"] is None
    if labels_from_mask and loss_mask is None:
        raise KeyError("Context parallelism requires `labels` in the batch, or labels passed "
                       "as `loss_mask`.")
    multiple = max(int(pad_multiple or 1), 2)
    if multiple % 2:
        raise ValueError("cpdl.nemo: pad_multiple %d: cpdl pads to a multiple of 2 * cp, so "
                         "max(pad_multiple, 2) must be even" % pad_multiple)
    per_rank = multiple // 2
    padded = _adapt.padded_len(S, cp * multiple)

    extra_keys = dict(extra_seq_keys or {})
    extra_pads = dict(extra_pad_values or {})
    known = {"input_ids", "inputs_embeds", "padding_mask", "labels", "position_ids",
             "loss_mask"}
    extras = {k: (d, extra_pads.get(k, 0)) for k, d in extra_keys.items()
              if k in batch and k not in known}
    fields = [n for n in ("input_ids", "inputs_embeds", "padding_mask", "position_ids")
              if n in batch and (shard_primary or n not in ("input_ids", "inputs_embeds"))]
    core = {n: batch[n] for n in fields}
    if not shard_primary:
        # B and S for the core's plan; the output keeps the caller's primary
        # (which may carry grad: it is never read).
        ref = batch[primary]
        core["input_ids"] = torch.zeros((), dtype=torch.long, device=ref.device).expand(
            ref.shape[0], ref.shape[1])
    if labels_from_mask:
        core["labels"] = loss_mask
    else:
        core["labels"] = batch["labels"]
        if loss_mask is not None:
            core["loss_mask"] = loss_mask
    core.update({k: batch[k] for k in extras})
    names = list(core)
    ranks = [rank * per_rank + k for k in range(per_rank)]
    outs = _run_core(core, [n for n in names if n not in extras], cp * per_rank, ranks,
                     "contiguous" if shard_primary else "aux_only", padding_token_id, extras)
    for name in outs[0]:
        if not shard_primary and name in ("input_ids", "inputs_embeds"):
            continue
        parts = [out[name] for out in outs]
        dim = extras[name][0] if name in extras else (
            2 if name == "position_ids" and parts[0].ndim == 3 else 1)
        batch[name] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)
    return contextlib.nullcontext, batch, ShardLayout(original_seq_len=S, padded_seq_len=padded)


def _synthesize_single_document_seq_ids(batch):
    """Gemma4's _packed_seq_ids when absent: 1 real, 0 pad (from padding_mask)."""
    if "_packed_seq_ids" in batch:
        return
    primary = batch[_primary(batch)]
    mask = batch.get("padding_mask")
    if mask is not None:
        batch["_packed_seq_ids"] = (~mask.bool()).to(torch.long)
    else:
        batch["_packed_seq_ids"] = torch.ones(primary.shape[:2], dtype=torch.long,
                                              device=primary.device)


def shard_batch_contiguous_aux_only(cp_mesh, tp_mesh, batch, *, loss_mask=None,
                                    padding_token_id=0, extra_seq_keys=None,
                                    extra_pad_values=None):
    """Gemma4's make_contiguous_aux_only_shard_cp_batch_and_ctx
    (models/gemma4_moe/cp_batch.py): the auxiliary streams (labels,
    position_ids, loss_mask, padding_mask, the synthesized _packed_seq_ids)
    sharded contiguously; input_ids / inputs_embeds / pixel streams left full
    length for the model to slice in its forward."""
    _convert_attention_mask(batch)
    _synthesize_single_document_seq_ids(batch)
    return shard_batch_contiguous(
        cp_mesh, tp_mesh, batch, loss_mask=loss_mask, padding_token_id=padding_token_id,
        extra_seq_keys={"_packed_seq_ids": 1, **(extra_seq_keys or {})},
        extra_pad_values={"_packed_seq_ids": 0, **(extra_pad_values or {})},
        shard_primary=False)


def _context_parallel_attention(cp_mesh):
    """The forward context NeMo's round robin returns, minus the buffer
    sharding cpdl already did: SDPA limited to flash/efficient kernels and
    torch's context_parallel with no buffers (it then only installs the ring
    attention dispatch)."""
    @contextlib.contextmanager
    def context():
        try:
            from torch.distributed.tensor.experimental import context_parallel
            from torch.nn.attention import SDPBackend, sdpa_kernel
        except ImportError as exc:
            raise RuntimeError("cpdl.nemo: the round-robin layout's attention needs torch's "
                               "context_parallel (torch >= 2.5): %s" % exc) from None
        try:
            from torch.distributed.tensor.experimental._attention import set_rotate_method
            set_rotate_method("allgather")
        except ImportError:
            pass
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]), \
                context_parallel(cp_mesh, buffers=[], buffer_seq_dims=[],
                                 no_restore_buffers=set()):
            yield
    return context


def shard_batch_round_robin(cp_mesh, tp_mesh, batch, *, loss_mask=None, padding_token_id=0,
                            extra_seq_buffers=None, attention_context=None):
    """NeMo's shard_batch_load_balanced on cpdl's core: primary, labels,
    position_ids, loss_mask, padding_mask and extra_seq_buffers padded to
    2 * cp (labels -100, padding_mask True, everything else 0, as NeMo's
    _ROUND_ROBIN_PAD_FILL) and cut into chunks r and 2*cp-1-r. NeMo returns the
    padded batch and shards it when its context is entered; here the batch
    comes back already sharded (what NeMo's batch holds inside the context)
    and the context only installs the ring attention
    (attention_context(cp_mesh) overrides that; None for
    _context_parallel_attention). padding_token_id is unused, as in NeMo."""
    del tp_mesh, padding_token_id
    cp, rank = _adapt.mesh_size_rank(cp_mesh)
    batch.pop("attention_mask", None)
    primary = _primary(batch)
    S = batch[primary].shape[1]
    _positions(batch, primary)
    if "labels" not in batch:
        raise KeyError("labels")
    extras = {}
    for key, dim in (extra_seq_buffers or {}).items():
        if key not in batch:
            raise KeyError("Extra CP sequence buffer %r is missing from the batch" % key)
        if key not in ("labels", "position_ids", "padding_mask", primary):
            extras[key] = (dim, -100 if key == "labels" else 0)
    core = {primary: batch[primary], "labels": batch["labels"],
            "position_ids": batch["position_ids"]}
    if "padding_mask" in batch:
        core["padding_mask"] = batch["padding_mask"]
    if loss_mask is not None:
        core["loss_mask"] = loss_mask
    core.update({k: batch[k] for k in extras})
    (out,) = _run_core(core, [n for n in core if n not in extras], cp, [rank], "round_robin",
                       0, extras)
    padded = _adapt.padded_len(S, 2 * cp)
    if padded != S:  # NeMo pads positions with 0 where cpdl continues them
        pad_slots = _adapt.round_robin_indices(cp, rank, padded) >= S
        positions = out["position_ids"]
        positions[..., pad_slots.to(positions.device)] = 0
    for name, tensor in out.items():
        if name in ("_packed_seq_ids", "loss_mask") and name not in extras:
            continue
        batch[name] = tensor
    if loss_mask is not None and padded == S:
        # NeMo's context shards the loss mask it was handed in place (a
        # context_parallel buffer, not a batch key), so the caller's tensor
        # holds this rank's shard afterwards. When the sequence needs padding
        # NeMo shards a padded copy instead and the caller's tensor stays as it
        # was; so here.
        loss_mask.set_(out["loss_mask"].to(loss_mask.device))
    make = attention_context or _context_parallel_attention
    layout = ShardLayout(original_seq_len=S, padded_seq_len=padded)
    return make(cp_mesh), batch, layout


def _thd_flatten(batch, padding_value, padding_token_id):
    """NeMo's process_input_for_thd (components/distributed/thd_utils.py):
    [B,S] rows with seq_lens / seq_lens_padded [B, packs] -> one stream."""
    input_ids, labels, positions = batch["input_ids"], batch["labels"], batch["position_ids"]
    B, S = input_ids.shape[0], input_ids.shape[1]
    total = B * S
    if positions is not None and positions.dim() == 3:
        raise ValueError("cpdl.nemo: 3-D (mRoPE) position_ids are not supported by the THD "
                         "layout")
    seq_lens, seq_lens_padded = batch.get("seq_lens"), batch.get("seq_lens_padded")
    if seq_lens is None:
        raise KeyError("cpdl.nemo: the THD layout needs 'seq_lens' (and 'seq_lens_padded') in "
                       "the batch")
    real = seq_lens.reshape(-1)
    real = real[real != padding_value]
    cu = torch.cat([torch.zeros(1, dtype=real.dtype, device=real.device),
                    torch.cumsum(real, 0)]).to(torch.int32)
    cu_padded, slots = None, None
    if seq_lens_padded is not None:
        slots = seq_lens_padded.reshape(-1)
        slots = slots[slots != padding_value]
        cu_padded = torch.cat([torch.zeros(1, dtype=slots.dtype, device=slots.device),
                               torch.cumsum(slots, 0)]).to(torch.int32)
    if (cu_padded is not None and cu.numel() == cu_padded.numel() and cu.numel() > 1
            and torch.equal(cu[:-1], cu_padded[:-1]) and int(cu[-1]) < total):
        cu = cu.clone()
        cu[-1] = total
        cu_padded = cu.clone()
    max_seqlen = (cu[1:] - cu[:-1]).max().to(torch.int32) if cu.numel() > 1 else None
    # padding from the pack layout: slot i of a sequence is padding past its real length
    device = input_ids.device
    reals = real.to(device, torch.long)
    widths = reals if slots is None else slots.to(device, torch.long)
    starts = torch.cat([torch.zeros(1, dtype=torch.long, device=device), torch.cumsum(widths, 0)])
    position = torch.arange(total, device=device)
    segment = torch.clamp(torch.searchsorted(starts[1:], position, right=True),
                          max=reals.numel() - 1)
    padding = ((position - starts[segment]) >= reals[segment]) | (position >= int(starts[-1]))
    result = {"input_ids": input_ids.reshape(total, -1).squeeze(-1),
              "position_ids": positions.reshape(-1) if positions is not None else None,
              "cu_seqlens": cu, "labels": labels.reshape(total, -1).squeeze(-1),
              "padding_mask": padding}
    if cu_padded is not None and not torch.equal(cu_padded, cu):
        result["cu_seqlens_padded"] = cu_padded
    if max_seqlen is not None:
        result["max_seqlen"] = max_seqlen
    for key, value in batch.items():
        if key not in result and key not in ("seq_lens", "seq_lens_padded"):
            result[key] = value
    return result


def shard_batch_thd(cp_mesh, tp_mesh, batch, *, loss_mask=None, padding_token_id=0,
                    seq_lens_padding_value=-1000):
    """NeMo's TE/THD shard (context_parallel/utils.py _shard_batch_te with
    make_cp_batch_for_te, one chunk): the [B,S] rows flattened into one stream
    by their seq_lens / seq_lens_padded, then each document cut into 2*cp chunks,
    this rank keeping chunk r and chunk 2*cp-1-r (TE's
    thd_get_partitioned_indices) — cpdl's mode thd. Returns a new dict (as
    NeMo does) with cu_seqlens (the padded boundaries), max_seqlen, qkv_format,
    cp_size and cp_rank; the layout carries the partition."""
    del tp_mesh, loss_mask  # NeMo's THD path takes neither
    cp, rank = _adapt.mesh_size_rank(cp_mesh)
    input_ids = batch.get("input_ids")
    row_shape = tuple(input_ids.shape[:2]) if input_ids is not None and input_ids.dim() >= 2 \
        else None
    flat = _thd_flatten(batch, seq_lens_padding_value, padding_token_id)
    total = flat["input_ids"].shape[0]
    padded_total = row_shape[0] * row_shape[1] if row_shape is not None else None
    if cp <= 1:
        indices = torch.arange(total, dtype=torch.long, device=flat["input_ids"].device)
        return contextlib.nullcontext, flat, ShardLayout(
            local_token_global_indices=indices, padded_seq_len=padded_total,
            input_row_shape=row_shape)
    cu_padded = flat.get("cu_seqlens_padded", flat["cu_seqlens"])
    bounds = cu_padded[cu_padded != seq_lens_padding_value]
    core = {"input_ids": flat["input_ids"].unsqueeze(0), "labels": flat["labels"].unsqueeze(0),
            "position_ids": flat["position_ids"].unsqueeze(0),
            "padding_mask": flat["padding_mask"].unsqueeze(0),
            "cu_seqlens_padded": bounds.to(torch.int32)}
    (out,) = _adapt.shard_tensors(core, cp, [rank], mode="thd",
                                  padding_token_id=padding_token_id)
    result = dict(flat)
    result.pop("attention_mask", None)
    result.pop("cu_seqlens_padded", None)
    max_seqlen = (bounds[1:] - bounds[:-1]).max().item()
    result.update({
        "input_ids": out["input_ids"][0].to(torch.int64).contiguous(),
        "labels": out["labels"][0].to(torch.int64).contiguous(),
        "position_ids": out["position_ids"][0].to(torch.int64).contiguous(),
        "cu_seqlens": cu_padded.to(torch.int32).contiguous(),
        "max_seqlen": torch.tensor(max_seqlen).to(torch.int32).to(device=cu_padded.device),
        "qkv_format": "thd",
        "cp_size": cp,
        "cp_rank": rank,
        "padding_mask": out["padding_mask"][0].bool().contiguous(),
    })
    indices = _adapt.thd_indices(bounds, total, cp, rank, device=result["input_ids"].device)
    return contextlib.nullcontext, result, ShardLayout(
        local_token_global_indices=indices, padded_seq_len=padded_total,
        input_row_shape=row_shape)


def shard_batch_identity(cp_mesh, tp_mesh, batch, *, loss_mask=None, padding_token_id=0):
    """NeMo's identity shard: nothing moves; the layout says original == padded."""
    del cp_mesh, tp_mesh, loss_mask, padding_token_id
    primary = batch.get("inputs_embeds", batch.get("input_ids"))
    layout = None
    if primary is not None and primary.dim() >= 2:
        layout = ShardLayout(original_seq_len=primary.shape[1], padded_seq_len=primary.shape[1])
    return contextlib.nullcontext, batch, layout


LAYOUTS = {
    "contiguous": (shard_batch_contiguous, contiguous_local_indices),
    "aux_only": (shard_batch_contiguous_aux_only, contiguous_local_indices),
    "round_robin": (shard_batch_round_robin, round_robin_local_indices),
    "thd": (shard_batch_thd, None),  # data-dependent: the partition comes with the layout
    "identity": (shard_batch_identity, identity_local_indices),
}


class Sharder:
    """NeMo's ContextParallelSharder surface, for use without NeMo installed:
    shard_batch, local_token_global_indices, shard_layout, shard(batch) and
    shard_token_tensor(tensor, seq_dim). sharder() returns NeMo's own class
    when NeMo is importable."""

    def __init__(self, shard_batch, local_token_global_indices=None, *, cp_mesh=None,
                 tp_mesh=None, loss_mask=None, padding_token_id=0, shard_layout=None):
        self.shard_batch = shard_batch
        self.local_token_global_indices = local_token_global_indices
        self.shard_layout = shard_layout
        self._cp_mesh, self._tp_mesh = cp_mesh, tp_mesh
        self._loss_mask, self._padding_token_id = loss_mask, padding_token_id

    def shard(self, batch):
        ctx, batch, self.shard_layout = self.shard_batch(
            self._cp_mesh, self._tp_mesh, batch, loss_mask=self._loss_mask,
            padding_token_id=self._padding_token_id)
        return ctx, batch

    def _indices(self, padded_seq_len, device):
        layout = self.shard_layout or ShardLayout()
        if layout.local_token_global_indices is not None:
            return layout.local_token_global_indices.reshape(-1).to(device=device,
                                                                    dtype=torch.long)
        if self.local_token_global_indices is None:
            raise NotImplementedError("this sharder's layout is data-dependent; its index map "
                                      "arrives with the first shard")
        return self.local_token_global_indices(self._cp_mesh, padded_seq_len, device)

    def shard_token_tensor(self, tensor, seq_dim=1, fill=None):
        """This rank's part of a token-aligned tensor, cut like the batch: one
        of the padded length as it is, one of the original length padded with
        `fill` first (NeMo's verb, for row layouts)."""
        layout = self.shard_layout or ShardLayout()
        length = tensor.shape[seq_dim]
        if layout.padded_seq_len is not None and length != layout.padded_seq_len:
            if fill is None or length != layout.original_seq_len:
                raise ValueError("cpdl.nemo: this sharder sharded a batch of padded_seq_len=%s "
                                 "(original_seq_len=%s), got a tensor of length %d on dim %d; "
                                 "pass the original-length tensor with fill=, or pre-pad it"
                                 % (layout.padded_seq_len, layout.original_seq_len, length,
                                    seq_dim))
            shape = list(tensor.shape)
            shape[seq_dim] = layout.padded_seq_len - length
            tensor = torch.cat([tensor, torch.full(shape, fill, dtype=tensor.dtype,
                                                   device=tensor.device)], dim=seq_dim)
        indices = self._indices(tensor.shape[seq_dim], tensor.device)
        return tensor.index_select(seq_dim, indices).contiguous()


def sharder(layout, device_mesh=None, *, cp_mesh=None, tp_mesh=None, loss_mask=None,
            padding_token_id=0, **options):
    """A ContextParallelSharder whose shard_batch is cpdl's for `layout`
    ("contiguous", "aux_only", "round_robin", "thd", "identity"); options go to
    that shard_batch (pad_multiple, extra_seq_keys, extra_pad_values,
    extra_seq_buffers, ...). With NeMo installed and a device_mesh (dims "cp",
    "tp"), NeMo's own class, so its token verbs work; otherwise Sharder."""
    if layout not in LAYOUTS:
        raise ValueError("cpdl.nemo: layout %r; one of %s" % (layout, ", ".join(LAYOUTS)))
    shard_batch, indices = LAYOUTS[layout]
    if options:
        shard_batch = functools.partial(shard_batch, **options)
    if _NemoSharder is not None and device_mesh is not None:
        return _NemoSharder(device_mesh=device_mesh, shard_batch=shard_batch,
                            local_token_global_indices=indices, loss_mask=loss_mask,
                            padding_token_id=padding_token_id)
    if device_mesh is not None:
        names = getattr(device_mesh, "mesh_dim_names", ()) or ()
        cp_mesh = device_mesh["cp"] if "cp" in names else cp_mesh
        tp_mesh = device_mesh["tp"] if "tp" in names else tp_mesh
    return Sharder(shard_batch, indices, cp_mesh=cp_mesh, tp_mesh=tp_mesh,
                   loss_mask=loss_mask, padding_token_id=padding_token_id)


# ---- batches a cpdl.Loader already sharded ----------------------------------

class ShardedBatches:
    """NeMo's training batches from a cpdl.Loader, already sharded for this
    CP rank, and for each the sharder NeMo's step uses instead of resolving
    its own: its shard_batch moves nothing and reports the layout the loader
    applied (the loader's mode: contiguous, aux_only, round_robin or thd).

        batches = cpdl.nemo.ShardedBatches(cpdl.Loader(cfg, mesh=device_mesh,
                                                       dims={...}))
        for batch in batches:                        # dict of tensors
            cp_sharder = batches.sharder_for(batch)  # instead of ContextParallelSharder(...)
            train_ctx, batch = cp_sharder.shard(batch)

    The batches are what NeMo's shard_batch of the same layout gives for the
    loaded batch (docs/nemo.md): contiguous/aux_only/round_robin as [B, S/cp]
    rows (the round robin's pad slots as NeMo pads them), thd as NeMo's THD
    stream ([S/cp] tokens, cu_seqlens = the padded boundaries, max_seqlen,
    padding_mask, qkv_format, cp_size, cp_rank). drop: keys not handed on
    (default _packed_seq_ids, which only Gemma4's aux-only shard reads).
    copy (default True): clone host views out of shared memory — NeMo's step
    scheduler holds every gradient-accumulation micro batch before the first
    runs, and a view lives only until the loader's next step (a
    Loader(device="cuda") batch is its own memory already). cp_mesh: the CP
    DeviceMesh slice, for the round robin's ring attention
    (attention_context(cp_mesh) replaces it)."""

    # NeMo's recipe checkpoints a tracked object with this flag through DCP on
    # every rank (save_distributed_state / load_distributed_state); cpdl's
    # state_dict() is collective, so a rank-0-only save would hang.
    use_distributed_checkpointing = True

    def __init__(self, loader, *, drop=("_packed_seq_ids",), copy=True, cp_mesh=None,
                 attention_context=None):
        self.loader = loader
        self.layout = _adapt.loader_mode(loader)
        if self.layout == "aux_only":
            drop = tuple(d for d in drop if d != "_packed_seq_ids")
        self.drop = set(drop or ())
        self.copy = copy
        mesh = loader.mesh
        self.cp_size, self.cp_rank = mesh.cp_size, mesh.cp_rank
        self.cp_mesh = cp_mesh if cp_mesh is not None else _adapt.CpMesh(mesh.cp_size,
                                                                         mesh.cp_rank)
        self.seq_len = int(loader.config["seq_len"])
        self.padded_seq_len = _adapt.padded_len(self.seq_len, 2 * mesh.cp_size)
        self._attention_context = attention_context or _context_parallel_attention

    def __iter__(self):
        return self

    def __next__(self):
        tensors = _adapt.batch_tensors(next(self.loader), copy=self.copy)
        tensors = {k: v for k, v in tensors.items() if k not in self.drop}
        if self.layout == "thd":
            return self._thd(tensors)
        if self.layout == "round_robin" and self.padded_seq_len != self.seq_len:
            # NeMo's round robin pads positions with 0 (cpdl continues them)
            pad_slots = _adapt.round_robin_indices(self.cp_size, self.cp_rank,
                                                   self.padded_seq_len) >= self.seq_len
            positions = tensors["position_ids"].clone()
            positions[..., pad_slots.to(positions.device)] = 0
            tensors["position_ids"] = positions
            if "input_ids" in tensors:
                ids = tensors["input_ids"].clone()
                ids[..., pad_slots.to(ids.device)] = 0
                tensors["input_ids"] = ids
        return tensors

    def _thd(self, t):
        """cpdl's thd view -> the batch NeMo's THD shard makes of the same row."""
        cu, bounds = t["cu_seqlens"].long(), t["cu_seqlens_padded"]
        index = _adapt.thd_indices(bounds, self.seq_len, self.cp_size, self.cp_rank,
                                   device=t["input_ids"].device).long()
        # padding: slot i of a document is padding past its real length
        reals = (cu[1:] - cu[:-1]).to(index.device)
        starts = bounds.long().to(index.device)
        doc = torch.searchsorted(starts[1:], index, right=True)
        padding = (index - starts[doc]) >= reals[doc]
        out = {k: v for k, v in t.items() if k not in ("input_ids", "labels", "position_ids",
                                                       "cu_seqlens", "cu_seqlens_padded",
                                                       "max_seqlen", "loss_mask")}
        out.update({"input_ids": t["input_ids"][0].to(torch.int64),
                    "labels": t["labels"][0].to(torch.int64),
                    "position_ids": t["position_ids"][0].to(torch.int64),
                    "padding_mask": padding,
                    "cu_seqlens": bounds.to(torch.int32),
                    "max_seqlen": (bounds[1:] - bounds[:-1]).max().to(torch.int32),
                    "qkv_format": "thd", "cp_size": self.cp_size, "cp_rank": self.cp_rank})
        return out

    def sharder_for(self, batch):
        """The sharder NeMo's step uses for `batch` (one of this object's):
        shard() returns the batch as it is, the layout the loader applied and
        the layout's forward context."""
        if self.layout == "thd":
            index = _adapt.thd_indices(batch["cu_seqlens"], self.seq_len, self.cp_size,
                                       self.cp_rank, device=batch["input_ids"].device)
            layout = ShardLayout(local_token_global_indices=index, padded_seq_len=self.seq_len,
                                 input_row_shape=(1, self.seq_len))
        else:
            layout = ShardLayout(original_seq_len=self.seq_len,
                                 padded_seq_len=self.padded_seq_len)
        context = (self._attention_context(self.cp_mesh) if self.layout == "round_robin"
                   else contextlib.nullcontext)

        def already_sharded(cp_mesh, tp_mesh, batch, *, loss_mask=None, padding_token_id=0):
            del cp_mesh, tp_mesh, loss_mask, padding_token_id
            return context, batch, layout
        indices = LAYOUTS[self.layout][1]
        if _NemoSharder is not None:
            # NeMo's own class, so its token verbs (shard/gather_token_tensor)
            # work; it takes its CP mesh from a device mesh, which the loader
            # stands for here.
            sharder = _NemoSharder(shard_batch=already_sharded,
                                   local_token_global_indices=indices, shard_layout=layout)
            sharder._cp_mesh = self.cp_mesh
            return sharder
        return Sharder(already_sharded, indices, cp_mesh=self.cp_mesh, shard_layout=layout)

    def state_dict(self):
        """cpdl's whole-job resume state (collective: every rank, same step)."""
        return self.loader.state_dict()

    def load_state_dict(self, state):
        self.loader.load_state_dict(state)
