/* bench_prep.c — throughput of cpdl_prep_execute against memcpy of the same output size.
 *
 * Batch: B=1, S in {8K, 128K, 1M}; input_ids, labels, loss_mask (int64) and a 2-D int64
 * attention_mask, no position_ids (so they are synthesized for cp > 1). For each cp in
 * {2,4,8} it times preparing all cp shards into warm destination blocks, and memcpy of the
 * same number of bytes (source and destination also warm), best and median of the reps.
 * Usage: bench_prep [reps]   (default 15). Prints a table and one JSON line per case.
 */
#include "cpdl.h"

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
      const int cp = cps[c];
      cpdl_prep_params_t params;
      cpdl_prep_params_init(&params);
      params.cp_size = cp;
      cpdl_prep_plan_t *plan;
      int rc = cpdl_prep_plan_create(in, 4, &params, &plan);
      if (rc) {
        fprintf(stderr, "plan: %s: %s\n", cpdl_err_name(rc), cpdl_last_error());
        return 1;
      }
      const size_t rank_bytes = cpdl_prep_plan_rank_bytes(plan);
      /* output bytes: the fields' payload over all ranks (alignment gaps not counted) */
      size_t out_bytes = 0;
      for (int f = 0; f < cpdl_prep_plan_nfields(plan); f++)
        out_bytes += cpdl_prep_plan_field(plan, f)->nbytes * (size_t)cp;
      void *dst[8];
      int ranks[8];
      for (int r = 0; r < cp; r++) {
        ranks[r] = r;
        if (!(dst[r] = xalloc(rank_bytes)))
          return 1;
      }
      unsigned char *msrc = xalloc(out_bytes), *mdst = xalloc(out_bytes);
      if (!msrc || !mdst)
        return 1;
      double *t_prep = calloc((size_t)reps, sizeof(double)), *t_copy = calloc((size_t)reps, sizeof(double));
      if (!t_prep || !t_copy)
        return 1;
      /* warm-up, then alternate so both see the same machine state */
      if ((rc = cpdl_prep_execute(plan, in, 4, ranks, cp, dst, NULL)) != 0) {
        fprintf(stderr, "execute: %s: %s\n", cpdl_err_name(rc), cpdl_last_error());
        return 1;
      }
      memcpy(mdst, msrc, out_bytes);
      for (int k = 0; k < reps; k++) {
        double t0 = now_s();
        rc |= cpdl_prep_execute(plan, in, 4, ranks, cp, dst, NULL);
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
      char name[64];
      snprintf(name, sizeof name, "S=%lld,cp=%d", (long long)S, cp);
      printf("%-22s %10.2f %10.3f %10.2f %10.3f %10.2f %7.2f   (best: prep %.3f ms, memcpy %.3f ms)\n",
             name, (double)out_bytes / 1048576.0, prep_med * 1e3, prep_gbps, copy_med * 1e3, copy_gbps,
             prep_gbps / copy_gbps, prep_best * 1e3, copy_best * 1e3);
      printf("{\"case\":\"%s\",\"seq_len\":%lld,\"cp\":%d,\"out_bytes\":%zu,\"reps\":%d,"
             "\"prep_ms_best\":%.4f,\"prep_ms_median\":%.4f,\"memcpy_ms_best\":%.4f,"
             "\"memcpy_ms_median\":%.4f,\"prep_gbps\":%.3f,\"memcpy_gbps\":%.3f,\"ratio\":%.3f}\n",
             name, (long long)S, cp, out_bytes, reps, prep_best * 1e3, prep_med * 1e3, copy_best * 1e3,
             copy_med * 1e3, prep_gbps, copy_gbps, prep_gbps / copy_gbps);
      fflush(stdout);
      free(t_prep);
      free(t_copy);
      free(msrc);
      free(mdst);
      for (int r = 0; r < cp; r++)
        free(dst[r]);
      cpdl_prep_plan_destroy(plan);
    }
    free(ids);
    free(labels);
    free(loss);
    free(attn);
  }
  return status;
}
