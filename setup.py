"""setup.py — `pip install .` of the cpdl Python package with its native parts.

The package (python/cpdl) is pure Python over ctypes; what makes it installable
is that the build step runs CMake on this repository and copies libcpdl.so and
libcpdl_prep.so into cpdl/_native/ and the data-source plugins into cpdl/_native/cpdl/, where the
library looks for them (the directory beside libcpdl.so). `import cpdl` then
works from any directory without PYTHONPATH, CPDL_LIBRARY or CPDL_PLUGIN_PATH.
Needs cmake, a C compiler, Open MPI and hwloc development files (the same as a
source build: scripts/install-deps).
"""
import glob
import os
import re
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

ROOT = os.path.dirname(os.path.abspath(__file__))


def cmake_version():
    """The version of CMakeLists.txt's project(cpdl VERSION x.y.z): the one
    place it is written (the C library and cpdl.__version__ read it too)."""
    with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
        found = re.search(r"project\(\s*cpdl\s+VERSION\s+([0-9]+\.[0-9]+\.[0-9]+)", f.read())
    if not found:
        raise RuntimeError("CMakeLists.txt has no project(cpdl VERSION x.y.z)")
    return found.group(1)


class BuildWithNative(build_py):
    """build_py, then the CMake build of libcpdl.so and the plugins."""

    def run(self):
        super().run()
        build_dir = os.path.join(ROOT, "build-python")
        jobs = str(os.cpu_count() or 2)
        subprocess.check_call(["cmake", "-S", ROOT, "-B", build_dir,
                               "-DCMAKE_BUILD_TYPE=Release", "-DCPDL_BUILD_TESTS=OFF"])
        subprocess.check_call(["cmake", "--build", build_dir, "-j", jobs,
                               "--target", "cpdl", "cpdl_prep", "cpdl_plugins", "cpdl_cli"])
        native = os.path.join(self.build_lib, "cpdl", "_native")
        plugins = os.path.join(native, "cpdl")
        os.makedirs(plugins, exist_ok=True)
        # The real file under the plain name: ctypes loads it by path.
        # libcpdl_prep.so: the MPI-free layer cpdl.shard_batch loads alone.
        for lib in ("libcpdl.so", "libcpdl_prep.so"):
            shutil.copyfile(os.path.realpath(os.path.join(build_dir, lib)),
                            os.path.join(native, lib))
        # The cpdl executable links libcpdl.so by its soname (libcpdl.so.<major>),
        # found beside it through its RUNPATH $ORIGIN/..: that name too.
        soname = os.readlink(os.path.join(build_dir, "libcpdl.so"))
        shutil.copyfile(os.path.join(native, "libcpdl.so"), os.path.join(native, soname))
        found = glob.glob(os.path.join(build_dir, "plugins", "cpdl-*.so"))
        if not found:
            raise RuntimeError("the CMake build produced no data-source plugins in %s"
                               % os.path.join(build_dir, "plugins"))
        for so in found:
            shutil.copyfile(so, os.path.join(plugins, os.path.basename(so)))
        # The cpdl command (run with `cpdl` through the console script below).
        bindir = os.path.join(native, "bin")
        os.makedirs(bindir, exist_ok=True)
        shutil.copy2(os.path.join(build_dir, "cpdl"), os.path.join(bindir, "cpdl"))


class NativeDistribution(Distribution):
    """The wheel carries native code: tag it for this platform, not py3-none-any."""

    def has_ext_modules(self):
        return True


setup(
    name="cpdl",
    version=cmake_version(),
    description="Context-parallel data loading through node-local shared memory",
    package_dir={"": "python"},
    packages=["cpdl"],
    python_requires=">=3.8",
    install_requires=["numpy"],
    distclass=NativeDistribution,
    cmdclass={"build_py": BuildWithNative},
    entry_points={"console_scripts": ["cpdl = cpdl._cli:main"]},
    zip_safe=False,
)
