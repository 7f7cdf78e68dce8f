"""train_cp — a small decoder-only transformer trained with real context parallelism on cpdl's shards.

    mpirun -np 2 python3 examples/train_cp.py --cp 2 --steps 10 --json          # CP over 2 ranks
    mpirun -np 1 python3 examples/train_cp.py --cp 1 --steps 10 --json          # its reference
    mpirun -np 4 python3 examples/train_cp.py --cp 2 --mode round_robin          # dp 2 x cp 2
    mpirun -np 2 python3 examples/train_cp.py --cp 2 --device cuda --dtype bf16 \\
        --seq-len 128K --attn torch-ring --prefetch --json
    mpirun -np 4 python3 examples/train_cp.py --cp 2 --mode thd --schedule balanced \\
        --source megatron:/data/prefix                                # documents, balanced
    mpirun -np 4 python3 examples/train_cp.py --cp 2 --mode thd --schedule dynamic \\
        --source megatron:/data/prefix                                # a CP size per document

Each rank holds only its CP shard of every batch (cpdl.Loader; --mode contiguous,
round_robin, or thd: whole documents, each split into 2*cp zigzag chunks, docs/thd.md, with
--schedule static or balanced choosing which replica gets which documents, docs/schedule.md;
--schedule dynamic gives each document its own CP group of c consecutive ranks, c = 1 for
short ones: every rank's view lists its sub-samples with cp_group and cp_chunk, the example
creates a process group for every group of the table once, and attends each sub-sample over
its own group). Attention sees the whole sequence of the CP group either by
  --attn allgather-kv  every rank all-gathers K and V of its CP group (autograd-aware:
                       the backward sums each rank's K/V gradients back to their owner) and
                       attends its local queries causally at their global positions (thd:
                       within each query's document, from cu_seqlens_padded);
  --attn torch-ring    PyTorch's ring attention (torch.distributed.tensor.experimental.
                       context_parallel, torch >= 2.7, CUDA), load balancing on for
                       round_robin (its head-tail layout is cpdl's: checked at start) and off
                       for contiguous.
RoPE angles come from the batch's position_ids, the loss is next-token cross entropy on the
batch's labels (-100 ignored). The loss of a step is the sum of token losses over the global
batch (all dp x cp ranks) divided by its number of labelled tokens, and gradients are summed
over dp x cp, so every --cp gives the loss of --cp 1 on the same global batches (same dp).
Feeds: host views (CPU), pin=True + copy in the loop (CUDA, default), --prefetch
(device="cuda", prefetch=1: the next shard is copied on a side stream while this step
trains), --baseline (every rank loads the whole batch and keeps its shard, as trainers
without cpdl do). data_ms: the time the step waited for its data (max over ranks).
Launch: mpirun (OMPI_COMM_WORLD_*) or torchrun (RANK/WORLD_SIZE/LOCAL_RANK); torch.distributed
meets at MASTER_ADDR:MASTER_PORT if set, else in a file under /tmp (one host).
"""
import argparse
import json
import math
import os
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import cpdl  # noqa: E402


# ---- process group ----------------------------------------------------------

