"""datafiles — the data files of the Python tests, written with numpy alone
(independently of the plugins that read them): llm.c token shards, Megatron-LM
indexed datasets and npy step directories. Scripts import it from their own
directory (sys.path[0] when run as `python3 tests/python/x.py`).
"""
import os

import numpy as np

LLMC_EOT = 50256  # llm.c's (GPT-2) end-of-text, the llmc source's default
MEGATRON_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}
MEGATRON_CODES = {np.dtype(v): k for k, v in MEGATRON_DTYPES.items()}


def write_llmc_tokens(path, tokens):
    """llm.c .bin v1: a 256 int32 header (magic 20240520, version 1, count),
    then the tokens as uint16."""
    tokens = np.asarray(tokens).astype("<u2")
    header = np.zeros(256, dtype="<i4")
    header[0], header[1], header[2] = 20240520, 1, tokens.size
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.tobytes())


def write_llmc(path, docs, eot=LLMC_EOT):
    """An llm.c shard of `docs`: each document starts with EOT."""
    write_llmc_tokens(path, np.concatenate([np.concatenate([[eot], d]) for d in docs]))


def write_megatron(prefix, docs, dtype=np.uint16):
    """Megatron-LM MMIDIDX prefix.idx + prefix.bin: one sequence per document."""
    dtype = np.dtype(dtype)
    lengths = np.array([len(d) for d in docs], dtype=np.int32)
    pointers = np.zeros(len(docs), dtype=np.int64)
    if len(docs) > 1:
        pointers[1:] = np.cumsum(lengths[:-1].astype(np.int64) * dtype.itemsize)
    doc_idx = np.arange(len(docs) + 1, dtype=np.int64)
    with open(prefix + ".idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00")
        f.write(np.array([1], dtype="<u8").tobytes())
        f.write(np.array([MEGATRON_CODES[dtype]], dtype="u1").tobytes())
        f.write(np.array([len(docs), len(doc_idx)], dtype="<u8").tobytes())
        f.write(lengths.astype("<i4").tobytes())
        f.write(pointers.astype("<i8").tobytes())
        f.write(doc_idx.astype("<i8").tobytes())
    with open(prefix + ".bin", "wb") as f:
        for d in docs:
            f.write(np.asarray(d, dtype=dtype).tobytes())


def write_npy_steps(root, steps, name="step%d"):
    """One directory root/(name % k) per step k, holding each field of
    steps[k] ({field: array}) as field.npy."""
    for k, fields in enumerate(steps):
        d = os.path.join(root, name % k)
        os.makedirs(d, exist_ok=True)
        for field, array in fields.items():
            np.save(os.path.join(d, field + ".npy"), array)
