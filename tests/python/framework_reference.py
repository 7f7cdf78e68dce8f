"""framework_reference — what the frameworks' CP batch functions do, stated plainly in torch.

Written from the frameworks' sources, not from cpdl's (each statement names
the function and the commit read); it pads the whole batch and index-selects,
which cpdl's core never does, so it checks the adapters independently:

- NeMo Automodel 36044ad3d139363fb6c73c24af2e7c6b65ec52f6,
  components/distributed/context_parallel/sharder.py (shard_batch_contiguous,
  shard_batch_load_balanced + torch context_parallel's in-place head-tail
  shard), models/gemma4_moe/cp_batch.py (aux-only), context_parallel/utils.py
  + distributed/thd_utils.py (make_cp_batch_for_te, process_input_for_thd,
  _shard_thd_chunk_for_te);
- Megatron-LM d98e8a64ddf34856e74b24714e3bedb2f5a39553, megatron/core/utils.py
  (get_batch_on_this_cp_rank and its per-sequence / per-document helpers,
  flatten_batch_for_packed_sequences);
- torchtitan b5bcd76c66d0acb1a08b176d9639425bc55e0b2a,
  distributed/context_parallel/api.py (prepare_context_parallel_input, cp_shard)
  with torch's _HeadTailLoadBalancer (pytorch 19cc90d82830f04982b84bfe9b332404a22bb520,
  torch/distributed/tensor/experimental/_context_parallel/_load_balancer.py);
- TransformerEngine d0067d0da6cb01811b8072a7d304f0e00344ce2b,
  thd_get_partitioned_indices: thd_reference.te_partitioned_indices.
"""
import contextlib

import torch

import thd_reference


def _pad(t, dim, n, value):
    if n <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t, torch.full(shape, value, dtype=t.dtype)], dim=dim)


def _pad_positions(t, dim, n):
    if n <= 0:
        return t
    last = t.narrow(dim, t.shape[dim] - 1, 1)
    shape = [1] * t.dim()
    shape[dim] = n
    return torch.cat([t, last + torch.arange(1, n + 1, dtype=t.dtype).view(shape)], dim=dim)


def head_tail(cp, rank, n):
    """Positions rank keeps: chunk r then chunk 2cp-1-r of 2cp (torch's balancer
    rearranges by these pairs, then chunks the result rank-major)."""
    k = n // (2 * cp)
    order = []
    for r in range(cp):
        order += list(range(r * k, (r + 1) * k)) + list(range((2 * cp - 1 - r) * k,
                                                              (2 * cp - r) * k))
    return torch.tensor(order[rank * 2 * k:(rank + 1) * 2 * k], dtype=torch.long)


def _mask_to_padding(b):
    am = b.pop("attention_mask", None)
    if am is not None and "padding_mask" not in b:
        if am.dim() == 4:
            diag = torch.stack([am[:, 0, i, i] for i in range(am.shape[-1])], dim=1)
            b["padding_mask"] = ~diag if am.dtype == torch.bool else diag != 0
        else:
            b["padding_mask"] = am == 0


def _normalize_positions(b, primary):
    B, S = b[primary].shape[:2]
    if "position_ids" not in b:
        b["position_ids"] = torch.arange(S).repeat(B, 1)
    elif b["position_ids"].dim() == 2 and b["position_ids"].shape[0] == 1 and B > 1:
        b["position_ids"] = b["position_ids"].repeat(B, 1)


