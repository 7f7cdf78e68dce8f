/* resume_elastic.c — the C API resumes a state under another layout and
 * continues the global order exactly. Rank 0 alone (dp 1, cp 1) computes the
 * reference rows of input_ids; layout A (the whole world, cp=<cpa>) takes K
 * steps and saves (collective); rank 0's bytes restore layout B (the first
 * <nb> ranks, cp=<cpb>), which runs to the end. Every rank of A and B checks
 * its view against the reference: replica r's step k holds global rows
 * c0 + ((k - k0)*dp + r)*batch + b (c0, k0: rows and steps before it), its CP
 * rank c columns [c*S/cp, (c+1)*S/cp) (contiguous). With CPDL_RANKS_PER_NODE
 * set, nodes are faked too (a change of node count between A and B when the
 * layouts' groups differ).
 *
 * usage: mpi_resume_elastic <cpa> <tpa> <nb> <cpb> <tpb> "<key=value ...>"
 */
#include "internal.h"
#include "mpi_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define K 2
#define ROWS 48 /* reference rows */

static int64_t S, BATCH;
static int64_t ref[ROWS][1024];

static cpdl_config_t config(const char *text, int cp, int tp, int64_t steps) {
  cpdl_config_t cfg;
  cpdl_config_init(&cfg);
  CHECK(cpdl_config_parse(&cfg, text) == 0, "config: %s", cpdl_last_error());
  cfg.cp = cp;
  cfg.tp = tp;
  cfg.steps = steps;
  snprintf(cfg.pin, sizeof cfg.pin, "none");
  return cfg;
}

/* Run on comm from an optional state; check every view against ref; save at
 * step save_at into *state. Returns the steps delivered. */
static int64_t run(MPI_Comm comm, const cpdl_config_t *cfg, const void *restore, size_t rsize,
                   int64_t consumed, int64_t save_at, char *state, size_t *ssize) {
  cpdl_loader_t *L = NULL;
  int rc = cpdl_loader_open(comm, cfg, &L);
  CHECK(rc == 0, "open: %s", cpdl_last_error());
  if (rc)
    return 0;
  if (restore)
    CHECK(cpdl_loader_state_restore(L, restore, rsize) == 0, "restore: %s", cpdl_last_error());
  int64_t steps = 0, first = -1;
  cpdl_batch_t b;
  while ((rc = cpdl_loader_next(L, &b)) == 0) {
    if (first < 0)
      first = (int64_t)b.step;
    const cpdl_view_field_t *ids = NULL;
    for (int f = 0; f < b.n_fields; f++)
      if (strcmp(b.fields[f].name, "input_ids") == 0)
        ids = &b.fields[f];
    CHECK(ids && ids->ndim == 2 && ids->shape[0] == BATCH, "input_ids view");
    int64_t w = S / b.mesh.cp_size, c = b.mesh.cp_rank;
    for (int64_t row = 0; ids && row < BATCH; row++) {
      int64_t g = consumed + (((int64_t)b.step - first) * b.mesh.dp_size + b.mesh.dp_rank) * BATCH + row;
      CHECK(g < ROWS, "row %lld beyond the reference", (long long)g);
      if (g >= ROWS)
        break;
      const int64_t *got = (const int64_t *)ids->data + row * ids->shape[1];
      CHECK(memcmp(got, ref[g] + c * w, (size_t)w * 8) == 0,
            "step %llu dp %d/%d cp %d/%d row %lld: not global row %lld", (unsigned long long)b.step,
            b.mesh.dp_rank, b.mesh.dp_size, b.mesh.cp_rank, b.mesh.cp_size, (long long)row,
            (long long)g);
    }
    cpdl_batch_release(L, &b);
    steps++;
    if ((int64_t)b.step == save_at) {
      rc = cpdl_loader_state_save(L, state, 8192, ssize);
      CHECK(rc == 0, "save: %s", cpdl_last_error());
    }
  }
  CHECK(rc == CPDL_EEOF, "next: %s", cpdl_last_error());
  cpdl_loader_close(L);
  return steps;
}

int main(int argc, char **argv) {
  int rank, size;
  cpdl_test_init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  CHECK(argc == 7, "usage: mpi_resume_elastic <cpa> <tpa> <nb> <cpb> <tpb> \"<config>\"");
  if (argc != 7)
    return cpdl_test_finish();
  int cpa = atoi(argv[1]), tpa = atoi(argv[2]), nb = atoi(argv[3]), cpb = atoi(argv[4]);
  int tpb = atoi(argv[5]);
  const char *text = argv[6];
  cpdl_config_t probe = config(text, 1, 1, 1);
  S = probe.seq_len;
  BATCH = probe.batch;
  CHECK(S <= 1024 && S % (2 * cpa) == 0 && S % (2 * cpb) == 0, "seq_len %lld", (long long)S);

  /* The reference: rank 0 alone, dp 1 cp 1. */
  MPI_Comm solo;
  MPI_Comm_split(MPI_COMM_WORLD, rank == 0 ? 0 : MPI_UNDEFINED, rank, &solo);
  if (rank == 0) {
    cpdl_config_t cfg = config(text, 1, 1, ROWS / BATCH);
    cpdl_loader_t *L = NULL;
    CHECK(cpdl_loader_open(solo, &cfg, &L) == 0, "reference open: %s", cpdl_last_error());
    cpdl_batch_t b;
    for (int64_t k = 0; L && k < ROWS / BATCH; k++) {
      CHECK(cpdl_loader_next(L, &b) == 0, "reference next: %s", cpdl_last_error());
      for (int f = 0; f < b.n_fields; f++)
        if (strcmp(b.fields[f].name, "input_ids") == 0)
          for (int64_t row = 0; row < BATCH; row++)
            memcpy(ref[k * BATCH + row], (const int64_t *)b.fields[f].data + row * b.fields[f].shape[1],
                   (size_t)S * 8);
      cpdl_batch_release(L, &b);
    }
    cpdl_loader_close(L);
    MPI_Comm_free(&solo);
  }
  MPI_Bcast(ref, (int)sizeof ref, MPI_BYTE, 0, MPI_COMM_WORLD);

  /* A: the world, K steps, saved after step K-1. */
  int dpa = size / (cpa * tpa), dpb = nb / (cpb * tpb);
  static char state[8192];
  size_t n = 0;
  cpdl_config_t a = config(text, cpa, tpa, K);
  CHECK(run(MPI_COMM_WORLD, &a, NULL, 0, 0, K - 1, state, &n) == K, "A delivered %d steps", K);
  /* B: rank 0's bytes, on the first nb ranks, to the reference's end. */
  MPI_Bcast(&n, (int)sizeof n, MPI_BYTE, 0, MPI_COMM_WORLD);
  MPI_Bcast(state, (int)n, MPI_BYTE, 0, MPI_COMM_WORLD);
  int64_t consumed = (int64_t)K * dpa * BATCH;
  int64_t more = (ROWS - consumed) / (dpb * BATCH);
  MPI_Comm part;
  MPI_Comm_split(MPI_COMM_WORLD, rank < nb ? 0 : MPI_UNDEFINED, rank, &part);
  if (rank < nb) {
    cpdl_config_t bcfg = config(text, cpb, tpb, K + more);
    int64_t got = run(part, &bcfg, state, n, consumed, -1, state, NULL);
    CHECK(got == more, "B delivered %lld steps, expected %lld", (long long)got, (long long)more);
    MPI_Comm_free(&part);
  }
  int code = cpdl_test_finish();
  MPI_Finalize();
  return code;
}
