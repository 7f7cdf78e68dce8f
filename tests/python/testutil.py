"""testutil — the pass/fail tally shared by the plain-script Python tests, and
the way they start `mpirun ... cpdl run`.

Each script calls report() once per check and ends with run(tests), which runs
the test functions (an exception counts as one failure with its traceback),
prints "N passed, M failed" and returns the exit status (summary() alone for a
script that calls its checks itself); under mpirun a failed check exits its
rank at once, which ends the job. Scripts import it from their own
directory (sys.path[0] when run as `python3 tests/python/x.py`).

cpdl_run() runs the CLI under mpirun (CPDL_BIN, else build/cpdl; MPIEXEC,
else mpirun) as root too, oversubscribed and unbound as CTest runs it.
"""
import os
import subprocess
import traceback

CPDL = os.environ.get("CPDL_BIN", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               "../../build/cpdl"))
MPIRUN = os.environ.get("MPIEXEC", "mpirun")
# What a clean environment keeps of CPDL_*: where cpdl and its plugins are.
CPDL_PATH_VARS = ("CPDL_PLUGIN_PATH", "CPDL_LIBRARY", "CPDL_BIN")

passed = 0
failed = 0


def _under_mpirun():
    try:
        return int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def report(ok, what, detail=""):
    """Count one check; print what failed and why. Under mpirun (several ranks) a failed
    check ends the job at once: this rank exits, so mpirun ends the others, instead of
    leaving them in a collective this rank will not reach until the test's timeout."""
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print("FAIL %s %s" % (what, detail), flush=True)
        if _under_mpirun():
            print("FAIL (rank %s: a failed check under mpirun ends the job)"
                  % os.environ.get("OMPI_COMM_WORLD_RANK", "?"), flush=True)
            os._exit(1)  # no atexit: cpdl's close would be a collective


def summary():
    """Print the tally, return 0 or 1 for sys.exit."""
    print("%d passed, %d failed" % (passed, failed), flush=True)
    return 1 if failed else 0


def run(tests):
    """Run each test function, print the tally, return 0 or 1 for sys.exit."""
    for test in tests:
        try:
            test()
        except Exception:  # noqa: BLE001 — an escaping exception is a failed test
            report(False, test.__name__, traceback.format_exc())
    return summary()


def mpi_env(extra=None, clean=False):
    """os.environ for an mpirun that may run as root, then `extra`; clean drops
    every CPDL_* variable but CPDL_PATH_VARS first (a test of the CLI's own
    environment handling must not see the caller's settings)."""
    env = {k: v for k, v in os.environ.items()
           if not clean or not k.startswith("CPDL_") or k in CPDL_PATH_VARS}
    env.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"})
    env.update(extra or {})
    return env


def mpirun(np_, argv):
    """The command line of `argv` on np_ ranks."""
    return [MPIRUN, "--oversubscribe", "--bind-to", "none", "-np", str(np_)] + list(argv)


def cpdl_run(np_, args, env=None, timeout=120, echo=False):
    """`mpirun -np np_ cpdl run --quiet --json ARGS` in `env` (default
    mpi_env()); returns the CompletedProcess (text stdout, stderr). echo:
    print a failed run's output. subprocess.TimeoutExpired past timeout."""
    p = subprocess.run(mpirun(np_, [CPDL, "run", "--quiet", "--json"] + list(args)),
                       env=env if env is not None else mpi_env(), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=timeout)
    if echo and p.returncode != 0:
        print(p.stdout, p.stderr, sep="\n")
    return p


def include_flags(include):
    """Compiler flags for cpdl's headers: -I of the source tree's include/ and of
    the build's generated headers (cpdl/version.h, beside the libcpdl.so under
    test: $CPDL_LIBRARY)."""
    flags = ["-I", include]
    built = os.path.join(os.path.dirname(os.environ.get("CPDL_LIBRARY", "")), "include")
    if os.path.isfile(os.path.join(built, "cpdl", "version.h")):
        flags += ["-I", built]
    return flags
