"""framework_parity — the adapters against the frameworks' OWN functions (by hand, not CTest).

Runs NeMo Automodel's, Megatron-core's and torchtitan's CP batch functions
themselves — read from checkouts given on the command line, their few files
copied into a temporary directory (nothing of theirs is in this repository) —
on adapter_cases.py's random cases, beside cpdl.nemo / cpdl.megatron /
cpdl.torchtitan, every CP rank, and counts differences. On torch 1.13 / CPU
what their code needs from newer torch or from CUDA is stood in for here:
torch.distributed.device_mesh (a name only), TransformerEngine's
thd_get_partitioned_indices (thd_reference.py's statement of its kernel),
torch's context_parallel (the in-place head-tail shard it performs; the
balancer's own source when --torch-load-balancer is given), the CP group's
size and rank. docs/nemo.md, docs/megatron.md, docs/torchtitan.md give the
numbers of the run with the commits they name.

    PYTHONPATH=python /usr/bin/python3 tests/python/framework_parity.py \\
        --nemo AUTOMODEL_CHECKOUT --megatron MEGATRON_CHECKOUT \\
        --torchtitan TORCHTITAN_CHECKOUT \\
        [--torch-load-balancer \\
         PYTORCH/torch/distributed/tensor/experimental/_context_parallel/_load_balancer.py] \\
        [--seed 29] [--cases 300]
"""
import argparse
import ast
import contextlib
import copy
import os
import shutil
import sys
import tempfile
import types

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import adapter_cases as cases  # noqa: E402
import framework_reference as ref  # noqa: E402
import thd_reference  # noqa: E402

NEMO_FILES = ("nemo_automodel/components/distributed/context_parallel/__init__.py",
              "nemo_automodel/components/distributed/context_parallel/sharder.py",
              "nemo_automodel/components/distributed/context_parallel/utils.py",
              "nemo_automodel/components/distributed/thd_utils.py",
              "nemo_automodel/components/models/gemma4_moe/cp_batch.py")
MEGATRON_FUNCTIONS = ("_get_batch_on_this_cp_rank_per_document_balancing",
                      "_get_batch_on_this_cp_rank_per_sequence_balancing",
                      "_merge_cu_seqlens_across_micro_batch", "flatten_batch_for_packed_sequences",
                      "get_batch_on_this_cp_rank")


class Mesh:
    """A CP mesh / process group: size, rank, device type."""
    device_type = "cpu"

    def __init__(self, size, rank):
        self._size, self._rank = size, rank

    def size(self, dim=None):
        return self._size

    def get_local_rank(self):
        return self._rank

    def get_group(self):
        return self


def te_indices(cu, total, cp, rank):
    assert cu.dtype == torch.int32 and cu.dim() == 1
    return torch.from_numpy(thd_reference.te_partitioned_indices(cu.numpy(), total, cp, rank)
                            ).to(torch.int32)


def install_stubs():
    mesh_module = types.ModuleType("torch.distributed.device_mesh")
    mesh_module.DeviceMesh = type("DeviceMesh", (), {})
    sys.modules.setdefault("torch.distributed.device_mesh", mesh_module)
    tex = types.ModuleType("transformer_engine_torch")
    tex.thd_get_partitioned_indices = te_indices
    sys.modules["transformer_engine_torch"] = tex
    dist.get_rank = lambda group=None: group._rank
    dist.get_world_size = lambda group=None: group._size
    return tex


def same(a, b):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    return a == b


def differ(got, want):
    if set(got) != set(want):
        return "keys %s vs %s" % (sorted(got), sorted(want))
    for key in want:
        if not same(got[key], want[key]):
            return "key %s" % key
    return ""


