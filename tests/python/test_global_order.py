"""test_global_order — one global order of training rows for every source,
whatever the layout (docs/design.md#the-global-order), through `cpdl run`.

1. Invariance: for each source (synthetic, llmc, megatron, npy, gpt) x
   collate {pack, pad} x mode {contiguous, round_robin, thd where it
   applies}, the global row sequence reassembled from every rank's dumped
   views — replica r's step k holds global rows (k*dp + r)*batch + b; its CP
   ranks' views are put back together (contiguous chunks, or round_robin's
   2*cp zigzag chunks) and cut back to seq_len — is identical for every
   layout (dp, cp, tp) tried. thd rows are packed with a padding multiple of
   2*cp, so they are compared across dp and tp at one cp (from the collated
   dumps), and across cp as the sequence of their real input/label pairs.
2. Elastic resume: stopped at step k under layout A with --save-state and
   resumed under layout B (dp 2->1, 1->3, 4->2, cp 2->4, tp 1->2, another
   CPDL_RANKS_PER_NODE), the rows of A's k steps followed by B's are exactly
   the global sequence: no row repeated, none skipped.
`--full` sweeps every (dp, cp, tp) with dp*cp*tp <= 8; the default is a
representative subset that keeps CI short.
Prints "N passed, M failed" and exits non-zero on any failure.
"""
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import resume_data  # noqa: E402
import testutil  # noqa: E402
from datafiles import write_megatron  # noqa: E402

check = testutil.report
FULL = "--full" in sys.argv
S, B = 32, 2
ROWS = 24  # rows compared: a whole number of global batches for dp 1, 2, 3, 4 at batch 2


def load_dir(path):
    return {f[:-4]: np.load(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".npy")}


def gpt_uri(tmp):
    prefix = os.path.join(tmp, "gpt_a")
    if not os.path.exists(prefix + ".idx"):
        rng = np.random.RandomState(5)
        docs = [np.append(rng.randint(8, 60000, size=rng.randint(1, 60)), 7) for _ in range(200)]
        write_megatron(prefix, docs, np.uint16)
    return "gpt:%s?num_samples=400&split=100,0,0&eod=7" % prefix


def source_uri(kind, tmp):
    if kind == "synthetic":
        return "synthetic:?samples=3000&mean=40"
    if kind == "gpt":
        return gpt_uri(tmp)
    if kind == "npy":
        root = os.path.join(tmp, "npy")
        if not os.path.isdir(root):
            resume_data.write_npy(root, 30, seq_len=S, batch=B)
        return "npy:" + root
    return resume_data.source_uri(kind, tmp, 1)


def unshard(views, cp, mode, name):
    """One replica's field [B, S] from its CP ranks' views (cp_rank order)."""
    parts = [v[name] for v in views]
    if mode == "round_robin":
        chunks = [None] * (2 * cp)
        for c, p in enumerate(parts):
            half = p.shape[1] // 2
            chunks[c], chunks[2 * cp - 1 - c] = p[:, :half], p[:, half:]
        parts = chunks
    return np.concatenate(parts, axis=1)[:, :S]


def rows_from_views(root, mode, first_step=0, consumed=0):
    """{global row: {field: row}} from a --dump (views of input_ids and labels)
    of a job that started at step first_step after `consumed` rows."""
    return {consumed + ((step - first_step) * dp + r) * B + b: fields
            for (step, r, b, dp), fields in rows_from_views_steps(root, mode).items()}


def rows_from_collated(root, dp_of_group):
    """{global row: {field: row}} from --dump-collated (thd: batch 1)."""
    rows = {}
    for sd in os.listdir(root):
        if not sd.startswith("step"):
            continue
        step = int(sd[4:])
        for grp in os.listdir(os.path.join(root, sd)):
            if not grp.startswith("group"):
                continue
            dp_rank, dp = dp_of_group[int(grp[5:])]
            c = load_dir(os.path.join(root, sd, grp, "collated"))
            for b in range(c["input_ids"].shape[0]):
                rows[(step * dp + dp_rank) * c["input_ids"].shape[0] + b] = {
                    k: v[b] if v.ndim == 2 else v for k, v in c.items()}
    return rows


def group_replicas(root):
    """{group: (dp_rank, dp_size)} from the views' meta.json."""
    out = {}
    for sd in os.listdir(root):
        if sd.startswith("step"):
            for rank in os.listdir(os.path.join(root, sd)):
                if rank.startswith("rank"):
                    m = json.load(open(os.path.join(root, sd, rank, "meta.json")))
                    out[m["group"]] = (m["dp_rank"], m["dp_size"])
            break
    return out


def same_rows(a, b, n):
    """Rows 0..n-1 present and equal in both."""
    for g in range(n):
        if g not in a or g not in b:
            return "row %d missing (%s)" % (g, "first" if g not in a else "second")
        for k in a[g]:
            if k in b[g] and not np.array_equal(a[g][k], b[g][k]):
                return "row %d field %s differs" % (g, k)
    return None


