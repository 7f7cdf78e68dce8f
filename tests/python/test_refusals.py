"""python.refusals — what hostile use found besides the big five, each refused (or accepted)
as it should be:
  1. Python keywords beat a bad CPDL_<KEY> variable, as the CLI's flags do
     (CPDL_SEQ_LEN=garbage: Loader(seq_len=64) works; Loader() names the variable);
  2. cpdl.Source("megatron:...", seq_len=8, seed=1) opens (seq_len=/seed= go only to sources
     that take them);
  3. `cpdl run --resume DIR` says DIR is a directory, not "9223372036854775807 bytes";
  4. gpt: with mode=thd is refused with advice the user can follow (no "cu_seqlens_padded");
     gpt: with collate=pad is refused, never silently ignored;
  5. npy: a later step with an extra .npy file, or float input_ids, is refused naming it;
  6. a torchrun-style launch with a process missing fails within cpdl's timeout_ms, naming
     the ranks that have not arrived (rank 1 missing; rank 0, the store's host, missing).
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import testutil  # noqa: E402
from datafiles import write_megatron, write_npy_steps  # noqa: E402
from testutil import report  # noqa: E402

TMP = tempfile.mkdtemp(prefix="cpdl-refusals-")
LAUNCH_VARS = ("OMPI_", "PMIX_", "PMI_", "SLURM_")


def python(code, env_extra=None, np_=1, timeout=120):
    """`mpirun -np np_ python -c code` in a clean environment (or None for no mpirun)."""
    env = testutil.mpi_env(env_extra, clean=True)
    argv = [sys.executable, "-c", code]
    cmd = testutil.mpirun(np_, argv) if np_ else argv
    return subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)


def run(np_, args):
    return testutil.cpdl_run(np_, args, env=testutil.mpi_env(clean=True), timeout=120)


def test_env_override():
    code = ("import cpdl\n"
            "l = cpdl.Loader(seq_len=64, steps=1)\n"
            "print('seq_len', next(l)['input_ids'].shape[1]); l.close()\n")
    p = python(code, {"CPDL_SEQ_LEN": "garbage"})
    report(p.returncode == 0 and "seq_len 64" in p.stdout,
           "seq_len=64 beats CPDL_SEQ_LEN=garbage", p.stdout[-1500:])
    p = python(code.replace("seq_len=64, ", "") .replace("'seq_len', ", "'x', "),
               {"CPDL_SEQ_LEN": "garbage"})
    report(p.returncode != 0 and "CPDL_SEQ_LEN" in p.stdout,
           "CPDL_SEQ_LEN=garbage alone is an error naming it", p.stdout[-1500:])
    p = python("import cpdl\nl = cpdl.Loader('seq_len=32 steps=1')\n"
               "print('seq_len', next(l)['input_ids'].shape[1]); l.close()\n",
               {"CPDL_SEQ_LEN": "garbage", "CPDL_STEPS": "also-bad"})
    report(p.returncode == 0 and "seq_len 32" in p.stdout,
           "config text beats bad CPDL_SEQ_LEN and CPDL_STEPS", p.stdout[-1500:])


def test_source_keywords():
    prefix = os.path.join(TMP, "meg")
    write_megatron(prefix, [np.arange(10, 30), np.arange(40, 45)], np.int32)
    import cpdl
    try:
        src = cpdl.Source("megatron:" + prefix, seq_len=8, seed=1)
        ok = len(src) == 2 and list(src[1]) == list(range(40, 45))
        src.close()
        report(ok, "Source('megatron:...', seq_len=8, seed=1) opens and reads")
    except cpdl.Error as exc:
        report(False, "Source('megatron:...', seq_len=8, seed=1) opens", str(exc))
    src = cpdl.Source("synthetic:?samples=3&dist=fixed&mean=5", seq_len=8, seed=9)
    report("seed=9" in src.uri and "seq_len" not in src.uri, "synthetic: gets seed= only", src.uri)
    src.close()


def test_resume_dir():
    p = run(1, ["--steps", "2", "--resume", TMP])
    report(p.returncode != 0 and "directory" in p.stderr and "9223372036854775807" not in
           p.stderr, "--resume DIR names a directory", p.stderr[-800:])


def test_gpt_refusals():
    prefix = os.path.join(TMP, "gpt")
    write_megatron(prefix, [np.append(np.arange(100 + 50 * d, 130 + 50 * d), 7) for d in range(40)],
                   np.int32)
    uri = "gpt:%s?num_samples=20&split=100,0,0&eod=7" % prefix
    p = run(2, ["--source", uri, "--cp", "2", "--mode", "thd", "--seq-len", "16", "--steps", "2"])
    report(p.returncode != 0 and "megatron:" in p.stderr and "mode=thd" in p.stderr and
           "cu_seqlens_padded" not in p.stderr, "gpt: with mode=thd: advice one can follow",
           p.stderr[-800:])
    p = run(1, ["--source", uri, "--collate", "pad", "--seq-len", "16", "--steps", "2"])
    report(p.returncode != 0 and "collate=pad" in p.stderr, "gpt: with collate=pad is refused",
           p.stderr[-800:])
    p = run(1, ["--source", uri, "--seq-len", "16", "--steps", "2"])
    report(p.returncode == 0, "gpt: with the defaults still runs", p.stderr[-800:])


def test_npy_refusals():
    steps = [{n: np.full((1, 8), k, dtype=np.int64) for n in ("input_ids", "labels")}
             for k in range(3)]
    extra = os.path.join(TMP, "extra")
    write_npy_steps(extra, steps)
    np.save(os.path.join(extra, "step1", "attention_mask.npy"), np.ones((1, 8), dtype=np.int64))
    p = run(1, ["--source", "npy:" + extra, "--steps", "0"])
    report(p.returncode != 0 and "step1/attention_mask.npy" in p.stderr,
           "npy: an extra .npy file in a later step is refused naming it", p.stderr[-800:])
    floats = os.path.join(TMP, "floats")
    write_npy_steps(floats, [{"input_ids": np.full((1, 8), 1.5, dtype=np.float32),
                              "labels": np.zeros((1, 8), dtype=np.int64)}])
    p = run(1, ["--source", "npy:" + floats, "--steps", "0"])
    report(p.returncode != 0 and "input_ids" in p.stderr and "integer" in p.stderr,
           "npy: float input_ids are refused", p.stderr[-800:])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_missing():
    code = ("import cpdl\n"
            "try:\n"
            "    cpdl.Loader('source=synthetic: seq_len=32 steps=2 timeout_ms=3000')\n"
            "    print('opened')\n"
            "except cpdl.Error as exc:\n"
            "    print('ERROR', exc)\n")
    for present, missing in ((0, 1), (1, 0)):
        env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCH_VARS)}
        env.update({"RANK": str(present), "LOCAL_RANK": str(present), "WORLD_SIZE": "2",
                    "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(free_port()), "TORCHELASTIC_RUN_ID": "cpdl-missing",
                    "OMP_NUM_THREADS": "1"})
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=300)
        took = time.monotonic() - t0
        label = "torchrun-style, rank %d missing" % missing
        report("ERROR" in p.stdout and "rank %d" % missing in p.stdout and
               "not arrived" in p.stdout, label + ": names the missing rank", p.stdout[-1500:])
        # 3 s of timeout_ms plus starting Python and torch on a loaded machine, far below
        # init_process_group's 30 minutes
        report(took < 90, label + ": within cpdl's timeout", "%.1f s" % took)


if __name__ == "__main__":
    try:
        code = testutil.run([test_env_override, test_source_keywords, test_resume_dir,
                             test_gpt_refusals, test_npy_refusals, test_torchrun_missing])
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    sys.exit(code)
