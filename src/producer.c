/* producer.c — the group leader's loader threads: collate, prepare into the ring's
 * slots, publish. Thread 0 waits for a free slot and publishes. With a feed
 * whose rows split (cpdl__feed_splits: pack and pad rows of token sources),
 * thread 0 plans step k+1 (where each row starts: cheap, from the index) and
 * then every thread, itself included, prepares its share of step k and fills
 * its rows of step k+1 — both halves of the work spread over all n threads
 * (with one collate set, sizing.c: prepare k, publish, then fill k+1).
 * Otherwise (thd, gpt rows, npy batches) workers 1..n-1 prepare step k and,
 * with a double-buffered feed, the last worker collates step k+1 whole.
 *
 * Invariants: two barriers per step order every worker's writes before
 * publish()'s release store, and the plan (thread 0, alone) before any fill;
 * the feed cursor stored with step k is read before step k+1 is planned; no
 * thread calls MPI; a failure is posted to the ring so every consumer
 * returns it, with the failing thread's message. Idle threads sleep in the
 * barrier (a futex), never spin.
 */
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

_Static_assert(CPDL__MAX_THREADS <= CPDL__COLLATE_READERS,
               "each loader thread fills rows with a collate reader of its own");

/* One collated step waiting to be prepared. */
typedef struct pending {
  cpdl_tensor_t inputs[CPDL_MAX_FIELDS];
  int n_inputs;
  int64_t rows[CPDL_MAX_FIELDS]; /* valid entries along dim 0 of each input (feed_lengths) */
  /* schedule=dynamic: each local region's per-rank fields' (cpdl__feed_rank_lengths) */
  int64_t rank_rows[CPDL__RING_MAX_REGIONS][CPDL_MAX_FIELDS];
  int rc; /* of the feed_next that filled it: 0, CPDL_EEOF or an error */
} pending_t;

/* The first failure of a phase's threads, with its thread's message: the
 * winner of the compare-exchange writes msg before the barrier that thread 0
 * passes before reading it. */
typedef struct failure {
  atomic_int rc;
  char msg[512];
} failure_t;

static void failure_post(failure_t *f, int rc) {
  int zero = 0;
  if (atomic_compare_exchange_strong(&f->rc, &zero, rc))
    snprintf(f->msg, sizeof f->msg, "%s", cpdl_last_error());
}

struct cpdl__producer {
  cpdl__producer_args_t args; /* what it was started with (ring, feed, plan, ...) */
  int n_threads;            /* args.n_threads, or 1 for steps under 4 MiB */
  pthread_t threads[CPDL__MAX_THREADS]; /* [0]: publisher_main, [1..n_workers]: worker_main */
  int n_workers;            /* worker threads created */
  atomic_int gate;          /* 0: wait, 1: all threads exist, -1: start failed */
  pthread_barrier_t barrier;
  bool barrier_ready;
  atomic_bool stopping;
  /* Work shared by the threads for the step in flight; written by thread 0
   * before the first barrier, read by all after it. work[work_set] is the
   * step being prepared, the other set the one being collated. */
  pending_t work[2];
  int work_set;
  char collate_msg[512];
  bool pipelined;           /* a worker collates step k+1 during step k */
  bool split;               /* every thread prepares step k and fills rows of k+1 */
  bool split_overlap;       /* split with two collate sets: both in one phase */
  int n_prep;               /* threads that prepare (n_threads, minus the collator) */
  uint32_t work_slot;
  /* What this phase does (split), set by thread 0 before the first barrier. */
  bool phase_prep;          /* prepare work[work_set] into work_slot */
  bool phase_fill;          /* fill the rows of the planned work[work_set ^ 1] */
  atomic_bool work_done;    /* thread 0 tells workers to exit */
  failure_t prep_fail, fill_fail;
};

/* Thread 0's liveness check while it waits for a free slot: closing, or
 * what the loader's check (peers alive, errors posted) says. */
static int producer_alive(void *arg) {
  cpdl__producer_t *P = arg;
  if (atomic_load_explicit(&P->stopping, memory_order_acquire))
    return cpdl__error(CPDL_ESTATE, "loader is closing");
  return P->args.alive(P->args.alive_arg);
}

/* Prepare this thread's share of the slot: every local CP region, work
 * items (shared fields, (rank, field) shards) dealt round-robin over the
 * n_prep preparing threads (cpdl_prep_execute_part). */
