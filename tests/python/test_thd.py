"""test_thd — mode thd against thd_reference.py (Megatron-core's and TransformerEngine's layout).

1. The pure preparation (cpdl.shard_batch_all, mode "thd"): for random packs — document
   lengths 1 .. 3*S, cp in {1, 2, 3, 4, 8}, documents shorter than 2*cp, a final document
   padded to the row's end, a row that is one document — every rank's view equals the
   collated row at TE's partitioned indices, and cu_seqlens, cu_seqlens_padded, max_seqlen
   pass through whole (one array shared by every rank). Bad input is a clear error.
2. Through the loader (`mpirun cpdl run --mode thd --dump --dump-collated`) on real llm.c
   and Megatron files: the dumped collated row follows the packing rule (padded lengths
   exact; a carried document starts the next row from its first token), every rank's view
   equals its index selection at TE's indices, the shared fields are identical on every rank
   and stored once per slot (segment bytes).
Plain script: prints "N passed, M failed" and exits non-zero on any failure.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testutil  # noqa: E402
import thd_reference as ref  # noqa: E402
from datafiles import write_llmc, write_megatron  # noqa: E402
from testutil import report  # noqa: E402

import cpdl  # noqa: E402

SHARED = ("cu_seqlens", "cu_seqlens_padded", "max_seqlen")


def row_batch(rng, real, padded, seq_len, with_positions=True):
    """A collated row of random contents with the row's cu_seqlens fields."""
    batch = {
        "input_ids": rng.integers(0, 50000, size=(1, seq_len)).astype(np.int64),
        "labels": rng.integers(-100, 50000, size=(1, seq_len)).astype(np.int64),
        "loss_mask": rng.integers(0, 2, size=(1, seq_len)).astype(np.int64),
        "cu_seqlens": ref.cu(real),
        "cu_seqlens_padded": ref.cu(padded),
        "max_seqlen": np.array([max(padded)], dtype=np.int32),
    }
    if with_positions:
        batch["position_ids"] = rng.integers(0, 1 << 20, size=(1, seq_len)).astype(np.int64)
    return batch


