/* test_ring.c — the segment header and the slot protocol: header validation
 * against each corruption (R10), many steps through threads over two
 * mappings of one segment with checksummed data (R7), timeouts, EOF, posted
 * errors and dead peers waking every waiter within a tick (R6, R8), a stalled
 * consumer waited for (R9), wrap-around near 2^64 (R14), fault injection.
 * CPDL_RING_STEPS sets the many-steps count (default 100000; TSan CI: 10^6).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "internal.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NONCE UINT64_C(0x1234567890abcdef)
#define HASH UINT64_C(0xfeedfacecafebeef)
#define N_CONSUMERS 2
#define N_REGIONS 2
#define SLOT_WORDS 512 /* words of the pattern per rank block */

static size_t page(void) { return (size_t)sysconf(_SC_PAGESIZE); }

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The leader never waits without a deadline here: a protocol bug (a slot
 * reused early, a cursor off by one, a lost release) or a consumer that
 * stopped on an error must fail the test in seconds with a message, not
 * hang it until CTest's timeout. */
#define WAIT_FREE_BOUND_MS 10000
static _Thread_local int64_t wait_free_since;
static int wait_free_deadline(void *arg) {
  (void)arg;
  int64_t waited = now_ms() - wait_free_since;
  if (waited > WAIT_FREE_BOUND_MS)
    return cpdl__error(CPDL_ETIMEDOUT, "test: the leader waited %" PRId64 " ms for a free slot: "
                       "a consumer stopped (see its error) or a release was lost", waited);
  return 0;
}
static int wait_free_bounded(cpdl__ring_t *ring, uint64_t step) {
  wait_free_since = now_ms();
  return cpdl__ring_wait_free(ring, step, wait_free_deadline, NULL);
}

static void test_fields(cpdl_prep_field_t fields[2]) {
  memset(fields, 0, 2 * sizeof fields[0]);
  snprintf(fields[0].name, sizeof fields[0].name, "input_ids");
  fields[0].dtype = CPDL_DTYPE_INT64;
  fields[0].ndim = 2;
  fields[0].shape[0] = 1;
  fields[0].shape[1] = SLOT_WORDS;
  fields[0].seq_dim = 1;
  fields[0].offset = 0;
  fields[0].nbytes = SLOT_WORDS * 8;
  snprintf(fields[1].name, sizeof fields[1].name, "pixel_values");
  fields[1].dtype = CPDL_DTYPE_UINT8;
  fields[1].ndim = 1;
  fields[1].shape[0] = 100;
  fields[1].seq_dim = -1;
  fields[1].shared = 1;
  fields[1].offset = 64;
  fields[1].nbytes = 100;
}

static cpdl__ring_geometry_t test_geometry(uint32_t n_slots) {
  cpdl__ring_geometry_t geo = {.n_slots = n_slots, .n_regions = N_REGIONS,
                               .n_consumers = N_CONSUMERS, .n_fields = 2,
                               .slot_bytes = CPDL__ALIGN_UP(SLOT_WORDS * 8, page()),
                               .shared_slot_bytes = page()};
  return geo;
}

/* ---- a segment with a leader mapping and per-consumer mappings ------------ */

typedef struct fixture {
  cpdl__shm_t shm;                 /* leader: read-write */
  cpdl__shm_t views[N_CONSUMERS];  /* consumers: data read-only */
  cpdl__ring_t *leader;
  cpdl__ring_t *consumers[N_CONSUMERS];
  size_t ctrl, total;
} fixture_t;

/* separate_maps: each consumer maps the segment itself (as in production);
 * else consumers share the leader's mapping (same addresses, so that
 * ThreadSanitizer sees the data accesses and checks their ordering). */
static void fixture_open(fixture_t *f, uint32_t n_slots, uint64_t first_step, bool separate_maps) {
  memset(f, 0, sizeof *f);
  cpdl__ring_geometry_t geo = test_geometry(n_slots);
  cpdl_prep_field_t fields[2];
  test_fields(fields);
  assert_int_equal(cpdl__ring_sizes(&geo, &f->ctrl, &f->total), 0);
  assert_int_equal(cpdl__shm_create(f->total, &f->shm), 0);
  assert_int_equal(cpdl__ring_init(f->shm.base, f->total, &geo, fields, NONCE, HASH,
                                   (int32_t)getpid(), first_step, &f->leader),
                   0);
  for (int c = 0; c < N_CONSUMERS; c++) {
    void *base = f->shm.base;
    if (separate_maps) {
      assert_int_equal(cpdl__shm_attach(f->shm.name, f->total, f->ctrl, true, &f->views[c]), 0);
      base = f->views[c].base;
    }
    assert_int_equal(cpdl__ring_attach(base, f->total, NONCE, HASH, &f->consumers[c]), 0);
    cpdl__ring_register(f->consumers[c], (uint32_t)c, (int32_t)getpid(), (int32_t)c);
  }
  assert_int_equal(cpdl__shm_unlink(&f->shm), 0);
}

static void fixture_close(fixture_t *f) {
  for (int c = 0; c < N_CONSUMERS; c++) {
    cpdl__ring_free(f->consumers[c]);
    cpdl__shm_close(&f->views[c]);
  }
  cpdl__ring_free(f->leader);
  cpdl__shm_close(&f->shm);
}

