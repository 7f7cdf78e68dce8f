/* ctl_test.h — the MPI world as a cpdl control plane, for scenarios that
 * call cpdl__ internals (agreement, mesh, pin, coll) directly. The dup of
 * MPI_COMM_WORLD lives until MPI_Finalize. Header-only. */
#ifndef CPDL_CTL_TEST_H
#define CPDL_CTL_TEST_H

#include "internal.h"

#include <stdio.h>
#include <stdlib.h>

static cpdl_oob_t cpdl_test_oob;
static cpdl__ctl_t cpdl_test_ctl_storage;
static cpdl__team_t cpdl_test_world_team;

/* Collective on first use (MPI_Comm_dup). */
static inline const cpdl__team_t *cpdl_test_world(void) {
  static int ready;
  if (!ready) {
    if (cpdl__oob_mpi_create(MPI_COMM_WORLD, &cpdl_test_oob) ||
        cpdl__ctl_init(&cpdl_test_oob, &cpdl_test_ctl_storage)) {
      fprintf(stderr, "control plane: %s\n", cpdl_last_error());
      abort();
    }
    cpdl__team_world(&cpdl_test_ctl_storage, &cpdl_test_world_team);
    ready = 1;
  }
  return &cpdl_test_world_team;
}

static inline const cpdl__ctl_t *cpdl_test_ctl(void) { return cpdl_test_world()->ctl; }

#endif /* CPDL_CTL_TEST_H */
