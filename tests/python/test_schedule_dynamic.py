"""test_schedule_dynamic — schedule=dynamic through the loader (docs/schedule.md).

`mpirun cpdl run --mode thd --schedule dynamic --dump` on llm.c and Megatron files of
long-tailed documents (many short, some longer than a row); each view lists its rank's
sub-samples (cu_seqlens, cu_seqlens_padded, cu_local, doc_ids, cp_group, cp_chunk) and the
group table (cp_groups, cp_world_ranks).
1. Exact coverage: per step, every sub-sample is reassembled from its group's members' views
   (chunks j and 2c-1-j of each member j) and the global batch's sub-samples are exactly the
   pieces static thd (balanced's collated rows) gives it — the same multiset of real
   input/label pairs: no document lost, no token lost or repeated — for every dp x cp in
   {1,2,4}^2 with np <= 8, on llmc: and megatron:. Positions run 0.. through each
   sub-sample, padding is (pad token, -100, loss 0), doc_ids names each entry's document.
2. Groups: the members of a group are the table's ranks (cp_world_ranks maps every view's
   schedule rank to its world rank), each holds one chunk index, and they list their common
   sub-samples in the same order (else the reassembly above would mismatch).
3. Nodes: with CPDL_RANKS_PER_NODE=1 (every rank its own node and leader, scheduling alone)
   every view is byte-for-byte the view of the run on one node.
4. Balance: per step the busiest rank's modeled work (a*L + L^2 over c per sub-sample) is no
   larger than balanced's (its busiest replica's work / cp), or within 1% of the mean (the
   lower bound, where the scheduler stops looking); over all steps, lower than balanced's.
5. Resume: dynamic, stopped under dp 2 and resumed under dp 4 (cp 2), continues the global
   rows: the sub-samples of both runs are static's pieces of rows 0..11, none repeated.
Plain script: prints "N passed, M failed" and exits non-zero on any failure.
"""
import collections
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testutil  # noqa: E402
import test_schedule_run as base  # noqa: E402
from datafiles import write_llmc, write_megatron  # noqa: E402

S = base.S
COST_A = base.COST_A
check = base.check


def rank_views(root, step):
    """{world rank: (meta, fields)} of one dumped step."""
    out = {}
    d = os.path.join(root, "step%d" % step)
    for rd in os.listdir(d):
        if rd.startswith("rank"):
            meta = json.load(open(os.path.join(d, rd, "meta.json")))
            out[int(rd[4:])] = (meta, base.load_dir(os.path.join(d, rd)))
    return out


