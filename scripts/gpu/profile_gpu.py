"""profile_gpu — per-rank host-to-GPU copy and end-to-end data time of the four ways.

Run under mpirun, one rank per GPU (scripts/gpu/profile-gpu does that). Owns:
  1. H2D copy of this rank's slice into its GPU: pageable (the plain shared-
     memory view), registered in place (cpdl.Loader(pin=True)), and a
     cudaMallocHost baseline of the same fields (torch pin_memory(): the
     physical limit of the link) — GB/s and time per copy;
  2. a training-loop skeleton per way (naive, bcast, scatter, cpdl) whose step
     gets this rank's slice, copies it to the GPU and runs a trivial kernel;
     it measures the data time per step and group steps/s.
Invariants: one node, cp = np, tp = 1, batch from the loader's configuration;
every rank runs the same sequence of collectives. MPI calls go through ctypes
into Open MPI's libmpi (mpi4py may be absent on GPU machines): MPI_COMM_WORLD
is the address of the symbol ompi_mpi_comm_world, MPI_BYTE of ompi_mpi_byte,
MPI_DOUBLE of ompi_mpi_double, as Open MPI's mpi.h defines them; MPICH and
others are refused with a clear message. Without CUDA (or with --dry) the
same code runs with host tensors as the "device": only host-side costs are
measured and every output says so.
"""
import argparse
import ctypes
import ctypes.util
import csv
import os
import socket
import statistics
import sys
import time

import numpy as np

import cpdl  # libcpdl.so and libmpi are loaded by the first Loader


# ---- MPI through ctypes ------------------------------------------------------

class Mpi:
    """The few MPI calls this profile needs, on MPI_COMM_WORLD."""

    def __init__(self):
        lib = None
        for name in ("libmpi.so.40", ctypes.util.find_library("mpi")):
            if name:
                try:
                    lib = ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
                    break
                except OSError:
                    pass
        if lib is None:
            sys.exit("profile_gpu: cannot load libmpi (Open MPI's libmpi.so.40)")
        try:
            self.world = ctypes.c_void_p(ctypes.addressof(ctypes.c_char.in_dll(lib, "ompi_mpi_comm_world")))
            self.byte = ctypes.c_void_p(ctypes.addressof(ctypes.c_char.in_dll(lib, "ompi_mpi_byte")))
            self.double = ctypes.c_void_p(ctypes.addressof(ctypes.c_char.in_dll(lib, "ompi_mpi_double")))
        except ValueError:
            sys.exit("profile_gpu: this libmpi is not Open MPI (no ompi_mpi_comm_world symbol); "
                     "the ctypes MPI calls here assume Open MPI's handles")
        vp, ci, pi = ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int)
        sig = {
            "MPI_Initialized": [pi], "MPI_Init": [vp, vp], "MPI_Finalize": [],
            "MPI_Comm_rank": [vp, pi], "MPI_Comm_size": [vp, pi], "MPI_Barrier": [vp],
            "MPI_Bcast": [vp, ci, vp, ci, vp],
            "MPI_Scatterv": [vp, pi, pi, vp, vp, ci, vp, ci, vp],
            "MPI_Gather": [vp, ci, vp, vp, ci, vp, ci, vp],
        }
        for fn, args in sig.items():
            getattr(lib, fn).argtypes = args
            getattr(lib, fn).restype = ci
        self.lib = lib
        flag = ctypes.c_int(0)
        lib.MPI_Initialized(ctypes.byref(flag))
        self.we_init = not flag.value
        if self.we_init:
            self.check(lib.MPI_Init(None, None), "MPI_Init")
        r, n = ctypes.c_int(), ctypes.c_int()
        lib.MPI_Comm_rank(self.world, ctypes.byref(r))
        lib.MPI_Comm_size(self.world, ctypes.byref(n))
        self.rank, self.size = r.value, n.value

    @staticmethod
    def check(rc, what):
        if rc != 0:
            raise RuntimeError("profile_gpu: %s failed with MPI error %d" % (what, rc))

    def barrier(self):
        self.check(self.lib.MPI_Barrier(self.world), "MPI_Barrier")

    def bcast(self, address, nbytes, root=0):
        self.check(self.lib.MPI_Bcast(address, nbytes, self.byte, root, self.world), "MPI_Bcast")

    def scatterv(self, send_address, counts, displs, recv_address, recv_bytes, root=0):
        n = self.size
        c = (ctypes.c_int * n)(*counts)
        d = (ctypes.c_int * n)(*displs)
        self.check(self.lib.MPI_Scatterv(send_address, c, d, self.byte, recv_address, recv_bytes,
                                         self.byte, root, self.world), "MPI_Scatterv")

    def gather(self, values):
        """Rank 0 gets a [size, len(values)] float64 array; others None."""
        mine = np.ascontiguousarray(values, dtype=np.float64)
        out = np.zeros((self.size, len(mine)), np.float64)
        self.check(self.lib.MPI_Gather(mine.ctypes.data, len(mine), self.double, out.ctypes.data,
                                       len(mine), self.double, 0, self.world), "MPI_Gather")
        return out if self.rank == 0 else None

    def finalize(self):
        if self.we_init:
            self.lib.MPI_Finalize()


