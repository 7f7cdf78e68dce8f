/* live.c — remote liveness: a job spanning hosts learns of a death, a
 * departure or a failure on another host by itself, within a second or two,
 * whatever the launcher does (R27).
 *
 * Owns: one thread per rank (only when the job spans hosts and runs on the
 * MPI control plane with MPI_THREAD_MULTIPLE) on its own dup of the control
 * plane's communicator. The thread
 *  - polls this host's other ranks' pidfds (a death here is seen at once),
 *  - sends a heartbeat every HEARTBEAT_MS to its successor (the next world
 *    rank, cyclically) when that rank is on another host, and expects one
 *    from its predecessor when that one is on another host: so every rank is
 *    watched by its successor, by pidfd or by heartbeat (one message per
 *    rank per period: cheap at any scale),
 *  - and on a verdict (a death here, a silent predecessor, this rank's own
 *    departure or failure) sends one notice to every rank; a notice received
 *    becomes this rank's verdict too (the first one wins).
 * The loader's waits (ring, collectives, loader threads) read the verdict:
 * an int published with release after its message is written. No MPI call
 * ever touches the data path, and cpdl opens no socket of its own.
 * Invariants: only the thread calls MPI on the dup; the rest of the process
 * talks to it through atomics. A rank that stops normally says BYE to its
 * successor first, so its silence is not a death.
 */
#include "internal.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LIVE_TAG 0x6370 /* on the thread's own dup: no other traffic */
#define LIVE_MAGIC 0x6576696cu
#define TEXT_MAX 400

enum { MSG_HEARTBEAT = 1, MSG_BYE, MSG_DEAD, MSG_LEFT, MSG_FAILED };
enum { ANNOUNCE_LEFT = 1u, ANNOUNCE_FAILED = 2u };

typedef struct live_msg {
  uint32_t magic;
  uint32_t kind;
  int32_t rank;    /* the rank the message is about */
  int32_t from;    /* the sender */
  uint64_t step;   /* MSG_LEFT: the first step the leaver will not take */
  char text[TEXT_MAX];
} live_msg_t;

struct cpdl__live {
  MPI_Comm comm;
  int rank, size;
  const cpdl__watch_t *watch; /* this host's other ranks (the loader's; outlives the thread) */
  const char *hosts;          /* size × CPDL__HOST_NAME_MAX */
  int pred, succ;             /* heartbeat partners on other hosts, or -1 */
  int heartbeat_ms, silence_ms;
  pthread_t thread;
  bool running;
  _Atomic bool stop;
  /* What this rank asks the thread to announce (main thread → thread): bits
   * ANNOUNCE_LEFT / ANNOUNCE_FAILED, each with its own text, written before
   * its bit is set (release) and read after the thread took it (acquire);
   * each is announced at most once. */
  _Atomic unsigned announce;
  uint64_t left_at;
  char leave_text[TEXT_MAX];
  char failure_text[TEXT_MAX];
  bool leave_asked, failure_asked; /* main thread only */
  /* The verdict: written once by the thread, then published (release). */
  _Atomic int verdict;        /* 0, MSG_DEAD, MSG_FAILED (deaths and failures) */
  char verdict_text[TEXT_MAX];
  /* Departures: the lowest step some rank will not take (UINT64_MAX: none). */
  _Atomic uint64_t left_step;
  char left_text[TEXT_MAX];
  _Atomic bool left_set;
};

static long now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long)t.tv_sec * 1000L + t.tv_nsec / 1000000L;
}

static const char *host_name(const cpdl__live_t *L, int rank, char *buf, size_t size) {
  snprintf(buf, size, "%.*s", CPDL__HOST_NAME_MAX, L->hosts + (size_t)rank * CPDL__HOST_NAME_MAX);
  return buf;
}

static bool same_host(const cpdl__live_t *L, int a, int b) {
  return strncmp(L->hosts + (size_t)a * CPDL__HOST_NAME_MAX,
                 L->hosts + (size_t)b * CPDL__HOST_NAME_MAX, CPDL__HOST_NAME_MAX) == 0;
}

