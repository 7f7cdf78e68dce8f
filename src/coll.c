/* coll.c — collectives that cannot hang on a dead peer of this host, and the
 * pid liveness test they (and the loader's ring waits) share.
 *
 * Invariants:
 *  - A watch lists this host's other ranks (rank in the loader's
 *    communicator, pid, pidfd); it is built by one blocking MPI_Allgather
 *    over the host communicator right after the mesh exists, and installed
 *    per thread (the collectives run on the caller's thread) for the scope
 *    of open/restore/close. With no watch installed every wrapper is the
 *    plain blocking MPI call.
 *  - With a watch, a wrapper starts the nonblocking collective on private
 *    heap copies of its buffers and polls it; when a watched member of the
 *    collective's communicator is dead and the request still has not
 *    completed after a short grace, it returns CPDL_EPEER naming that rank.
 *    The request is abandoned, never cancelled (MPI cannot cancel a
 *    collective, and one that waits on a dead rank never completes): its
 *    copies are leaked on purpose, so late progress can only write there.
 *  - Ranks on other hosts are not watched (their pids mean nothing here):
 *    a death there stays MPI's (mpirun's) business.
 *  - A watch present (even empty) selects the nonblocking call: all ranks of
 *    a collective must agree on that, since MPI never matches a blocking
 *    collective with a nonblocking one (open/restore/close install on all).
 */
#include "internal.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Polling: spin on MPI_Test for SPIN_NS, then sleep between tests (growing
 * up to SLEEP_MAX_NS so a long wait costs no core), look at the peers every
 * CHECK_NS, and declare a death only after GRACE_NS more of testing: a peer
 * that finished the collective and exited normally left its messages in
 * our queues, and they still complete the request. */
#define SPIN_NS 50000L
#define SLEEP_MIN_NS 20000L
#define SLEEP_MAX_NS 1000000L
#define CHECK_NS 1000000L
#define GRACE_NS 20000000L

static _Thread_local const cpdl__watch_t *current_watch;

/* ---- liveness ---------------------------------------------------------------- */

int cpdl__pidfd_open(pid_t pid) {
#ifdef SYS_pidfd_open
  return (int)syscall(SYS_pidfd_open, pid, 0);
#else
  (void)pid;
  errno = ENOSYS;
  return -1;
#endif
}

/* A process that exited is dead even while it is a zombie (its parent has
 * not reaped it): the pidfd polls readable then, while kill(pid, 0) would
 * still succeed. Without a pidfd, kill(pid, 0) is the fallback. */
bool cpdl__pid_dead(int32_t pid, int pidfd) {
  if (pidfd >= 0) {
    struct pollfd p = {.fd = pidfd, .events = POLLIN};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR));
  }
  return pid > 0 && kill(pid, 0) == -1 && errno == ESRCH;
}

/* ---- the watch ------------------------------------------------------------------ */

int cpdl__watch_build(MPI_Comm rank_comm, MPI_Comm host_comm, cpdl__watch_t *out) {
  memset(out, 0, sizeof *out);
  out->group = MPI_GROUP_NULL;
  int rank = 0, size = 0, mrc;
  if ((mrc = MPI_Comm_rank(rank_comm, &rank)) != MPI_SUCCESS ||
      (mrc = MPI_Comm_size(host_comm, &size)) != MPI_SUCCESS ||
      (mrc = MPI_Comm_group(rank_comm, &out->group)) != MPI_SUCCESS)
    return cpdl__error(CPDL_EMPI, "pid exchange: MPI_Comm_rank/size/group failed");
  /* The gather runs on every rank even when this one lacks memory: a
   * rank that skipped it would leave the others blocked forever. */
  int32_t mine[2] = {rank, (int32_t)getpid()};
  int32_t *all = malloc((size_t)size * sizeof mine);
  int32_t spare[2];
  mrc = MPI_Allgather(mine, 2, MPI_INT32_T, all ? all : spare, all ? 2 : 0, MPI_INT32_T,
                      host_comm);
  if (!all)
    return cpdl__error(-ENOMEM, "pid exchange: out of memory for %d ranks of this host", size);
  if (mrc != MPI_SUCCESS) {
    free(all);
    return cpdl__error(CPDL_EMPI, "pid exchange: MPI_Allgather over the host's ranks failed");
  }
  out->peers = calloc((size_t)size, sizeof *out->peers);
  if (!out->peers) {
    free(all);
    return cpdl__error(-ENOMEM, "pid exchange: out of memory for %d ranks of this host", size);
  }
  for (int i = 0; i < size; i++) {
    if (all[2 * i] == rank)
      continue;
    cpdl__peer_t *p = &out->peers[out->n++];
    p->rank = all[2 * i];
    p->pid = all[2 * i + 1];
    /* -1 (no pidfds: old kernel, seccomp) falls back to kill(pid, 0). */
    p->pidfd = cpdl__pidfd_open((pid_t)p->pid);
  }
  free(all);
  return 0;
}

