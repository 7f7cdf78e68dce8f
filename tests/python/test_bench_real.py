"""test_bench_real — scripts/bench/bench_real.py end to end, small (no CUDA).

1. GPTWindows (the `real` way's data set) against a plain statement of what it
   must return: the documents in its shuffled order as one stream, sample i =
   stream[i*S : i*S+S+1]; input_ids/labels shifted by one, position_ids
   restarting at each document start inside the window, _packed_seq_ids the
   1-based document ordinal within the window.
2. `mpirun -np 2 bench_real.py` at S = 4K: one JSON line per way with the
   measured fields; the real way counts its 2 workers and touches cp times the
   bytes cpdl's leader touches.
Prints "N passed, M failed" and exits non-zero on any failure.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "../../scripts/bench")
sys.path.insert(0, HERE)
sys.path.insert(0, SCRIPTS)
from testutil import report, run  # noqa: E402

DATA = None


def make_data(tmp):
    prefix = os.path.join(tmp, "gpt")
    subprocess.run([sys.executable, os.path.join(SCRIPTS, "make_gpt_data.py"), prefix,
                    "--seq-lens", "4K", "--windows", "40"], check=True)
    return prefix


def test_windows():
    from bench_real import GPTWindows, read_megatron_index
    S = 4096
    ds = GPTWindows(DATA, S, 30, seed=3)
    dtype, lengths, pointers = read_megatron_index(DATA)
    tokens = np.fromfile(DATA + ".bin", dtype="<u2").astype(np.int64)
    order = np.random.default_rng(3).permutation(len(lengths))
    docs = [tokens[pointers[k] // 2: pointers[k] // 2 + lengths[k]] for k in order]
    stream = np.concatenate(docs)
    doc_start = np.concatenate(([0], np.cumsum([len(d) for d in docs])))
    for i in (0, 1, 7, 29):
        item = ds[i]
        a = i * S
        w = stream[a:a + S + 1]
        inside = [int(s - a) for s in doc_start if a < s < a + S + 1]
        pos, seg, p, g = [], [], 0, 1
        for t in range(S):
            if t in inside:
                p, g = 0, g + 1
            pos.append(p)
            seg.append(g)
            p += 1
        ok = (item["input_ids"].tolist() == w[:-1].tolist() and
              item["labels"].tolist() == w[1:].tolist() and
              item["position_ids"].tolist() == pos and item["_packed_seq_ids"].tolist() == seg)
        report(ok, "GPTWindows sample %d" % i, "documents starting at %s" % inside[:5])


def test_mpirun():
    out = os.path.join(os.path.dirname(DATA), "real.jsonl")
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    p = subprocess.run([os.environ.get("MPIEXEC", "mpirun"), "--oversubscribe", "--bind-to",
                        "none", "-np", "2", "-x", "PYTHONPATH", "-x", "CPDL_LIBRARY",
                        sys.executable, os.path.join(SCRIPTS, "bench_real.py"), "--data", DATA,
                        "--seq-lens", "4K", "--workers", "2", "--steps", "4", "--warmup", "1",
                        "--compute-ms", "5", "--dry", "--out", out],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                       timeout=240)
    report(p.returncode == 0, "bench_real under mpirun exits 0", p.stdout[-2000:])
    rows = [json.loads(x) for x in open(out)] if os.path.exists(out) else []
    ways = {r["way"]: r for r in rows}
    report(sorted(ways) == ["cpdl", "real"], "one line per way", [r["way"] for r in rows])
    if sorted(ways) != ["cpdl", "real"]:
        return
    real, cp = ways["real"], ways["cpdl"]
    report(real["processes"] == 6 and cp["processes"] == 2, "processes: 2 ranks + 2 workers each",
           (real["processes"], cp["processes"]))
    report(real["touched_bytes_per_step"] == 2 * cp["touched_bytes_per_step"] ==
           2 * 2 * (4096 + 1), "real touches cp x the bytes",
           (real["touched_bytes_per_step"], cp["touched_bytes_per_step"]))
    for r in rows:
        report(r["node_cpu_s_per_step"] >= 0 and r["node_pss_bytes"] > 0 and
               r["group_steps_per_s"] > 0 and r["data_p50_us"] > 0 and r["seq_len"] == 4096,
               "%s: measured fields" % r["way"], r)
    table = subprocess.run([sys.executable, os.path.join(SCRIPTS, "bench_real.py"), "--table",
                            out], stdout=subprocess.PIPE, text=True, check=True).stdout
    report(table.count("\n| 4K | 2 |") == 2, "table has both rows", table)


def main():
    global DATA
    with tempfile.TemporaryDirectory(prefix="cpdl-bench-real-") as tmp:
        DATA = make_data(tmp)
        return run((test_windows, test_mpirun))


if __name__ == "__main__":
    sys.exit(main())