static int prepare_share(cpdl__producer_t *P, int t) {
  int ranks[CPDL__RING_MAX_REGIONS];
  void *dst[CPDL__RING_MAX_REGIONS];
  const cpdl__ring_geometry_t *geo = cpdl__ring_geometry(P->args.ring);
  int n = (int)geo->n_regions;
  for (int r = 0; r < n; r++) {
    ranks[r] = P->args.local_cp[r];
    dst[r] = cpdl__ring_rank_block(P->args.ring, (uint32_t)r, P->work_slot);
  }
  void *shared =
      geo->shared_slot_bytes ? cpdl__ring_shared_block(P->args.ring, P->work_slot) : NULL;
  const pending_t *w = &P->work[P->work_set];
  return cpdl_prep_execute_part(P->args.plan, w->inputs, w->n_inputs, ranks, n, dst, shared, t,
                                P->n_prep);
}

/* Collate the step after the one in flight into the other input set. */
static void collate_ahead(cpdl__producer_t *P) {
  pending_t *next = &P->work[P->work_set ^ 1];
  next->n_inputs = CPDL_MAX_FIELDS;
  next->rc = cpdl__feed_next(P->args.feed, next->inputs, &next->n_inputs);
  if (next->rc && next->rc != CPDL_EEOF)
    snprintf(P->collate_msg, sizeof P->collate_msg, "%s", cpdl_last_error());
  if (!next->rc)
    cpdl__feed_lengths(P->args.feed, next->inputs, next->n_inputs, next->rows);
  if (!next->rc && cpdl__feed_rank_fields(P->args.feed)) {
    const cpdl__ring_geometry_t *geo = cpdl__ring_geometry(P->args.ring);
    for (uint32_t r = 0; r < geo->n_regions && r < CPDL__RING_MAX_REGIONS; r++)
      cpdl__feed_rank_lengths(P->args.feed, P->args.local_cp[r], next->rank_rows[r]);
  }
}

/* Store the step's lengths with it (segment.h, the slot lengths table): an
 * output field that passes through whole (not sharded) has its input's valid
 * entries; every other field is full. The same in every block, as every CP
 * rank sees the same pass-through fields. */
static void store_lengths(const cpdl__producer_t *P, uint64_t step, const pending_t *w) {
  int n_fields = cpdl_prep_plan_nfields(P->args.plan);
  int64_t rows[CPDL_MAX_FIELDS];
  for (int i = 0; i < n_fields && i < CPDL_MAX_FIELDS; i++) {
    const cpdl_prep_field_t *f = cpdl_prep_plan_field(P->args.plan, i);
    rows[i] = f->shape[0];
    for (int k = 0; f->seq_dim < 0 && k < w->n_inputs; k++)
      if (strcmp(w->inputs[k].name, f->name) == 0 && w->inputs[k].shape[0] == f->shape[0] &&
          w->rows[k] >= 0 && w->rows[k] < f->shape[0])
        rows[i] = w->rows[k];
  }
  const cpdl__ring_geometry_t *geo = cpdl__ring_geometry(P->args.ring);
  /* schedule=dynamic: the block plan's per-rank fields (its first rank_fields,
   * in input order) have each rank's own lengths */
  const int rank_fields = cpdl__feed_rank_fields(P->args.feed);
  for (uint32_t block = 0; block <= geo->n_regions; block++) {
    int64_t mine[CPDL_MAX_FIELDS];
    memcpy(mine, rows, sizeof mine);
    for (int i = 0; block < geo->n_regions && i < rank_fields && i < n_fields; i++)
      mine[i] = w->rank_rows[block][i];
    cpdl__ring_set_slot_lengths(P->args.ring, step, block, mine);
  }
}

/* Thread t's share of a split phase: its part of step k's preparation, then
 * its rows of step k+1 (disjoint rows, its own reader: feed.h). */
static void run_phase(cpdl__producer_t *P, int t) {
  int rc;
  if (P->phase_prep && (rc = prepare_share(P, t)))
    failure_post(&P->prep_fail, rc);
  if (P->phase_fill && t > 0 && (rc = cpdl__fault("fill_rows", P->args.world_rank)))
    failure_post(&P->fill_fail, rc); /* a worker's failure reaches every rank */
  else if (P->phase_fill && (rc = cpdl__feed_fill(P->args.feed, t, P->n_threads)))
    failure_post(&P->fill_fail, rc);
}