def launch_env():
    """(rank, world_size, local_rank, job id) from torchrun's or mpirun's environment."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return (int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                env.get("TORCHELASTIC_RUN_ID", "torchrun"))
    if "OMPI_COMM_WORLD_RANK" in env:
        return (int(env["OMPI_COMM_WORLD_RANK"]), int(env["OMPI_COMM_WORLD_SIZE"]),
                int(env.get("OMPI_COMM_WORLD_LOCAL_RANK", 0)),
                env.get("PMIX_NAMESPACE") or env.get("OMPI_MCA_ess_base_jobid", "mpirun"))
    if "PMI_RANK" in env:  # MPICH / Hydra
        return (int(env["PMI_RANK"]), int(env["PMI_SIZE"]), int(env.get("MPI_LOCALRANKID", 0)),
                env.get("PMI_KVSNAME", "mpich"))
    return 0, 1, 0, "single-%d" % os.getpid()


def init_process_group(backend):
    """torch.distributed over the launcher's ranks: env:// when MASTER_ADDR and
    MASTER_PORT are set (torchrun sets them; several hosts need them), else a
    file store named after the job (all ranks on this host)."""
    rank, world, local, job = launch_env()
    if "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ:
        init = "env://"
    else:
        path = os.path.join(tempfile.gettempdir(), "cpdl-train-cp-%s" % job)
        init = "file://" + path
    dist.init_process_group(backend, init_method=init, rank=rank, world_size=world)
    return rank, world, local


def cp_groups(mesh):
    """(this rank's CP group, its world ranks by cp_rank, the dp x cp table of
    world ranks): every rank tells every other its (dp_rank, cp_rank)."""
    mine = torch.tensor([mesh.dp_rank, mesh.cp_rank, mesh.tp_rank], dtype=torch.int64,
                        device=_comm_device())
    table = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(table, mine)
    grid = [[None] * mesh.cp_size for _ in range(mesh.dp_size)]
    for world_rank, coords in enumerate(table):
        dp, cp, tp = (int(x) for x in coords)
        if tp != 0:
            raise SystemExit("train_cp: tp > 1 is not supported by this example")
        grid[dp][cp] = world_rank
    mine_group = None
    for row in grid:  # new_group is collective: every rank creates every group
        group = dist.new_group(row)
        if dist.get_rank() in row:
            mine_group, ranks = group, row
    # A group orders its members by world rank: where does CP rank j sit in it?
    _GROUP_POS[:] = [sorted(ranks).index(r) for r in ranks]
    return mine_group, ranks, grid


_GROUP_POS = []


_DEVICE = torch.device("cpu")


def _comm_device():
    return _DEVICE if dist.get_backend() == "nccl" else torch.device("cpu")


# ---- CP layout ------------------------------------------------------------

def local_blocks(mode, cp, cp_rank, local_len):
    """[(global start, length)] of this rank's tokens, in shard order (cpdl's layouts)."""
    if mode == "contiguous":
        return [(cp_rank * local_len, local_len)]
    if mode == "round_robin":
        c = local_len // 2
        return [(cp_rank * c, c), ((2 * cp - 1 - cp_rank) * c, c)]
    raise SystemExit("train_cp: --mode %s is not supported (contiguous, round_robin)" % mode)


class _GatherSeq(torch.autograd.Function):
    """All-gather of x over the CP group; backward sums the gathered gradient
    over the group and keeps this rank's part (its K/V are used by every rank)."""

    @staticmethod
    def forward(ctx, x, group, index):
        ctx.group, ctx.index = group, index
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x, group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        if dist.get_backend(ctx.group) == "nccl":
            out = torch.empty_like(grad[0])
            dist.reduce_scatter(out, list(grad.unbind(0)), group=ctx.group)
            return out, None, None
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.index].clone(), None, None


def gather_global(x, group, cp, cp_rank, mode):
    """[B, H, L, D] shards of the CP group -> [B, H, cp*L, D] in global order."""
    parts = _GatherSeq.apply(x, group, _GROUP_POS[cp_rank])
    parts = [parts[_GROUP_POS[j]] for j in range(cp)]
    local_len = x.shape[2]
    chunks = [None] * (2 * cp if mode == "round_robin" else cp)
    for j in range(cp):
        if mode == "contiguous":
            chunks[j] = parts[j]
        else:
            a, b = parts[j].split(local_len // 2, dim=2)
            chunks[j], chunks[2 * cp - 1 - j] = a, b
    return torch.cat(chunks, dim=2)


def causal_attention(q, k, v):
    """q [B,H,Lq,D] at the last Lq of the Lk key positions (lower-right causal)."""
    lq, lk = q.shape[2], k.shape[2]
    sdpa = getattr(F, "scaled_dot_product_attention", None)
    if sdpa is not None and q.is_cuda:
        if lq == lk:
            return sdpa(q, k, v, is_causal=True)
        from torch.nn.attention.bias import causal_lower_right
        return sdpa(q, k, v, attn_mask=causal_lower_right(lq, lk))
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    qi = torch.arange(lq, device=q.device).unsqueeze(1) + (lk - lq)
    kj = torch.arange(lk, device=q.device).unsqueeze(0)
    scores = scores.masked_fill(kj > qi, float("-inf"))
    return torch.matmul(torch.softmax(scores.float(), dim=-1).to(v.dtype), v)


# ---- model ------------------------------------------------------------------

def rope(x, position_ids, base=10000.0):
    """Rotary embedding of x [B,H,L,D] at position_ids [B,L]."""
    d = x.shape[-1]
    inv = 1.0 / (base ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d))
    ang = position_ids.to(torch.float32).unsqueeze(-1) * inv  # [B,L,D/2]
    cos, sin = ang.cos().unsqueeze(1), ang.sin().unsqueeze(1)
    x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.to(x.dtype)


