"""handover_gpu — the data wait on a GPU training step's critical path, per feed.

Run under mpirun, one rank per GPU or several ranks sharing one (ranks use
cuda:(local rank mod GPU count)); cp = the number of ranks:
  mpirun -np 2 --bind-to none python3 bench/handover_gpu.py --seq-lens 128K,1M --steps 200
Each step: t0, take the step's shard on the device (the data wait), then a real
compute step — bf16 matmuls sized to about --compute-ms on this GPU, reading
the shard — ending in .item() as a loss read does, then a barrier (CP ranks
exchange K/V every step, so they move in lockstep; --no-sync drops it). The data wait is the time
from t0 until the shard is on the device and usable on the current stream,
max over ranks per step. Feeds, in the same job on the same data:
  native      Loader(device="cuda", prefetch=1), the C copy thread (src/device.c)
  python      the same with CPDL_PREFETCH_ENGINE=python (the Python worker)
  pin         Loader(pin=True): next(), .to(device, non_blocking=True), wait, release
  every-rank  each rank loads the whole batch (a cp=1 loader of its own),
              shards it on the host (cpdl.shard_batch) and copies its shard
Prints a table and, with --json FILE, one JSON line per (feed, S).
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))
import cpdl  # noqa: E402


def parse_len(text):
    text = text.strip().upper()
    mult = {"K": 1024, "M": 1024 * 1024}.get(text[-1], 1)
    return int(text[:-1] if text[-1] in "KM" else text) * mult


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(math.ceil(q / 100.0 * len(v))) - 1))]


class Compute:
    """bf16 matmuls that take about `ms` on this device, reading the shard."""

    def __init__(self, device, ms, n=4096):
        self.a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        self.b = torch.randn(n, n, device=device, dtype=torch.bfloat16) / n
        for _ in range(3):
            self.a @ self.b
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            self.a @ self.b
        torch.cuda.synchronize()
        one = (time.perf_counter() - t0) / 10
        self.reps = max(1, int(round(ms / 1e3 / one)))

    def step(self, shard):
        x = self.a
        for _ in range(self.reps):
            x = x @ self.b
        ids = shard["input_ids"]
        return (x[0, 0].float() + ids.reshape(-1)[-1].float() * 0).item()


PREFETCH = 1


def feed_native(kw, device):
    os.environ["CPDL_PREFETCH_ENGINE"] = "native"
    loader = cpdl.Loader(device=device, prefetch=PREFETCH, **kw)
    assert type(loader._feed).__name__ == "NativeFeed", type(loader._feed).__name__
    it = iter(loader)
    return loader, lambda: next(it), []


def feed_python(kw, device):
    os.environ["CPDL_PREFETCH_ENGINE"] = "python"
    loader = cpdl.Loader(device=device, prefetch=PREFETCH, **kw)
    os.environ["CPDL_PREFETCH_ENGINE"] = "native"
    it = iter(loader)
    return loader, lambda: next(it), []


def feed_pin(kw, device):
    loader = cpdl.Loader(pin=True, **kw)
    it = iter(loader)

    def take():
        batch = next(it)
        shard = {k: t.to(device, non_blocking=True) for k, t in batch.torch().items()}
        torch.cuda.current_stream().synchronize()  # the copies read the slot
        batch.release()
        return shard
    return loader, take, []


def feed_every_rank(kw, device, cp, cp_rank, mode):
    from mpi4py import MPI
    mine = dict(kw, cp=1, mode="contiguous")
    loader = cpdl.Loader(comm=MPI.COMM_SELF, **mine)
    it = iter(loader)

    def take():
        whole = next(it)
        shard = cpdl.shard_batch(dict(whole), cp, cp_rank, mode=mode)
        out = {k: torch.from_numpy(a).to(device) for k, a in shard.items()}
        whole.release()
        return out
    return loader, take, []


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seq-lens", default="128K,1M")
    ap.add_argument("--feeds", default="native,python,pin,every-rank")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--compute-ms", type=float, default=20.0)
    ap.add_argument("--mode", default="contiguous")
    ap.add_argument("--json", default="")
    ap.add_argument("--prefetch", type=int, default=1, help="steps ahead (native, python)")
    ap.add_argument("--no-sync", action="store_true",
                    help="no barrier at the end of each step (ranks may drift apart)")
    args = ap.parse_args()
    global PREFETCH
    PREFETCH = args.prefetch

    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    local = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", rank))
    ngpu = torch.cuda.device_count()
    device = torch.device("cuda", local % ngpu)
    torch.cuda.set_device(device)
    compute = Compute(device, args.compute_ms)
    rows = []
    for S in [parse_len(s) for s in args.seq_lens.split(",")]:
        kw = dict(cp=size, seq_len=S, steps=args.warmup + args.steps + 2, mode=args.mode)
        for name in args.feeds.split(","):
            if name == "every-rank":
                loader, take, _ = feed_every_rank(kw, device, size, rank, args.mode)
            else:
                loader, take, _ = {"native": feed_native, "python": feed_python,
                                   "pin": feed_pin}[name](kw, device)
            waits, steps, sums, row = [], [], [], {}
            feed = getattr(loader, "_feed", None)
            if hasattr(feed, "profile"):
                feed.profile = []
            comm.Barrier()
            for i in range(args.warmup + args.steps):
                t0 = time.perf_counter()
                shard = take()
                t1 = time.perf_counter()
                if i < 5:  # the same data whatever the feed (checked below; warmup only)
                    sums.append([int(shard[k].double().sum().item()) for k in sorted(shard)])
                compute.step(shard)
                del shard
                if not args.no_sync:
                    # The ranks of a CP group exchange K/V every step, so none runs
                    # ahead of the others; without this the faster rank drifts until
                    # the ring's slots bound it, and then waits for the slower one.
                    comm.Barrier()
                t2 = time.perf_counter()
                if i >= args.warmup:
                    waits.append((t1 - t0) * 1e3)
                    steps.append((t2 - t0) * 1e3)
            prof = getattr(getattr(loader, "_feed", None), "profile", None)
            loader.close()
            if prof is not None:  # every rank's parts, gathered
                a = np.array(prof[args.warmup:]) * 1e3
                mine = [[round(float(np.median(a[:, j])), 4) for j in range(3)],
                        [round(float(pct(list(a[:, j]), 99)), 4) for j in range(3)],
                        int((a[:, 1] > 0.5).sum())]
                row["native_parts_ms"] = comm.allgather(mine)
            waits = np.max(np.array(comm.allgather(waits)), axis=0)
            steps = np.max(np.array(comm.allgather(steps)), axis=0)
            row.update({"feed": name, "seq_len": S, "cp": size, "ranks": size, "gpus": ngpu,
                   "steps": args.steps, "compute_reps": compute.reps,
                   "wait_ms_p50": round(float(statistics.median(waits)), 4),
                   "wait_ms_p90": round(float(pct(waits, 90)), 4),
                   "wait_ms_p99": round(float(pct(waits, 99)), 4),
                   "wait_ms_max": round(float(np.max(waits)), 4),
                   "step_ms_p50": round(float(statistics.median(steps)), 3)})
            row["sums"] = sums
            rows.append(row)
            if rank == 0:
                print(json.dumps(row), flush=True)
    first = {}
    for r in rows:
        first.setdefault(r["seq_len"], r["sums"])
    same = all(r["sums"] == first[r["seq_len"]] for r in rows)
    same = comm.allreduce(int(same), op=MPI.MIN)
    if rank == 0:
        print("shards of the first 5 steps equal across feeds on every rank: %s"
              % ("yes" if same else "NO"))
        print("\n| feed | S | data wait p50 ms | p90 | p99 | max | step p50 ms |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            print("| %s | %d | %.3f | %.3f | %.3f | %.3f | %.1f |" % (
                r["feed"], r["seq_len"], r["wait_ms_p50"], r["wait_ms_p90"], r["wait_ms_p99"],
                r["wait_ms_max"], r["step_ms_p50"]))
        for r in rows:
            for k, (p50, p99, slow) in enumerate(r.get("native_parts_ms", [])):
                print("native next() parts at S=%d rank %d (stream lookup, C dequeue, DLPack "
                      "imports): ms p50 %s p99 %s; %d dequeues waited > 0.5 ms"
                      % (r["seq_len"], k, p50, p99, slow))
        print("(%s, %d ranks on %d GPU(s), %d matmuls of 4096^2 bf16 per step)"
              % (torch.cuda.get_device_name(device), size, ngpu, compute.reps))
        if args.json:
            with open(args.json, "w") as f:
                for r in rows:
                    f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