# ---- batches without the loader (naive, bcast, scatter) ----------------------

class Collator:
    """Packs documents of a cpdl.Source into [batch, S] rows as cpdl's `pack`
    collate does (input_ids/labels shifted by one, position_ids restarting at
    each document, _packed_seq_ids the 1-based document ordinal). Python +
    numpy, like a typical per-rank DataLoader collate."""

    def __init__(self, uri, seq_len, batch):
        self.src = cpdl.Source(uri)
        self.n = len(self.src)
        self.seq_len, self.batch = seq_len, batch
        self.cursor = 0

    def next(self):
        need = self.batch * (self.seq_len + 1)
        docs, have = [], 0
        while have < need:
            doc = self.src[self.cursor % self.n]
            self.cursor += 1
            docs.append(doc)
            have += len(doc)
        tokens = np.concatenate(docs).astype(np.int64)[:need]
        lens = np.fromiter((len(d) for d in docs), np.int64, len(docs))
        doc_id = np.repeat(np.arange(len(docs)), lens)[:need]
        starts = np.concatenate(([0], np.cumsum(lens)[:-1]))
        pos = np.arange(need, dtype=np.int64) - starts[doc_id]
        w = tokens.reshape(self.batch, self.seq_len + 1)
        d = doc_id.reshape(self.batch, self.seq_len + 1)[:, :-1]
        return {
            "input_ids": w[:, :-1],
            "labels": w[:, 1:],
            "position_ids": pos.reshape(self.batch, self.seq_len + 1)[:, :-1],
            "_packed_seq_ids": d - d[:, :1] + 1,
        }


class Layout:
    """Where each field of one CP rank's block lies (from shard_batch_all's
    documented layout: cp blocks of rank_bytes, then the shared block)."""

    def __init__(self, shards):
        starts = [min(a.ctypes.data for a in s.values()) for s in shards]
        self.base = starts[0]
        self.rank_bytes = (starts[1] - starts[0]) if len(shards) > 1 else \
            max(a.ctypes.data + a.nbytes for a in shards[0].values()) - starts[0]
        self.fields = [(name, a.dtype, a.shape, a.ctypes.data - starts[0])
                       for name, a in shards[0].items()]
        if any(off < 0 or off + np.prod(shape) * dt.itemsize > self.rank_bytes
               for _, dt, shape, off in self.fields):
            raise RuntimeError("profile_gpu: shared (pass-through) fields are not supported; "
                               "use mode=contiguous")

    def views(self, buf, offset=0):
        return {name: np.ndarray(shape, dt, buffer=buf, offset=offset + off)
                for name, dt, shape, off in self.fields}


def block_address(shards):
    return min(a.ctypes.data for a in shards[0].values())


# ---- the device side ---------------------------------------------------------