def nemo_run(root, rng, count, report):
    scratch = tempfile.mkdtemp(prefix="cpdl-nemo-")
    try:
        for rel in NEMO_FILES:
            os.makedirs(os.path.join(scratch, os.path.dirname(rel)), exist_ok=True)
            shutil.copy(os.path.join(root, rel), os.path.join(scratch, rel))
        for rel in ("nemo_automodel", "nemo_automodel/components",
                    "nemo_automodel/components/distributed", "nemo_automodel/components/models",
                    "nemo_automodel/components/models/gemma4_moe"):
            open(os.path.join(scratch, rel, "__init__.py"), "a").close()
        sys.path.insert(0, scratch)
        import nemo_automodel.components.distributed.context_parallel.sharder as S
        import nemo_automodel.components.distributed.context_parallel.utils as U
        from nemo_automodel.components.models.gemma4_moe import cp_batch as G
        import cpdl.nemo as N
        assert N.ShardLayout is S.ShardLayout, "cpdl.nemo should use NeMo's ShardLayout"

        def fake_context(cp_mesh, cp_buffers, cp_seq_dims, cp_no_restore_buffers,
                         cp_rotate_method=None):
            @contextlib.contextmanager
            def ctx():  # context_parallel shards its buffers in place, head-tail
                for b, d in zip(cp_buffers, cp_seq_dims):
                    idx = ref.head_tail(cp_mesh.size(), cp_mesh.get_local_rank(), b.shape[d])
                    b.data = b.index_select(d, idx).clone()
                yield
            return ctx()
        U.create_context_parallel_ctx = fake_context
        U.get_train_context = lambda a, b, cp_context=None: (lambda: cp_context)

        for layout in ("contiguous", "aux_only", "round_robin", "thd"):
            n = bad = raised = 0
            for _ in range(count):
                batch, kw = cases.thd_case(rng) if layout == "thd" else cases.nemo_case(rng,
                                                                                        layout)
                cp = kw.pop("cp")
                for rank in range(cp):
                    mesh = Mesh(cp, rank)
                    kw1, kw2 = copy.deepcopy(kw), copy.deepcopy(kw)
                    b1, b2 = copy.deepcopy(batch), copy.deepcopy(batch)
                    lm1, lm2 = kw1.pop("loss_mask", None), kw2.pop("loss_mask", None)
                    try:
                        if layout == "contiguous":
                            want = S.shard_batch_contiguous(mesh, None, b1, loss_mask=lm1, **kw1)
                        elif layout == "aux_only":
                            kw1.pop("pad_multiple", None)
                            want = G.make_contiguous_aux_only_shard_cp_batch_and_ctx(
                                mesh, None, b1, loss_mask=lm1, **kw1)
                        elif layout == "round_robin":
                            want = S.shard_batch_load_balanced(mesh, None, b1, loss_mask=lm1,
                                                               **kw1)
                            with want[0]():
                                pass
                        else:
                            flat, li = U.make_cp_batch_for_te(
                                mesh if cp > 1 else None, b1,
                                padding_token_id=kw["padding_token_id"], return_local_indices=True)
                            rows = tuple(batch["input_ids"].shape[:2])
                            want = (None, flat, S.ShardLayout(
                                local_token_global_indices=li, padded_seq_len=rows[0] * rows[1],
                                input_row_shape=rows))
                        error_theirs = None
                    except Exception as exc:  # noqa: BLE001
                        want, error_theirs = None, exc
                    try:
                        if layout == "contiguous":
                            got = N.shard_batch_contiguous(mesh, None, b2, loss_mask=lm2, **kw2)
                        elif layout == "aux_only":
                            kw2.pop("pad_multiple", None)
                            got = N.shard_batch_contiguous_aux_only(mesh, None, b2,
                                                                    loss_mask=lm2, **kw2)
                        elif layout == "round_robin":
                            got = N.shard_batch_round_robin(
                                mesh, None, b2, loss_mask=lm2,
                                attention_context=lambda m: contextlib.nullcontext, **kw2)
                        else:
                            got = N.shard_batch_thd(mesh, None, b2, **kw2)
                        error_ours = None
                    except Exception as exc:  # noqa: BLE001
                        got, error_ours = None, exc
                    n += 1
                    if error_theirs is not None or error_ours is not None:
                        if (error_theirs is None) != (error_ours is None):
                            bad += 1
                            report("nemo %s rank %d/%d: NeMo %r, cpdl %r"
                                   % (layout, rank, cp, error_theirs, error_ours))
                        else:
                            raised += 1
                        continue
                    why = differ(got[1], want[1])
                    for field in ("local_token_global_indices", "original_seq_len",
                                  "padded_seq_len", "input_row_shape",
                                  "input_token_stream_positions"):
                        if not why and not same(getattr(got[2], field),
                                                getattr(want[2], field)):
                            why = "layout.%s" % field
                    if not why and lm1 is not None and not same(lm1, lm2):
                        why = "the loss_mask keyword afterwards"
                    if why:
                        bad += 1
                        report("nemo %s rank %d/%d: %s" % (layout, rank, cp, why))
            print("NeMo %-11s %5d rank cases (%d raise in both), %d differ"
                  % (layout, n, raised, bad))
        nemo_loader_run(S, N, rng, count, report)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class _Loader:
    """cpdl.Loader's surface for ShardedBatches: one step, a view cpdl made."""

    def __init__(self, view, mode, seq_len, cp, rank):
        import cpdl
        self.config = {"mode": mode, "seq_len": seq_len}
        self.mesh = cpdl.Mesh(*[0] * len(cpdl.Mesh._fields))._replace(cp_size=cp, cp_rank=rank)
        self._views = iter([view])

    def __next__(self):
        return {k: torch.from_numpy(v) for k, v in next(self._views).items()}


