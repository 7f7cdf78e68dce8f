/* bench_prep.c — throughput of cpdl_prep_execute against memcpy of the same output size.
 *
 * Batch: B=1, S in {8K, 128K, 1M}; input_ids, labels, loss_mask (int64) and a 2-D int64
 * attention_mask, no position_ids (so they are synthesized for cp > 1). For each cp in
 * {2,4,8} it times preparing all cp shards into warm destination blocks, and memcpy of the
 * same number of bytes (source and destination also warm), best and median of the reps.
 * Then mode thd at S = 1M, cp = 8 (bench_thd). Usage: bench_prep [reps]   (default 15). Prints a table and one JSON line per case.
 */
#include "cpdl/prep.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void *xalloc(size_t bytes) {
  void *p = NULL;
  if (posix_memalign(&p, 4096, bytes ? bytes : 64) != 0) {
    fprintf(stderr, "bench_prep: out of memory for %zu bytes\n", bytes);
    return NULL;
  }
  memset(p, 1, bytes); /* fault the pages in: timings are of warm buffers */
  return p;
}

/* Times preparing all cp shards of `in` against memcpy of the same output bytes; prints a
 * table line and a JSON line. \return 0, or 1 on a failure. */
static int bench_case(const char *name, const cpdl_tensor_t *in, int n_in, int cp,
                      cpdl_mode_t mode, int reps) {
  int status = 0;
  const int64_t S = in[0].shape[1];
  cpdl_prep_params_t params;
  cpdl_prep_params_init(&params);
  params.cp_size = cp;
  params.mode = mode;
  cpdl_prep_plan_t *plan;
  int rc = cpdl_prep_plan_create(in, n_in, &params, &plan);
  if (rc) {
    fprintf(stderr, "plan: %s: %s\n", cpdl_err_name(rc), cpdl_last_error());
    return 1;
  }
  const size_t rank_bytes = cpdl_prep_plan_rank_bytes(plan);
  const size_t shared_bytes = cpdl_prep_plan_shared_bytes(plan);
  /* output bytes: the fields' payload over all ranks, shared fields once (alignment
   * gaps not counted) */
  size_t out_bytes = 0;
  for (int f = 0; f < cpdl_prep_plan_nfields(plan); f++) {
    const cpdl_prep_field_t *fd = cpdl_prep_plan_field(plan, f);
    out_bytes += fd->nbytes * (fd->shared ? 1 : (size_t)cp);
  }
  void *dst[8];
  int ranks[8];
  for (int r = 0; r < cp; r++) {
    ranks[r] = r;
    if (!(dst[r] = xalloc(rank_bytes)))
      return 1;
  }
  void *shared = shared_bytes ? xalloc(shared_bytes) : NULL;
  unsigned char *msrc = xalloc(out_bytes), *mdst = xalloc(out_bytes);
  if (!msrc || !mdst || (shared_bytes && !shared))
    return 1;
  double *t_prep = calloc((size_t)reps, sizeof(double)), *t_copy = calloc((size_t)reps, sizeof(double));
  if (!t_prep || !t_copy)
    return 1;
  /* warm-up, then alternate so both see the same machine state */
  if ((rc = cpdl_prep_execute(plan, in, n_in, ranks, cp, dst, shared)) != 0) {
    fprintf(stderr, "execute: %s: %s\n", cpdl_err_name(rc), cpdl_last_error());
    return 1;
  }
  memcpy(mdst, msrc, out_bytes);
  for (int k = 0; k < reps; k++) {
    double t0 = now_s();
    rc |= cpdl_prep_execute(plan, in, n_in, ranks, cp, dst, shared);
    double t1 = now_s();
    memcpy(mdst, msrc, out_bytes);
    __asm__ volatile("" : : "r"(mdst) : "memory"); /* keep the copy */
    double t2 = now_s();
    t_prep[k] = t1 - t0;
    t_copy[k] = t2 - t1;
  }
  if (rc)
    status = 1;
  qsort(t_prep, (size_t)reps, sizeof(double), cmp_double);
  qsort(t_copy, (size_t)reps, sizeof(double), cmp_double);
  double prep_best = t_prep[0], prep_med = t_prep[reps / 2];
  double copy_best = t_copy[0], copy_med = t_copy[reps / 2];
  double prep_gbps = (double)out_bytes / prep_med * 1e-9, copy_gbps = (double)out_bytes / copy_med * 1e-9;
  printf("%-22s %10.2f %10.3f %10.2f %10.3f %10.2f %7.2f   (best: prep %.3f ms, memcpy %.3f ms)\n",
         name, (double)out_bytes / 1048576.0, prep_med * 1e3, prep_gbps, copy_med * 1e3, copy_gbps,
         prep_gbps / copy_gbps, prep_best * 1e3, copy_best * 1e3);
  printf("{\"case\":\"%s\",\"mode\":\"%s\",\"seq_len\":%lld,\"cp\":%d,\"out_bytes\":%zu,\"reps\":%d,"
         "\"prep_ms_best\":%.4f,\"prep_ms_median\":%.4f,\"memcpy_ms_best\":%.4f,"
         "\"memcpy_ms_median\":%.4f,\"prep_gbps\":%.3f,\"memcpy_gbps\":%.3f,\"ratio\":%.3f}\n",
         name, cpdl_mode_name(mode), (long long)S, cp, out_bytes, reps, prep_best * 1e3, prep_med * 1e3,
         copy_best * 1e3, copy_med * 1e3, prep_gbps, copy_gbps, prep_gbps / copy_gbps);
  fflush(stdout);
  free(t_prep);
  free(t_copy);
  free(msrc);
  free(mdst);
  free(shared);
  for (int r = 0; r < cp; r++)
    free(dst[r]);
  cpdl_prep_plan_destroy(plan);
  return status;
}

