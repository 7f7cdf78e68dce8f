/* bench_leader.c — the group leader's throughput against the machine's memory bandwidth, in
 * one run: for each S and each thread count t, the t-thread memcpy of one step's prepared
 * bytes, and the loader threads (src/producer.c, threads=t: collate + prepare into the ring)
 * running flat out for a consumer that takes each step at once. No MPI: the ring lies in an
 * anonymous mapping of this process and the main thread is every CP rank's consumer, so
 * what is timed is the producer alone. Both rates count the same bytes (every CP rank's
 * block plus the shared one); prep/memcpy is the ratio to the same t's memcpy and x1 the
 * speed-up over t = 1. On a loaded machine the wall clock says little, so it also reports
 * the loader threads' CPU time per step (cpu_ms/step: does the split cost work?), the
 * busiest thread's (busiest_ms: the step's critical path if every thread had a core, from
 * /proc/self/task/<tid>/schedstat) and the rate that critical path would give
 * (GB/s_1core_each = step bytes / busiest_ms).
 * Usage: bench_leader [--threads 1,2,4,8] [--seq-lens 128K,1M] [--steps N] [--reps N]
 *                     [--config "batch=8 cp=2 mode=contiguous collate=pack slots=2 ..."]
 * (defaults: threads 1,2 and up to 8 as the cores allow, S 128K,1M, batch 8, cp 2, slots and
 * collate sets sized as the loader sizes them (sizing.c: columns slots, sets),
 * steps 8 after 2 warm-up steps, 5 memcpy reps). Prints a table, then one JSON line per row.
 */
#include "internal.h"
#include "cpdl/tools.h"
#include "bench_len.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define WARMUP 4
#define MAX_T CPDL__MAX_THREADS
#define MAX_ROWS 64

