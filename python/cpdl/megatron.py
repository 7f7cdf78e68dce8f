"""cpdl.megatron — Megatron-core's CP batch (pretrain_gpt.py get_batch) from cpdl.

Megatron-LM (read at NVIDIA/Megatron-LM d98e8a64ddf34856e74b24714e3bedb2f5a39553)
takes a micro batch on TP rank 0, broadcasts it to the TP group
(megatron/core/utils.py get_batch_on_this_tp_rank), flattens packed rows
(flatten_batch_for_packed_sequences) and keeps this CP rank's part
(get_batch_on_this_cp_rank): per-sequence zigzag — chunks r and 2*cp-1-r of
2*cp — or, with cu_seqlens, per-document balancing at TransformerEngine's
thd_get_partitioned_indices. With cpdl every rank of a CP group maps its own
part of the prepared batch (TP ranks the same part), so no broadcast and no
slicing happen in the trainer:

    get_batch(data_iterator)  -> the list pretrain_gpt.get_batch returns
                                 (BATCH_KEYS order), from cpdl.Loader batches
    shard_batch(batch, cp, r) -> the same from a global Megatron batch dict,
                                 through cpdl's core
                                 (docs/design.md#batch-preparation--the-contract)
    packed_seq_params(...)    -> PackedSeqParams as pretrain_gpt.forward_step builds it

Owns: field names and dtypes between cpdl and Megatron (input_ids -> tokens,
loss_mask float32, cu_seqlens with their [1, n+1] batch dim). Invariant:
shard_batch equals get_batch_on_this_cp_rank(flatten_batch_for_packed_sequences(
get_batch_on_this_tp_rank(batch))) key for key (tests/python/test_adapters.py).
"""
import torch

from . import _adapt
from . import fields as F

# pretrain_gpt.py's BATCH_KEYS: the order get_batch returns its values in.
BATCH_KEYS = ["attention_mask", "cu_seqlens", "cu_seqlens_padded", "hybrid_cp_group", "labels",
              "local_cp_size", "loss_mask", "max_seqlen", "position_ids", "tokens"]
_SEQUENCE_KEYS = ("tokens", "labels", "loss_mask", "position_ids")
_METADATA_KEYS = ("cu_seqlens", "cu_seqlens_padded", "max_seqlen", "local_cp_size",
                  "hybrid_cp_group")
_MASK_FIELD = "cpdl_megatron:attention_mask"  # Megatron's mask is a query-row field, not rule 1's


def _merge_cu_seqlens(cu_seqlens, seq_length):
    """Megatron's _merge_cu_seqlens_across_micro_batch: [mbs, n] -> one row."""
    def valid(row):
        hits = (row == seq_length).nonzero(as_tuple=True)[0]
        return row[: int(hits[0]) + 1] if hits.numel() else row
    parts = [valid(cu_seqlens[0])]
    for i in range(1, cu_seqlens.shape[0]):
        parts.append(valid(cu_seqlens[i])[1:] + i * seq_length)
    return torch.cat(parts)


def _flatten_packed(batch):
    """Megatron's flatten_batch_for_packed_sequences."""
    cu = batch.get("cu_seqlens")
    if cu is None:
        return batch
    seq_length = next((batch[k].shape[1] for k in _SEQUENCE_KEYS if batch.get(k) is not None),
                      None)
    if seq_length is None:
        seq_length = int(cu[0, -1])
    batch["cu_seqlens"] = _merge_cu_seqlens(cu, seq_length).unsqueeze(0)
    if batch.get("cu_seqlens_padded") is not None:
        batch["cu_seqlens_padded"] = _merge_cu_seqlens(batch["cu_seqlens_padded"],
                                                       seq_length).unsqueeze(0)
    if batch.get("max_seqlen") is not None:
        batch["max_seqlen"] = batch["max_seqlen"].max().unsqueeze(0)
    for key in _SEQUENCE_KEYS:
        if batch.get(key) is not None:
            batch[key] = batch[key].reshape(1, -1)
    return batch


