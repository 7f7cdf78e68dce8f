/* test_state.c — the resume state's bytes (state.c) without MPI: encode and
 * decode round trip of the global cursor; every refusal of decode (magic,
 * the old version, size, cursor width, checksum, a cursor's step word, dp
 * size); and the
 * one key table behind the known-keys text, the canonical text and the
 * stream text; the one FNV-1a against its published test vectors. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static void assert_contains(const char *haystack, const char *needle) {
  if (!strstr(haystack, needle))
    fail_msg("expected \"%s\" in \"%s\"", needle, haystack);
}

static const char stream[] = "cp=2 tp=1 seq_len=64 source=synthetic:";

/* A state of the global cursor (epoch 2, 100 rows, thd position 31 offset
 * 5) at step 7, saved by a job of dp 3, into buf; returns its size. */
static size_t make_state(unsigned char *buf, size_t size) {
  uint64_t cursor[CPDL__CURSOR_WORDS] = {0};
  cursor[CPDL__CURSOR_EPOCH] = 2;
  cursor[CPDL__CURSOR_CONSUMED] = 100;
  cursor[CPDL__CURSOR_POSITION] = 31;
  cursor[CPDL__CURSOR_OFFSET] = 5;
  cursor[CPDL__CURSOR_STEP] = 7;
  cpdl__state_t st = {.step = 7, .dp_size = 3, .cursor = cursor, .stream = stream};
  size_t used = 0;
  assert_int_equal(cpdl__state_encode(&st, buf, size, &used), 0);
  assert_int_equal(used, cpdl__state_bytes(strlen(stream)));
  return used;
}

static void put(unsigned char *buf, size_t word, uint64_t v) { memcpy(buf + 8 * word, &v, 8); }

static void fix_sum(unsigned char *buf, size_t n) {
  uint64_t sum = cpdl__fnv1a(CPDL__FNV1A_BASIS, buf, n - 8);
  memcpy(buf + n - 8, &sum, 8);
}

static void test_round_trip(void **state) {
  (void)state;
  unsigned char buf[1024];
  size_t n = make_state(buf, sizeof buf);
  assert_memory_equal(buf, "CPDLSTAT", 8);
  assert_int_equal(n % 8, 0);
  cpdl__state_view_t v;
  assert_int_equal(cpdl__state_decode(buf, n, &v), 0);
  assert_int_equal(v.step, 7);
  assert_int_equal(v.dp_size, 3);
  assert_string_equal(v.stream, stream);
  assert_int_equal(v.cursor[CPDL__CURSOR_EPOCH], 2);
  assert_int_equal(v.cursor[CPDL__CURSOR_CONSUMED], 100);
  assert_int_equal(v.cursor[CPDL__CURSOR_POSITION], 31);
  assert_int_equal(v.cursor[CPDL__CURSOR_OFFSET], 5);
  assert_int_equal(v.cursor[CPDL__CURSOR_STEP], 7);
  /* Unaligned buffers decode the same. */
  unsigned char *odd = malloc(n + 1);
  memcpy(odd + 1, buf, n);
  assert_int_equal(cpdl__state_decode(odd + 1, n, &v), 0);
  assert_string_equal(v.stream, stream);
  free(odd);
  /* Too small a buffer: CPDL_EOVERFLOW and the size needed (no dp in it). */
  cpdl__state_t st = {.step = 0, .dp_size = 1, .cursor = (uint64_t[CPDL__CURSOR_WORDS]){0},
                      .stream = stream};
  size_t used = 0;
  assert_int_equal(cpdl__state_encode(&st, buf, 16, &used), CPDL_EOVERFLOW);
  assert_int_equal(used, n);
}

static void expect_refused(const unsigned char *buf, size_t n, const char *needle) {
  cpdl__state_view_t v;
  assert_int_equal(cpdl__state_decode(buf, n, &v), CPDL_ESTATE);
  assert_contains(cpdl_last_error(), needle);
}

