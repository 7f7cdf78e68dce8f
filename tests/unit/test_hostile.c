/* test_hostile.c — a hostile or buggy process of the same uid scribbles over
 * a segment's control part (docs/reliability.md R10). Consumers must get
 * CPDL_ECORRUPT or another clean error and never crash or read outside the
 * mapping, whatever the bytes: random corruption of the static header and
 * field table before attach (every accepted header must still describe
 * memory inside the segment, which the test then reads in full), and
 * hostile live words after attach (slot steps, abort state, error message,
 * EOF, geometry rewritten under a running consumer), hostile cursors, a
 * resized segment, and EINTR / spurious wakes in the wait loop (R13).
 * CI runs it under ASan.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "internal.h"

#include <inttypes.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define NONCE UINT64_C(0x0123456789abcdef)
#define HASH UINT64_C(0x5a5a5a5aa5a5a5a5)
#define N_SLOTS 4

static size_t page(void) { return (size_t)sysconf(_SC_PAGESIZE); }

typedef struct seg {
  cpdl__shm_t shm;   /* the leader's read-write mapping (the hostile pen) */
  cpdl__shm_t view;  /* a consumer's mapping: control rw, data read-only */
  cpdl__ring_t *leader;
  size_t ctrl, total;
  unsigned char *pristine; /* the control part as the leader wrote it */
} seg_t;

static void seg_open(seg_t *s) {
  memset(s, 0, sizeof *s);
  cpdl_prep_field_t fields[2];
  memset(fields, 0, sizeof fields);
  snprintf(fields[0].name, sizeof fields[0].name, "input_ids");
  fields[0].dtype = CPDL_DTYPE_INT64;
  fields[0].ndim = 2;
  fields[0].shape[0] = 2;
  fields[0].shape[1] = 256;
  fields[0].seq_dim = 1;
  fields[0].nbytes = 2 * 256 * 8;
  snprintf(fields[1].name, sizeof fields[1].name, "pixel_values");
  fields[1].dtype = CPDL_DTYPE_FLOAT32;
  fields[1].ndim = 1;
  fields[1].shape[0] = 300;
  fields[1].seq_dim = -1;
  fields[1].shared = 1;
  fields[1].nbytes = 1200;
  cpdl__ring_geometry_t geo = {.n_slots = N_SLOTS, .n_regions = 2, .n_consumers = 2,
                               .n_fields = 2, .slot_bytes = CPDL__ALIGN_UP(4096, page()),
                               .shared_slot_bytes = page()};
  assert_int_equal(cpdl__ring_sizes(&geo, &s->ctrl, &s->total), 0);
  assert_int_equal(cpdl__shm_create(s->total, &s->shm), 0);
  assert_int_equal(cpdl__ring_init(s->shm.base, s->total, &geo, fields, NONCE, HASH,
                                   (int32_t)getpid(), 0, &s->leader),
                   0);
  assert_int_equal(cpdl__shm_attach(s->shm.name, s->total, s->ctrl, true, &s->view), 0);
  s->pristine = malloc(s->ctrl);
  assert_non_null(s->pristine);
  memcpy(s->pristine, s->shm.base, s->ctrl);
}

static void seg_close(seg_t *s) {
  free(s->pristine);
  cpdl__ring_free(s->leader);
  cpdl__shm_close(&s->view);
  cpdl__shm_close(&s->shm);
}

static cpdl__ring_hdr_t *hdr(seg_t *s) { return (cpdl__ring_hdr_t *)s->shm.base; }

/* Read every byte every validated field says it owns, in every slot and
 * region: out-of-bounds geometry would fault here (or trip ASan). */
static uint64_t touch_all(const cpdl__ring_t *ring, const unsigned char *base, size_t total) {
  const cpdl__ring_geometry_t *geo = cpdl__ring_geometry(ring);
  const cpdl_prep_field_t *fields = cpdl__ring_fields(ring);
  uint64_t sum = 0;
  for (uint32_t slot = 0; slot < geo->n_slots; slot++) {
    for (uint32_t f = 0; f < geo->n_fields; f++) {
      for (uint32_t r = 0; r < (fields[f].shared ? 1 : geo->n_regions); r++) {
        const unsigned char *block = fields[f].shared ? cpdl__ring_shared_block(ring, slot)
                                                      : cpdl__ring_rank_block(ring, r, slot);
        assert_non_null(block);
        const unsigned char *p = block + fields[f].offset;
        assert_true(p >= base && p + fields[f].nbytes <= base + total);
        for (size_t i = 0; i < fields[f].nbytes; i++)
          sum += p[i];
      }
    }
  }
  return sum;
}

