"""thd_loader_check — run by test_thd.py under mpirun: cpdl.Loader in mode thd, from Python.

Each step: batch["cu_seqlens"] / ["cu_seqlens_padded"] are [n+1] for that step (not the
segment's capacity), the same on every rank, also as torch int32 tensors (batch.torch());
the ranks' position_ids, put back at TE's indices (thd_reference), restart at 0 in every
padded document. Usage: mpirun -np CP python3 thd_loader_check.py SOURCE SEQ_LEN
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import thd_reference as ref  # noqa: E402
from testutil import report, run  # noqa: E402

import cpdl  # noqa: E402

SOURCE, SEQ_LEN = sys.argv[1], int(sys.argv[2])


def test_loader_views():
    loader = cpdl.Loader(mode="thd", source=SOURCE, seq_len=SEQ_LEN, steps=4, timeout_ms=30000,
                         cp=int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")))
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    cp = comm.Get_size()
    sizes = set()
    for batch in loader:
        cu, cup, max_len = batch["cu_seqlens"], batch["cu_seqlens_padded"], batch["max_seqlen"]
        n = len(cup) - 1
        sizes.add(n)
        report(cu.shape == (n + 1,) and cup[0] == 0 and cup[-1] == SEQ_LEN and n >= 1,
               "step %d: cu_seqlens %s / padded %s" % (batch.step, cu, cup))
        report(np.all(np.diff(cup) % (2 * cp) == 0) and max_len.tolist() == [np.diff(cup).max()],
               "step %d: padded lengths / max_seqlen" % batch.step)
        t = batch.torch()
        report(str(t["cu_seqlens"].dtype) == "torch.int32" and t["cu_seqlens"].tolist() == cu.tolist(),
               "step %d: torch cu_seqlens" % batch.step)
        everyone = comm.allgather((cu.tolist(), cup.tolist(), np.array(batch["position_ids"])))
        report(all(e[0] == everyone[0][0] and e[1] == everyone[0][1] for e in everyone),
               "step %d: shared fields differ between ranks" % batch.step)
        row = np.full(SEQ_LEN, -1, dtype=np.int64)
        for r, (_, _, pos) in enumerate(everyone):
            row[ref.te_partitioned_indices(cup, SEQ_LEN, cp, r)] = pos[0]
        want = np.concatenate([np.arange(b - a) for a, b in zip(cup[:-1], cup[1:])])
        report(np.array_equal(row, want), "step %d: positions at TE's indices" % batch.step)
    report(len(sizes) >= 1, "steps seen")
    loader.close()


status = run([test_loader_views])
sys.exit(status)
