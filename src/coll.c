/* coll.c — the control plane: every collective of open/restore/close, built
 * on the one out-of-band allgather of a cpdl_oob_t, and the pid liveness
 * test that it (and the loader's ring waits) share.
 *
 * Invariants:
 *  - Every operation is a header allgather and one payload allgather over
 *    the WHOLE world; a team (node, group, host) operation is a world
 *    operation followed by a local selection of the team's entries. So every rank runs the same sequence
 *    of allgathers with the same lengths, whatever team it is in: callers
 *    call each team operation on every rank, each with its own team.
 *  - Every operation starts with the same fixed-size header allgather (the
 *    public call it belongs to, a hash of its step, the control plane's
 *    operation count and this rank's payload length); only when every
 *    header agrees does the payload follow. A header can only ever match
 *    another header, so two ranks in different operations (one closing
 *    while the others save) find out together, in the same allgather, and
 *    all return CPDL_EPEER naming the odd one: collectives of different
 *    kinds never match each other's payloads.
 *  - A request is polled with req_test. With a watch installed (this host's
 *    other ranks: world rank, pid, pidfd; and the remote liveness of live.c),
 *    a dead watched rank while the request is still pending after a short
 *    grace is CPDL_EPEER naming it. The request is abandoned, never freed:
 *    its heap buffers are leaked on purpose, so late progress can only write
 *    there.
 *  - Payloads are small (configuration, names, pids, bindings): the cost of
 *    gathering them over the world is paid at open/restore/close only.
 */
#include "internal.h"

#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Polling: test with sched_yield for SPIN_NS (MPI's nonblocking collectives
 * progress only inside MPI_Test, and a rank that sleeps stalls every round
 * of the allgather on its peers; yielding lets an oversubscribed peer run),
 * then sleep between tests (growing
 * up to SLEEP_MAX_NS so a long wait costs no core), look at the peers every
 * CHECK_NS, and declare a death only after GRACE_NS more of testing: a peer
 * that finished the collective and exited normally left its messages in
 * our queues, and they still complete the request. */
#define SPIN_NS 2000000L
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

/* ---- the control plane and its teams ------------------------------------------ */

int cpdl__ctl_init(const cpdl_oob_t *oob, cpdl__ctl_t *out) {
  memset(out, 0, sizeof *out);
  if (!oob || oob->struct_size < sizeof(cpdl_oob_t) || !oob->allgather || !oob->req_test ||
      !oob->req_free)
    return cpdl__error(CPDL_EARG, "cpdl_oob_t is NULL or incomplete (set struct_size = "
                       "sizeof(cpdl_oob_t) and the allgather, req_test and req_free callbacks)");
  if (oob->n_oob_eps < 1 || oob->oob_ep < 0 || oob->oob_ep >= oob->n_oob_eps)
    return cpdl__error(CPDL_EARG, "cpdl_oob_t: endpoint %d of %d is not valid (need 0 <= "
                       "oob_ep < n_oob_eps)", oob->oob_ep, oob->n_oob_eps);
  out->oob = *oob;
  out->oob.struct_size = sizeof(cpdl_oob_t);
  out->rank = oob->oob_ep;
  out->size = oob->n_oob_eps;
  return 0;
}

void cpdl__team_world(const cpdl__ctl_t *ctl, cpdl__team_t *out) {
  out->ctl = ctl;
  out->rank = ctl->rank;
  out->size = ctl->size;
  out->ranks = NULL;
}

int cpdl__team_select(const cpdl__ctl_t *ctl, const int *key, cpdl__team_t *out) {
  int mine = key[ctl->rank], n = 0;
  for (int r = 0; r < ctl->size; r++)
    n += key[r] == mine;
  out->ctl = ctl;
  out->size = n;
  out->rank = 0;
  out->ranks = malloc((size_t)n * sizeof *out->ranks);
  if (!out->ranks)
    return cpdl__error(-ENOMEM, "control plane: out of memory for a team of %d ranks", n);
  n = 0;
  for (int r = 0; r < ctl->size; r++)
    if (key[r] == mine) {
      if (r == ctl->rank)
        out->rank = n;
      out->ranks[n++] = r;
    }
  return 0;
}

void cpdl__team_free(cpdl__team_t *team) {
  if (!team)
    return;
  free(team->ranks);
  team->ranks = NULL;
  team->size = 0;
}

/* ---- the watch ------------------------------------------------------------------ */