/* xorshift64*: deterministic, so a failure reproduces. */
static uint64_t rnd_state = UINT64_C(0x9e3779b97f4a7c15);
static uint64_t rnd(void) {
  rnd_state ^= rnd_state >> 12;
  rnd_state ^= rnd_state << 25;
  rnd_state ^= rnd_state >> 27;
  return rnd_state * UINT64_C(2685821657736338717);
}

static void test_random_static_corruption(void **state) {
  (void)state;
  seg_t s;
  seg_open(&s);
  /* The static header plus the field table: what attach reads. */
  size_t span = cpdl__ring_slots_offset(2);
  unsigned char *ctrl = s.shm.base;
  int accepted = 0, rejected = 0;
  for (int iter = 0; iter < 20000; iter++) {
    memcpy(ctrl, s.pristine, span);
    int edits = 1 + (int)(rnd() % 4);
    for (int e = 0; e < edits; e++) {
      size_t at = (size_t)(rnd() % span);
      switch (rnd() % 4) {
      case 0: ctrl[at] ^= (unsigned char)(1u << (rnd() % 8)); break;   /* a bit flip */
      case 1: ctrl[at] = (unsigned char)rnd(); break;                    /* a byte */
      case 2: { /* an aligned word: extreme values reach the overflow checks */
        static const uint64_t extremes[] = {0, 1, UINT64_MAX, UINT64_MAX / 2 + 1, 4096,
                                            UINT32_MAX, UINT64_C(1) << 62, 64};
        uint64_t v = extremes[rnd() % 8];
        size_t w = (at & ~(size_t)7);
        if (w + 8 <= span)
          memcpy(ctrl + w, &v, 8);
        break;
      }
      default: { /* a 32-bit word */
        uint32_t v = (uint32_t)rnd();
        size_t w = (at & ~(size_t)3);
        if (w + 4 <= span)
          memcpy(ctrl + w, &v, 4);
      }
      }
    }
    cpdl__ring_t *c = NULL;
    int rc = cpdl__ring_attach(s.view.base, s.total, NONCE, HASH, &c);
    if (rc) {
      assert_int_equal(rc, CPDL_ECORRUPT);
      assert_null(c);
      assert_true(strlen(cpdl_last_error()) > 0);
      rejected++;
      continue;
    }
    accepted++;
    /* Whatever it accepted describes memory inside this segment. */
    const cpdl__ring_geometry_t *geo = cpdl__ring_geometry(c);
    assert_true(geo->n_slots >= 1 && geo->n_slots <= CPDL__RING_MAX_SLOTS);
    (void)touch_all(c, s.view.base, s.total);
    /* And its wait loop returns cleanly on such a header. */
    int wrc = cpdl__ring_wait_step(c, 0, 0, NULL, NULL);
    assert_true(wrc == 0 || wrc == CPDL_ETIMEDOUT || wrc == CPDL_ESTATE || wrc == CPDL_EEOF ||
                wrc == CPDL_EPEER || (wrc < 0 && wrc >= CPDL_ERRNO_LAST));
    cpdl__ring_free(c);
  }
  print_message("random corruption: %d headers rejected, %d accepted and safe\n", rejected,
                accepted);
  /* The span holds free text (names, the error message) and words nobody
   * validates (first_step, live words): acceptance is fine, safety is not. */
  assert_true(rejected > 2000);
  /* Every single bit of the identity words must be noticed: magic, total,
   * header_bytes, nonce, config_hash, version, page_bytes. */
  const size_t identity[][2] = {
      {offsetof(cpdl__ring_hdr_t, magic), offsetof(cpdl__ring_hdr_t, first_step)},
      {offsetof(cpdl__ring_hdr_t, version), offsetof(cpdl__ring_hdr_t, n_slots)}};
  for (int r = 0; r < 2; r++) {
    for (size_t at = identity[r][0]; at < identity[r][1]; at++) {
      for (int bit = 0; bit < 8; bit++) {
        memcpy(ctrl, s.pristine, span);
        ctrl[at] ^= (unsigned char)(1u << bit);
        cpdl__ring_t *c = NULL;
        if (cpdl__ring_attach(s.view.base, s.total, NONCE, HASH, &c) != CPDL_ECORRUPT)
          fail_msg("a flip of bit %d of header byte %zu went unnoticed", bit, at);
      }
    }
  }
  memcpy(ctrl, s.pristine, span);
  cpdl__ring_t *c = NULL;
  assert_int_equal(cpdl__ring_attach(s.view.base, s.total, NONCE, HASH, &c), 0);
  cpdl__ring_free(c);
  seg_close(&s);
}

