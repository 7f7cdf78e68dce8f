"""bench_real — cpdl against what users run today, one JSON line per case.

Run under mpirun, np = cp, one node, one replica (scripts/bench/bench-real on CPU,
scripts/gpu/profile-gpu on GPU nodes). Two ways, on the same Megatron .idx/.bin:
  real  every rank runs a torch.utils.data.DataLoader (num_workers W,
        pin_memory where CUDA exists, prefetch_factor 2) over GPTWindows, a
        map-style dataset doing what a framework's GPT dataset does (documents
        in a shuffled order form one stream; sample i is the window of S+1
        tokens at i*S; input_ids / labels / position_ids restarting at each
        document / _packed_seq_ids); the whole batch goes to the device
        (.to(device, non_blocking=True)); then the CP contract on the device
        tensors, as NeMo does (cpdl.torch.make_contiguous_shard_cp_batch_and_ctx).
  cpdl  cpdl.Loader over the same file (pin=True where CUDA exists): next(),
        this rank's prepared slice to the device.
  cpdl-prefetch  cpdl.Loader(device="cuda", prefetch=1) (CUDA only): next()
        gives the slice already on the device, copied by cpdl's C thread
        while the previous step computed.
Per step: data (the critical path: wall clock, after a device synchronize on
GPU, plus the CUDA-event time of the same span; get_p50 is its first part,
next() of the DataLoader or the Loader), then a compute stand-in
(sleep --compute-ms; it lets workers and cpdl's loader prefetch).
Owns the measurements, over a window of --steps steps after --warmup:
  * data p50/p99 (slowest rank), group steps/s;
  * node CPU-seconds per step: utime+stime from /proc/<pid>/stat of every rank
    (all its threads, cpdl's loader threads included) and every DataLoader
    worker, at the window's ends (workers are alive then; RUSAGE_CHILDREN
    would not see them);
  * node PSS: smaps_rollup Pss of ranks + workers at the window's end, minus
    the ranks' Pss before the way started ("data PSS"); PSS splits shared
    pages among their mappers, so cpdl's segment and torch's worker-to-rank
    shared memory count once; of it, the Pss of the data set's .bin mappings
    (page-cache pages mapped by whoever reads the file: a shuffled read maps
    most of the file through fault-around), and cpdl's own sizing
    (Loader.memory: slots, ring, collate bytes);
  * pinned bytes: real: torch's host allocator (host_memory_stats, where this
    torch has it); cpdl: the bytes of this rank's region registered in place;
  * bytes read per step: "touched" counted by construction (each GPTWindows
    item copies (S+1)*2 bytes out of the .bin mapping; cpdl's collate copies
    each token once per node); and storage reads: /proc/<pid>/io read_bytes
    of the ranks (growth since the case began) and of the workers (all of
    theirs), over the WHOLE case, warm-up and prefetch included, divided by
    the steps the case consumed; with --drop-caches the page cache is dropped
    before each case. The page cache is the node's: a second rank faulting
    the same page reads nothing from storage, and readahead reads around
    what is touched, so this is not cp x touched.
Invariant: the dataset / loader is sized so that prefetching runs on past the
window's end: both ends of the window are in steady state.
"""
import argparse
import json
import os
import socket
import statistics
import sys
import time

import numpy as np
import torch
import torch.utils.data

# profile_gpu (scripts/gpu/) holds the MPI helpers both programs use.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gpu"))
from profile_gpu import Mpi, parse_len, pct  # noqa: E402

import cpdl  # noqa: E402
from cpdl.torch import make_contiguous_shard_cp_batch_and_ctx  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- the data set a framework would use ---------------------------------------

def read_megatron_index(prefix):
    """(token dtype, per-sequence lengths, byte pointers) of <prefix>.idx."""
    with open(prefix + ".idx", "rb") as f:
        head = f.read(34)
        if head[:9] != b"MMIDIDX\x00\x00":
            sys.exit("bench_real: %s.idx is not a Megatron MMIDIDX index" % prefix)
        code = head[17]
        n = int(np.frombuffer(head[18:26], "<u8")[0])
        lengths = np.frombuffer(f.read(4 * n), "<i4").astype(np.int64)
        pointers = np.frombuffer(f.read(8 * n), "<i8")
    dtype = {1: np.uint8, 4: np.int32, 5: np.int64, 8: np.uint16}.get(code)
    if dtype is None:
        sys.exit("bench_real: %s.idx: token dtype code %d not handled here" % (prefix, code))
    return np.dtype(dtype), lengths, pointers


