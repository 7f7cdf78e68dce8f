/* bench_ways.c — the baselines' benchmark, its own program (build/bench_ways;
 * `cpdl bench` runs it) under mpirun: four ways of giving every rank its
 * slice of the same batches, side by side in one job (docs/design.md#baselines):
 *   naive    every rank collates and prepares the whole batch, keeps its slice
 *   bcast    the group leader prepares, MPI_Bcast of the whole prepared batch
 *   scatter  the group leader prepares, MPI_Scatterv of the shards
 *   cpdl     shared memory, zero copy (the loader)
 * Every way ends a step with the rank reading its slice once (a checksum),
 * the same consumer work for all. Per way and S it reports the per-rank time
 * to get the slice (p50/p99), group steps/s, and node PSS of batch data.
 * The ways run one after the other on the same data, `reps` rounds each.
 * Why a program of its own, linked with the internals (internal.h), and not a
 * subcommand of the cpdl tool (a client of libcpdl.so): the three baselines
 * need what the loader does without the loader — the mesh (cpdl__mesh_*),
 * the control plane (cpdl__ctl_*, cpdl__agree), the same collated stream at
 * the same cursor (cpdl__feed_*) and the same preparation parameters
 * (cpdl__config_prep_params) — so that only the way of moving the batch
 * differs. The cpdl way itself uses only cpdl_loader_*. */
#include "cli.h"
#include "internal.h"
#include "bench_len.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The MPI baselines' communicators (world, the mesh's node and group). */
static MPI_Comm world_comm = MPI_COMM_NULL, node_comm = MPI_COMM_NULL,
                group_comm = MPI_COMM_NULL;

static const char usage[] =
    "usage: mpirun -np N build/bench_ways [options]   (or: cpdl bench [options])\n"
    "  --ways naive,bcast,scatter,cpdl   ways to compare (default: all four)\n"
    "  --seq-lens 8K,128K,1M             sequence lengths (default: 8K,128K,1M)\n"
    "  --steps N                          measured steps per way and length (default 20)\n"
    "  --cp N --tp N --batch B --mode M --slots N --threads N   as for cpdl run\n"
    "  --touch                            every rank reads all of its slice each step (CPU\n"
    "                                     consumer); default: one word (a GPU copy is a DMA)\n"
    "  --json                             JSON lines only\n";


/* Proportional set size of this process in bytes (smaps_rollup). */
static long long pss_bytes(void) {
  FILE *f = fopen("/proc/self/smaps_rollup", "r");
  if (!f)
    return -1;
  char line[256];
  long long kb = -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "Pss: %lld kB", &kb) == 1)
      break;
  fclose(f);
  return kb < 0 ? -1 : kb * 1024;
}

/* What a rank does with its slice. By default it reads one word: a GPU
 * trainer's copy to the device is a DMA that costs the host no CPU. With
 * --touch it reads every byte, as a CPU consumer would (the same work in
 * every way, competing with the loaders for the cores). */
static bool touch_all;

static uint64_t checksum(const void *data, size_t bytes) {
  const uint64_t *p = data;
  uint64_t s = 0;
  size_t words = touch_all ? bytes / 8 : (bytes >= 8);
  for (size_t i = 0; i < words; i++)
    s += p[i];
  return s;
}

typedef struct way_result {
  double p50_us, p99_us, steps_per_s;
  long long node_pss;
  uint64_t checksum;
} way_result_t;

/* Collective over the mesh: a way's loop is over; fill its result from the
 * per-step latencies, the loop's start time and the PSS before it began. */
static void finish_way(const cpdl__mesh_t *mesh, double *lat, int steps, double t_start,
                       long long pss0, uint64_t sum, way_result_t *res) {
  (void)mesh; /* the barrier and the node sum use the MPI baselines' own communicators */
  MPI_Barrier(world_comm);
  double elapsed = cli_now_s() - t_start;
  long long pss = pss_bytes() - pss0, node_pss = 0;
  MPI_Allreduce(&pss, &node_pss, 1, MPI_LONG_LONG, MPI_SUM, node_comm);
  cli_percentiles(lat, (size_t)steps, &res->p50_us, &res->p99_us);
  res->steps_per_s = elapsed > 0 ? steps / elapsed : 0;
  res->node_pss = node_pss;
  res->checksum = sum;
}

