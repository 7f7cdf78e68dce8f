"""test_resume_loader — cpdl.Loader resume with several replicas, the way a
trainer checkpoints: every rank calls state_dict() (collective) at step
STOP-1 while holding it, rank 0's dict goes through JSON to every rank, and
every rank's load_state_dict() of it must deliver steps STOP..STEPS-1 equal,
field by field and byte for byte, to the uninterrupted run's — on every rank,
for each source (synthetic, llmc, megatron, npy), both collates, cp and tp.
Run under mpirun -np 4. Prints "N passed, M failed"; exits non-zero on failure.
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

comm = MPI.COMM_WORLD
rank, size = comm.rank, comm.size
check = testutil.report

# (cp, tp, source, collate) on 4 ranks: dp = 4 / (cp * tp)
CELLS = [
    (2, 1, "synthetic", "pack"),
    (1, 2, "llmc", "pad"),
    (1, 1, "megatron", "pack"),
    (2, 1, "npy", "pack"),
    (1, 1, "llmc", "pack"),
    (1, 2, "megatron", "pad"),
]


def copy(batch):
    return {name: np.array(batch[name]) for name in batch}


def test_matrix():
    tmp = comm.bcast(tempfile.mkdtemp(prefix="cpdl-resume-py-") if rank == 0 else None, root=0)
    try:
        for cp, tp, kind, collate in CELLS:
            dp = size // (cp * tp)
            label = "cp%d tp%d dp%d %s %s" % (cp, tp, dp, kind, collate)
            uri = resume_data.source_uri(kind, tmp, dp) if rank == 0 else None
            uri = comm.bcast(uri, root=0)
            opts = dict(cp=cp, tp=tp, seq_len=resume_data.SEQ_LEN, batch=resume_data.BATCH,
                        steps=resume_data.STEPS, source=uri, collate=collate, pin="none")
            full, state = [], None
            with cpdl.Loader(**opts) as a:
                for batch in a:
                    full.append((batch.step, copy(batch)))
                    if batch.step == resume_data.STOP - 1:
                        state = a.state_dict()  # every rank, while holding the step
            check(len(full) == resume_data.STEPS, "%s: %d steps" % (label, len(full)))
            blob = comm.bcast(json.dumps(state) if rank == 0 else None, root=0)
            with cpdl.Loader(**opts) as b:
                b.load_state_dict(json.loads(blob))
                again = [(batch.step, copy(batch)) for batch in b]
            steps = [s for s, _ in again]
            check(steps == list(range(resume_data.STOP, resume_data.STEPS)),
                  "%s: rank %d resumed steps %s" % (label, rank, steps))
            for (s, x), (_, y) in zip(full[resume_data.STOP:], again):
                same = set(x) == set(y) and all(x[k].dtype == y[k].dtype and
                                                np.array_equal(x[k], y[k]) for k in x)
                check(same, "%s: rank %d step %d differs from the uninterrupted run"
                      % (label, rank, s))
    finally:
        comm.barrier()
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    code = testutil.run([test_matrix])
    codes = comm.allgather(code)
    sys.exit(max(codes))
