"""test_adapters_loader — the adapters on a real cpdl.Loader (mpirun -np 2, cp = 2).

Each rank takes its shard through the adapter; the CP group's shards are
all-gathered (mpi4py) and put back at their global positions, which gives the
global batch the framework would have loaded; the framework's statement
(framework_reference.py) applied to that batch must give every rank exactly
what the adapter gave it. Covered: cpdl.nemo.ShardedBatches (contiguous and
round robin with S not a multiple of 2*cp, thd) with its sharder's layout;
cpdl.megatron.get_batch (round robin, thd); cpdl.torchtitan.DataLoader and
its state_dict()/load_state_dict() resume.
Run: mpirun -np 2 /usr/bin/python3 tests/python/test_adapters_loader.py
"""
import os
import sys

import numpy as np
import torch
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import framework_reference as ref  # noqa: E402
import thd_reference  # noqa: E402
from testutil import report  # noqa: E402

import cpdl  # noqa: E402
from cpdl import megatron, nemo, torchtitan  # noqa: E402

COMM = MPI.COMM_WORLD
CP = 2
SOURCE = "synthetic:?seed=3&dist=uniform&mean=12"
STEPS = 3


def gather_global(local, index, length, dim):
    """Every CP rank's `local` (tokens at global positions `index`) into one
    tensor of `length` along dim."""
    parts = COMM.allgather((local.numpy(), index.numpy()))
    shape = list(local.shape)
    shape[dim] = length
    full = torch.zeros(shape, dtype=local.dtype)
    for array, idx in parts:
        full.index_copy_(dim, torch.from_numpy(idx).long(), torch.from_numpy(array))
    return full


def verdict(ok, what, detail=""):
    ok = COMM.allreduce(bool(ok), op=MPI.LAND)
    if COMM.rank == 0:
        report(ok, what, detail)


def same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def test_nemo(mode, seq_len):
    ok, why = True, ""
    with cpdl.Loader(cp=CP, seq_len=seq_len, batch=2 if mode != "thd" else 1, steps=STEPS,
                     mode=mode, source=SOURCE) as loader:
        batches = nemo.ShardedBatches(loader)
        rank = loader.mesh.cp_rank
        for batch in batches:
            sharder = batches.sharder_for(batch)
            ctx, handed = sharder.shard(batch)
            layout = sharder.shard_layout
            good = handed is batch
            if mode == "thd":
                index = layout.local_token_global_indices.long()
                glob = {k: gather_global(batch[k], index, seq_len, 0)
                        for k in ("input_ids", "labels", "position_ids")}
                bounds = batch["cu_seqlens"].tolist()
                view = loader._current  # the loader's own view: the real lengths
                real = np.diff(view["cu_seqlens"]).tolist()
                row = {k: v[None] for k, v in glob.items()}
                row.update({"seq_lens": torch.tensor([real]),
                            "seq_lens_padded": torch.tensor([np.diff(bounds).tolist()])})
                want, want_layout = ref.nemo_thd(row, CP, rank)
                want.pop("qkv_format", None)
                want["qkv_format"] = "thd"
            else:
                P = layout.padded_seq_len
                index = sharder._indices(P, "cpu")
                glob = {k: gather_global(batch[k], index, P, 1)[:, :seq_len]
                        for k in ("input_ids", "labels", "position_ids")}
                if mode == "contiguous":
                    want, want_layout = ref.nemo_contiguous(dict(glob), CP, rank,
                                                            padding_token_id=0)
                else:
                    want, want_layout, _ = ref.nemo_round_robin(dict(glob), CP, rank)
            good = good and set(batch) == set(want)
            for k, w in want.items():
                g = batch.get(k)
                good = good and (same(g, w) if isinstance(w, torch.Tensor) else g == w)
            for field, w in want_layout.items():
                g = getattr(layout, field)
                good = good and (torch.equal(g, w) if isinstance(w, torch.Tensor) else g == w)
            if not good:
                ok, why = False, "rank %d: %s vs %s" % (rank, sorted(batch), sorted(want))
    verdict(ok, "nemo.ShardedBatches %s: every rank's batch is NeMo's shard of the loaded "
            "batch, with its layout" % mode, why)