def thd_pairs(rows, n):
    """The real input/label pairs of rows 0..n-1, in order (padding dropped)."""
    ids, labels = [], []
    for g in range(n):
        cu = rows[g]["cu_seqlens"]
        cup = rows[g]["cu_seqlens_padded"]
        for k in range(len(cu) - 1):
            if cup[k + 1] == cup[k]:
                break
            ids.append(rows[g]["input_ids"][cup[k]:cup[k] + cu[k + 1] - cu[k]])
            labels.append(rows[g]["labels"][cup[k]:cup[k] + cu[k + 1] - cu[k]])
    return np.concatenate(ids), np.concatenate(labels)


def run(np_, args, env=None):
    p = testutil.cpdl_run(np_, ["--pin", "none", "--seq-len", str(S), "--batch", str(B)] + args,
                          env=testutil.mpi_env(env), timeout=240)
    return p


LAYOUTS_CI = [(1, 1, 1), (2, 2, 1), (3, 1, 1), (4, 1, 2)]
LAYOUTS_FULL = [(d, c, t) for d in (1, 2, 3, 4) for c in (1, 2) for t in (1, 2) if d * c * t <= 8]


def cells():
    """(source, collate, mode) to check."""
    out = []
    for source in ("synthetic", "llmc", "megatron", "npy", "gpt"):
        collates = ("pack",) if source in ("npy", "gpt") else ("pack", "pad")
        for collate in collates:
            for mode in ("contiguous", "round_robin"):
                # CI: every source once, each collate and mode somewhere
                if not FULL and (collate, mode) != ("pack", "contiguous") and source not in (
                        "synthetic", "megatron"):
                    continue
                out.append((source, collate, mode))
    return out