static void test_hostile_live_words(void **state) {
  (void)state;
  seg_t s;
  seg_open(&s);
  cpdl__ring_t *c = NULL;
  assert_int_equal(cpdl__ring_attach(s.view.base, s.total, NONCE, HASH, &c), 0);
  cpdl__ring_slot_rec_t *slots =
      (cpdl__ring_slot_rec_t *)((unsigned char *)s.shm.base + cpdl__ring_slots_offset(2));

  /* A slot claims a step far past the awaited one: a clean state error. */
  atomic_store(&slots[0].step, UINT64_C(1) << 40);
  assert_int_equal(cpdl__ring_wait_step(c, 0, 100, NULL, NULL), CPDL_ESTATE);
  /* A slot claims some other old step: the consumer waits, then times out. */
  atomic_store(&slots[0].step, (uint64_t)-7);
  assert_int_equal(cpdl__ring_wait_step(c, 0, 50, NULL, NULL), CPDL_ETIMEDOUT);
  memcpy(s.shm.base, s.pristine, s.ctrl);

  /* An abort "being posted" forever is no error and no hang: a timeout. */
  atomic_store(&hdr(&s)->abort_state, 1);
  assert_int_equal(cpdl__ring_wait_step(c, 0, 50, NULL, NULL), CPDL_ETIMEDOUT);
  /* A posted error with nonsense codes and an unterminated message. */
  const int32_t codes[] = {5, 0, -99999, INT32_MIN, INT32_MAX};
  for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
    memset(hdr(&s)->error_msg, 'A', sizeof hdr(&s)->error_msg);
    atomic_store(&hdr(&s)->error_code, codes[i]);
    atomic_store(&hdr(&s)->abort_state, 2);
    assert_int_equal(cpdl__ring_wait_step(c, 0, 50, NULL, NULL), CPDL_EPEER);
    assert_true(strlen(cpdl_last_error()) < CPDL__RING_MSG_MAX);
  }
  /* A plausible posted error comes through with its code and text. */
  snprintf(hdr(&s)->error_msg, sizeof hdr(&s)->error_msg, "leader: disk on fire");
  atomic_store(&hdr(&s)->error_code, CPDL_ESOURCE);
  assert_int_equal(cpdl__ring_wait_step(c, 0, 50, NULL, NULL), CPDL_ESOURCE);
  assert_non_null(strstr(cpdl_last_error(), "disk on fire"));
  memcpy(s.shm.base, s.pristine, s.ctrl);

  /* A bogus end of data: a clean EOF, not a crash or a hang. */
  atomic_store(&hdr(&s)->eof_step, 0);
  atomic_store(&hdr(&s)->eof_set, 1);
  assert_int_equal(cpdl__ring_wait_step(c, 0, 50, NULL, NULL), CPDL_EEOF);
  memcpy(s.shm.base, s.pristine, s.ctrl);

  /* Geometry and fields rewritten under an attached consumer: it keeps its
   * validated local copies, so every pointer it hands out stays inside. */
  hdr(&s)->n_slots = UINT32_MAX;
  hdr(&s)->n_regions = 1000;
  hdr(&s)->slot_bytes = UINT64_C(1) << 60;
  cpdl__ring_field_rec_t *rec =
      (cpdl__ring_field_rec_t *)((unsigned char *)s.shm.base + cpdl__ring_fields_offset());
  rec[0].offset = UINT64_MAX - 63;
  rec[0].nbytes = UINT64_MAX;
  rec[1].shared = 0;
  assert_int_equal(cpdl__ring_geometry(c)->n_slots, N_SLOTS);
  assert_int_equal(cpdl__ring_geometry(c)->n_regions, 2);
  assert_int_equal(cpdl__ring_fields(c)[0].offset, 0);
  assert_int_equal(cpdl__ring_fields(c)[0].nbytes, 2 * 256 * 8);
  assert_int_equal(cpdl__ring_fields(c)[1].shared, 1);
  assert_null(cpdl__ring_rank_block(c, 2, 0));      /* out of range: NULL, not a pointer */
  assert_null(cpdl__ring_rank_block(c, 0, N_SLOTS));
  (void)touch_all(c, s.view.base, s.total);
  for (uint64_t step = UINT64_MAX - 10; step != 10; step++)
    assert_true(cpdl__ring_slot_of(c, step) < N_SLOTS);
  /* A fresh attach now refuses the rewritten header. */
  cpdl__ring_t *again = NULL;
  assert_int_equal(cpdl__ring_attach(s.view.base, s.total, NONCE, HASH, &again), CPDL_ECORRUPT);
  memcpy(s.shm.base, s.pristine, s.ctrl);

  cpdl__ring_free(c);
  seg_close(&s);
}

static int give_up_after_3(void *arg) {
  int *calls = arg;
  return ++*calls >= 3 ? cpdl__error(CPDL_EPEER, "test: peer declared dead") : 0;
}

