/* sweep.c — `cpdl sweep [--remove]`: leftover segments of dead cpdl jobs.
 * Only segments with cpdl's prefix, the caller's uid and a creator provably
 * gone (its pid absent in the PID namespace and boot the name records, which
 * must be the sweep's own) are listed or removed; one whose creator cannot
 * be judged from here is kept and listed with the reason (the library
 * decides: cpdl_tools_sweep, cpdl/tools.h). */
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
             "  --remove deletes them. A segment made in another PID namespace or boot\n"
             "  (another container of the pod sharing /dev/shm) is never removed: its\n"
             "  creator cannot be seen from here; run the sweep where it was made\n");
      return 0;
    } else {
      fprintf(stderr, "usage: cpdl sweep [--remove]\n");
      return 2;
    }
  }
  int unknown = 0;
  int n = cpdl_tools_sweep(remove, stdout, &unknown);
  if (n < 0) {
    fprintf(stderr, "cpdl sweep: %s\n", cpdl_last_error());
    return 1;
  }
  printf("%d leftover segment%s %s\n", n, n == 1 ? "" : "s",
         remove ? "removed" : "found (use --remove to delete)");
  if (unknown)
    printf("%d segment%s kept: %s creator cannot be proven dead from here (see above)\n",
           unknown, unknown == 1 ? "" : "s", unknown == 1 ? "its" : "their");
  return 0;
}