def nemo_loader_run(S, N, rng, count, report):
    """ShardedBatches' per-batch sharder is NeMo's own class, and NeMo's token
    verb cuts a whole tensor exactly as the loader cut the batch."""
    import cpdl
    n = bad = 0
    for _ in range(count):
        cp = int(rng.choice(cases.CP_SIZES))
        mode = ("contiguous", "round_robin", "thd")[int(rng.integers(0, 3))]
        seq_len = 2 * cp * int(rng.integers(1, 6)) - (int(rng.integers(0, 2 * cp))
                                                      if mode != "thd" else 0)
        ids = rng.integers(1, 1000, size=(1, seq_len))
        row = {"input_ids": ids, "labels": ids + 1,
               "position_ids": np.arange(seq_len)[None].repeat(1, 0)}
        if mode == "thd":
            _, padded = cases._pack(rng, seq_len, cp)
            row["cu_seqlens_padded"] = np.concatenate([[0], np.cumsum(padded)]).astype(np.int32)
            row["cu_seqlens"] = row["cu_seqlens_padded"].copy()
            row["max_seqlen"] = np.array([max(padded)], dtype=np.int32)
        for rank in range(cp):
            view = cpdl.shard_batch(row, cp, rank, mode=mode)
            batches = N.ShardedBatches(_Loader(view, mode, seq_len, cp, rank))
            batch = next(batches)
            sharder = batches.sharder_for(batch)
            _, handed = sharder.shard(batch)
            full = torch.from_numpy(ids)
            if mode == "thd":
                cut = sharder.shard_token_tensor(full.reshape(-1), seq_dim=0)
                mine = batch["input_ids"]
            else:
                padded_len = sharder.shard_layout.padded_seq_len
                full = torch.cat([full, torch.zeros(1, padded_len - seq_len, dtype=full.dtype)], 1)
                cut = sharder.shard_token_tensor(full, seq_dim=1)
                mine = batch["input_ids"]
            n += 1
            if not (isinstance(sharder, S.ContextParallelSharder) and handed is batch
                    and torch.equal(cut, mine)):
                bad += 1
                report("nemo ShardedBatches %s rank %d/%d" % (mode, rank, cp))
    print("NeMo ShardedBatches %5d rank cases (NeMo's sharder class and verb), %d differ"
          % (n, bad))


def megatron_run(root, rng, count, report):
    tree = ast.parse(open(os.path.join(root, "megatron/core/utils.py")).read())
    from typing import Any, Callable, Dict, Optional
    ns = {"torch": torch, "tex": sys.modules["transformer_engine_torch"], "Dict": Dict,
          "Any": Any, "Optional": Optional, "Callable": Callable}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in MEGATRON_FUNCTIONS:
            exec(compile(ast.Module([node], []), "megatron/core/utils.py", "exec"), ns)
    missing = set(MEGATRON_FUNCTIONS) - set(ns)
    assert not missing, "not in megatron/core/utils.py: %s" % sorted(missing)
    import cpdl.megatron as M
    for packed in (False, True):
        n = bad = 0
        for _ in range(count):
            batch, kw = cases.megatron_case(rng, packed)
            cp = kw["cp"]
            for rank in range(cp):
                theirs = ns["flatten_batch_for_packed_sequences"](copy.deepcopy(batch))
                theirs = ns["get_batch_on_this_cp_rank"](theirs, is_hybrid_cp=False,
                                                         cp_group=Mesh(cp, rank))
                ours = M.shard_batch(copy.deepcopy(batch), cp, rank)
                n += 1
                why = differ(ours, theirs)
                if why:
                    bad += 1
                    report("megatron rank %d/%d: %s" % (rank, cp, why))
        print("Megatron %-13s %5d rank cases, %d differ"
              % ("per-document" if packed else "per-sequence", n, bad))


