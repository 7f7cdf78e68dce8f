#!/bin/sh
# check.sh BUILD_DIR — install cpdl from BUILD_DIR into a temporary prefix,
# then build and run a downstream project against it with find_package(cpdl)
# and check the pkg-config file and the installed plugins.
set -eu
build=$1
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
for p in synthetic llmc megatron npy; do
  [ -f "$tmp/prefix/lib/cpdl/cpdl-$p.so" ] || { echo "plugin cpdl-$p.so not installed"; exit 1; }
done
[ -f "$tmp/prefix/include/cpdl/plugin.h" ] || { echo "cpdl/plugin.h not installed"; exit 1; }
PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig" pkg-config --exists cpdl || { echo "pkg-config cannot find cpdl"; exit 1; }
PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig" pkg-config --libs cpdl | grep -q -- "-lcpdl" || { echo "cpdl.pc lacks -lcpdl"; exit 1; }
cmake -S "$here" -B "$tmp/build" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/build" >/dev/null
LD_LIBRARY_PATH="$tmp/prefix/lib" "$tmp/build/consumer"
LD_LIBRARY_PATH="$tmp/prefix/lib" "$tmp/build/consumer_prep"
if ldd "$tmp/prefix/lib/libcpdl_prep.so" | grep -q libmpi; then echo "libcpdl_prep.so links libmpi"; exit 1; fi
