/* leave_collective.c — R25: one rank closes its loader (as an exception or an
 * early exit does) while every other rank is in a collective: state save.
 * Before, the leaver's close barrier matched the others' save allgathers
 * (MPI_ERR_TRUNCATE, an abort nobody named). Now every operation agrees on a
 * fixed-size header first: every rank — the leaver too — returns CPDL_EPEER
 * from its call within 2 s, and every survivor's message names the leaver
 * as having left. The survivors' close is then local ("without
 * collectives"), and nothing is left in /dev/shm.
 *
 * usage: mpi_leave_collective <leaving world rank> "<key=value ...>"
 */
#include "internal.h"
#include "mpi_test.h"

#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
  cpdl_test_init(&argc, &argv);
  int rank = cpdl_test_world_rank();
  int leaver = argc > 1 ? atoi(argv[1]) : 1;
  cpdl_loader_t *loader = cpdl_test_open_long_run(20000, argc > 2 ? argv[2] : NULL);
  if (!loader)
    return cpdl_test_finish();
  /* Two steps everywhere, so the save would be a valid one. */
  for (int step = 0; step < 2; step++) {
    cpdl_batch_t batch;
    int rc = cpdl_loader_next(loader, &batch);
    CHECK(rc == 0, "next %d: %s", step, cpdl_last_error());
    if (rc == 0)
      cpdl_batch_release(loader, &batch);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  double t0 = cpdl_test_now_s();
  char why[1024] = "";
  int rc;
  if (rank == leaver) {
    rc = cpdl_loader_close(loader);
    snprintf(why, sizeof why, "%s", cpdl_last_error());
    CHECK(rc == CPDL_EPEER, "the leaver's close: expected CPDL_EPEER, got %s: %s",
          cpdl_err_name(rc), why);
  } else {
    size_t need = 0;
    cpdl_loader_state_size(loader, &need);
    char *state = malloc(need);
    rc = cpdl_loader_state_save(loader, state, need, NULL);
    snprintf(why, sizeof why, "%s", cpdl_last_error());
    free(state);
    char expect[64];
    snprintf(expect, sizeof expect, "rank %d ", leaver);
    CHECK(rc == CPDL_EPEER, "state save while rank %d closes: expected CPDL_EPEER, got %s: %s",
          leaver, cpdl_err_name(rc), why);
    CHECK(strstr(why, expect) && strstr(why, "left") && strstr(why, "state save"),
          "the message does not name %sas having left during the state save: %s", expect, why);
    rc = cpdl_loader_close(loader);
    CHECK(rc == CPDL_EPEER && strstr(cpdl_last_error(), "without collectives"),
          "close after CPDL_EPEER: %s: %s", cpdl_err_name(rc), cpdl_last_error());
  }
  double took = cpdl_test_now_s() - t0, slowest = took;
  MPI_Allreduce(MPI_IN_PLACE, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  printf("rank %d: %s after %.3f s: %s\n", rank, rank == leaver ? "close" : "state save",
         took, why);
  CHECK(slowest < 2.0, "the last rank learnt %.2f s after the leave (bound 2 s)", slowest);
  MPI_Barrier(MPI_COMM_WORLD);
  CHECK(cpdl_test_shm_residue("after a rank left during a collective") == 0,
        "segments left in /dev/shm");
  int code = cpdl_test_finish();
  MPI_Finalize();
  return code;
}