const cpdl__peer_t *cpdl__watch_find(const cpdl__watch_t *watch, int rank) {
  for (int i = 0; watch && i < watch->n; i++)
    if (watch->peers[i].rank == rank)
      return &watch->peers[i];
  return NULL;
}

void cpdl__watch_free(cpdl__watch_t *watch) {
  if (!watch)
    return;
  for (int i = 0; i < watch->n; i++)
    if (watch->peers[i].pidfd >= 0)
      close(watch->peers[i].pidfd);
  free(watch->peers);
  watch->peers = NULL;
  watch->n = 0;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (watch->group != MPI_GROUP_NULL && !finalized)
    MPI_Group_free(&watch->group); /* local */
  watch->group = MPI_GROUP_NULL;
}

const cpdl__watch_t *cpdl__watch_install(const cpdl__watch_t *watch) {
  const cpdl__watch_t *previous = current_watch;
  current_watch = watch;
  return previous;
}

/* ---- waiting --------------------------------------------------------------------- */

static long elapsed_ns(const struct timespec *t0) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long)(t.tv_sec - t0->tv_sec) * 1000000000L + (t.tv_nsec - t0->tv_nsec);
}

/* Whether the peer's rank is a member of comm (MPI_COMM_NULL: assume so).
 * Only asked about a dead peer, so the group calls are rare. */
static bool member_of(const cpdl__watch_t *w, const cpdl__peer_t *p, MPI_Comm comm) {
  if (comm == MPI_COMM_NULL || w->group == MPI_GROUP_NULL)
    return true;
  MPI_Group g;
  if (MPI_Comm_group(comm, &g) != MPI_SUCCESS)
    return true;
  int there = MPI_UNDEFINED;
  int rc = MPI_Group_translate_ranks(w->group, 1, &p->rank, g, &there);
  MPI_Group_free(&g);
  return rc != MPI_SUCCESS || there != MPI_UNDEFINED;
}

static const cpdl__peer_t *find_dead(const cpdl__watch_t *w, MPI_Comm comm) {
  for (int i = 0; i < w->n; i++)
    if (cpdl__pid_dead(w->peers[i].pid, w->peers[i].pidfd) && member_of(w, &w->peers[i], comm))
      return &w->peers[i];
  return NULL;
}

static int peer_died(const cpdl__peer_t *p, const char *what) {
  return cpdl__error(CPDL_EPEER, "rank %d (pid %d) died during %s; cpdl cannot continue this job "
                     "(restart it; check that rank's log for the cause)",
                     p->rank, (int)p->pid, what);
}

static int mpi_failed(const char *call, const char *what, int mrc) {
  char text[MPI_MAX_ERROR_STRING] = "";
  int len = 0;
  MPI_Error_string(mrc, text, &len);
  return cpdl__error(CPDL_EMPI, "%s during %s failed: %s", call, what, text);
}

