"""test_adapters — cpdl.nemo, cpdl.megatron, cpdl.torchtitan against framework_reference.py.

For each layout, random cases from adapter_cases.py (shapes, pads, masks,
labels <- loss_mask, packed documents, cp in {1, 2, 3, 4, 8}, every rank)
through the adapter (cpdl's C core) and through the statement of the
framework's own function (framework_reference.py, commits named there):
key for key, dtype, shape and value, and NeMo's ShardLayout fields. Then
the surfaces: NeMo's Sharder (shard, token verbs), the errors, Megatron's
from_loader / get_batch / packed_seq_params and torchtitan's DataLoader
protocol (iteration, state_dict/load_state_dict, checks) on a stand-in loader.
Plain script: prints "N passed, M failed", exits non-zero on failure.
Run: PYTHONPATH=python /usr/bin/python3 tests/python/test_adapters.py
"""
import copy
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import adapter_cases as cases  # noqa: E402
import framework_reference as ref  # noqa: E402
from testutil import report, run  # noqa: E402

import cpdl  # noqa: E402,F401
from cpdl import _adapt, megatron, nemo, torchtitan  # noqa: E402

N_CASES = int(os.environ.get("CPDL_TEST_ADAPTER_CASES", "120"))
SEED = 20260829


def differ(got, want, where):
    """'' when the dicts hold the same keys and equal values, else why not."""
    if set(got) != set(want):
        return "%s: keys %s, expected %s" % (where, sorted(got), sorted(want))
    for key, w in want.items():
        g = got[key]
        if isinstance(w, torch.Tensor) or isinstance(g, torch.Tensor):
            if not (isinstance(g, torch.Tensor) and isinstance(w, torch.Tensor)):
                return "%s[%s]: %r vs %r" % (where, key, type(g), type(w))
            if g.dtype != w.dtype or g.shape != w.shape:
                return "%s[%s]: %s %s, expected %s %s" % (where, key, g.dtype, tuple(g.shape),
                                                          w.dtype, tuple(w.shape))
            if not torch.equal(g, w):
                return "%s[%s]: values differ" % (where, key)
        elif g != w:
            return "%s[%s]: %r, expected %r" % (where, key, g, w)
    return ""


def layout_differs(layout, want, where):
    for field in ("local_token_global_indices", "original_seq_len", "padded_seq_len",
                  "input_row_shape", "input_token_stream_positions"):
        g, w = getattr(layout, field), want.get(field)
        if isinstance(w, torch.Tensor):
            if not (isinstance(g, torch.Tensor) and g.dtype == w.dtype and torch.equal(g, w)):
                return "%s layout.%s: %r, expected %r" % (where, field, g, w)
        elif g != w:
            return "%s layout.%s: %r, expected %r" % (where, field, g, w)
    return ""


def _split(kw):
    kw = copy.deepcopy(kw)
    return kw.pop("cp"), kw.pop("loss_mask", None), kw


def check_layout(layout, count):
    rng = np.random.default_rng(SEED + hash(layout) % 1000)
    bad = 0
    ranks = 0
    for i in range(count):
        batch, kw = cases.thd_case(rng) if layout == "thd" else cases.nemo_case(rng, layout)
        cp, loss_mask, options = _split(kw)
        for rank in range(cp):
            mesh = _adapt.CpMesh(cp, rank)
            mine = copy.deepcopy(batch)
            lm_mine = loss_mask.clone() if loss_mask is not None else None
            after = None
            theirs = None if loss_mask is None else loss_mask.clone()
            if layout == "contiguous":
                want, want_layout = ref.nemo_contiguous(copy.deepcopy(batch), cp, rank, theirs,
                                                        **options)
                ctx, got, got_layout = nemo.shard_batch_contiguous(mesh, None, mine,
                                                                   loss_mask=lm_mine, **options)
            elif layout == "aux_only":
                options.pop("pad_multiple", None)
                want, want_layout = ref.nemo_aux_only(copy.deepcopy(batch), cp, rank, theirs,
                                                      **options)
                ctx, got, got_layout = nemo.shard_batch_contiguous_aux_only(
                    mesh, None, mine, loss_mask=lm_mine, **options)
            elif layout == "round_robin":
                rr = {k: v for k, v in options.items() if k == "extra_seq_buffers"}
                want, want_layout, after = ref.nemo_round_robin(copy.deepcopy(batch), cp, rank,
                                                                theirs, **rr)
                ctx, got, got_layout = nemo.shard_batch_round_robin(
                    mesh, None, mine, loss_mask=lm_mine, attention_context=lambda m: "ctx",
                    **options)
            else:
                want, want_layout = ref.nemo_thd(copy.deepcopy(batch), cp, rank)
                ctx, got, got_layout = nemo.shard_batch_thd(mesh, None, mine, **options)
            ranks += 1
            where = "%s case %d rank %d/%d" % (layout, i, rank, cp)
            why = differ(got, want, where) or layout_differs(got_layout, want_layout, where)
            if not why and layout != "thd" and got is not mine:
                why = "%s: the batch is not changed in place" % where
            if not why and after is not None and not torch.equal(lm_mine, after):
                why = "%s: the caller's loss_mask afterwards differs from NeMo's" % where
            if not why and layout == "round_robin" and ctx != "ctx":
                why = "%s: not the attention context asked for" % where
            if why:
                bad += 1
                if bad <= 3:
                    report(False, "nemo." + layout, why)
    report(bad == 0, "nemo.%s: %d rank cases equal NeMo's statement" % (layout, ranks),
           "%d differ" % bad)


