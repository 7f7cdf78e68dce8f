/* loader_contract.c — every rank checks that its zero-copy view of every
 * step equals the contract applied to its batch, computed independently here:
 * the rank runs its own feed (same config, same dp rank: deterministic) and
 * the pure preparation for its own CP rank, then compares byte for byte.
 * Also: views are read-only (writes fault), TP peers share one shard, and
 * nothing of cpdl is left in /dev/shm after close.
 *
 * usage: mpi_loader_contract "<key=value ...>"   (cpdl configuration)
 */
#include "internal.h"
#include "mpi_test.h"

#include <setjmp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

static sigjmp_buf fault_jmp;
static void on_segv(int sig) {
  (void)sig;
  siglongjmp(fault_jmp, 1);
}

/* Writing into a view must fault: consumers map data read-only. */
static int write_faults(const void *p) {
  struct sigaction sa = {.sa_handler = on_segv}, old_segv, old_bus;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, &old_segv);
  sigaction(SIGBUS, &sa, &old_bus);
  int faulted = 1;
  if (sigsetjmp(fault_jmp, 1) == 0) {
    volatile char *c = (volatile char *)p;
    char v = *c;
    *c = v; /* must not return */
    faulted = 0;
  }
  sigaction(SIGSEGV, &old_segv, NULL);
  sigaction(SIGBUS, &old_bus, NULL);
  return faulted;
}

int main(int argc, char **argv) {
  cpdl_test_init(&argc, &argv);
  int rank = cpdl_test_world_rank();
  cpdl_config_t cfg;
  cpdl_config_init(&cfg);
  cfg.steps = 6;
  cfg.seq_len = 1000;
  cfg.slots = 3;
  int rc = argc > 1 ? cpdl_config_parse(&cfg, argv[1]) : 0;
  CHECK(rc == 0, "config: %s", cpdl_last_error());

  cpdl_loader_t *loader = NULL;
  rc = cpdl_loader_open(MPI_COMM_WORLD, &cfg, &loader);
  CHECK(rc == 0, "open: %s", cpdl_last_error());
  if (rc) {
    int code = cpdl_test_finish();
    MPI_Finalize();
    return code;
  }
  cpdl_mesh_coords_t me;
  cpdl_loader_mesh(loader, &me);

  /* The independent expectation: own feed + pure preparation. */
  cpdl__feed_t *feed = NULL;
  rc = cpdl__feed_open(&cfg, me.dp_rank, me.dp_size, &feed);
  CHECK(rc == 0, "feed: %s", cpdl_last_error());
  cpdl_prep_params_t params;
  cpdl_prep_params_init(&params);
  params.cp_size = cfg.cp;
  params.tp_size = cfg.tp;
  params.mode = cfg.mode;
  params.padding_token_id = cfg.padding_token_id;

  uint64_t first_checksum_tp = 0;
  for (int64_t s = 0; s < cfg.steps && feed; s++) {
    cpdl_batch_t batch;
    rc = cpdl_loader_next(loader, &batch);
    CHECK(rc == 0, "next(%lld): %s", (long long)s, cpdl_last_error());
    if (rc)
      break;
    CHECK(batch.step == (uint64_t)s, "step %llu, expected %lld", (unsigned long long)batch.step,
          (long long)s);
    CHECK(batch.mesh.cp_rank == me.cp_rank);

    cpdl_tensor_t in[CPDL_MAX_FIELDS];
    int n = CPDL_MAX_FIELDS;
    rc = cpdl__feed_next(feed, in, &n);
    CHECK(rc == 0, "feed_next: %s", cpdl_last_error());
    cpdl_prep_plan_t *plan = NULL;
    rc = cpdl_prep_plan_create(in, n, &params, &plan);
    CHECK(rc == 0, "plan: %s", cpdl_last_error());
    if (rc == 0) {
      size_t rb = cpdl_prep_plan_rank_bytes(plan), sb = cpdl_prep_plan_shared_bytes(plan);
      char *mine = calloc(1, rb + sb + 64);
      void *dst = mine;
      int cp_rank = me.cp_rank;
      rc = cpdl_prep_execute(plan, in, n, &cp_rank, 1, &dst, sb ? mine + rb : NULL);
      CHECK(rc == 0, "execute: %s", cpdl_last_error());
      CHECK(batch.n_fields == cpdl_prep_plan_nfields(plan), "%d fields, expected %d",
            batch.n_fields, cpdl_prep_plan_nfields(plan));
      for (int f = 0; f < batch.n_fields && f < cpdl_prep_plan_nfields(plan); f++) {
        const cpdl_prep_field_t *pf = cpdl_prep_plan_field(plan, f);
        const cpdl_view_field_t *vf = &batch.fields[f];
        CHECK(strcmp(pf->name, vf->name) == 0, "field %d is %s, expected %s", f, vf->name,
              pf->name);
        CHECK(pf->dtype == vf->dtype && pf->ndim == vf->ndim && pf->nbytes == vf->nbytes,
              "field %s: dtype/ndim/bytes differ", vf->name);
        CHECK(memcmp(pf->shape, vf->shape, sizeof pf->shape) == 0, "field %s: shape differs",
              vf->name);
        const char *expect = (pf->shared ? mine + rb : mine) + pf->offset;
        CHECK(memcmp(expect, vf->data, pf->nbytes) == 0,
              "step %lld field %s: view differs from the contract", (long long)s, vf->name);
      }
      if (s == 0) {
        CHECK(write_faults(batch.fields[0].data), "a view is writable");
        CHECK(batch.region && batch.region_bytes > 0, "no region");
        /* TP peers with the same CP rank share one shard: same checksum. */
        uint64_t sum = 0;
        const uint64_t *p = batch.fields[0].data;
        for (size_t i = 0; i < batch.fields[0].nbytes / 8; i++)
          sum += p[i] * (i + 1);
        first_checksum_tp = sum;
      }
      free(mine);
      cpdl_prep_plan_destroy(plan);
    }
    rc = cpdl_batch_release(loader, &batch);
    CHECK(rc == 0, "release: %s", cpdl_last_error());
  }
  /* A second release of a released batch is a state error, not a crash. */
  cpdl_batch_t none;
  memset(&none, 0, sizeof none);
  CHECK(cpdl_batch_release(loader, &none) == CPDL_ESTATE);
  /* After the configured steps: EOF. */
  cpdl_batch_t extra;
  CHECK(cpdl_loader_next(loader, &extra) == CPDL_EEOF, "no EOF after %lld steps",
        (long long)cfg.steps);

  /* TP peers: compare the checksum within each (dp, cp) pair. */
  MPI_Comm tp_comm;
  MPI_Comm_split(MPI_COMM_WORLD, me.dp_rank * cfg.cp + me.cp_rank, rank, &tp_comm);
  uint64_t lo = 0, hi = 0;
  MPI_Allreduce(&first_checksum_tp, &lo, 1, MPI_UINT64_T, MPI_MIN, tp_comm);
  MPI_Allreduce(&first_checksum_tp, &hi, 1, MPI_UINT64_T, MPI_MAX, tp_comm);
  CHECK(lo == hi, "TP peers of cp rank %d see different shards", me.cp_rank);
  MPI_Comm_free(&tp_comm);

  if (feed)
    cpdl__feed_close(feed);
  rc = cpdl_loader_close(loader);
  CHECK(rc == 0, "close: %s", cpdl_last_error());
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0)
    CHECK(cpdl_test_shm_residue("after close") == 0, "segments left in /dev/shm");
  int code = cpdl_test_finish();
  MPI_Finalize();
  return code;
}
