"""adapter_cases — the random batches the framework adapters are checked on.

The same generator feeds tests/python/test_adapters.py (adapters against
framework_reference.py) and the by-hand parity run against the frameworks'
own functions (docs/nemo.md, docs/megatron.md, docs/torchtitan.md "Proof").
Shapes, pads, masks, labels <- loss_mask, packed documents and
cp in {1, 2, 3, 4, 8}, as the contract tests (test_shard_batch.py) draw them.
Each case is (batch dict of CPU tensors, keyword arguments); callers copy it
before handing it to a function that changes it in place.
"""
import torch

CP_SIZES = (1, 2, 3, 4, 8)


def _seq_len(rng, cp):
    unit = 2 * cp
    kind = int(rng.integers(0, 4))
    if kind == 0:
        return 1
    if kind == 1:
        return int(rng.integers(2, 24))
    if kind == 2:
        return unit * int(rng.integers(1, 4))  # no padding needed
    return max(1, unit * int(rng.integers(1, 4)) - int(rng.integers(1, unit)))


def _lengths(rng, B, S):
    return rng.integers(1, S + 1, size=B)


def _tensor(rng, shape, dtype):
    return torch.from_numpy(rng.integers(0, 50000, size=shape)).to(dtype)


def nemo_case(rng, layout):
    """One batch for NeMo's contiguous / aux_only / round_robin shard, and
    its keywords (cp, loss_mask, padding_token_id, extras)."""
    cp = int(rng.choice(CP_SIZES))
    B = int(rng.integers(1, 4))
    S = _seq_len(rng, cp)
    batch, kw = {}, {"cp": cp, "padding_token_id": int(rng.choice((0, -1, 50256)))}
    if rng.random() < 0.6:
        batch["input_ids"] = _tensor(rng, (B, S), torch.int64 if rng.random() < 0.7
                                     else torch.int32)
    else:
        H = int(rng.integers(1, 5))
        batch["inputs_embeds"] = torch.from_numpy(rng.standard_normal((B, S, H))).to(
            torch.float32 if rng.random() < 0.7 else torch.bfloat16)
    real = _lengths(rng, B, S)
    is_pad = torch.arange(S)[None, :] >= torch.from_numpy(real)[:, None]
    m = rng.random()
    if m < 0.25:
        batch["attention_mask"] = (~is_pad).to(torch.int64 if rng.random() < 0.5 else torch.bool)
    elif m < 0.4:
        causal = torch.tril(torch.ones(S, S, dtype=torch.bool))
        keep = causal[None] & ~is_pad[:, None, :]
        if rng.random() < 0.5:
            batch["attention_mask"] = keep[:, None]
        else:
            additive = torch.zeros(B, 1, S, S)
            additive[~keep[:, None]] = float("-inf")
            batch["attention_mask"] = additive
    elif m < 0.55:
        batch["padding_mask"] = is_pad
        if rng.random() < 0.5:
            batch["attention_mask"] = (~is_pad).to(torch.int64)  # dropped: padding_mask wins
    p = rng.random()
    if p < 0.3:
        batch["position_ids"] = torch.arange(S).expand(B, S).clone()
    elif p < 0.45:
        batch["position_ids"] = torch.arange(S).unsqueeze(0) + int(rng.integers(0, 5))
    elif p < 0.55 and layout != "round_robin":
        batch["position_ids"] = _tensor(rng, (3, B, S), torch.int64)
    labels = _tensor(rng, (B, S), torch.int64)
    labels[is_pad] = -100
    mask = (~is_pad).to(torch.int64 if rng.random() < 0.5 else torch.float32)
    if layout == "round_robin" or rng.random() < 0.7:
        batch["labels"] = labels
        if rng.random() < 0.4:
            kw["loss_mask"] = mask
    else:
        kw["loss_mask"] = mask  # labels <- loss_mask
    if rng.random() < 0.3:
        batch["pixel_values"] = torch.from_numpy(rng.standard_normal((B, 2, 3))).float()
    if rng.random() < 0.3:
        batch["mm_token_type_ids"] = _tensor(rng, (B, S), torch.int64) % 3
    if rng.random() < 0.2:
        batch["_packed_seq_ids"] = (~is_pad).to(torch.int64)
    if rng.random() < 0.15:
        batch["loss_mask"] = mask.clone()  # a batch key NeMo leaves alone
    if rng.random() < 0.3:
        batch["vision_group_ids"] = _tensor(rng, (B, S), torch.int64) % 4 - 1
        if layout == "round_robin":
            kw["extra_seq_buffers"] = {"vision_group_ids": 1}
        else:
            kw["extra_seq_keys"] = {"vision_group_ids": 1}
            kw["extra_pad_values"] = {"vision_group_ids": -1}
    if rng.random() < 0.2 and layout != "round_robin":
        batch["teacher_logits"] = torch.from_numpy(rng.standard_normal((B, S, 2))).float()
        kw.setdefault("extra_seq_keys", {})["teacher_logits"] = 1
    if layout == "contiguous" and rng.random() < 0.3:
        kw["pad_multiple"] = int(rng.choice((1, 2, 4, 6)))
    return batch, kw


