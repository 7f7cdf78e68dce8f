"""megatron_reference — an independent numpy statement of Megatron-LM's GPT
data pipeline (megatron/core/datasets: blended_megatron_dataset_builder.py,
gpt_dataset.py, blended_dataset.py, helpers.cpp, utils.py), written from
reading that code, with numpy's legacy RandomState as the RNG. It is the test
oracle for the gpt: source and the "Megatron-equivalent" side of
scripts/bench/bench-gpt-index. Plain Python loops where Megatron uses C++ (the
sample index, the blend) unless fast=True asks for numpy's vectorized
equivalent of the sample index (same tokens; benchmarks only).
"""
import math
import re

import numpy as np

DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}


class Indexed:
    """IndexedDataset, sequences only: sequence_lengths and get()."""

    def __init__(self, prefix):
        raw = np.memmap(prefix + ".idx", dtype=np.uint8, mode="r")  # as Megatron
        assert raw[:9].tobytes() == b"MMIDIDX\x00\x00"
        self.dtype = np.dtype(DTYPES[int(raw[17])])
        n = int(raw[18:26].view("<u8")[0])
        self.sequence_lengths = raw[34:34 + 4 * n].view("<i4")
        self.pointers = raw[34 + 4 * n:34 + 12 * n].view("<i8")
        self.bin = np.memmap(prefix + ".bin", dtype=self.dtype, mode="r")

    def get(self, idx, offset=0, length=None):
        if length is None:
            length = int(self.sequence_lengths[idx]) - offset
        start = int(self.pointers[idx]) // self.dtype.itemsize + offset
        return np.array(self.bin[start:start + length])


def normalize(weights):
    w = np.array(weights, dtype=np.float64)
    return (w / np.sum(w)).tolist()


def split_bounds(split):
    vector = list(map(float, re.findall(r"[.0-9]+", split)))
    vector = normalize(vector + [0.0] * (3 - len(vector)))
    expansion = [0]
    for v in vector:
        expansion.append(expansion[-1] + v)
    return [None if b <= a else (a, b) for a, b in zip(expansion[:-1], expansion[1:])]


def document_index(documents, num_epochs, rs, separate_final_epoch):
    if not separate_final_epoch or num_epochs == 1:
        d = np.mgrid[0:num_epochs, 0:len(documents)][1]
        d[:] = documents
        d = d.reshape(-1).astype(np.int32)
        rs.shuffle(d)
        return d
    first = document_index(documents, num_epochs - 1, rs, False)
    last = document_index(documents, 1, rs, False)
    return np.concatenate((first, last))


def sample_index_loop(sizes, doc_idx, seq_length, num_epochs, tokens_per_epoch, extra):
    """helpers.cpp build_sample_idx (drop_last_partial_sequence), as a loop."""
    num_samples = (num_epochs * tokens_per_epoch - extra) // seq_length
    out = np.zeros((num_samples + 1, 2), dtype=np.int64)
    di, off, row = 0, 0, 1
    while row <= num_samples:
        remaining = seq_length + extra
        while remaining != 0:
            length = int(sizes[doc_idx[di]]) - off
            remaining -= length
            if remaining <= 0:
                off += remaining + length - extra
                remaining = 0
            else:
                if di == len(doc_idx) - 1:
                    off = int(sizes[doc_idx[di]]) - extra
                    break
                di += 1
                off = 0
        out[row] = (di, off)
        row += 1
    return out


def sample_index_fast(sizes, doc_idx, seq_length, num_epochs, tokens_per_epoch, extra):
    """The same sample starts by searchsorted over the token stream (numpy)."""
    num_samples = (num_epochs * tokens_per_epoch - extra) // seq_length
    cum = np.zeros(len(doc_idx) + 1, dtype=np.int64)
    np.cumsum(sizes[doc_idx], out=cum[1:])
    starts = np.arange(num_samples + 1, dtype=np.int64) * seq_length
    doc = np.searchsorted(cum, starts, side="right") - 1
    return np.stack([doc, starts - cum[doc]], axis=1)


def shuffle_index(num_samples, total_size, rs):
    dtype = np.uint32
    if total_size >= (np.iinfo(np.uint32).max - 1):
        dtype = np.int64
    first = np.arange(0, num_samples, dtype=dtype)
    rs.shuffle(first)
    if num_samples == total_size:
        return first
    last = np.arange(num_samples, total_size, dtype=dtype)
    rs.shuffle(last)
    return np.concatenate((first, last))