static void test_refusals(void **state) {
  (void)state;
  unsigned char good[1024], buf[1024];
  size_t n = make_state(good, sizeof good);
  expect_refused(good, 8, "too short");
  memcpy(buf, good, n);
  put(buf, 0, 42);
  expect_refused(buf, n, "not a cpdl resume state");
  memcpy(buf, good, n);
  put(buf, 1, 2); /* the per-replica format */
  expect_refused(buf, n, "old format version 2");
  memcpy(buf, good, n);
  put(buf, 1, 9);
  expect_refused(buf, n, "version 9");
  expect_refused(good, n - 8, "bytes");
  expect_refused(good, 40, "shorter than its header");
  memcpy(buf, good, n);
  memset(buf + n, 0, 8);
  expect_refused(buf, n + 8, "bytes");
  memcpy(buf, good, n);
  put(buf, 5, 4);
  fix_sum(buf, n);
  expect_refused(buf, n, "4 cursor words");
  memcpy(buf, good, n);
  buf[8 * 8 + 3] ^= 1; /* a cursor word: the checksum catches it */
  expect_refused(buf, n, "checksum");
  memcpy(buf, good, n);
  put(buf, 3, 8); /* the step without the cursor, checksum valid */
  fix_sum(buf, n);
  expect_refused(buf, n, "cursor is at step 7");
  memcpy(buf, good, n);
  put(buf, 4, 0); /* dp size 0 */
  fix_sum(buf, n);
  expect_refused(buf, n, "dp size 0");
  memcpy(buf, good, n);
  memset(buf + n - 8 - 8, 'x', 8); /* text without its NUL */
  fix_sum(buf, n);
  expect_refused(buf, n, "not terminated");
}

static void test_fnv1a(void **state) {
  (void)state;
  /* Published FNV-1a 64 vectors. */
  assert_true(cpdl__fnv1a(CPDL__FNV1A_BASIS, "", 0) == UINT64_C(0xcbf29ce484222325));
  assert_true(cpdl__fnv1a(CPDL__FNV1A_BASIS, "a", 1) == UINT64_C(0xaf63dc4c8601ec8c));
  assert_true(cpdl__fnv1a(CPDL__FNV1A_BASIS, "foobar", 6) == UINT64_C(0x85944171f73967e8));
  /* In pieces equals at once. */
  uint64_t h = cpdl__fnv1a(CPDL__FNV1A_BASIS, "foo", 3);
  assert_true(cpdl__fnv1a(h, "bar", 3) == UINT64_C(0x85944171f73967e8));
}

static void test_key_table(void **state) {
  (void)state;
  cpdl_config_t cfg;
  cpdl_config_init(&cfg);
  assert_int_equal(cpdl_config_set(&cfg, "no_such_key", "1"), CPDL_EARG);
  char unknown[1024];
  snprintf(unknown, sizeof unknown, "%s", cpdl_last_error());
  char all[4096], streamed[4096];
  assert_true(cpdl_config_format(&cfg, all, sizeof all) < (int)sizeof all);
  assert_true(cpdl__config_stream_format(&cfg, streamed, sizeof streamed) < (int)sizeof streamed);
  int n = cpdl__config_key_count(), n_stream = 0;
  assert_true(n >= 18);
  assert_null(cpdl__config_key(n, NULL));
  for (int i = 0; i < n; i++) {
    bool is_stream = false;
    const char *key = cpdl__config_key(i, &is_stream);
    char pair[80];
    snprintf(pair, sizeof pair, "%s=", key);
    assert_contains(unknown, key);
    assert_contains(all, pair);
    /* " key=" or at the start: no key is a suffix of another here. */
    bool in_stream = strncmp(streamed, pair, strlen(pair)) == 0;
    char spaced[84];
    snprintf(spaced, sizeof spaced, " %s", pair);
    in_stream = in_stream || strstr(streamed, spaced) != NULL;
    if (in_stream != is_stream)
      fail_msg("key %s: stream flag %d but in the stream text %d", key, is_stream, in_stream);
    n_stream += is_stream;
  }
  assert_int_equal(n_stream, 10); /* the layout (cp, tp, order) is not among them */
  /* The stream text parses back and compares equal; a change is named. */
  cpdl_config_t back;
  cpdl_config_init(&back);
  assert_int_equal(cpdl_config_parse(&back, streamed), 0);
  assert_int_equal(cpdl__config_stream_compare(&back, &cfg), 0);
  cfg.steps = 5; /* not a stream key */
  assert_int_equal(cpdl__config_stream_compare(&back, &cfg), 0);
  cfg.seq_len = 8192;
  assert_int_equal(cpdl__config_stream_compare(&back, &cfg), CPDL_ECONFIG);
  assert_contains(cpdl_last_error(), "saved with seq_len=4096, this job has seq_len=8192");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip),
      cmocka_unit_test(test_refusals),   cmocka_unit_test(test_fnv1a),
      cmocka_unit_test(test_key_table),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
