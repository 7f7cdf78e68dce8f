"""test_train_cp — context-parallel training on cpdl's shards learns what training without CP learns.

Runs examples/train_cp.py under mpirun (gloo, CPU, fp32, tiny model, 10 steps)
and compares per-step losses, which include 10 optimizer updates, so the
gradients' all-reduce over dp x cp is checked too:
  --cp 2 (np 2)            vs --cp 1 (np 1)             contiguous and round_robin
  dp 2 x --cp 2 (np 4)     vs dp 2 x --cp 1 (np 2)      contiguous and round_robin
within 1e-5 relative. The data is an llm.c shard of documents that repeat
their first half (a copy task), so a token's loss depends on attention to
earlier positions, also across shard boundaries: attending in the wrong
global order moved the loss by 3e-4 .. 2e-3 relative. The sequence length is not a multiple of 2 x cp, so the
padding (labels -100) is exercised. The references themselves must differ
(dp 1 vs dp 2 see other global batches) and change over steps, so an
equality here is not trivial. Mode thd (documents whole, attention within each): dp 2 x
cp 1 and dp 2 x cp 2, schedule static, balanced and dynamic, vs dp 2 x cp 1 static, on Megatron
documents of a copy task whose pair counts are multiples of 4 (the same thd rows at cp 1
and 2). Also: device="cuda" without CUDA is a clear
cpdl.Error, and Loader(prefetch=...) without a device is refused.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

import testutil
from datafiles import write_llmc_tokens, write_megatron
from testutil import report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "examples", "train_cp.py")
MPIEXEC = sys.argv[1] if len(sys.argv) > 1 else "mpirun"  # CTest passes MPIEXEC_EXECUTABLE
COMMON = ["--steps", "10", "--seq-len", "250", "--dim", "32", "--heads", "2", "--layers", "2",
          "--vocab", "256", "--lr", "3e-3", "--json"]
EOT = 50256  # llm.c's (GPT-2) end-of-text, the llmc source's default


def write_copy_shard(path, tokens=40000, seed=7):
    """An llm.c uint16 shard: EOT, r, r for random r of 24..63 tokens in [1, 256)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < tokens:
        r = rng.integers(1, 256, int(rng.integers(24, 64))).tolist()
        out += [EOT] + r + r
    write_llmc_tokens(path, out)
RTOL = 1e-5


def train(np_, cp, mode, source=None, extra=(), steps=10, rows_out=None):
    cmd = [MPIEXEC, "--oversubscribe", "--bind-to", "none", "-np", str(np_), sys.executable,
           SCRIPT, "--cp", str(cp), "--mode", mode, "--source", source or "llmc:" + SHARD] + \
        COMMON + list(extra) + ["--steps", str(steps)]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    run = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                         timeout=240, universal_newlines=True)
    if run.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s\n%s" % (" ".join(cmd), run.returncode,
                                                         run.stdout, run.stderr))
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    if [r["step"] for r in rows] != list(range(steps)):
        raise AssertionError("%s printed steps %s" % (" ".join(cmd), [r["step"] for r in rows]))
    for r in rows:
        if not (r["data_ms"] >= 0 and r["loss"] > 0):
            raise AssertionError("bad row %s" % r)
    if rows_out is not None:
        rows_out.extend(rows)
    return [r["loss"] for r in rows]


def same(what, got, want):
    worst = max(abs(g - w) / abs(w) for g, w in zip(got, want))
    report(len(got) == len(want) and worst <= RTOL, what,
           "worst relative difference %.3g > %g\n got %s\nwant %s" % (worst, RTOL, got, want))


