"""resume_data — small datasets for the resume tests, written by datafiles.py
(numpy alone, independently of the plugins): llm.c shards, Megatron-LM indexed
datasets and npy step directories; and the resume matrix's cells.

A cell is (np, cp, tp, source, collate); dp = np / (cp * tp). The cells cover
every source with dp >= 2, both collates, tp = 2 and dp = 3.
"""
import os

import numpy as np

from datafiles import write_llmc, write_megatron, write_npy_steps

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


def write_npy(root, n_batches, seq_len=SEQ_LEN, batch=BATCH, seed=11):
    """n_batches step directories (zero-padded names: text order is step order)
    of input_ids and labels [batch, seq_len] int64, every value distinct per step."""
    rng = np.random.default_rng(seed)
    steps = []
    for _ in range(n_batches):
        ids = rng.integers(1, 30000, size=(batch, seq_len)).astype(np.int64)
        steps.append({"input_ids": ids, "labels": np.roll(ids, -1, axis=1)})
    write_npy_steps(root, steps, name="step%04d")


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