int cpdl__watch_build(const cpdl__team_t *host, cpdl__watch_t *out) {
  memset(out, 0, sizeof *out);
  int32_t mine = (int32_t)getpid();
  int32_t *pids = malloc((size_t)host->size * sizeof *pids);
  int rc = cpdl__coll_allgather(host, &mine, sizeof mine, pids, "the pid exchange");
  if (rc) {
    free(pids);
    return rc;
  }
  out->peers = calloc((size_t)host->size, sizeof *out->peers);
  if (!out->peers) {
    free(pids);
    return cpdl__error(-ENOMEM, "pid exchange: out of memory for %d ranks of this host",
                       host->size);
  }
  for (int i = 0; i < host->size; i++) {
    if (i == host->rank)
      continue;
    cpdl__peer_t *p = &out->peers[out->n++];
    p->rank = cpdl__team_world_rank(host, i);
    p->pid = pids[i];
    /* -1 (no pidfds: old kernel, seccomp) falls back to kill(pid, 0). */
    p->pidfd = cpdl__pidfd_open((pid_t)p->pid);
  }
  free(pids);
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

static const cpdl__peer_t *find_dead(const cpdl__watch_t *w) {
  for (int i = 0; w && i < w->n; i++)
    if (cpdl__pid_dead(w->peers[i].pid, w->peers[i].pidfd))
      return &w->peers[i];
  return NULL;
}

static int peer_died(const cpdl__peer_t *p, const char *what) {
  return cpdl__error(CPDL_EPEER, "rank %d (pid %d) died during %s; cpdl cannot continue this job "
                     "(restart it; check that rank's log for the cause)",
                     p->rank, (int)p->pid, what);
}

/* A callback's own code: keep a message it left (the MPI one does), or say
 * which callback failed. */
static int oob_failed(int status, const char *call, const char *what) {
  int code = status <= -4001 && status >= -4999 ? status : CPDL_EMPI;
  const char *msg = cpdl_last_error();
  if (msg && *msg)
    return cpdl__error_prefix(code, "control plane %s during %s failed", call, what);
  return cpdl__error(code, "control plane %s during %s failed (status %d)", call, what, status);
}

/* Run one allgather of `len` bytes from `send` into `recv` (world order)
 * and wait for it. send and recv must be heap memory the caller leaks when
 * this returns CPDL_EPEER (the request may still write into it). */
static int run_allgather(const cpdl__ctl_t *ctl, const void *send, void *recv, size_t len,
                         const char *what) {
  const cpdl_oob_t *oob = &ctl->oob;
  /* The callbacks may leave a message on failure: keep the caller's (an
   * agreement is about to send it) and put it back on success. */
  char saved[1024];
  snprintf(saved, sizeof saved, "%s", cpdl_last_error());
  cpdl__error_clear();
  void *req = NULL;
  int st = oob->allgather(send, recv, len, oob->coll_info, &req);
  if (st < 0)
    return oob_failed(st, "allgather", what);
  const cpdl__watch_t *w = current_watch;
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  long sleep_ns = SLEEP_MIN_NS, last_check = -CHECK_NS, dead_at = 0;
  const cpdl__peer_t *dead = NULL;
  for (;;) {
    st = oob->req_test(req);
    if (st == CPDL_OOB_OK) {
      oob->req_free(req);
      if (saved[0])
        cpdl__error(0, "%s", saved);
      return 0;
    }
    if (st < 0) {
      /* A failure with a dead peer is that death, told better. */
      const cpdl__peer_t *p = dead ? dead : find_dead(w);
      return p ? peer_died(p, what) : oob_failed(st, "req_test", what);
    }
    long t = elapsed_ns(&t0);
    if (t < SPIN_NS) {
      sched_yield();
      continue;
    }
    if (dead) {
      if (t - dead_at >= GRACE_NS)
        return peer_died(dead, what); /* req is abandoned (see the header) */
    } else if (w && (w->n > 0 || w->live) && t - last_check >= CHECK_NS) {
      last_check = t;
      int rc = w->check ? w->check(w->check_arg) : 0;
      if (!rc)
        rc = cpdl__live_check(w->live, UINT64_MAX); /* a death or failure on another host */
      if (rc)
        return rc; /* *req is abandoned, as after a death */
      if ((dead = find_dead(w)) != NULL)
        dead_at = t;
    }
    struct timespec pause = {.tv_sec = 0, .tv_nsec = sleep_ns};
    nanosleep(&pause, NULL);
    if (sleep_ns < SLEEP_MAX_NS)
      sleep_ns *= 2;
  }
}

/* ---- agreeing on the operation ------------------------------------------------- */

#define HEADER_MAGIC 0x6c647063u /* "cpdl", little-endian */

/* 32 bytes on every rank for every operation (so any two header gathers match). */
typedef struct op_header {
  uint32_t magic;
  uint32_t op;   /* cpdl__op_t: the public call this step belongs to */
  uint32_t what; /* hash of the step's text ("state save (the cursors' gather)") */
  uint32_t rank; /* the sender's world rank */
  uint64_t seq;  /* the control plane's operation count */
  uint64_t len;  /* the sender's payload bytes */
} op_header_t;

static _Thread_local cpdl__op_t current_op;

cpdl__op_t cpdl__coll_op(cpdl__op_t op) {
  cpdl__op_t previous = current_op;
  current_op = op;
  return previous;
}

static const char *op_name(uint32_t op) {
  switch (op) {
  case CPDL__OP_OPEN: return "open";
  case CPDL__OP_SAVE: return "state save";
  case CPDL__OP_RESTORE: return "state restore";
  case CPDL__OP_CLOSE: return "close";
  case CPDL__OP_NONE: return "a control-plane collective";
  default: return "an unknown operation";
  }
}

static uint32_t text_hash(const char *text) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (; text && *text; text++)
    h = (h ^ (uint8_t)*text) * 16777619u;
  return h;
}