/* The prepared layout for one configuration, shared by the MPI baselines. */
typedef struct baseline {
  cpdl__mesh_t *mesh;
  cpdl__feed_t *feed;
  cpdl_prep_plan_t *plan;
  size_t rank_bytes, shared_bytes, all_bytes;
} baseline_t;

static int baseline_open(const cpdl_config_t *cfg, cpdl__mesh_t *mesh, baseline_t *b) {
  memset(b, 0, sizeof *b);
  b->mesh = mesh;
  /* A baseline rank collates in its own thread: a single-buffered feed. */
  cpdl_config_t single = *cfg;
  single.threads = 1;
  int rc = cpdl__feed_open(&single, mesh->me.dp_rank, mesh->me.dp_size, &b->feed);
  if (rc)
    return rc;
  cpdl_tensor_t in[CPDL_MAX_FIELDS];
  int n = CPDL_MAX_FIELDS;
  if ((rc = cpdl__feed_spec(b->feed, in, &n)))
    return rc;
  cpdl_prep_params_t params;
  cpdl__config_prep_params(cfg, &params);
  if ((rc = cpdl_prep_plan_create(in, n, &params, &b->plan)))
    return rc;
  b->rank_bytes = cpdl_prep_plan_rank_bytes(b->plan);
  b->shared_bytes = cpdl_prep_plan_shared_bytes(b->plan);
  b->all_bytes = b->rank_bytes * (size_t)cfg->cp + b->shared_bytes;
  return 0;
}

static void baseline_close(baseline_t *b) {
  if (b->plan)
    cpdl_prep_plan_destroy(b->plan);
  if (b->feed)
    cpdl__feed_close(b->feed);
}

/* Prepare every CP rank's shard (as the leader does for bcast/scatter). */
static int prepare_all(baseline_t *b, int cp, char *buf) {
  cpdl_tensor_t in[CPDL_MAX_FIELDS];
  int n = CPDL_MAX_FIELDS;
  int rc = cpdl__feed_next(b->feed, in, &n);
  if (rc)
    return rc;
  int ranks[64];
  void *dst[64];
  for (int r = 0; r < cp; r++) {
    ranks[r] = r;
    dst[r] = buf + (size_t)r * b->rank_bytes;
  }
  return cpdl_prep_execute(b->plan, in, n, ranks, cp, dst, buf + (size_t)cp * b->rank_bytes);
}