def shard_batch(batch, cp_size, cp_rank, *, use_per_sequence_balancing=False):
    """This CP rank's part of a global Megatron micro batch (the dict
    get_batch_on_this_tp_rank returns: tokens, labels, loss_mask, position_ids,
    attention_mask, cu_seqlens, cu_seqlens_padded, max_seqlen, ...), as
    pretrain_gpt.get_batch makes it: packed rows flattened, then per-document
    balancing when cu_seqlens is given (and not use_per_sequence_balancing),
    else per-sequence zigzag of every tensor (attention_mask on its query
    dim). Computed by cpdl's core (modes thd and round_robin). Returns a new
    dict; the input is not changed."""
    batch = _flatten_packed(dict(batch))
    if cp_size <= 1:
        return batch
    if not use_per_sequence_balancing and batch.get("cu_seqlens") is not None:
        return _per_document(batch, cp_size, cp_rank)
    return _per_sequence(batch, cp_size, cp_rank)


def _per_document(batch, cp_size, cp_rank):
    bounds = batch["cu_seqlens_padded"] if batch.get("cu_seqlens_padded") is not None \
        else batch["cu_seqlens"]
    core = {F.CU_SEQLENS_PADDED: bounds[0].to(torch.int32)}
    # Megatron's key -> cpdl's field (cpdl/fields.h)
    names = {"tokens": F.INPUT_IDS, "labels": F.LABELS, "loss_mask": F.LOSS_MASK,
             "position_ids": F.POSITION_IDS}
    for key, name in names.items():
        if batch.get(key) is not None:
            core[name] = batch[key]
    if F.INPUT_IDS not in core:
        raise ValueError("cpdl.megatron: per-document balancing needs 'tokens' (pipeline "
                         "stages without them are not supported)")
    if F.LABELS not in core:
        # (without labels the contract would take loss_mask as the labels)
        raise ValueError("cpdl.megatron: the batch has no 'labels' (pipeline stages without "
                         "them are not supported)")
    (out,) = _adapt.shard_tensors(core, cp_size, [cp_rank], mode="thd")
    result = dict(batch)
    for key, name in names.items():
        if batch.get(key) is not None:
            result[key] = out[name]
    return result


def _per_sequence(batch, cp_size, cp_rank):
    core, metadata, key_of = {}, {}, {}
    for key, value in batch.items():
        if key in _METADATA_KEYS or value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise TypeError("cpdl.megatron: batch['%s'] is %s; per-sequence balancing cuts "
                            "every tensor of the batch" % (key, type(value).__name__))
        seq_dim = 2 if key == "attention_mask" else 1
        if value.dim() <= seq_dim or value.shape[seq_dim] % (2 * cp_size):
            raise ValueError("cpdl.megatron: batch['%s'] has shape %s; per-sequence balancing "
                             "needs its dim %d to be a multiple of 2*cp = %d (Megatron's view "
                             "fails otherwise)" % (key, tuple(value.shape), seq_dim, 2 * cp_size))
        if key == "tokens":
            name = F.INPUT_IDS
        elif key in ("labels", "loss_mask", "position_ids"):
            name = key  # Megatron's key is cpdl's field name
        else:
            name = _MASK_FIELD if key == "attention_mask" else "cpdl_megatron:" + key
            metadata[name] = (seq_dim, 0)
        core[name] = value
        key_of[name] = key
    if F.INPUT_IDS not in core:
        raise ValueError("cpdl.megatron: the batch has no 'tokens'")
    if F.LABELS not in core:
        raise ValueError("cpdl.megatron: the batch has no 'labels' (pipeline stages without "
                         "them are not supported)")
    (out,) = _adapt.shard_tensors(core, cp_size, [cp_rank], mode="round_robin",
                                  metadata=metadata)
    result = dict(batch)
    for name, key in key_of.items():
        result[key] = out[name]
    return result


