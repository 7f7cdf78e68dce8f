/* stats.c — clock and latency percentiles shared by `cpdl run` and bench_ways. */
#include "cli.h"

#include <stdlib.h>
#include <time.h>

double cli_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

void cli_percentiles(double *values, size_t n, double *p50, double *p99) {
  qsort(values, n, sizeof *values, cmp_double);
  /* Nearest rank on the sorted samples; 0 when there are none. */
  *p50 = n ? values[(size_t)(0.50 * (double)(n - 1) + 0.5)] : 0;
  *p99 = n ? values[(size_t)(0.99 * (double)(n - 1) + 0.5)] : 0;
}