/* ---- init / attach / validation ------------------------------------------ */

static void test_init_attach(void **state) {
  (void)state;
  fixture_t f;
  fixture_open(&f, 4, 0, true);
  const cpdl__ring_geometry_t *geo = cpdl__ring_geometry(f.consumers[0]);
  assert_int_equal(geo->n_slots, 4);
  assert_int_equal(geo->n_regions, N_REGIONS);
  assert_int_equal(geo->n_consumers, N_CONSUMERS);
  assert_int_equal(f.ctrl % page(), 0);
  assert_int_equal(f.total, f.ctrl + 4 * N_REGIONS * geo->slot_bytes + 4 * geo->shared_slot_bytes);
  const cpdl_prep_field_t *fields = cpdl__ring_fields(f.consumers[1]);
  assert_string_equal(fields[0].name, "input_ids");
  assert_int_equal(fields[0].shape[1], SLOT_WORDS);
  assert_int_equal(fields[1].shared, 1);
  assert_int_equal(fields[1].offset, 64);

  /* Blocks are page-aligned, in order, disjoint and inside the segment. */
  unsigned char *base = f.views[0].base;
  unsigned char *prev_end = base + f.ctrl;
  for (uint32_t r = 0; r < N_REGIONS; r++) {
    size_t region_bytes;
    unsigned char *region = cpdl__ring_region(f.consumers[0], r, &region_bytes);
    assert_ptr_equal(region, prev_end);
    assert_int_equal(region_bytes, 4 * geo->slot_bytes);
    for (uint32_t s = 0; s < 4; s++) {
      unsigned char *block = cpdl__ring_rank_block(f.consumers[0], r, s);
      assert_ptr_equal(block, prev_end);
      assert_int_equal((uintptr_t)block % page(), 0);
      prev_end = block + geo->slot_bytes;
    }
  }
  for (uint32_t s = 0; s < 4; s++) {
    unsigned char *block = cpdl__ring_shared_block(f.consumers[0], s);
    assert_ptr_equal(block, prev_end);
    prev_end = block + geo->shared_slot_bytes;
  }
  assert_ptr_equal(prev_end, base + f.total);
  assert_null(cpdl__ring_rank_block(f.consumers[0], N_REGIONS, 0));
  assert_null(cpdl__ring_rank_block(f.consumers[0], 0, 4));
  assert_null(cpdl__ring_shared_block(f.consumers[0], 4));
  assert_int_equal(cpdl__ring_pid(f.leader, 1), getpid());
  fixture_close(&f);
}

/* Header corruption: each case starts from a good header in anonymous memory,
 * damages one value and expects CPDL_ECORRUPT naming it. */
typedef struct corruption {
  const char *what;     /* expected in the message */
  void (*damage)(unsigned char *base);
} corruption_t;

static cpdl__ring_hdr_t *hdr_of(unsigned char *base) { return (cpdl__ring_hdr_t *)base; }
static cpdl__ring_field_rec_t *field_of(unsigned char *base, int i) {
  return (cpdl__ring_field_rec_t *)(base + cpdl__ring_fields_offset()) + i;
}
static void bad_magic(unsigned char *b) { hdr_of(b)->magic ^= 1; }
static void bad_version(unsigned char *b) { hdr_of(b)->version = 99; }
static void bad_nonce(unsigned char *b) { hdr_of(b)->nonce ^= 0x100; }
static void bad_hash(unsigned char *b) { hdr_of(b)->config_hash += 1; }
static void bad_total(unsigned char *b) { hdr_of(b)->total_bytes += 4096; }
static void bad_header_bytes(unsigned char *b) { hdr_of(b)->header_bytes += 4096; }
static void huge_slots(unsigned char *b) { hdr_of(b)->n_slots = UINT32_MAX; }
static void zero_slots(unsigned char *b) { hdr_of(b)->n_slots = 0; }
static void huge_consumers(unsigned char *b) { hdr_of(b)->n_consumers = 1u << 20; }
static void huge_fields(unsigned char *b) { hdr_of(b)->n_fields = 1000; }
static void overflow_slot_bytes(unsigned char *b) { hdr_of(b)->slot_bytes = UINT64_C(1) << 62; }
static void odd_slot_bytes(unsigned char *b) { hdr_of(b)->slot_bytes += 1; }
static void more_slots(unsigned char *b) { hdr_of(b)->n_slots += 1; } /* size no longer matches */
static void field_beyond_slot(unsigned char *b) { field_of(b, 0)->offset = 4096 * 64; }
static void field_offset_wraps(unsigned char *b) { field_of(b, 0)->offset = UINT64_MAX - 63; }
static void field_unterminated(unsigned char *b) { memset(field_of(b, 1)->name, 'x', CPDL_NAME_MAX); }
static void field_dtype(unsigned char *b) { field_of(b, 0)->dtype = 77; }
static void field_ndim(unsigned char *b) { field_of(b, 1)->ndim = 5; }
static void field_nbytes(unsigned char *b) { field_of(b, 0)->nbytes += 8; }
static void field_shape(unsigned char *b) { field_of(b, 0)->shape[0] = -3; }