int cpdl__coll_wait(MPI_Request *req, MPI_Comm comm, const char *what) {
  const cpdl__watch_t *w = current_watch;
  if (!w || w->n == 0) {
    int mrc = MPI_Wait(req, MPI_STATUS_IGNORE);
    return mrc == MPI_SUCCESS ? 0 : mpi_failed("MPI_Wait", what, mrc);
  }
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  long sleep_ns = SLEEP_MIN_NS, last_check = -CHECK_NS, dead_at = 0;
  const cpdl__peer_t *dead = NULL;
  for (;;) {
    int done = 0;
    int mrc = MPI_Test(req, &done, MPI_STATUS_IGNORE);
    if (mrc != MPI_SUCCESS) {
      /* An MPI error with a dead peer is that death, told better. */
      const cpdl__peer_t *p = dead ? dead : find_dead(w, comm);
      return p ? peer_died(p, what) : mpi_failed("MPI_Test", what, mrc);
    }
    if (done)
      return 0;
    long t = elapsed_ns(&t0);
    if (t < SPIN_NS)
      continue;
    if (dead) {
      if (t - dead_at >= GRACE_NS)
        return peer_died(dead, what); /* *req is abandoned (see the header) */
    } else if (t - last_check >= CHECK_NS) {
      last_check = t;
      int rc = w->check ? w->check(w->check_arg) : 0;
      if (rc)
        return rc; /* *req is abandoned, as after a death */
      if ((dead = find_dead(w, comm)) != NULL)
        dead_at = t;
    }
    struct timespec pause = {.tv_sec = 0, .tv_nsec = sleep_ns};
    nanosleep(&pause, NULL);
    if (sleep_ns < SLEEP_MAX_NS)
      sleep_ns *= 2;
  }
}

/* ---- the wrappers ------------------------------------------------------------------ */

/* Bytes of count elements of a contiguous basic type; -1 if unknown/too big. */
static long long type_bytes(MPI_Datatype type, long long count) {
  MPI_Aint lb = 0, extent = 0;
  if (count < 0 || MPI_Type_get_extent(type, &lb, &extent) != MPI_SUCCESS || extent <= 0)
    return -1;
  long long bytes;
  if (__builtin_mul_overflow(count, (long long)extent, &bytes))
    return -1;
  return bytes;
}

/* Heap copies for a watched collective: send (a copy of the caller's), then
 * recv. NULL when there is no watch, or no memory: then the caller's own
 * buffers are used (a failed malloc must not make this rank skip the
 * collective, or the others would wait for it). */
static char *stage(const void *send, long long send_bytes, long long recv_bytes) {
  if (!current_watch || current_watch->n == 0 || send_bytes < 0 || recv_bytes < 0)
    return NULL;
  size_t total = (size_t)send_bytes + (size_t)recv_bytes;
  char *buf = malloc(total ? total : 1);
  if (buf && send_bytes)
    memcpy(buf, send, (size_t)send_bytes);
  return buf;
}

/* After the wait: copy the result out and free, or leak after an abandon. */
static int unstage(int rc, char *buf, long long send_bytes, void *recv, long long recv_bytes) {
  if (!buf)
    return rc;
  if (rc == CPDL_EPEER)
    return rc; /* the abandoned request may still write into buf */
  if (rc == 0 && recv_bytes > 0)
    memcpy(recv, buf + send_bytes, (size_t)recv_bytes);
  free(buf);
  return rc;
}

int cpdl__coll_allreduce(const void *send, void *recv, int count, MPI_Datatype type, MPI_Op op,
                         MPI_Comm comm, const char *what) {
  if (!current_watch) {
    int mrc = MPI_Allreduce(send, recv, count, type, op, comm);
    return mrc == MPI_SUCCESS ? 0 : mpi_failed("MPI_Allreduce", what, mrc);
  }
  long long bytes = type_bytes(type, count);
  char *buf = stage(send, bytes, bytes);
  MPI_Request req;
  int mrc = MPI_Iallreduce(buf ? buf : send, buf ? buf + bytes : recv, count, type, op, comm,
                           &req);
  int rc = mrc == MPI_SUCCESS ? cpdl__coll_wait(&req, comm, what)
                              : mpi_failed("MPI_Iallreduce", what, mrc);
  return unstage(rc, buf, bytes, recv, bytes);
}