static void test_hostile_cursor(void **state) {
  (void)state;
  seg_t s;
  seg_open(&s);
  cpdl__ring_consumer_rec_t *cons = (cpdl__ring_consumer_rec_t *)((unsigned char *)s.shm.base +
                                                                  cpdl__ring_consumers_offset(2, N_SLOTS));
  /* A cursor moved "far behind" blocks reuse of the slot; the leader's wait
   * asks its liveness callback every tick instead of spinning forever. */
  atomic_store(&cons[0].cursor, N_SLOTS);                   /* consumer 0 released enough */
  atomic_store(&cons[1].cursor, 1 + (UINT64_C(1) << 63));   /* half the step space away */
  int calls = 0;
  assert_int_equal(cpdl__ring_wait_free(s.leader, N_SLOTS, give_up_after_3, &calls), CPDL_EPEER);
  assert_int_equal(calls, 3);
  /* A cursor moved "far ahead" only lets the leader proceed: no crash. */
  atomic_store(&cons[1].cursor, UINT64_C(1) << 40);
  assert_int_equal(cpdl__ring_wait_free(s.leader, N_SLOTS, give_up_after_3, &calls), 0);
  seg_close(&s);
}

static void test_hostile_resize(void **state) {
  (void)state;
  seg_t s;
  seg_open(&s);
  /* Truncated or grown behind the leader's back: fstat disagrees with the
   * size MPI carried, so attach refuses before mapping anything. */
  cpdl__shm_t peer;
  assert_int_equal(ftruncate(s.shm.fd, (off_t)(s.total - page())), 0);
  assert_int_equal(cpdl__shm_attach(s.shm.name, s.total, s.ctrl, true, &peer), CPDL_ESHM);
  assert_null(peer.base);
  assert_int_equal(ftruncate(s.shm.fd, (off_t)(s.total + page())), 0);
  assert_int_equal(cpdl__shm_attach(s.shm.name, s.total, s.ctrl, true, &peer), CPDL_ESHM);
  assert_int_equal(ftruncate(s.shm.fd, (off_t)s.total), 0);
  assert_int_equal(cpdl__shm_attach(s.shm.name, s.total, s.ctrl, true, &peer), 0);
  cpdl__shm_close(&peer);
  seg_close(&s);
}

/* R13: a storm of signals (EINTR out of every futex sleep) and spurious
 * wake-ups (the slot's futex word bumped without a publish) while a consumer
 * waits: it keeps waiting and returns 0 once the step is really published. */
static void on_signal(int sig) { (void)sig; }

typedef struct waiter {
  cpdl__ring_t *ring;
  int rc;
  atomic_bool done;
} waiter_t;

static void *wait_main(void *p) {
  waiter_t *w = p;
  w->rc = cpdl__ring_wait_step(w->ring, 0, 10000, NULL, NULL);
  atomic_store(&w->done, true);
  return NULL;
}

static void test_eintr_and_spurious_wakes(void **state) {
  (void)state;
  seg_t s;
  seg_open(&s);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal; /* no SA_RESTART: futex sleeps return EINTR */
  sigemptyset(&sa.sa_mask);
  struct sigaction old;
  assert_int_equal(sigaction(SIGUSR1, &sa, &old), 0);
  waiter_t w = {.rc = 1};
  assert_int_equal(cpdl__ring_attach(s.view.base, s.total, NONCE, HASH, &w.ring), 0);
  pthread_t thread;
  assert_int_equal(pthread_create(&thread, NULL, wait_main, &w), 0);
  cpdl__ring_slot_rec_t *slots =
      (cpdl__ring_slot_rec_t *)((unsigned char *)s.shm.base + cpdl__ring_slots_offset(2));
  for (int i = 0; i < 300; i++) {
    pthread_kill(thread, SIGUSR1);
    if (i % 3 == 0) { /* a wake with nothing published */
      atomic_fetch_add(&slots[0].seq, 1);
      syscall(SYS_futex, (uint32_t *)&slots[0].seq, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
    }
    usleep(1000);
    assert_false(atomic_load(&w.done)); /* no spurious return, no error */
  }
  cpdl__ring_publish(s.leader, 0);
  assert_int_equal(pthread_join(thread, NULL), 0);
  assert_int_equal(w.rc, 0);
  sigaction(SIGUSR1, &old, NULL);
  cpdl__ring_free(w.ring);
  seg_close(&s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_random_static_corruption),
      cmocka_unit_test(test_hostile_live_words),
      cmocka_unit_test(test_hostile_cursor),
      cmocka_unit_test(test_hostile_resize),
      cmocka_unit_test(test_eintr_and_spurious_wakes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
