/* run.c — `cpdl run` under mpirun: every rank takes its view of every step,
 * reads it (a checksum, as a trainer would touch it), optionally dumps it,
 * releases it; rank 0 shows progress and prints a one-line JSON summary:
 * steps (every rank's count; the run fails if they differ, naming each count
 * and its ranks), the data's seq_len and batch, tokens_per_s_per_rank (the
 * mean of the ranks' rates of the tokens in their views),
 * tokens_per_s_slowest_rank (the lowest),
 * tokens_per_s_per_node (the ranks' rates summed, divided by the nodes, so
 * at most np x per_rank).
 * Errors are printed once per rank that sees them, prefixed with the rank.
 * The data path is the public API (cpdl_loader_open, next, release,
 * state_save, state_restore, close); the debugging outputs come from
 * cpdl/tools.h: --dump-collated, the .npy writer of --dump, --report-binding,
 * the data shape of the summary, the watched agreement at the end of the
 * run (cpdl_tools_agree_min), and cpdl_tools_error for this file's own
 * messages. */
#include "cli.h"
#include "cpdl/tools.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char usage[] =
    "usage: mpirun -np N cpdl run [options]\n"
    "  --cp N --tp N            context- and tensor-parallel sizes (dp = N / (cp*tp))\n"
    "  --seq-len S --batch B    tokens per row (suffix K/M) and rows per step\n"
    "  --steps N --slots N      steps to deliver (0: until --epochs passes end); ring slots\n"
    "                           (0, the default: sized by need, 2..4 within --ring-bytes)\n"
    "  --ring-bytes B           the ring's budget with --slots 0 (suffix K/M/G; default 64M);\n"
    "                           --json's \"memory\" reports the sizing\n"
    "  --epochs N               end after N passes over the data (default 1 when --steps 0);\n"
    "                           every replica ends on the same step; with --steps too, the\n"
    "                           earlier end wins\n"
    "  --mode M                 contiguous | round_robin | aux_only | thd\n"
    "  --seed N --source URI    e.g. synthetic:, llmc:/data/*.bin, megatron:/data/prefix, npy:/dir\n"
    "  --schedule S --cost A,B  static | balanced | dynamic (mode thd): who gets which documents\n"
    "                           of a global batch, balancing a*L + b*L^2 over replicas (balanced)\n"
    "                           or over all ranks with a CP size per document (dynamic; views\n"
    "                           gain cp_group, cp_chunk, cu_local and the group table; docs/schedule.md)\n"
    "  --threads N --pin P      preparation threads; auto | numa | cores:<list> | none\n"
    "  --json                   print only the JSON summary line on stdout\n"
    "  --dump DIR               write each rank's view as DIR/step<k>/rank<r>/<field>.npy\n"
    "  --dump-collated DIR      the group leader writes each collated batch before preparation\n"
    "                           as DIR/step<k>/group<g>/collated/<field>.npy\n"
    "  --save-state FILE        after the run, save the whole job's resume state (rank 0\n"
    "                           writes FILE; a failed write fails the run)\n"
    "  --resume FILE            start every replica from a saved state (same options)\n"
    "  --report-binding         print where loader threads and memory were placed\n"
    "  any other configuration key as --key value (see cpdl_config_t in cpdl/loader.h);\n"
    "  CPDL_<KEY> environment variables set defaults.\n";


/* Read every byte of the view, as a consumer would. */
static uint64_t touch(const cpdl_batch_t *b) {
  uint64_t sum = 0;
  for (int f = 0; f < b->n_fields; f++) {
    const uint64_t *p = b->fields[f].data;
    size_t words = b->fields[f].nbytes / 8;
    for (size_t i = 0; i < words; i++)
      sum += p[i];
  }
  return sum;
}

