"""reference — the batch-preparation contract, stated plainly in numpy.

Written from docs/design.md#batch-preparation--the-contract, not from src/prep.c:
it materializes the whole padded batch, then slices it, which is exactly what
the C code must avoid and therefore an independent check of it. Readability
over speed. Raises ValueError where the contract says "error".
"""
import numpy as np

# Sequence fields other than position_ids and caller-named metadata: seq dim 1.
_PAD_ZERO = ("inputs_embeds", "mm_token_type_ids", "_packed_seq_ids", "per_layer_inputs",
             "loss_mask")


def padded_len(seq_len, cp_size):
    """S rounded up to a multiple of 2 * cp_size (rule 6)."""
    unit = 2 * cp_size
    return -(-seq_len // unit) * unit


def _pad_const(array, axis, new_len, value):
    """Append `value` (converted to the array's dtype) along axis up to new_len."""
    extra = new_len - array.shape[axis]
    if extra == 0:
        return array.copy()
    shape = list(array.shape)
    shape[axis] = extra
    if array.dtype == np.bool_:
        fill = np.full(shape, bool(value), dtype=np.bool_)
    elif np.issubdtype(array.dtype, np.integer):
        fill = np.full(shape, int(value), dtype=array.dtype)
    else:
        fill = np.full(shape, float(value), dtype=array.dtype)
    return np.concatenate([array, fill], axis=axis)


def _pad_continue(positions, axis, new_len):
    """Append last+1, last+2, ... per row along axis (position_ids, rule 6)."""
    extra = new_len - positions.shape[axis]
    if extra == 0:
        return positions.copy()
    last = np.take(positions, [-1], axis=axis)
    steps_shape = [1] * positions.ndim
    steps_shape[axis] = extra
    steps = np.arange(1, extra + 1).reshape(steps_shape)
    return np.concatenate([positions, (last + steps).astype(positions.dtype)], axis=axis)


def prepare_full(batch, cp_size, tp_size=1, loss_mask=None, padding_token_id=0,
                 metadata=None):
    """Rules 1-6. metadata: {name: (seq_dim, pad_value)}.

    Returns (fields, primary, raw_primary, seq_len, padded) where fields maps
    every output name to (padded array, seq_dim); seq_dim None marks a
    pass-through field; raw_primary is the primary field before padding."""
    b = dict(batch)
    if loss_mask is not None:
        b["loss_mask"] = loss_mask
    metadata = dict(metadata or {})

    # Rule 2: exactly one primary.
    primaries = [name for name in ("input_ids", "inputs_embeds") if name in b]
    if len(primaries) != 1:
        raise ValueError("need exactly one of input_ids / inputs_embeds")
    primary = primaries[0]
    B, S = b[primary].shape[0], b[primary].shape[1]

    # Rule 1: attention_mask is removed; padding_mask derived only if absent.
    attention = b.pop("attention_mask", None)
    if attention is not None and "padding_mask" not in b:
        if attention.ndim == 2:
            b["padding_mask"] = np.logical_not(attention)
        elif attention.ndim == 4:
            diag = np.stack([attention[:, 0, i, i] for i in range(S)], axis=1)
            if attention.dtype == np.bool_:
                b["padding_mask"] = np.logical_not(diag)
            else:
                b["padding_mask"] = diag != 0
        else:
            raise ValueError("attention_mask must be 2-D or 4-D")

    # Rule 3: position_ids.
    if "position_ids" not in b:
        if cp_size > 1 or tp_size > 1:
            b["position_ids"] = np.tile(np.arange(S, dtype=np.int64), (B, 1))
    else:
        pos = b["position_ids"]
        if pos.ndim == 2 and pos.shape[0] == 1 and B > 1:
            b["position_ids"] = np.repeat(pos, B, axis=0)

    # Rule 4: labels, or the loss mask as labels.
    if "labels" not in b:
        if "loss_mask" not in b:
            raise ValueError("neither labels nor loss_mask")
        b["labels"] = b.pop("loss_mask")

    # Rule 5: _packed_seq_ids.
    if "_packed_seq_ids" not in b:
        if "padding_mask" in b:
            b["_packed_seq_ids"] = (b["padding_mask"] == 0).astype(np.int64)
        else:
            b["_packed_seq_ids"] = np.ones((B, S), dtype=np.int64)

    # Which fields are sequence fields, on which dim, padded how.
    seq_rules = {}  # name -> (seq_dim, pad_value or "continue")
    seq_rules[primary] = (1, padding_token_id if primary == "input_ids" else 0)
    for name in _PAD_ZERO:
        seq_rules.setdefault(name, (1, 0))
    seq_rules["padding_mask"] = (1, True)
    seq_rules["labels"] = (1, -100)
    if "position_ids" in b:
        seq_rules["position_ids"] = (2 if b["position_ids"].ndim == 3 else 1, "continue")
    for name, (seq_dim, pad_value) in metadata.items():
        seq_rules[name] = (seq_dim, pad_value)

    # Sizes must agree (the error branch of the contract).
    for name, value in b.items():
        if name in seq_rules:
            seq_dim = seq_rules[name][0]
            if value.ndim <= seq_dim or value.shape[seq_dim] != S:
                raise ValueError("field %s: sequence length disagrees" % name)

    S_pad = padded_len(S, cp_size)
    fields = {}
    for name, value in b.items():
        if name not in seq_rules:
            fields[name] = (value, None)  # pass-through, whole and untouched
            continue
        seq_dim, pad = seq_rules[name]
        if pad == "continue":
            fields[name] = (_pad_continue(value, seq_dim, S_pad), seq_dim)
        else:
            fields[name] = (_pad_const(value, seq_dim, S_pad, pad), seq_dim)
    return fields, primary, b[primary], S, S_pad


def _take(array, axis, start, stop):
    index = [slice(None)] * array.ndim
    index[axis] = slice(start, stop)
    return array[tuple(index)]


def shard(batch, cp_size, cp_rank, tp_size=1, loss_mask=None, padding_token_id=0,
          metadata=None, mode="contiguous"):
    """Rule 7 and the two extra modes: the dict rank cp_rank gets."""
    fields, primary, raw_primary, _, S_pad = prepare_full(batch, cp_size, tp_size, loss_mask,
                                             padding_token_id, metadata)
    out = {}
    for name, (array, seq_dim) in fields.items():
        if seq_dim is None:
            out[name] = array
        elif mode == "aux_only" and name == primary:
            out[name] = raw_primary
        elif mode in ("contiguous", "aux_only"):
            L = S_pad // cp_size
            out[name] = _take(array, seq_dim, cp_rank * L, (cp_rank + 1) * L)
        elif mode == "round_robin":
            C = S_pad // (2 * cp_size)
            first = _take(array, seq_dim, cp_rank * C, (cp_rank + 1) * C)
            mirror = 2 * cp_size - 1 - cp_rank
            second = _take(array, seq_dim, mirror * C, (mirror + 1) * C)
            out[name] = np.concatenate([first, second], axis=seq_dim)
        else:
            raise ValueError("unknown mode %r" % mode)
    return out
