"""test_schedule_run — schedule=balanced through the loader (docs/schedule.md).

`mpirun cpdl run --mode thd --schedule balanced|static --dump --dump-collated` on llm.c and
Megatron files of long-tailed documents (many short, some longer than a row):
1. Coverage: every step's global batch holds exactly the pieces static thd gives it at the
   same dp and cp (the same multiset of real input/label pairs: no token lost or repeated),
   for dp x cp in {2x1, 4x1, 2x2, 4x2, 1x2}.
2. The views: every rank's view is its zigzag share of its group's collated row
   (thd_reference's indices), and with nodes faked (CPDL_RANKS_PER_NODE=1: a replica's CP
   ranks on different nodes, each node's leader scheduling on its own) the groups of one
   replica collate the same row — the same schedule on every node.
   doc_ids (every view, --dump) names each entry's document (Megatron: its sample).
3. Balance: over the run, the sum of each step's busiest replica work (a*L + b*L^2) is no
   larger than static's, and smaller where static is uneven.
4. Resume: balanced, stopped under dp 2 and resumed under dp 4 (and cp 2), continues the
   global rows: the pieces of both runs are static's pieces of the same rows, none repeated.
5. Refusals: schedule=balanced or dynamic without mode=thd or with a gpt:-style row source,
   each a clear error naming the fix (schedule=dynamic's own run: test_schedule_dynamic.py).
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
import thd_reference as ref  # noqa: E402
from datafiles import write_llmc, write_megatron  # noqa: E402
from testutil import report  # noqa: E402

S = 256
COST_A = 57256


def check(ok, what, detail=""):
    report(bool(ok), what, detail)


def make_docs(seed):
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(2500):
        n = int(min(3 * S, max(2, rng.lognormal(np.log(20), 1.3))))
        docs.append(rng.integers(1, 50000, n).astype(np.uint16))
    return docs


def load_dir(d):
    return {f[:-4]: np.load(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".npy")}


def run(np_, args, env=None):
    return testutil.cpdl_run(np_, ["--pin", "none", "--seq-len", str(S), "--mode", "thd"] + args,
                             env=testutil.mpi_env(env), timeout=240)


def step_dirs(root):
    """The step numbers dumped under root, ascending (a resumed job counts on)."""
    return sorted(int(d[4:]) for d in os.listdir(root) if d.startswith("step"))


def meta(root):
    """{group: (dp_rank, dp_size, [world ranks])} and {world rank: meta} from the views."""
    groups, ranks = {}, {}
    step0 = os.path.join(root, "step%d" % step_dirs(root)[0])
    for rd in os.listdir(step0):
        if rd.startswith("rank"):
            m = json.load(open(os.path.join(step0, rd, "meta.json")))
            ranks[int(rd[4:])] = m
            groups.setdefault(m["group"], (m["dp_rank"], m["dp_size"], []))[2].append(int(rd[4:]))
    return groups, ranks


def row_pieces(c):
    """[(pairs as bytes), ...] of one collated thd row, and its modeled work."""
    cu, cup, ids = c["cu_seqlens"], c["cu_seqlens_padded"], c["input_ids"][0]
    n = int(np.searchsorted(cup, S))
    out, work = [], 0
    for k in range(n):
        L = int(cu[k + 1] - cu[k])
        if L:
            out.append(ids[cup[k]:cup[k] + L].tobytes() + c["labels"][0][cup[k]:cup[k] + L].tobytes())
        work += COST_A * L + L * L
    return out, work


def check_doc_ids(root, docs, label):
    """balanced: doc_ids[k] names the document whose pairs entry k holds (megatron: one
    sample per document), -1 past the row's entries."""
    groups, _ = meta(root)
    bad = n = 0
    for step in step_dirs(root):
        for g in groups:
            c = load_dir(os.path.join(root, "step%d" % step, "group%d" % g, "collated"))
            cu, cup, ids, doc_ids = c["cu_seqlens"], c["cu_seqlens_padded"], c["input_ids"][0], c["doc_ids"]
            entries = int(np.searchsorted(cup, S))
            bad += int(np.any(doc_ids[entries:] != -1))
            for k in range(entries):
                L = int(cu[k + 1] - cu[k])
                piece = ids[cup[k]:cup[k] + L].astype(np.uint16).tobytes()
                n += 1
                bad += not (0 <= doc_ids[k] < len(docs) and piece in docs[doc_ids[k]].tobytes())
    check(n > 0 and bad == 0, "%s: %d of %d doc_ids do not name their entry's document" % (label, bad, n))


