"""resume_check — cluster.resume's verdict: the tokens of a job run in legs
(each leg resumed from the previous leg's --save-state under another layout and
host count) are exactly those of one uninterrupted run, byte for byte.

  resume_check.py views|thd REF LEG...    (each a `cpdl run` dump directory)

views: every rank's --dump views are put back together into global rows (replica
r's step k holds global rows (k*dp + r)*batch + b of its leg, counted from the
rows the earlier legs consumed; CP ranks' views unsharded as their mode cuts
them); the legs' rows must be 0..n-1, none twice, each equal to the
reference's row n.
thd: the group leaders' --dump-collated rows; the legs may change cp, which
changes the padding of a row (a multiple of 2*cp), so what is compared is the
sequence of real input/label pairs the legs delivered, which must be the
reference's from its first pair on (no document repeated or skipped).
Prints each leg's layout and hosts; exits 1 on any difference.
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../python"))
import test_global_order as order  # noqa: E402


def metas(root):
    """Every view's meta.json of a dump."""
    out = []
    for sd in os.listdir(root):
        if sd.startswith("step"):
            for rank in os.listdir(os.path.join(root, sd)):
                path = os.path.join(root, sd, rank, "meta.json")
                if rank.startswith("rank") and os.path.exists(path):
                    out.append(json.load(open(path)))
    return out


def leg_shape(root):
    """(first step, steps, dp, cp, tp, nodes, batch) of one leg's dump."""
    ms = metas(root)
    if not ms:
        sys.exit("FAIL %s: no views dumped" % root)
    steps = sorted({m["step"] for m in ms})
    if steps != list(range(steps[0], steps[0] + len(steps))):
        sys.exit("FAIL %s: steps %s are not consecutive" % (root, steps))
    m = ms[0]
    return (steps[0], len(steps), m["dp_size"], m["cp_size"], m["tp_size"],
            len({x["node"] for x in ms}), m["batch"], m["mode"], m["seq_len"])


def view_rows(root, first, consumed, batch, mode):
    return {consumed + ((step - first) * dp + r) * batch + b: fields
            for (step, r, b, dp), fields in order.rows_from_views_steps(root, mode).items()}


def collated_rows(root, first, consumed):
    rows, groups = {}, order.group_replicas(root)
    for sd in os.listdir(root):
        if not sd.startswith("step"):
            continue
        step = int(sd[4:])
        for grp in os.listdir(os.path.join(root, sd)):
            if grp.startswith("group"):
                dp_rank, dp = groups[int(grp[5:])]
                c = order.load_dir(os.path.join(root, sd, grp, "collated"))
                n = c["input_ids"].shape[0]
                for b in range(n):
                    rows[consumed + ((step - first) * dp + dp_rank) * n + b] = {
                        k: v[b] if v.ndim == 2 else v for k, v in c.items()}
    return rows


def main():
    kind, ref_dir, legs = sys.argv[1], sys.argv[2], sys.argv[3:]
    failures = []
    shape = leg_shape(ref_dir)
    order.S = shape[8]  # the views are cut back to the run's seq_len
    if kind == "views":
        ref = view_rows(ref_dir, 0, 0, shape[6], shape[7])
    else:
        ref = collated_rows(ref_dir, 0, 0)
    rows, consumed, step = {}, 0, 0
    for leg in legs:
        first, n, dp, cp, tp, nodes, batch, mode, _ = leg_shape(leg)
        print("leg %s: steps %d..%d, dp %d cp %d tp %d on %d host(s), global rows %d..%d"
              % (os.path.basename(leg), first, first + n - 1, dp, cp, tp, nodes, consumed,
                 consumed + n * dp * batch - 1))
        if first != step:
            failures.append("%s starts at step %d, the state said %d" % (leg, first, step))
        got = view_rows(leg, first, consumed, batch, mode) if kind == "views" else \
            collated_rows(leg, first, consumed)
        dup = set(got) & set(rows)
        if dup:
            failures.append("%s: rows %s delivered twice" % (leg, sorted(dup)[:5]))
        rows.update(got)
        consumed += n * dp * batch
        step = first + n
    if sorted(rows) != list(range(consumed)):
        failures.append("rows %s..., expected 0..%d" % (sorted(rows)[:20], consumed - 1))
    elif kind == "views":
        diff = order.same_rows(ref, rows, consumed)
        if diff:
            failures.append("the legs leave the uninterrupted run: " + diff)
        else:
            print("%d global rows (%d tokens per field) identical to the uninterrupted run"
                  % (consumed, consumed * order.S))
    else:
        ids, labels = order.thd_pairs(rows, consumed)
        ref_ids, ref_labels = order.thd_pairs(ref, len(ref))
        n = len(ids)
        if n < consumed * order.S // 2 or n > len(ref_ids):
            failures.append("%d pairs delivered, the reference has %d" % (n, len(ref_ids)))
        elif not (np.array_equal(ids, ref_ids[:n]) and np.array_equal(labels, ref_labels[:n])):
            bad = int(np.argmax((ids != ref_ids[:n]) | (labels != ref_labels[:n])))
            failures.append("the input/label pairs leave the uninterrupted run at pair %d" % bad)
        else:
            print("%d thd rows: %d input/label pairs identical to the uninterrupted run's first"
                  % (consumed, n))
    for f in failures:
        print("FAIL " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