def torchtitan_run(root, balancer, rng, count, report):
    if balancer:
        flex = types.ModuleType("torch.nn.attention.flex_attention")
        flex.BlockMask = type("BlockMask", (), {})
        sys.modules.setdefault("torch.nn.attention", types.ModuleType("torch.nn.attention"))
        sys.modules["torch.nn.attention.flex_attention"] = flex
        lb = {}
        exec(compile(open(balancer).read(), "_load_balancer.py", "exec"), lb)
        head_tail_balancer = lb["_HeadTailLoadBalancer"]
    else:  # the statement in framework_reference.py
        class head_tail_balancer:  # noqa: N801
            def __init__(self, seq_len, world, device):
                self.n, self.world = seq_len, world

            def _generate_indices(self):
                return torch.cat([ref.head_tail(self.world, r, self.n)
                                  for r in range(self.world)]).unsqueeze(0)
    attention = types.ModuleType("torch.distributed.tensor.experimental._attention")

    def context_parallel_shard(mesh, buffers, seq_dims, load_balancer=None):
        out = []  # rearrange by the balancer's indices, then Shard(dim): torch.chunk
        for b, d in zip(buffers, seq_dims):
            if load_balancer is not None:
                b = b.index_select(d, load_balancer._generate_indices()[0].to(torch.long))
            out.append(b.chunk(mesh.size(), dim=d)[mesh.get_local_rank()])
        return out
    attention._context_parallel_shard = context_parallel_shard
    attention._HeadTailLoadBalancer = head_tail_balancer
    attention._PTRRLoadBalancer = object
    for name in ("torch.distributed.tensor", "torch.distributed.tensor.experimental",
                 "torchtitan", "torchtitan.models", "torchtitan.models.common"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["torch.distributed.tensor.experimental._attention"] = attention
    flex = sys.modules.setdefault("torch.nn.attention.flex_attention",
                                  types.ModuleType("torch.nn.attention.flex_attention"))
    if not hasattr(flex, "BlockMask"):
        flex.BlockMask = type("BlockMask", (), {})
    sys.modules.setdefault("torch.nn.attention", types.ModuleType("torch.nn.attention"))
    common = types.ModuleType("torchtitan.models.common.attention")
    common.AttentionMasksType = object
    sys.modules["torchtitan.models.common.attention"] = common
    api = {}
    path = os.path.join(root, "torchtitan/distributed/context_parallel/api.py")
    exec(compile(open(path).read(), path, "exec"), api)
    import cpdl.torchtitan as TT
    n = bad = 0
    for _ in range(count):
        (inputs, labels), kw = cases.torchtitan_case(rng)
        cp = kw["cp"]
        for rank in range(cp):
            theirs = api["prepare_context_parallel_input"](
                inputs["input"].clone(), labels.clone(), {"positions": inputs["positions"].clone()},
                Mesh(cp, rank), "cpu", "headtail")
            ours = TT.shard(copy.deepcopy(inputs), labels.clone(), cp, rank)
            n += 1
            why = differ({"input": ours[0], "labels": ours[1], **ours[2]},
                         {"input": theirs[0], "labels": theirs[1], **theirs[2]})
            if why:
                bad += 1
                report("torchtitan rank %d/%d: %s" % (rank, cp, why))
    print("torchtitan headtail      %5d rank cases, %d differ%s"
          % (n, bad, "" if balancer else " (balancer: framework_reference's statement)"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nemo")
    parser.add_argument("--megatron")
    parser.add_argument("--torchtitan")
    parser.add_argument("--torch-load-balancer")
    parser.add_argument("--seed", type=int, default=29)
    parser.add_argument("--cases", type=int, default=300)
    args = parser.parse_args()
    install_stubs()
    failures = []

    def report(line):
        failures.append(line)
        if len(failures) <= 10:
            print("DIFF", line)
    rng = np.random.default_rng(args.seed)
    if args.nemo:
        nemo_run(args.nemo, rng, args.cases, report)
    if args.megatron:
        megatron_run(args.megatron, rng, args.cases, report)
    if args.torchtitan:
        torchtitan_run(args.torchtitan, args.torch_load_balancer, rng, args.cases, report)
    print("%d differences" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