class Device:
    def __init__(self, torch, dry, local_rank):
        self.torch, self.dry = torch, dry
        if dry:
            self.dev = torch.device("cpu")
            self.name = "none (dry run: host tensors stand in for the GPU)"
        else:
            n = torch.cuda.device_count()
            torch.cuda.set_device(local_rank % n)
            self.dev = torch.device("cuda", local_rank % n)
            self.name = torch.cuda.get_device_name(self.dev)

    def sync(self):
        if not self.dry:
            self.torch.cuda.synchronize(self.dev)

    def targets(self, tensors):
        return {k: self.torch.empty(t.shape, dtype=t.dtype, device=self.dev)
                for k, t in tensors.items()}

    def copy(self, dst, tensors, non_blocking):
        for k, t in tensors.items():
            dst[k].copy_(t, non_blocking=non_blocking)
        self.sync()

    def kernel(self, dst):
        # Trivial consumer: touches every token once; .item() waits for it.
        return int((dst["input_ids"].sum() + dst["labels"].sum()).item())


def to_torch(torch, arrays):
    # Views may be read-only (shared memory, received buffers): torch warns
    # on from_numpy of those; we only ever read them.
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {k: torch.from_numpy(v) for k, v in arrays.items()}


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(round((len(v) - 1) * q)))]


# ---- measurements --------------------------------------------------------------

def loader_config(args, seq_len, cp):
    return "cp=%d seq_len=%d batch=%d steps=%d slots=%d" % (
        cp, seq_len, args.batch, args.warmup + args.steps + args.reps + 16, args.slots)


def measure_h2d(args, mpi, dev, seq_len):
    """[(kind, bytes, p50_s)] for this rank."""
    out = []
    for kind, pin in (("pageable", False), ("registered", True)):
        if dev.dry and pin:
            continue  # nothing to register without CUDA
        with cpdl.Loader(loader_config(args, seq_len, mpi.size), pin=pin) as loader:
            batch = next(loader)
            src = batch.torch()
            dst = dev.targets(src)
            if pin and not loader.pinned:
                print("profile_gpu: rank %d: pin=True did not register the region (see the "
                      "warning above); 'registered' is pageable here" % mpi.rank, file=sys.stderr)
            nbytes = sum(t.numel() * t.element_size() for t in src.values())
            times = []
            for i in range(args.warmup + args.reps):
                mpi.barrier()  # all ranks copy at once: the links and memory are shared
                t0 = time.perf_counter()
                dev.copy(dst, src, non_blocking=pin)
                if i >= args.warmup:
                    times.append(time.perf_counter() - t0)
            out.append((kind if not dev.dry else "host-memcpy (dry)", nbytes,
                        statistics.median(times)))
            del src, dst
            batch.release()
    if not dev.dry:
        with cpdl.Loader(loader_config(args, seq_len, mpi.size)) as loader:
            batch = next(loader)
            src = {k: t.clone().pin_memory() for k, t in batch.torch().items()}
            batch.release()
        dst = dev.targets(src)
        nbytes = sum(t.numel() * t.element_size() for t in src.values())
        times = []
        for i in range(args.warmup + args.reps):
            mpi.barrier()
            t0 = time.perf_counter()
            dev.copy(dst, src, non_blocking=True)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        out.append(("cudaMallocHost", nbytes, statistics.median(times)))
    return out


def run_way(args, mpi, dev, way, seq_len):
    """(data times s, step times s, elapsed s) of args.steps measured steps."""
    torch = dev.torch
    cp, me = mpi.size, mpi.rank
    data_t, step_t = [], []
    total = args.warmup + args.steps
    loader = None
    if way == "cpdl":
        loader = cpdl.Loader(loader_config(args, seq_len, cp), pin=not dev.dry)
        source = None
    else:
        # Same data source as the loader's configuration.
        source = cpdl.loader.make_config(loader_config(args, seq_len, cp)).source.decode()
        collator = Collator(source, seq_len, args.batch)
        # Layout of one rank's block, from one (untimed) preparation.
        layout = Layout(cpdl.shard_batch_all(collator.next(), cp))
        recv = np.empty(layout.rank_bytes * (cp if way == "bcast" else 1), np.uint8)
    dst = None
    try:
        for i in range(total):
            if i == args.warmup:
                mpi.barrier()
                t_start = time.perf_counter()
            t0 = time.perf_counter()
            batch = None
            if way == "cpdl":
                batch = next(loader)
                mine = batch.torch()
            elif way == "naive":
                mine = to_torch(torch, cpdl.shard_batch(collator.next(), cp, me))
            else:
                shards = None
                if me == 0:
                    shards = cpdl.shard_batch_all(collator.next(), cp)
                    send = block_address(shards)
                if way == "bcast":
                    if me == 0:
                        mine = to_torch(torch, shards[0])
                        mpi.bcast(send, layout.rank_bytes * cp)
                    else:
                        mpi.bcast(recv.ctypes.data, layout.rank_bytes * cp)
                        mine = to_torch(torch, layout.views(recv, me * layout.rank_bytes))
                else:
                    counts = [layout.rank_bytes] * cp
                    displs = [r * layout.rank_bytes for r in range(cp)]
                    mpi.scatterv(send if me == 0 else None, counts, displs, recv.ctypes.data,
                                 layout.rank_bytes)
                    mine = to_torch(torch, layout.views(recv))
            if dst is None:
                dst = dev.targets(mine)
            dev.copy(dst, mine, non_blocking=(way == "cpdl"))
            t1 = time.perf_counter()
            dev.kernel(dst)
            if batch is not None:
                batch.release()
            if args.compute_ms > 0:
                time.sleep(args.compute_ms / 1e3)
            t2 = time.perf_counter()
            if i >= args.warmup:
                data_t.append(t1 - t0)
                step_t.append(t2 - t0)
        mpi.barrier()
        elapsed = time.perf_counter() - t_start
    finally:
        if loader is not None:
            loader.close()
    return data_t, step_t, elapsed


