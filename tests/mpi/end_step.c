/* end_step.c — R21: every replica ends on the same step, the fewest whole
 * steps any replica's `epochs` passes hold, agreed over the whole world (not
 * only within a group). The data is chosen so that the replicas' own counts
 * differ (checked first, from each replica's feed computed here); then every
 * rank counts the steps its loader delivers until EOF, and all counts must be
 * that minimum. A replica that ended on its own count would deliver more or
 * fewer steps than another (or wait for it in a collective until the loader's
 * timeout_ms, which the test sets short).
 *
 * usage: mpi_end_step "<key=value ...>"   (cpdl configuration; epochs >= 1)
 */
#include "internal.h"
#include "mpi_test.h"

#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
  cpdl_test_init(&argc, &argv);
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  cpdl_config_t cfg;
  cpdl_config_init(&cfg);
  snprintf(cfg.pin, sizeof cfg.pin, "none");
  cfg.steps = 0;
  cfg.timeout_ms = 20000;
  CHECK(argc > 1 && cpdl_config_parse(&cfg, argv[1]) == 0, "config: %s", cpdl_last_error());
  CHECK(cpdl__config_epochs(&cfg) >= 1, "the scenario needs epochs >= 1");
  const int dp = size / (cfg.cp * cfg.tp);
  CHECK(dp >= 2 && dp * cfg.cp * cfg.tp == size, "needs dp >= 2: np %d, cp %d, tp %d", size,
        cfg.cp, cfg.tp);

  /* Each replica's own count of whole steps (what its group leader computes). */
  uint64_t fewest = UINT64_MAX, most = 0;
  for (int r = 0; r < dp; r++) {
    cpdl__feed_t *feed = NULL;
    uint64_t steps = 0;
    CHECK(cpdl__feed_open(&cfg, r, dp, &feed) == 0, "feed of replica %d: %s", r,
          cpdl_last_error());
    CHECK(cpdl__feed_steps(feed, cpdl__config_epochs(&cfg), UINT64_MAX, &steps) == 0,
          "steps of replica %d: %s", r, cpdl_last_error());
    cpdl__feed_close(feed);
    fewest = steps < fewest ? steps : fewest;
    most = steps > most ? steps : most;
  }
  CHECK(fewest > 0, "a replica holds no whole step (fewest %llu)", (unsigned long long)fewest);
  if (fewest == most) {
    /* Nothing to agree on (e.g. one global order that gives every replica the
     * same steps): a visible skip (CTest SKIP_RETURN_CODE 77), not a pass. */
    if (cpdl_test_world_rank() == 0)
      printf("end_step: SKIP: every replica's own count is %llu steps, so the agreement is not "
             "exercised; change the source's lengths or samples\n", (unsigned long long)most);
    MPI_Finalize();
    return 77;
  }

  cpdl_loader_t *loader = NULL;
  CHECK(cpdl_loader_open(MPI_COMM_WORLD, &cfg, &loader) == 0, "open: %s", cpdl_last_error());
  uint64_t got = 0;
  cpdl_batch_t b;
  int rc;
  while ((rc = cpdl_loader_next(loader, &b)) == 0) {
    CHECK(b.step == got, "step %llu delivered as the %lluth", (unsigned long long)b.step,
          (unsigned long long)got);
    got++;
    CHECK(cpdl_batch_release(loader, &b) == 0, "release: %s", cpdl_last_error());
  }
  CHECK(rc == CPDL_EEOF, "the run ended with %s: %s", cpdl_err_name(rc), cpdl_last_error());
  CHECK(cpdl_loader_close(loader) == 0, "close: %s", cpdl_last_error());
  uint64_t lo = got, hi = got;
  MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
  CHECK(lo == hi, "ranks delivered from %llu to %llu steps: every replica must end on the "
        "same step", (unsigned long long)lo, (unsigned long long)hi);
  CHECK(got == fewest, "delivered %llu steps; the fewest of any replica is %llu (most %llu)",
        (unsigned long long)got, (unsigned long long)fewest, (unsigned long long)most);
  CHECK(cpdl_test_shm_residue("after close") == 0, "segments left behind");
  int code = cpdl_test_finish();
  MPI_Finalize();
  return code;
}
