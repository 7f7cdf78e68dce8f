/* coll.c — MPI scenario: the watched collectives of src/coll.c.
 *
 *  1. With a watch of the live host ranks installed, every wrapper gives
 *     the same result as the blocking MPI call (the heap copies round-trip).
 *  2. Liveness: a zombie child (exited, not reaped) is dead through its
 *     pidfd; a reaped pid is dead through kill(pid, 0); this process is not.
 *  3. A watched peer that "died" (rank 1 stands for a zombie child of rank 0)
 *     ends rank 0's barrier with CPDL_EPEER naming rank 1 and the pid within
 *     a second, while rank 1 is held back; afterwards rank 1 enters the same
 *     barrier, which rank 0's abandoned request completes (np >= 2).
 */
#include "internal.h"
#include "mpi_test.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int rank, size;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void check_results(void) {
  cpdl__watch_t watch;
  int rc = cpdl__watch_build(MPI_COMM_WORLD, MPI_COMM_WORLD, &watch);
  CHECK(rc == 0, "watch_build: %s", cpdl_last_error());
  CHECK(watch.n == size - 1, "watch has %d peers, expected %d", watch.n, size - 1);
  for (int i = 0; i < watch.n; i++) {
    CHECK(watch.peers[i].rank != rank && watch.peers[i].pid > 0, "peer %d: rank %d pid %d", i,
          watch.peers[i].rank, (int)watch.peers[i].pid);
    CHECK(!cpdl__pid_dead(watch.peers[i].pid, watch.peers[i].pidfd), "live peer %d seen dead",
          watch.peers[i].rank);
  }
  const cpdl__watch_t *previous = cpdl__watch_install(&watch);
  CHECK(previous == NULL, "a watch was installed before");

  struct { int v; int r; } mine = {100 - rank, rank}, low = {0, 0};
  rc = cpdl__coll_allreduce(&mine, &low, 1, MPI_2INT, MPI_MINLOC, MPI_COMM_WORLD, "test");
  CHECK(rc == 0 && low.v == 100 - (size - 1) && low.r == size - 1, "allreduce: %d %d (rc %d)",
        low.v, low.r, rc);

  char text[64] = "";
  if (rank == size - 1)
    snprintf(text, sizeof text, "from rank %d", rank);
  rc = cpdl__coll_bcast(text, (int)sizeof text, MPI_CHAR, size - 1, MPI_COMM_WORLD, "test");
  char expect[64];
  snprintf(expect, sizeof expect, "from rank %d", size - 1);
  CHECK(rc == 0 && strcmp(text, expect) == 0, "bcast: '%s' (rc %d)", text, rc);

  int64_t *all = calloc((size_t)size, 2 * sizeof *all);
  int64_t pair[2] = {rank, (int64_t)rank * rank};
  rc = cpdl__coll_allgather(pair, 2, MPI_INT64_T, all, MPI_COMM_WORLD, "test");
  CHECK(rc == 0, "allgather: %s", cpdl_last_error());
  for (int r = 0; r < size; r++)
    CHECK(all[2 * r] == r && all[2 * r + 1] == (int64_t)r * r, "allgather entry %d", r);
  free(all);

  /* Rank r sends r+1 bytes 'a'+r. */
  int *counts = malloc((size_t)size * sizeof *counts), *displs = malloc((size_t)size * sizeof *displs);
  int total = 0;
  for (int r = 0; r < size; r++) {
    counts[r] = r + 1;
    displs[r] = total;
    total += r + 1;
  }
  char send[64], *recv = calloc((size_t)total, 1);
  memset(send, 'a' + rank, sizeof send);
  rc = cpdl__coll_allgatherv(send, rank + 1, MPI_CHAR, recv, counts, displs, MPI_COMM_WORLD,
                             "test");
  CHECK(rc == 0, "allgatherv: %s", cpdl_last_error());
  for (int r = 0; r < size; r++)
    for (int j = 0; j < counts[r]; j++)
      CHECK(recv[displs[r] + j] == 'a' + r, "allgatherv byte %d of rank %d", j, r);
  free(counts);
  free(displs);
  free(recv);

  CHECK(cpdl__coll_barrier(MPI_COMM_WORLD, "test") == 0, "barrier: %s", cpdl_last_error());
  CHECK(cpdl__agree(MPI_COMM_WORLD, 0) == 0, "watched agree: %s", cpdl_last_error());
  cpdl__watch_install(previous);
  cpdl__watch_free(&watch);
  CHECK(watch.n == 0 && watch.peers == NULL, "watch_free left peers");
}