def parse_len(text):
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
    return int(text.rstrip("KM")) * mult


def main():
    ap = argparse.ArgumentParser(description="cpdl GPU data-path profile (run under mpirun)")
    ap.add_argument("--seq-lens", default="64K,1M")
    ap.add_argument("--ways", default="naive,bcast,scatter,cpdl")
    ap.add_argument("--steps", type=int, default=20, help="measured steps per way and S")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10, help="measured copies per H2D kind")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--compute-ms", type=float, default=0.0,
                    help="sleep after each step, standing in for the model's compute")
    ap.add_argument("--dry", action="store_true", help="host tensors only, even with CUDA")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    mpi = Mpi()
    import torch
    dry = args.dry or not torch.cuda.is_available()
    local = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", mpi.rank))
    dev = Device(torch, dry, local)
    host = socket.gethostname().split(".")[0]
    lens = [parse_len(s) for s in args.seq_lens.split(",") if s.strip()]
    ways = [w for w in args.ways.split(",") if w]
    if mpi.rank == 0:
        os.makedirs(args.out, exist_ok=True)
        print("profile_gpu: host %s, np=cp=%d, device %s%s" % (
            host, mpi.size, dev.name, "  [DRY RUN: no GPU copy is measured]" if dry else ""),
            flush=True)
    common = {"host": host, "np": mpi.size, "cp": mpi.size, "tp": 1, "batch": args.batch,
              "device": dev.name, "dry": int(dry), "torch": torch.__version__}
    h2d_rows, step_rows = [], []
    for s in lens:
        results = measure_h2d(args, mpi, dev, s)
        for kind, nbytes, t in results:
            g = mpi.gather([nbytes, t])
            if mpi.rank == 0:
                for r in range(mpi.size):
                    h2d_rows.append(dict(common, seq_len=s, rank=r, kind=kind,
                                         bytes=int(g[r][0]), time_us=g[r][1] * 1e6,
                                         gb_per_s=g[r][0] / g[r][1] / 1e9))
                    print("  S=%-8d rank %d %-22s %10d B %9.1f us %7.2f GB/s" % (
                        s, r, kind, g[r][0], g[r][1] * 1e6, g[r][0] / g[r][1] / 1e9), flush=True)
        for way in ways:
            data_t, step_t, elapsed = run_way(args, mpi, dev, way, s)
            g = mpi.gather([pct(data_t, 0.5), pct(data_t, 0.99), pct(step_t, 0.5),
                            len(step_t) / elapsed])
            if mpi.rank == 0:
                row = dict(common, seq_len=s, way=way, steps=args.steps,
                           compute_ms=args.compute_ms,
                           data_p50_us=g[:, 0].max() * 1e6, data_p99_us=g[:, 1].max() * 1e6,
                           step_p50_us=g[:, 2].max() * 1e6, group_steps_per_s=g[:, 3].min())
                step_rows.append(row)
                print("  S=%-8d %-8s data p50 %10.1f us p99 %10.1f us step p50 %10.1f us "
                      "%8.2f steps/s" % (s, way, row["data_p50_us"], row["data_p99_us"],
                                         row["step_p50_us"], row["group_steps_per_s"]),
                      flush=True)
    if mpi.rank == 0:
        for name, rows in (("h2d.csv", h2d_rows), ("steps.csv", step_rows)):
            if rows:
                with open(os.path.join(args.out, name), "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=list(rows[0]))
                    w.writeheader()
                    w.writerows(rows)
        plot(args.out, h2d_rows, step_rows, host, mpi.size, dev.name, dry)
    mpi.barrier()
    mpi.finalize()


def plot(out, h2d_rows, step_rows, host, np_, device, dry):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        print("profile_gpu: no matplotlib (%s): CSVs written, no PNGs" % exc, file=sys.stderr)
        return
    where = "%s, np=cp=%d, %s" % (host, np_, device)
    dry_note = "  [DRY RUN: host copies, no GPU]" if dry else ""
    if h2d_rows:
        kinds = list(dict.fromkeys(r["kind"] for r in h2d_rows))
        lens = sorted({r["seq_len"] for r in h2d_rows})
        fig, ax = plt.subplots(figsize=(7.5, 4.6))
        width = 0.8 / len(kinds)
        for k, kind in enumerate(kinds):
            # Bar = median over ranks; whiskers = slowest and fastest rank.
            vals = [[r["gb_per_s"] for r in h2d_rows if r["kind"] == kind and r["seq_len"] == s]
                    for s in lens]
            mid = [statistics.median(v) for v in vals]
            lo = [m - min(v) for m, v in zip(mid, vals)]
            hi = [max(v) - m for m, v in zip(mid, vals)]
            xs = [i + (k - (len(kinds) - 1) / 2) * width for i in range(len(lens))]
            ax.bar(xs, mid, width, yerr=[lo, hi], capsize=3, label=kind)
        ax.set_xticks(range(len(lens)))
        ax.set_xticklabels(["S=%s\n%.1f MiB per rank" % (
            "%dK" % (s >> 10) if s < 1 << 20 else "%dM" % (s >> 20),
            [r["bytes"] for r in h2d_rows if r["seq_len"] == s][0] / 2**20)
            for s in lens])
        ax.set_ylabel("host-to-host copy per rank (GB/s)" if dry else
                      "host-to-device bandwidth per rank (GB/s)")
        ax.set_title("Copy of each rank's slice to its GPU, all ranks at once (bar: median "
                     "rank, whiskers: slowest/fastest)\n%s%s"
                     % (where, dry_note), fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "h2d.png"), dpi=110)
        plt.close(fig)
    if step_rows:
        fig, axes = plt.subplots(1, 2, figsize=(12.8, 4.6))
        lens = sorted({r["seq_len"] for r in step_rows})
        for way in dict.fromkeys(r["way"] for r in step_rows):
            rs = sorted((r for r in step_rows if r["way"] == way), key=lambda r: r["seq_len"])
            x = [r["seq_len"] for r in rs]
            axes[0].errorbar(x, [r["data_p50_us"] for r in rs],
                             yerr=[[0] * len(rs), [r["data_p99_us"] - r["data_p50_us"]
                                                   for r in rs]],
                             marker="o", capsize=3, lw=2.4 if way == "cpdl" else 1.4,
                             label="%s p50 (bar: up to p99)" % way)
            axes[1].plot(x, [r["group_steps_per_s"] for r in rs], marker="o",
                         lw=2.4 if way == "cpdl" else 1.4, label=way)
        for ax, ylabel in zip(axes, ("data time per step, slowest rank (µs)",
                                     "group steps/s (slowest rank)")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(lens)
            ax.set_xticklabels(["%dK" % (s >> 10) if s < 1 << 20 else "%dM" % (s >> 20)
                                for s in lens])
            ax.minorticks_off()
            ax.set_xlabel("sequence length S (tokens per batch row)")
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        cm = step_rows[0]["compute_ms"]
        fig.suptitle("Training-loop data path: get the slice + copy to the GPU (data time), then "
                     "a trivial kernel%s\n%s%s" % (", + %g ms compute" % cm if cm else "", where,
                                                   dry_note), fontsize=10)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "steps.png"), dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main()
