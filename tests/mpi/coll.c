/* coll.c — MPI scenario: the control plane of src/coll.c over the MPI
 * cpdl_oob_t (src/oob_mpi.c).
 *
 *  1. With a watch of the live host ranks installed, every operation gives
 *     the result its definition says, over the world and over a sub-team
 *     (even ranks / odd ranks), with lengths that differ between ranks.
 *  2. Liveness: a zombie child (exited, not reaped) is dead through its
 *     pidfd; a reaped pid is dead through kill(pid, 0); this process is not.
 *  3. A watched peer that "died" (rank 1 stands for a zombie child of rank 0)
 *     ends rank 0's barrier with CPDL_EPEER naming rank 1 and the pid within
 *     a second, while rank 1 is held back; no one else joins that barrier
 *     (np >= 2).
 *  4. Ranks in different operations or steps all get CPDL_EPEER naming the
 *     odd rank (np >= 2), and the next operation in step works.
 */
#include "internal.h"
#include "mpi_test.h"
#include "ctl_test.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int rank, size;

static void check_results(void) {
  const cpdl__team_t *world = cpdl_test_world();
  cpdl__watch_t watch;
  int rc = cpdl__watch_build(world, &watch);
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

  int low = 0, low_rank = -1;
  rc = cpdl__coll_minloc(world, 100 - rank, &low, &low_rank, "test");
  CHECK(rc == 0 && low == 100 - (size - 1) && low_rank == size - 1, "minloc: %d %d (rc %d)", low,
        low_rank, rc);
  rc = cpdl__coll_minloc(world, 7, &low, &low_rank, "test");
  CHECK(rc == 0 && low == 7 && low_rank == 0, "minloc tie: %d %d (rc %d)", low, low_rank, rc);
  int64_t mins[2] = {rank, -(int64_t)rank * 1000000000000LL};
  rc = cpdl__coll_min_i64(world, mins, 2, "test");
  CHECK(rc == 0 && mins[0] == 0 && mins[1] == -(int64_t)(size - 1) * 1000000000000LL,
        "min_i64: %lld %lld", (long long)mins[0], (long long)mins[1]);

  char text[64] = "";
  if (rank == size - 1)
    snprintf(text, sizeof text, "from rank %d", rank);
  rc = cpdl__coll_bcast(world, text, sizeof text, size - 1, "test");
  char expect[64];
  snprintf(expect, sizeof expect, "from rank %d", size - 1);
  CHECK(rc == 0 && strcmp(text, expect) == 0, "bcast: '%s' (rc %d)", text, rc);

  int64_t *all = calloc((size_t)size, 2 * sizeof *all);
  int64_t pair[2] = {rank, (int64_t)rank * rank};
  rc = cpdl__coll_allgather(world, pair, sizeof pair, all, "test");
  CHECK(rc == 0, "allgather: %s", cpdl_last_error());
  for (int r = 0; r < size; r++)
    CHECK(all[2 * r] == r && all[2 * r + 1] == (int64_t)r * r, "allgather entry %d", r);

  /* A sub-team: ranks of my parity, in world order. */
  int *parity = malloc((size_t)size * sizeof *parity);
  for (int r = 0; r < size; r++)
    parity[r] = r % 2;
  cpdl__team_t half;
  rc = cpdl__team_select(world->ctl, parity, &half);
  CHECK(rc == 0 && half.size == (size - rank % 2 + 1) / 2 && half.rank == rank / 2,
        "team_select: %d/%d", half.rank, half.size);
  rc = cpdl__coll_allgather(&half, pair, sizeof pair, all, "test");
  for (int i = 0; rc == 0 && i < half.size; i++)
    CHECK(all[2 * i] == 2 * i + rank % 2, "team allgather entry %d is %lld", i,
          (long long)all[2 * i]);
  snprintf(text, sizeof text, "rank %d", rank);
  rc = cpdl__coll_bcast(&half, text, sizeof text, half.size - 1, "test");
  snprintf(expect, sizeof expect, "rank %d", cpdl__team_world_rank(&half, half.size - 1));
  CHECK(rc == 0 && strcmp(text, expect) == 0, "team bcast: '%s'", text);
  free(all);

  /* Rank r sends r+1 bytes 'a'+r, over the world and over the half. */
  char send[64];
  memset(send, 'a' + rank, sizeof send);
  for (int t = 0; t < 2; t++) {
    const cpdl__team_t *team = t ? &half : world;
    size_t *offsets = malloc((size_t)(team->size + 1) * sizeof *offsets);
    char *recv = NULL;
    rc = cpdl__coll_allgatherv(team, send, (size_t)rank + 1, &recv, offsets, "test");
    CHECK(rc == 0, "allgatherv: %s", cpdl_last_error());
    for (int i = 0; rc == 0 && i < team->size; i++) {
      int r = cpdl__team_world_rank(team, i);
      CHECK(offsets[i + 1] - offsets[i] == (size_t)r + 1, "allgatherv length of rank %d", r);
      for (size_t j = offsets[i]; j < offsets[i + 1]; j++)
        CHECK(recv[j] == 'a' + r, "allgatherv byte %zu of rank %d", j, r);
    }
    free(recv);
    free(offsets);
  }
  cpdl__team_free(&half);
  free(parity);

  CHECK(cpdl__coll_barrier(world, "test") == 0, "barrier: %s", cpdl_last_error());
  CHECK(cpdl__agree(world, 0) == 0, "watched agree: %s", cpdl_last_error());
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
    cpdl__watch_t watch = {.n = 1, .peers = &peer};
    const cpdl__watch_t *previous = cpdl__watch_install(&watch);
    double t0 = cpdl_test_now_s();
    int rc = cpdl__coll_barrier(cpdl_test_world(), "the test barrier");
    double took = cpdl_test_now_s() - t0;
    cpdl__watch_install(previous);
    char expect[128];
    snprintf(expect, sizeof expect, "rank 1 (pid %d) died during the test barrier", (int)child);
    CHECK(rc == CPDL_EPEER, "expected CPDL_EPEER, got %d: %s", rc, cpdl_last_error());
    CHECK(strstr(cpdl_last_error(), expect) != NULL, "message '%s'", cpdl_last_error());
    CHECK(took < 1.0, "EPEER took %.3f s", took);
    if (peer.pidfd >= 0)
      close(peer.pidfd);
    waitpid(child, NULL, 0);
  }
  /* Rank 1 waits (point to point) for rank 0's verdict. Nobody joins the
   * barrier rank 0 abandoned (it was one of two allgathers: header, then
   * payload, and rank 0 is past it); its request stays pending on the
   * control plane's dup and harms nothing on MPI_COMM_WORLD. */
  int go = 1;
  if (rank == 0)
    MPI_Send(&go, 1, MPI_INT, 1, 77, MPI_COMM_WORLD);
  else if (rank == 1)
    MPI_Recv(&go, 1, MPI_INT, 0, 77, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
}