static int env_ms(const char *name, int fallback) {
  const char *text = getenv(name);
  if (!text || !*text)
    return fallback;
  char *end = NULL;
  long v = strtol(text, &end, 10);
  return end && !*end && v >= 10 && v <= 3600000 ? (int)v : fallback;
}

/* ---- the thread ------------------------------------------------------------------- */

static void send_to(cpdl__live_t *L, int to, const live_msg_t *msg) {
  MPI_Request req;
  /* Fire and forget: a send to a rank that has since died must never hold
   * this thread, so the request is freed at once (MPI completes it, or not). */
  if (MPI_Isend(msg, (int)sizeof *msg, MPI_BYTE, to, LIVE_TAG, L->comm, &req) == MPI_SUCCESS)
    MPI_Request_free(&req);
}

/* Tell every other rank (the dead one excepted). */
static void broadcast(cpdl__live_t *L, const live_msg_t *msg, int except) {
  for (int r = 0; r < L->size; r++)
    if (r != L->rank && r != except)
      send_to(L, r, msg);
}

static void set_verdict(cpdl__live_t *L, int kind, const char *text) {
  if (atomic_load_explicit(&L->verdict, memory_order_relaxed))
    return; /* the first verdict wins: every survivor names the same cause */
  snprintf(L->verdict_text, sizeof L->verdict_text, "%s", text);
  atomic_store_explicit(&L->verdict, kind, memory_order_release);
}

static void set_left(cpdl__live_t *L, uint64_t step, const char *text) {
  if (atomic_load_explicit(&L->left_set, memory_order_relaxed))
    return;
  snprintf(L->left_text, sizeof L->left_text, "%s", text);
  atomic_store_explicit(&L->left_step, step, memory_order_relaxed);
  atomic_store_explicit(&L->left_set, true, memory_order_release);
}

static void declare(cpdl__live_t *L, int kind, int about, uint64_t step, const char *text) {
  live_msg_t msg = {.magic = LIVE_MAGIC, .kind = (uint32_t)kind, .rank = about,
                    .from = L->rank, .step = step};
  snprintf(msg.text, sizeof msg.text, "%s", text);
  if (kind == MSG_LEFT)
    set_left(L, step, text);
  else if (about != L->rank)
    set_verdict(L, kind, text);
  broadcast(L, &msg, kind == MSG_DEAD ? about : -1);
}

static void received(cpdl__live_t *L, const live_msg_t *msg, long *pred_seen, bool *pred_bye) {
  if (msg->magic != LIVE_MAGIC)
    return;
  char text[TEXT_MAX];
  snprintf(text, sizeof text, "%.*s", TEXT_MAX - 1, msg->text);
  switch (msg->kind) {
  case MSG_HEARTBEAT:
    if (msg->from == L->pred)
      *pred_seen = now_ms();
    break;
  case MSG_BYE:
    if (msg->from == L->pred)
      *pred_bye = true;
    break;
  case MSG_LEFT:
    set_left(L, msg->step, text);
    break;
  case MSG_DEAD:
  case MSG_FAILED:
    if (msg->rank != L->rank)
      set_verdict(L, (int)msg->kind, text);
    break;
  default:
    break;
  }
}