def steps_of(root, steps):
    """Per step: (Counter of pieces over the global batch, [work per replica], {dp_rank: row})."""
    groups, _ = meta(root)
    out = []
    for step in step_dirs(root)[:steps]:
        pieces, works, rows = collections.Counter(), {}, {}
        for g, (dp_rank, _, _) in groups.items():
            c = load_dir(os.path.join(root, "step%d" % step, "group%d" % g, "collated"))
            if dp_rank in rows:  # another node's group of the same replica: the same row
                same = all(np.array_equal(c[k], rows[dp_rank][k]) for k in c)
                check(same, "%s step %d: replica %d's groups collated different rows" %
                      (root, step, dp_rank))
                continue
            rows[dp_rank] = c
            p, w = row_pieces(c)
            pieces.update(p)
            works[dp_rank] = w
        out.append((pieces, [works[r] for r in sorted(works)], rows))
    return out


def check_views(root, steps, cp, label):
    """Each rank's input_ids = its group's collated row at TE's thd indices."""
    groups, ranks = meta(root)
    bad = 0
    for step in step_dirs(root)[:steps]:
        for r, m in ranks.items():
            v = load_dir(os.path.join(root, "step%d" % step, "rank%d" % r))
            c = load_dir(os.path.join(root, "step%d" % step, "group%d" % m["group"], "collated"))
            index = ref.te_partitioned_indices(c["cu_seqlens_padded"], S, cp, m["cp_rank"])
            if not np.array_equal(v["input_ids"][0], c["input_ids"][0][index]):
                bad += 1
    check(bad == 0, "%s: %d views are not their zigzag share of the collated row" % (label, bad))


def test_coverage_and_balance():
    with tempfile.TemporaryDirectory() as tmp:
        docs = make_docs(7)
        write_llmc(os.path.join(tmp, "a.bin"), docs)
        write_megatron(os.path.join(tmp, "m"), docs)
        sources = {"llmc": "llmc:" + os.path.join(tmp, "a.bin"), "megatron": "megatron:" + os.path.join(tmp, "m")}
        cases = [("llmc", 2, 1, None), ("llmc", 4, 2, None), ("megatron", 4, 1, None),
                 ("megatron", 2, 2, {"CPDL_RANKS_PER_NODE": "1"}), ("megatron", 1, 2, None)]
        steps = 6
        total = {"static": 0, "balanced": 0}
        for source, dp, cp, env in cases:
            label = "%s dp%d cp%d%s" % (source, dp, cp, " fake-nodes" if env else "")
            got = {}
            for sch in ("static", "balanced"):
                d = os.path.join(tmp, "%s-%d-%d-%s-%s" % (source, dp, cp, sch, bool(env)))
                p = run(dp * cp, ["--cp", str(cp), "--source", sources[source], "--steps", str(steps),
                                  "--schedule", sch, "--dump", d, "--dump-collated", d], env)
                check(p.returncode == 0, "%s %s: exit %d" % (label, sch, p.returncode), p.stderr[-2000:])
                if p.returncode:
                    break
                got[sch] = steps_of(d, steps)
                if sch == "balanced":
                    check_views(d, steps, cp, label + " balanced")
                    if source == "megatron":
                        check_doc_ids(d, docs, label)
            if len(got) < 2:
                continue
            for k in range(steps):
                a, b = got["static"][k][0], got["balanced"][k][0]
                check(a == b and sum(a.values()) > 0,
                      "%s step %d: balanced's pieces differ from static's (%d vs %d pieces)" %
                      (label, k, sum(b.values()), sum(a.values())))
            for sch in total:
                busiest = sum(max(w) for _, w, _ in got[sch])
                total[sch] += busiest
            s_max = sum(max(w) for _, w, _ in got["static"])
            b_max = sum(max(w) for _, w, _ in got["balanced"])
            check(b_max <= s_max, "%s: balanced's busiest replicas (%d) above static's (%d)" %
                  (label, b_max, s_max))
        check(total["balanced"] < total["static"],
              "balanced never lowered the busiest replica's work (%d vs %d)" %
              (total["balanced"], total["static"]))


