/* cpdl — the command-line tool: dispatches to one file per subcommand. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static const char usage[] =
    "usage: cpdl <command> [options]\n"
    "  run      deliver batches to every rank (under mpirun); --help for options\n"
    "  bench    naive / bcast / scatter / cpdl side by side (under mpirun)\n"
    "  inspect  summarize a data source: cpdl inspect URI\n"
    "  sweep    list leftover cpdl segments of dead jobs; --remove deletes them\n";

int main(int argc, char **argv) {
  if (argc < 2) {
    fputs(usage, stderr);
    return 2;
  }
  const char *cmd = argv[1];
  if (strcmp(cmd, "run") == 0)
    return cpdl_cli_run(argc - 1, argv + 1);
  if (strcmp(cmd, "bench") == 0)
    return cpdl_cli_bench(argc - 1, argv + 1);
  if (strcmp(cmd, "inspect") == 0)
    return cpdl_cli_inspect(argc - 1, argv + 1);
  if (strcmp(cmd, "sweep") == 0)
    return cpdl_cli_sweep(argc - 1, argv + 1);
  if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
    fputs(usage, stdout);
    return 0;
  }
  fprintf(stderr, "cpdl: unknown command '%s'\n%s", cmd, usage);
  return 2;
}
