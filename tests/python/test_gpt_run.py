"""python.gpt_run — `cpdl run --source gpt:... --dump` over dp in {1, 2} and
cp in {1, 2}: each replica's collated rows are the global samples Megatron's
pretraining sampler gives it (step k, replica r, row b: sample
(k*dp + r)*batch + b), each equal to cpdl.Source(...)[i] turned into tokens,
labels, loss_mask and position_ids by megatron_reference.row() (Megatron's
GPTDataset.__getitem__), and each rank's view is tests/python/reference.py's
CP contract applied to them. Then resume across a dp change: 3 steps at dp=2,
--save-state, --resume at dp=1 (and back): the samples continue exactly;
consumed_samples=C (switching from Megatron) starts at sample C.
"""
import json
import os
import sys
import tempfile

import numpy as np

import megatron_reference as ref
from datafiles import write_megatron
import reference
import testutil
from testutil import report, run

import cpdl

TMP = tempfile.mkdtemp(prefix="cpdl-gpt-run-")
S, B, SEED, EOD = 24, 2, 4321, 7


def make_uri():
    rng = np.random.RandomState(3)
    a = [np.append(rng.randint(8, 60000, size=rng.randint(1, 40)), EOD) for _ in range(120)]
    b = [np.append(rng.randint(8, 2**31 - 1, size=rng.randint(1, 90)), EOD) for _ in range(60)]
    write_megatron(os.path.join(TMP, "a"), a, np.uint16)
    write_megatron(os.path.join(TMP, "b"), b, np.int32)
    return ("gpt:0.4,%s,0.6,%s?num_samples=200&split=98,2,0&eod=%d&reset_position_ids=1"
            "&eod_mask_loss=1" % (os.path.join(TMP, "a"), os.path.join(TMP, "b"), EOD))


URI = make_uri()
SOURCE = cpdl.Source(URI, seq_len=S, seed=SEED)


def cpdl_run(np_, args, uri=URI):
    return testutil.cpdl_run(np_, ["--source", uri, "--seq-len", str(S), "--batch", str(B),
                                   "--seed", str(SEED)] + args, echo=True)


def load_dir(path):
    return {f[:-4]: np.load(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".npy")}


def want_rows(first):
    rows = [ref.row(SOURCE[first + b], S, eod=EOD, reset_position_ids=True, eod_mask_loss=True)
            for b in range(B)]
    return {name: np.stack([r[k] for r in rows])
            for k, name in enumerate(("input_ids", "labels", "loss_mask", "position_ids"))}


def check_steps(root, label, base=0, first_step=0):
    """Every dumped step: collated rows by the formula, rank views by the contract."""
    steps = sorted(int(d[4:]) for d in os.listdir(root) if d.startswith("step"))
    report(len(steps) > 0, label + ": steps dumped")
    for step in steps:
        sdir = os.path.join(root, "step%d" % step)
        for rank in sorted(d for d in os.listdir(sdir) if d.startswith("rank")):
            meta = json.load(open(os.path.join(sdir, rank, "meta.json")))
            dp, r = meta["dp_size"], meta["dp_rank"]
            first = base + ((step - first_step) * dp + r) * B
            collated = load_dir(os.path.join(sdir, "group%d" % meta["group"], "collated"))
            want = want_rows(first)
            ok = set(collated) == set(want) and all(
                collated[n].dtype == want[n].dtype and np.array_equal(collated[n], want[n])
                for n in want)
            report(ok, "%s step %d %s: collated rows are samples %d.." % (label, step, rank, first))
            loss_mask = collated.pop("loss_mask")
            view = reference.shard(collated, meta["cp_size"], meta["cp_rank"],
                                   tp_size=meta["tp_size"], loss_mask=loss_mask,
                                   padding_token_id=meta["padding_token_id"], mode=meta["mode"])
            got = load_dir(os.path.join(sdir, rank))
            ok = set(got) == set(view) and all(np.array_equal(got[n], view[n]) for n in view)
            report(ok, "%s step %d %s: view follows the CP contract" % (label, step, rank))


def test_meshes():
    for dp in (1, 2):
        for cp in (1, 2):
            d = os.path.join(TMP, "dp%dcp%d" % (dp, cp))
            p = cpdl_run(dp * cp, ["--cp", str(cp), "--steps", "4", "--dump", d,
                                   "--dump-collated", d])
            report(p.returncode == 0, "dp=%d cp=%d run" % (dp, cp), p.stderr[-2000:])
            if p.returncode == 0:
                check_steps(d, "dp=%d cp=%d" % (dp, cp))


def test_resume_other_dp():
    for dp_a, dp_b in ((2, 1), (1, 2)):
        first, second = (os.path.join(TMP, "resume%d%d_%s" % (dp_a, dp_b, n)) for n in "ab")
        state = os.path.join(TMP, "state%d%d" % (dp_a, dp_b))
        pa = cpdl_run(dp_a, ["--steps", "3", "--dump", first, "--dump-collated", first,
                             "--save-state", state])
        pb = cpdl_run(dp_b, ["--steps", "6", "--dump", second, "--dump-collated", second,
                             "--resume", state])
        report(pa.returncode == 0 and pb.returncode == 0, "resume dp %d -> %d runs" % (dp_a, dp_b),
               pa.stderr[-1000:] + pb.stderr[-1000:])
        if pb.returncode == 0:
            check_steps(first, "before resume dp=%d" % dp_a)
            # 3 steps at dp_a consumed 3 * dp_a * B samples; dp_b continues from there
            check_steps(second, "after resume dp %d -> %d" % (dp_a, dp_b),
                        base=3 * dp_a * B, first_step=3)


def test_consumed_samples():
    # switching from Megatron mid-run: consumed_samples=C starts step 0 at sample C
    d = os.path.join(TMP, "consumed")
    p = cpdl_run(2, ["--steps", "3", "--dump", d, "--dump-collated", d],
                 uri=URI + "&consumed_samples=10")
    report(p.returncode == 0, "consumed_samples run", p.stderr[-1000:])
    if p.returncode == 0:
        check_steps(d, "consumed_samples=10", base=10)
    p = cpdl_run(1, ["--steps", "1"], uri=URI + "&consumed_samples=-1")
    report(p.returncode != 0 and "consumed_samples" in p.stderr, "consumed_samples=-1: clear error",
           p.stderr[-500:])


def test_end_of_samples():
    # the stream ends at the last full global batch, as Megatron's sampler
    n = len(SOURCE)
    for dp in (1, 2):
        p = cpdl_run(dp, ["--steps", str(n // B + 5)])
        steps = json.loads(p.stdout.strip().splitlines()[-1])["steps"] if p.returncode == 0 else -1
        report(steps == n // (dp * B), "dp=%d: the run ends after the last full global batch" % dp,
               "%d steps of %d samples" % (steps, n))


if __name__ == "__main__":
    sys.exit(run([test_meshes, test_resume_other_dp, test_consumed_samples, test_end_of_samples]))
