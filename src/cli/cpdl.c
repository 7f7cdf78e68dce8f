/* cpdl — the command-line tool. Subcommands: run, inspect, bench, sweep. */
#include "internal.h"

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "--help") == 0) {
    printf("usage: cpdl <run|inspect|bench|sweep> [options]\n");
    return argc < 2 ? 2 : 0;
  }
  fprintf(stderr, "cpdl: unknown subcommand '%s'\n", argv[1]);
  return 2;
}
