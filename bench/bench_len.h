/* bench/bench_len.h — the benchmarks' reading of one length of a list such as
 * "128K,1M" (a decimal count, optionally K = 2^10 or M = 2^20). Header-only:
 * the benchmark programs link nothing of each other's. */
#ifndef CPDL_BENCH_LEN_H
#define CPDL_BENCH_LEN_H

#include <stdint.h>
#include <stdlib.h>

/* The length at s; *end is left after it (and its suffix). */
static inline int64_t bench_parse_len(const char *s, char **end) {
  int64_t v = strtoll(s, end, 10);
  if (**end == 'K' || **end == 'k')
    v *= 1024, (*end)++;
  else if (**end == 'M' || **end == 'm')
    v *= 1024 * 1024, (*end)++;
  return v;
}

#endif
