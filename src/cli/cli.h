/* cli.h — subcommands of the cpdl tool, one file each; src/cli/cpdl.c's main
 * dispatches. The tool is a client of libcpdl.so: the public API and
 * cpdl/tools.h, never the internals. Each takes argv with argv[0] = the subcommand's name and
 * returns the process exit status: 0, 1 (the job failed), 2 (usage). */
#ifndef CPDL_CLI_H
#define CPDL_CLI_H

#include "cpdl.h"
#include <stdbool.h>
#include <stddef.h>

int cpdl_cli_run(int argc, char **argv);     /* run.c: under mpirun */
int cpdl_cli_bench(int argc, char **argv);   /* bench_exec.c: runs bench/bench_ways.c's program */
/* `cpdl inspect URI [--json] [--limit N] [--show K]` */
int cpdl_cli_inspect(int argc, char **argv); /* inspect.c */
int cpdl_cli_sweep(int argc, char **argv);   /* sweep.c: `cpdl sweep [--remove]` */

/* options.c: options shared by run and bench_ways (bench/, which compiles
 * options.c and stats.c too). Every `--key value` or
 * `--key=value` whose key (with '_' for '-') is a configuration key sets it;
 * the flags below are the CLI's own. Order: defaults, CPDL_* environment,
 * command line. */
typedef struct cli_flags {
  bool json;              /* --json: only the JSON summary on stdout */
  bool report_binding;    /* --report-binding */
  bool quiet;             /* --quiet: no progress */
  bool touch;             /* bench --touch: read every byte of the slice */
  const char *dump;       /* --dump DIR */
  const char *dump_collated; /* --dump-collated DIR */
  const char *save_state; /* --save-state FILE */
  const char *resume;     /* --resume FILE */
  const char *ways;       /* bench: --ways naive,bcast,scatter,cpdl */
  const char *seq_lens;   /* bench: --seq-lens 8K,128K,1M */
  int reps;               /* bench: --reps */
} cli_flags_t;
/* \return 0; 1 after printing the usage for --help (exit 0); or 2 after
 * printing the error (usage error). */
int cpdl_cli_options(int argc, char **argv, cpdl_config_t *cfg, cli_flags_t *flags,
                     const char *usage);

/* stats.c: a monotonic clock in seconds, and p50/p99 of samples (sorts them). */
double cli_now_s(void);
void cli_percentiles(double *values, size_t n, double *p50, double *p99);

#endif /* CPDL_CLI_H */