/* Split: plan the step after the one in flight into the other input set
 * (thread 0, every other thread in the barrier). Its rows are filled in the
 * next phase. \return true if there are rows to fill. */
static bool plan_ahead(cpdl__producer_t *P) {
  pending_t *next = &P->work[P->work_set ^ 1];
  next->n_inputs = CPDL_MAX_FIELDS;
  next->rc = cpdl__feed_plan(P->args.feed, next->inputs, &next->n_inputs);
  if (next->rc && next->rc != CPDL_EEOF)
    snprintf(P->collate_msg, sizeof P->collate_msg, "%s", cpdl_last_error());
  if (!next->rc) /* known at plan time: only unsplit (thd) rows vary, and plan made them */
    cpdl__feed_lengths(P->args.feed, next->inputs, next->n_inputs, next->rows);
  return next->rc == 0;
}

/* Split: one phase on every thread (thread 0 included), between two
 * barriers; a fill failure becomes the planned step's error, reported when
 * that step comes up (as a collate error is). \return prepare's error. */
static int phase(cpdl__producer_t *P, bool prep, bool fill) {
  P->phase_prep = prep;
  P->phase_fill = fill;
  pthread_barrier_wait(&P->barrier);
  run_phase(P, 0);
  pthread_barrier_wait(&P->barrier);
  int rc = atomic_load(&P->fill_fail.rc);
  if (fill && rc) {
    P->work[P->work_set ^ 1].rc = rc;
    snprintf(P->collate_msg, sizeof P->collate_msg, "%s", P->fill_fail.msg);
    atomic_store(&P->fill_fail.rc, 0);
  }
  rc = atomic_load(&P->prep_fail.rc);
  return rc ? cpdl__error(rc, "%s", P->prep_fail.msg) : 0;
}

/* Workers are created first and wait at a gate: only when every thread of
 * the barrier exists (gate 1) do they enter it; if one could not be created
 * (gate -1) the others leave without touching the barrier, so a partial
 * start can never leave a thread waiting for a party that does not exist. */
static bool pass_gate(cpdl__producer_t *P) {
  int gate;
  while ((gate = atomic_load_explicit(&P->gate, memory_order_acquire)) == 0) {
    struct timespec pause = {.tv_sec = 0, .tv_nsec = 100000};
    nanosleep(&pause, NULL);
  }
  return gate > 0;
}

/* Threads 1..n-1. With a pipelined feed the last of them collates step k+1
 * while the others prepare step k; otherwise all prepare. */
static void *worker_main(void *arg) {
  cpdl__producer_t *P = ((void **)arg)[0];
  int t = (int)(intptr_t)((void **)arg)[1];
  free(arg);
  char name[16];
  snprintf(name, sizeof name, "cpdl-loader%d", t);
  pthread_setname_np(pthread_self(), name); /* visible in top, gdb, /proc */
  if (!pass_gate(P))
    return NULL;
  cpdl__pin_thread(P->args.pin, t);
  int rc;
  for (;;) {
    pthread_barrier_wait(&P->barrier); /* step ready (or done) */
    if (atomic_load_explicit(&P->work_done, memory_order_acquire))
      break;
    if (P->split)
      run_phase(P, t);
    else if (P->pipelined && t == P->n_threads - 1)
      collate_ahead(P);
    else if ((rc = prepare_share(P, t)))
      failure_post(&P->prep_fail, rc);
    pthread_barrier_wait(&P->barrier); /* share written, next step collated */
  }
  return NULL;
}

/* The collated inputs as the step publishes them: each at its valid length
 * (w->rows, what the feed said; mode thd's cu_seqlens at n+1). */
static int dump_inputs(const cpdl__producer_t *P, uint64_t step, const pending_t *w) {
  char dir[4096];
  snprintf(dir, sizeof dir, "%s/step%llu/group%d/collated", P->args.dump_collated,
           (unsigned long long)step, P->args.group);
  int rc = cpdl__mkdirs(dir);
  const cpdl_tensor_t *in = w->inputs;
  for (int i = 0; !rc && i < w->n_inputs; i++) {
    char path[4200];
    int64_t shape[CPDL_MAX_DIMS];
    memcpy(shape, in[i].shape, sizeof shape);
    shape[0] = w->rows[i];
    snprintf(path, sizeof path, "%s/%s.npy", dir, in[i].name);
    rc = cpdl__npy_write(path, in[i].dtype, in[i].ndim, shape, in[i].data);
  }
  return rc;
}