static void test_attach_rejects_corruption(void **state) {
  (void)state;
  static const corruption_t cases[] = {
      {"magic", bad_magic},           {"version", bad_version},
      {"nonce", bad_nonce},           {"config hash", bad_hash},
      {"total size", bad_total},      {"header_bytes", bad_header_bytes},
      {"n_slots", huge_slots},        {"n_slots", zero_slots},
      {"n_consumers", huge_consumers}, {"n_fields", huge_fields},
      {"overflow", overflow_slot_bytes}, {"page size", odd_slot_bytes},
      {"bytes", more_slots},          {"offset", field_beyond_slot},
      {"offset", field_offset_wraps}, {"NUL", field_unterminated},
      {"dtype", field_dtype},         {"ndim", field_ndim},
      {"nbytes", field_nbytes},       {"shape", field_shape},
  };
  cpdl__ring_geometry_t geo = test_geometry(4);
  cpdl_prep_field_t fields[2];
  test_fields(fields);
  size_t ctrl, total;
  assert_int_equal(cpdl__ring_sizes(&geo, &ctrl, &total), 0);
  unsigned char *good = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  unsigned char *bad = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  assert_true(good != MAP_FAILED && bad != MAP_FAILED);
  cpdl__ring_t *ring;
  assert_int_equal(cpdl__ring_init(good, total, &geo, fields, NONCE, HASH, 1, 0, &ring), 0);
  cpdl__ring_free(ring);

  memcpy(bad, good, ctrl);
  assert_int_equal(cpdl__ring_attach(bad, total, NONCE, HASH, &ring), 0); /* control case */
  cpdl__ring_free(ring);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    memcpy(bad, good, ctrl);
    cases[i].damage(bad);
    ring = (cpdl__ring_t *)1;
    int rc = cpdl__ring_attach(bad, total, NONCE, HASH, &ring);
    if (rc != CPDL_ECORRUPT || !strstr(cpdl_last_error(), cases[i].what))
      fail_msg("case %zu (%s): rc %d, message '%s'", i, cases[i].what, rc, cpdl_last_error());
    assert_null(ring);
  }
  /* What MPI carried disagrees with the header. */
  assert_int_equal(cpdl__ring_attach(good, total, NONCE + 1, HASH, &ring), CPDL_ECORRUPT);
  assert_non_null(strstr(cpdl_last_error(), "nonce"));
  assert_int_equal(cpdl__ring_attach(good, total - page(), NONCE, HASH, &ring), CPDL_ECORRUPT);
  assert_non_null(strstr(cpdl_last_error(), "total size"));
  assert_int_equal(cpdl__ring_attach(good, 8, NONCE, HASH, &ring), CPDL_ECORRUPT);

  /* init refuses what attach would refuse. */
  fields[0].offset = geo.slot_bytes;
  assert_int_equal(cpdl__ring_init(bad, total, &geo, fields, NONCE, HASH, 1, 0, &ring), CPDL_EARG);
  test_fields(fields);
  assert_int_equal(cpdl__ring_init(bad, total + page(), &geo, fields, NONCE, HASH, 1, 0, &ring),
                   CPDL_EARG);
  geo.slot_bytes = UINT64_C(1) << 62;
  geo.n_slots = 1024;
  assert_int_equal(cpdl__ring_sizes(&geo, &ctrl, &total), CPDL_EOVERFLOW);
  munmap(good, total);
  munmap(bad, total);
}

/* ---- the protocol with threads --------------------------------------------- */

static uint64_t pattern(uint64_t step, uint32_t region, size_t word) {
  return (step * UINT64_C(0x9E3779B97F4A7C15)) ^ ((uint64_t)region << 56) ^ word;
}

typedef struct run {
  fixture_t *f;
  uint64_t first_step, n_steps;
  int leader_rc;
  char leader_msg[256];
  int consumer_rc[N_CONSUMERS];
  uint64_t bad_words[N_CONSUMERS];
  uint64_t bad_state[N_CONSUMERS];
  uint64_t seen[N_CONSUMERS];
  int eof_rc[N_CONSUMERS];
  char msg[N_CONSUMERS][256];
} run_t;

typedef struct consumer_arg {
  run_t *run;
  uint32_t index;
} consumer_arg_t;

static void *leader_main(void *p) {
  run_t *run = p;
  cpdl__ring_t *ring = run->f->leader;
  for (uint64_t i = 0; i < run->n_steps; i++) {
    uint64_t step = run->first_step + i;
    int rc = wait_free_bounded(ring, step);
    if (rc) {
      run->leader_rc = rc;
      snprintf(run->leader_msg, sizeof run->leader_msg, "step %" PRIu64 ": %s", step,
               cpdl_last_error());
      cpdl__ring_post_error(ring, rc, run->leader_msg); /* the consumers stop too */
      return NULL;
    }
    uint32_t slot = cpdl__ring_slot_of(ring, step);
    for (uint32_t r = 0; r < N_REGIONS; r++) {
      uint64_t *words = cpdl__ring_rank_block(ring, r, slot);
      for (size_t w = 0; w < SLOT_WORDS; w++)
        words[w] = pattern(step, r, w);
    }
    uint64_t state[CPDL__CURSOR_WORDS] = {step, ~step, step * 3, 42};
    cpdl__ring_set_slot_state(ring, step, state);
    cpdl__ring_publish(ring, step);
  }
  cpdl__ring_publish_eof(ring, run->first_step + run->n_steps);
  return NULL;
}