class GPT:
    """GPTDataset over one prefix and one split."""

    def __init__(self, ds, indices, num_samples, seq_length, seed, extra=1, fast=False):
        self.ds, self.seq_length, self.extra = ds, seq_length, extra
        tokens_per_epoch = int(np.sum(ds.sequence_lengths[indices]))
        assert tokens_per_epoch > 0, "Megatron loops forever here"
        num_epochs = 1
        if num_samples is not None:
            need, have = num_samples * seq_length + extra, tokens_per_epoch
            while have < need:
                num_epochs += 1
                have += tokens_per_epoch
        self.separate_final_epoch = False
        if num_epochs > 1:
            sans = ((num_epochs - 1) * tokens_per_epoch - extra) // seq_length
            from_final = num_samples - sans
            per_epoch = (tokens_per_epoch - extra) // seq_length
            assert 0 <= from_final <= per_epoch + 1
            self.separate_final_epoch = from_final < int(0.80 * per_epoch)
        self.num_epochs = num_epochs
        rs = np.random.RandomState(seed)
        self.document_index = document_index(indices, num_epochs, rs, self.separate_final_epoch)
        build = sample_index_fast if fast else sample_index_loop
        self.sample_index = build(ds.sequence_lengths, self.document_index, seq_length,
                                  num_epochs, tokens_per_epoch, extra)
        total = self.sample_index.shape[0] - 1
        first = sans if self.separate_final_epoch else total
        self.shuffle_index = shuffle_index(first, total, rs)

    def __len__(self):
        return self.sample_index.shape[0] - 1

    def text(self, idx):
        idx = self.shuffle_index[idx]
        b, bo = self.sample_index[idx]
        e, eo = self.sample_index[idx + 1]
        if b == e:
            parts = [self.ds.get(self.document_index[b], offset=bo, length=eo - bo + self.extra)]
        else:
            parts = []
            for i in range(b, e + 1):
                offset = 0 if i > b else bo
                length = None if i < e else eo + self.extra
                parts.append(self.ds.get(self.document_index[i], offset=offset, length=length))
        return np.concatenate(parts).astype(np.int64)


def blending_indices(weights, size):
    """helpers.cpp build_blending_indices."""
    dataset_index = np.zeros(size, dtype=np.int16)
    dataset_sample_index = np.zeros(size, dtype=np.int64)
    current = [0] * len(weights)
    for i in range(size):
        x = max(float(i), 1.0)
        best, best_error = 0, weights[0] * x - current[0]
        for d in range(1, len(weights)):
            error = weights[d] * x - current[d]
            if error > best_error:
                best, best_error = d, error
        dataset_index[i] = best
        dataset_sample_index[i] = current[best]
        current[best] += 1
    return dataset_index, dataset_sample_index


class Pipeline:
    """BlendedMegatronDatasetBuilder for one split of --data-path items."""

    def __init__(self, items, num_samples, seq_length, seed, split="969,30,1", split_index=0,
                 surplus=0.005, extra=1, fast=False):
        if len(items) % 2 == 1:
            prefixes, weights = list(items), None
        else:
            try:
                weights = [float(w) for w in items[0::2]]
                prefixes = list(items[1::2])
            except ValueError:
                prefixes, weights = list(items), None
        if weights is not None:
            weights = normalize(weights)
        bounds = split_bounds(split)[split_index]
        assert bounds is not None
        datasets = []
        for k, prefix in enumerate(prefixes):
            ds = Indexed(prefix)
            n = ds.sequence_lengths.shape[0]
            beg, end = int(round(bounds[0] * float(n))), int(round(bounds[1] * float(n)))
            indices = np.arange(beg, end, dtype=np.int32)
            if weights is None:
                want = num_samples if len(prefixes) == 1 else None
            else:
                want = int(math.ceil(math.ceil(num_samples * weights[k]) * (1 + surplus)))
            datasets.append(GPT(ds, indices, want, seq_length, seed, extra, fast))
        self.datasets = datasets
        self.blended = weights is not None or len(prefixes) > 1
        if not self.blended:
            self.size = len(datasets[0])
            return
        if weights is not None:
            size = sum(int(math.ceil(num_samples * w)) for w in weights)
            blend_weights = normalize(weights)
        else:
            lengths = [len(d) for d in datasets]
            size = min(num_samples, sum(lengths))
            blend_weights = normalize(lengths)
        self.size = size
        self.dataset_index, self.dataset_sample_index = blending_indices(blend_weights, size)
        # BlendedDataset._build_indices: a blend that draws more samples from a dataset than
        # its mid-level dataset holds is an IndexError (raise mid_level_dataset_surplus)
        drawn = np.bincount(self.dataset_index, minlength=len(datasets))
        for k, d in enumerate(datasets):
            if drawn[k] > len(d):
                raise IndexError("the blend oversamples dataset %d: %d samples of %d; increase "
                                 "mid_level_dataset_surplus (%s)" % (k, drawn[k], len(d), surplus))

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        if not self.blended:
            return self.datasets[0].text(i)
        return self.datasets[self.dataset_index[i]].text(self.dataset_sample_index[i])


def row(text, seq_length, eod=-1, reset_position_ids=False, eod_mask_loss=False, pad=-1,
        extra=1):
    """GPTDataset.__getitem__ without the attention mask: tokens, labels,
    loss_mask (float32), position_ids."""
    text = np.asarray(text, dtype=np.int64)
    if extra:
        tokens, labels = text[:-1].copy(), text[1:].copy()
    else:
        tokens, labels = text.copy(), np.roll(text, -1)
        labels[-1] = pad
    loss_mask = np.ones(seq_length, dtype=np.float32)
    if eod_mask_loss:
        loss_mask[tokens == eod] = 0.0
    position_ids = np.arange(seq_length, dtype=np.int64)
    if reset_position_ids:
        prev = 0
        for i in np.nonzero(tokens == eod)[0]:
            position_ids[i + 1:] -= i + 1 - prev
            prev = i + 1
    loss_mask[labels == pad] = 0.0
    tokens[tokens == pad] = 0
    labels[labels == pad] = 0
    return tokens, labels, loss_mask, position_ids