def from_loader(batch, *, attention_mask=False, device=None, copy=True):
    """A cpdl.Loader batch (mode round_robin or thd: already this CP rank's
    part) as the dict pretrain_gpt.get_batch holds after
    get_batch_on_this_cp_rank: tokens, labels, loss_mask (float32; from the
    batch, else labels != -100), position_ids; with mode thd cu_seqlens,
    cu_seqlens_padded ([1, n+1] int32) and max_seqlen ([1]). attention_mask=True
    gives Megatron's causal mask rows for this rank's queries ([B,1,S/cp,S],
    True = masked; create_attention_mask_in_dataloader without
    reset_attention_mask). device: copy the tensors there (synchronously:
    for copies that overlap training open the loader with device="cuda",
    prefetch=1); copy: without device, clone host views out of shared memory
    (a view lives only until the loader's next step)."""
    tensors = _adapt.batch_tensors(batch, copy=copy, device=device)
    mesh = getattr(batch, "mesh", None)
    thd = F.CU_SEQLENS_PADDED in tensors
    if F.INPUT_IDS not in tensors:
        raise ValueError("cpdl.megatron: the batch has no input_ids (fields: %s)"
                         % sorted(tensors))
    labels = tensors[F.LABELS].to(torch.int64)
    loss_mask = tensors.get(F.LOSS_MASK)
    loss_mask = (labels != -100).to(torch.float32) if loss_mask is None \
        else loss_mask.to(torch.float32)
    out = {"tokens": tensors[F.INPUT_IDS].to(torch.int64), "labels": labels,
           "loss_mask": loss_mask, "position_ids": tensors[F.POSITION_IDS].to(torch.int64),
           "attention_mask": None, "cu_seqlens": None, "cu_seqlens_padded": None,
           "max_seqlen": None, "local_cp_size": None, "hybrid_cp_group": None}
    if thd:
        out["cu_seqlens"] = tensors[F.CU_SEQLENS].to(torch.int32).reshape(1, -1)
        out["cu_seqlens_padded"] = tensors[F.CU_SEQLENS_PADDED].to(torch.int32).reshape(1, -1)
        out["max_seqlen"] = tensors[F.MAX_SEQLEN].to(torch.int32).reshape(1)
    if attention_mask:
        if thd:
            raise ValueError("cpdl.megatron: packed (thd) batches carry cu_seqlens, not an "
                             "attention mask")
        cp = mesh.cp_size if mesh is not None else 1
        rank = mesh.cp_rank if mesh is not None else 0
        B, local = out["tokens"].shape
        S = local * cp
        where = out["tokens"].device
        queries = _adapt.round_robin_indices(cp, rank, S, where) if cp > 1 \
            else torch.arange(S, device=where)
        mask = torch.arange(S, device=where)[None, :] > queries[:, None]
        out["attention_mask"] = mask.expand(B, 1, local, S).contiguous()
    return out


def get_batch(data_iterator, vp_stage=None, *, attention_mask=False, device=None):
    """pretrain_gpt.get_batch's result from an iterator of cpdl.Loader
    batches: [batch[k] for k in BATCH_KEYS]. Every rank (every TP rank too)
    calls it; there is no TP broadcast. device: None keeps the batch's own
    device (a Loader(device="cuda") batch is on the GPU already); "cuda"
    copies host views there (synchronously, see from_loader)."""
    del vp_stage  # pipeline parallelism is not a cpdl mesh axis (docs/launching.md)
    batch = from_loader(next(data_iterator), attention_mask=attention_mask, device=device)
    return [batch[key] for key in BATCH_KEYS]


def packed_seq_params(cu_seqlens, cu_seqlens_padded, max_seqlen, *, seq_length=None):
    """PackedSeqParams as pretrain_gpt.forward_step builds it for a packed
    batch (cu_seqlens_q = the padded boundaries when given, as Megatron does
    today). Megatron's class when importable, else a dict of its arguments."""
    cu_seqlens = cu_seqlens.squeeze(0)
    if cu_seqlens_padded is not None:
        cu_seqlens_padded = cu_seqlens_padded.squeeze(0)
    bounds = cu_seqlens_padded if cu_seqlens_padded is not None else cu_seqlens
    kwargs = dict(qkv_format="thd", cu_seqlens_q=bounds, cu_seqlens_kv=bounds,
                  cu_seqlens_q_padded=cu_seqlens_padded, cu_seqlens_kv_padded=cu_seqlens_padded,
                  max_seqlen_q=int(max_seqlen.item()), max_seqlen_kv=int(max_seqlen.item()),
                  local_cp_size=None, cp_group=None, tokens_per_sample=seq_length)
    try:
        from megatron.core.packed_seq_params import PackedSeqParams
    except ImportError:
        return kwargs
    return PackedSeqParams(**kwargs)