static void *consumer_main(void *p) {
  consumer_arg_t *arg = p;
  run_t *run = arg->run;
  uint32_t me = arg->index;
  cpdl__ring_t *ring = run->f->consumers[me];
  uint32_t region = me % N_REGIONS;
  for (uint64_t i = 0; i < run->n_steps; i++) {
    uint64_t step = run->first_step + i;
    int rc = cpdl__ring_wait_step(ring, step, 10000, NULL, NULL);
    if (rc) {
      run->consumer_rc[me] = rc;
      snprintf(run->msg[me], sizeof run->msg[me], "step %" PRIu64 ": %s", step, cpdl_last_error());
      /* Tell the group, so the leader does not wait for this cursor. */
      cpdl__ring_post_error(ring, rc, run->msg[me]);
      return NULL;
    }
    const uint64_t *words = cpdl__ring_rank_block(ring, region, cpdl__ring_slot_of(ring, step));
    for (size_t w = 0; w < SLOT_WORDS; w++)
      run->bad_words[me] += words[w] != pattern(step, region, w);
    uint64_t state[CPDL__CURSOR_WORDS];
    if (cpdl__ring_slot_state(ring, step, state) != 0 || state[0] != step || state[1] != ~step ||
        state[2] != step * 3 || state[3] != 42)
      run->bad_state[me]++;
    run->seen[me]++;
    cpdl__ring_release(ring, me, step);
  }
  run->eof_rc[me] = cpdl__ring_wait_step(ring, run->first_step + run->n_steps, 10000, NULL, NULL);
  return NULL;
}

static void run_protocol(uint32_t n_slots, uint64_t first_step, uint64_t n_steps, bool separate) {
  fixture_t f;
  fixture_open(&f, n_slots, first_step, separate);
  run_t run = {.f = &f, .first_step = first_step, .n_steps = n_steps};
  consumer_arg_t args[N_CONSUMERS];
  pthread_t leader, consumers[N_CONSUMERS];
  for (uint32_t c = 0; c < N_CONSUMERS; c++) {
    args[c] = (consumer_arg_t){&run, c};
    assert_int_equal(pthread_create(&consumers[c], NULL, consumer_main, &args[c]), 0);
  }
  assert_int_equal(pthread_create(&leader, NULL, leader_main, &run), 0);
  pthread_join(leader, NULL);
  for (int c = 0; c < N_CONSUMERS; c++)
    pthread_join(consumers[c], NULL);
  for (int c = 0; c < N_CONSUMERS; c++) {
    if (run.consumer_rc[c])
      fail_msg("consumer %d: %d %s", c, run.consumer_rc[c], run.msg[c]);
    assert_int_equal(run.seen[c], n_steps);
    assert_int_equal(run.bad_words[c], 0); /* never a partial or stale slot (R7) */
    assert_int_equal(run.bad_state[c], 0);
    assert_int_equal(run.eof_rc[c], CPDL_EEOF);
  }
  if (run.leader_rc)
    fail_msg("leader: %d %s", run.leader_rc, run.leader_msg);
  fixture_close(&f);
}

static uint64_t many_steps(void) {
  const char *env = getenv("CPDL_RING_STEPS");
  if (env && *env) {
    char *end;
    unsigned long long n = strtoull(env, &end, 10);
    if (*end == '\0' && n > 0)
      return n;
  }
  return 100000;
}

static void test_many_steps_separate_mappings(void **state) {
  (void)state;
  uint64_t n = many_steps();
  int64_t t0 = now_ms();
  run_protocol(4, 0, n, true);
  print_message("%" PRIu64 " steps, 2 consumers, separate mappings: %" PRId64 " ms\n", n,
                now_ms() - t0);
}

static void test_many_steps_one_mapping(void **state) {
  (void)state;
  run_protocol(3, 0, many_steps(), false);
}

static void test_wrap_around(void **state) {
  (void)state;
  /* 3 slots: step % 3 would put UINT64_MAX and 0 in the same slot. */
  run_protocol(3, UINT64_MAX - 10, 30, true);
  run_protocol(4, UINT64_MAX - 10, 30, false);
  run_protocol(1, UINT64_MAX - 1, 5, true);
}