/* mode thd at S = 1M, cp = 8: one packed row of documents of random lengths (mean ~4K
 * tokens), each padded to a multiple of 2*cp; four int64 sequence fields, as the pack
 * collate gives them, and the three int32 cu_seqlens fields. */
static int bench_thd(int reps) {
  const int64_t S = 1048576;
  const int cp = 8, m = 2 * cp;
  const size_t field_bytes = (size_t)S * sizeof(int64_t);
  int64_t *ids = xalloc(field_bytes), *labels = xalloc(field_bytes), *loss = xalloc(field_bytes),
          *pos = xalloc(field_bytes);
  int32_t *cu = xalloc((size_t)(S / m + 1) * 4), *cu_padded = xalloc((size_t)(S / m + 1) * 4);
  if (!ids || !labels || !loss || !pos || !cu || !cu_padded)
    return 1;
  int64_t n = 0, at = 0, max_len = 0;
  uint64_t x = 88172645463325252ull;
  cu[0] = cu_padded[0] = 0;
  while (at < S) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17; /* xorshift: document lengths 1 .. 8K */
    int64_t len = 1 + (int64_t)(x % 8192), padded = (len + m - 1) / m * m;
    if (padded > S - at)
      len = padded = S - at;
    for (int64_t u = 0; u < padded; u++) {
      ids[at + u] = u < len ? (int64_t)((x + (uint64_t)u) % 50000) : 0;
      labels[at + u] = u < len ? ids[at + u] : -100;
      loss[at + u] = u < len;
      pos[at + u] = u;
    }
    n++;
    cu[n] = cu[n - 1] + (int32_t)len;
    cu_padded[n] = (int32_t)(at + padded);
    max_len = padded > max_len ? padded : max_len;
    at += padded;
  }
  int32_t max_seqlen = (int32_t)max_len;
  cpdl_tensor_t in[7] = {
      {.name = "input_ids", .dtype = CPDL_DTYPE_INT64, .ndim = 2, .shape = {1, S}, .data = ids},
      {.name = "labels", .dtype = CPDL_DTYPE_INT64, .ndim = 2, .shape = {1, S}, .data = labels},
      {.name = "position_ids", .dtype = CPDL_DTYPE_INT64, .ndim = 2, .shape = {1, S}, .data = pos},
      {.name = "loss_mask", .dtype = CPDL_DTYPE_INT64, .ndim = 2, .shape = {1, S}, .data = loss},
      {.name = "cu_seqlens", .dtype = CPDL_DTYPE_INT32, .ndim = 1, .shape = {n + 1}, .data = cu},
      {.name = "cu_seqlens_padded", .dtype = CPDL_DTYPE_INT32, .ndim = 1, .shape = {n + 1},
       .data = cu_padded},
      {.name = "max_seqlen", .dtype = CPDL_DTYPE_INT32, .ndim = 1, .shape = {1}, .data = &max_seqlen},
  };
  char name[64];
  snprintf(name, sizeof name, "thd S=%lld,cp=%d", (long long)S, cp);
  int status = bench_case(name, in, 7, cp, CPDL_MODE_THD, reps);
  free(ids);
  free(labels);
  free(loss);
  free(pos);
  free(cu);
  free(cu_padded);
  return status;
}

int main(int argc, char **argv) {
  int reps = argc > 1 ? atoi(argv[1]) : 15;
  if (reps < 1)
    reps = 1;
  const int64_t seqs[] = {8192, 131072, 1048576};
  const int cps[] = {2, 4, 8};
  int status = 0;

  printf("%-22s %10s %10s %10s %10s %10s %7s\n", "case", "out_MiB", "prep_ms", "prep_GB/s",
         "memcpy_ms", "memcpy_GB/s", "ratio");
  for (size_t s = 0; s < sizeof seqs / sizeof seqs[0]; s++) {
    const int64_t S = seqs[s];
    const size_t field_bytes = (size_t)S * sizeof(int64_t);
    int64_t *ids = xalloc(field_bytes), *labels = xalloc(field_bytes), *loss = xalloc(field_bytes),
            *attn = xalloc(field_bytes);
    if (!ids || !labels || !loss || !attn)
      return 1;
    for (int64_t i = 0; i < S; i++) {
      ids[i] = (i * 7919) % 50000;
      labels[i] = (i * 104729) % 50000;
      loss[i] = i % 5 != 0;
      attn[i] = i < S - 100; /* a padded tail */
    }
    cpdl_tensor_t in[4] = {
        {.name = "input_ids", .dtype = CPDL_DTYPE_INT64, .ndim = 2, .shape = {1, S}, .data = ids},
        {.name = "labels", .dtype = CPDL_DTYPE_INT64, .ndim = 2, .shape = {1, S}, .data = labels},
        {.name = "loss_mask", .dtype = CPDL_DTYPE_INT64, .ndim = 2, .shape = {1, S}, .data = loss},
        {.name = "attention_mask", .dtype = CPDL_DTYPE_INT64, .ndim = 2, .shape = {1, S}, .data = attn},
    };
    for (size_t c = 0; c < sizeof cps / sizeof cps[0]; c++) {
      char name[64];
      snprintf(name, sizeof name, "S=%lld,cp=%d", (long long)S, cps[c]);
      if (bench_case(name, in, 4, cps[c], CPDL_MODE_CONTIGUOUS, reps))
        status = 1;
    }
    free(ids);
    free(labels);
    free(loss);
    free(attn);
  }
  if (bench_thd(reps))
    status = 1;
  return status;
}