class Block(torch.nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.norm1 = torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim, bias=False)
        self.proj = torch.nn.Linear(dim, dim, bias=False)
        self.norm2 = torch.nn.LayerNorm(dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(),
                                       torch.nn.Linear(4 * dim, dim))

    def forward(self, x, position_ids, attend):
        b, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k = rope(q, position_ids), rope(k, position_ids)
        y = attend(q, k, v).transpose(1, 2).reshape(b, length, dim)
        x = x + self.proj(y)
        return x + self.mlp(self.norm2(x))


class Model(torch.nn.Module):
    def __init__(self, vocab, dim, heads, layers):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.blocks = torch.nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, vocab, bias=False)

    def forward(self, ids, position_ids, attend):
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x, position_ids, attend)
        return self.head(self.norm(x))


def thd_global_index(bounds, cp, j, local_len):
    """Global row positions of CP rank j's local tokens in mode thd: for each document
    [a, b) of cu_seqlens_padded, chunks j and 2cp-1-j of (b - a) / 2cp (docs/thd.md)."""
    local = bounds // cp
    t = torch.arange(local_len, dtype=bounds.dtype)
    seq = torch.searchsorted(local[1:-1].contiguous(), t, right=True)
    half = (local[seq + 1] - local[seq]) // 2
    i = t - local[seq]
    return bounds[seq] + torch.where(i < half, j * half + i, (2 * cp - 1 - j) * half + (i - half))


def make_thd_attend(args, group, cp_rank, local_len, cu_padded):
    """attend(q, k, v) for one thd step: keys of the CP group all-gathered; a query sees
    the keys of its own document at global positions up to its own."""
    bounds = cu_padded.to(torch.int64).cpu()
    where = torch.stack([thd_global_index(bounds, args.cp, j, local_len) for j in range(args.cp)])
    doc = torch.searchsorted(bounds[1:].contiguous(), where, right=True)
    q_pos, q_doc = where[cp_rank].to(_DEVICE), doc[cp_rank].to(_DEVICE)
    k_pos, k_doc = where.reshape(-1).to(_DEVICE), doc.reshape(-1).to(_DEVICE)
    visible = (q_doc.unsqueeze(1) == k_doc.unsqueeze(0)) & (k_pos.unsqueeze(0) <= q_pos.unsqueeze(1))

    def attend(q, k, v):
        if args.cp > 1:  # [cp, B, H, L, D] -> [B, H, cp*L, D], rank-major like `where`
            k = _GatherSeq.apply(k, group, _GROUP_POS[cp_rank])
            v = _GatherSeq.apply(v, group, _GROUP_POS[cp_rank])
            k = torch.cat([k[_GROUP_POS[j]] for j in range(args.cp)], dim=2)
            v = torch.cat([v[_GROUP_POS[j]] for j in range(args.cp)], dim=2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~visible, float("-inf"))
        return torch.matmul(torch.softmax(scores.float(), dim=-1).to(v.dtype), v)
    return attend