static void *live_main(void *arg) {
  cpdl__live_t *L = arg;
  live_msg_t in;
  MPI_Request recv_req;
  MPI_Irecv(&in, (int)sizeof in, MPI_BYTE, MPI_ANY_SOURCE, LIVE_TAG, L->comm, &recv_req);
  struct pollfd *fds = calloc((size_t)(L->watch->n ? L->watch->n : 1), sizeof *fds);
  int n_fds = 0;
  for (int i = 0; fds && i < L->watch->n; i++)
    if (L->watch->peers[i].pidfd >= 0)
      fds[n_fds++] = (struct pollfd){.fd = L->watch->peers[i].pidfd, .events = POLLIN};
  bool *reported = calloc((size_t)(L->watch->n ? L->watch->n : 1), sizeof *reported);
  long started = now_ms(), last_beat = 0, pred_seen = started;
  bool pred_bye = false, pred_reported = false;
  live_msg_t beat = {.magic = LIVE_MAGIC, .kind = MSG_HEARTBEAT, .rank = L->rank,
                     .from = L->rank};
  char host[CPDL__HOST_NAME_MAX + 1], text[TEXT_MAX];
  while (!atomic_load_explicit(&L->stop, memory_order_acquire)) {
    /* Sleeps up to 10 ms, and wakes at once when a host peer exits. */
    if (n_fds > 0)
      poll(fds, (nfds_t)n_fds, 10);
    else {
      struct timespec pause = {.tv_sec = 0, .tv_nsec = 10000000L};
      nanosleep(&pause, NULL);
    }
    /* Messages (MPI_Test also drives the progress of the sends). */
    for (int k = 0; k < 64; k++) {
      int done = 0;
      if (MPI_Test(&recv_req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS || !done)
        break;
      received(L, &in, &pred_seen, &pred_bye);
      MPI_Irecv(&in, (int)sizeof in, MPI_BYTE, MPI_ANY_SOURCE, LIVE_TAG, L->comm, &recv_req);
    }
    long t = now_ms();
    if (L->succ >= 0 && t - last_beat >= L->heartbeat_ms) {
      send_to(L, L->succ, &beat);
      last_beat = t;
    }
    /* This host's ranks. */
    for (int i = 0; reported && i < L->watch->n; i++) {
      const cpdl__peer_t *p = &L->watch->peers[i];
      if (reported[i] || !cpdl__pid_dead(p->pid, p->pidfd))
        continue;
      reported[i] = true;
      snprintf(text, sizeof text, "rank %d (pid %d) on host %s died; cpdl cannot continue this "
               "job (restart it; check that rank's log for the cause)", p->rank, (int)p->pid,
               host_name(L, p->rank, host, sizeof host));
      declare(L, MSG_DEAD, p->rank, 0, text);
    }
    /* The predecessor on another host. */
    if (L->pred >= 0 && !pred_bye && !pred_reported && t - pred_seen > L->silence_ms) {
      pred_reported = true;
      snprintf(text, sizeof text, "rank %d on host %s is gone: no sign of life for %d ms (it "
               "died, was stopped, or its host or network failed); cpdl cannot continue this "
               "job (restart it; check that rank's log and host)", L->pred,
               host_name(L, L->pred, host, sizeof host), (int)(t - pred_seen));
      declare(L, MSG_DEAD, L->pred, 0, text);
    }
    /* What this rank asked to announce. */
    unsigned asked = atomic_exchange_explicit(&L->announce, 0u, memory_order_acquire);
    if (asked & ANNOUNCE_LEFT)
      declare(L, MSG_LEFT, L->rank, L->left_at, L->leave_text);
    if (asked & ANNOUNCE_FAILED)
      declare(L, MSG_FAILED, L->rank, 0, L->failure_text);
  }
  /* A normal stop: the successor must not take the silence for a death. */
  if (L->succ >= 0) {
    live_msg_t bye = {.magic = LIVE_MAGIC, .kind = MSG_BYE, .rank = L->rank, .from = L->rank};
    send_to(L, L->succ, &bye);
  }
  MPI_Cancel(&recv_req);
  MPI_Request_free(&recv_req);
  free(fds);
  free(reported);
  return NULL;
}

/* ---- the loader's side ------------------------------------------------------------ */

int cpdl__live_start(MPI_Comm comm, int rank, int size, const cpdl__watch_t *watch,
                     const char *hosts, cpdl__live_t **out) {
  *out = NULL;
  cpdl__live_t *L = calloc(1, sizeof *L);
  if (!L)
    return cpdl__error(-ENOMEM, "out of memory for the liveness thread");
  if (MPI_Comm_dup(comm, &L->comm) != MPI_SUCCESS) { /* collective */
    free(L);
    return cpdl__error(CPDL_EMPI, "MPI_Comm_dup for the liveness thread failed");
  }
  MPI_Comm_set_errhandler(L->comm, MPI_ERRORS_RETURN);
  L->rank = rank;
  L->size = size;
  L->watch = watch;
  L->hosts = hosts;
  L->heartbeat_ms = env_ms("CPDL_HEARTBEAT_MS", 100);
  L->silence_ms = env_ms("CPDL_SILENCE_MS", 1000);
  if (L->silence_ms < 3 * L->heartbeat_ms)
    L->silence_ms = 3 * L->heartbeat_ms;
  int succ = (rank + 1) % size, pred = (rank + size - 1) % size;
  L->succ = size > 1 && !same_host(L, rank, succ) ? succ : -1;
  L->pred = size > 1 && !same_host(L, rank, pred) ? pred : -1;
  atomic_init(&L->left_step, UINT64_MAX);
  int rc = pthread_create(&L->thread, NULL, live_main, L);
  if (rc) {
    MPI_Comm_free(&L->comm);
    free(L);
    return cpdl__error(-rc, "could not start the liveness thread: %s", strerror(rc));
  }
  L->running = true;
  *out = L;
  return 0;
}

int cpdl__live_check(const cpdl__live_t *L, uint64_t step) {
  if (!L)
    return 0;
  if (atomic_load_explicit(&L->verdict, memory_order_acquire))
    return cpdl__error(CPDL_EPEER, "%s", L->verdict_text);
  if (step != UINT64_MAX && atomic_load_explicit(&L->left_set, memory_order_acquire) &&
      step >= atomic_load_explicit(&L->left_step, memory_order_relaxed))
    return cpdl__error(CPDL_EPEER, "%s", L->left_text);
  return 0;
}

void cpdl__live_announce_leave(cpdl__live_t *L, uint64_t step) {
  if (!L || L->leave_asked)
    return;
  L->leave_asked = true;
  char host[CPDL__HOST_NAME_MAX + 1];
  L->left_at = step;
  snprintf(L->leave_text, sizeof L->leave_text, "rank %d on host %s left at step %llu "
           "(it closed its loader: an exception or an early exit?); cpdl cannot continue this "
           "job (check rank %d's log for why it left)", L->rank,
           host_name(L, L->rank, host, sizeof host), (unsigned long long)step, L->rank);
  atomic_fetch_or_explicit(&L->announce, ANNOUNCE_LEFT, memory_order_release);
}

void cpdl__live_announce_failure(cpdl__live_t *L, const char *why) {
  if (!L || L->failure_asked || atomic_load_explicit(&L->verdict, memory_order_acquire))
    return; /* the others have the verdict already (it came from them) */
  L->failure_asked = true;
  char host[CPDL__HOST_NAME_MAX + 1];
  snprintf(L->failure_text, sizeof L->failure_text, "rank %d on host %s failed: %s", L->rank,
           host_name(L, L->rank, host, sizeof host), why);
  atomic_fetch_or_explicit(&L->announce, ANNOUNCE_FAILED, memory_order_release);
}

void cpdl__live_stop(cpdl__live_t *L) {
  if (!L)
    return;
  if (L->running) {
    /* Let a pending announcement go out first (at most one poll period). */
    for (int i = 0; i < 50 && atomic_load_explicit(&L->announce, memory_order_acquire); i++) {
      struct timespec pause = {.tv_sec = 0, .tv_nsec = 2000000L};
      nanosleep(&pause, NULL);
    }
    atomic_store_explicit(&L->stop, true, memory_order_release);
    pthread_join(L->thread, NULL);
  }
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized)
    MPI_Comm_free(&L->comm); /* local in Open MPI: safe with a dead member */
  free(L);
}
