"""_cli — the `cpdl` command of a pip-installed cpdl.

`pip install .` puts the cpdl executable in cpdl/_native/bin/ and its plugins
in cpdl/_native/cpdl/; this console-script entry replaces itself with that
executable, telling it where the plugins are (the executable links the
packaged libcpdl.so in cpdl/_native/, found through its RUNPATH $ORIGIN/..;
the path is set too so that a build's own search order cannot pick others).
"""
import os
import sys

_NATIVE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_native")


def main():
    exe = os.path.join(_NATIVE, "bin", "cpdl")
    if not os.path.exists(exe):
        sys.stderr.write("cpdl: the cpdl executable is not installed in %s; install the package "
                         "with `pip install .` from the repository, or use build/cpdl\n" % exe)
        return 2
    plugins = os.path.join(_NATIVE, "cpdl")
    old = os.environ.get("CPDL_PLUGIN_PATH")
    os.environ["CPDL_PLUGIN_PATH"] = plugins + (":" + old if old else "")
    os.execv(exe, [exe] + sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