def make_attend(args, group, cp_rank, local_len):
    """attend(q, k, v) on local shards for the chosen backend."""
    if args.attn == "torch-ring":
        def ring(q, k, v):
            # context_parallel patches F.scaled_dot_product_attention: look it up now.
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return ring
    blocks = local_blocks(args.mode, args.cp, cp_rank, local_len)

    def allgather_kv(q, k, v):
        if args.cp > 1:
            k = gather_global(k, group, args.cp, cp_rank, args.mode)
            v = gather_global(v, group, args.cp, cp_rank, args.mode)
            offset, outs = 0, []
            for start, length in blocks:
                outs.append(causal_attention(q[:, :, offset:offset + length],
                                             k[:, :, :start + length], v[:, :, :start + length]))
                offset += length
            return torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
        return causal_attention(q, k, v)
    return allgather_kv


# ---- schedule=dynamic: a CP group per sub-sample ------------------------------

class DynamicGroups:
    """The process groups of schedule=dynamic's group table (cp_groups: first schedule
    rank, size; cp_world_ranks: the world rank of each schedule rank at each tp rank),
    created once, in id order, on every rank (new_group is collective); groups of one rank
    need none. groups[g] = (process group or None, its world ranks by chunk, this rank's
    index in the process group's own order (by world rank), or -1)."""

    def __init__(self, table, world_ranks):
        me = dist.get_rank()
        self.groups = []
        for first, size in table.tolist():
            ranks = [int(r) for r in world_ranks[0][first:first + size]]
            group = dist.new_group(ranks) if size > 1 else None
            pos = sorted(ranks).index(me) if me in ranks else -1
            self.groups.append((group, ranks, pos))


def dynamic_plan(shard, groups):
    """[(local start, end, padded, c, chunk, process group, index, world ranks)] of this rank's
    sub-samples, in its run order (one global order: members meet their common
    sub-samples in the same order, so the collectives cannot deadlock)."""
    cu_local = shard["cu_local"].to(torch.int64).cpu().tolist()
    cu_padded = shard["cu_seqlens_padded"].to(torch.int64).cpu().tolist()
    plan = []
    for k, (g, j) in enumerate(zip(shard["cp_group"].tolist(), shard["cp_chunk"].tolist())):
        group, ranks, pos = groups.groups[g]
        plan.append((cu_local[k], cu_local[k + 1], cu_padded[k + 1] - cu_padded[k], len(ranks),
                     j, group, pos, ranks))
    return plan


class _GatherEntries(torch.autograd.Function):
    """K/V of each sub-sample all-gathered over its group, entries in the plan's order:
    one autograd node per layer, so the backward's collectives (the gradients summed over
    each group, this rank's part kept) run in one order on every rank too."""

    @staticmethod
    def forward(ctx, kv, plan):
        ctx.plan = plan
        outs = []
        for a, b, _, c, _, group, pos, _ in plan:
            part = kv[..., a:b, :].contiguous()
            if c == 1:
                outs.append(part.unsqueeze(0).clone())
                continue
            parts = [torch.empty_like(part) for _ in range(c)]
            dist.all_gather(parts, part, group=group)
            outs.append(torch.stack(parts))
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        pieces = []
        for (a, b, _, c, _, group, pos, _), grad in zip(ctx.plan, grads):
            grad = grad.contiguous()  # every output is used: no None here
            if c > 1:
                dist.all_reduce(grad, group=group)
                pieces.append(grad[pos])
            else:
                pieces.append(grad[0])
        return torch.cat(pieces, dim=-2), None


