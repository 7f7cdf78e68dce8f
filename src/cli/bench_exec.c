/* bench_exec.c — `cpdl bench`: runs the baselines' benchmark, bench/bench_ways.c
 * (naive / bcast / scatter / cpdl side by side). That benchmark is its own
 * program because its baselines need the loader's internals (the mesh, the
 * feed at a cursor, the preparation parameters) without the loader, and the
 * cpdl tool is a client of libcpdl.so. This command replaces itself with
 * $CPDL_BENCH_WAYS, else the bench_ways beside this executable (the build
 * tree), passing every argument on; under mpirun each rank does so before
 * MPI is initialized. */
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int cpdl_cli_bench(int argc, char **argv) {
  (void)argc;
  char path[PATH_MAX];
  const char *env = getenv("CPDL_BENCH_WAYS");
  if (env && *env) {
    snprintf(path, sizeof path, "%s", env);
  } else {
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
    if (n < 0) {
      fprintf(stderr, "cpdl bench: cannot find this executable (/proc/self/exe): %s\n",
              strerror(errno));
      return 1;
    }
    path[n] = '\0';
    char *slash = strrchr(path, '/');
    size_t dir = slash ? (size_t)(slash - path) + 1 : 0;
    if (dir + sizeof "bench_ways" > sizeof path) {
      fprintf(stderr, "cpdl bench: the path of this executable is too long\n");
      return 1;
    }
    memcpy(path + dir, "bench_ways", sizeof "bench_ways");
  }
  argv[0] = path;
  execv(path, argv);
  fprintf(stderr, "cpdl bench: cannot run %s: %s; the baselines' benchmark is bench_ways "
          "(bench/bench_ways.c), built beside build/cpdl and not installed: run it from the "
          "build tree, or set CPDL_BENCH_WAYS to its path\n", path, strerror(errno));
  return 1;
}
