"""train.py — the cluster tests' trainer: cpdl.Loader under srun or mpirun.

  python3 train.py --out DIR [--config "k=v ..."] [--plane mpi|torch] [--dump]
                   [--die-rank R --die-step S --how kill|exit|raise] [--step-ms MS]
                   [--save-step S]

Each rank writes DIR/rank<R>.txt: "OPEN rank host pid group leader segment_bytes
shm=<name>:<bytes>,..." (the cpdl segments this process maps, from
/proc/self/maps: they live in this host's /dev/shm), then "DIE"/"ERROR"/"END"
lines with CLOCK_REALTIME stamps (the hosts share this machine's clock), and
with --dump every view as DIR/step<k>/rank<r>/<field>.npy (cpdl run --dump's
layout). --plane torch: torch.distributed over gloo, rank and size from
SLURM_PROCID/SLURM_NTASKS, MASTER_ADDR the first host of SLURM_JOB_NODELIST
(as docs/launching.md says to launch under plain srun).
"""
import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../python"))


def first_host(nodelist):
    """The first host of a Slurm node list ("n[1-3],m7" -> "n1")."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=10)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    m = re.match(r"([^,\[]+)(?:\[(\d+))?", nodelist)
    return m.group(1) + (m.group(2) or "")


def torch_from_slurm():
    import torch.distributed as dist
    env = os.environ
    env.setdefault("RANK", env["SLURM_PROCID"])
    env.setdefault("WORLD_SIZE", env["SLURM_NTASKS"])
    env.setdefault("LOCAL_RANK", env.get("SLURM_LOCALID", "0"))
    env.setdefault("MASTER_ADDR", first_host(env["SLURM_JOB_NODELIST"]))
    env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
    dist.init_process_group(backend="gloo")


def segments():
    """{name: bytes} of the cpdl segments mapped by this process."""
    found = {}
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and "/cpdl-" in parts[5]:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                name = os.path.basename(parts[5])
                found[name] = found.get(name, 0) + hi - lo
    return found


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--config", default="source=synthetic: seq_len=4096 steps=8")
    ap.add_argument("--plane", default="mpi")
    ap.add_argument("--dump", action="store_true")
    ap.add_argument("--die-rank", type=int, default=-1)
    ap.add_argument("--die-step", type=int, default=-1)
    ap.add_argument("--how", default="kill")
    ap.add_argument("--step-ms", type=float, default=0)
    ap.add_argument("--save-step", type=int, default=-1,
                    help="every rank calls state_dict() at this step (the victim dies first)")
    args = ap.parse_args()
    if args.plane == "torch":
        torch_from_slurm()
    import cpdl
    loader = cpdl.Loader(args.config, process_group="torch" if args.plane == "torch" else None)
    mesh = loader.mesh
    rank = mesh.world_rank
    report = open(os.path.join(args.out, "rank%d.txt" % rank), "w", buffering=1)
    shm = ",".join("%s:%d" % kv for kv in sorted(segments().items()))
    report.write("OPEN %d %s %d %d %d %d shm=%s\n" % (
        rank, socket.gethostname(), os.getpid(), mesh.group, int(mesh.group_rank == 0),
        loader.segment_bytes, shm))
    try:
        for step, batch in enumerate(loader):
            if step == args.save_step and rank != args.die_rank:
                time.sleep(0.3)  # the victim dies while the others are in the collective
                loader.state_dict()
            if rank == args.die_rank and step == args.die_step:
                report.write("DIE %d %.6f %s\n" % (rank, time.time(), args.how))
                if args.how == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if args.how == "exit":
                    os._exit(5)
                raise RuntimeError("a training bug on rank %d at step %d" % (rank, step))
            if args.dump:
                d = os.path.join(args.out, "step%d" % step, "rank%d" % rank)
                os.makedirs(d, exist_ok=True)
                import numpy as np
                for name in batch:
                    np.save(os.path.join(d, name + ".npy"), np.asarray(batch[name]))
            if args.step_ms:
                time.sleep(args.step_ms / 1000.0)
    except cpdl.Error as exc:
        report.write("ERROR %d %.6f %s %s\n" % (rank, time.time(), exc.name,
                                                str(exc).replace("\n", " ")))
        sys.exit(3)
    loader.close()
    report.write("END %d %.6f\n" % (rank, time.time()))


if __name__ == "__main__":
    main()