/* 4. Ranks in different operations (rank 0 in a barrier, the others in an
 *    allgather of 64 bytes; then all in a step of another name) never match
 *    each other's payloads: every rank gets CPDL_EPEER naming the odd one. */
static void check_mismatch(void) {
  if (size < 2)
    return;
  cpdl__op_t previous = cpdl__coll_op(rank == 0 ? CPDL__OP_CLOSE : CPDL__OP_SAVE);
  char bytes[64] = {0}, *all = calloc((size_t)size, sizeof bytes);
  int rc = rank == 0 ? cpdl__coll_barrier(cpdl_test_world(), "test close")
                     : cpdl__coll_allgather(cpdl_test_world(), bytes, sizeof bytes, all,
                                            "test save");
  cpdl__coll_op(previous);
  CHECK(rc == CPDL_EPEER && strstr(cpdl_last_error(), "rank 0 left") &&
        strstr(cpdl_last_error(), "state save"), "close against save: %s: %s",
        cpdl_err_name(rc), cpdl_last_error());
  /* The same call, different steps: "different orders", naming rank 0. */
  rc = cpdl__coll_allgather(cpdl_test_world(), bytes, sizeof bytes, all,
                            rank == 0 ? "step a" : "step b");
  CHECK(rc == CPDL_EPEER && strstr(cpdl_last_error(), "rank 0 ") &&
        strstr(cpdl_last_error(), "different orders"), "different steps: %s: %s",
        cpdl_err_name(rc), cpdl_last_error());
  /* Still in step: the next operation works. */
  rc = cpdl__coll_allgather(cpdl_test_world(), bytes, sizeof bytes, all, "step c");
  CHECK(rc == 0, "after the mismatches: %s", cpdl_last_error());
  free(all);
}

int main(int argc, char **argv) {
  cpdl_test_init(&argc, &argv);
  rank = cpdl_test_world_rank();
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  cpdl_test_world(); /* the dup, collectively, before rank 0 runs alone */
  check_results();
  check_liveness();
  check_mismatch();
  check_dead_peer();
  int code = cpdl_test_finish();
  MPI_Finalize();
  return code;
}
