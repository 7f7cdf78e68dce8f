/* check_aborts.c — the harness's own rule (mpi_test.h): a failed CHECK ends
 * the whole job at once with its message. Rank 1 fails a check and would then
 * wait for a message nobody sends, while rank 0 waits in a barrier rank 1
 * never reaches: without the abort the job would hang until ctest's timeout.
 * CTest passes the test when the output shows the check and the abort. */
#include "mpi_test.h"

int main(int argc, char **argv) {
  cpdl_test_init(&argc, &argv);
  int rank = cpdl_test_world_rank();
  if (rank == 1) {
    CHECK(0, "a deliberate failure");
    int never = 0;
    MPI_Recv(&never, 1, MPI_INT, 0, 99, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  } else {
    MPI_Barrier(MPI_COMM_WORLD);
  }
  printf("check_aborts: the job went on after a failed check\n");
  MPI_Finalize();
  return 0;
}
