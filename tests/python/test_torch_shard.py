"""test_torch_shard — cpdl.torch.make_contiguous_shard_cp_batch_and_ctx (no MPI).

Checks the drop-in against (a) a small torch statement of docs/design.md's contract
written here, independently of the C core, on random batches that reach its
branches, and (b) cpdl.shard_batch on the same inputs; then the in-place
semantics (same dict, keys added/removed, pass-through objects untouched),
metadata popping, bfloat16; then the torch-ops path (the one GPU tensors
take) on the same random cases against the C core, bit for bit, on meta
tensors (which fail on any host round trip) and the device errors.
Plain script: prints "N passed, M failed", exits non-zero on failure.
Run: PYTHONPATH=python CPDL_LIBRARY=<build>/libcpdl.so /usr/bin/python3 tests/python/test_torch_shard.py
     ... test_torch_shard.py --device cuda   (GPU node: the random cases on CUDA tensors)
"""
import contextlib
import sys

import numpy as np
import torch

import cpdl
from cpdl.torch import make_contiguous_shard_cp_batch_and_ctx as shard
from testutil import report, run


class FakeMesh:
    def __init__(self, size, rank=0):
        self._size, self._rank = size, rank

    def size(self):
        return self._size

    def get_local_rank(self):
        return self._rank


# ---- the contract in torch, written from docs/design.md ---------------------

def _pad(t, dim, n, value):
    if n == 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t, torch.full(shape, value, dtype=t.dtype)], dim=dim)


def reference(batch, cp, rank, tp, loss_mask, pad_id, meta_dims, meta_pads):
    b = dict(batch)
    am = b.pop("attention_mask", None)
    if "padding_mask" not in b and am is not None:
        if am.dim() == 2:
            b["padding_mask"] = am == 0
        else:
            diag = torch.diagonal(am[:, 0], dim1=-2, dim2=-1)
            b["padding_mask"] = ~diag if am.dtype == torch.bool else diag != 0
    primary = "input_ids" if "input_ids" in b else "inputs_embeds"
    B, S = b[primary].shape[0], b[primary].shape[1]
    pos_dim = 1
    if "position_ids" not in b:
        if cp > 1 or tp > 1:
            b["position_ids"] = torch.arange(S, dtype=torch.int64).expand(B, S).clone()
    elif b["position_ids"].dim() == 3:
        pos_dim = 2
    elif b["position_ids"].shape[0] == 1 and B > 1:
        b["position_ids"] = b["position_ids"].expand(B, S).clone()
    if loss_mask is not None:
        b["loss_mask"] = loss_mask
    if "labels" not in b:
        b["labels"] = b.pop("loss_mask")
    if "_packed_seq_ids" not in b:
        if "padding_mask" in b:
            b["_packed_seq_ids"] = (~b["padding_mask"].bool()).to(torch.int64)
        else:
            b["_packed_seq_ids"] = torch.ones(B, S, dtype=torch.int64)
    n = (-S) % (2 * cp)
    pads = {"input_ids": pad_id, "inputs_embeds": 0, "mm_token_type_ids": 0,
            "_packed_seq_ids": 0, "per_layer_inputs": 0, "padding_mask": True,
            "labels": -100, "loss_mask": 0}
    dims = {k: 1 for k in pads}
    dims["position_ids"] = pos_dim
    for k, d in meta_dims.items():
        dims[k] = d
        pads[k] = meta_pads.get(k, 0)
    L = (S + n) // cp
    for k in list(b):
        if k not in dims:
            continue
        t = b[k]
        if k == "position_ids":
            if n:
                last = t.narrow(pos_dim, S - 1, 1)
                steps = torch.arange(1, n + 1, dtype=t.dtype).view(
                    [n if i == pos_dim else 1 for i in range(t.dim())])
                t = torch.cat([t, last + steps], dim=pos_dim)
        else:
            t = _pad(t, dims[k], n, pads[k])
        b[k] = t.narrow(dims[k], rank * L, L).contiguous()
    return b