def make_dynamic_attend(plan):
    """attend(q, k, v) for one step of schedule=dynamic: per sub-sample of padded length P
    over c ranks (chunk h = P / 2c; member m holds chunks m and 2c-1-m), its queries see its
    keys at sub-sample positions up to their own."""
    masks = []
    for a, b, padded, c, j, group, pos, ranks in plan:
        h = padded // (2 * c)

        def where(m):
            return torch.cat([torch.arange(m * h, (m + 1) * h),
                              torch.arange((2 * c - 1 - m) * h, (2 * c - m) * h)])
        q_pos = where(j)
        # the gathered parts come in the process group's order (by world rank)
        k_pos = torch.cat([where(m) for m in sorted(range(c), key=lambda m: ranks[m])])
        masks.append((k_pos.unsqueeze(0) <= q_pos.unsqueeze(1)).to(_DEVICE))

    def attend(q, k, v):
        kv = torch.stack((k, v))  # [2, B, H, L, D]
        gathered = _GatherEntries.apply(kv, plan)
        outs = []
        for (a, b, _, c, _, _, _, _), parts, visible in zip(plan, gathered, masks):
            keys = torch.cat(list(parts[:, 0].unbind(0)), dim=-2)
            values = torch.cat(list(parts[:, 1].unbind(0)), dim=-2)
            scores = torch.matmul(q[..., a:b, :], keys.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            scores = scores.masked_fill(~visible, float("-inf"))
            outs.append(torch.matmul(torch.softmax(scores.float(), dim=-1).to(values.dtype), values))
        return torch.cat(outs, dim=-2)
    return attend


# ---- torch-ring -------------------------------------------------------------

def torch_ring_context(args, grid, cp_rank, local_len):
    """(context factory, layout check text) for PyTorch's ring attention."""
    try:
        from torch.distributed.device_mesh import DeviceMesh
        from torch.distributed.tensor.experimental import context_parallel
        try:
            from torch.distributed.tensor.experimental._context_parallel import _attention as cpa
        except ImportError:
            from torch.distributed.tensor.experimental import _attention as cpa
    except ImportError as exc:
        raise SystemExit("train_cp: --attn torch-ring needs torch >= 2.7 with "
                         "context_parallel (%s, torch %s)" % (exc, torch.__version__))
    if _DEVICE.type != "cuda":
        raise SystemExit("train_cp: --attn torch-ring runs on CUDA only (use --attn "
                         "allgather-kv on the CPU)")
    mesh = DeviceMesh("cuda", torch.tensor(grid), mesh_dim_names=("dp", "cp"))["cp"]
    options = getattr(cpa, "_cp_options", None)
    if options is None:
        from torch.distributed.tensor.experimental import _attention as cpa
        options = cpa._cp_options
    options.enable_load_balance = args.mode == "round_robin"
    # Check torch's layout against cpdl's: shard the global positions with torch's own
    # sharder and compare with the positions this rank holds.
    total = local_len * args.cp
    probe = torch.arange(total, device=_DEVICE).unsqueeze(0)
    with context_parallel(mesh, buffers=[probe], buffer_seq_dims=[1], no_restore_buffers={probe}):
        theirs = probe.clone()
    ours = torch.cat([torch.arange(s, s + n, device=_DEVICE)
                      for s, n in local_blocks(args.mode, args.cp, cp_rank, local_len)])
    same = torch.equal(theirs.flatten().to(ours.dtype), ours)
    flag = torch.tensor([0 if same else 1], device=_DEVICE)
    dist.all_reduce(flag)
    text = "torch-ring layout (load balance %s) %s cpdl's %s layout" % (
        "on" if options.enable_load_balance else "off",
        "EQUALS" if int(flag) == 0 else "DIFFERS FROM", args.mode)
    if int(flag):
        raise SystemExit("train_cp: " + text + "; refusing to train on a wrong layout")

    if args.ring_rotate != "default":
        cpa.set_rotate_method(args.ring_rotate)

    def make():
        # context_parallel wants at least one buffer to shard; cpdl already sharded
        # the batch, so it gets a dummy one of 2*cp positions.
        dummy = torch.zeros(1, 2 * args.cp, device=_DEVICE)
        return context_parallel(mesh, buffers=[dummy], buffer_seq_dims=[1],
                                no_restore_buffers={dummy})
    return make, text


# ---- feeds ------------------------------------------------------------------

class Feed:
    """Yields (shard dict of tensors on the device, data_ms) per step."""

    def __init__(self, args, device):
        self.args, self.device = args, device
        kw = dict(cp=args.cp, seq_len=args.seq_len, batch=args.batch, steps=args.steps,
                  mode=args.mode)
        if args.schedule != "static":
            kw["schedule"] = args.schedule
        if args.source:
            kw["source"] = args.source
        self.full = None
        if args.prefetch:
            self.loader = cpdl.Loader(device=device, prefetch=1, **kw)
        else:
            self.loader = cpdl.Loader(pin=device.type == "cuda", **kw)
        self.mesh = self.loader.mesh
        if args.baseline:
            if self.mesh.dp_size != 1:
                raise SystemExit("train_cp: --baseline needs dp = 1 (each rank's own cp=1 "
                                 "loader must see the global batch)")
            from mpi4py import MPI
            kw.update(cp=1, mode="contiguous")
            self.full = cpdl.Loader(comm=MPI.COMM_SELF, **kw)

    def __iter__(self):
        cuda = self.device.type == "cuda"
        it = iter(self.loader) if self.full is None else None
        full = iter(self.full) if self.full is not None else None
        while True:
            t0 = time.perf_counter()
            if full is not None:
                try:
                    whole = next(full)
                except StopIteration:
                    return
                prepared = cpdl.shard_batch(dict(whole), self.args.cp, self.mesh.cp_rank,
                                            mode=self.args.mode)
                shard = {name: torch.from_numpy(a).to(self.device, non_blocking=False)
                         for name, a in prepared.items()}
                whole.release()
                data_ms = (time.perf_counter() - t0) * 1e3
                yield shard, data_ms
                continue
            try:
                batch = next(it)
            except StopIteration:
                return
            if isinstance(batch, cpdl.Batch):
                shard = {name: t.to(self.device, non_blocking=True)
                         for name, t in batch.torch().items()}
                if cuda:  # the copies read the slot: wait before it goes back
                    torch.cuda.current_stream().synchronize()
                    batch.release()
            else:
                shard = batch.torch()  # device="cuda", prefetch: already there
            data_ms = (time.perf_counter() - t0) * 1e3
            yield shard, data_ms

    def close(self):
        if self.full is not None:
            self.full.close()
        self.loader.close()


# ---- main -------------------------------------------------------------------

def parse_size(text):
    text = text.strip().upper()
    mult = {"K": 1024, "M": 1024 * 1024}.get(text[-1:], 1)
    return int(text[:-1] if mult > 1 else text) * mult


def main():
    global _DEVICE
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cp", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seq-len", type=parse_size, default=256, help="tokens; 128K and 1M work")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--mode", default="contiguous", choices=["contiguous", "round_robin", "thd"])
    p.add_argument("--schedule", default="static", choices=["static", "balanced", "dynamic"],
                   help="mode thd: which replica (balanced) or which group of ranks (dynamic) "
                   "gets which documents (docs/schedule.md)")
    p.add_argument("--attn", default="allgather-kv", choices=["allgather-kv", "torch-ring"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--source", default="", help="cpdl source URI (default synthetic:)")
    p.add_argument("--baseline", action="store_true",
                   help="every rank loads the whole batch and keeps its shard")
    p.add_argument("--prefetch", action="store_true",
                   help="cpdl.Loader(device='cuda', prefetch=1)")
    p.add_argument("--ring-rotate", default="alltoall",
                   choices=["alltoall", "allgather", "default"],
                   help="torch-ring: how K/V shards travel (alltoall passes them round the "
                   "ring; torch's default is allgather)")
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--json", action="store_true", help="one JSON line per step")
    args = p.parse_args()
    if args.prefetch and args.device != "cuda":
        raise SystemExit("train_cp: --prefetch copies to the GPU: it needs --device cuda")
    if args.prefetch and args.baseline:
        raise SystemExit("train_cp: --prefetch and --baseline are two different feeds")
    if args.mode == "thd" and (args.attn != "allgather-kv" or args.baseline):
        raise SystemExit("train_cp: --mode thd runs with --attn allgather-kv and cpdl's feed")
    if args.schedule != "static" and args.mode != "thd":
        raise SystemExit("train_cp: --schedule %s needs --mode thd" % args.schedule)

    rank, world, local = init_process_group("nccl" if args.device == "cuda" else "gloo")
    if args.device == "cuda":
        _DEVICE = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(_DEVICE)
    device = _DEVICE
    feed = Feed(args, device)
    mesh = feed.mesh
    if mesh.cp_size != args.cp:
        raise SystemExit("train_cp: loader cp %d != --cp %d" % (mesh.cp_size, args.cp))
    group, _, grid = cp_groups(mesh)
    local_len = None
    ring = None
    dyn_groups = None
    spread = 0  # dynamic: this step's sub-samples on this rank whose group has > 1 rank

    torch.manual_seed(0)
    model = Model(args.vocab, args.dim, args.heads, args.layers).to(device)
    params = [q for q in model.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16)
                if args.dtype == "bf16" else None)

    step = 0
    for shard, data_ms in feed:
        t0 = time.perf_counter()
        ids = shard["input_ids"] % args.vocab
        labels = shard["labels"]
        labels = torch.where(labels < 0, labels, labels % args.vocab)
        positions = shard["position_ids"]
        if local_len is None:
            local_len = ids.shape[1]
            attend = None if args.mode == "thd" else make_attend(args, group, mesh.cp_rank, local_len)
            if args.attn == "torch-ring":
                ring, text = torch_ring_context(args, grid, mesh.cp_rank, local_len)
                if rank == 0 and not args.json:
                    print("train_cp: " + text, flush=True)
                if rank == 0:
                    print(json.dumps({"layout_check": text}), file=sys.stderr, flush=True)
        if args.schedule == "dynamic":  # each sub-sample over its own group
            if dyn_groups is None:
                dyn_groups = DynamicGroups(shard["cp_groups"].cpu(), shard["cp_world_ranks"].cpu())
            plan = dynamic_plan(shard, dyn_groups)
            spread = sum(1 for e in plan if e[3] > 1)
            attend = make_dynamic_attend(plan)
        elif args.mode == "thd":  # the documents change every step
            attend = make_thd_attend(args, group, mesh.cp_rank, local_len, shard["cu_seqlens_padded"])
        valid = (labels != -100).sum().to(torch.float64)
        dist.all_reduce(valid)  # labelled tokens of the global batch
        ctx = ring() if ring is not None else None
        if ctx is not None:
            ctx.__enter__()
        if autocast is not None:
            with autocast:
                logits = model(ids, positions, attend)
        else:
            logits = model(ids, positions, attend)
        loss_sum = F.cross_entropy(logits.float().reshape(-1, args.vocab), labels.reshape(-1),
                                   ignore_index=-100, reduction="sum")
        loss = loss_sum / valid.to(loss_sum.dtype)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        if ctx is not None:
            ctx.__exit__(None, None, None)
        flat = torch.cat([q.grad.reshape(-1) for q in params])
        dist.all_reduce(flat)  # sum over dp x cp: the gradient of the global loss
        offset = 0
        for q in params:
            q.grad.copy_(flat[offset:offset + q.numel()].view_as(q))
            offset += q.numel()
        opt.step()
        stats = torch.tensor([loss_sum.detach().double().item(), data_ms, spread], dtype=torch.float64,
                             device=_comm_device())
        gathered = [torch.zeros_like(stats) for _ in range(world)]
        dist.all_gather(gathered, stats)
        total = sum(float(g[0]) for g in gathered) / float(valid)
        wait = max(float(g[1]) for g in gathered)
        step_ms = (time.perf_counter() - t0) * 1e3
        if rank == 0:
            if args.json:
                row = {"step": step, "loss": total, "data_ms": round(wait, 4),
                       "step_ms": round(step_ms, 2)}
                if args.schedule == "dynamic":  # shares of sub-samples spread over > 1 rank
                    row["spread_shares"] = int(sum(float(g[2]) for g in gathered))
                print(json.dumps(row), flush=True)
            else:
                print("step %d loss %.6f data %.3f ms step %.1f ms"
                      % (step, total, wait, step_ms), flush=True)
        step += 1
    feed.close()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