/* Thread 0, the publisher: for each step, wait for a free slot, prepare
 * (with the workers), publish. The barriers order every write of the workers
 * before publish()'s release store. The collated inputs of step k are in work[work_set]; with a
 * pipelined feed, step k+1 is collated during step k's preparation. */
static void *publisher_main(void *arg) {
  cpdl__producer_t *P = arg;
  int rc = 0;
  pthread_setname_np(pthread_self(), "cpdl-loader0");
  cpdl__pin_thread(P->args.pin, 0);
  P->work_set = 0;
  if (P->split) { /* step first_step into set 1 ... */
    if (plan_ahead(P))
      phase(P, false, true);
  } else {
    collate_ahead(P);
  }
  P->work_set = 1; /* ... which is now the current set */
  for (uint64_t step = P->args.first_step; step != P->args.end_step; step++) {
    pending_t *cur = &P->work[P->work_set];
    if (cur->rc == CPDL_EEOF) {
      cpdl__ring_publish_eof(P->args.ring, step);
      break;
    }
    if (cur->rc) {
      rc = cpdl__error(cur->rc, "%s", P->collate_msg);
      break;
    }
    /* The cursor after this step, read before the next one is collated. */
    uint64_t words[CPDL__CURSOR_WORDS];
    if ((rc = cpdl__feed_cursor(P->args.feed, words)))
      break;
    rc = cpdl__ring_wait_free(P->args.ring, step, producer_alive, P);
    if (rc)
      break;
    if (cpdl__fault("mid_fill", P->args.world_rank)) {
      rc = CPDL_EFAULT;
      break;
    }
    if (P->args.dump_collated && (rc = dump_inputs(P, step, cur)))
      break;
    P->work_slot = cpdl__ring_slot_of(P->args.ring, step);
    bool more = step + 1 != P->args.end_step;
    if (P->split) {
      rc = phase(P, true, P->split_overlap && more && plan_ahead(P));
    } else if (P->n_threads > 1) {
      pthread_barrier_wait(&P->barrier);
      rc = prepare_share(P, 0);
      pthread_barrier_wait(&P->barrier);
      int wrc = atomic_load(&P->prep_fail.rc);
      if (!rc && wrc)
        rc = cpdl__error(wrc, "%s", P->prep_fail.msg);
    } else {
      rc = prepare_share(P, 0);
    }
    if (rc) {
      rc = cpdl__error_prefix(rc, "preparing step %llu", (unsigned long long)step);
      break;
    }
    if (more && !P->pipelined && !P->split)
      collate_ahead(P);
    else if (!more)
      P->work[P->work_set ^ 1].rc = CPDL_EEOF;
    cpdl__ring_set_slot_state(P->args.ring, step, words);
    store_lengths(P, step, cur);
    cpdl__ring_publish(P->args.ring, step);
    cpdl__ring_heartbeat(P->args.ring);
    /* Split over one collate set: step k's inputs are read; now its rows
     * may be overwritten by step k+1's, planned and filled by every thread. */
    if (P->split && !P->split_overlap && more && plan_ahead(P) && (rc = phase(P, false, true)))
      break;
    P->work_set ^= 1;
  }
  if (P->n_threads > 1) {
    atomic_store_explicit(&P->work_done, true, memory_order_release);
    pthread_barrier_wait(&P->barrier);
  }
  if (rc && rc != CPDL_ESTATE) {
    /* Every consumer learns the leader's error, with its message. */
    char msg[512];
    snprintf(msg, sizeof msg, "leader (rank %d): %s", P->args.world_rank, cpdl_last_error());
    cpdl__ring_post_error(P->args.ring, rc, msg);
  }
  return NULL;
}

/* Below this many bytes per step one thread collates and prepares alone:
 * handing a small step between threads (two barriers) costs more than the
 * work it spreads (measured: 8K-token steps ran at half the rate). */
#define SPLIT_MIN_STEP_BYTES ((size_t)4 << 20)

/* SPLIT_MIN_STEP_BYTES, or CPDL_SPLIT_MIN_BYTES (tests: 0, so that small
 * steps exercise every thread's share). */
static size_t split_min_bytes(void) {
  const char *env = getenv("CPDL_SPLIT_MIN_BYTES");
  return env && *env ? (size_t)strtoull(env, NULL, 10) : SPLIT_MIN_STEP_BYTES;
}

int cpdl__producer_collate_sets(size_t step_bytes, int n_threads) {
  return n_threads > 1 && step_bytes >= split_min_bytes() ? 2 : 1;
}