def random_batch(rng):
    cp = int(rng.choice([1, 2, 3, 4]))
    tp = int(rng.choice([1, 2]))
    B = int(rng.integers(1, 4))
    S = int(rng.integers(1, 20))
    g = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    batch = {}
    if rng.random() < 0.7:
        batch["input_ids"] = torch.randint(1, 1000, (B, S), generator=g)
    else:
        batch["inputs_embeds"] = torch.randn(B, S, 3, generator=g)
    kind = rng.integers(0, 4)
    lengths = torch.tensor(rng.integers(1, S + 1, size=B))
    real = torch.arange(S).view(1, S) < lengths.view(B, 1)
    if kind == 1:
        batch["attention_mask"] = real.to(torch.int64)
    elif kind == 2:
        m = torch.zeros(B, 1, S, S, dtype=torch.bool)
        m[:, 0] = real.view(B, 1, S) & real.view(B, S, 1)
        batch["attention_mask"] = m
    elif kind == 3:
        batch["padding_mask"] = ~real
        if rng.random() < 0.5:
            batch["attention_mask"] = real.to(torch.int64)
    pos = rng.integers(0, 4)
    if pos == 1:
        batch["position_ids"] = torch.arange(S).view(1, S) + 5
    elif pos == 2:
        batch["position_ids"] = torch.randint(0, 50, (3, B, S), generator=g)
    elif pos == 3:
        batch["position_ids"] = torch.randint(0, 50, (B, S), generator=g)
    loss_mask = None
    lab = rng.integers(0, 3)
    if lab != 1:
        batch["labels"] = torch.randint(0, 1000, (B, S), generator=g)
    if lab >= 1:
        loss_mask = (torch.rand(B, S, generator=g) > 0.3).to(torch.int64)
    if rng.random() < 0.3:
        batch["_packed_seq_ids"] = torch.randint(1, 4, (B, S), generator=g)
    if rng.random() < 0.3:
        batch["mm_token_type_ids"] = torch.randint(0, 2, (B, S), generator=g)
    if rng.random() < 0.3:
        batch["per_layer_inputs"] = torch.randn(B, S, 2, 2, generator=g).to(torch.float16)
    meta_dims, meta_pads = {}, {}
    if rng.random() < 0.4:
        batch["vision_group_ids"] = torch.randint(0, 9, (B, S), generator=g).to(torch.int32)
        meta_dims["vision_group_ids"] = 1
        meta_pads["vision_group_ids"] = -1
    if rng.random() < 0.3:
        batch["pixel_values"] = torch.randn(2, 3, generator=g)
    rank = int(rng.integers(0, cp))
    return batch, cp, rank, tp, loss_mask, int(rng.integers(0, 3)), meta_dims, meta_pads


def same(got, want, where):
    if set(got) != set(want):
        return "%s: keys %s vs %s" % (where, sorted(got), sorted(want))
    for k in want:
        g, w = got[k], want[k]
        if not isinstance(w, torch.Tensor):
            if g is not w:
                return "%s: %s changed" % (where, k)
            continue
        if g.dtype != w.dtype or g.shape != w.shape or not torch.equal(g, w):
            return "%s: %s got %s %s %s, want %s %s %s" % (where, k, g.dtype, tuple(g.shape),
                                                         g.flatten()[:8].tolist(), w.dtype,
                                                         tuple(w.shape), w.flatten()[:8].tolist())
    return ""


def test_random():
    rng = np.random.default_rng(7)
    for case in range(300):
        batch, cp, rank, tp, loss_mask, pad_id, meta_dims, meta_pads = random_batch(rng)
        want = reference(batch, cp, rank, tp, loss_mask, pad_id, meta_dims, meta_pads)
        mine = dict(batch)
        if meta_dims:
            mine["_cp_metadata_seq_dims"] = dict(meta_dims)
            mine["_cp_metadata_pad_values"] = dict(meta_pads)
        ctx, out = shard(FakeMesh(cp, rank), FakeMesh(tp) if tp > 1 or case % 2 else None, mine,
                         loss_mask=loss_mask, padding_token_id=pad_id)
        why = same(out, want, "case %d (cp %d rank %d)" % (case, cp, rank))
        report(not why and out is mine and ctx is contextlib.nullcontext, "random contract", why)
        # Against the C core through the numpy binding, on the same inputs.
        np_in = {k: v.numpy() for k, v in batch.items() if k != "pixel_values"}
        ref = cpdl.shard_batch(np_in, cp, rank, tp_size=tp,
                               loss_mask=None if loss_mask is None else loss_mask.numpy(),
                               padding_token_id=pad_id, metadata_seq_dims=meta_dims,
                               metadata_pad_values=meta_pads)
        bad = [k for k in ref if not np.array_equal(out[k].numpy(), ref[k])]
        report(not bad, "agrees with cpdl.shard_batch", "case %d: %s" % (case, bad))


