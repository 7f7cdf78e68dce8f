/* bench_schedule — balance and cost of the schedules of docs/schedule.md.
 *
 * Draws a global order of document lengths (lognormal, or the sequence
 * lengths of a Megatron .idx in a seeded shuffle), cuts it into global
 * batches with static thd's rule (cpdl__schedule_cut) and schedules every
 * batch as static, balanced and dynamic. Prints, per kind, the modeled rank
 * work's max/mean per step (mean, p50, p90, worst), the step-weighted ratio
 * sum(max)/sum(mean) (what a run's time is proportional to), the batches
 * that fell back to static, and the build's time per batch. A benchmark: it
 * prints numbers and asserts nothing. --batches FILE writes each batch's
 * piece lengths for bench/megatron_cp_schedule.py (Megatron-core's scheduler
 * on the same batches).
 *
 * usage: bench_schedule [--dp N] [--cp N] [--batch N] [--seq-len N]
 *          [--cost A,B] [--steps N] [--seed N] [--median N] [--sigma X]
 *          [--max N] [--idx PATH] [--batches FILE] [--repeat N]
 * Build times are per batch, this thread's CPU time, the best of --repeat (5)
 * builds of it.
 */
#include "schedule.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t rng_state = 1;
static uint64_t rng_next(void) { /* splitmix64 */
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}
static double rng_unit(void) { return ((double)(rng_next() >> 11) + 0.5) / 9007199254740992.0; }

/* This thread's CPU time: on a shared machine, time other jobs take the
 * core from it does not count (their cache pollution still does). */
static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int64_t parse_len(const char *text) {
  char *end;
  double v = strtod(text, &end);
  if (*end == 'K' || *end == 'k')
    v *= 1024, end++;
  else if (*end == 'M' || *end == 'm')
    v *= 1024 * 1024, end++;
  if (*end || v < 0) {
    fprintf(stderr, "bench_schedule: \"%s\" is not a length (N, NK or NM)\n", text);
    exit(2);
  }
  return (int64_t)v;
}

/* Sequence lengths of a Megatron MMIDIDX .idx (tokens), or exit. */
static int64_t *read_idx(const char *path, int64_t *n_out) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "bench_schedule: cannot open %s: %s\n", path, strerror(errno));
    exit(2);
  }
  unsigned char head[9 + 8 + 1 + 8 + 8];
  if (fread(head, 1, sizeof head, f) != sizeof head || memcmp(head, "MMIDIDX\0\0", 9) != 0) {
    fprintf(stderr, "bench_schedule: %s is not a Megatron .idx (no MMIDIDX header)\n", path);
    exit(2);
  }
  uint64_t n_seq;
  memcpy(&n_seq, head + 18, 8);
  if (n_seq == 0 || n_seq > (1ULL << 34)) {
    fprintf(stderr, "bench_schedule: %s claims %llu sequences\n", path, (unsigned long long)n_seq);
    exit(2);
  }
  int32_t *raw = malloc(n_seq * sizeof *raw);
  int64_t *lens = malloc(n_seq * sizeof *lens);
  if (!raw || !lens || fread(raw, sizeof *raw, n_seq, f) != n_seq) {
    fprintf(stderr, "bench_schedule: %s: cannot read %llu lengths\n", path, (unsigned long long)n_seq);
    exit(2);
  }
  fclose(f);
  for (uint64_t i = 0; i < n_seq; i++)
    lens[i] = raw[i] > 1 ? raw[i] - 1 : 0; /* pairs */
  free(raw);
  *n_out = (int64_t)n_seq;
  return lens;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double quantile(double *v, int n, double q) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  int i = (int)(q * (n - 1) + 0.5);
  return v[i];
}

