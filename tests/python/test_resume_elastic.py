"""test_resume_elastic — cpdl.Loader resumed under another layout, the way a
job moves to another allocation: every rank calls state_dict() at step K-1
of layout A (while holding it), rank 0's dict goes through JSON to every
rank of layout B (another dp, cp or tp; a sub-communicator of 3 ranks for
dp 3), and B's rows — reassembled from every rank's views (contiguous CP
chunks) into global rows (k*dp + r)*batch + b — must continue the global
order exactly: A's rows before K and B's after are the uninterrupted run's,
none repeated, none skipped. Sources synthetic, llmc, megatron, npy; pack
and pad. Run under mpirun -np 4. Prints "N passed, M failed".
"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import resume_data  # noqa: E402
import testutil  # noqa: E402

import cpdl  # noqa: E402

first = cpdl.Loader("seq_len=16 steps=1 pin=none")  # starts MPI
first.close()
from mpi4py import MPI  # noqa: E402

world = MPI.COMM_WORLD
rank = world.rank
check = testutil.report
S, B, ROWS, K = resume_data.SEQ_LEN, resume_data.BATCH, 24, 2

# (source, collate, layout A (n ranks, cp, tp), layout B)
CELLS = [
    ("synthetic", "pack", (4, 2, 1), (4, 1, 1)),   # dp 2 -> 4
    ("llmc", "pad", (4, 1, 2), (4, 4, 1)),         # dp 2 (tp 2) -> dp 1 (cp 4)
    ("megatron", "pack", (4, 1, 1), (3, 1, 1)),    # dp 4 -> 3
    ("npy", "pack", (2, 1, 1), (4, 2, 2)),         # dp 2 -> 1 (cp 2, tp 2)
    ("megatron", "pad", (1, 1, 1), (4, 2, 1)),     # dp 1 -> 2
]


def rows_of(records, first_step=0, consumed=0):
    """{global row: (input_ids, labels)} from every rank's (mesh, step, views)."""
    parts = {}
    for mesh, step, ids, labels in records:
        if mesh.tp_rank != 0:
            continue
        parts.setdefault((step, mesh.dp_rank, mesh.dp_size, mesh.cp_size), {})[mesh.cp_rank] = \
            (ids, labels)
    rows = {}
    for (step, r, dp, cp), by_cp in parts.items():
        ids = np.concatenate([by_cp[c][0] for c in range(cp)], axis=1)[:, :S]
        labels = np.concatenate([by_cp[c][1] for c in range(cp)], axis=1)[:, :S]
        for b in range(ids.shape[0]):
            rows[consumed + ((step - first_step) * dp + r) * B + b] = (ids[b], labels[b])
    return rows


def run(comm, opts, steps, restore=None, save_at=None):
    """Every rank's records, gathered; the state saved at step save_at."""
    records, state = [], None
    if comm != MPI.COMM_NULL:
        with cpdl.Loader(comm=comm, steps=steps, **opts) as loader:
            if restore is not None:
                loader.load_state_dict(restore)
            for batch in loader:
                records.append((batch.mesh, batch.step, np.array(batch["input_ids"]),
                                np.array(batch["labels"])))
                if batch.step == save_at:
                    state = loader.state_dict()
    gathered = world.allgather((records, state if rank == 0 else None))
    return [r for recs, _ in gathered for r in recs], gathered[0][1]


def sub(n):
    return world.Split(0 if rank < n else MPI.UNDEFINED, rank)


def test_matrix():
    tmp = world.bcast(tempfile.mkdtemp(prefix="cpdl-elastic-") if rank == 0 else None, root=0)
    try:
        for kind, collate, (na, ca, ta), (nb, cb, tb) in CELLS:
            dpa, dpb = na // (ca * ta), nb // (cb * tb)
            label = "%s %s dp%d cp%d tp%d -> dp%d cp%d tp%d" % (kind, collate, dpa, ca, ta,
                                                                 dpb, cb, tb)
            uri = world.bcast(resume_data.source_uri(kind, tmp, 1) if rank == 0 else None,
                              root=0)
            if kind == "npy" and rank == 0:  # enough batches for ROWS
                shutil.rmtree(uri[4:], ignore_errors=True)
                resume_data.write_npy(uri[4:], ROWS)
            world.barrier()
            unit = 1 if kind == "npy" else B  # npy: a row is a whole batch
            total = ROWS // unit
            base = dict(seq_len=S, batch=B, source=uri, collate=collate, pin="none")
            ca_comm, cb_comm = sub(na), sub(nb)
            ref, _ = run(ca_comm, dict(base, cp=ca, tp=ta), total // dpa)
            first, state = run(ca_comm, dict(base, cp=ca, tp=ta), K, save_at=K - 1)
            blob = json.loads(world.bcast(json.dumps(state), root=0))
            consumed = K * dpa * unit
            more = (total - K * dpa) // dpb  # steps of B: total is in global-batch rows / unit
            second, _ = run(cb_comm, dict(base, cp=cb, tp=tb), K + more, restore=blob)
            for c in (ca_comm, cb_comm):
                if c != MPI.COMM_NULL:
                    c.Free()
            if kind == "npy":  # batches, not rows: compare whole batches by index
                def by_batch(records, first_step=0, done=0):
                    out = {}
                    for mesh, step, ids, _ in records:
                        if mesh.tp_rank == 0 and mesh.cp_rank == 0:
                            out[done + (step - first_step) * mesh.dp_size + mesh.dp_rank] = \
                                ids[:, :ids.shape[1]]
                    return out
                want, got = by_batch(ref), by_batch(first)
                got_b = by_batch(second, K, consumed)
                check(not set(got) & set(got_b), "%s: a batch delivered twice" % label)
                got.update(got_b)
                upto = consumed + more * dpb
                check(sorted(got) == list(range(upto)) and sorted(want) == list(range(total)),
                      "%s: batches %s, expected 0..%d" % (label, sorted(got), upto - 1))
                check(all(np.array_equal(want[g][:, :got[g].shape[1]], got[g][:, :want[g].shape[1]])
                          for g in got if g in want), "%s: batches differ" % label)
                continue
            want = rows_of(ref)
            got = rows_of(first)
            got_b = rows_of(second, K, consumed)
            check(not set(got) & set(got_b), "%s: rows %s delivered twice"
                  % (label, sorted(set(got) & set(got_b))[:4]))
            got.update(got_b)
            upto = consumed + more * dpb * B  # B delivers whole global batches of its own
            check(sorted(got) == list(range(upto)) and sorted(want) == list(range(ROWS)),
                  "%s: rows %s, expected 0..%d" % (label, sorted(got)[:30], upto - 1))
            same = all(g in want and np.array_equal(want[g][0], got[g][0]) and
                       np.array_equal(want[g][1], got[g][1]) for g in got)
            check(same, "%s: the resumed rows leave the global order" % label)
    finally:
        world.barrier()
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    code = testutil.run([test_matrix])
    codes = world.allgather(code)
    sys.exit(max(codes))