static void test_reset_and_rebase(void **state) {
  (void)state;
  /* State restore: the ring restarts at step 1000 before anyone consumed. */
  fixture_t f;
  fixture_open(&f, 3, 0, true);
  cpdl__ring_reset(f.leader, 1000);
  for (int c = 0; c < N_CONSUMERS; c++)
    cpdl__ring_rebase(f.consumers[c], 1000);
  assert_int_equal(cpdl__ring_slot_of(f.leader, 1000), 0);
  assert_int_equal(cpdl__ring_slot_of(f.consumers[0], 1001), 1);
  for (uint64_t s = 1000; s < 1003; s++) {
    assert_int_equal(wait_free_bounded(f.leader, s), 0);
    cpdl__ring_publish(f.leader, s);
  }
  /* The ring is full: step 1003 needs step 1000 released by both. */
  assert_int_equal(cpdl__ring_wait_step(f.consumers[0], 1003, 0, NULL, NULL), CPDL_ETIMEDOUT);
  for (uint64_t s = 1000; s < 1003; s++)
    for (uint32_t c = 0; c < N_CONSUMERS; c++) {
      assert_int_equal(cpdl__ring_wait_step(f.consumers[c], s, 100, NULL, NULL), 0);
      cpdl__ring_release(f.consumers[c], c, s);
    }
  assert_int_equal(wait_free_bounded(f.leader, 1003), 0);
  /* A late attacher numbers slots from the reset step too. */
  cpdl__ring_t *late;
  assert_int_equal(cpdl__ring_attach(f.views[0].base, f.total, NONCE, HASH, &late), 0);
  assert_int_equal(cpdl__ring_slot_of(late, 1004), 1);
  cpdl__ring_free(late);
  fixture_close(&f);
}

/* The slot lengths table (segment.h): a fresh slot says every field is full;
 * what the publisher stores for a step reaches the consumers of that block
 * only (each region and the shared block have their own lengths, so a
 * length can differ per CP rank); it lies inside the control part, clear of
 * the consumer records; a length beyond its field's capacity is refused. */
static void test_slot_lengths(void **state) {
  (void)state;
  fixture_t f;
  fixture_open(&f, 3, 10, true);
  const cpdl__ring_geometry_t *geo = cpdl__ring_geometry(f.leader);
  size_t table_end = cpdl__ring_lengths_offset(geo) + 3 * cpdl__ring_lengths_row_bytes(geo);
  assert_true(cpdl__ring_lengths_offset(geo) >=
              cpdl__ring_consumers_offset(2, 3) + N_CONSUMERS * sizeof(cpdl__ring_consumer_rec_t));
  assert_true(table_end <= f.ctrl);
  assert_int_equal(cpdl__ring_lengths_row_bytes(geo) % CPDL__CACHE_LINE, 0);
  int64_t rows[2];
  assert_int_equal(wait_free_bounded(f.leader, 10), 0);
  cpdl__ring_publish(f.leader, 10);
  assert_int_equal(cpdl__ring_wait_step(f.consumers[0], 10, 100, NULL, NULL), 0);
  for (uint32_t b = 0; b <= N_REGIONS; b++) {
    assert_int_equal(cpdl__ring_slot_lengths(f.consumers[0], 10, b, rows), 0);
    assert_int_equal(rows[0], 1);   /* input_ids [1, SLOT_WORDS] */
    assert_int_equal(rows[1], 100); /* pixel_values [100] */
  }
  assert_int_equal(cpdl__ring_slot_lengths(f.consumers[0], 10, N_REGIONS + 1, rows), CPDL_EARG);

  /* Step 11: region 0 holds 37 entries of the shared-looking field, region 1
   * 5, the shared block 0; every block is read back as its own. */
  assert_int_equal(wait_free_bounded(f.leader, 11), 0);
  cpdl__ring_set_slot_lengths(f.leader, 11, 0, (int64_t[]){1, 37});
  cpdl__ring_set_slot_lengths(f.leader, 11, 1, (int64_t[]){0, 5});
  cpdl__ring_set_slot_lengths(f.leader, 11, N_REGIONS, (int64_t[]){1, 0});
  cpdl__ring_publish(f.leader, 11);
  const int64_t want[N_REGIONS + 1][2] = {{1, 37}, {0, 5}, {1, 0}};
  for (uint32_t c = 0; c < N_CONSUMERS; c++) {
    assert_int_equal(cpdl__ring_wait_step(f.consumers[c], 11, 100, NULL, NULL), 0);
    for (uint32_t b = 0; b <= N_REGIONS; b++) {
      assert_int_equal(cpdl__ring_slot_lengths(f.consumers[c], 11, b, rows), 0);
      assert_int_equal(rows[0], want[b][0]);
      assert_int_equal(rows[1], want[b][1]);
    }
  }
  /* The step's slot still holds step 10's lengths untouched. */
  assert_int_equal(cpdl__ring_slot_lengths(f.consumers[1], 10, 1, rows), 0);
  assert_int_equal(rows[1], 100);

  /* A hostile length (beyond pixel_values' 100 entries) is refused by name. */
  assert_int_equal(wait_free_bounded(f.leader, 12), 0);
  cpdl__ring_set_slot_lengths(f.leader, 12, N_REGIONS, (int64_t[]){1, 101});
  cpdl__ring_publish(f.leader, 12);
  assert_int_equal(cpdl__ring_wait_step(f.consumers[0], 12, 100, NULL, NULL), 0);
  assert_int_equal(cpdl__ring_slot_lengths(f.consumers[0], 12, N_REGIONS, rows), CPDL_ECORRUPT);
  assert_non_null(strstr(cpdl_last_error(), "pixel_values"));
  assert_non_null(strstr(cpdl_last_error(), "101"));
  /* A step the slot no longer holds. */
  assert_int_equal(cpdl__ring_slot_lengths(f.consumers[0], 15, 0, rows), CPDL_ESTATE);
  fixture_close(&f);
}

/* ---- waits that must end -------------------------------------------------- */

