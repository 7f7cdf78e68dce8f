/* kill_rank.c — R6: one rank is SIGKILLed mid-run while holding a slot;
 * every other rank of its group must return CPDL_EPEER naming the dead rank
 * within 10 s, never hang, and nothing may be left in /dev/shm; after that
 * first CPDL_EPEER a save is refused at once (no collective).
 * Run under `mpirun --enable-recovery` so the survivors are not killed by
 * mpirun itself. No collective can complete after the death, so each
 * survivor prints its own verdict line; CTest matches PASS/FAIL lines.
 *
 * usage: mpi_kill_rank <victim world rank> "<key=value ...>"
 */
#include "internal.h"
#include "mpi_test.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
  cpdl_test_init(&argc, &argv);
  int rank = cpdl_test_world_rank();
  int victim = argc > 1 ? atoi(argv[1]) : 1;
  cpdl_loader_t *loader = cpdl_test_open_long_run(30000, argc > 2 ? argv[2] : NULL);
  if (!loader)
    return cpdl_test_finish();
  int rc = 0;
  cpdl_mesh_coords_t me;
  cpdl_loader_mesh(loader, &me);
  MPI_Barrier(MPI_COMM_WORLD);

  /* A survivor still behind step 3 when the victim dies learns of it from
   * the group's posted error: its bound runs from that (failing) call. */
  double t_kill = 0, t_call = 0;
  int got = 0;
  for (int step = 0; step < 100000; step++) {
    cpdl_batch_t batch;
    t_call = cpdl_test_now_s();
    rc = cpdl_loader_next(loader, &batch);
    if (rc)
      break;
    if (step == 3) {
      t_kill = cpdl_test_now_s();
      if (rank == victim)
        raise(SIGKILL); /* dies holding its slot */
    }
    got++;
    cpdl_batch_release(loader, &batch);
  }
  double waited = cpdl_test_now_s() - (t_kill > 0 ? t_kill : t_call);
  char why[1024];
  snprintf(why, sizeof why, "%s", cpdl_last_error());
  char expect[64];
  snprintf(expect, sizeof expect, "rank %d ", victim);
  CHECK(rc == CPDL_EPEER, "expected CPDL_EPEER, got %s: %s", cpdl_err_name(rc), cpdl_last_error());
  CHECK(strstr(why, expect) != NULL, "message does not name %s: %s", expect, why);
  CHECK(waited < 10.0, "the error took %.1f s (bound 10 s)", waited);
  /* The first CPDL_EPEER fails the loader at once: a save right after it is
   * refused without a collective (one would wait for the dead rank; across
   * hosts only a timeout would end it), before any further next(). */
  size_t need = 0;
  CHECK(cpdl_loader_state_size(loader, &need) == 0, "state size: %s", cpdl_last_error());
  void *state = malloc(need);
  rc = cpdl_loader_state_save(loader, state, need, NULL);
  CHECK(rc == CPDL_EPEER && strstr(cpdl_last_error(), "failed earlier"),
        "a save after the death must be refused without collectives: %s: %s", cpdl_err_name(rc),
        cpdl_last_error());
  free(state);
  /* The loader is failed: next() keeps failing, close cleans up locally. */
  cpdl_batch_t again;
  CHECK(cpdl_loader_next(loader, &again) == CPDL_EPEER);
  rc = cpdl_loader_close(loader);
  CHECK(rc == CPDL_EPEER && strstr(cpdl_last_error(), "without collectives"),
        "close after a death must clean up locally: %s: %s", cpdl_err_name(rc),
        cpdl_last_error());
  CHECK(cpdl_test_shm_residue("after a rank died") == 0, "segments left in /dev/shm");
  printf("kill test: rank %d %s after %.2f s (%d steps): %s\n", rank,
         cpdl_test_failures ? "FAIL" : "PASS", waited, got, why);
  fflush(stdout);
  /* MPI_Finalize could wait for the dead rank: leave without it. */
  _exit(cpdl_test_failures ? 1 : 0);
}