def test_megatron(mode):
    ok, why = True, ""
    seq_len = 32
    with cpdl.Loader(cp=CP, seq_len=seq_len, batch=1 if mode == "thd" else 2, steps=STEPS,
                     mode=mode, source=SOURCE) as loader:
        rank = loader.mesh.cp_rank
        it = iter(loader)
        for _ in range(STEPS):
            values = megatron.get_batch(it, device="cpu")
            got = dict(zip(megatron.BATCH_KEYS, values))
            if mode == "thd":
                cu = got["cu_seqlens_padded"][0].tolist()
                index = torch.from_numpy(thd_reference.te_partitioned_indices(cu, seq_len, CP,
                                                                              rank))
            else:
                index = ref.head_tail(CP, rank, seq_len)
            glob = {k: gather_global(got[k], index, seq_len, 1)
                    for k in ("tokens", "labels", "loss_mask", "position_ids")}
            glob.update({k: got[k] for k in ("attention_mask", "cu_seqlens",
                                             "cu_seqlens_padded", "max_seqlen")})
            want = ref.megatron(glob, CP, rank)
            good = all(same(got[k], want[k]) for k in ("tokens", "labels", "loss_mask",
                                                       "position_ids"))
            good = good and got["tokens"].dtype == torch.int64 and \
                got["loss_mask"].dtype == torch.float32
            if mode == "thd":
                params = megatron.packed_seq_params(got["cu_seqlens"], got["cu_seqlens_padded"],
                                                    got["max_seqlen"], seq_length=seq_len)
                bounds = params["cu_seqlens_q"] if isinstance(params, dict) \
                    else params.cu_seqlens_q
                good = good and bounds.tolist() == cu
            if not good:
                ok, why = False, "rank %d" % rank
    verdict(ok, "megatron.get_batch %s: every rank's batch is Megatron's CP part of the loaded "
            "batch" % mode, why)


def test_torchtitan():
    seq_len = 24
    opts = {"cp": CP, "steps": 16, "source": SOURCE, "slots": 2}
    dl = torchtitan.DataLoaderConfig(loader=opts).build(dp_world_size=1, dp_rank=0,
                                                        num_tokens_per_batch=seq_len)
    rank = dl.loader.mesh.cp_rank
    ok = True
    it = iter(dl)
    for step in range(2):
        inputs, labels = next(it)
        index = ref.head_tail(CP, rank, seq_len)
        glob_in = gather_global(inputs["input"], index, seq_len, 0)
        glob_pos = gather_global(inputs["positions"], index, seq_len, 0)
        glob_lab = gather_global(labels, index, seq_len, 0)
        w_in, w_lab, w_extra = ref.torchtitan({"input": glob_in, "positions": glob_pos},
                                              glob_lab, CP, rank)
        ok = ok and same(inputs["input"], w_in) and same(labels, w_lab) and \
            same(inputs["positions"], w_extra["positions"])
    # copies outlive the slot: hold this step across a full turn of the ring
    held, _ = next(it)
    kept = held["input"].clone()
    for _ in range(int(dl.loader.config["slots"]) + 1):
        next(it)
    ok = ok and torch.equal(held["input"], kept)
    state = dl.state_dict()
    inputs, labels = next(it)
    expected = inputs["input"].clone()
    dl.close()
    resumed = torchtitan.DataLoaderConfig(loader=opts).build(dp_world_size=1, dp_rank=0,
                                                             num_tokens_per_batch=seq_len)
    resumed.load_state_dict(state)
    again, _ = next(iter(resumed))
    resumed.close()
    verdict(ok, "torchtitan.DataLoader: every rank's batch is the head-tail shard of the "
            "loaded stream")
    verdict(torch.equal(again["input"], expected),
            "torchtitan.DataLoader: load_state_dict(state_dict()) resumes at the next step")


def main():
    if COMM.size != CP:
        print("run under mpirun -np %d" % CP)
        return 2
    for test in (lambda: test_nemo("contiguous", 30), lambda: test_nemo("round_robin", 30),
                 lambda: test_nemo("thd", 32), lambda: test_megatron("round_robin"),
                 lambda: test_megatron("thd"), test_torchtitan):
        try:
            test()
        except Exception:  # noqa: BLE001 — a failure on any rank fails the verdict
            import traceback
            traceback.print_exc()
            verdict(False, "exception", "")
    if COMM.rank == 0:
        import testutil
        return testutil.summary()
    return 0


if __name__ == "__main__":
    rc = main()
    rc = COMM.allreduce(rc, op=MPI.MAX)
    sys.exit(rc)
