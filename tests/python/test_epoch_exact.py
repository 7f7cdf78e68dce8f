"""python.epoch_exact — one epoch (`cpdl run --steps 0 --epochs 1`) delivers every document
exactly once and no more, in every collate and mode, from every source, at dp 1 and dp > 1.

Every token of the test data is told apart (each document's tokens are distinct values; a
value that occurs more than once, the EOT, is not counted), so the dumped rows say which
(document, offset) each input came from, whatever order the loader chose:
  pack: no token is an input twice; an epoch ends at its last whole step, so what is left
    out is the stream's tail, shorter than one step (exactly that at dp 1);
  pad: every document of >= 2 tokens is one row (its first seq_len + 1 tokens), once; the
    documents left out are the remainder of batch (none when it divides, none at dp 1);
  thd: every input/label pair of every document of >= 2 tokens, once — its padded last
    row included, no document of the next epoch in it; with --epochs 2 exactly twice;
  npy: every batch once; gpt: every sample once, up to its last full global batch.
cp = 1 runs read --dump (a rank's view is its whole row), cp = 2 runs --dump-collated.
Also the two cases of the report that found it (megatron, thd: 16 documents of 9 tokens
gave 17 steps; 40 documents at cp 2, seq_len 256 delivered 33).
"""
import collections
import json
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testutil  # noqa: E402
from datafiles import write_llmc_tokens, write_megatron, write_npy_steps  # noqa: E402
from testutil import report  # noqa: E402

import cpdl  # noqa: E402

TMP = tempfile.mkdtemp(prefix="cpdl-epoch-exact-")
S, B, SEED = 16, 2, 11


# ---- data: documents whose tokens say where they came from -----------------------------------

