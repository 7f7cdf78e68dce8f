/* leave_rank.c — R19: one rank closes its loader out of turn (as an
 * exception or an early exit does) while holding step 2; every other rank of
 * its group must fail with CPDL_EPEER naming that rank and saying it left,
 * within 2 s of the close (measured from the close, not the job's start),
 * never a timeout that blames the leader. After that first CPDL_EPEER the
 * loader is failed: next() keeps returning CPDL_EPEER, and close returns
 * CPDL_EPEER without collectives. The rank that left gets
 * CPDL_EPEER from its close too (its barrier ends when the group reports
 * it), so everyone reaches the final verdict and nothing is left in /dev/shm.
 *
 * usage: mpi_leave_rank <leaving world rank> "<key=value ...>"
 */
#include "internal.h"
#include "mpi_test.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
  cpdl_test_init(&argc, &argv);
  int rank = cpdl_test_world_rank();
  int leaver = argc > 1 ? atoi(argv[1]) : 1;
  cpdl_loader_t *loader = cpdl_test_open_long_run(20000, argc > 2 ? argv[2] : NULL);
  if (!loader)
    return cpdl_test_finish();
  int rc = 0;
  cpdl_mesh_coords_t me;
  cpdl_loader_mesh(loader, &me);
  /* One group (cp * tp == np): a failed group's ranks close locally, and a
   * close of another group would wait for them in its job-wide agreement. */
  CHECK(me.group_size == me.world_size, "run with cp * tp == np (group of %d, world of %d)",
        me.group_size, me.world_size);

  double t_left = 0, t_error = 0;
  int steps = 0;
  char why[1024] = "";
  if (rank == leaver) {
    cpdl_batch_t batch;
    for (int step = 0; step < 3; step++) {
      rc = cpdl_loader_next(loader, &batch);
      CHECK(rc == 0, "next %d: %s", step, cpdl_last_error());
      if (step < 2)
        cpdl_batch_release(loader, &batch);
    }
    t_left = cpdl_test_now_s();
    rc = cpdl_loader_close(loader); /* out of turn, holding step 2 */
    CHECK(rc == CPDL_EPEER, "the leaving rank's close: expected CPDL_EPEER, got %s: %s",
          cpdl_err_name(rc), cpdl_last_error());
    double took = cpdl_test_now_s() - t_left;
    CHECK(took < 5.0, "the leaving rank's close took %.1f s", took);
  } else {
    for (;;) {
      cpdl_batch_t batch;
      rc = cpdl_loader_next(loader, &batch);
      if (rc)
        break;
      steps++;
      cpdl_batch_release(loader, &batch);
    }
    t_error = cpdl_test_now_s();
    snprintf(why, sizeof why, "%s", cpdl_last_error());
    {
      char expect[64];
      snprintf(expect, sizeof expect, "rank %d ", leaver);
      CHECK(rc == CPDL_EPEER, "expected CPDL_EPEER, got %s: %s", cpdl_err_name(rc), why);
      CHECK(strstr(why, expect) && strstr(why, "left"), "message does not name %sas left: %s",
            expect, why);
      /* 19.4: failed for good, even once the ring has had time to fill. */
      usleep(300 * 1000);
      for (int i = 0; i < 3; i++) {
        cpdl_batch_t again;
        int again_rc = cpdl_loader_next(loader, &again);
        CHECK(again_rc == CPDL_EPEER, "next() #%d after the first CPDL_EPEER returned %s", i + 2,
              cpdl_err_name(again_rc));
      }
      rc = cpdl_loader_close(loader);
      CHECK(rc == CPDL_EPEER && strstr(cpdl_last_error(), "without collectives"),
            "close after CPDL_EPEER: %s: %s", cpdl_err_name(rc), cpdl_last_error());
    }
  }
  /* Every rank is alive: the world can still agree on the timing. */
  double left_at = t_left, error_at = t_error;
  MPI_Allreduce(MPI_IN_PLACE, &left_at, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &error_at, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0)
    printf("leave test: rank %d left; its group's last error came %.3f s later\n", leaver,
           error_at - left_at);
  CHECK(error_at - left_at < 2.0, "the group learnt %.2f s after the rank left (bound 2 s)",
        error_at - left_at);
  MPI_Barrier(MPI_COMM_WORLD);
  CHECK(cpdl_test_shm_residue("after a rank left") == 0, "segments left in /dev/shm");
  int code = cpdl_test_finish();
  MPI_Finalize();
  return code;
}