static bool same_step(const op_header_t *a, const op_header_t *b) {
  return a->magic == b->magic && a->op == b->op && a->what == b->what && a->seq == b->seq;
}

/* " (host NAME)" when the control plane knows its ranks' hosts. */
static const char *host_of(const cpdl__ctl_t *ctl, int rank, char *buf, size_t size) {
  buf[0] = '\0';
  if (ctl->hosts && rank >= 0 && rank < ctl->size)
    snprintf(buf, size, " on host %.*s", CPDL__HOST_NAME_MAX,
             ctl->hosts + (size_t)rank * CPDL__HOST_NAME_MAX);
  return buf;
}

/* The headers differ: the same verdict on every rank (it is computed from the
 * same table). The step most ranks are in is "the operation" (a close loses
 * ties: the rank closing is the one leaving); the lowest rank elsewhere is
 * named. */
static int steps_differ(const cpdl__ctl_t *ctl, const op_header_t *h) {
  int main_rank = -1, main_votes = 0;
  bool main_close = true;
  for (int i = 0; i < ctl->size; i++) {
    int votes = 0;
    for (int j = 0; j < ctl->size; j++)
      votes += same_step(&h[i], &h[j]);
    bool is_close = h[i].magic != HEADER_MAGIC || h[i].op == CPDL__OP_CLOSE;
    if (main_rank < 0 || (main_close && !is_close) ||
        (main_close == is_close && votes > main_votes)) {
      main_rank = i;
      main_votes = votes;
      main_close = is_close;
    }
  }
  const op_header_t *m = &h[main_rank];
  int odd = 0;
  while (odd < ctl->size && same_step(&h[odd], m))
    odd++;
  int n_odd = ctl->size - main_votes;
  char where[CPDL__HOST_NAME_MAX + 16], others[48] = "";
  host_of(ctl, odd, where, sizeof where);
  if (n_odd > 1)
    snprintf(others, sizeof others, " (and %d other rank%s)", n_odd - 1, n_odd > 2 ? "s" : "");
  if (h[odd].magic != HEADER_MAGIC)
    return cpdl__error(CPDL_EPEER, "rank %d%s%s sent bytes that are not a cpdl control-plane "
                       "operation while rank %d is in %s (operation %llu); the control plane "
                       "is shared with something else, or corrupt: cpdl cannot continue this job",
                       odd, where, others, main_rank, op_name(m->op),
                       (unsigned long long)m->seq);
  if (h[odd].op == CPDL__OP_CLOSE && m->op != CPDL__OP_CLOSE)
    return cpdl__error(CPDL_EPEER, "rank %d%s%s left (it is closing its loader: an exception or "
                       "an early exit?) while %d rank%s, rank %d among them, %s in %s; cpdl "
                       "cannot continue this job (check rank %d's log for why it left)", odd,
                       where, others, main_votes, main_votes > 1 ? "s" : "",
                       main_rank, main_votes > 1 ? "are" : "is", op_name(m->op), odd);
  return cpdl__error(CPDL_EPEER, "rank %d%s%s is in %s (operation %llu) while rank %d is in %s "
                     "(operation %llu): the ranks called cpdl's collectives in different orders; "
                     "cpdl cannot continue this job (every rank must open, save, restore and "
                     "close together)", odd, where, others, op_name(h[odd].op),
                     (unsigned long long)h[odd].seq, main_rank, op_name(m->op),
                     (unsigned long long)m->seq);
}