static int dump_view(const char *dir, const cpdl_batch_t *b, const cpdl_config_t *cfg) {
  char path[4096];
  snprintf(path, sizeof path, "%s/step%llu/rank%d", dir, (unsigned long long)b->step,
           b->mesh.world_rank);
  int rc = cpdl_tools_mkdirs(path);
  if (rc)
    return rc;
  for (int f = 0; f < b->n_fields; f++) {
    char file[4200];
    snprintf(file, sizeof file, "%s/%s.npy", path, b->fields[f].name);
    rc = cpdl_tools_npy_write(file, b->fields[f].dtype, b->fields[f].ndim, b->fields[f].shape,
                         b->fields[f].data);
    if (rc)
      return rc;
  }
  char file[4200];
  snprintf(file, sizeof file, "%s/meta.json", path);
  FILE *m = fopen(file, "w");
  if (!m)
    return cpdl_tools_error(-errno, "cannot write %s: %s", file, strerror(errno));
  const cpdl_mesh_coords_t *c = &b->mesh;
  fprintf(m,
          "{\"world_rank\": %d, \"world_size\": %d, \"group\": %d, \"node\": %d, "
          "\"dp_rank\": %d, \"cp_rank\": %d, \"tp_rank\": %d, \"dp_size\": %d, \"cp_size\": %d, "
          "\"tp_size\": %d, \"step\": %llu, \"mode\": \"%s\", \"padding_token_id\": %lld, "
          "\"seq_len\": %lld, \"batch\": %d, \"seed\": %llu, \"collate\": \"%s\", "
          "\"position_ids\": %d, \"loss_on_eot\": %d, \"source\": \"%s\", \"fields\": [",
          c->world_rank, c->world_size, c->group, c->node, c->dp_rank, c->cp_rank, c->tp_rank,
          c->dp_size, c->cp_size, c->tp_size, (unsigned long long)b->step,
          cpdl_mode_name(cfg->mode), (long long)cfg->padding_token_id, (long long)cfg->seq_len,
          cfg->batch, (unsigned long long)cfg->seed, cfg->collate, cfg->position_ids,
          cfg->loss_on_eot, cfg->source);
  for (int f = 0; f < b->n_fields; f++)
    fprintf(m, "%s\"%s\"", f ? ", " : "", b->fields[f].name);
  fprintf(m, "]}\n");
  if (fclose(m) != 0)
    return cpdl_tools_error(-errno, "cannot write %s: %s", file, strerror(errno));
  return 0;
}

static void progress(bool tty, uint64_t done, uint64_t total, double tokens, double elapsed,
                     double *last_print) {
  double rate = elapsed > 0 ? tokens / elapsed : 0;
  if (tty) {
    if (done != total && elapsed - *last_print < 0.1)
      return; /* redraw at most 10 times a second */
    *last_print = elapsed;
    int width = 30, fill = total ? (int)((double)done * width / (double)total) : 0;
    char bar[64];
    for (int i = 0; i < width; i++)
      bar[i] = i < fill ? '#' : '.';
    bar[width] = '\0';
    double eta = (done && total) ? elapsed * (double)(total - done) / (double)done : 0;
    fprintf(stdout, "\r[%s] %llu/%llu steps  %.2f Mtok/s per rank  ETA %.1fs ", bar,
            (unsigned long long)done, (unsigned long long)total, rate / 1e6, eta);
    if (done == total)
      fputc('\n', stdout);
    fflush(stdout);
  } else if (done == total || elapsed - *last_print >= 2.0 ||
             (total >= 10 && done % (total / 10) == 0)) {
    fprintf(stdout, "cpdl run: step %llu/%llu, %.2f Mtok/s per rank, %.1fs\n",
            (unsigned long long)done, (unsigned long long)total, rate / 1e6, elapsed);
    fflush(stdout);
    *last_print = elapsed;
  }
}

static void report_error(int rank, const char *what, int rc);

/* The resume file is the state's bytes as cpdl_loader_state_save returns
 * them (self-describing: magic, version, size, checksum; docs/state.md). */
#define STATE_FILE_MAX (64u << 20)

