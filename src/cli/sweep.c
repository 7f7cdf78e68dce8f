/* sweep.c — `cpdl sweep [--remove]`: leftover segments of dead cpdl jobs.
 * Only segments with cpdl's prefix, the caller's uid and a creator pid that
 * no longer exists are listed or removed (the library decides:
 * cpdl_tools_sweep, cpdl/tools.h). */
#include "cli.h"
#include "cpdl/tools.h"

#include <stdio.h>
#include <string.h>

int cpdl_cli_sweep(int argc, char **argv) {
  bool remove = false;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--remove") == 0) {
      remove = true;
    } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      printf("usage: cpdl sweep [--remove]\n"
             "  lists leftover cpdl segments in /dev/shm whose creator process is gone;\n"
             "  --remove deletes them\n");
      return 0;
    } else {
      fprintf(stderr, "usage: cpdl sweep [--remove]\n");
      return 2;
    }
  }
  int n = cpdl_tools_sweep(remove, stdout);
  if (n < 0) {
    fprintf(stderr, "cpdl sweep: %s\n", cpdl_last_error());
    return 1;
  }
  printf("%d leftover segment%s %s\n", n, n == 1 ? "" : "s",
         remove ? "removed" : "found (use --remove to delete)");
  return 0;
}