static int run_baseline(const char *way, const cpdl_config_t *cfg, cpdl__mesh_t *mesh,
                        int steps, way_result_t *res) {
  long long pss0 = pss_bytes();
  baseline_t b;
  int rc = baseline_open(cfg, mesh, &b);
  int cp = cfg->cp, me = mesh->me.cp_rank;
  MPI_Comm group = group_comm;
  bool leader = mesh->is_leader;
  /* In bcast/scatter the group leader prepares and every rank receives.
   * naive: every rank prepares everything for itself. */
  char *full = NULL, *mine = NULL;
  if (!rc) {
    if (!strcmp(way, "naive")) {
      mine = malloc(b.rank_bytes + b.shared_bytes);
    } else {
      bool scatter = !strcmp(way, "scatter");
      /* bcast: everyone holds the whole batch; scatter: only the leader. */
      if (!scatter || leader)
        full = malloc(b.all_bytes);
      if (scatter)
        mine = malloc(b.rank_bytes);
    }
    bool need_full = !strcmp(way, "bcast") || (!strcmp(way, "scatter") && leader);
    if ((!mine && strcmp(way, "bcast")) || (!full && need_full))
      rc = cpdl__error(-ENOMEM, "out of memory for the %s baseline", way);
    if (!rc && full)
      memset(full, 0, b.all_bytes);
    if (!rc && mine)
      memset(mine, 0, strcmp(way, "naive") ? b.rank_bytes : b.rank_bytes + b.shared_bytes);
  }
  rc = cpdl__agree(&mesh->world, rc);
  double *lat = calloc((size_t)steps, sizeof *lat);
  int *counts = calloc((size_t)mesh->me.group_size, sizeof *counts);
  int *displs = calloc((size_t)mesh->me.group_size, sizeof *displs);
  uint64_t sum = 0;
  MPI_Barrier(world_comm);
  double t_start = cli_now_s();
  for (int s = 0; !rc && s < steps; s++) {
    double t0 = cli_now_s(), t1 = t0;
    if (!strcmp(way, "naive")) {
      cpdl_tensor_t in[CPDL_MAX_FIELDS];
      int n = CPDL_MAX_FIELDS;
      rc = cpdl__feed_next(b.feed, in, &n);
      void *dst = mine;
      if (!rc)
        rc = cpdl_prep_execute(b.plan, in, n, &me, 1, &dst, mine + b.rank_bytes);
      t1 = cli_now_s();
      sum += checksum(mine, b.rank_bytes);
    } else {
      if (leader)
        rc = prepare_all(&b, cp, full);
      /* "When the data is ready": time the transfer alone. */
      MPI_Barrier(group);
      t0 = cli_now_s();
      if (!strcmp(way, "bcast")) {
        MPI_Bcast(full, (int)b.all_bytes, MPI_BYTE, 0, group);
        t1 = cli_now_s();
        sum += checksum(full + (size_t)me * b.rank_bytes, b.rank_bytes);
      } else {
        for (int g = 0; g < mesh->me.group_size; g++) {
          counts[g] = (int)b.rank_bytes;
          int cp_rank = 0, dp_rank = 0, tp_rank = 0;
          cpdl__mesh_coords(mesh->group_world_ranks[g], mesh->me.world_size, cfg->cp, cfg->tp,
                            cfg->order, &dp_rank, &cp_rank, &tp_rank);
          displs[g] = cp_rank * (int)b.rank_bytes;
        }
        MPI_Scatterv(full, counts, displs, MPI_BYTE, mine, (int)b.rank_bytes, MPI_BYTE, 0, group);
        t1 = cli_now_s();
        sum += checksum(mine, b.rank_bytes);
      }
    }
    lat[s] = (t1 - t0) * 1e6;
  }
  finish_way(mesh, lat, steps, t_start, pss0, sum, res);
  free(lat);
  free(counts);
  free(displs);
  free(full);
  free(mine);
  baseline_close(&b);
  return rc;
}

static int run_cpdl(const cpdl_config_t *cfg, cpdl__mesh_t *mesh, int steps, way_result_t *res) {
  long long pss0 = pss_bytes();
  cpdl_loader_t *loader = NULL;
  int rc = cpdl_loader_open(world_comm, cfg, &loader);
  if (rc)
    return rc;
  double *lat = calloc((size_t)steps, sizeof *lat);
  uint64_t sum = 0;
  MPI_Barrier(world_comm);
  double t_start = cli_now_s();
  for (int s = 0; s < steps; s++) {
    cpdl_batch_t batch;
    /* Time next() when the data is ready, as the baselines time their
     * transfer after the leader prepared; steps/s covers everything. */
    if ((rc = cpdl__loader_wait_ready(loader)) != 0)
      break;
    double t0 = cli_now_s();
    rc = cpdl_loader_next(loader, &batch);
    double t1 = cli_now_s();
    if (rc)
      break;
    lat[s] = (t1 - t0) * 1e6;
    for (int f = 0; f < batch.n_fields; f++)
      sum += checksum(batch.fields[f].data, batch.fields[f].nbytes);
    cpdl_batch_release(loader, &batch);
  }
  int all = rc;
  MPI_Allreduce(&rc, &all, 1, MPI_INT, MPI_MIN, world_comm);
  finish_way(mesh, lat, steps, t_start, pss0, sum, res);
  free(lat);
  int close_rc = cpdl_loader_close(loader);
  return all ? all : close_rc;
}