/* The header allgather of one operation: every rank's header (world order,
 * malloc'd into *out) after checking they all name the same step. Lengths
 * must match unless any_len. On CPDL_EPEER from a death the buffer is leaked
 * (abandoned request); on a mismatch it is freed. */
static int agree_step(const cpdl__ctl_t *ctl, size_t len, bool any_len, const char *what,
                      op_header_t **out) {
  *out = NULL;
  size_t total;
  if (__builtin_mul_overflow(sizeof(op_header_t), (size_t)ctl->size + 1, &total))
    return cpdl__error(CPDL_EOVERFLOW, "control plane: %d ranks' headers do not fit during %s",
                       ctl->size, what);
  op_header_t *buf = malloc(total);
  if (!buf)
    return cpdl__error(-ENOMEM, "control plane: out of memory for %d headers during %s",
                       ctl->size, what);
  /* The count lives in the (caller-owned, never const) ctl: every rank
   * counts the same operations. */
  uint64_t seq = ((cpdl__ctl_t *)ctl)->seq++;
  buf[0] = (op_header_t){.magic = HEADER_MAGIC, .op = (uint32_t)current_op,
                         .what = text_hash(what), .rank = (uint32_t)ctl->rank, .seq = seq,
                         .len = len};
  int rc = run_allgather(ctl, buf, buf + 1, sizeof *buf, what);
  if (rc == CPDL_EPEER)
    return rc; /* buf is abandoned with the request */
  if (rc) {
    free(buf);
    return rc;
  }
  memmove(buf, buf + 1, total - sizeof *buf);
  for (int r = 0; r < ctl->size; r++) {
    if (!same_step(&buf[r], &buf[ctl->rank])) {
      rc = steps_differ(ctl, buf);
      free(buf);
      return rc;
    }
  }
  for (int r = 0; !any_len && r < ctl->size; r++)
    if (buf[r].len != len) {
      rc = cpdl__error(CPDL_EPEER, "control plane: rank %d sends %llu bytes and rank %d %zu "
                       "during %s (a cpdl bug or mixed cpdl versions); cpdl cannot continue",
                       r, (unsigned long long)buf[r].len, ctl->rank, len, what);
      free(buf);
      return rc;
    }
  *out = buf;
  return 0;
}

/* Gather `len` bytes of every world rank (the same len everywhere) into
 * *all (malloc'd, world order), after the operation's header agreement. On
 * CPDL_EPEER the buffers may be leaked (abandoned request). */
static int gather_payload(const cpdl__ctl_t *ctl, const void *send, size_t len, char **all,
                          const char *what) {
  *all = NULL;
  size_t total;
  if (__builtin_mul_overflow(len, (size_t)ctl->size, &total) ||
      __builtin_add_overflow(total, len, &total))
    return cpdl__error(CPDL_EOVERFLOW, "control plane: %zu bytes from each of %d ranks do not "
                       "fit during %s", len, ctl->size, what);
  char *buf = malloc(total ? total : 1);
  if (!buf)
    return cpdl__error(-ENOMEM, "control plane: out of memory for %zu bytes during %s", total,
                       what);
  if (len)
    memcpy(buf, send, len);
  int rc = run_allgather(ctl, buf, buf + len, len, what);
  if (rc == CPDL_EPEER)
    return rc; /* buf is abandoned with the request */
  if (rc) {
    free(buf);
    return rc;
  }
  memmove(buf, buf + len, total - len);
  *all = buf;
  return 0;
}

/* One operation of `len` bytes from every rank: the header agreement, then
 * the payload. */
static int gather_world(const cpdl__ctl_t *ctl, const void *send, size_t len, char **all,
                        const char *what) {
  *all = NULL;
  op_header_t *headers;
  int rc = agree_step(ctl, len, false, what, &headers);
  if (rc)
    return rc;
  free(headers);
  return gather_payload(ctl, send, len, all, what);
}

/* ---- the operations ------------------------------------------------------------- */