def test_nemo_contiguous():
    check_layout("contiguous", N_CASES)


def test_nemo_contiguous_torch_ops():
    # the path CUDA tensors take (cpdl.torch's torch ops, planned by the C core), on CPU
    _adapt._TORCH_OPS_ON_CPU = True
    try:
        check_layout("contiguous", N_CASES // 2)
    finally:
        _adapt._TORCH_OPS_ON_CPU = False


def test_nemo_aux_only():
    check_layout("aux_only", N_CASES)


def test_nemo_round_robin():
    check_layout("round_robin", N_CASES)


def test_nemo_thd():
    check_layout("thd", N_CASES)


def test_nemo_passthrough_objects():
    # keys NeMo does not shard stay the same objects; the aux-only primary too
    ids = torch.arange(10).reshape(1, 10)
    pixels = torch.ones(1, 3)
    extra = torch.zeros(1, 10)
    batch = {"input_ids": ids, "labels": ids.clone(), "pixel_values": pixels,
             "mm_token_type_ids": extra}
    _, out, _ = nemo.shard_batch_contiguous_aux_only(_adapt.CpMesh(2, 1), None, batch)
    report(out["input_ids"] is ids and out["pixel_values"] is pixels
           and out["mm_token_type_ids"] is extra, "nemo: untouched keys stay the same objects")
    report(out["labels"].shape == (1, 6) and out["_packed_seq_ids"].shape == (1, 6),
           "nemo aux-only: aux streams sharded (S=10, cp=2 -> padded 12, 6 per rank)")
    embeds = torch.randn(1, 10, 4, requires_grad=True)
    b = {"inputs_embeds": embeds, "labels": ids.clone()}
    _, out, _ = nemo.shard_batch_contiguous_aux_only(_adapt.CpMesh(2, 0), None, b)
    report(out["inputs_embeds"] is embeds, "nemo aux-only: a primary with grad is never read")


def test_nemo_errors():
    mesh = _adapt.CpMesh(2, 0)
    for what, batch, exc in (
            ("no labels, no loss_mask", {"input_ids": torch.zeros(1, 4, dtype=torch.long)},
             KeyError),
            ("both primaries", {"input_ids": torch.zeros(1, 4, dtype=torch.long),
                                "inputs_embeds": torch.zeros(1, 4, 2),
                                "labels": torch.zeros(1, 4, dtype=torch.long)}, ValueError)):
        try:
            nemo.shard_batch_contiguous(mesh, None, batch)
            report(False, "nemo error: " + what, "no exception")
        except exc:
            report(True, "nemo error: " + what)
    try:
        nemo.shard_batch_contiguous(mesh, None, {"input_ids": torch.zeros(1, 5, dtype=torch.long),
                                                 "labels": torch.zeros(1, 5, dtype=torch.long)},
                                    pad_multiple=3)
        report(False, "nemo error: odd pad_multiple", "no exception")
    except ValueError as exc:
        report("pad_multiple" in str(exc), "nemo error: odd pad_multiple names it", str(exc))
    grad = {"inputs_embeds": torch.zeros(1, 4, 2, requires_grad=True),
            "labels": torch.zeros(1, 4, dtype=torch.long)}
    try:
        nemo.shard_batch_contiguous(mesh, None, grad)
        report(False, "nemo error: primary with grad", "no exception")
    except ValueError as exc:
        report("requires grad" in str(exc), "nemo error: a primary with grad is refused", str(exc))


def test_nemo_sharder():
    mesh = _adapt.CpMesh(4, 1)
    s = nemo.sharder("round_robin", cp_mesh=mesh, attention_context=lambda m: "ctx")
    batch = {"input_ids": torch.arange(13).reshape(1, 13),
             "labels": torch.arange(13).reshape(1, 13)}
    ctx, out = s.shard(batch)
    report(ctx == "ctx" and s.shard_layout.padded_seq_len == 16
           and s.shard_layout.original_seq_len == 13, "nemo.sharder: shard() keeps the layout")
    full = torch.arange(16).reshape(1, 16) * 10
    report(torch.equal(s.shard_token_tensor(full), full[:, [2, 3, 12, 13]]),
           "nemo.sharder: shard_token_tensor cuts like the batch (round robin)")
    padded = s.shard_token_tensor(full[:, :13], fill=-7)
    report(torch.equal(padded, torch.tensor([[20, 30, 120, -7]])),
           "nemo.sharder: an original-length tensor is padded with fill first")
    try:
        s.shard_token_tensor(full[:, :12])
        report(False, "nemo.sharder: a tensor of another length", "no exception")
    except ValueError as exc:
        report("padded_seq_len=16" in str(exc), "nemo.sharder: a tensor of another length is "
               "refused, naming the layout")
    t = nemo.sharder("thd", cp_mesh=_adapt.CpMesh(2, 1))
    try:
        t.shard_token_tensor(torch.zeros(1, 8))
        report(False, "nemo.sharder thd: verbs before the first shard", "no exception")
    except NotImplementedError:
        report(True, "nemo.sharder thd: token verbs raise before the first shard")
    try:
        nemo.sharder("zigzag")
        report(False, "nemo.sharder: unknown layout", "no exception")
    except ValueError as exc:
        report("contiguous" in str(exc), "nemo.sharder: an unknown layout lists the known ones")


# ---- Megatron ---------------------------------------------------------------

def check_megatron(packed):
    rng = np.random.default_rng(SEED + (7 if packed else 3))
    bad = ranks = 0
    for i in range(N_CASES):
        batch, kw = cases.megatron_case(rng, packed)
        cp = kw["cp"]
        for rank in range(cp):
            want = ref.megatron(copy.deepcopy(batch), cp, rank)
            got = megatron.shard_batch(copy.deepcopy(batch), cp, rank)
            ranks += 1
            why = differ(got, want, "megatron %s case %d rank %d/%d"
                         % ("per-document" if packed else "per-sequence", i, rank, cp))
            if why:
                bad += 1
                if bad <= 3:
                    report(False, "megatron", why)
    report(bad == 0, "megatron %s: %d rank cases equal Megatron's statement"
           % ("per-document" if packed else "per-sequence", ranks), "%d differ" % bad)


def test_megatron_per_sequence():
    check_megatron(False)


def test_megatron_per_document():
    check_megatron(True)


class FakeBatch(dict):
    """A cpdl.Batch stand-in: a mapping of tensors with .mesh and .torch()."""

    def __init__(self, tensors, cp, rank):
        super().__init__(tensors)
        self.mesh = cpdl.Mesh(*[0] * len(cpdl.Mesh._fields))._replace(cp_size=cp, cp_rank=rank,
                                                                       dp_size=1)

    def torch(self):
        return dict(self)


def test_megatron_from_loader():
    # a cpdl round_robin view -> Megatron's per-sequence result of the global batch
    rng = np.random.default_rng(SEED)
    B, S, cp = 2, 16, 4
    tokens = torch.from_numpy(rng.integers(0, 100, (B, S)))
    labels = tokens.roll(-1, 1)
    labels[:, -3:] = -100
    pos = torch.arange(S).repeat(B, 1)
    causal = (torch.tril(torch.ones(S, S)) < 0.5).expand(B, 1, S, S).clone()
    glob = {"tokens": tokens, "labels": labels, "loss_mask": (labels != -100).float(),
            "position_ids": pos, "attention_mask": causal, "cu_seqlens": None,
            "cu_seqlens_padded": None, "max_seqlen": None}
    ok = True
    for rank in range(cp):
        want = ref.megatron(dict(glob), cp, rank)
        view = cpdl.shard_batch({"input_ids": tokens.numpy(), "labels": labels.numpy(),
                                 "position_ids": pos.numpy()}, cp, rank, mode="round_robin")
        fake = FakeBatch({k: torch.from_numpy(v) for k, v in view.items()}, cp, rank)
        got = megatron.from_loader(fake, attention_mask=True)
        got.pop("local_cp_size"), got.pop("hybrid_cp_group")
        why = differ(got, want, "megatron.from_loader rank %d" % rank)
        if why:
            ok = False
            report(False, "megatron.from_loader", why)
        listed = megatron.get_batch(iter([fake]), attention_mask=True, device="cpu")
        ok = ok and len(listed) == len(megatron.BATCH_KEYS) and torch.equal(
            listed[megatron.BATCH_KEYS.index("tokens")], want["tokens"])
    report(ok, "megatron.from_loader / get_batch: a round_robin view is Megatron's per-sequence "
           "batch, causal mask rows included")
    cu = torch.tensor([[0, 5, 16]], dtype=torch.int32)
    cup = torch.tensor([[0, 8, 16]], dtype=torch.int32)
    params = megatron.packed_seq_params(cu, cup, torch.tensor([8], dtype=torch.int32),
                                        seq_length=16)
    if isinstance(params, dict):
        ok = (torch.equal(params["cu_seqlens_q"], cup[0]) and params["max_seqlen_q"] == 8
              and params["qkv_format"] == "thd" and params["tokens_per_sample"] == 16)
    else:
        ok = torch.equal(params.cu_seqlens_q, cup[0]) and params.max_seqlen_q == 8
    report(ok, "megatron.packed_seq_params: forward_step's PackedSeqParams (padded boundaries)")
    draw = np.random.default_rng(SEED + 1)
    for packed in (False, True):
        case, kw = cases.megatron_case(draw, packed)
        while kw["cp"] < 2:
            case, kw = cases.megatron_case(draw, packed)
        case["labels"] = None
        try:
            megatron.shard_batch(case, kw["cp"], 0)
            report(False, "megatron: a batch without labels", "no exception")
        except ValueError as exc:
            report("labels" in str(exc), "megatron: a batch without labels is refused (%s)"
                   % ("per-document" if packed else "per-sequence"))
    try:
        megatron.shard_batch(dict(glob, tokens=tokens[:, :10], labels=labels[:, :10],
                                  loss_mask=glob["loss_mask"][:, :10], position_ids=pos[:, :10],
                                  attention_mask=None), cp, 0)
        report(False, "megatron: S not a multiple of 2*cp", "no exception")
    except ValueError as exc:
        report("multiple of 2*cp" in str(exc), "megatron: S not a multiple of 2*cp is refused",
               str(exc))


# ---- torchtitan --------------------------------------------------------------

def test_torchtitan_shard():
    rng = np.random.default_rng(SEED + 11)
    bad = ranks = 0
    for i in range(N_CASES):
        (inputs, labels), kw = cases.torchtitan_case(rng)
        cp = kw["cp"]
        for rank in range(cp):
            w_in, w_lab, w_extra = ref.torchtitan(copy.deepcopy(inputs), labels.clone(), cp, rank)
            g_in, g_lab, g_extra = torchtitan.shard(copy.deepcopy(inputs), labels.clone(), cp,
                                                    rank)
            ranks += 1
            why = differ({"input": g_in, "labels": g_lab, **g_extra},
                         {"input": w_in, "labels": w_lab, **w_extra},
                         "torchtitan case %d rank %d/%d" % (i, rank, cp))
            if why:
                bad += 1
                if bad <= 3:
                    report(False, "torchtitan", why)
    report(bad == 0, "torchtitan.shard: %d rank cases equal the head-tail statement" % ranks,
           "%d differ" % bad)


class FakeLoader:
    """cpdl.Loader's surface for torchtitan.DataLoader: config, mesh, iteration
    of FakeBatch views (round_robin shards of a deterministic stream), state."""

    def __init__(self, seq_len=16, cp=2, rank=1, mode=1, batch=1, steps=4):
        self.config = {"seq_len": seq_len, "batch": batch, "mode": mode}
        self.mesh = cpdl.Mesh(*[0] * len(cpdl.Mesh._fields))._replace(
            cp_size=cp, cp_rank=rank, dp_size=1, dp_rank=0)
        self.step, self.steps, self.loaded = 0, steps, None

    def rows(self, step):
        S = self.config["seq_len"]
        ids = torch.arange(S).reshape(1, S) + 1000 * step
        return {"input_ids": ids.numpy(), "labels": (ids + 1).numpy(),
                "position_ids": torch.arange(S).reshape(1, S).numpy()}

    def __iter__(self):
        while self.step < self.steps:
            view = cpdl.shard_batch(self.rows(self.step), self.mesh.cp_size, self.mesh.cp_rank,
                                    mode="round_robin")
            self.step += 1
            yield FakeBatch({k: torch.from_numpy(v) for k, v in view.items()},
                            self.mesh.cp_size, self.mesh.cp_rank)

    def state_dict(self):
        return {"version": 2, "step": self.step, "state": "%x" % self.step}

    def load_state_dict(self, state):
        self.loaded = state
        self.step = int(state["state"], 16)

    def close(self):
        self.closed = True


def test_torchtitan_dataloader():
    fake = FakeLoader()
    dl = torchtitan.DataLoaderConfig().build(loader=fake, dp_world_size=1, dp_rank=0,
                                             num_tokens_per_batch=16, tokenizer=None,
                                             max_context_length=16)
    it = iter(dl)
    first, labels = next(it)
    stream = fake.rows(0)
    w_in, w_lab, w_extra = ref.torchtitan({"input": torch.from_numpy(stream["input_ids"][0]),
                                           "positions": torch.from_numpy(
                                               stream["position_ids"][0])},
                                          torch.from_numpy(stream["labels"][0]), 2, 1)
    report(torch.equal(first["input"], w_in) and torch.equal(labels, w_lab)
           and torch.equal(first["positions"], w_extra["positions"]) and set(first) ==
           {"input", "positions"}, "torchtitan.DataLoader: (input_dict, labels) already sharded")
    second, _ = next(it)
    # rank 1 of cp 2, S = 16: chunks 1 and 2 of 4 tokens; step k's tokens are 1000*k + position
    report(first["input"][0] == 4 and second["input"][0] == 1004,
           "torchtitan.DataLoader: copies survive the next step", "%r" % first["input"])
    state = dl.state_dict()
    report(state["version"] == torchtitan.STATE_VERSION and state["cpdl"]["step"] == 2,
           "torchtitan.DataLoader: state_dict carries cpdl's state")
    fresh = FakeLoader()
    dl2 = torchtitan.DataLoader(loader=fresh)
    dl2.load_state_dict(state)
    third, _ = next(iter(dl2))
    report(fresh.loaded == state["cpdl"] and third["input"][0] == 2004,
           "torchtitan.DataLoader: load_state_dict resumes at the next step")
    dl2.load_state_dict({})
    report(fresh.loaded == state["cpdl"], "torchtitan.DataLoader: an empty state does nothing")
    for what, kwargs, loader in (
            ("mode contiguous", {}, FakeLoader(mode=0)),
            ("batch 2", {}, FakeLoader(batch=2)),
            ("another num_tokens_per_batch", {"num_tokens_per_batch": 32}, FakeLoader()),
            ("another dp_rank", {"dp_rank": 3}, FakeLoader()),
            ("seq_len not a multiple of 2*cp", {}, FakeLoader(seq_len=10, cp=4, rank=0))):
        try:
            torchtitan.DataLoader(loader=loader, **kwargs)
            report(False, "torchtitan.DataLoader refuses " + what, "no exception")
        except ValueError as exc:
            report("cpdl.torchtitan" in str(exc), "torchtitan.DataLoader refuses " + what)
    try:
        dl.load_state_dict({"version": 99, "cpdl": {}})
        report(False, "torchtitan.DataLoader: another state version", "no exception")
    except ValueError:
        report(True, "torchtitan.DataLoader: another state version is refused")
    dl.close()
    report(getattr(fake, "closed", False), "torchtitan.DataLoader: close() closes the loader")


def test_thd_indices():
    # the adapters' vectorized TE indices against the kernel statement
    rng = np.random.default_rng(SEED + 5)
    ok = True
    for _ in range(200):
        cp = int(rng.choice(cases.CP_SIZES))
        S = 2 * cp * int(rng.integers(1, 8))
        _, padded = cases._pack(rng, S, cp)
        cu = [0] + list(np.cumsum(padded))
        for rank in range(cp):
            want = thd_ref_indices(cu, S, cp, rank)
            got = _adapt.thd_indices(torch.tensor(cu), S, cp, rank)
            ok = ok and got.dtype == torch.int32 and torch.equal(got.long(), want)
    report(ok, "_adapt.thd_indices equals TE's kernel statement")


def thd_ref_indices(cu, S, cp, rank):
    import thd_reference
    return torch.from_numpy(thd_reference.te_partitioned_indices(cu, S, cp, rank))


if __name__ == "__main__":
    sys.exit(run([test_nemo_contiguous, test_nemo_contiguous_torch_ops, test_nemo_aux_only,
                  test_nemo_round_robin, test_nemo_thd, test_nemo_passthrough_objects,
                  test_nemo_errors, test_nemo_sharder, test_megatron_per_sequence,
                  test_megatron_per_document, test_megatron_from_loader, test_torchtitan_shard,
                  test_torchtitan_dataloader, test_thd_indices]))