static double clock_s(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double now_s(void) { return clock_s(CLOCK_MONOTONIC); }

/* CPU seconds of every thread but the calling one (the loader threads, here). */
static double others_cpu_s(void) {
  return clock_s(CLOCK_PROCESS_CPUTIME_ID) - clock_s(CLOCK_THREAD_CPUTIME_ID);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* On-CPU nanoseconds of each loader thread (comm "cpdl-loader<t>", schedstat's first
 * field) into ns[t]; \return how many were found. */
static int loader_cpu_ns(unsigned long long ns[MAX_T]) {
  memset(ns, 0, MAX_T * sizeof *ns);
  DIR *d = opendir("/proc/self/task");
  int found = 0;
  if (!d)
    return 0;
  for (struct dirent *e; (e = readdir(d));) {
    if (e->d_name[0] == '.')
      continue;
    char path[300], comm[32] = "";
    snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
    FILE *f = fopen(path, "r");
    if (!f)
      continue;
    int t = -1;
    if (fgets(comm, sizeof comm, f) && sscanf(comm, "cpdl-loader%d", &t) == 1 && t >= 0 &&
        t < MAX_T) {
      snprintf(path, sizeof path, "/proc/self/task/%s/schedstat", e->d_name);
      FILE *g = fopen(path, "r");
      if (g && fscanf(g, "%llu", &ns[t]) == 1)
        found++;
      if (g)
        fclose(g);
    }
    fclose(f);
  }
  closedir(d);
  return found;
}

/* ---- t-thread memcpy: each thread copies its 1/t of the bytes, between two barriers ---- */

typedef struct copier {
  pthread_barrier_t *start, *done;
  unsigned char *dst;
  const unsigned char *src;
  size_t bytes;
  int reps;
} copier_t;

static void *copier_main(void *arg) {
  copier_t *c = arg;
  for (int k = 0; k < c->reps; k++) {
    pthread_barrier_wait(c->start);
    memcpy(c->dst, c->src, c->bytes);
    pthread_barrier_wait(c->done);
  }
  return NULL;
}

/* Median GB/s of `reps` t-thread copies of `bytes` (buffers touched first). */
static double memcpy_gbps(size_t bytes, int t, int reps) {
  unsigned char *src = malloc(bytes), *dst = malloc(bytes);
  double *secs = calloc((size_t)reps, sizeof *secs);
  if (!src || !dst || !secs) {
    fprintf(stderr, "bench_leader: out of memory for two buffers of %zu bytes\n", bytes);
    exit(1);
  }
  memset(src, 1, bytes);
  memset(dst, 2, bytes);
  pthread_barrier_t start, done;
  pthread_barrier_init(&start, NULL, (unsigned)t + 1);
  pthread_barrier_init(&done, NULL, (unsigned)t + 1);
  pthread_t th[MAX_T];
  copier_t cs[MAX_T];
  size_t chunk = (bytes / (size_t)t + 63) & ~(size_t)63;
  for (int i = 0; i < t; i++) {
    size_t at = chunk * (size_t)i < bytes ? chunk * (size_t)i : bytes;
    size_t n = at + chunk <= bytes ? chunk : bytes - at;
    cs[i] = (copier_t){&start, &done, dst + at, src + at, n, reps};
    pthread_create(&th[i], NULL, copier_main, &cs[i]);
  }
  for (int k = 0; k < reps; k++) {
    pthread_barrier_wait(&start);
    double t0 = now_s();
    pthread_barrier_wait(&done);
    secs[k] = now_s() - t0;
  }
  for (int i = 0; i < t; i++)
    pthread_join(th[i], NULL);
  pthread_barrier_destroy(&start);
  pthread_barrier_destroy(&done);
  qsort(secs, (size_t)reps, sizeof *secs, cmp_double);
  double gbps = (double)bytes / secs[reps / 2] * 1e-9;
  free(src);
  free(dst);
  free(secs);
  return gbps;
}

/* ---- the loader threads, in process ------------------------------------------------ */

static int always_alive(void *arg) {
  (void)arg;
  return 0;
}

/* Runs the producer with cfg (threads = t) for WARMUP + steps steps; *gbps: the prepared
 * bytes of the measured steps over their time; *step_bytes: one step's; *cpu_ms and
 * *busiest_ms: the loader threads' CPU per step, all and the busiest one's. The producer
 * runs on until stopped (its threads must still exist when their CPU time is read); it is
 * `slots` steps ahead at both ends of the measured span. \return 0 or rc. */
static int producer_gbps(const cpdl_config_t *cfg, int steps, double *gbps, size_t *step_bytes,
                         double *cpu_ms, double *busiest_ms, cpdl_tools_memory_t *sizing) {
  cpdl__feed_t *feed = NULL;
  cpdl_prep_plan_t *plan = NULL;
  cpdl__ring_t *ring = NULL;
  cpdl__producer_t *producer = NULL;
  void *base = MAP_FAILED;
  size_t ctrl = 0, total = 0;
  int rc = cpdl__feed_open(cfg, 0, 1, &feed);
  cpdl_tensor_t in[CPDL_MAX_FIELDS];
  int n_in = CPDL_MAX_FIELDS;
  if (!rc)
    rc = cpdl__feed_spec(feed, in, &n_in);
  cpdl_prep_params_t params;
  cpdl__config_prep_params(cfg, &params);
  if (!rc)
    rc = cpdl_prep_plan_create(in, n_in, &params, &plan);
  if (rc)
    goto out;
  int n_fields = cpdl_prep_plan_nfields(plan);
  cpdl_prep_field_t fields[CPDL_MAX_FIELDS];
  size_t bytes = 0;
  for (int i = 0; i < n_fields; i++) {
    fields[i] = *cpdl_prep_plan_field(plan, i);
    bytes += fields[i].nbytes * (fields[i].shared ? 1 : (size_t)cfg->cp);
  }
  *step_bytes = bytes;
  long page = sysconf(_SC_PAGESIZE);
  size_t rank_block = CPDL__ALIGN_UP(cpdl_prep_plan_rank_bytes(plan), (size_t)page);
  size_t shared_block = CPDL__ALIGN_UP(cpdl_prep_plan_shared_bytes(plan), (size_t)page);
  /* Slots and collate sets as the loader sizes them (sizing.c, loader.c). */
  cpdl_tools_memory_t mem = {.struct_size = sizeof mem};
  int max_sets = cpdl__feed_double_buffered(feed)
                     ? cpdl__producer_collate_sets(bytes, cfg->threads) : 1;
  if ((rc = cpdl__sizing_plan(cfg, rank_block, shared_block, cfg->cp, max_sets, &mem)))
    goto out;
  if (mem.collate_sets < 2)
    cpdl__feed_single_buffer(feed);
  *sizing = mem;
  cpdl__ring_geometry_t geo = {
      .n_slots = (uint32_t)mem.slots,
      .n_regions = (uint32_t)cfg->cp,
      .n_consumers = 1,
      .n_fields = (uint32_t)n_fields,
      .slot_bytes = rank_block,
      .shared_slot_bytes = shared_block,
  };
  if ((rc = cpdl__ring_sizes(&geo, &ctrl, &total)))
    goto out;
  base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) {
    rc = cpdl__error(-ENOMEM, "cannot map a ring of %zu bytes", total);
    goto out;
  }
  if ((rc = cpdl__ring_init(base, total, &geo, fields, 1, 1, (int32_t)getpid(), 0, &ring)))
    goto out;
  cpdl__ring_register(ring, 0, (int32_t)getpid(), 0);
  int local_cp[CPDL__RING_MAX_REGIONS];
  for (int r = 0; r < cfg->cp; r++)
    local_cp[r] = r;
  cpdl__producer_args_t args = {
      .ring = ring, .feed = feed, .plan = plan, .local_cp = local_cp,
      .first_step = 0, .end_step = UINT64_MAX, .n_threads = cfg->threads,
      .alive = always_alive,
  };
  if ((rc = cpdl__producer_start(&args, &producer)))
    goto out;
  double t0 = 0, c0 = 0;
  unsigned long long ns0[MAX_T], ns1[MAX_T];
  volatile uint64_t sink = 0;
  for (uint64_t s = 0; !rc && s < (uint64_t)(WARMUP + steps); s++) {
    if (s == WARMUP) {
      t0 = now_s();
      c0 = others_cpu_s();
      loader_cpu_ns(ns0);
    }
    if ((rc = cpdl__ring_wait_step(ring, s, -1, always_alive, NULL)))
      break;
    sink += *(const uint64_t *)cpdl__ring_rank_block(ring, 0, cpdl__ring_slot_of(ring, s));
    cpdl__ring_release(ring, 0, s);
  }
  (void)sink;
  *gbps = (double)bytes * steps / (now_s() - t0) * 1e-9;
  *cpu_ms = (others_cpu_s() - c0) / steps * 1e3;
  loader_cpu_ns(ns1);
  *busiest_ms = 0;
  for (int t = 0; t < MAX_T; t++)
    if (ns1[t] > ns0[t] && (double)(ns1[t] - ns0[t]) / steps * 1e-6 > *busiest_ms)
      *busiest_ms = (double)(ns1[t] - ns0[t]) / steps * 1e-6;
out:
  cpdl__producer_stop(producer);
  cpdl__ring_free(ring);
  if (base != MAP_FAILED)
    munmap(base, total);
  if (plan)
    cpdl_prep_plan_destroy(plan);
  cpdl__feed_close(feed);
  return rc;
}

int main(int argc, char **argv) {
  char threads_default[64];
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  snprintf(threads_default, sizeof threads_default, "1,2%s%s", cores >= 4 ? ",4" : "",
           cores >= 8 ? ",8" : "");
  const char *threads = threads_default, *lens = "128K,1M", *extra = NULL;
  int steps = 8, reps = 5;
  for (int i = 1; i < argc; i++) {
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(argv[i], "--threads") && v)
      threads = argv[++i];
    else if (!strcmp(argv[i], "--seq-lens") && v)
      lens = argv[++i];
    else if (!strcmp(argv[i], "--steps") && v)
      steps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--reps") && v)
      reps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--config") && v)
      extra = argv[++i];
    else {
      fprintf(stderr, "usage: bench_leader [--threads 1,2,4,8] [--seq-lens 128K,1M] [--steps N] "
                      "[--reps N] [--config \"batch=8 cp=2 mode=contiguous collate=pack ...\"]\n");
      return 2;
    }
  }
  if (steps < 1 || reps < 1) {
    fprintf(stderr, "bench_leader: --steps and --reps must be >= 1\n");
    return 2;
  }
  cpdl_config_t base;
  cpdl_config_init(&base);
  base.batch = 8;
  base.cp = 2;
  if (cpdl_config_parse(&base, extra)) {
    fprintf(stderr, "bench_leader: --config: %s\n", cpdl_last_error());
    return 2;
  }
  double load[3] = {0};
  if (getloadavg(load, 3) < 0)
    load[0] = -1;
  printf("# bench_leader: %ld cores online, load average %.2f; batch %d, cp %d, mode %s, "
         "collate %s, slots %d (0: sized), source %s\n", cores, load[0], base.batch, base.cp,
         cpdl_mode_name(base.mode), base.collate, base.slots,
         base.source[0] ? base.source : "synthetic:");
  printf("%9s %3s %9s %5s %4s %12s %10s %12s %6s %12s %11s %15s\n", "seq_len", "t", "step_MiB",
         "slots", "sets", "memcpy_GB/s", "prep_GB/s", "prep/memcpy", "x1", "cpu_ms/step",
         "busiest_ms", "GB/s_1core_each");
  int status = 0;
  static char json[MAX_ROWS][320]; /* printed after the table */
  int n_json = 0;
  for (const char *l = lens; *l;) {
    char *end;
    int64_t S = bench_parse_len(l, &end);
    l = *end == ',' ? end + 1 : end;
    if (S <= 0)
      continue;
    double prep1 = 0;
    for (const char *t = threads; *t;) {
      char *tend;
      long nt = strtol(t, &tend, 10);
      if (tend == t)
        break;
      t = *tend == ',' ? tend + 1 : tend;
      if (nt < 1 || nt > MAX_T)
        continue;
      cpdl_config_t cfg = base;
      cfg.seq_len = S;
      cfg.threads = (int)nt;
      double prep = 0, cpu_ms = 0, busiest_ms = 0;
      size_t bytes = 0;
      cpdl_tools_memory_t sizing = {0};
      int rc = producer_gbps(&cfg, steps, &prep, &bytes, &cpu_ms, &busiest_ms, &sizing);
      if (rc) {
        fprintf(stderr, "bench_leader: S=%lld threads=%ld: %s: %s\n", (long long)S, nt,
                cpdl_err_name(rc), cpdl_last_error());
        status = 1;
        continue;
      }
      double copy = memcpy_gbps(bytes, (int)nt, reps);
      if (nt == 1)
        prep1 = prep;
      double own = busiest_ms > 0 ? (double)bytes / (busiest_ms * 1e-3) * 1e-9 : 0;
      printf("%9lld %3ld %9.1f %5d %4d %12.2f %10.2f %12.2f %6.2f %12.1f %11.1f %15.2f\n",
             (long long)S, nt, (double)bytes / (1 << 20), sizing.slots, sizing.collate_sets, copy,
             prep, prep / copy, prep1 > 0 ? prep / prep1 : 0, cpu_ms, busiest_ms, own);
      if (n_json < MAX_ROWS)
        snprintf(json[n_json++], sizeof json[0], "{\"bench\": \"leader\", \"seq_len\": %lld, \"threads\": %ld, \"batch\": %d, "
             "\"cp\": %d, \"mode\": \"%s\", \"step_bytes\": %zu, \"memcpy_gbps\": %.3f, "
             "\"prep_gbps\": %.3f, \"loader_cpu_ms_per_step\": %.2f, "
             "\"busiest_thread_ms_per_step\": %.2f, \"load\": %.2f}",
             (long long)S, nt, cfg.batch, cfg.cp, cpdl_mode_name(cfg.mode), bytes, copy, prep,
             cpu_ms, busiest_ms, load[0]);
      fflush(stdout);
    }
  }
  for (int i = 0; i < n_json; i++)
    printf("%s\n", json[i]);
  return status;
}