def test_invariance():
    layouts = LAYOUTS_FULL if FULL else LAYOUTS_CI
    with tempfile.TemporaryDirectory() as tmp:
        for source, collate, mode in cells():
            uri = source_uri(source, tmp)
            if not FULL and mode == "round_robin":
                use = [(1, 1, 1), (2, 2, 1)]  # the zigzag needs cp > 1
            else:
                use = layouts
            ref = None
            for i, (dp, cp, tp) in enumerate(use):
                label = "%s %s %s dp%d cp%d tp%d" % (source, collate, mode, dp, cp, tp)
                d = os.path.join(tmp, "%s-%s-%s-%d" % (source, collate, mode, i))
                p = run(dp * cp * tp, ["--cp", str(cp), "--tp", str(tp), "--collate", collate,
                                       "--mode", mode, "--source", uri,
                                       "--steps", str(ROWS // (dp * B)), "--dump", d])
                check(p.returncode == 0, "%s: exit %d" % (label, p.returncode), p.stderr)
                if p.returncode:
                    continue
                rows = rows_from_views(d, mode)
                check(len(rows) == ROWS, "%s: %d rows dumped, expected %d" % (label, len(rows), ROWS))
                if ref is None:
                    ref = rows
                else:
                    diff = same_rows(ref, rows, ROWS)
                    check(diff is None, "%s: the global rows differ from dp1 cp1 tp1: %s"
                          % (label, diff))


def test_thd():
    with tempfile.TemporaryDirectory() as tmp:
        for source in ("synthetic", "llmc", "megatron") if FULL else ("synthetic", "megatron"):
            uri = source_uri(source, tmp) if source != "synthetic" else "synthetic:?samples=3000&mean=20"
            by_cp = {}
            layouts = [(1, 1, 1), (2, 1, 2), (4, 1, 1), (1, 2, 1), (3, 2, 1)] if FULL else \
                [(1, 1, 1), (2, 1, 2), (1, 2, 1), (3, 2, 1)]
            for dp, cp, tp in layouts:
                label = "%s thd dp%d cp%d tp%d" % (source, dp, cp, tp)
                d = os.path.join(tmp, "%s-thd-%d-%d-%d" % (source, dp, cp, tp))
                rows_n = 12
                p = testutil.cpdl_run(dp * cp * tp, [
                    "--pin", "none", "--seq-len", "64", "--batch", "1", "--cp", str(cp), "--tp",
                    str(tp), "--mode", "thd", "--source", uri, "--steps", str(rows_n // dp),
                    "--dump", d, "--dump-collated", d], timeout=240)
                check(p.returncode == 0, "%s: exit %d" % (label, p.returncode), p.stderr)
                if p.returncode:
                    continue
                rows = rows_from_collated(d, group_replicas(d))
                check(len(rows) == rows_n, "%s: %d rows, expected %d" % (label, len(rows), rows_n))
                if cp in by_cp:
                    diff = same_rows(by_cp[cp], rows, rows_n)
                    check(diff is None, "%s: thd rows differ from dp1 at cp%d: %s" % (label, cp, diff))
                else:
                    by_cp[cp] = rows
            if 1 in by_cp and 2 in by_cp:
                a_ids, a_lab = thd_pairs(by_cp[1], 12)
                b_ids, b_lab = thd_pairs(by_cp[2], 12)
                n = min(len(a_ids), len(b_ids))
                check(n > 100 and np.array_equal(a_ids[:n], b_ids[:n]) and
                      np.array_equal(a_lab[:n], b_lab[:n]),
                      "%s thd: the document pairs at cp 1 and cp 2 differ" % source)


# (np_a, cp_a, tp_a, np_b, cp_b, tp_b, env_b): dp 2->1, 1->3, 4->2, cp 2->4, tp 1->2, fake nodes
RESUMES = [
    (2, 1, 1, 1, 1, 1, None),
    (1, 1, 1, 3, 1, 1, None),
    (4, 1, 1, 4, 2, 1, None),
    (4, 2, 1, 4, 4, 1, None),
    (2, 1, 1, 4, 1, 2, None),
    (4, 2, 1, 4, 2, 1, {"CPDL_RANKS_PER_NODE": "1"}),
]


def test_resume():
    with tempfile.TemporaryDirectory() as tmp:
        cell = -1
        for source in ("synthetic", "llmc", "megatron", "npy", "gpt"):
            uri = source_uri(source, tmp)
            for collate, mode in (("pack", "contiguous"), ("pad", "round_robin")):
                if source in ("npy", "gpt") and collate == "pad":
                    continue
                if not FULL and source == "llmc":
                    continue
                cell += 1
                base = os.path.join(tmp, "%s-%s-ref" % (source, collate))
                p = run(1, ["--collate", collate, "--mode", mode, "--source", uri, "--steps",
                            str(ROWS // B), "--dump", base])
                check(p.returncode == 0, "%s %s reference run: exit %d" % (source, collate,
                                                                          p.returncode), p.stderr)
                if p.returncode:
                    continue
                ref = rows_from_views(base, mode)
                for i, (na, ca, ta, nb, cb, tb, env) in enumerate(RESUMES):
                    if not FULL and (i + cell) % 3:
                        continue  # CI: two layout changes per cell, each of them somewhere
                    if mode == "round_robin" and (ca == 1 or cb == 1):
                        ca, cb = 2 * ca, 2 * cb  # keep the zigzag meaningful where it fits
                        na, nb = na * 2, nb * 2
                        if na > 8 or nb > 8:
                            continue
                    dpa, dpb = na // (ca * ta), nb // (cb * tb)
                    label = "%s %s resume np%d cp%d tp%d -> np%d cp%d tp%d %s" % (
                        source, collate, na, ca, ta, nb, cb, tb, env or "")
                    k = 2  # steps under A
                    consumed = k * dpa * B
                    more = (ROWS - consumed) // (dpb * B)
                    upto = consumed + more * dpb * B  # B takes whole global batches of its own
                    st = os.path.join(tmp, "st-%s-%s-%d" % (source, collate, i))
                    da = os.path.join(tmp, "a-%s-%s-%d" % (source, collate, i))
                    db = os.path.join(tmp, "b-%s-%s-%d" % (source, collate, i))
                    common = ["--collate", collate, "--mode", mode, "--source", uri]
                    pa = run(na, common + ["--cp", str(ca), "--tp", str(ta), "--steps", str(k),
                                           "--save-state", st, "--dump", da])
                    pb = run(nb, common + ["--cp", str(cb), "--tp", str(tb), "--steps",
                                           str(k + more), "--resume", st, "--dump", db], env)
                    ok = pa.returncode == 0 and pb.returncode == 0
                    check(ok, "%s: exits %d %d" % (label, pa.returncode, pb.returncode),
                          pa.stderr + pb.stderr)
                    if not ok:
                        continue
                    rows = rows_from_views(da, mode)
                    rows_b = rows_from_views(db, mode, k, consumed)
                    dup = set(rows) & set(rows_b)
                    check(not dup, "%s: rows %s delivered twice" % (label, sorted(dup)[:5]))
                    rows.update(rows_b)
                    check(sorted(rows) == list(range(upto)), "%s: rows %s, expected 0..%d"
                          % (label, sorted(rows)[:30], upto - 1))
                    diff = same_rows(ref, rows, upto)
                    check(diff is None, "%s: the resumed job leaves the global order: %s"
                          % (label, diff))


def rows_from_views_steps(root, mode):
    """{(step, dp_rank, b, dp): {field: row}} from a --dump."""
    out = {}
    for sd in os.listdir(root):
        if not sd.startswith("step"):
            continue
        by_replica = {}
        for rank in os.listdir(os.path.join(root, sd)):
            d = os.path.join(root, sd, rank)
            if not rank.startswith("rank"):
                continue
            meta = json.load(open(os.path.join(d, "meta.json")))
            if meta["tp_rank"] == 0:
                by_replica.setdefault(meta["dp_rank"], {})[meta["cp_rank"]] = (meta, load_dir(d))
        for r, cps in by_replica.items():
            meta = cps[0][0]
            views = [cps[c][1] for c in range(meta["cp_size"])]
            for name in ("input_ids", "labels"):
                full = unshard(views, meta["cp_size"], mode, name)
                for b in range(full.shape[0]):
                    out.setdefault((meta["step"], r, b, meta["dp_size"]), {})[name] = full[b]
    return out


if __name__ == "__main__":
    sys.exit(testutil.run([test_invariance, test_thd, test_resume]))
