"""test_torchrun — cpdl.Loader launched the way torchrun launches workers.

Debian's torchrun (torch 1.13) dies in its own agent on this machine, so this
script is the launcher: it starts N workers of itself with the environment
torchrun gives them (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
GROUP_RANK, ROLE_RANK, MASTER_ADDR=127.0.0.1, MASTER_PORT=<free port>,
TORCHELASTIC_RUN_ID) and no MPI launcher variables. The control plane is
torch.distributed over gloo (nobody calls MPI_Init).
  1. dump: 4 workers, Loader(cp=2): every rank's view of every step is byte
     for byte `mpirun -np 4 cpdl run --cp 2 --dump` with the same config.
  2. mesh: a mesh object whose dims are (cp, dp) — cp slowest, not cpdl's
     default order (torch 1.13 has no DeviceMesh with dim names: a duck-typed
     one with mesh_dim_names/get_local_rank/size, mapped by dims=): each rank's
     shard is `cpdl run --order cp,dp,tp`'s for that rank, and its mesh
     coordinates are the mesh's.
  3. kill: rank 1 SIGKILLs itself mid-run; every survivor's error names rank 1
     within 2 s of the kill; no segment of the job is left in /dev/shm.
  4. noenv: WORLD_SIZE=2 without MASTER_ADDR/MASTER_PORT: never a silent world
     of one — cpdl.Error on every process naming torchrun and the fix.
  5. groups (`test_torchrun.py test_groups`, CTest python.torchrun_groups): two
     Loaders in one world of 4, on new_group([0, 1]) and new_group([2, 3])
     (process_group=): each is a job of 2 ranks using the rank in its group;
     both dump byte for byte `mpirun -np 2 cpdl run --cp 2 --dump`.
Prints "N passed, M failed" and exits non-zero on any failure.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import testutil  # noqa: E402
from testutil import report  # noqa: E402

CONFIG = "source=synthetic: seq_len=96 batch=2 steps=6 seed=7"
LAUNCH_VARS = ("OMPI_", "PMIX_", "PMI_", "SLURM_")


# ---- the launcher (what torchrun does for its workers) --------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(n, scenario, out, extra_env=None, drop=()):
    """Start n workers like `torchrun --standalone --nproc_per_node n`; wait."""
    port = free_port()
    procs = []
    for rank in range(n):
        env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCH_VARS)}
        env.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(n),
                    "LOCAL_WORLD_SIZE": str(n), "GROUP_RANK": "0", "ROLE_RANK": str(rank),
                    "ROLE_WORLD_SIZE": str(n), "ROLE_NAME": "default", "GROUP_WORLD_SIZE": "1",
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                    "TORCHELASTIC_RUN_ID": "cpdl-test", "TORCHELASTIC_RESTART_COUNT": "0",
                    "TORCHELASTIC_MAX_RESTARTS": "0", "OMP_NUM_THREADS": "1"})
        env.update(extra_env or {})
        for var in drop:
            env.pop(var, None)
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", scenario, out],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = []
    for p in procs:
        try:
            stdout, _ = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            stdout, _ = p.communicate()
            stdout += "\n(timed out)"
        outputs.append((p.returncode, stdout))
    return outputs


def cpdl_run(np_, args):
    return testutil.cpdl_run(np_, args, echo=True).returncode


def config_args():
    out = []
    for item in CONFIG.split():
        key, value = item.split("=", 1)
        out += ["--" + key.replace("_", "-"), value]
    return out


def compare_trees(got, want, label):
    """Every .npy of want exists in got with the same bytes, and vice versa."""
    def files(root):
        found = set()
        for d, _, names in os.walk(root):
            found |= {os.path.relpath(os.path.join(d, f), root) for f in names
                      if f.endswith(".npy")}
        return found
    g, w = files(got), files(want)
    report(len(w) > 0 and g == w, label + ": same files",
           "only torchrun: %s only mpirun: %s" % (sorted(g - w)[:5], sorted(w - g)[:5]))
    same = all(open(os.path.join(got, f), "rb").read() == open(os.path.join(want, f), "rb").read()
               for f in g & w)
    report(same, label + ": byte-identical views (%d files)" % len(g & w))


def workers_ok(outputs, label):
    for rank, (rc, text) in enumerate(outputs):
        report(rc == 0, "%s: worker %d exit %s" % (label, rank, rc), text[-2000:])


def test_dump():
    with tempfile.TemporaryDirectory() as tmp:
        got, want = os.path.join(tmp, "torchrun"), os.path.join(tmp, "mpirun")
        workers_ok(torchrun(4, "dump", got), "dump")
        report(cpdl_run(4, ["--cp", "2"] + config_args() + ["--dump", want]) == 0, "cpdl run")
        compare_trees(got, want, "dump cp=2")


def test_mesh():
    with tempfile.TemporaryDirectory() as tmp:
        got, want = os.path.join(tmp, "torchrun"), os.path.join(tmp, "mpirun")
        workers_ok(torchrun(4, "mesh", got), "mesh")
        report(cpdl_run(4, ["--cp", "2", "--order", "cp,dp,tp"] + config_args()
                        + ["--dump", want]) == 0, "cpdl run --order cp,dp,tp")
        compare_trees(got, want, "mesh (cp, dp)")


def segments_of(pids):
    return [f for f in os.listdir("/dev/shm") if f.startswith("cpdl-")
            and any("-%d-" % pid in f for pid in pids)]


def test_kill():
    with tempfile.TemporaryDirectory() as tmp:
        outputs = torchrun(4, "kill", tmp)
        kill_at = float(open(os.path.join(tmp, "killed")).read())
        report(outputs[1][0] == -signal.SIGKILL, "kill: rank 1 died of SIGKILL",
               str(outputs[1][0]))
        pids = []
        for rank in (0, 2, 3):
            path = os.path.join(tmp, "rank%d.json" % rank)
            if not os.path.exists(path):
                report(False, "kill: survivor %d reported" % rank, outputs[rank][1][-2000:])
                continue
            r = json.load(open(path))
            pids.append(r["pid"])
            report("rank 1" in r["message"] and "died" in r["message"],
                   "kill: survivor %d names rank 1" % rank, r["message"])
            late = r["at"] - kill_at
            report(late < 2.0, "kill: survivor %d knew within 2 s (%.3f s)" % (rank, late))
            print("survivor %d: error %.3f s after the kill: %s" % (rank, late, r["message"]))
        pids.append(json.load(open(os.path.join(tmp, "pids.json")))["1"])
        report(not segments_of(pids), "kill: no segment left", str(segments_of(pids)))


def test_groups():
    with tempfile.TemporaryDirectory() as tmp:
        got, want = os.path.join(tmp, "torchrun"), os.path.join(tmp, "mpirun")
        workers_ok(torchrun(4, "groups", got), "groups")
        report(cpdl_run(2, ["--cp", "2"] + config_args() + ["--dump", want]) == 0, "cpdl run -np 2")
        for g in (0, 1):
            compare_trees(os.path.join(got, "g%d" % g), want, "groups: Loader on new_group(%s)"
                          % ([0, 1] if g == 0 else [2, 3]))


def test_noenv():
    with tempfile.TemporaryDirectory() as tmp:
        outputs = torchrun(2, "noenv", tmp, drop=("MASTER_ADDR", "MASTER_PORT"))
        for rank, (rc, text) in enumerate(outputs):
            report(rc == 3 and "torchrun" in text and "world of one" in text
                   and "init_process_group" in text,
                   "noenv: worker %d refuses with a message" % rank, "rc %s: %s" % (rc, text))


# ---- the workers ----------------------------------------------------------------------

class DuckMesh:
    """What cpdl reads of a torch DeviceMesh: dims (cp, dp), cp slowest."""
    mesh_dim_names = ("cp", "dp")

    def __init__(self, rank):
        self._coord = {"cp": rank // 2, "dp": rank % 2}

    def get_local_rank(self, mesh_dim):
        return self._coord[mesh_dim]

    def size(self, mesh_dim):
        return 2


def dump(loader, out):
    import numpy as np
    rank = loader.mesh.world_rank
    for batch in loader:
        d = os.path.join(out, "step%d" % batch.step, "rank%d" % rank)
        os.makedirs(d, exist_ok=True)
        for name in batch:
            np.save(os.path.join(d, name + ".npy"), np.array(batch[name]))


def worker(scenario, out):
    import cpdl
    rank = int(os.environ["RANK"])
    if scenario == "dump":
        with cpdl.Loader(CONFIG, cp=2) as loader:
            assert loader.mesh.world_size == 4, loader.mesh
            dump(loader, out)
    elif scenario == "mesh":
        mesh = DuckMesh(rank)
        with cpdl.Loader(CONFIG, mesh=mesh, dims={"dp": "dp", "cp": "cp"}) as loader:
            m = loader.mesh
            assert (m.dp_rank, m.cp_rank, m.dp_size, m.cp_size) == (rank % 2, rank // 2, 2, 2), m
            dump(loader, out)
    elif scenario == "groups":
        # Two jobs in one world: a Loader on new_group([0, 1]) and one on new_group([2, 3]).
        # Each must use the rank in its group (ranks 2 and 3 are 0 and 1 there).
        import torch.distributed as dist
        dist.init_process_group(backend="gloo")
        groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]  # collective: every rank
        with cpdl.Loader(CONFIG, cp=2, process_group=groups[rank // 2]) as loader:
            m = loader.mesh
            assert (m.world_size, m.world_rank, m.cp_rank, m.dp_size) == (2, rank % 2, rank % 2,
                                                                          1), m
            dump(loader, os.path.join(out, "g%d" % (rank // 2)))
        dist.barrier()
    elif scenario == "kill":
        with open(os.path.join(out, "pid%d" % rank), "w") as f:
            f.write(str(os.getpid()))
        loader = cpdl.Loader(CONFIG.replace("steps=6", "steps=40"), cp=2, timeout_ms=30000)
        try:
            for batch in loader:
                if rank == 1 and batch.step == 3:
                    with open(os.path.join(out, "pids.json"), "w") as f:
                        json.dump({"1": os.getpid()}, f)
                    with open(os.path.join(out, "killed"), "w") as f:
                        f.write(repr(time.time()))
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(0.02)
            loader.close()
            message = "no error"
        except cpdl.Error as exc:
            message = str(exc)
        at = time.time()
        with open(os.path.join(out, "rank%d.tmp" % rank), "w") as f:
            json.dump({"message": message, "at": at, "pid": os.getpid()}, f)
        os.rename(os.path.join(out, "rank%d.tmp" % rank), os.path.join(out, "rank%d.json" % rank))
        # Stay alive until every survivor has its verdict: an exited survivor
        # would be a second dead rank for the others' messages.
        deadline = time.time() + 20
        while time.time() < deadline and not all(
                os.path.exists(os.path.join(out, "rank%d.json" % r)) for r in (0, 2, 3)):
            time.sleep(0.05)
        sys.stdout.flush()
        os._exit(0)  # the process group cannot be torn down with a dead member
    elif scenario == "noenv":
        try:
            cpdl.Loader(CONFIG, cp=2)
        except cpdl.Error as exc:
            print(exc)
            sys.exit(3)
        print("opened a loader of world size 1")
        sys.exit(4)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
    else:
        tests = {t.__name__: t for t in (test_dump, test_mesh, test_kill, test_noenv, test_groups)}
        # no names: every test but test_groups (CTest runs that one as python.torchrun_groups)
        names = sys.argv[1:] or ["test_dump", "test_mesh", "test_kill", "test_noenv"]
        sys.exit(testutil.run([tests[n] for n in names]))