static int start_threads(cpdl__producer_t *P) {
  const cpdl__ring_geometry_t *geo = cpdl__ring_geometry(P->args.ring);
  size_t step_bytes = cpdl_prep_plan_rank_bytes(P->args.plan) * geo->n_regions +
                      cpdl_prep_plan_shared_bytes(P->args.plan);
  if (step_bytes < split_min_bytes())
    P->n_threads = 1;
  /* With one output set (the loader's sizing, sizing.c) the feed is not
   * double-buffered: collation runs after each step's preparation — split,
   * it is a phase of its own after the publish. */
  bool two_sets = P->n_threads > 1 && cpdl__feed_double_buffered(P->args.feed);
  P->split = P->n_threads > 1 && cpdl__feed_splits(P->args.feed);
  P->split_overlap = P->split && two_sets;
  P->pipelined = two_sets && !P->split;
  P->n_prep = P->pipelined ? P->n_threads - 1 : P->n_threads;
  atomic_store(&P->stopping, false);
  atomic_store(&P->work_done, false);
  atomic_store(&P->prep_fail.rc, 0);
  atomic_store(&P->fill_fail.rc, 0);
  atomic_store(&P->gate, 0);
  if (P->n_threads > 1) {
    if (pthread_barrier_init(&P->barrier, NULL, (unsigned)P->n_threads))
      return cpdl__error(-ENOMEM, "cannot create the loader threads' barrier");
    P->barrier_ready = true;
  }
  int rc = 0, err = 0;
  for (int t = 1; t < P->n_threads && !rc; t++) {
    void **arg = malloc(2 * sizeof *arg);
    if (!arg) {
      rc = cpdl__error(-ENOMEM, "out of memory starting loader threads");
      break;
    }
    arg[0] = P;
    arg[1] = (void *)(intptr_t)t;
    if ((err = pthread_create(&P->threads[t], NULL, worker_main, arg)) != 0) {
      free(arg);
      rc = cpdl__error(-err, "cannot start loader thread %d: %s", t, strerror(err));
      break;
    }
    P->n_workers++;
  }
  if (!rc) /* a failed start after some workers exist: tested through CPDL_FAULT */
    rc = cpdl__fault("start_threads", P->args.world_rank);
  if (!rc && (err = pthread_create(&P->threads[0], NULL, publisher_main, P)) != 0)
    rc = cpdl__error(-err, "cannot start loader thread 0 (the publisher): %s", strerror(err));
  atomic_store_explicit(&P->gate, rc ? -1 : 1, memory_order_release);
  if (rc) {
    for (int t = 1; t <= P->n_workers; t++)
      pthread_join(P->threads[t], NULL);
    P->n_workers = 0;
    if (P->barrier_ready) {
      pthread_barrier_destroy(&P->barrier);
      P->barrier_ready = false;
    }
    return rc;
  }
  return 0;
}

/* Stop and join every loader thread. The publisher (thread 0) notices
 * `stopping` on its next wake (ring waits tick every few ms) and releases the
 * workers through the barrier. */
static void stop_threads(cpdl__producer_t *P) {
  atomic_store_explicit(&P->stopping, true, memory_order_release);
  cpdl__ring_wake_all(P->args.ring);
  pthread_join(P->threads[0], NULL);
  for (int t = 1; t <= P->n_workers; t++)
    pthread_join(P->threads[t], NULL);
  P->n_workers = 0;
  if (P->barrier_ready) {
    pthread_barrier_destroy(&P->barrier);
    P->barrier_ready = false;
  }
}

int cpdl__producer_start(const cpdl__producer_args_t *args, cpdl__producer_t **out) {
  *out = NULL;
  if (args->n_threads < 1 || args->n_threads > CPDL__MAX_THREADS)
    return cpdl__error(CPDL_EARG, "threads=%d is out of range 1..%d", args->n_threads,
                       CPDL__MAX_THREADS);
  cpdl__producer_t *P = calloc(1, sizeof *P);
  if (!P)
    return cpdl__error(-ENOMEM, "out of memory for the loader threads");
  P->args = *args;
  P->n_threads = args->n_threads;
  int rc = start_threads(P);
  if (rc) {
    free(P);
    return rc;
  }
  *out = P;
  return 0;
}

void cpdl__producer_stop(cpdl__producer_t *P) {
  if (!P)
    return;
  stop_threads(P);
  free(P);
}