int main(int argc, char **argv) {
  int dp = 4, cp = 2, batch = 1, steps = 100, repeat = 5;
  int64_t seq_len = 128 * 1024, median = 2048, max_len = 128 * 1024;
  double sigma = 1.5, cost_a = CPDL__SCHEDULE_COST_A, cost_b = CPDL__SCHEDULE_COST_B;
  const char *idx = NULL, *batches_path = NULL, *cost_text = NULL;
  for (int i = 1; i < argc; i += 2) { /* --option value */
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v) {
      fprintf(stderr, "bench_schedule: %s needs a value (see the usage at the top of bench_schedule.c)\n", a);
      return 2;
    }
    if (!strcmp(a, "--dp")) dp = atoi(v);
    else if (!strcmp(a, "--cp")) cp = atoi(v);
    else if (!strcmp(a, "--batch")) batch = atoi(v);
    else if (!strcmp(a, "--seq-len")) seq_len = parse_len(v);
    else if (!strcmp(a, "--steps")) steps = atoi(v);
    else if (!strcmp(a, "--repeat")) repeat = atoi(v) > 0 ? atoi(v) : 1;
    else if (!strcmp(a, "--seed")) rng_state = strtoull(v, NULL, 10);
    else if (!strcmp(a, "--median")) median = parse_len(v);
    else if (!strcmp(a, "--sigma")) sigma = atof(v);
    else if (!strcmp(a, "--max")) max_len = parse_len(v);
    else if (!strcmp(a, "--idx")) idx = v;
    else if (!strcmp(a, "--batches")) batches_path = v;
    else if (!strcmp(a, "--cost")) cost_text = v;
    else {
      fprintf(stderr, "bench_schedule: unknown option %s\n", a);
      return 2;
    }
  }
  if (cost_text && cpdl__schedule_cost_parse(cost_text, &cost_a, &cost_b)) {
    fprintf(stderr, "bench_schedule: %s\n", cpdl_last_error());
    return 2;
  }
  cpdl__schedule_params_t p = {CPDL__SCHEDULE_STATIC, dp, cp, batch, seq_len, 2 * cp, cost_a, cost_b};
  if (cpdl__schedule_check(&p)) {
    fprintf(stderr, "bench_schedule: %s\n", cpdl_last_error());
    return 2;
  }

  /* The global order: enough documents for `steps` batches (generous). */
  int64_t n_docs;
  int64_t *lens;
  if (idx) {
    int64_t n_file;
    int64_t *file = read_idx(idx, &n_file);
    n_docs = n_file;
    lens = file;
    for (int64_t i = n_docs - 1; i > 0; i--) { /* the seeded permutation */
      int64_t j = (int64_t)(rng_next() % (uint64_t)(i + 1)), t = lens[i];
      lens[i] = lens[j], lens[j] = t;
    }
  } else {
    double mean = (double)median * exp(sigma * sigma / 2);
    n_docs = (int64_t)((double)steps * dp * batch * seq_len / fmin(mean, (double)median * 2) * 1.5) + 1024;
    lens = malloc((size_t)n_docs * sizeof *lens);
    for (int64_t i = 0; i < n_docs; i++) {
      double z = sqrt(-2 * log(rng_unit())) * cos(6.283185307179586 * rng_unit());
      double v = (double)median * exp(sigma * z);
      lens[i] = v < 1 ? 1 : v > (double)max_len ? max_len : (int64_t)v;
    }
  }

  FILE *batches = NULL;
  if (batches_path && !(batches = fopen(batches_path, "w"))) {
    fprintf(stderr, "bench_schedule: cannot write %s: %s\n", batches_path, strerror(errno));
    return 2;
  }
  cpdl__schedule_t *sched[3];
  for (int k = 0; k < 3; k++) {
    p.kind = (cpdl__schedule_kind_t)k;
    if (cpdl__schedule_create(&p, &sched[k])) {
      fprintf(stderr, "bench_schedule: %s\n", cpdl_last_error());
      return 1;
    }
  }
  const int W = dp * cp;
  const int64_t cap = (int64_t)dp * batch * seq_len / p.pad_multiple;
  cpdl__schedule_piece_t *pieces = malloc((size_t)cap * sizeof *pieces);
  double *ratio[3], *build_us[3], sum_max[3] = {0}, sum_mean[3] = {0};
  int fallbacks[3] = {0};
  for (int k = 0; k < 3; k++)
    ratio[k] = malloc((size_t)steps * sizeof(double)), build_us[k] = malloc((size_t)steps * sizeof(double));
  double *cut_us = malloc((size_t)steps * sizeof(double)), pieces_sum = 0;
  double *bound = malloc((size_t)steps * sizeof(double)), bound_sum = 0;
  int64_t pieces_min = INT64_MAX, pieces_max = 0, doc = 0, off = 0;
  int done = 0;
  for (int step = 0; step < steps; step++) {
    int64_t n, nd, no;
    double t0 = now_us();
    int64_t rows = cpdl__schedule_cut(&p, lens + doc, n_docs - doc, doc, off, pieces, cap, &n, &nd, &no);
    cut_us[step] = now_us() - t0;
    if (rows < (int64_t)dp * batch)
      break; /* the order ran out: a partial batch is not a step */
    doc += nd, off = no;
    for (int k = 0; k < 3; k++) {
      /* The best of `repeat` builds of the same batch: on a shared machine
       * the minimum is the computation's cost, the rest is other jobs. */
      build_us[k][step] = INFINITY;
      for (int rep = 0; rep < repeat; rep++) {
        t0 = now_us();
        if (cpdl__schedule_build(sched[k], pieces, n)) {
          fprintf(stderr, "bench_schedule: step %d: %s\n", step, cpdl_last_error());
          return 1;
        }
        build_us[k][step] = fmin(build_us[k][step], now_us() - t0);
      }
      double max = 0;
      for (int r = 0; r < W; r++)
        max = fmax(max, sched[k]->rank_work[r]);
      double mean = sched[k]->total_work / W;
      ratio[k][step] = max / mean;
      sum_max[k] += max, sum_mean[k] += mean;
      fallbacks[k] += sched[k]->fell_back;
    }
    /* No layout of whole pieces onto replicas beats max(mean, largest piece):
     * the bound of static and balanced (dynamic's is the mean, 1). */
    double largest = 0;
    for (int64_t i = 0; i < sched[0]->n_pieces; i++)
      largest = fmax(largest, cpdl__schedule_cost(&p, sched[0]->pieces[i].len));
    bound[done] = fmax(1.0, largest / (sched[0]->total_work / dp));
    bound_sum += bound[done];
    pieces_sum += (double)sched[0]->n_pieces;
    if (sched[0]->n_pieces < pieces_min)
      pieces_min = sched[0]->n_pieces;
    if (sched[0]->n_pieces > pieces_max)
      pieces_max = sched[0]->n_pieces;
    if (batches) {
      fprintf(batches, "%d %d %d %lld %.17g %.17g", dp, cp, batch, (long long)seq_len, cost_a, cost_b);
      for (int64_t i = 0; i < sched[0]->n_pieces; i++)
        fprintf(batches, " %lld", (long long)sched[0]->pieces[i].len);
      fprintf(batches, "\n");
    }
    done++;
  }
  if (batches)
    fclose(batches);
  if (done == 0) {
    fprintf(stderr, "bench_schedule: not one full global batch in %lld documents\n", (long long)n_docs);
    return 1;
  }
  printf("bench_schedule: dp=%d cp=%d batch=%d seq_len=%lld cost=%.0f,%.0f steps=%d lengths=", dp, cp, batch,
         (long long)seq_len, cost_a, cost_b, done);
  if (idx)
    printf("idx:%s (%lld documents, shuffled)\n", idx, (long long)n_docs);
  else
    printf("lognormal(median %lld, sigma %.2f, clipped to [1, %lld])\n", (long long)median, sigma,
           (long long)max_len);
  printf("pieces per global batch: mean %.1f, min %lld, max %lld; cut %.1f us/batch\n", pieces_sum / done,
         (long long)pieces_min, (long long)pieces_max, quantile(cut_us, done, 0.5));
  printf("%-9s %8s %8s %8s %8s %14s %9s %12s %12s\n", "schedule", "mean", "p50", "p90", "worst",
         "sum(max)/mean", "fallback", "build p50us", "build p99us");
  for (int k = 0; k < 3; k++) {
    double m = 0;
    for (int s = 0; s < done; s++)
      m += ratio[k][s];
    double worst = quantile(ratio[k], done, 1.0);
    printf("%-9s %8.3f %8.3f %8.3f %8.3f %14.3f %9d %12.1f %12.1f\n",
           cpdl__schedule_name((cpdl__schedule_kind_t)k), m / done, quantile(ratio[k], done, 0.5),
           quantile(ratio[k], done, 0.9), worst, sum_max[k] / sum_mean[k], fallbacks[k],
           quantile(build_us[k], done, 0.5), quantile(build_us[k], done, 0.99));
  }
  printf("%-9s %8.3f %8.3f %8.3f %8.3f   max(1, largest piece / mean replica work): no layout of\n"
         "          whole pieces onto replicas (static, balanced) beats it; dynamic's bound is 1\n",
         "bound", bound_sum / done, quantile(bound, done, 0.5), quantile(bound, done, 0.9),
         quantile(bound, done, 1.0));
  free(bound);
  for (int k = 0; k < 3; k++)
    cpdl__schedule_destroy(sched[k]), free(ratio[k]), free(build_us[k]);
  free(cut_us), free(pieces), free(lens);
  return 0;
}