def _pack(rng, S, cp):
    """Real and padded document lengths that fill S exactly; each padded
    length a multiple of 2*cp (the last absorbs the row's tail)."""
    unit = 2 * cp
    real, padded, at = [], [], 0
    while at < S:
        length = int(rng.integers(1, max(2, S // 2) + 1))
        width = -(-length // unit) * unit
        if at + width > S or rng.random() < 0.15:
            width = S - at
            length = min(length, width)
        real.append(length)
        padded.append(width)
        at += width
    return real, padded


def thd_case(rng):
    """NeMo's THD input: [B,S] rows of packed documents with seq_lens /
    seq_lens_padded [B, packs] (-1000 filled) — or one row, which is also
    Megatron-core's packed batch."""
    cp = int(rng.choice(CP_SIZES))
    B = int(rng.integers(1, 4))
    S = 2 * cp * int(rng.integers(1, 6))
    rows = [_pack(rng, S, cp) for _ in range(B)]
    packs = max(len(r) for r, _ in rows)
    seq_lens = torch.full((B, packs), -1000, dtype=torch.int64)
    seq_lens_padded = torch.full((B, packs), -1000, dtype=torch.int64)
    positions = torch.zeros(B, S, dtype=torch.int64)
    ids = _tensor(rng, (B, S), torch.int64)
    labels = _tensor(rng, (B, S), torch.int64)
    for b, (real, padded) in enumerate(rows):
        seq_lens[b, :len(real)] = torch.tensor(real)
        seq_lens_padded[b, :len(padded)] = torch.tensor(padded)
        at = 0
        for length, width in zip(real, padded):
            positions[b, at:at + width] = torch.arange(width)
            labels[b, at + length:at + width] = -100
            at += width
    batch = {"input_ids": ids, "labels": labels, "position_ids": positions,
             "seq_lens": seq_lens, "seq_lens_padded": seq_lens_padded, "qkv_format": "thd"}
    if rng.random() < 0.3:
        batch["pixel_values"] = torch.from_numpy(rng.standard_normal((B, 2))).float()
    if rng.random() < 0.3:
        batch["attention_mask"] = torch.ones(B, S, dtype=torch.int64)
    return batch, {"cp": cp, "padding_token_id": int(rng.choice((0, 7)))}


def megatron_case(rng, packed):
    """Megatron-core's global micro batch as get_batch_on_this_tp_rank leaves
    it on every TP rank: tokens, labels, loss_mask (float32), position_ids,
    attention_mask (bool [B,1,S,S], True = masked, or None); packed: one
    row of documents with cu_seqlens / cu_seqlens_padded [1, n+1] (int32)
    and max_seqlen [1] — the per-document case."""
    cp = int(rng.choice(CP_SIZES))
    if packed:
        S = 2 * cp * int(rng.integers(1, 6))
        real, padded = _pack(rng, S, cp)
        tokens = _tensor(rng, (1, S), torch.int64)
        labels = _tensor(rng, (1, S), torch.int64)
        loss_mask = torch.ones(1, S, dtype=torch.float32)
        positions = torch.zeros(1, S, dtype=torch.int64)
        at = 0
        for length, width in zip(real, padded):
            positions[0, at:at + width] = torch.arange(width)
            loss_mask[0, at + length:at + width] = 0
            labels[0, at + length:at + width] = -100
            at += width
        cu = torch.tensor([0] + list(torch.cumsum(torch.tensor(real), 0)), dtype=torch.int32)
        cup = torch.tensor([0] + list(torch.cumsum(torch.tensor(padded), 0)), dtype=torch.int32)
        batch = {"tokens": tokens, "labels": labels, "loss_mask": loss_mask,
                 "position_ids": positions, "attention_mask": None,
                 "cu_seqlens": cu.unsqueeze(0), "cu_seqlens_padded": cup.unsqueeze(0),
                 "max_seqlen": torch.tensor([max(padded)], dtype=torch.int32)}
        return batch, {"cp": cp}
    B = int(rng.integers(1, 4))
    S = 2 * cp * int(rng.integers(1, 6))  # Megatron's view() needs S % (2*cp) == 0
    tokens = _tensor(rng, (B, S), torch.int64)
    labels = _tensor(rng, (B, S), torch.int64)
    loss_mask = torch.from_numpy(rng.random((B, S)) < 0.9).float()
    if rng.random() < 0.5:
        positions = torch.arange(S).expand(B, S).clone()
    else:  # reset_position_ids: documents restart
        positions = torch.zeros(B, S, dtype=torch.int64)
        for b in range(B):
            cut = int(rng.integers(0, S))
            positions[b] = torch.cat([torch.arange(cut), torch.arange(S - cut)])
    attention = None
    if rng.random() < 0.4:
        attention = (torch.tril(torch.ones(S, S)) < 0.5).expand(B, 1, S, S).clone()
    batch = {"tokens": tokens, "labels": labels, "loss_mask": loss_mask,
             "position_ids": positions, "attention_mask": attention, "cu_seqlens": None,
             "cu_seqlens_padded": None, "max_seqlen": None}
    return batch, {"cp": cp}


def torchtitan_case(rng):
    """torchtitan's TextCollator batch: ({"input": [T], "positions": [T]},
    labels [T]) with T a multiple of 2*cp (the head-tail balancer asserts
    it), documents restarting positions, an IGNORE_INDEX-padded tail."""
    cp = int(rng.choice(CP_SIZES))
    T = 2 * cp * int(rng.integers(1, 8))
    ids = _tensor(rng, (T,), torch.int64)
    labels = _tensor(rng, (T,), torch.int64)
    positions = torch.zeros(T, dtype=torch.int64)
    at = 0
    while at < T:
        n = int(rng.integers(1, T - at + 1))
        positions[at:at + n] = torch.arange(n)
        at += n
    tail = int(rng.integers(0, T // 2 + 1))
    if tail:
        ids[T - tail:] = 0
        labels[T - tail:] = -100
        positions[T - tail:] = torch.arange(tail)
    return ({"input": ids, "positions": positions}, labels), {"cp": cp}