static void test_timeout(void **state) {
  (void)state;
  fixture_t f;
  fixture_open(&f, 4, 7, true);
  int64_t t0 = now_ms();
  assert_int_equal(cpdl__ring_wait_step(f.consumers[0], 7, 60, NULL, NULL), CPDL_ETIMEDOUT);
  int64_t took = now_ms() - t0;
  assert_true(took >= 60 && took < 1000);
  assert_non_null(strstr(cpdl_last_error(), "step 7"));
  assert_int_equal(cpdl__ring_wait_step(f.consumers[0], 7, 0, NULL, NULL), CPDL_ETIMEDOUT);
  fixture_close(&f);
}

static void test_eof(void **state) {
  (void)state;
  fixture_t f;
  fixture_open(&f, 4, 0, true);
  cpdl__ring_publish(f.leader, 0);
  cpdl__ring_publish_eof(f.leader, 1);
  assert_int_equal(cpdl__ring_wait_step(f.consumers[0], 0, 100, NULL, NULL), 0);
  assert_int_equal(cpdl__ring_wait_step(f.consumers[0], 1, 100, NULL, NULL), CPDL_EEOF);
  assert_int_equal(cpdl__ring_wait_step(f.consumers[1], 2, -1, NULL, NULL), CPDL_EEOF);
  fixture_close(&f);

  /* A slot that already moved past the awaited step is an error, not a wait. */
  fixture_open(&f, 1, 0, true);
  cpdl__ring_publish(f.leader, 0);
  cpdl__ring_release(f.consumers[0], 0, 0);
  cpdl__ring_release(f.consumers[1], 1, 0);
  assert_int_equal(wait_free_bounded(f.leader, 1), 0);
  cpdl__ring_publish(f.leader, 1);
  assert_int_equal(cpdl__ring_wait_step(f.consumers[0], 0, 100, NULL, NULL), CPDL_ESTATE);
  uint64_t words[CPDL__CURSOR_WORDS];
  assert_int_equal(cpdl__ring_slot_state(f.consumers[0], 0, words), CPDL_ESTATE);
  fixture_close(&f);
}

typedef struct waiter {
  cpdl__ring_t *ring;
  bool leader;          /* wait_free instead of wait_step */
  uint64_t step;
  atomic_int dead;      /* alive() reports death once set */
  atomic_llong dead_at; /* when dead was set (ms) */
  _Atomic int64_t give_up_at; /* now_ms() past which alive() fails the wait (0: never) */
  int rc;
  _Atomic int64_t done_at; /* read by the main thread while the waiter may write it */
  char msg[256];
} waiter_t;

/* A waiter that expects its wait to end by itself gets a deadline: a lost
 * release or an off-by-one cursor then fails the test in seconds with this
 * message instead of hanging it until CTest's timeout. */
#define WAITER_BOUND_MS 5000

static int alive_fn(void *arg) {
  waiter_t *w = arg;
  if (atomic_load(&w->dead))
    return cpdl__error(CPDL_EPEER, "rank 1 (pid 4242) died");
  if (w->give_up_at && now_ms() > w->give_up_at)
    return cpdl__error(CPDL_ETIMEDOUT,
                       "test: still waiting for step %" PRIu64 " %d ms after the last release "
                       "it needs: a release was lost or a cursor is off by one",
                       w->step, WAITER_BOUND_MS);
  return 0;
}

static void *waiter_main(void *p) {
  waiter_t *w = p;
  if (w->leader)
    w->rc = cpdl__ring_wait_free(w->ring, w->step, alive_fn, w);
  else
    w->rc = cpdl__ring_wait_step(w->ring, w->step, -1, alive_fn, w);
  w->done_at = now_ms();
  snprintf(w->msg, sizeof w->msg, "%s", cpdl_last_error());
  return NULL;
}

/* Join, failing (not hanging) if the waiter does not return within 3 s. */
static void join_bounded(pthread_t thread) {
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 3;
  if (pthread_timedjoin_np(thread, NULL, &until) != 0)
    fail_msg("a waiter did not return within 3 s");
}

/* Fill every slot without releasing, so wait_free(step n_slots) blocks. */
static void fill_ring(fixture_t *f, uint32_t n_slots) {
  for (uint64_t s = 0; s < n_slots; s++) {
    assert_int_equal(wait_free_bounded(f->leader, s), 0);
    cpdl__ring_publish(f->leader, s);
  }
}

/* The scene of the wait tests: 2 slots, steps 0 and 1 published and held by
 * both consumers (separate mappings). */
static void open_full_ring(fixture_t *f) {
  fixture_open(f, 2, 0, true);
  fill_ring(f, 2);
}