static pid_t zombie(void) {
  pid_t child = fork();
  if (child == 0)
    _exit(0);
  /* Wait until it has exited, without reaping it. */
  siginfo_t info;
  memset(&info, 0, sizeof info);
  waitid(P_PID, (id_t)child, &info, WEXITED | WNOWAIT);
  return child;
}

static void check_liveness(void) {
  CHECK(!cpdl__pid_dead((int32_t)getpid(), -1), "this process seen dead (kill fallback)");
  pid_t child = zombie();
  int fd = cpdl__pidfd_open(child);
  if (fd >= 0)
    CHECK(cpdl__pid_dead((int32_t)child, fd), "a zombie is dead through its pidfd");
  else
    printf("coll: no pidfd_open here; zombie check skipped\n");
  waitpid(child, NULL, 0);
  CHECK(cpdl__pid_dead((int32_t)child, -1), "a reaped pid is dead through kill(pid, 0)");
  if (fd >= 0)
    close(fd);
}

static void check_dead_peer(void) {
  if (size < 2)
    return;
  if (rank == 0) {
    pid_t child = zombie();
    cpdl__peer_t peer = {.rank = 1, .pid = (int32_t)child, .pidfd = cpdl__pidfd_open(child)};
    cpdl__watch_t watch = {.n = 1, .peers = &peer, .group = MPI_GROUP_NULL};
    MPI_Comm_group(MPI_COMM_WORLD, &watch.group);
    const cpdl__watch_t *previous = cpdl__watch_install(&watch);
    double t0 = now_s();
    int rc = cpdl__coll_barrier(MPI_COMM_WORLD, "the test barrier");
    double took = now_s() - t0;
    cpdl__watch_install(previous);
    char expect[128];
    snprintf(expect, sizeof expect, "rank 1 (pid %d) died during the test barrier", (int)child);
    CHECK(rc == CPDL_EPEER, "expected CPDL_EPEER, got %d: %s", rc, cpdl_last_error());
    CHECK(strstr(cpdl_last_error(), expect) != NULL, "message '%s'", cpdl_last_error());
    CHECK(took < 1.0, "EPEER took %.3f s", took);
    if (peer.pidfd >= 0)
      close(peer.pidfd);
    MPI_Group_free(&watch.group);
    waitpid(child, NULL, 0);
  }
  /* Rank 1 waits (point to point) for rank 0's verdict, then the others
   * enter the barrier that rank 0 abandoned; it completes in the
   * background of rank 0's next collective (the collectives keep one order
   * on every rank: barrier, then cpdl_test_finish's). */
  int go = 1;
  if (rank == 0)
    MPI_Send(&go, 1, MPI_INT, 1, 77, MPI_COMM_WORLD);
  else if (rank == 1)
    MPI_Recv(&go, 1, MPI_INT, 0, 77, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  if (rank != 0) { /* a nonblocking barrier: MPI never matches it with a blocking one */
    MPI_Request req;
    MPI_Ibarrier(MPI_COMM_WORLD, &req);
    MPI_Wait(&req, MPI_STATUS_IGNORE);
  }
}

int main(int argc, char **argv) {
  cpdl_test_init(&argc, &argv);
  rank = cpdl_test_world_rank();
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  check_results();
  check_liveness();
  check_dead_peer();
  int code = cpdl_test_finish();
  MPI_Finalize();
  return code;
}