def test_in_place():
    ids = torch.arange(10).view(1, 10)
    pixels = torch.randn(2, 2)
    fn = len  # a non-tensor entry, as NeMo's batches carry callables
    batch = {"input_ids": ids, "attention_mask": torch.ones(1, 10, dtype=torch.int64),
             "labels": ids.clone(), "pixel_values": pixels, "_cp_make_batch_fn": fn,
             "vgid": torch.arange(10).view(1, 10).to(torch.int32),
             "_cp_metadata_seq_dims": {"vgid": 1, "absent": 1},
             "_cp_metadata_pad_values": {"vgid": -7}}
    before = ids.clone()
    _, out = shard(FakeMesh(4, 3), FakeMesh(1), batch, padding_token_id=9)
    report(out is batch, "returns the same dict")
    report("attention_mask" not in batch, "attention_mask removed")
    report("_cp_metadata_seq_dims" not in batch and "_cp_metadata_pad_values" not in batch,
           "metadata entries popped")
    report(batch["pixel_values"] is pixels and batch["_cp_make_batch_fn"] is fn,
           "pass-through objects untouched")
    report(torch.equal(ids, before), "input tensors not modified")
    report(sorted(batch) == sorted(["input_ids", "labels", "padding_mask", "position_ids",
                                    "_packed_seq_ids", "pixel_values", "_cp_make_batch_fn",
                                    "vgid"]), "keys after", sorted(batch))
    # S=10, cp=4: padded to 16, L=4, rank 3 keeps [12, 16): all padding.
    report(batch["input_ids"].tolist() == [[9, 9, 9, 9]], "input_ids pad", batch["input_ids"])
    report(batch["vgid"].tolist() == [[-7, -7, -7, -7]], "metadata pad value",
           batch["vgid"])
    report(batch["position_ids"].tolist() == [[12, 13, 14, 15]], "positions continue")
    report(_writable(batch["input_ids"]), "results are writable tensors")
    # Without attention_mask and position_ids, cp=1 tp=1: positions not synthesized.
    b2 = {"input_ids": torch.arange(4).view(1, 4), "labels": torch.arange(4).view(1, 4)}
    shard(FakeMesh(1), None, b2)
    report("position_ids" not in b2 and "padding_mask" not in b2
           and b2["_packed_seq_ids"].tolist() == [[1, 1, 1, 1]], "cp=1 tp=1", sorted(b2))


def _writable(tensor):
    try:
        tensor[(0,) * tensor.dim()] = tensor[(0,) * tensor.dim()]
        return True
    except Exception:  # noqa: BLE001
        return False


def test_bfloat16():
    emb = torch.randn(2, 5, 4).to(torch.bfloat16)
    batch = {"inputs_embeds": emb, "labels": torch.zeros(2, 5, dtype=torch.int64)}
    shard(FakeMesh(2, 0), None, batch)
    got = batch["inputs_embeds"]
    report(got.dtype == torch.bfloat16 and tuple(got.shape) == (2, 4, 4)
           and torch.equal(got, emb[:, :4]), "bfloat16 primary", got.dtype)
    batch = {"inputs_embeds": emb, "labels": torch.zeros(2, 5, dtype=torch.int64)}
    shard(FakeMesh(2, 1), None, batch)
    got = batch["inputs_embeds"]
    report(torch.equal(got[:, :1], emb[:, 4:5]) and bool((got[:, 1:] == 0).all()),
           "bfloat16 padded with 0")


