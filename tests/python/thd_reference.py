"""thd_reference — mode thd's layout, stated in numpy from Megatron-core and TransformerEngine.

Megatron-core's `_get_batch_on_this_cp_rank_per_document_balancing` (megatron/core/utils.py)
takes, for every sequence field, `index_select(seq_dim, index)` with
`index = tex.thd_get_partitioned_indices(cu_seqlens_padded, total_tokens, cp_size, cp_rank)`,
and leaves cu_seqlens, cu_seqlens_padded and max_seqlen global. TransformerEngine's kernel
(`thd_partition_indices_kernel`, transformer_engine/common/fused_attn/context_parallel.cu):
local boundaries are the global ones divided by cp; local token t lies in document
`binary_search(t, local)`; the first half of a document's local tokens is its chunk `rank`,
the second half its chunk `2*cp - 1 - rank`. Written from that code, not from cpdl's.
"""
import numpy as np


def te_partitioned_indices(cu_seqlens_padded, total_tokens, cp_size, cp_rank):
    """TransformerEngine's thd_get_partitioned_indices, one token at a time (int64 [total/cp])."""
    cu = [int(v) for v in cu_seqlens_padded]
    assert total_tokens % (2 * cp_size) == 0
    for v in cu:
        assert v % (2 * cp_size) == 0
    local = [v // cp_size for v in cu]

    def binary_search(target):  # as the kernel's: last i with local[i] <= target
        left, right = 1, len(local) - 1
        while left < right:
            mid = (left + right) // 2
            if local[mid] <= target:
                left = mid + 1
            else:
                right = mid
        return left - 1

    out = np.empty(total_tokens // cp_size, dtype=np.int64)
    for token_id in range(total_tokens // cp_size):
        seq_id = binary_search(token_id)
        seq_len = local[seq_id + 1] - local[seq_id]
        index = token_id - local[seq_id]
        offset = cp_rank if index < seq_len // 2 else (cp_size - 1) * 2 - cp_rank
        out[token_id] = index + local[seq_id] * cp_size + seq_len // 2 * offset
    return out


def pack_rows(doc_lengths, seq_len, cp_size):
    """Mode thd's packing rule (docs/thd.md) on document lengths (input/label pairs):
    each document padded to a multiple of 2*cp; one that no longer fits waits for the next
    row (the row's tail becomes padding of its last document); one longer than a whole row
    fills it and continues. Returns [(real lengths, padded lengths)] per complete row."""
    m = 2 * cp_size
    rows, remaining = [], list(doc_lengths)
    real, padded, at = [], [], 0
    while remaining:
        length = remaining[0]
        p = -(-length // m) * m
        if p > seq_len - at:
            if not real:  # longer than a whole row: it fills this one and continues
                real, padded, at = [seq_len], [seq_len], seq_len
                remaining[0] = length - seq_len
            else:  # waits for the next row; the tail pads the row's last document
                padded[-1] += seq_len - at
                at = seq_len
        else:
            real.append(length)
            padded.append(p)
            at += p
            remaining.pop(0)
        if at == seq_len:
            rows.append((real, padded))
            real, padded, at = [], [], 0
    return rows


def cu(lengths):
    """[0, l0, l0+l1, ...] as int32."""
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)


def rank_view(row_fields, cu_seqlens_padded, cp_size, cp_rank, seq_len):
    """Every [1, S] field of the collated row at TE's indices for this rank."""
    index = te_partitioned_indices(cu_seqlens_padded, seq_len, cp_size, cp_rank)
    return {name: np.take(a, index, axis=a.ndim - 1) for name, a in row_fields.items()}