def subsamples(root, step, docs=None, label="", sizes=None):
    """The step's sub-samples reassembled from the views: (Counter of real pairs as bytes,
    {schedule rank: modeled work}); checks the groups, chunks, order and token rules.
    sizes (a Counter, if given) counts the real sub-samples by their group's size."""
    views = rank_views(root, step)
    meta0, f0 = next(iter(views.values()))
    cp, dp, tp = meta0["cp_size"], meta0["dp_size"], meta0["tp_size"]
    W = dp * cp
    groups, world = f0["cp_groups"], f0["cp_world_ranks"]
    bad = []
    if world.shape != (tp, W):
        bad.append("cp_world_ranks has shape %s" % (world.shape,))
    by_srank = {}
    for r, (m, f) in views.items():
        s = m["dp_rank"] * cp + m["cp_rank"]
        if int(world[m["tp_rank"], s]) != r:
            bad.append("cp_world_ranks[%d, %d] = %d, not rank %d" % (m["tp_rank"], s, world[m["tp_rank"], s], r))
        if not (np.array_equal(f["cp_groups"], groups) and np.array_equal(f["cp_world_ranks"], world)):
            bad.append("rank %d sees another group table" % r)
        if m["tp_rank"] == 0:
            by_srank[s] = f
    # per schedule rank, per group: its entries in order
    lists = collections.defaultdict(dict)  # group -> {member index: [entries]}
    work = collections.Counter()
    for s, f in by_srank.items():
        cu, cup, cul = f["cu_seqlens"], f["cu_seqlens_padded"], f["cu_local"]
        n = len(cul) - 1
        if not (len(cu) == len(cup) == n + 1 and len(f["doc_ids"]) == len(f["cp_group"]) ==
                len(f["cp_chunk"]) == n and cul[0] == 0 and cul[-1] == S // cp):
            bad.append("rank %d's lists disagree or do not tile its block" % s)
            continue
        for k in range(n):
            g, j = int(f["cp_group"][k]), int(f["cp_chunk"][k])
            first, c = int(groups[g][0]), int(groups[g][1])
            P, L = int(cup[k + 1] - cup[k]), int(cu[k + 1] - cu[k])
            if not (first <= s < first + c and j == s - first and P % (2 * c) == 0 and
                    cul[k + 1] - cul[k] == P // c and 0 <= L <= P):
                bad.append("rank %d entry %d: group %d (%d..%d) chunk %d, padded %d, share %d" %
                           (s, k, g, first, first + c - 1, j, P, cul[k + 1] - cul[k]))
                continue
            a, b = int(cul[k]), int(cul[k + 1])
            share = {key: f[key][0][a:b] for key in ("input_ids", "labels", "position_ids", "loss_mask")}
            lists[g].setdefault(j, []).append((int(f["doc_ids"][k]), P, L, share))
            work[s] += (COST_A * L + L * L) / c
    pieces = collections.Counter()
    for g, members in lists.items():
        first, c = int(groups[g][0]), int(groups[g][1])
        if sorted(members) != list(range(c)):
            bad.append("group %d: members %s hold its sub-samples, not 0..%d" % (g, sorted(members), c - 1))
            continue
        counts = {len(v) for v in members.values()}
        if len(counts) != 1:
            bad.append("group %d: its members list %s sub-samples" % (g, sorted(counts)))
            continue
        for i in range(counts.pop()):
            entries = [members[j][i] for j in range(c)]
            if len({e[:3] for e in entries}) != 1:
                bad.append("group %d sub-sample %d: the members disagree (%s): another order" %
                           (g, i, [e[:3] for e in entries]))
                continue
            doc_id, P, L, _ = entries[0]
            h = P // (2 * c)
            whole = {}
            for key in ("input_ids", "labels", "position_ids", "loss_mask"):
                chunks = [None] * (2 * c)
                for j in range(c):
                    v = entries[j][3][key]
                    chunks[j], chunks[2 * c - 1 - j] = v[:h], v[h:]
                whole[key] = np.concatenate(chunks)
            if not np.array_equal(whole["position_ids"], np.arange(P)):
                bad.append("group %d sub-sample %d: positions are not 0..%d" % (g, i, P - 1))
            mask_ok = np.array_equal(whole["loss_mask"].astype(bool), whole["labels"] != -100)
            pad_ok = np.all(whole["labels"][L:] == -100) and np.all(whole["input_ids"][L:] == 0)
            if not (mask_ok and pad_ok):
                bad.append("group %d sub-sample %d: loss mask or padding wrong" % (g, i))
            if L == 0:
                if doc_id != -1:
                    bad.append("group %d sub-sample %d: padding names document %d" % (g, i, doc_id))
                continue
            if sizes is not None:
                sizes[c] += 1
            ids, labels = whole["input_ids"][:L], whole["labels"][:L]
            if docs is not None and not (0 <= doc_id < len(docs) and
                                         ids.astype(np.uint16).tobytes() in docs[doc_id].tobytes()):
                bad.append("group %d sub-sample %d: doc_ids %d does not hold its pairs" % (g, i, doc_id))
            pieces[ids.tobytes() + labels.tobytes()] += 1
    check(not bad, "%s step %d: %d problems with the views" % (label, step, len(bad)), "\n".join(bad[:10]))
    return pieces, work


def dyn_run(np_, cp, uri, root, steps, extra=(), env=None):
    return base.run(np_, ["--cp", str(cp), "--source", uri, "--steps", str(steps), "--schedule",
                          "dynamic", "--dump", root] + list(extra), env)


def test_coverage_and_balance():
    with tempfile.TemporaryDirectory() as tmp:
        docs = base.make_docs(7)
        write_llmc(os.path.join(tmp, "a.bin"), docs)
        write_megatron(os.path.join(tmp, "m"), docs)
        sources = {"llmc": "llmc:" + os.path.join(tmp, "a.bin"),
                   "megatron": "megatron:" + os.path.join(tmp, "m")}
        cases = [("llmc", 1, 1), ("megatron", 1, 2), ("llmc", 1, 4), ("megatron", 2, 1),
                 ("llmc", 2, 2), ("megatron", 2, 4), ("llmc", 4, 1), ("megatron", 4, 2)]
        steps = 4
        total = {"balanced": 0.0, "dynamic": 0.0}
        sizes = collections.Counter()
        ratios = {"balanced": [], "dynamic": []}  # per step (W > 1): busiest rank / mean
        for source, dp, cp in cases:
            label = "%s dp%d cp%d" % (source, dp, cp)
            bal, dyn = (os.path.join(tmp, "%s-%d-%d-%s" % (source, dp, cp, k)) for k in ("b", "d"))
            p = base.run(dp * cp, ["--cp", str(cp), "--source", sources[source], "--steps", str(steps),
                                   "--schedule", "balanced", "--dump-collated", bal, "--dump", bal])
            check(p.returncode == 0, "%s balanced: exit %d" % (label, p.returncode), p.stderr[-2000:])
            q = dyn_run(dp * cp, cp, sources[source], dyn, steps)
            check(q.returncode == 0, "%s dynamic: exit %d" % (label, q.returncode), q.stderr[-2000:])
            if p.returncode or q.returncode:
                continue
            want = base.steps_of(bal, steps)
            for k in range(steps):
                pieces, work = subsamples(dyn, k, docs if source == "megatron" else None, label, sizes)
                check(pieces == want[k][0] and sum(pieces.values()) > 0,
                      "%s step %d: dynamic's sub-samples differ from static's pieces (%d vs %d)" %
                      (label, k, sum(pieces.values()), sum(want[k][0].values())))
                bal_max, dyn_max = max(want[k][1]) / cp, max(work.values())
                mean = sum(work.values()) / (dp * cp)  # the lower bound
                check(dyn_max <= bal_max * (1 + 1e-9) or dyn_max <= mean * 1.01,
                      "%s step %d: dynamic's busiest rank (%.0f) above balanced's (%.0f) and "
                      "1%% above the mean (%.0f)" % (label, k, dyn_max, bal_max, mean))
                total["balanced"] += bal_max
                total["dynamic"] += dyn_max
                if dp * cp > 1:
                    ratios["balanced"].append(bal_max / mean)
                    ratios["dynamic"].append(dyn_max / mean)
        print("busiest rank's work summed over the steps and cases: balanced %.4g, dynamic %.4g "
              "(%.3f)" % (total["balanced"], total["dynamic"], total["dynamic"] / max(total["balanced"], 1)))
        print("sub-samples by CP size: %s" % dict(sorted(sizes.items())))
        for k, v in ratios.items():
            print("%s: busiest rank / mean over %d steps of dp*cp > 1: mean %.3f, worst %.3f" %
                  (k, len(v), sum(v) / len(v), max(v)))
        check(sizes[1] > 0 and sum(n for c, n in sizes.items() if c > 1) > 0 and
              any(c not in (1, 2, 4, 8) for c in sizes),
              "dynamic: sub-samples whole, spread and of a size not a power of 2 all occur (%s)" %
              dict(sizes))
        check(total["dynamic"] < total["balanced"],
              "dynamic never lowered the busiest rank's work (%.0f vs %.0f)" %
              (total["dynamic"], total["balanced"]))


def test_fake_nodes():
    with tempfile.TemporaryDirectory() as tmp:
        docs = base.make_docs(5)
        write_megatron(os.path.join(tmp, "m"), docs)
        uri = "megatron:" + os.path.join(tmp, "m")
        one, many = os.path.join(tmp, "one"), os.path.join(tmp, "many")
        p = dyn_run(4, 2, uri, one, 3)
        q = dyn_run(4, 2, uri, many, 3, env={"CPDL_RANKS_PER_NODE": "1"})
        check(p.returncode == 0 and q.returncode == 0, "fake nodes: exit %d, %d" % (p.returncode, q.returncode),
              p.stderr[-1500:] + q.stderr[-1500:])
        if p.returncode or q.returncode:
            return
        diff = []
        for k in range(3):
            a, b = rank_views(one, k), rank_views(many, k)
            groups = {m["group"] for m, _ in b.values()}
            check(len(groups) == 4, "fake nodes: %d groups, not 4" % len(groups))
            for r in a:
                fa, fb = a[r][1], b[r][1]
                if sorted(fa) != sorted(fb) or any(not np.array_equal(fa[x], fb[x]) for x in fa):
                    diff.append((k, r))
            subsamples(many, k, docs, "fake nodes")
        check(not diff, "fake nodes: views differ from one node's at (step, rank) %s" % diff[:8])


def test_resume_elastic():
    with tempfile.TemporaryDirectory() as tmp:
        docs = base.make_docs(11)
        write_megatron(os.path.join(tmp, "m"), docs)
        uri = "megatron:" + os.path.join(tmp, "m")
        state = os.path.join(tmp, "state")
        ref_dir, a_dir, b_dir = (os.path.join(tmp, x) for x in ("ref", "a", "b"))
        p = base.run(2, ["--cp", "2", "--source", uri, "--steps", "12", "--dump-collated", ref_dir,
                         "--dump", ref_dir])
        check(p.returncode == 0, "resume: reference run exit %d" % p.returncode, p.stderr[-2000:])
        p = dyn_run(4, 2, uri, a_dir, 2, ["--save-state", state])
        check(p.returncode == 0, "resume: first run (dp 2) exit %d" % p.returncode, p.stderr[-2000:])
        p = dyn_run(8, 2, uri, b_dir, 4, ["--resume", state])
        check(p.returncode == 0, "resume: second run (dp 4) exit %d" % p.returncode, p.stderr[-2000:])
        if p.returncode:
            return
        want = collections.Counter()
        for pieces, _, _ in base.steps_of(ref_dir, 12):
            want.update(pieces)
        have = collections.Counter()
        for root in (a_dir, b_dir):
            for k in base.step_dirs(root):
                have.update(subsamples(root, k, docs, "resume")[0])
        check(have == want, "resume dp 2 -> 4: the sub-samples of both runs (%d) are not static's "
              "rows 0..11 (%d)" % (sum(have.values()), sum(want.values())))


if __name__ == "__main__":
    sys.exit(testutil.run([test_coverage_and_balance, test_fake_nodes, test_resume_elastic]))