static void test_post_error_wakes_everyone(void **state) {
  (void)state;
  fixture_t f;
  open_full_ring(&f);
  waiter_t ws[3] = {{.ring = f.consumers[0], .step = 2},
                    {.ring = f.consumers[1], .step = 3},
                    {.ring = f.leader, .leader = true, .step = 2}};
  pthread_t threads[3];
  for (int i = 0; i < 3; i++)
    assert_int_equal(pthread_create(&threads[i], NULL, waiter_main, &ws[i]), 0);
  usleep(100 * 1000);
  for (int i = 0; i < 3; i++)
    assert_int_equal(ws[i].done_at, 0); /* all still waiting */
  int64_t t0 = now_ms();
  cpdl__ring_post_error(f.consumers[1], CPDL_ESOURCE, "rank 0: data file /x/y.bin truncated");
  cpdl__ring_post_error(f.leader, CPDL_EPEER, "second poster loses");
  for (int i = 0; i < 3; i++) {
    join_bounded(threads[i]);
    assert_int_equal(ws[i].rc, CPDL_ESOURCE);
    assert_non_null(strstr(ws[i].msg, "y.bin truncated"));
    assert_true(ws[i].done_at - t0 < 500);
  }
  assert_int_equal(cpdl__ring_posted_error(f.consumers[0]), CPDL_ESOURCE);
  fixture_close(&f);
}

/* R19: a consumer that leaves with the slot of a later step still held is
 * named by whoever waits for that step, at once; a step that does not need
 * its slot is still delivered (a collective close waits for none). */
static void test_leave_is_named(void **state) {
  (void)state;
  fixture_t f;
  open_full_ring(&f);
  /* Consumer 0 takes and releases steps 0 and 1; consumer 1 releases step 0
   * and leaves holding step 1 (cursor 1). Step 2 needs cursors >= 1: it can
   * still come; step 3 needs consumer 1's release of step 1: never. */
  for (uint64_t s = 0; s < 2; s++)
    cpdl__ring_release(f.consumers[0], 0, s);
  cpdl__ring_release(f.consumers[1], 1, 0);
  waiter_t w = {.ring = f.consumers[0], .step = 3};
  pthread_t thread;
  assert_int_equal(pthread_create(&thread, NULL, waiter_main, &w), 0);
  usleep(100 * 1000);
  assert_int_equal(w.done_at, 0); /* waiting: consumer 1 may still release */
  int64_t t0 = now_ms();
  cpdl__ring_leave(f.consumers[1], 1);
  join_bounded(thread);
  assert_int_equal(w.rc, CPDL_EPEER);
  assert_true(w.done_at - t0 < 500);
  assert_non_null(strstr(w.msg, "rank 1 "));
  assert_non_null(strstr(w.msg, "left the job at step 1"));
  assert_int_equal(wait_free_bounded(f.leader, 2), 0); /* step 2 needs no more */
  cpdl__ring_publish(f.leader, 2);
  assert_int_equal(cpdl__ring_wait_step(f.consumers[0], 2, 100, NULL, NULL), 0);
  fixture_close(&f);
}

/* A timeout names the consumer that holds the slot back, not the leader;
 * with every slot released it is the leader that is slow. */
static void test_timeout_names_stalled_consumer(void **state) {
  (void)state;
  fixture_t f;
  open_full_ring(&f);
  for (uint64_t s = 0; s < 2; s++)
    cpdl__ring_release(f.consumers[0], 0, s);
  assert_int_equal(cpdl__ring_wait_step(f.consumers[0], 2, 50, NULL, NULL), CPDL_ETIMEDOUT);
  const char *msg = cpdl_last_error();
  assert_non_null(strstr(msg, "rank 1 (group rank 1"));
  assert_non_null(strstr(msg, "has not released step 0"));
  assert_non_null(strstr(msg, "stalled"));
  assert_null(strstr(msg, "leader is stalled"));
  for (uint64_t s = 0; s < 2; s++)
    cpdl__ring_release(f.consumers[1], 1, s);
  assert_int_equal(cpdl__ring_wait_step(f.consumers[0], 2, 50, NULL, NULL), CPDL_ETIMEDOUT);
  assert_non_null(strstr(cpdl_last_error(), "the leader is stalled or slow (rank "));
  fixture_close(&f);
}

static void test_dead_peer_within_tick(void **state) {
  (void)state;
  fixture_t f;
  open_full_ring(&f);
  waiter_t ws[2] = {{.ring = f.consumers[0], .step = 2},
                    {.ring = f.leader, .leader = true, .step = 2}};
  pthread_t threads[2];
  for (int i = 0; i < 2; i++)
    assert_int_equal(pthread_create(&threads[i], NULL, waiter_main, &ws[i]), 0);
  usleep(80 * 1000);
  int64_t t0 = now_ms();
  for (int i = 0; i < 2; i++)
    atomic_store(&ws[i].dead, 1);
  for (int i = 0; i < 2; i++) {
    join_bounded(threads[i]);
    assert_int_equal(ws[i].rc, CPDL_EPEER);
    assert_non_null(strstr(ws[i].msg, "rank 1"));
    /* one 20 ms tick plus scheduling slack on a loaded machine */
    assert_true(ws[i].done_at - t0 < 300);
  }
  fixture_close(&f);
}

static void *late_release(void *p) {
  fixture_t *f = p;
  usleep(150 * 1000);
  cpdl__ring_release(f->consumers[0], 0, 0);
  usleep(150 * 1000);
  cpdl__ring_release(f->consumers[1], 1, 0);
  return NULL;
}