def nemo_contiguous(batch, cp, rank, loss_mask=None, padding_token_id=0, pad_multiple=1,
                    extra_seq_keys=None, extra_pad_values=None, shard_primary=True):
    """NeMo's shard_batch_contiguous: (batch, ShardLayout fields)."""
    b = dict(batch)
    _mask_to_padding(b)
    primary = "inputs_embeds" if "inputs_embeds" in b else "input_ids"
    S = b[primary].shape[1]
    _normalize_positions(b, primary)
    labels = b.get("labels")
    if labels is None:
        labels, loss_mask = loss_mask, None
    if labels is None:
        raise KeyError("labels")
    divisor = cp * max(pad_multiple or 1, 2)
    n = (-S) % divisor
    P = S + n
    L = P // cp
    take = slice(rank * L, (rank + 1) * L)
    pads = {"padding_mask": True}
    if shard_primary:
        pads.update({"input_ids": padding_token_id, "inputs_embeds": 0})
    for key, value in pads.items():
        if key in b:
            b[key] = _pad(b[key], 1, n, value)[:, take]
    b["labels"] = _pad(labels, 1, n, -100)[:, take]
    pos = b["position_ids"]
    pdim = 2 if pos.dim() == 3 else 1
    b["position_ids"] = _pad_positions(pos, pdim, n).narrow(pdim, rank * L, L)
    known = set(pads) | {"labels", "position_ids", "loss_mask", "input_ids", "inputs_embeds"}
    for key, dim in (extra_seq_keys or {}).items():
        if key in b and key not in known:
            value = (extra_pad_values or {}).get(key, 0)
            b[key] = _pad(b[key], dim, n, value).narrow(dim, rank * L, L)
    if loss_mask is not None:
        b["loss_mask"] = _pad(loss_mask, 1, n, 0)[:, take]
    return b, {"original_seq_len": S, "padded_seq_len": P}


def nemo_aux_only(batch, cp, rank, loss_mask=None, padding_token_id=0, extra_seq_keys=None,
                  extra_pad_values=None):
    """Gemma4's make_contiguous_aux_only_shard_cp_batch_and_ctx."""
    b = dict(batch)
    _mask_to_padding(b)
    if "_packed_seq_ids" not in b:
        primary = b["inputs_embeds"] if "inputs_embeds" in b else b["input_ids"]
        if "padding_mask" in b:
            b["_packed_seq_ids"] = (b["padding_mask"] == 0).long()
        else:
            b["_packed_seq_ids"] = torch.ones(primary.shape[:2], dtype=torch.long)
    keys = {"_packed_seq_ids": 1, **(extra_seq_keys or {})}
    pads = {"_packed_seq_ids": 0, **(extra_pad_values or {})}
    return nemo_contiguous(b, cp, rank, loss_mask, padding_token_id, 1, keys, pads,
                           shard_primary=False)


def nemo_round_robin(batch, cp, rank, loss_mask=None, extra_seq_buffers=None):
    """NeMo's shard_batch_load_balanced, as the batch is inside its context
    (torch's context_parallel shards the buffers head-tail in place): returns
    (batch, layout fields, the caller's loss_mask afterwards)."""
    b = dict(batch)
    b.pop("attention_mask", None)
    primary = "inputs_embeds" if "inputs_embeds" in b else "input_ids"
    S = b[primary].shape[1]
    _normalize_positions(b, primary)
    n = (-S) % (2 * cp)
    idx = head_tail(cp, rank, S + n)
    fill = {"labels": -100, "padding_mask": True}

    def cut(t, dim, key):
        value = 0.0 if t.dtype.is_floating_point else fill.get(key, 0)
        return _pad(t, dim, n, value).index_select(dim, idx)
    pos = b["position_ids"]
    for key, dim in [(primary, 1), ("labels", 1), ("position_ids", 2 if pos.dim() == 3 else 1),
                     ("padding_mask", 1)] + list((extra_seq_buffers or {}).items()):
        if key in b:
            b[key] = cut(b[key], dim, key)
    after = loss_mask
    if loss_mask is not None and n == 0:  # padded: NeMo shards a copy, the caller's stays
        after = cut(loss_mask, 1, None)
    return b, {"original_seq_len": S, "padded_seq_len": S + n}, after


