"""testutil — the pass/fail tally shared by the plain-script Python tests.

Each script calls report() once per check and ends with run(tests), which runs
the test functions (an exception counts as one failure with its traceback),
prints "N passed, M failed" and returns the exit status. Scripts import it
from their own directory (sys.path[0] when run as `python3 tests/python/x.py`).
"""
import traceback

passed = 0
failed = 0


def report(ok, what, detail=""):
    """Count one check; print what failed and why."""
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print("FAIL %s %s" % (what, detail))


def run(tests):
    """Run each test function, print the tally, return 0 or 1 for sys.exit."""
    for test in tests:
        try:
            test()
        except Exception:  # noqa: BLE001 — an escaping exception is a failed test
            report(False, test.__name__, traceback.format_exc())
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0