class GPTWindows(torch.utils.data.Dataset):
    """Sample i: the window of seq_len + 1 tokens at i * seq_len of the stream
    of documents in a shuffled order (consecutive windows overlap by one
    token, as cpdl's pack collate). Fields as cpdl's pack collate makes them."""

    def __init__(self, prefix, seq_len, count, seed=1):
        self.dtype, lengths, pointers = read_megatron_index(prefix)
        self.bin = prefix + ".bin"
        self.tokens = None  # mapped lazily: in each worker, after the fork
        order = np.random.default_rng(seed).permutation(len(lengths))
        self.starts = pointers[order] // self.dtype.itemsize  # token offset of each document
        self.lengths = lengths[order]
        self.ends = np.cumsum(self.lengths)                  # stream offset after each document
        self.seq_len, self.count = seq_len, count
        if self.ends[-1] < (count * seq_len + 1):
            sys.exit("bench_real: %s has %d tokens; %d windows of %d need %d" % (
                prefix, self.ends[-1], count, seq_len, count * seq_len + 1))

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        if self.tokens is None:
            self.tokens = np.memmap(self.bin, dtype=self.dtype, mode="r")
        n = self.seq_len + 1
        a = i * self.seq_len
        k = int(np.searchsorted(self.ends, a, side="right"))  # document holding token a
        pieces, bounds, at = [], [], a
        while at < a + n:
            doc_begin = self.ends[k] - self.lengths[k]
            off = at - doc_begin
            take = min(int(self.lengths[k] - off), a + n - at)
            pieces.append(self.tokens[self.starts[k] + off: self.starts[k] + off + take])
            if at > a and off == 0:
                bounds.append(at - a)  # a document starts inside the window
            at += take
            k += 1
        window = np.concatenate(pieces).astype(np.int64)
        seg = np.zeros(n, np.int64)
        seg[bounds] = 1
        seg = np.cumsum(seg)                             # 0-based document ordinal in the row
        first = np.concatenate(([0], bounds))            # window index where each starts
        pos = np.arange(n, dtype=np.int64) - first[seg]  # restarts at each document
        return {"input_ids": torch.from_numpy(window[:-1]),
                "labels": torch.from_numpy(window[1:]),
                "position_ids": torch.from_numpy(pos[:-1]),
                "_packed_seq_ids": torch.from_numpy(seg[:-1] + 1)}


# ---- /proc ------------------------------------------------------------------------

def cpu_seconds(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    except OSError:
        return 0.0


def pss_bytes(pid):
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def read_bytes(pid):
    try:
        with open("/proc/%d/io" % pid) as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def worker_pids(it):
    return [w.pid for w in getattr(it, "_workers", []) if w.pid]


def file_pss_bytes(pid, path):
    """Pss of the mappings of one file (the data set's .bin) in a process."""
    total, mine = 0, False
    try:
        with open("/proc/%d/smaps" % pid) as f:
            for line in f:
                head = line.split(None, 6)
                if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):
                    mine = len(head) >= 6 and head[5].strip() == path
                elif mine and head[0] == "Pss:":
                    total += int(head[1]) * 1024
    except OSError:
        pass
    return total


def snapshot(pids):
    return np.array([sum(cpu_seconds(p) for p in pids), sum(pss_bytes(p) for p in pids),
                     sum(read_bytes(p) for p in pids)], np.float64)


# ---- the device -----------------------------------------------------------------