def nemo_thd(batch, cp, rank, padding_value=-1000):
    """make_cp_batch_for_te (one chunk): (batch, layout fields)."""
    ids, labels, pos = batch["input_ids"], batch["labels"], batch["position_ids"]
    B, S = ids.shape[:2]
    T = B * S
    real = [int(v) for v in batch["seq_lens"].reshape(-1) if int(v) != padding_value]
    slots = [int(v) for v in batch["seq_lens_padded"].reshape(-1) if int(v) != padding_value]
    cu = [0]
    for v in real:
        cu.append(cu[-1] + v)
    cup = [0]
    for v in slots:
        cup.append(cup[-1] + v)
    if len(cu) == len(cup) and len(cu) > 1 and cu[:-1] == cup[:-1] and cu[-1] < T:
        cu[-1] = T
        cup = list(cu)
    padding = torch.ones(T, dtype=torch.bool)
    at = 0
    for r, w in zip(real, slots):
        padding[at:at + r] = False
        at += w
    flat = {"input_ids": ids.reshape(-1), "position_ids": pos.reshape(-1),
            "cu_seqlens": torch.tensor(cu, dtype=torch.int32), "labels": labels.reshape(-1),
            "padding_mask": padding}
    if cup != cu:
        flat["cu_seqlens_padded"] = torch.tensor(cup, dtype=torch.int32)
    flat["max_seqlen"] = torch.tensor(max(b - a for a, b in zip(cu, cu[1:])), dtype=torch.int32)
    for key, value in batch.items():
        if key not in flat and key not in ("seq_lens", "seq_lens_padded"):
            flat[key] = value
    layout = {"padded_seq_len": T, "input_row_shape": (B, S)}
    if cp <= 1:
        layout["local_token_global_indices"] = torch.arange(T)
        return flat, layout
    bounds = cup if "cu_seqlens_padded" in flat else cu
    index = torch.from_numpy(thd_reference.te_partitioned_indices(bounds, T, cp, rank))
    out = dict(flat)
    out.pop("attention_mask", None)
    out.pop("cu_seqlens_padded", None)
    for key in ("input_ids", "labels", "position_ids"):
        out[key] = flat[key][index].long()
    out["padding_mask"] = flat["padding_mask"][index]
    out["cu_seqlens"] = torch.tensor(bounds, dtype=torch.int32)
    out["max_seqlen"] = torch.tensor(max(b - a for a, b in zip(bounds, bounds[1:])),
                                     dtype=torch.int32)
    out.update({"qkv_format": "thd", "cp_size": cp, "cp_rank": rank})
    layout["local_token_global_indices"] = index.to(torch.int32)
    return out, layout


def megatron(batch, cp, rank, use_per_sequence_balancing=False):
    """get_batch_on_this_cp_rank(flatten_batch_for_packed_sequences(batch)) for
    micro batch 1 (the TP broadcast leaves every TP rank this same dict)."""
    b = dict(batch)
    if b.get("cu_seqlens") is not None:
        S = b["tokens"].shape[1]

        def strip(row):
            row = [int(v) for v in row]
            return row[:row.index(S) + 1] if S in row else row
        b["cu_seqlens"] = torch.tensor(strip(b["cu_seqlens"][0]), dtype=torch.int32)[None]
        if b.get("cu_seqlens_padded") is not None:
            b["cu_seqlens_padded"] = torch.tensor(strip(b["cu_seqlens_padded"][0]),
                                                  dtype=torch.int32)[None]
        b["max_seqlen"] = b["max_seqlen"].max().reshape(1)
    if cp <= 1:
        return b
    if b.get("cu_seqlens") is not None and not use_per_sequence_balancing:
        bounds = b["cu_seqlens_padded"] if b.get("cu_seqlens_padded") is not None \
            else b["cu_seqlens"]
        index = torch.from_numpy(thd_reference.te_partitioned_indices(
            [int(v) for v in bounds[0]], b["tokens"].shape[1], cp, rank))
        for key in ("tokens", "labels", "loss_mask", "position_ids"):
            if b.get(key) is not None:
                b[key] = b[key].index_select(1, index)
        return b
    for key, value in list(b.items()):
        if key in ("cu_seqlens", "cu_seqlens_padded", "max_seqlen", "local_cp_size",
                   "hybrid_cp_group") or value is None:
            continue
        dim = 2 if key == "attention_mask" else 1
        b[key] = value.index_select(dim, head_tail(cp, rank, value.shape[dim]))
    return b


def torchtitan(input_dict, labels, cp, rank):
    """prepare_context_parallel_input(load_balancer_type="headtail") on the folded stream."""
    idx = head_tail(cp, rank, input_dict["input"].shape[0])
    extra = {k: v for k, v in input_dict.items() if k != "input"}
    extra["positions"] = extra["positions"][idx]
    return input_dict["input"][idx], labels[idx], extra


nullcontext = contextlib.nullcontext