def test_losses():
    ref_dp1 = train(1, 1, "contiguous")
    ref_dp2 = train(2, 1, "contiguous")
    # cp 1 is the same layout in both modes (chunks 0 and 1 of 2, in order).
    report(max(abs(a - b) for a, b in zip(ref_dp1, ref_dp2)) > 1e-3, "dp references differ",
           "%s vs %s" % (ref_dp1, ref_dp2))
    report(len(set(round(x, 6) for x in ref_dp1)) > 5, "reference loss changes over steps",
           str(ref_dp1))
    for mode in ("contiguous", "round_robin"):
        same("cp2 np2 %s" % mode, train(2, 2, mode), ref_dp1)
        same("dp2 x cp2 np4 %s" % mode, train(4, 2, mode), ref_dp2)


def write_thd_docs(prefix, seed=3):
    """Megatron documents r, r, t (a copy task within the document, r of 2m random tokens,
    m long-tailed: some documents are longer than a row): 4m input/label pairs, so padded to
    2 (cp 1) or 4 (cp 2) they take the same room, and thd's global rows — the reference's
    batches — are the same at cp 1 and cp 2."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(1500):
        m = int(min(150, max(1, rng.lognormal(np.log(6), 1.1))))
        r = rng.integers(1, 256, 2 * m)
        docs.append(np.concatenate([r, r, rng.integers(1, 256, 1)]).astype(np.uint16))
    write_megatron(prefix, docs)


def test_thd_schedule_losses():
    """mode thd: attention within each document over the CP group's all-gathered K/V;
    schedule=balanced moves documents between replicas. Every step's loss (the global
    batch's) equals the cp = 1 static reference at the same dp."""
    prefix = os.path.join(os.path.dirname(SHARD), "thd")
    write_thd_docs(prefix)
    src = "megatron:" + prefix
    thd = ["--seq-len", "256"]  # a multiple of 2 x cp
    ref = train(2, 1, "thd", src, thd, steps=6)
    report(len(set(round(x, 6) for x in ref)) > 4, "thd reference loss changes over steps", str(ref))
    same("thd dp2 cp1 balanced", train(2, 1, "thd", src, thd + ["--schedule", "balanced"], 6), ref)
    same("thd dp2 x cp2 np4 static", train(4, 2, "thd", src, thd, 6), ref)
    same("thd dp2 x cp2 np4 balanced", train(4, 2, "thd", src, thd + ["--schedule", "balanced"], 6),
         ref)
    # dynamic: every document over its own group of ranks (c = 1 .. 4), sub-samples over
    # process groups of the table
    same("thd dp2 cp1 dynamic", train(2, 1, "thd", src, thd + ["--schedule", "dynamic"], 6), ref)
    rows = []
    same("thd dp2 x cp2 np4 dynamic", train(4, 2, "thd", src, thd + ["--schedule", "dynamic"], 6,
                                            rows), ref)
    spread = sum(r.get("spread_shares", 0) for r in rows)
    report(spread > 0, "thd dp2 x cp2 dynamic: no sub-sample was spread over a group (%d)" % spread)


def test_device_errors():
    sys.path.insert(0, os.path.join(ROOT, "python"))
    import cpdl
    from cpdl import _prefetch
    import torch
    if not torch.cuda.is_available():
        try:
            cpdl.Loader(device="cuda", prefetch=1)  # refused before anything opens
            report(False, "device=cuda without CUDA raises")
        except cpdl.Error as exc:
            report("CUDA is not available" in str(exc) and "device=None" in str(exc),
                   "device=cuda error names the fix", str(exc))
    for bad in (dict(device=None, prefetch=1), dict(device="cuda", prefetch=-1),
                dict(device="meta", prefetch=0)):
        try:
            _prefetch.resolve(bad["device"], bad["prefetch"])
            report(False, "refused %s" % bad)
        except cpdl.Error as exc:
            report("prefetch" in str(exc) or "device" in str(exc), "message for %s" % bad,
                   str(exc))
    report(_prefetch.resolve("cpu", 0) == (None, 0), "device=cpu means host views")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="cpdl-train-cp-") as tmp:
        SHARD = os.path.join(tmp, "copy.bin")
        write_copy_shard(SHARD)
        sys.exit(testutil.run([test_device_errors, test_losses, test_thd_schedule_losses]))