def varied_lengths(n, seed):
    """n lengths in 2..40 with two 1-token documents among them (skipped by pad and thd)."""
    rng = np.random.default_rng(seed)
    lengths = [int(v) for v in rng.integers(2, 41, n)]
    lengths[3] = lengths[n // 2] = 1
    return lengths


def unique_docs(lengths, base=1):
    """Document d's token j is base + 100*d + j (distinct across the data)."""
    return [np.arange(base + 100 * d, base + 100 * d + n) for d, n in enumerate(lengths)]


def make_sources():
    """{name: {"varied": uri, "even": uri}}: the even data (24 documents of S + 1 tokens)
    divides into whole rows and steps on every replica, at dp 1 and 2."""
    out = {}
    syn = "synthetic:?samples=24&vocab=4000000000&seed=5"
    out["synthetic"] = {"varied": syn + "&dist=uniform&min=1&max=40",
                        "even": syn + "&dist=fixed&mean=%d" % (S + 1)}
    for kind in ("varied", "even"):
        lengths = varied_lengths(24, 7) if kind == "varied" else [S + 1] * 24
        # llm.c: each document starts with the EOT (50256); tokens stay below it
        llmc = os.path.join(TMP, "%s.bin" % kind)
        eot = cpdl_eot = 50256
        tokens = np.concatenate([np.concatenate([[eot], d[:-1]]) for d in unique_docs(lengths)])
        write_llmc_tokens(llmc, tokens)
        assert cpdl_eot == eot
        out.setdefault("llmc", {})[kind] = "llmc:" + llmc
        prefix = os.path.join(TMP, "meg_" + kind)
        write_megatron(prefix, unique_docs(lengths, base=70000), np.int32)
        out.setdefault("megatron", {})[kind] = "megatron:" + prefix
    return out


class Index:
    """value -> (document, offset) for every value that occurs once in the source."""

    def __init__(self, uri):
        src = cpdl.Source(uri)
        self.docs = [np.array(src[i], dtype=np.int64) for i in range(len(src))]
        src.close()
        where, seen = {}, collections.Counter()
        for d, doc in enumerate(self.docs):
            for j, v in enumerate(doc.tolist()):
                seen[v] += 1
                where[v] = (d, j)
        self.where = {v: w for v, w in where.items() if seen[v] == 1}

    def expected(self, rule):
        """The (document, offset) pairs one epoch must give as inputs (known values only)."""
        want = set()
        for d, doc in enumerate(self.docs):
            n = len(doc)
            if rule == "pack":
                last = n
            elif n < 2:
                continue
            else:
                last = min(n, S + 1) - 1 if rule == "pad" else n - 1
            want.update((d, j) for j in range(last) if doc[j] in self.where)
        return want

    def usable(self):
        return sum(1 for doc in self.docs if len(doc) >= 2)


# ---- reading what a run delivered -----------------------------------------------------------

def load(path):
    return {f[:-4]: np.load(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".npy")}


def delivered_rows(root, collated):
    """[(step, replica, {field: array})] of every replica's whole rows."""
    out = []
    for step_dir in sorted(os.listdir(root)):
        if not step_dir.startswith("step"):
            continue
        step = int(step_dir[4:])
        base = os.path.join(root, step_dir)
        for who in sorted(os.listdir(base)):
            if collated and who.startswith("group"):
                out.append((step, who, load(os.path.join(base, who, "collated"))))
            elif not collated and who.startswith("rank"):
                out.append((step, who, load(os.path.join(base, who))))
    return out


def real_inputs(fields, collate, mode):
    """The input tokens of one step that carry data (not padding), row by row."""
    ids = fields["input_ids"]
    if mode == "thd":
        cu, cup = fields["cu_seqlens"], fields["cu_seqlens_padded"]
        got = []
        for k in range(len(cu) - 1):
            got.extend(ids[0, cup[k]:cup[k] + cu[k + 1] - cu[k]].tolist())
        return got
    if collate == "pad":  # loss_on_eot=1 (the default): only padding has label -100
        return ids[fields["labels"] != -100].tolist()
    return ids.ravel().tolist()


def cpdl_run(np_, args):
    p = testutil.cpdl_run(np_, args, env=testutil.mpi_env(clean=True), timeout=180)
    summary = None
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            summary = json.loads(line)
    return p, summary


def run_epoch(label, uri, collate, mode, cp, np_, epochs=1, seq_len=S, batch=None):
    """(delivered {(doc, off): count}, unknown-value inputs, steps, index) or None."""
    if batch is None:
        batch = 1 if mode == "thd" else B
    dump = os.path.join(TMP, "dump")
    shutil.rmtree(dump, ignore_errors=True)
    collated = cp > 1
    args = ["--source", uri, "--collate", collate, "--mode", mode, "--cp", str(cp),
            "--seq-len", str(seq_len), "--batch", str(batch), "--seed", str(SEED),
            "--steps", "0", "--epochs", str(epochs),
            "--dump-collated" if collated else "--dump", dump]
    p, summary = cpdl_run(np_, args)
    report(p.returncode == 0, label + ": run", p.stderr[-1500:])
    if p.returncode != 0:
        return None
    index = Index(uri)
    counts, unknown = collections.Counter(), 0
    rows = delivered_rows(dump, collated)
    steps = {step for step, _, _ in rows}
    report(summary and summary["steps"] == len(steps), label + ": JSON steps = dumped steps",
           "%s vs %d" % (summary and summary["steps"], len(steps)))
    for _, _, fields in rows:
        for v in real_inputs(fields, collate, mode):
            w = index.where.get(v)
            if w is None:
                unknown += 1
            else:
                counts[w] += 1
    return counts, unknown, len(steps), index


def check_exact(label, result, rule, dp, epochs=1, batch=B, exact=True):
    """No input twice (per epoch); nothing left out but what the rule (pack, pad, thd)
    allows."""
    if result is None:
        return
    counts, unknown, steps, index = result
    want = index.expected(rule)
    extra = sorted(w for w in counts if w not in want)
    report(not extra, label + ": only this data's inputs", "unexpected %s" % extra[:5])
    over = sorted(w for w, c in counts.items() if c > epochs)
    report(not over, label + ": no input more than %d time(s)" % epochs,
           "%d repeated, e.g. (doc, offset) %s" % (len(over), over[:5]))
    missing = sorted(w for w in want if counts[w] < epochs)
    if rule == "pack":
        # the tail of the stream, shorter than one step (per replica today)
        tail = sum(epochs - counts[w] for w in missing)
        report(tail <= dp * (batch * S + 1), label + ": only the stream's tail left out",
               "%d inputs missing, a step holds %d" % (tail, batch * S))
        if exact:
            total = sum(len(d) for d in index.docs) * epochs
            report(steps == (total - 1) // S // batch, label + ": every whole step of the "
                   "epoch's tokens", "%d steps for %d tokens" % (steps, total))
        return
    if rule == "pad" and exact:
        left = index.usable() * epochs % (batch * dp)
        docs_missing = {d for d, _ in missing}
        report(len(docs_missing) == left, label + ": every document but the batch's remainder",
               "%d documents missing (%s), remainder %d" % (len(docs_missing),
                                                           sorted(docs_missing)[:8], left))
        return
    report(not missing, label + ": every document once per epoch",
           "%d inputs of %d missing, documents %s" % (len(missing), len(want),
                                                     sorted({d for d, _ in missing})[:8]))


def rule_of(collate, mode):
    return "thd" if mode == "thd" else collate


def test_matrix():
    sources = make_sources()
    # (collate, mode, cp): round_robin needs cp > 1 to differ from contiguous
    combos = [("pack", "contiguous", 1), ("pad", "contiguous", 1), ("pack", "thd", 1),
              ("pack", "thd", 2), ("pack", "round_robin", 2), ("pad", "round_robin", 2)]
    for name, uris in sources.items():
        for collate, mode, cp in combos:
            if name != "synthetic" and mode == "round_robin":
                continue  # the mode shapes views, not the epoch: one source suffices
            label = "%s %s/%s cp=%d dp=1" % (name, collate, mode, cp)
            batch = 1 if mode == "thd" else B
            check_exact(label, run_epoch(label, uris["varied"], collate, mode, cp, cp),
                        rule_of(collate, mode), 1, batch=batch)
        # dp = 2: the even data divides on every replica
        for collate, mode in (("pack", "contiguous"), ("pad", "contiguous"), ("pack", "thd")):
            label = "%s %s/%s cp=1 dp=2" % (name, collate, mode)
            batch = 1 if mode == "thd" else B
            check_exact(label, run_epoch(label, uris["even"], collate, mode, 1, 2),
                        rule_of(collate, mode), 2, batch=batch, exact=collate != "pack")
    uris = sources["megatron"]
    label = "megatron thd cp=2 dp=2"
    check_exact(label, run_epoch(label, uris["even"], "pack", "thd", 2, 4), "thd", 2, batch=1)
    for collate, mode in (("pack", "thd"), ("pad", "contiguous")):
        label = "llmc %s/%s --epochs 2" % (collate, mode)
        batch = 1 if mode == "thd" else B
        check_exact(label, run_epoch(label, sources["llmc"]["varied"], collate, mode, 1, 1,
                                     epochs=2), rule_of(collate, mode), 1, epochs=2, batch=batch)


def test_reported_cases():
    prefix = os.path.join(TMP, "nine")
    write_megatron(prefix, unique_docs([9] * 16, base=70000), np.int32)
    r = run_epoch("16 docs of 9 tokens, thd seq_len 8", "megatron:" + prefix, "pack", "thd", 1,
                  1, seq_len=8)
    if r:
        report(r[2] == 16, "16 docs of 9 tokens, thd seq_len 8: 16 steps", "%d steps" % r[2])
    check_exact("16 docs of 9 tokens", r, "thd", 1, batch=1)
    prefix = os.path.join(TMP, "forty")
    lengths = [int(v) for v in np.random.default_rng(1).integers(20, 200, 40)]
    write_megatron(prefix, unique_docs(lengths, base=70000), np.int32)
    r = run_epoch("40 docs thd cp 2 seq_len 256", "megatron:" + prefix, "pack", "thd", 2, 2,
                  seq_len=256)
    check_exact("40 docs thd cp 2 seq_len 256", r, "thd", 1, batch=1)


def test_npy():
    root = os.path.join(TMP, "npy")
    write_npy_steps(root, [{n: np.full((B, S), 1000 + k, dtype=np.int64)
                            for n in ("input_ids", "labels")} for k in range(6)])
    for np_, mode, cp in ((1, "contiguous", 1), (2, "contiguous", 1), (2, "round_robin", 2)):
        label = "npy %s np=%d cp=%d" % (mode, np_, cp)
        dump = os.path.join(TMP, "dump")
        shutil.rmtree(dump, ignore_errors=True)
        collated = cp > 1
        p, summary = cpdl_run(np_, ["--source", "npy:" + root, "--mode", mode, "--cp", str(cp),
                                    "--steps", "0", "--epochs", "1",
                                    "--dump-collated" if collated else "--dump", dump])
        report(p.returncode == 0, label + ": run", p.stderr[-1000:])
        if p.returncode != 0:
            continue
        got = collections.Counter(int(f["input_ids"].ravel()[0]) - 1000
                                  for _, _, f in delivered_rows(dump, collated))
        report(got == collections.Counter(range(6)), label + ": every batch once", str(got))


def test_gpt():
    a = [np.append(np.arange(100 + 100 * d, 100 + 100 * d + n), 7)
         for d, n in enumerate(varied_lengths(60, 3))]
    prefix = os.path.join(TMP, "gpt_a")
    write_megatron(prefix, a, np.int32)
    uri = "gpt:%s?num_samples=40&split=100,0,0&eod=7" % prefix
    src = cpdl.Source(uri, seq_len=S, seed=SEED)
    samples = {tuple(np.asarray(src[i], dtype=np.int64)[:-1].tolist()): i for i in range(len(src))}
    n = len(src)
    src.close()
    for np_ in (1, 2):
        label = "gpt np=%d" % np_
        dump = os.path.join(TMP, "dump")
        shutil.rmtree(dump, ignore_errors=True)
        p, summary = cpdl_run(np_, ["--source", uri, "--seq-len", str(S), "--batch", str(B),
                                    "--seed", str(SEED), "--steps", "0", "--epochs", "1",
                                    "--dump", dump])
        report(p.returncode == 0, label + ": run", p.stderr[-1000:])
        if p.returncode != 0:
            continue
        got = collections.Counter()
        for _, _, f in delivered_rows(dump, False):
            for row in f["input_ids"]:
                got[samples.get(tuple(row.tolist()), -1)] += 1
        whole = n // (np_ * B) * np_ * B
        report(got == collections.Counter(range(whole)),
               label + ": samples 0..%d once each" % (whole - 1), str(sorted(got.items())[:10]))


if __name__ == "__main__":
    try:
        code = testutil.run([test_reported_cases, test_matrix, test_npy, test_gpt])
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    sys.exit(code)
