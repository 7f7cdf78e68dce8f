/* run.c — `cpdl run` under mpirun: every rank takes its view of every step,
 * reads it (a checksum, as a trainer would touch it), optionally dumps it,
 * releases it; rank 0 shows progress and prints a one-line JSON summary:
 * steps (every rank's count; the run fails if they differ), the data's
 * seq_len and batch, tokens_per_s_per_rank (the mean of the ranks' rates of
 * the tokens in their views), tokens_per_s_slowest_rank (the lowest),
 * tokens_per_s_per_node (the ranks' rates summed, divided by the nodes, so
 * at most np x per_rank).
 * Errors are printed once per rank that sees them, prefixed with the rank.
 * The data path is the public API (cpdl_loader_open, next, release,
 * state_save, state_restore, close). Internals (internal.h) serve only the
 * debugging outputs the public API does not offer: --dump-collated (cpdl__loader_dump_collated), the .npy
 * writer of --dump (cpdl__npy_write, cpdl__mkdirs), --report-binding
 * (cpdl__pin_report) and the data shape of the summary, plus cpdl__error for
 * this file's own messages. */
#include "cli.h"
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char usage[] =
    "usage: mpirun -np N cpdl run [options]\n"
    "  --cp N --tp N            context- and tensor-parallel sizes (dp = N / (cp*tp))\n"
    "  --seq-len S --batch B    tokens per row (suffix K/M) and rows per step\n"
    "  --steps N --slots N      steps to deliver (0: until --epochs passes end), ring depth\n"
    "  --epochs N               end after N passes over the data (default 1 when --steps 0);\n"
    "                           every replica ends on the same step; with --steps too, the\n"
    "                           earlier end wins\n"
    "  --mode M                 contiguous | round_robin | aux_only | thd\n"
    "  --seed N --source URI    e.g. synthetic:, llmc:/data/*.bin, megatron:/data/prefix, npy:/dir\n"
    "  --schedule S --cost A,B  static | balanced (mode thd): who gets which documents of a\n"
    "                           global batch, balancing a*L + b*L^2 over replicas (docs/schedule.md)\n"
    "  --threads N --pin P      preparation threads; auto | numa | cores:<list> | none\n"
    "  --json                   print only the JSON summary line on stdout\n"
    "  --dump DIR               write each rank's view as DIR/step<k>/rank<r>/<field>.npy\n"
    "  --dump-collated DIR      the group leader writes each collated batch before preparation\n"
    "                           as DIR/step<k>/group<g>/collated/<field>.npy\n"
    "  --save-state FILE        after the run, save the whole job's resume state (rank 0\n"
    "                           writes FILE; a failed write fails the run)\n"
    "  --resume FILE            start every replica from a saved state (same options)\n"
    "  --report-binding         print where loader threads and memory were placed\n"
    "  any other configuration key as --key value (see cpdl_config_t in cpdl.h);\n"
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
  int rc = cpdl__mkdirs(path);
  if (rc)
    return rc;
  for (int f = 0; f < b->n_fields; f++) {
    char file[4200];
    snprintf(file, sizeof file, "%s/%s.npy", path, b->fields[f].name);
    rc = cpdl__npy_write(file, b->fields[f].dtype, b->fields[f].ndim, b->fields[f].shape,
                         b->fields[f].data);
    if (rc)
      return rc;
  }
  char file[4200];
  snprintf(file, sizeof file, "%s/meta.json", path);
  FILE *m = fopen(file, "w");
  if (!m)
    return cpdl__error(-errno, "cannot write %s: %s", file, strerror(errno));
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
    return cpdl__error(-errno, "cannot write %s: %s", file, strerror(errno));
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
    if (!f)
      rc = cpdl__error(-errno, "cannot read resume state %s: %s", file, strerror(errno));
    if (!rc && (fseek(f, 0, SEEK_END) != 0 || (long)(n = (uint64_t)ftell(f)) < 0 ||
                fseek(f, 0, SEEK_SET) != 0))
      rc = cpdl__error(-errno, "cannot read resume state %s: %s", file, strerror(errno));
    if (!rc && (n == 0 || n > STATE_FILE_MAX))
      rc = cpdl__error(CPDL_ESTATE, "%s has %llu bytes: not a cpdl resume state", file,
                       (unsigned long long)n);
    if (!rc && !(bytes = malloc(n)))
      rc = cpdl__error(-ENOMEM, "out of memory reading %s", file);
    if (!rc && fread(bytes, 1, n, f) != n)
      rc = cpdl__error(-EIO, "cannot read resume state %s: short read", file);
    if (f)
      fclose(f);
  }
  int all = 0;
  MPI_Allreduce(&rc, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (all) {
    free(bytes);
    return rank == 0 ? rc : cpdl__error(all, "rank 0 could not read the resume state %s", file);
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
    return cpdl__error(-errno, "cannot write %s: %s", file, strerror(errno));
  int rc = 0;
  if (fwrite(buf, 1, size, f) != size || fflush(f) != 0 || fsync(fileno(f)) != 0)
    rc = cpdl__error(-errno, "cannot write %s: %s", file, strerror(errno));
  if (fclose(f) != 0 && !rc)
    rc = cpdl__error(-errno, "cannot write %s: %s", file, strerror(errno));
  if (!rc && rename(tmp, file) != 0)
    rc = cpdl__error(-errno, "cannot rename %s to %s: %s", tmp, file, strerror(errno));
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

int cpdl_cli_run(int argc, char **argv) {
  int thread_level = 0; /* MULTIPLE: the liveness thread of a job across hosts (live.c) */
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &thread_level);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  cpdl_config_t cfg;
  cli_flags_t flags;
  int opt_rc = cpdl_cli_options(argc, argv, &cfg, &flags, usage);
  if (opt_rc) {
    MPI_Finalize();
    return opt_rc == 1 ? 0 : 2; /* 1: --help */
  }

  cpdl_loader_t *loader = NULL;
  int rc = cpdl_loader_open(MPI_COMM_WORLD, &cfg, &loader);
  if (rc) {
    /* Every rank got the same agreed error: each says so, so that a user
     * reading any one rank's log sees the cause and the fix. */
    report_error(rank, "open", rc);
    MPI_Finalize();
    return 1;
  }
  cpdl_mesh_coords_t me;
  cpdl_loader_mesh(loader, &me);
  if (flags.dump_collated && (rc = cpdl__loader_dump_collated(loader, flags.dump_collated)))
    report_error(rank, "dump-collated", rc);
  char *binding = NULL;
  if (flags.report_binding) {
    rc = cpdl__pin_report(cpdl__loader_pin(loader), cpdl__loader_world(loader), &binding);
    if (rc && rank == 0)
      report_error(rank, "report-binding", rc);
    if (binding && !flags.json)
      print_binding(binding);
  }

  if (flags.resume) {
    void *st = NULL;
    size_t st_size = 0;
    rc = read_state(flags.resume, rank, &st, &st_size);
    if (rc) {
      if (rank == 0)
        report_error(rank, "resume", rc);
      cpdl_loader_close(loader);
      MPI_Finalize();
      return 1;
    }
    rc = cpdl_loader_state_restore(loader, st, st_size);
    free(st);
    if (rc) {
      if (rank == 0)
        report_error(rank, "resume", rc);
      cpdl_loader_close(loader);
      MPI_Finalize();
      return 1;
    }
  }

  bool tty = rank == 0 && !flags.json && !flags.quiet && isatty(STDOUT_FILENO);
  bool plain = rank == 0 && !flags.json && !flags.quiet && !tty;
  uint64_t total = cfg.steps > 0 ? (uint64_t)cfg.steps : 0;
  size_t cap = total ? (size_t)total : 1024, n_lat = 0;
  double *lat = malloc(cap * sizeof *lat);
  double tokens = 0, last_print = 0, t_start = cli_now_s();
  uint64_t checksum = 0, delivered = 0, expect = 0;
  int run_rc = 0;
  for (;;) {
    cpdl_batch_t batch;
    double t0 = cli_now_s();
    rc = cpdl_loader_next(loader, &batch);
    double t1 = cli_now_s();
    if (rc == CPDL_EEOF)
      break;
    if (rc) {
      report_error(rank, "next", rc);
      run_rc = rc;
      break;
    }
    if (n_lat == cap) {
      cap *= 2;
      double *grown = realloc(lat, cap * sizeof *lat);
      if (!grown)
        break;
      lat = grown;
    }
    lat[n_lat++] = (t1 - t0) * 1e6;
    checksum += touch(&batch);
    for (int f = 0; f < batch.n_fields; f++)
      if (strcmp(batch.fields[f].name, "labels") == 0)
        tokens += (double)(batch.fields[f].shape[0] * batch.fields[f].shape[1]);
    if (flags.dump && (rc = dump_view(flags.dump, &batch, &cfg))) {
      report_error(rank, "dump", rc);
      run_rc = rc;
      cpdl_batch_release(loader, &batch);
      break;
    }
    cpdl_batch_release(loader, &batch);
    if (delivered++ == 0 && total)
      expect = total - batch.step; /* a resumed run starts past step 0 */
    if (tty || plain)
      progress(tty, delivered, expect ? expect : delivered, tokens, cli_now_s() - t_start,
               &last_print);
  }
  double elapsed = cli_now_s() - t_start;

  if (run_rc == CPDL_EPEER) {
    /* A rank of this group died: no collectives from here on. */
    cpdl_loader_close(loader);
    free(lat);
    fprintf(stderr, "cpdl run: rank %d: stopping after a dead rank (see above)\n", rank);
    return 1;
  }

  int any_rc = 0;
  MPI_Allreduce(&run_rc, &any_rc, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  /* A checkpoint that was not written fails the run, on every rank. */
  int save_rc = flags.save_state && !any_rc ? save_state(loader, flags.save_state, rank) : 0;

  /* Every replica delivers the same steps (the loader's end); say so only
   * if it is true. */
  unsigned long long mine = delivered, fewest = 0, most = 0;
  MPI_Allreduce(&mine, &fewest, 1, MPI_UNSIGNED_LONG_LONG, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(&mine, &most, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
  if (fewest != most && !run_rc) {
    fprintf(stderr, "cpdl run: rank %d: ranks delivered between %llu and %llu steps (this rank "
            "%llu); every rank must get the same number\n", rank, fewest, most, mine);
    run_rc = CPDL_ESTATE;
  }
  /* The data's rows per step and tokens per row (a pre-collated source's
   * own, not the configuration's). */
  int64_t data_seq_len = cfg.seq_len, data_batch = cfg.batch;
  cpdl__loader_data_shape(loader, &data_batch, &data_seq_len);

  double p50, p99;
  cli_percentiles(lat, n_lat, &p50, &p99);
  double rate = elapsed > 0 ? tokens / elapsed : 0;
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
  MPI_Comm_free(&node);
  size_t seg = cpdl_loader_segment_bytes(loader);
  int close_rc = cpdl_loader_close(loader);
  if (close_rc && rank == 0)
    report_error(rank, "close", close_rc);

  if (rank == 0 && !any_rc && !save_rc) {
    printf("{\"steps\": %llu, \"np\": %d, \"dp\": %d, \"cp\": %d, \"tp\": %d, \"seq_len\": %lld, "
           "\"batch\": %d, \"mode\": \"%s\", \"slots\": %d, \"threads\": %d, "
           "\"tokens_per_s_per_rank\": %.0f, \"tokens_per_s_slowest_rank\": %.0f, "
           "\"tokens_per_s_per_node\": %.0f, "
           "\"next_p50_us\": %.2f, \"next_p99_us\": %.2f, \"segment_bytes\": %zu, "
           "\"elapsed_s\": %.3f, \"checksum\": %llu%s%s}\n",
           (unsigned long long)delivered, me.world_size, me.dp_size, me.cp_size, me.tp_size,
           (long long)data_seq_len, (int)data_batch, cpdl_mode_name(cfg.mode), cfg.slots, cfg.threads,
           sum_rate / me.world_size, min_rate, n_nodes ? sum_rate / n_nodes : 0, worst_p50,
           worst_p99, seg, elapsed,
           (unsigned long long)checksum, binding ? ", \"binding\": " : "", binding ? binding : "");
    fflush(stdout);
  }
  free(lat);
  free(binding);
  MPI_Finalize();
  return any_rc || save_rc || close_rc ? 1 : 0;
}