static int bench_main(int argc, char **argv) {
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
  touch_all = flags.touch;
  if (cfg.steps <= 0 || cfg.steps == 100)
    cfg.steps = 20; /* the configuration's default is for runs, not benchmarks */
  const char *ways = flags.ways ? flags.ways : "naive,bcast,scatter,cpdl";
  const char *lens = flags.seq_lens ? flags.seq_lens : "8K,128K,1M";
  cpdl__mesh_t mesh;
  cpdl_oob_t oob;
  cpdl__ctl_t ctl;
  int rc = cpdl__oob_mpi_create(MPI_COMM_WORLD, &oob);
  if (!rc)
    rc = cpdl__ctl_init(&oob, &ctl);
  if (!rc)
    rc = cpdl__mesh_build(&ctl, NULL, cfg.cp, cfg.tp, cfg.order, &mesh);
  if (!rc) {
    /* The MPI baselines' own communicators, the same sets as the mesh's teams. */
    world_comm = MPI_COMM_WORLD;
    MPI_Comm_split(MPI_COMM_WORLD, mesh.me.node, rank, &node_comm);
    MPI_Comm_split(MPI_COMM_WORLD, mesh.me.group, rank, &group_comm);
  }
  if (rc) {
    if (rank == 0)
      fprintf(stderr, "cpdl bench: %s\n", cpdl_last_error());
    MPI_Finalize();
    return 1;
  }
  if (rank == 0 && !flags.json)
    printf("%-8s %9s %4s %4s %4s %12s %12s %14s %16s\n", "way", "seq_len", "np", "cp", "tp",
           "next_p50_us", "next_p99_us", "group_steps/s", "node_pss_bytes");
  int status = 0;
  for (const char *l = lens; *l && !status;) {
    char *end;
    int64_t seq_len = bench_parse_len(l, &end);
    l = *end == ',' ? end + 1 : end;
    if (seq_len <= 0)
      continue;
    cpdl_config_t c = cfg;
    c.seq_len = seq_len;
    char wbuf[128];
    snprintf(wbuf, sizeof wbuf, "%s", ways);
    for (char *save = NULL, *way = strtok_r(wbuf, ",", &save); way && !status;
         way = strtok_r(NULL, ",", &save)) {
      way_result_t res;
      memset(&res, 0, sizeof res);
      if (!strcmp(way, "cpdl"))
        rc = run_cpdl(&c, &mesh, (int)c.steps, &res);
      else if (!strcmp(way, "naive") || !strcmp(way, "bcast") || !strcmp(way, "scatter"))
        rc = run_baseline(way, &c, &mesh, (int)c.steps, &res);
      else
        rc = cpdl__error(CPDL_EARG, "unknown way '%s' (naive, bcast, scatter, cpdl)", way);
      rc = cpdl__agree(&mesh.world, rc);
      if (rc) {
        if (rank == 0)
          fprintf(stderr, "cpdl bench: %s at seq_len %lld: %s\n", way, (long long)seq_len,
                  cpdl_last_error());
        status = 1;
        break;
      }
      double p50 = 0, p99 = 0, sps = 0;
      long long pss = 0;
      MPI_Reduce(&res.p50_us, &p50, 1, MPI_DOUBLE, MPI_MAX, 0, world_comm);
      MPI_Reduce(&res.p99_us, &p99, 1, MPI_DOUBLE, MPI_MAX, 0, world_comm);
      MPI_Reduce(&res.steps_per_s, &sps, 1, MPI_DOUBLE, MPI_MIN, 0, world_comm);
      MPI_Reduce(&res.node_pss, &pss, 1, MPI_LONG_LONG, MPI_MAX, 0, world_comm);
      if (rank == 0) {
        if (!flags.json)
          printf("%-8s %9lld %4d %4d %4d %12.1f %12.1f %14.2f %16lld\n", way, (long long)seq_len,
                 mesh.me.world_size, c.cp, c.tp, p50, p99, sps, pss);
        printf("{\"way\": \"%s\", \"seq_len\": %lld, \"np\": %d, \"cp\": %d, \"tp\": %d, "
               "\"batch\": %d, \"mode\": \"%s\", \"slots\": %d, \"threads\": %d, \"touch\": %s, "
               "\"next_p50_us\": %.2f, \"next_p99_us\": %.2f, \"group_steps_per_s\": %.3f, "
               "\"node_pss_bytes\": %lld}\n",
               way, (long long)seq_len, mesh.me.world_size, c.cp, c.tp, c.batch,
               cpdl_mode_name(c.mode), c.slots, c.threads, touch_all ? "true" : "false", p50, p99,
               sps, pss);
        fflush(stdout);
      }
    }
  }
  cpdl__mesh_free(&mesh);
  MPI_Comm_free(&node_comm);
  MPI_Comm_free(&group_comm);
  cpdl__oob_mpi_free(&oob);
  MPI_Finalize();
  return status;
}

int main(int argc, char **argv) { return bench_main(argc, argv); }