static void test_stalled_consumer_is_waited_for(void **state) {
  (void)state;
  fixture_t f;
  open_full_ring(&f);
  int64_t t0 = now_ms();
  /* late_release's last release comes 300 ms in. */
  waiter_t w = {.ring = f.leader, .leader = true, .step = 2,
                .give_up_at = t0 + 300 + WAITER_BOUND_MS};
  pthread_t releaser;
  assert_int_equal(pthread_create(&releaser, NULL, late_release, &f), 0);
  waiter_main(&w); /* alive() says alive: no verdict, just wait */
  pthread_join(releaser, NULL);
  if (w.rc != 0)
    fail_msg("wait_free(step 2) after both releases of step 0: %s", w.msg);
  assert_true(w.done_at - t0 >= 300);
  /* Slot 1 (step 3) is still held by both: releasing out of order is not
   * enough for step 3. */
  cpdl__ring_release(f.consumers[0], 0, 1);
  waiter_t w3 = {.ring = f.leader, .leader = true, .step = 3};
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, waiter_main, &w3), 0);
  usleep(60 * 1000);
  assert_int_equal(w3.done_at, 0);
  w3.give_up_at = now_ms() + WAITER_BOUND_MS;
  cpdl__ring_release(f.consumers[1], 1, 1);
  join_bounded(t);
  if (w3.rc != 0)
    fail_msg("wait_free(step 3) after both releases of step 1: %s", w3.msg);
  fixture_close(&f);
}

/* ---- fault injection -------------------------------------------------------- */

static int fault_child(const char *spec, const char *point, int rank) {
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    setenv("CPDL_FAULT", spec, 1);
    if (cpdl__fault("other_point", rank) != 0 || cpdl__fault(point, rank + 1) != 0)
      _exit(3);
    int rc = cpdl__fault(point, rank);
    _exit(rc == CPDL_EFAULT && strstr(cpdl_last_error(), point) ? 2 : rc == 0 ? 0 : 4);
  }
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  if (WIFSIGNALED(status))
    return -WTERMSIG(status);
  return WEXITSTATUS(status);
}

static void test_fault_injection(void **state) {
  (void)state;
  assert_int_equal(fault_child("mid_fill:3", "mid_fill", 3), -SIGKILL);
  assert_int_equal(fault_child("holding_slot:1:error", "holding_slot", 1), 2);
  assert_int_equal(fault_child("waiting:0", "waiting", 5), 0); /* another rank: no fault */
  assert_int_equal(fault_child("waiting:*", "waiting", 5), -SIGKILL);
  assert_int_equal(fault_child("", "waiting", 0), 0);
  /* In this process CPDL_FAULT is unset: nothing fires. */
  assert_int_equal(cpdl__fault("mid_fill", 0), 0);
}

/* "@<pass>": the point fires on its pass-th time on that rank, not before
 * (the child exits 10 + the passes it survived when nothing fired). */
static int fault_pass_child(const char *spec, int calls) {
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    setenv("CPDL_FAULT", spec, 1);
    for (int i = 0; i < calls; i++) {
      (void)cpdl__fault("waiting", 1); /* another rank's passes do not count */
      int rc = cpdl__fault("waiting", 0);
      if (rc == CPDL_EFAULT)
        _exit(20 + i);
      if (rc)
        _exit(4);
    }
    _exit(10 + calls);
  }
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  if (WIFSIGNALED(status))
    return -WTERMSIG(status);
  return WEXITSTATUS(status);
}

static void test_fault_pass_and_stop(void **state) {
  (void)state;
  assert_int_equal(fault_pass_child("waiting:0@3", 2), 12); /* two passes: not yet */
  assert_int_equal(fault_pass_child("waiting:0@3", 5), -SIGKILL);
  assert_int_equal(fault_pass_child("waiting:0:error@4", 6), 23); /* the 4th call (i = 3) */
  assert_int_equal(fault_pass_child("waiting:0@0", 3), 13);        /* malformed: ignored */
  /* ":stop" stops the process in place; continued, it carries on. */
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    setenv("CPDL_FAULT", "waiting:0:stop@2", 1);
    int a = cpdl__fault("waiting", 0), b = cpdl__fault("waiting", 0);
    _exit(a == 0 && b == 0 ? 0 : 5);
  }
  int status;
  assert_int_equal(waitpid(pid, &status, WUNTRACED), pid);
  assert_true(WIFSTOPPED(status));
  assert_int_equal(kill(pid, SIGCONT), 0);
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_init_attach),
      cmocka_unit_test(test_attach_rejects_corruption),
      cmocka_unit_test(test_many_steps_separate_mappings),
      cmocka_unit_test(test_many_steps_one_mapping),
      cmocka_unit_test(test_wrap_around),
      cmocka_unit_test(test_reset_and_rebase),
      cmocka_unit_test(test_slot_lengths),
      cmocka_unit_test(test_timeout),
      cmocka_unit_test(test_eof),
      cmocka_unit_test(test_post_error_wakes_everyone),
      cmocka_unit_test(test_dead_peer_within_tick),
      cmocka_unit_test(test_leave_is_named),
      cmocka_unit_test(test_timeout_names_stalled_consumer),
      cmocka_unit_test(test_stalled_consumer_is_waited_for),
      cmocka_unit_test(test_fault_pass_and_stop), /* before test_fault_injection, which parses
                                                     CPDL_FAULT in this process (once) */
      cmocka_unit_test(test_fault_injection),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