def torch_ops_cases(device, torch_ops, count=300):
    """The random cases moved to `device`, through the torch-ops path, against
    the C core on the CPU originals: same keys, dtypes, shapes, bits."""
    rng = np.random.default_rng(11)
    for case in range(count):
        batch, cp, rank, tp, loss_mask, pad_id, meta_dims, meta_pads = random_batch(rng)
        tp_mesh = FakeMesh(tp) if tp > 1 or case % 2 else None
        want = dict(batch)
        if meta_dims:
            want["_cp_metadata_seq_dims"] = dict(meta_dims)
            want["_cp_metadata_pad_values"] = dict(meta_pads)
        mine = {k: (v.to(device) if isinstance(v, torch.Tensor) and k != "pixel_values" else v)
                for k, v in want.items()}
        shard(FakeMesh(cp, rank), tp_mesh, want, loss_mask=loss_mask, padding_token_id=pad_id)
        ctx, out = shard(FakeMesh(cp, rank), tp_mesh, mine, padding_token_id=pad_id,
                         loss_mask=None if loss_mask is None else loss_mask.to(device),
                         torch_ops=torch_ops)
        where = "case %d (cp %d rank %d)" % (case, cp, rank)
        bad = [k for k in want if k not in out]
        bad += [k for k in out if k not in want]
        for k in want:
            if k in out and isinstance(want[k], torch.Tensor) and k != "pixel_values":
                g = out[k]
                if g.device != torch.device(device) and not (g.device.type == "cuda" and
                                                             device.startswith("cuda")):
                    bad.append("%s on %s" % (k, g.device))
                elif g.dtype != want[k].dtype or g.shape != want[k].shape or \
                        not torch.equal(g.cpu(), want[k]):
                    bad.append(k)
        report(not bad and out is mine and ctx is contextlib.nullcontext and
               out.get("pixel_values") is batch.get("pixel_values"),
               "torch ops on %s = C core" % device, "%s: %s" % (where, bad))


def test_torch_ops_cpu():
    torch_ops_cases("cpu", True)


def test_torch_ops_meta():
    """Meta tensors have shapes and no data: any .cpu(), .item() or numpy
    round trip fails. The path must give the C core's shapes and dtypes."""
    rng = np.random.default_rng(5)
    for case in range(100):
        batch, cp, rank, tp, loss_mask, pad_id, meta_dims, meta_pads = random_batch(rng)
        if meta_dims:
            continue
        want = shard(FakeMesh(cp, rank), FakeMesh(tp), dict(batch), loss_mask=loss_mask,
                     padding_token_id=pad_id)[1]
        meta = {k: v.to("meta") for k, v in batch.items()}
        _, out = shard(FakeMesh(cp, rank), FakeMesh(tp), meta, padding_token_id=pad_id,
                       loss_mask=None if loss_mask is None else loss_mask.to("meta"))
        bad = [k for k in want if k not in out or out[k].shape != want[k].shape or
               out[k].dtype != want[k].dtype or
               (k != "pixel_values" and out[k].device.type != "meta")]
        report(not bad and set(out) == set(want), "meta: no host round trip, C shapes",
               "case %d: %s" % (case, bad))


def test_device_errors():
    ids = torch.arange(8).view(1, 8)
    batch = {"input_ids": ids.to("meta"), "labels": ids}
    try:
        shard(FakeMesh(2, 0), None, batch)
        report(False, "mixed devices refused", "no error")
    except ValueError as exc:
        text = str(exc)
        report("labels" in text and "input_ids" in text and "meta" in text,
               "mixed devices: error names both fields", text)
    report(batch["input_ids"].device.type == "meta" and batch["labels"] is ids,
           "batch unchanged after the error")
    batch = {"input_ids": ids.to("meta")}  # no labels, no loss mask: the C core's error
    try:
        shard(FakeMesh(2, 0), None, batch)
        report(False, "torch ops: missing labels refused")
    except cpdl.Error as exc:
        report("labels" in str(exc), "torch ops: the C core's error names labels", str(exc))
    try:
        shard(FakeMesh(2, 5), None, {"input_ids": ids, "labels": ids}, torch_ops=True)
        report(False, "torch ops: bad cp rank refused")
    except ValueError as exc:
        report("cp rank 5" in str(exc), "torch ops: bad cp rank named", str(exc))


def test_contract_error():
    batch = {"input_ids": torch.zeros(1, 4, dtype=torch.int64)}  # no labels, no loss mask
    try:
        shard(FakeMesh(2, 0), None, batch)
        report(False, "missing labels refused")
    except cpdl.Error as exc:
        report("labels" in str(exc), "missing labels: cpdl.Error names labels", str(exc))


def main():
    if "--device" in sys.argv:
        # On a GPU node: the same random cases on that device (default path by device).
        device = sys.argv[sys.argv.index("--device") + 1]
        return run((lambda: torch_ops_cases(device, None),))
    return run((test_random, test_in_place, test_bfloat16, test_contract_error,
                test_torch_ops_cpu, test_torch_ops_meta, test_device_errors))


if __name__ == "__main__":
    sys.exit(main())