class Device:
    def __init__(self, dry, local_rank):
        self.cuda = not dry and torch.cuda.is_available()
        if self.cuda:
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
            self.dev = torch.device("cuda", torch.cuda.current_device())
            self.name = torch.cuda.get_device_name(self.dev)
        else:
            self.dev = torch.device("cpu")
            self.name = "none (CPU only: the batch stays in host memory)"

    def start(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return None

    def finish(self, e0):
        """CUDA-event milliseconds since e0 (None on CPU), after a synchronize."""
        if not self.cuda:
            return None
        e1 = torch.cuda.Event(enable_timing=True)
        e1.record()
        e1.synchronize()
        return e0.elapsed_time(e1)

    def pinned_bytes(self):
        stats = getattr(torch.cuda, "host_memory_stats", None)
        if not self.cuda or stats is None:
            return None
        try:
            s = stats()
        except RuntimeError:
            return None
        for key in ("reserved_bytes.current", "allocated_bytes.current",
                    "reserved_bytes.all.current", "allocated_bytes.all.current"):
            if key in s:
                return int(s[key])
        return None


class Mesh:
    def __init__(self, size, rank):
        self._size, self._rank = size, rank

    def size(self):
        return self._size

    def get_local_rank(self):
        return self._rank


# ---- one case ----------------------------------------------------------------------

def run_case(args, mpi, dev, way, seq_len, workers):
    cp, me = mpi.size, mpi.rank
    total = args.warmup + args.steps
    ahead = 2 * max(workers, 1) + (args.slots or 4) + 2  # prefetch keeps running past the window
    mpi.barrier()
    if args.drop_caches and me == 0:
        try:
            os.sync()
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            dropped = 1
        except OSError:
            dropped = 0
    else:
        dropped = 0
    mpi.barrier()
    base_pss = pss_bytes(os.getpid())
    base_read = read_bytes(os.getpid())
    loader = it = None
    mesh = Mesh(cp, me)
    if way == "real":
        ds = GPTWindows(args.data, seq_len, total + ahead)
        it = iter(torch.utils.data.DataLoader(
            ds, batch_size=args.batch, shuffle=False, num_workers=workers,
            pin_memory=dev.cuda, prefetch_factor=2, drop_last=True))
        touched_per_step = cp * args.batch * (seq_len + 1) * ds.dtype.itemsize
    else:
        cfg = "cp=%d seq_len=%d batch=%d steps=%d source=megatron:%s" % (
            cp, seq_len, args.batch, total + ahead, args.data)
        if args.slots:
            cfg += " slots=%d" % args.slots
        if args.threads:
            cfg += " threads=%d" % args.threads
        if way == "cpdl-prefetch":
            loader = cpdl.Loader(cfg, device=dev.dev, prefetch=1)
        else:
            loader = cpdl.Loader(cfg, pin=dev.cuda)
        itemsize = read_megatron_index(args.data)[0].itemsize
        touched_per_step = args.batch * (seq_len + 1) * itemsize  # once per node
    data_t, event_t, get_t = [], [], []
    pinned = None
    try:
        for i in range(total):
            if i == args.warmup:
                mpi.barrier()
                pids = [os.getpid()] + (worker_pids(it) if it is not None else [])
                s0 = snapshot(pids)
                t_start = time.perf_counter()
            t0 = time.perf_counter()
            e0 = dev.start()
            if way == "real":
                batch = next(it)
                tg = time.perf_counter()
                batch = {k: v.to(dev.dev, non_blocking=True) for k, v in batch.items()}
                _, mine = make_contiguous_shard_cp_batch_and_ctx(mesh, None, batch)
            elif way == "cpdl-prefetch":
                b = next(loader)
                tg = time.perf_counter()
                mine = b.torch()  # already on the device
            else:
                b = next(loader)
                tg = time.perf_counter()
                mine = {k: v.to(dev.dev, non_blocking=True) for k, v in b.torch().items()}
            ev = dev.finish(e0)
            t1 = time.perf_counter()
            if i >= args.warmup:
                data_t.append(t1 - t0)
                get_t.append(tg - t0)
                if ev is not None:
                    event_t.append(ev / 1e3)
            if args.compute_ms > 0:
                time.sleep(args.compute_ms / 1e3)
            del mine
        mpi.barrier()
        elapsed = time.perf_counter() - t_start
        s1 = snapshot(pids)
        bin_path = os.path.realpath(args.data + ".bin")
        file_pss = sum(file_pss_bytes(p, bin_path) for p in pids)
        case_read = s1[2] - base_read  # workers start at 0 when forked
        if way == "real":
            pinned = dev.pinned_bytes()
        elif way == "cpdl" and loader.pinned:
            pinned = b.region_bytes
        memory = loader.memory if loader is not None else None
    finally:
        if loader is not None:
            loader.close()
        del it
    d = s1 - s0
    mine_row = [pct(data_t, 0.5), pct(data_t, 0.99),
                pct(event_t, 0.5) if event_t else -1, args.steps / elapsed,
                d[0], s1[1] - base_pss, s1[1], case_read / total,
                -1 if pinned is None else pinned, len(pids) - 1, pct(get_t, 0.5), file_pss]
    g = mpi.gather(mine_row)
    if me != 0:
        return None
    return {"way": way, "seq_len": seq_len, "cp": cp, "workers": workers if way == "real" else 0,
            "batch": args.batch, "steps": args.steps, "compute_ms": args.compute_ms,
            "data_p50_us": g[:, 0].max() * 1e6, "data_p99_us": g[:, 1].max() * 1e6,
            "data_event_p50_us": (g[:, 2].max() * 1e6) if dev.cuda else None,
            "get_p50_us": g[:, 10].max() * 1e6,
            "group_steps_per_s": g[:, 3].min(),
            "node_cpu_s_per_step": g[:, 4].sum() / args.steps,
            "node_data_pss_bytes": int(g[:, 5].sum()), "node_pss_bytes": int(g[:, 6].sum()),
            "node_file_pss_bytes": int(g[:, 11].sum()), "cpdl_memory": memory,
            "node_pinned_bytes": None if (g[:, 8] < 0).any() else int(g[:, 8].sum()),
            "node_read_bytes_per_step": g[:, 7].sum(),
            "touched_bytes_per_step": touched_per_step, "caches_dropped": dropped,
            "processes": int(cp + g[:, 9].sum())}


# ---- the table ------------------------------------------------------------------------

def table(rows):
    head = ("| S | cp | way | workers | data p50 µs (next() part) | data p99 µs | steps/s |"
            " node CPU ms/step | node data PSS MiB (of it the .bin's pages) | pinned MiB | touched MiB/step |"
            " read_bytes MiB/step |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        s = r["seq_len"]
        pinned = r.get("node_pinned_bytes")
        file_pss = r.get("node_file_pss_bytes")
        pss = "%.1f" % (r["node_data_pss_bytes"] / 2**20) + (
            "" if file_pss is None else " (%.1f)" % (file_pss / 2**20))
        lines.append("| %s | %d | %s | %s | %.1f (%.1f) | %.1f | %.2f | %.1f | %s | %s | %.1f | %.1f |" % (
            "%dK" % (s >> 10) if s < 1 << 20 else "%dM" % (s >> 20), r["cp"],
            "**%s**" % r["way"] if r["way"].startswith("cpdl") else r["way"],
            r["workers"] if r["way"] == "real" else "–", r["data_p50_us"],
            r.get("get_p50_us", float("nan")), r["data_p99_us"],
            r["group_steps_per_s"], r["node_cpu_s_per_step"] * 1e3,
            pss, "–" if pinned is None else "%.1f" % (pinned / 2**20),
            r["touched_bytes_per_step"] / 2**20, r["node_read_bytes_per_step"] / 2**20))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description="cpdl vs a per-rank torch DataLoader (mpirun)")
    ap.add_argument("--data", help="Megatron dataset prefix (<prefix>.idx/.bin)")
    ap.add_argument("--seq-lens", default="128K,1M")
    ap.add_argument("--workers", default="1,2,4", help="num_workers of the real way")
    ap.add_argument("--ways", default="", help="default: real,cpdl (+ cpdl-prefetch with CUDA)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--slots", type=int, default=0,
                    help="cpdl ring slots (0: the loader's default, sized by need)")
    ap.add_argument("--threads", type=int, default=0, help="cpdl loader threads (0: default)")
    ap.add_argument("--compute-ms", type=float, default=100.0)
    ap.add_argument("--drop-caches", action="store_true",
                    help="drop the page cache before each case (root)")
    ap.add_argument("--dry", action="store_true", help="no CUDA even where it exists")
    ap.add_argument("--out", help="append the JSON lines to this file")
    ap.add_argument("--table", metavar="JSONL", help="print the table of a results file; no MPI")
    args = ap.parse_args()
    if args.table:
        with open(args.table) as f:
            print(table([json.loads(x) for x in f if x.strip()]))
        return
    if not args.data:
        ap.error("--data is required")

    mpi = Mpi()
    # One intra-op thread per rank, as torchrun sets OMP_NUM_THREADS=1 for
    # several processes per node (DataLoader workers use one already).
    torch.set_num_threads(1)
    local = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", mpi.rank))
    dev = Device(args.dry, local)
    host = socket.gethostname().split(".")[0]
    common = {"host": host, "np": mpi.size, "device": dev.name, "torch": torch.__version__}
    if mpi.rank == 0:
        print("bench_real: host %s, np=cp=%d, device %s, load %s" % (
            host, mpi.size, dev.name, open("/proc/loadavg").read().split()[:3]), flush=True)
    if not args.ways:
        args.ways = "real,cpdl,cpdl-prefetch" if dev.cuda else "real,cpdl"
    if "cpdl-prefetch" in args.ways.split(",") and not dev.cuda:
        ap.error("--ways cpdl-prefetch needs CUDA (device=\"cuda\", prefetch=1)")
    rows = []
    for s in [parse_len(x) for x in args.seq_lens.split(",") if x.strip()]:
        for way in [w for w in args.ways.split(",") if w]:
            for w in ([int(x) for x in args.workers.split(",")] if way == "real" else [0]):
                row = run_case(args, mpi, dev, way, s, w)
                if mpi.rank == 0:
                    row = dict(common, **row)
                    row["loadavg"] = open("/proc/loadavg").read().split()[0]
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.out:
                        with open(args.out, "a") as f:
                            f.write(json.dumps(row) + "\n")
    if mpi.rank == 0:
        print(table(rows), flush=True)
    mpi.barrier()
    mpi.finalize()


if __name__ == "__main__":
    main()
