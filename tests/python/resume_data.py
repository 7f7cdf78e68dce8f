"""resume_data — small datasets for the resume tests, written with numpy alone
(independently of the plugins): llm.c shards, Megatron-LM indexed datasets and
npy step directories; and the resume matrix's cells.

A cell is (np, cp, tp, source, collate); dp = np / (cp * tp). The cells cover
every source with dp >= 2, both collates, tp = 2 and dp = 3.
"""
import os

import numpy as np

# (np, cp, tp, source, collate)
CELLS = [
    (4, 2, 1, "synthetic", "pack"),   # dp 2, cp 2: each replica resumes its own cursor (R20)
    (3, 1, 1, "synthetic", "pad"),    # dp 3
    (4, 1, 2, "llmc", "pack"),        # dp 2, tp 2
    (2, 1, 1, "llmc", "pad"),         # dp 2
    (6, 2, 1, "megatron", "pack"),    # dp 3, cp 2
    (4, 2, 1, "megatron", "pad"),     # dp 2
    (4, 1, 2, "npy", "pack"),         # dp 2, tp 2 (npy is pre-collated)
    (3, 1, 1, "npy", "pad"),          # dp 3
    (2, 2, 1, "llmc", "pack"),        # dp 1
]
STEPS = 6
STOP = 3
SEQ_LEN = 64
BATCH = 2


def documents(seed=7, n=40, vocab=1000):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, size=int(rng.integers(5, 90))) for _ in range(n)]


def write_megatron(prefix, docs):
    """Megatron-LM MMIDIDX: one sequence per document, uint16 tokens."""
    lengths = np.array([len(d) for d in docs], dtype=np.int32)
    pointers = np.concatenate([[0], np.cumsum(lengths[:-1].astype(np.int64) * 2)]).astype(np.int64)
    doc_idx = np.arange(len(docs) + 1, dtype=np.int64)
    with open(prefix + ".idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00")
        f.write(np.array([1], dtype="<u8").tobytes())
        f.write(np.array([8], dtype="u1").tobytes())  # dtype code 8: uint16
        f.write(np.array([len(docs), len(doc_idx)], dtype="<u8").tobytes())
        f.write(lengths.astype("<i4").tobytes())
        f.write(pointers.astype("<i8").tobytes())
        f.write(doc_idx.astype("<i8").tobytes())
    with open(prefix + ".bin", "wb") as f:
        for d in docs:
            f.write(np.asarray(d, dtype="<u2").tobytes())


def write_llmc(path, docs, eot=50256):
    """llm.c .bin v1: 256 int32 header, uint16 tokens; each document starts with EOT."""
    tokens = np.concatenate([np.concatenate([[eot], d]) for d in docs]).astype("<u2")
    header = np.zeros(256, dtype="<i4")
    header[0], header[1], header[2] = 20240520, 1, len(tokens)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.tobytes())


def write_npy(root, n_batches, seq_len=SEQ_LEN, batch=BATCH, seed=11):
    """n_batches step directories (zero-padded names: text order is step order)
    of input_ids and labels [batch, seq_len] int64, every value distinct per step."""
    rng = np.random.default_rng(seed)
    for k in range(n_batches):
        d = os.path.join(root, "step%04d" % k)
        os.makedirs(d, exist_ok=True)
        ids = rng.integers(1, 30000, size=(batch, seq_len)).astype(np.int64)
        np.save(os.path.join(d, "input_ids.npy"), ids)
        np.save(os.path.join(d, "labels.npy"), np.roll(ids, -1, axis=1))


def source_uri(kind, tmp, dp):
    """The URI of a dataset of `kind` under tmp (written on first use)."""
    if kind == "synthetic":
        return "synthetic:?mean=40"  # short documents: replicas' cursors differ
    if kind == "llmc":
        path = os.path.join(tmp, "shard.bin")
        if not os.path.exists(path):
            write_llmc(path, documents())
        return "llmc:" + path
    if kind == "megatron":
        prefix = os.path.join(tmp, "corpus_text_document")
        if not os.path.exists(prefix + ".idx"):
            write_megatron(prefix, documents(seed=9))
        return "megatron:" + prefix
    if kind == "npy":
        root = os.path.join(tmp, "npy_dp%d" % dp)
        if not os.path.isdir(root):
            write_npy(root, STEPS * dp)
        return "npy:" + root
    raise ValueError(kind)