int cpdl__coll_allgather(const cpdl__team_t *team, const void *send, size_t len, void *recv,
                         const char *what) {
  char *all;
  int rc = gather_world(team->ctl, send, len, &all, what);
  if (rc)
    return rc;
  for (int i = 0; i < team->size && recv; i++)
    memcpy((char *)recv + (size_t)i * len, all + (size_t)cpdl__team_world_rank(team, i) * len,
           len);
  free(all);
  return recv ? 0 : cpdl__error(-ENOMEM, "control plane: no memory to receive %s", what);
}

int cpdl__coll_bcast(const cpdl__team_t *team, void *data, size_t len, int root,
                     const char *what) {
  char *all;
  int rc = gather_world(team->ctl, data, len, &all, what);
  if (rc)
    return rc;
  memcpy(data, all + (size_t)cpdl__team_world_rank(team, root) * len, len);
  free(all);
  return 0;
}

int cpdl__coll_barrier(const cpdl__team_t *team, const char *what) {
  char one = 1, *all;
  int rc = gather_world(team->ctl, &one, 1, &all, what);
  free(all);
  return rc;
}

int cpdl__coll_min_i64(const cpdl__team_t *team, int64_t *values, int n, const char *what) {
  char *all;
  size_t len = (size_t)n * sizeof *values;
  int rc = gather_world(team->ctl, values, len, &all, what);
  if (rc)
    return rc;
  for (int i = 0; i < team->size; i++) {
    const char *theirs = all + (size_t)cpdl__team_world_rank(team, i) * len;
    for (int k = 0; k < n; k++) {
      int64_t v;
      memcpy(&v, theirs + (size_t)k * sizeof v, sizeof v);
      if (v < values[k])
        values[k] = v;
    }
  }
  free(all);
  return 0;
}

int cpdl__coll_minloc(const cpdl__team_t *team, int value, int *min_value, int *min_rank,
                      const char *what) {
  char *all;
  int rc = gather_world(team->ctl, &value, sizeof value, &all, what);
  if (rc)
    return rc;
  *min_value = value;
  *min_rank = team->rank;
  for (int i = 0; i < team->size; i++) {
    int v;
    memcpy(&v, all + (size_t)cpdl__team_world_rank(team, i) * sizeof v, sizeof v);
    if (v < *min_value || (v == *min_value && i < *min_rank)) {
      *min_value = v;
      *min_rank = i;
    }
  }
  free(all);
  return 0;
}

int cpdl__coll_allgatherv(const cpdl__team_t *team, const void *send, size_t len, char **out,
                          size_t *offsets, const char *what) {
  *out = NULL;
  /* 1. Every world rank's length, in its header (the padded length must be
   *    the same everywhere, whatever team a rank is in). */
  op_header_t *headers;
  int rc = agree_step(team->ctl, len, true, what, &headers);
  if (rc)
    return rc;
  uint64_t longest = 0;
  for (int r = 0; r < team->ctl->size; r++)
    if (headers[r].len > longest)
      longest = headers[r].len;
  /* 2. Everyone's bytes, padded to the longest. */
  char *padded = calloc(1, longest ? (size_t)longest : 1);
  char *all = NULL;
  if (padded && len)
    memcpy(padded, send, len);
  char spare[1] = {0};
  rc = gather_payload(team->ctl, padded ? padded : spare, padded ? (size_t)longest : 0, &all,
                      what);
  free(padded);
  if (rc == 0 && !padded)
    rc = cpdl__error(-ENOMEM, "control plane: out of memory for %llu bytes during %s",
                     (unsigned long long)longest, what);
  size_t total = 0;
  for (int i = 0; rc == 0 && i < team->size; i++) {
    offsets[i] = total;
    total += (size_t)headers[cpdl__team_world_rank(team, i)].len;
  }
  offsets[team->size] = total;
  char *packed = rc == 0 ? malloc(total ? total : 1) : NULL;
  if (rc == 0 && !packed)
    rc = cpdl__error(-ENOMEM, "control plane: out of memory for %zu bytes during %s", total,
                     what);
  for (int i = 0; rc == 0 && i < team->size; i++)
    memcpy(packed + offsets[i], all + (size_t)cpdl__team_world_rank(team, i) * longest,
           offsets[i + 1] - offsets[i]);
  free(headers); /* its request completed */
  free(all);
  if (rc)
    return rc;
  *out = packed;
  return 0;
}