/* Rank 0 reads the file; every rank gets its bytes (or the error). */
static int read_state(const char *file, int rank, void **buf, size_t *size) {
  uint64_t n = 0;
  int rc = 0;
  char *bytes = NULL;
  if (rank == 0) {
    FILE *f = fopen(file, "rb");
    struct stat st;
    if (!f)
      rc = cpdl_tools_error(-errno, "cannot read resume state %s: %s", file, strerror(errno));
    /* A directory opens too (and "has" LONG_MAX bytes): only a regular file
     * holds a state. Its size is fstat's. */
    if (!rc && fstat(fileno(f), &st) != 0)
      rc = cpdl_tools_error(-errno, "cannot read resume state %s: %s", file, strerror(errno));
    if (!rc && !S_ISREG(st.st_mode))
      rc = cpdl_tools_error(CPDL_ESTATE, "resume state %s is %s, not a file; give the file that "
                            "--save-state wrote", file, S_ISDIR(st.st_mode) ? "a directory" :
                            "not a regular file");
    if (!rc)
      n = (uint64_t)st.st_size;
    if (!rc && (n == 0 || n > STATE_FILE_MAX))
      rc = cpdl_tools_error(CPDL_ESTATE, "%s has %llu bytes: not a cpdl resume state", file,
                       (unsigned long long)n);
    if (!rc && !(bytes = malloc(n)))
      rc = cpdl_tools_error(-ENOMEM, "out of memory reading %s", file);
    if (!rc && fread(bytes, 1, n, f) != n)
      rc = cpdl_tools_error(-EIO, "cannot read resume state %s: short read", file);
    if (f)
      fclose(f);
  }
  int all = 0;
  MPI_Allreduce(&rc, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (all) {
    free(bytes);
    return rank == 0 ? rc : cpdl_tools_error(all, "rank 0 could not read the resume state %s", file);
  }
  MPI_Bcast(&n, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  if (rank != 0 && !(bytes = malloc(n)))
    abort(); /* n <= 64 MiB: out of memory here is out of memory everywhere */
  MPI_Bcast(bytes, (int)n, MPI_BYTE, 0, MPI_COMM_WORLD);
  *buf = bytes;
  *size = n;
  return 0;
}

/* Write to a temporary file beside it, fsync, rename: a crash leaves the old
 * checkpoint or the new one, never half of one. */
static int write_state(const char *file, const void *buf, size_t size) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp.%d", file, (int)getpid());
  FILE *f = fopen(tmp, "wb");
  if (!f)
    return cpdl_tools_error(-errno, "cannot write %s: %s", file, strerror(errno));
  int rc = 0;
  if (fwrite(buf, 1, size, f) != size || fflush(f) != 0 || fsync(fileno(f)) != 0)
    rc = cpdl_tools_error(-errno, "cannot write %s: %s", file, strerror(errno));
  if (fclose(f) != 0 && !rc)
    rc = cpdl_tools_error(-errno, "cannot write %s: %s", file, strerror(errno));
  if (!rc && rename(tmp, file) != 0)
    rc = cpdl_tools_error(-errno, "cannot rename %s to %s: %s", tmp, file, strerror(errno));
  if (rc)
    unlink(tmp);
  return rc;
}

/* Collective: gather the whole job's state; rank 0 writes it. \return the
 * same on every rank (0 or the first error), after reporting it. */
static int save_state(cpdl_loader_t *loader, const char *file, int rank) {
  size_t need = 0, used = 0;
  cpdl_loader_state_size(loader, &need);
  void *buf = malloc(need);
  int rc = cpdl_loader_state_save(loader, buf, buf ? need : 0, &used);
  int local = rc;
  if (!rc && rank == 0)
    local = write_state(file, buf, used);
  free(buf);
  if (local && rank == 0)
    report_error(rank, "save-state", local);
  if (rc) {
    /* The save's result is agreed (the same on every rank); after a death
     * (CPDL_EPEER) a plain MPI collective would wait for the dead rank. */
    if (rank != 0)
      report_error(rank, "save-state", rc);
    return rc;
  }
  int all = 0;
  MPI_Allreduce(&local, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (all && rank != 0)
    fprintf(stderr, "cpdl run: rank %d: save-state: %s: the resume state %s was not written "
            "(see rank 0)\n", rank, cpdl_err_name(all), file);
  return all;
}

/* One line per entry of the binding report's JSON array (rank 0 only). */
static void print_binding(const char *json) {
  printf("binding (rank, thread, cpuset, NUMA node, GPU):\n");
  for (const char *p = strchr(json, '{'); p; p = strchr(p + 1, '{')) {
    const char *end = strchr(p, '}');
    if (!end)
      break;
    printf("  %.*s\n", (int)(end - p + 1), p);
  }
}

static void report_error(int rank, const char *what, int rc) {
  fprintf(stderr, "cpdl run: rank %d: %s: %s: %s\n", rank, what, cpdl_err_name(rc),
          cpdl_last_error()[0] ? cpdl_last_error() : cpdl_strerror(rc));
}

/* What one run keeps between its three phases. */
typedef struct run {
  int rank;
  cpdl_config_t cfg;
  cli_flags_t flags;
  cpdl_loader_t *loader;
  cpdl_mesh_coords_t me;
  char *binding;            /* --report-binding's JSON (rank 0), or NULL */
  /* the loop's measurements */
  double *lat;              /* next() latencies in us, n_lat of them */
  size_t n_lat;
  double tokens, elapsed;
  uint64_t checksum, delivered;
} run_t;

/* Open the loader, set up the debugging outputs and, with --resume, restore
 * the saved state. \return 0, or 1 after reporting the error (the loader is
 * closed again and R->loader NULL). */
static int run_open(run_t *R) {
  int rc = cpdl_loader_open(MPI_COMM_WORLD, &R->cfg, &R->loader);
  if (rc) {
    /* Every rank got the same agreed error: each says so, so that a user
     * reading any one rank's log sees the cause and the fix. */
    report_error(R->rank, "open", rc);
    return 1;
  }
  cpdl_loader_mesh(R->loader, &R->me);
  if (R->flags.dump_collated && (rc = cpdl_tools_dump_collated(R->loader, R->flags.dump_collated)))
    report_error(R->rank, "dump-collated", rc);
  if (R->flags.report_binding) {
    rc = cpdl_tools_binding_report(R->loader, &R->binding);
    if (rc && R->rank == 0)
      report_error(R->rank, "report-binding", rc);
    if (R->binding && !R->flags.json)
      print_binding(R->binding);
  }
  if (!R->flags.resume)
    return 0;
  void *st = NULL;
  size_t st_size = 0;
  rc = read_state(R->flags.resume, R->rank, &st, &st_size);
  if (!rc) {
    rc = cpdl_loader_state_restore(R->loader, st, st_size);
    free(st);
  }
  if (rc) {
    if (R->rank == 0)
      report_error(R->rank, "resume", rc);
    cpdl_loader_close(R->loader);
    R->loader = NULL;
    return 1;
  }
  return 0;
}

/* Take every step: read it, dump it, release it, show progress. \return 0
 * at the end of the data, else the error (reported). */
static int run_loop(run_t *R) {
  const cli_flags_t *flags = &R->flags;
  bool tty = R->rank == 0 && !flags->json && !flags->quiet && isatty(STDOUT_FILENO);
  bool plain = R->rank == 0 && !flags->json && !flags->quiet && !tty;
  uint64_t total = R->cfg.steps > 0 ? (uint64_t)R->cfg.steps : 0, expect = 0;
  size_t cap = total ? (size_t)total : 1024;
  R->lat = malloc(cap * sizeof *R->lat);
  double last_print = 0, t_start = cli_now_s();
  int run_rc = 0, rc;
  for (;;) {
    cpdl_batch_t batch;
    double t0 = cli_now_s();
    rc = cpdl_loader_next(R->loader, &batch);
    double t1 = cli_now_s();
    if (rc == CPDL_EEOF)
      break;
    if (rc) {
      report_error(R->rank, "next", rc);
      run_rc = rc;
      break;
    }
    if (R->n_lat == cap) {
      cap *= 2;
      double *grown = realloc(R->lat, cap * sizeof *R->lat);
      if (!grown)
        break;
      R->lat = grown;
    }
    R->lat[R->n_lat++] = (t1 - t0) * 1e6;
    R->checksum += touch(&batch);
    for (int f = 0; f < batch.n_fields; f++)
      if (strcmp(batch.fields[f].name, cpdl_field_name(CPDL_FIELD_LABELS)) == 0)
        R->tokens += (double)(batch.fields[f].shape[0] * batch.fields[f].shape[1]);
    if (flags->dump && (rc = dump_view(flags->dump, &batch, &R->cfg))) {
      report_error(R->rank, "dump", rc);
      run_rc = rc;
      cpdl_batch_release(R->loader, &batch);
      break;
    }
    cpdl_batch_release(R->loader, &batch);
    if (R->delivered++ == 0 && total)
      expect = total - batch.step; /* a resumed run starts past step 0 */
    if (tty || plain)
      progress(tty, R->delivered, expect ? expect : R->delivered, R->tokens,
               cli_now_s() - t_start, &last_print);
  }
  R->elapsed = cli_now_s() - t_start;
  return run_rc;
}

/* run_summary's result when a rank died on the way: no collective may follow
 * (MPI_Finalize neither: Open MPI's waits for the dead rank too). */
#define RUN_DEAD_PEER (-1)

/* Append to text[cap] at *used, which stays below cap (a full text is cut). */
static void append(char *text, size_t cap, size_t *used, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(text + *used, cap - *used, fmt, ap);
  va_end(ap);
  *used = n < 0 ? *used : *used + (size_t)n >= cap ? cap - 1 : *used + (size_t)n;
}

/* The ranks' step counts differ (the loader ends every replica on the same
 * step, so this is a defect): rank 0 names every count and its ranks, as
 * ranges ("4 steps: ranks 0, 2-3; 2 steps: rank 1"), most steps first.
 * Collective (MPI: run after the end was agreed, so every rank is alive). */
static void report_steps_differ(int rank, unsigned long long mine) {
  int world = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  unsigned long long *counts = rank == 0 ? malloc((size_t)world * sizeof *counts) : NULL;
  MPI_Gather(&mine, 1, MPI_UNSIGNED_LONG_LONG, counts, 1, MPI_UNSIGNED_LONG_LONG, 0,
             MPI_COMM_WORLD);
  if (rank != 0)
    return;
  char text[1024] = "";
  size_t used = 0;
  unsigned long long above = ~0ULL; /* the counts listed so far are those above this */
  for (int group = 0; counts; group++) {
    unsigned long long count = 0;
    int n = 0;
    for (int r = 0; r < world; r++)
      if (counts[r] < above && (!n || counts[r] >= count))
        n = counts[r] == count && n ? n + 1 : 1, count = counts[r];
    if (!n)
      break;
    append(text, sizeof text, &used, "%s%llu step%s: rank%s ", group ? "; " : "", count,
           count == 1 ? "" : "s",
           n > 1 ? "s" : "");
    for (int r = 0, first = 1; r < world; r++) {
      if (counts[r] != count)
        continue;
      int last = r;
      while (last + 1 < world && counts[last + 1] == count)
        last++;
      if (last > r)
        append(text, sizeof text, &used, "%s%d-%d", first ? "" : ", ", r, last);
      else
        append(text, sizeof text, &used, "%s%d", first ? "" : ", ", r);
      first = 0;
      r = last;
    }
    above = count;
  }
  fprintf(stderr, "cpdl run: the ranks delivered different numbers of steps (%s); every rank "
          "must get the same number, so the run fails (a defect of cpdl's end of the data: "
          "please report it with this line)\n", counts ? text : "counts not gathered");
  free(counts);
}

/* Collective: agree on the loop's result, save the state (--save-state),
 * check that every rank got the same steps, reduce the measurements, close,
 * and print the JSON summary on rank 0. \return the exit status. */
static int run_summary(run_t *R, int run_rc) {
  const int rank = R->rank;
  const cpdl_config_t *cfg = &R->cfg;
  /* The end of the run is agreed over the loader's control plane, whose
   * waits watch this host's ranks: a rank that died after its last step
   * (or in another replica, whose ring this rank does not share) is
   * CPDL_EPEER here, where a plain MPI collective would wait for it for
   * ever under a launcher that does not end the job (mpirun
   * --enable-recovery, srun without --kill-on-bad-exit). The MPI
   * collectives below run only once every rank has been seen here. */
  int64_t ends[4] = {run_rc, (int64_t)R->delivered, -(int64_t)R->delivered,
                     run_rc ? rank : INT64_MAX};
  int rc = cpdl_tools_agree_min(R->loader, ends, 4, "the end of the run");
  if (rc) {
    report_error(rank, "end of the run", rc);
    return RUN_DEAD_PEER;
  }
  int any_rc = (int)ends[0];
  if (any_rc && !run_rc)
    fprintf(stderr, "cpdl run: rank %d: the run failed on rank %lld (%s; see that rank's error); "
            "this rank delivered %llu steps\n", rank, (long long)ends[3], cpdl_err_name(any_rc),
            (unsigned long long)R->delivered);
  /* Every replica delivers the same steps (the loader's end); the summary
   * says so only if it is true, and a run where it is not fails (with no
   * state saved: its replicas stand at different places). */
  bool steps_differ = !any_rc && ends[1] != -ends[2];
  if (steps_differ)
    report_steps_differ(rank, (unsigned long long)R->delivered);
  /* A checkpoint that was not written fails the run, on every rank. */
  int save_rc = R->flags.save_state && !any_rc && !steps_differ
                    ? save_state(R->loader, R->flags.save_state, rank)
                    : 0;
  if (save_rc == CPDL_EPEER)
    return RUN_DEAD_PEER;
  /* The data's rows per step and tokens per row (a pre-collated source's
   * own, not the configuration's). */
  int64_t data_seq_len = cfg->seq_len, data_batch = cfg->batch;
  (void)cpdl_tools_data_shape(R->loader, &data_batch, &data_seq_len);

  double p50, p99;
  cli_percentiles(R->lat, R->n_lat, &p50, &p99);
  double rate = R->elapsed > 0 ? R->tokens / R->elapsed : 0;
  double worst_p50 = 0, worst_p99 = 0, sum_rate = 0, min_rate = 0;
  MPI_Reduce(&p50, &worst_p50, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
  MPI_Reduce(&p99, &worst_p99, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
  MPI_Reduce(&rate, &sum_rate, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
  MPI_Reduce(&rate, &min_rate, 1, MPI_DOUBLE, MPI_MIN, 0, MPI_COMM_WORLD);
  /* Nodes: ranks sharing memory. */
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
  int node_rank = 0, n_nodes = 0, is_first;
  MPI_Comm_rank(node, &node_rank);
  is_first = node_rank == 0;
  MPI_Reduce(&is_first, &n_nodes, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
  /* The memory of batches on rank 0's node: every group leader there adds
   * its group's (ring segment + collate buffers). Rank 0 is its node's rank 0. */
  cpdl_tools_memory_t mem = {.struct_size = sizeof mem};
  (void)cpdl_tools_memory(R->loader, &mem);
  unsigned long long lead[2] = {R->me.group_rank == 0 ? mem.group_bytes : 0,
                                R->me.group_rank == 0}, node_sum[2] = {0, 0};
  MPI_Reduce(lead, node_sum, 2, MPI_UNSIGNED_LONG_LONG, MPI_SUM, 0, node);
  MPI_Comm_free(&node);
  size_t seg = cpdl_loader_segment_bytes(R->loader);
  int close_rc = cpdl_loader_close(R->loader);
  R->loader = NULL;
  if (close_rc && rank == 0)
    report_error(rank, "close", close_rc);

  const cpdl_mesh_coords_t *me = &R->me;
  if (rank == 0 && !any_rc && !save_rc && !steps_differ) {
    printf("{\"steps\": %llu, \"np\": %d, \"dp\": %d, \"cp\": %d, \"tp\": %d, \"seq_len\": %lld, "
           "\"batch\": %d, \"mode\": \"%s\", \"slots\": %d, \"threads\": %d, "
           "\"tokens_per_s_per_rank\": %.0f, \"tokens_per_s_slowest_rank\": %.0f, "
           "\"tokens_per_s_per_node\": %.0f, "
           "\"next_p50_us\": %.2f, \"next_p99_us\": %.2f, \"segment_bytes\": %zu, "
           "\"elapsed_s\": %.3f, \"checksum\": %llu, \"memory\": {\"slots\": %d, "
           "\"slots_given\": %d, \"slots_need\": %d, \"slots_max\": %d, \"budget_bytes\": %llu, "
           "\"n_regions\": %d, \"rank_block_bytes\": %llu, \"shared_block_bytes\": %llu, "
           "\"slot_bytes\": %llu, \"ring_bytes\": %llu, \"ctrl_bytes\": %llu, "
           "\"segment_bytes\": %llu, \"collate_sets\": %d, \"collate_set_bytes\": %llu, "
           "\"collate_bytes\": %llu, \"group_bytes\": %llu, \"node_groups\": %llu, "
           "\"node_bytes\": %llu}%s%s}\n",
           (unsigned long long)R->delivered, me->world_size, me->dp_size, me->cp_size,
           me->tp_size, (long long)data_seq_len, (int)data_batch, cpdl_mode_name(cfg->mode),
           mem.slots, cfg->threads, sum_rate / me->world_size, min_rate,
           n_nodes ? sum_rate / n_nodes : 0, worst_p50, worst_p99, seg, R->elapsed,
           (unsigned long long)R->checksum, mem.slots, mem.slots_given, mem.slots_need,
           mem.slots_max, (unsigned long long)mem.budget_bytes, mem.n_regions,
           (unsigned long long)mem.rank_block_bytes, (unsigned long long)mem.shared_block_bytes,
           (unsigned long long)mem.slot_bytes, (unsigned long long)mem.ring_bytes,
           (unsigned long long)mem.ctrl_bytes, (unsigned long long)mem.segment_bytes,
           mem.collate_sets, (unsigned long long)mem.collate_set_bytes,
           (unsigned long long)mem.collate_bytes, (unsigned long long)mem.group_bytes,
           node_sum[1], node_sum[0], R->binding ? ", \"binding\": " : "",
           R->binding ? R->binding : "");
    fflush(stdout);
  }
  return any_rc || save_rc || close_rc || steps_differ ? 1 : 0;
}

int cpdl_cli_run(int argc, char **argv) {
  int thread_level = 0; /* MULTIPLE: the liveness thread of a job across hosts (live.c) */
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &thread_level);
  run_t R;
  memset(&R, 0, sizeof R);
  MPI_Comm_rank(MPI_COMM_WORLD, &R.rank);
  int opt_rc = cpdl_cli_options(argc, argv, &R.cfg, &R.flags, usage);
  if (opt_rc) {
    MPI_Finalize();
    return opt_rc == 1 ? 0 : 2; /* 1: --help */
  }
  int status = run_open(&R);
  if (status) {
    free(R.binding);
    MPI_Finalize();
    return status;
  }
  int run_rc = run_loop(&R);
  if (run_rc == CPDL_EPEER || run_rc == CPDL_ETIMEDOUT) {
    /* A rank of this group died, left or stalled past timeout_ms: no
     * collectives from here on (a stalled rank may never come back). close
     * tells the group why (a timeout's verdict names the stalled rank, so it
     * names itself if it is continued) and cleans up locally. */
    cpdl_loader_close(R.loader);
    free(R.lat);
    free(R.binding);
    fprintf(stderr, "cpdl run: rank %d: stopping after %s (see above)\n", R.rank,
            run_rc == CPDL_EPEER ? "a dead rank" : "a stalled rank");
    return 1;
  }
  status = run_summary(&R, run_rc);
  free(R.lat);
  free(R.binding);
  if (status == RUN_DEAD_PEER) {
    cpdl_loader_close(R.loader); /* local after a death */
    fprintf(stderr, "cpdl run: rank %d: stopping after a dead rank (see above)\n", R.rank);
    return 1;
  }
  MPI_Finalize();
  return status;
}