def check_row(batch, cp, where, literal=True):
    seq_len = batch["input_ids"].shape[1]
    views = cpdl.shard_batch_all(batch, cp, mode="thd")
    bounds = batch["cu_seqlens_padded"]
    for r in range(cp):
        if literal:
            index = ref.te_partitioned_indices(bounds, seq_len, cp, r)
        else:  # the same statement, vectorized, for long rows
            local = bounds.astype(np.int64) // cp
            t = np.arange(seq_len // cp)
            seq = np.searchsorted(local[1:-1], t, side="right")
            half = (local[seq + 1] - local[seq]) // 2
            i = t - local[seq]
            offset = np.where(i < half, r, (cp - 1) * 2 - r)  # as the kernel writes it
            index = i + local[seq] * cp + half * offset
        got = views[r]
        for name, a in batch.items():
            if name in SHARED:
                ok = got[name] is views[0][name] and np.array_equal(got[name], a)
                report(ok, "%s rank %d: shared field %s" % (where, r, name))
                continue
            want = np.take(a, index, axis=1)
            report(got[name].shape == (1, seq_len // cp) and np.array_equal(got[name], want),
                   "%s rank %d: %s differs from TE's index selection" % (where, r, name))
        if "position_ids" not in batch and cp > 1:  # synthesized: position within the document
            doc = np.searchsorted(bounds[1:-1], np.arange(seq_len), side="right")
            full = np.arange(seq_len) - bounds[doc]
            report(np.array_equal(got["position_ids"][0], full[index]),
                   "%s rank %d: synthesized position_ids" % (where, r))
        report(set(got) == set(batch) | ({"position_ids"} if cp > 1 else set()),
               "%s rank %d: fields %s" % (where, r, sorted(got)))


def test_pure_prep_random_packs():
    rng = np.random.default_rng(18)
    for cp in (1, 2, 3, 4, 8):
        m = 2 * cp
        for trial in range(12):
            seq_len = m * int(rng.integers(1, 12))
            lengths = [int(x) for x in rng.integers(1, 3 * seq_len + 1, size=6)]
            if trial % 3 == 0:  # documents shorter than 2*cp
                lengths += [int(x) for x in rng.integers(1, m, size=5)] if m > 1 else [1]
            rng.shuffle(lengths)
            rows = ref.pack_rows(lengths, seq_len, cp)
            for k, (real, padded) in enumerate(rows):
                assert sum(padded) == seq_len and all(p % m == 0 for p in padded)
                batch = row_batch(rng, real, padded, seq_len, with_positions=trial % 4 != 1)
                check_row(batch, cp, "cp=%d S=%d trial %d row %d" % (cp, seq_len, trial, k))
    # a row that is one document, and one whose last document is padded to the row's end
    for cp in (1, 2, 3, 4, 8):
        seq_len = 8 * cp
        check_row(row_batch(rng, [seq_len], [seq_len], seq_len), cp, "one document cp=%d" % cp)
        check_row(row_batch(rng, [1, 2 * cp + 1], [2 * cp, 6 * cp], seq_len), cp,
                  "padded tail cp=%d" % cp)
    # a long row with many documents (vectorized statement)
    seq_len, cp = 1 << 14, 8
    rows = ref.pack_rows([int(x) for x in rng.integers(1, 900, size=200)], seq_len, cp)
    check_row(row_batch(rng, *rows[0], seq_len), cp, "S=16K cp=8", literal=False)


def test_capacity_tail():
    """The loader's fixed-capacity cu_seqlens_padded (tail repeating S) partitions the same."""
    rng = np.random.default_rng(3)
    cp, seq_len = 4, 64
    batch = row_batch(rng, [5, 20], [8, 56], seq_len)
    want = cpdl.shard_batch_all(batch, cp, mode="thd")
    batch["cu_seqlens_padded"] = np.array([0, 8, 64, 64, 64, 64], dtype=np.int32)
    got = cpdl.shard_batch_all(batch, cp, mode="thd")
    for r in range(cp):
        report(np.array_equal(got[r]["input_ids"], want[r]["input_ids"]),
               "capacity tail rank %d" % r)


def expect_error(batch, cp, text, what):
    try:
        cpdl.shard_batch(batch, cp, 0, mode="thd")
    except cpdl.Error as e:
        report(e.name == "CPDL_EFIELD" and text in str(e), what, str(e))
        return
    report(False, what, "no error")


def test_errors():
    rng = np.random.default_rng(5)
    good = row_batch(rng, [5, 20], [8, 56], 64)
    b = dict(good)
    b["input_ids"] = np.zeros((2, 64), np.int64)
    b["labels"] = np.zeros((2, 64), np.int64)
    b["loss_mask"] = np.zeros((2, 64), np.int64)
    b["position_ids"] = np.zeros((2, 64), np.int64)
    expect_error(b, 4, "B = 1", "B=2")
    expect_error(row_batch(rng, [5], [60], 60), 4, "multiple of 8", "S=60 with cp=4")
    b = dict(good)
    del b["cu_seqlens_padded"]
    expect_error(b, 4, "cu_seqlens_padded", "missing cu_seqlens_padded")
    b = dict(good)
    b["cu_seqlens_padded"] = np.array([0, 8, 56], np.int32)
    expect_error(b, 4, "end at S", "boundaries ending before S")
    b["cu_seqlens_padded"] = np.array([0, 12, 64], np.int32)
    expect_error(b, 4, "multiple of 2*cp", "a document not a multiple of 2*cp")
    b["cu_seqlens_padded"] = np.array([4, 8, 64], np.int32)
    expect_error(b, 4, "must be 0", "first boundary not 0")


# ---- through the loader ------------------------------------------------------

def run(np_, args, quiet=False):
    return testutil.cpdl_run(np_, args, timeout=240, echo=not quiet)


def load_dir(path):
    return {f[:-4]: np.load(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".npy")}


def check_collated(c, cp, pad_id, where):
    """The packing rule on the dumped row: padding, positions, boundaries, max_seqlen."""
    seq_len = c["input_ids"].shape[1]
    cu, cup = c["cu_seqlens"], c["cu_seqlens_padded"]
    ok = cu.dtype == np.int32 and cup.dtype == np.int32 and cu.shape == cup.shape
    ok = ok and cup[0] == 0 and cup[-1] == seq_len and cu[0] == 0
    ok = ok and c["max_seqlen"].tolist() == [int(np.diff(cup).max())]
    for k in range(len(cu) - 1):
        a, b, n = int(cup[k]), int(cup[k + 1]), int(cu[k + 1] - cu[k])
        # exactly the next multiple of 2*cp (an aligned document gets no padding); only the
        # row's last document also takes the row's tail
        exact = -(-n // (2 * cp)) * (2 * cp)
        ok = ok and n >= 1 and (b - a) % (2 * cp) == 0
        ok = ok and ((b - a) == exact if k < len(cu) - 2 else (b - a) >= exact)
        ok = ok and np.array_equal(c["position_ids"][0, a:b], np.arange(b - a))
        ok = ok and np.all(c["input_ids"][0, a + n:b] == pad_id)
        ok = ok and np.all(c["labels"][0, a + n:b] == -100)
        ok = ok and np.all(c["loss_mask"][0, a + n:b] == 0)
        # input/label pairs of one document: labels are the inputs shifted by one
        ok = ok and np.array_equal(c["labels"][0, a:a + n - 1], c["input_ids"][0, a + 1:a + n])
    report(bool(ok), "%s: collated row breaks the packing rule" % where)


def check_dump(root, cp, where):
    steps = sorted(d for d in os.listdir(root) if d.startswith("step"))
    report(len(steps) > 0, "%s: no steps dumped" % where)
    for step in steps:
        sdir = os.path.join(root, step)
        for group in sorted(d for d in os.listdir(sdir) if d.startswith("group")):
            check_collated(load_dir(os.path.join(sdir, group, "collated")), cp, 0,
                           "%s %s %s" % (where, step, group))
        for rank in sorted(d for d in os.listdir(sdir) if d.startswith("rank")):
            meta = json.load(open(os.path.join(sdir, rank, "meta.json")))
            got = load_dir(os.path.join(sdir, rank))
            c = load_dir(os.path.join(sdir, "group%d" % meta["group"], "collated"))
            seq_len = c["input_ids"].shape[1]
            index = ref.te_partitioned_indices(c["cu_seqlens_padded"], seq_len, cp,
                                               meta["cp_rank"])
            ok = set(got) == set(c)
            for name, a in c.items():
                want = a if name in SHARED else np.take(a, index, axis=1)
                ok = ok and name in got and got[name].dtype == want.dtype
                ok = ok and np.array_equal(got[name], want)
            report(ok, "%s %s %s: view is not the collated row at TE's indices" % (where, step, rank))


def check_doc_starts(root, docs, where):
    """Where each document of the dumped rows begins, the rows taken in the global order
    (replica r's step k is global row k*dp + r; docs/design.md#the-global-order): a document
    that does not fit is carried whole to the next row, so every document of a row starts at
    its source document's first token, except a row's first one when the previous row was one
    document longer than a row: that continues exactly where the row stopped."""
    steps = sorted((int(d[4:]), d) for d in os.listdir(root) if d.startswith("step"))
    replica = {}  # group -> (dp_rank, dp_size), from the views' meta.json
    for rank in os.listdir(os.path.join(root, steps[0][1])):
        if rank.startswith("rank"):
            m = json.load(open(os.path.join(root, steps[0][1], rank, "meta.json")))
            replica[m["group"]] = (m["dp_rank"], m["dp_size"])
    rows = sorted((k * replica[g][1] + replica[g][0], step, "group%d" % g)
                  for k, step in steps for g in replica)
    bad = []
    long_doc = None  # (document, offset of the next pair) when the last row was one document
    for _, step, group in rows:
        c = load_dir(os.path.join(root, step, group, "collated"))
        cu, cup = c["cu_seqlens"], c["cu_seqlens_padded"]
        ids, labels, seq_len = c["input_ids"][0], c["labels"][0], c["input_ids"].shape[1]
        n_docs = len(cu) - 1
        for k in range(n_docs):
            a, n = int(cup[k]), int(cu[k + 1] - cu[k])
            text = np.concatenate([ids[a:a + n], labels[a + n - 1:a + n]])
            if k == 0 and long_doc is not None:
                d, off = long_doc
                ok = np.array_equal(docs[d][off:off + n + 1], text)
                where_ = (d, off)
            else:
                starts = [d for d, doc in enumerate(docs) if np.array_equal(doc[:n + 1], text)]
                ok, where_ = bool(starts), (starts[0] if starts else -1, 0)
            if not ok:
                bad.append("%s %s document %d (%d pairs at %d)" % (step, group, k, n, a))
            long_doc = None
            if n_docs == 1 and n == seq_len and ok and len(docs[where_[0]]) > where_[1] + n + 1:
                long_doc = (where_[0], where_[1] + n)
    report(not bad, "%s: a document of a row does not start where the packing rule says"
           % where, str(bad[:4]))


def test_loader_real_files():
    rng = np.random.default_rng(11)
    with tempfile.TemporaryDirectory() as tmp:
        seq_len = 96
        docs = [rng.integers(0, 50000, size=int(n)) for n in
                list(rng.integers(1, 3 * seq_len, size=40)) + list(rng.integers(1, 8, size=20))]
        # documents whose pairs are already a multiple of 2*cp for every cp below (24 = lcm)
        docs += [rng.integers(0, 50000, size=24 * k + 1) for k in (1, 1, 2, 3, 1, 2)]
        llmc = os.path.join(tmp, "shard.bin")
        write_llmc(llmc, docs)
        megatron = os.path.join(tmp, "corpus")
        write_megatron(megatron, docs)
        for np_, cp, source in ((4, 4, "llmc:" + llmc), (4, 2, "megatron:" + megatron),
                                (3, 3, "megatron:" + megatron), (2, 1, "llmc:" + llmc)):
            d = os.path.join(tmp, "cp%d_np%d" % (cp, np_))
            p = run(np_, ["--cp", str(cp), "--seq-len", str(seq_len // (2 * cp) * 2 * cp),
                          "--mode", "thd", "--source", source, "--steps", "5",
                          "--dump", d, "--dump-collated", d])
            report(p.returncode == 0, "cpdl run --mode thd cp=%d on %s" % (cp, source), p.stderr)
            if p.returncode == 0:
                check_dump(d, cp, "cp=%d %s" % (cp, source.split(":")[0]))
                src = cpdl.Source(source)
                check_doc_starts(d, [np.asarray(src[i]) for i in range(len(src))],
                                 "cp=%d %s" % (cp, source.split(":")[0]))


def test_python_loader():
    """cpdl.Loader from Python under mpirun (thd_loader_check.py): [n+1] views, torch tensors."""
    rng = np.random.default_rng(12)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "shard.bin")
        write_llmc(path, [rng.integers(0, 50000, size=int(n)) for n in rng.integers(1, 150, size=30)])
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "thd_loader_check.py")
        p = subprocess.run(testutil.mpirun(2, [sys.executable, script, "llmc:" + path, "64"]),
                           env=testutil.mpi_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=240)
        report(p.returncode == 0 and "0 failed" in p.stdout, "Python loader in mode thd", p.stdout[-2000:])


def test_exact_resume():
    """12 steps uninterrupted == 6 steps, --save-state, --resume to 12 (a carried document
    and a document cut at a row's end resume where they were)."""
    rng = np.random.default_rng(21)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "shard.bin")
        write_llmc(path, [rng.integers(0, 50000, size=int(n)) for n in rng.integers(1, 200, size=25)])
        common = ["--cp", "2", "--seq-len", "64", "--mode", "thd", "--source", "llmc:" + path,
                  "--seed", "3"]
        d = {k: os.path.join(tmp, k) for k in ("full", "first", "second", "state")}
        ok = run(2, common + ["--steps", "12", "--dump", d["full"]]).returncode == 0
        ok = ok and run(2, common + ["--steps", "6", "--dump", d["first"], "--save-state",
                                     d["state"]]).returncode == 0
        ok = ok and run(2, common + ["--steps", "12", "--dump", d["second"], "--resume",
                                     d["state"]]).returncode == 0
        report(ok, "thd resume runs")
        for k in range(6, 12) if ok else []:
            for r in range(2):
                a = load_dir(os.path.join(d["full"], "step%d" % k, "rank%d" % r))
                b = load_dir(os.path.join(d["second"], "step%d" % k, "rank%d" % r))
                report(set(a) == set(b) and all(np.array_equal(a[n], b[n]) for n in a),
                       "resumed step %d rank %d differs from the uninterrupted run" % (k, r))


def segment_bytes(args):
    p = run(4, args)
    report(p.returncode == 0, "cpdl run %s" % " ".join(args), p.stderr)
    return json.loads(p.stdout.strip().splitlines()[-1])["segment_bytes"] if p.returncode == 0 else 0


def test_shared_fields_stored_once():
    """One slot more adds cp rank blocks and ONE shared block (the cu_seqlens fields)."""
    cp, seq_len, page = 4, 16384, os.sysconf("SC_PAGE_SIZE")
    common = ["--cp", "4", "--seq-len", str(seq_len), "--mode", "thd", "--steps", "2"]
    two, three = segment_bytes(common + ["--slots", "2"]), segment_bytes(common + ["--slots", "3"])

    def align(n, a):
        return -(-n // a) * a
    # [1, S/cp]: input_ids, labels, position_ids int64 and loss_mask float32
    rank_block = align(3 * align(seq_len // cp * 8, 64) + align(seq_len // cp * 4, 64), page)
    capacity = seq_len // (2 * cp) + 1
    shared_block = align(2 * align(capacity * 4, 64) + 64, page)
    print("thd cp=%d S=%d: segment %d bytes with 2 slots, %d with 3; per slot %d = %d x %d rank "
          "bytes + %d shared bytes" % (cp, seq_len, two, three, three - two, cp, rank_block,
                                       shared_block))
    report(three - two == cp * rank_block + shared_block,
           "per-slot bytes %d, expected %d (shared fields once)" % (three - two,
                                                                     cp * rank_block + shared_block))


def test_config_errors():
    for args, text in ((["--mode", "thd", "--cp", "2", "--seq-len", "30"], "multiple of"),
                       (["--mode", "thd", "--cp", "2", "--seq-len", "32", "--batch", "2"], "batch=1"),
                       (["--mode", "thd", "--cp", "2", "--seq-len", "32", "--collate", "pad"],
                        "collate=pack")):
        p = run(2, args + ["--steps", "1"], quiet=True)
        report(p.returncode != 0 and text in p.stderr, "clear error for %s" % " ".join(args),
               p.stderr[-400:])


sys.exit(testutil.run([test_pure_prep_random_packs, test_capacity_tail, test_errors,
                       test_loader_real_files, test_python_loader, test_exact_resume,
                       test_shared_fields_stored_once,
                       test_config_errors]))