def test_resume_elastic():
    with tempfile.TemporaryDirectory() as tmp:
        docs = make_docs(11)
        write_megatron(os.path.join(tmp, "m"), docs)
        uri = "megatron:" + os.path.join(tmp, "m")
        state = os.path.join(tmp, "state")
        ref_dir, a_dir, b_dir = (os.path.join(tmp, x) for x in ("ref", "a", "b"))
        # static at dp 1, cp 2: the global rows 0..11 in order (one row per step)
        p = run(2, ["--cp", "2", "--source", uri, "--steps", "12", "--dump-collated", ref_dir,
                    "--dump", ref_dir])
        check(p.returncode == 0, "resume: reference run exit %d" % p.returncode, p.stderr[-2000:])
        p = run(4, ["--cp", "2", "--source", uri, "--steps", "2", "--schedule", "balanced",
                    "--dump-collated", a_dir, "--dump", a_dir, "--save-state", state])
        check(p.returncode == 0, "resume: first run (dp 2) exit %d" % p.returncode, p.stderr[-2000:])
        # --steps counts the job's steps: 2 more steps of dp 4 (8 rows) after 2 of dp 2 (4 rows)
        p = run(8, ["--cp", "2", "--source", uri, "--steps", "4", "--schedule", "balanced",
                    "--dump-collated", b_dir, "--dump", b_dir, "--resume", state])
        check(p.returncode == 0, "resume: second run (dp 4) exit %d" % p.returncode, p.stderr[-2000:])
        if p.returncode:
            return
        want = collections.Counter()
        for pieces, _, _ in steps_of(ref_dir, 12):
            want.update(pieces)
        have = collections.Counter()
        for root, steps in ((a_dir, 2), (b_dir, 2)):
            for pieces, _, _ in steps_of(root, steps):
                have.update(pieces)
        check(have == want, "resume dp 2 -> 4: the pieces of both runs (%d) are not static's rows "
              "0..11 (%d)" % (sum(have.values()), sum(want.values())))


def test_refusals():
    with tempfile.TemporaryDirectory() as tmp:
        write_megatron(os.path.join(tmp, "m"), make_docs(3)[:200])
        uri = "megatron:" + os.path.join(tmp, "m")
        cases = [
            (["--mode", "contiguous", "--schedule", "balanced", "--source", uri], "needs mode=thd"),
            (["--mode", "contiguous", "--schedule", "dynamic", "--source", uri], "needs mode=thd"),
            (["--schedule", "dynamic", "--source", "gpt:" + os.path.join(tmp, "m") +
              "?num_samples=10"], "needs a source of documents"),
            (["--schedule", "balanced", "--source", "gpt:" + os.path.join(tmp, "m") +
              "?num_samples=10"], "needs a source of documents"),
            (["--schedule", "lpt", "--source", uri], "expected static, balanced or dynamic"),
            (["--schedule", "balanced", "--cost", "1", "--source", uri], "a*L + b*L^2"),
        ]
        for args, want in cases:
            p = run(1, ["--steps", "1"] + args)
            check(p.returncode != 0 and want in p.stderr,
                  "refusal %s: exit %d, stderr lacks %r" % (" ".join(args[:4]), p.returncode, want),
                  p.stderr[-1500:])


if __name__ == "__main__":
    sys.exit(testutil.run([test_refusals, test_coverage_and_balance, test_resume_elastic]))