int cpdl__coll_bcast(void *data, int count, MPI_Datatype type, int root, MPI_Comm comm,
                     const char *what) {
  if (!current_watch) {
    int mrc = MPI_Bcast(data, count, type, root, comm);
    return mrc == MPI_SUCCESS ? 0 : mpi_failed("MPI_Bcast", what, mrc);
  }
  long long bytes = type_bytes(type, count);
  char *buf = stage(data, bytes, 0); /* one buffer: in at the root, out elsewhere */
  MPI_Request req;
  int mrc = MPI_Ibcast(buf ? buf : data, count, type, root, comm, &req);
  int rc = mrc == MPI_SUCCESS ? cpdl__coll_wait(&req, comm, what)
                              : mpi_failed("MPI_Ibcast", what, mrc);
  return unstage(rc, buf, 0, data, bytes);
}

int cpdl__coll_barrier(MPI_Comm comm, const char *what) {
  if (!current_watch) {
    int mrc = MPI_Barrier(comm);
    return mrc == MPI_SUCCESS ? 0 : mpi_failed("MPI_Barrier", what, mrc);
  }
  MPI_Request req;
  int mrc = MPI_Ibarrier(comm, &req);
  return mrc == MPI_SUCCESS ? cpdl__coll_wait(&req, comm, what)
                            : mpi_failed("MPI_Ibarrier", what, mrc);
}

int cpdl__coll_allgather(const void *send, int count, MPI_Datatype type, void *recv,
                         MPI_Comm comm, const char *what) {
  if (!current_watch) {
    int mrc = MPI_Allgather(send, count, type, recv, count, type, comm);
    return mrc == MPI_SUCCESS ? 0 : mpi_failed("MPI_Allgather", what, mrc);
  }
  int size = 0;
  MPI_Comm_size(comm, &size);
  long long send_bytes = type_bytes(type, count);
  long long recv_bytes = type_bytes(type, (long long)count * size);
  char *buf = stage(send, send_bytes, recv_bytes);
  MPI_Request req;
  int mrc = MPI_Iallgather(buf ? buf : send, count, type, buf ? buf + send_bytes : recv, count,
                           type, comm, &req);
  int rc = mrc == MPI_SUCCESS ? cpdl__coll_wait(&req, comm, what)
                              : mpi_failed("MPI_Iallgather", what, mrc);
  return unstage(rc, buf, send_bytes, recv, recv_bytes);
}

int cpdl__coll_allgatherv(const void *send, int count, MPI_Datatype type, void *recv,
                          const int *counts, const int *displs, MPI_Comm comm, const char *what) {
  if (!current_watch) {
    int mrc = MPI_Allgatherv(send, count, type, recv, counts, displs, type, comm);
    return mrc == MPI_SUCCESS ? 0 : mpi_failed("MPI_Allgatherv", what, mrc);
  }
  int size = 0;
  MPI_Comm_size(comm, &size);
  long long end = 0;
  for (int i = 0; i < size; i++)
    if ((long long)displs[i] + counts[i] > end)
      end = (long long)displs[i] + counts[i];
  long long send_bytes = type_bytes(type, count), recv_bytes = type_bytes(type, end);
  /* counts and displs too must outlive an abandoned request: they go in the
   * copies, after the receive area (aligned for int). */
  long long vec_at = send_bytes < 0 || recv_bytes < 0
                         ? -1 : (long long)CPDL__ALIGN_UP((size_t)(send_bytes + recv_bytes), 8);
  long long vec_bytes = (long long)size * 2 * (long long)sizeof(int);
  char *buf = stage(send, send_bytes, vec_at < 0 ? -1 : vec_at - send_bytes + vec_bytes);
  const int *c = counts, *d = displs;
  if (buf) {
    int *vec = (int *)(void *)(buf + vec_at);
    memcpy(vec, counts, (size_t)size * sizeof(int));
    memcpy(vec + size, displs, (size_t)size * sizeof(int));
    c = vec;
    d = vec + size;
  }
  MPI_Request req;
  int mrc = MPI_Iallgatherv(buf ? buf : send, count, type, buf ? buf + send_bytes : recv, c, d,
                            type, comm, &req);
  int rc = mrc == MPI_SUCCESS ? cpdl__coll_wait(&req, comm, what)
                              : mpi_failed("MPI_Iallgatherv", what, mrc);
  return unstage(rc, buf, send_bytes, recv, recv_bytes);
}
