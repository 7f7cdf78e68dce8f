"""test_launch_mpi — the MPI control plane with an mpi4py subcommunicator and
with the trainer's layout (coords=).
  1. subcomm: mpirun -np 4, each half of COMM_WORLD.Split(rank % 2) opens its
     own Loader(cp=2): each half's views are byte for byte
     `mpirun -np 2 cpdl run --cp 2 --dump` (world rank r of a half = r // 2).
  2. coords: mpirun -np 4, coords={"dp": (r % 2, 2), "cp": (r // 2, 2)}: the
     views are `cpdl run --cp 2 --order cp,dp,tp`'s.
  3. badgrid: two ranks claim the same (dp, cp): CPDL_EMESH on every rank
     naming both ranks; sizes that disagree: CPDL_EMESH naming the rank.
Prints "N passed, M failed" and exits non-zero on any failure.
"""
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import testutil  # noqa: E402
from testutil import report  # noqa: E402
from test_torchrun import CONFIG, compare_trees, config_args, cpdl_run, dump  # noqa: E402

MPIRUN = os.environ.get("MPIEXEC", "mpirun")


def mpirun_workers(np_, scenario, out):
    env = dict(os.environ)
    env.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"})
    cmd = [MPIRUN, "--oversubscribe", "--bind-to", "none", "-np", str(np_), sys.executable,
           __file__, "--worker", scenario, out]
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=120)
    report(p.returncode == 0, "%s: workers exit 0" % scenario, p.stdout[-3000:])
    return p.stdout


def test_subcomm():
    with tempfile.TemporaryDirectory() as tmp:
        want = os.path.join(tmp, "mpirun")
        mpirun_workers(4, "subcomm", tmp)
        report(cpdl_run(2, ["--cp", "2"] + config_args() + ["--dump", want]) == 0, "cpdl run")
        for half in (0, 1):
            compare_trees(os.path.join(tmp, "half%d" % half), want, "subcomm half %d" % half)


def test_coords():
    with tempfile.TemporaryDirectory() as tmp:
        got, want = os.path.join(tmp, "coords"), os.path.join(tmp, "mpirun")
        mpirun_workers(4, "coords", got)
        report(cpdl_run(4, ["--cp", "2", "--order", "cp,dp,tp"] + config_args()
                        + ["--dump", want]) == 0, "cpdl run --order cp,dp,tp")
        compare_trees(got, want, "coords (cp, dp)")


def test_badgrid():
    with tempfile.TemporaryDirectory() as tmp:
        text = mpirun_workers(4, "badgrid", tmp)
        report(text.count("dup ok") == 4, "badgrid: every rank named ranks 1 and 3", text[-3000:])
        report(text.count("sizes ok") == 4, "badgrid: every rank named rank 2's sizes",
               text[-3000:])


def worker(scenario, out):
    from mpi4py import MPI
    import cpdl
    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    if scenario == "subcomm":
        sub = world.Split(rank % 2, rank)
        with cpdl.Loader(CONFIG, comm=sub, cp=2) as loader:
            assert loader.mesh.world_size == 2 and loader.mesh.world_rank == rank // 2
            dump(loader, os.path.join(out, "half%d" % (rank % 2)))
        sub.Free()
    elif scenario == "coords":
        with cpdl.Loader(CONFIG, coords={"dp": (rank % 2, 2), "cp": (rank // 2, 2)}) as loader:
            assert (loader.mesh.dp_rank, loader.mesh.cp_rank) == (rank % 2, rank // 2)
            dump(loader, out)
    elif scenario == "badgrid":
        # Ranks 1 and 3 both say (dp=1, cp=0).
        coords = {"dp": (rank % 2, 2), "cp": (0 if rank == 3 else rank // 2, 2)}
        try:
            cpdl.Loader(CONFIG, coords=coords)
        except cpdl.Error as exc:
            if exc.name == "CPDL_EMESH" and "ranks 1 and 3" in str(exc):
                print("dup ok", flush=True)
            else:
                print("rank %d: %s" % (rank, exc), flush=True)
        coords = {"dp": (rank % 2, 2), "cp": (rank // 2, 2), "tp": (0, 2 if rank == 2 else 1)}
        try:
            cpdl.Loader(CONFIG, coords=coords, tp=1)
        except cpdl.Error as exc:
            if exc.name == "CPDL_EMESH" and "rank 2 says" in str(exc):
                print("sizes ok", flush=True)
            else:
                print("rank %d: %s" % (rank, exc), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
    else:
        sys.exit(testutil.run([test_subcomm, test_coords, test_badgrid]))
