"""test_inspect — `cpdl inspect URI [--json]` on datasets written here with
numpy, independently of the plugins: the reported counts, token totals,
lengths and histogram must match what the writer put in; a corrupt file is
a non-zero exit whose message names the file.
Prints "N passed, M failed" and exits non-zero on any failure.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testutil  # noqa: E402
from datafiles import write_llmc, write_megatron  # noqa: E402

CPDL = os.environ.get("CPDL_BIN", os.path.join(os.path.dirname(__file__), "../../build/cpdl"))
check = testutil.report


def inspect(uri, *extra):
    p = subprocess.run([CPDL, "inspect", uri, *extra], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


def histogram(lengths):
    """log2 buckets as cpdl prints them: [0,1), [1,2), [2,4), [4,8), ..."""
    out = {}
    for n in lengths:
        b = 0 if n == 0 else int(n).bit_length()
        lo = 0 if b == 0 else 1 << (b - 1)
        out[lo] = out.get(lo, 0) + 1
    return out


def test_inspect():
    rng = np.random.default_rng(7)
    docs = [rng.integers(0, 50000, size=int(n)) for n in rng.integers(1, 300, size=57)]
    lengths = [len(d) for d in docs]

    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "corpus")
        write_megatron(prefix, docs)
        rc, out, err = inspect("megatron:" + prefix, "--json")
        check(rc == 0, "megatron inspect exited %d: %s" % (rc, err))
        if rc == 0:
            r = json.loads(out)
            check(r["plugin"] == "megatron", "plugin %r" % r["plugin"])
            check(r["samples"] == len(docs) and r["documents"] == len(docs),
                  "samples/documents %d/%d, expected %d" % (r["samples"], r["documents"], len(docs)))
            check(r["tokens"] == sum(lengths), "tokens %d, expected %d" % (r["tokens"], sum(lengths)))
            check(r["token_bytes"] == 2, "token bytes %d" % r["token_bytes"])
            check(r["length"]["min"] == min(lengths) and r["length"]["max"] == max(lengths),
                  "min/max %s" % r["length"])
            check(abs(r["length"]["mean"] - np.mean(lengths)) < 1e-3, "mean %s" % r["length"])
            got = {h["lo"]: h["count"] for h in r["histogram"]}
            check(got == histogram(lengths), "histogram %s, expected %s" % (got, histogram(lengths)))
            check(r["plugin_path"].endswith("cpdl-megatron.so"), "plugin path %r" % r["plugin_path"])
        rc, out, err = inspect("megatron:" + prefix)
        check(rc == 0 and "samples     %d" % len(docs) in out and "histogram" in out,
              "text output: %r" % out[:300])

        path = os.path.join(tmp, "shard.bin")
        write_llmc(path, docs)
        rc, out, err = inspect("llmc:" + path, "--json")
        check(rc == 0, "llmc inspect exited %d: %s" % (rc, err))
        if rc == 0:
            r = json.loads(out)
            check(r["samples"] == len(docs), "llmc samples %d, expected %d" % (r["samples"], len(docs)))
            # each llm.c document is its EOT plus its tokens
            check(r["tokens"] == sum(lengths) + len(docs), "llmc tokens %d" % r["tokens"])

        # a truncated .bin: an error naming the file, never a crash
        with open(prefix + ".bin", "r+b") as f:
            f.truncate(100)
        rc, out, err = inspect("megatron:" + prefix)
        check(rc != 0 and rc < 128, "truncated .bin: exit %d" % rc)
        check("corpus.bin" in err, "message does not name the file: %r" % err)
        # an unknown scheme lists the known ones
        rc, out, err = inspect("nosuch:/x")
        check(rc != 0 and "megatron" in err and "llmc" in err, "unknown scheme: %r" % err)



sys.exit(testutil.run([test_inspect]))
