/* test_sampler.c — the sampler's order: deterministic, a permutation per
 * epoch, different per epoch and seed, a partition across replicas
 * (drop_last) or a cover (wrap), resumable from (epoch, position), and the
 * same guarantees on the table-free (Feistel) path. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "internal.h"

static cpdl__sampler_t *make(int64_t n, uint64_t seed, int dp_rank, int dp_size, bool drop_last,
                             int64_t table_max) {
  cpdl__sampler_params_t p = {.n_samples = n, .seed = seed, .dp_rank = dp_rank, .dp_size = dp_size,
                              .drop_last = drop_last, .table_max = table_max};
  cpdl__sampler_t *s = NULL;
  assert_int_equal(cpdl__sampler_create(&p, &s), 0);
  assert_non_null(s);
  return s;
}

/* One epoch of a dp_size=1 sampler: must be a permutation of [0, n). */
static void assert_epoch_is_permutation(cpdl__sampler_t *s, int64_t n, int64_t *order) {
  char *seen = calloc((size_t)n, 1);
  assert_non_null(seen);
  for (int64_t i = 0; i < n; i++) {
    int64_t index = -1;
    assert_int_equal(cpdl__sampler_next(s, &index), 0);
    assert_true(index >= 0 && index < n);
    assert_int_equal(seen[index], 0);
    seen[index] = 1;
    if (order)
      order[i] = index;
  }
  free(seen);
}

static void permutation_per_epoch(int64_t table_max) {
  const int64_t n = 1000;
  cpdl__sampler_t *s = make(n, 7, 0, 1, true, table_max);
  assert_int_equal(cpdl__sampler_per_epoch(s), n);
  int64_t *e0 = malloc(n * sizeof *e0), *e1 = malloc(n * sizeof *e1);
  assert_epoch_is_permutation(s, n, e0);
  uint64_t epoch;
  int64_t position;
  cpdl__sampler_tell(s, &epoch, &position);
  assert_int_equal(epoch, 1); /* rolled over */
  assert_int_equal(position, 0);
  assert_epoch_is_permutation(s, n, e1);
  assert_true(memcmp(e0, e1, n * sizeof *e0) != 0); /* epochs differ */
  /* Not the identity either. */
  int64_t fixed = 0;
  for (int64_t i = 0; i < n; i++)
    fixed += e0[i] == i;
  assert_true(fixed < 20);
  for (int e = 2; e < 5; e++)
    assert_epoch_is_permutation(s, n, NULL);
  free(e0);
  free(e1);
  cpdl__sampler_destroy(s);
}

static void test_permutation_table(void **state) {
  (void)state;
  permutation_per_epoch(0);
}

static void test_permutation_feistel(void **state) {
  (void)state;
  permutation_per_epoch(10); /* n = 1000 > 10: no table */
  /* Tiny and odd domains, including n = 1. */
  for (int64_t n = 1; n <= 17; n++) {
    cpdl__sampler_t *s = make(n, 99, 0, 1, true, 1);
    for (int e = 0; e < 3; e++)
      assert_epoch_is_permutation(s, n, NULL);
    cpdl__sampler_destroy(s);
  }
}

static void deterministic(int64_t table_max) {
  /* Two instances (two nodes of a replica) agree without talking; another
   * seed gives another order. */
  cpdl__sampler_t *a = make(5000, 42, 1, 3, true, table_max);
  cpdl__sampler_t *b = make(5000, 42, 1, 3, true, table_max);
  cpdl__sampler_t *c = make(5000, 43, 1, 3, true, table_max);
  int differ = 0;
  for (int i = 0; i < 3 * 1666 + 5; i++) {
    int64_t x, y, z;
    assert_int_equal(cpdl__sampler_next(a, &x), 0);
    assert_int_equal(cpdl__sampler_next(b, &y), 0);
    assert_int_equal(cpdl__sampler_next(c, &z), 0);
    assert_int_equal(x, y);
    differ += x != z;
  }
  assert_true(differ > 4000);
  cpdl__sampler_destroy(a);
  cpdl__sampler_destroy(b);
  cpdl__sampler_destroy(c);
}

static void test_deterministic(void **state) {
  (void)state;
  deterministic(0);
  deterministic(100);
}

/* Replica r takes global positions r, r+dp, … of the one epoch permutation,
 * which is the dp_size=1 order of the same seed. */
static void dp_split(bool drop_last, int64_t table_max) {
  const int64_t n = 1003;
  const int dp = 4;
  for (uint64_t epoch = 0; epoch < 3; epoch++) {
    cpdl__sampler_t *whole = make(n, 5, 0, 1, true, table_max);
    int64_t *perm = malloc(n * sizeof *perm);
    for (int64_t i = 0; i < n; i++)
      assert_int_equal(cpdl__sampler_index(whole, epoch, i, &perm[i]), 0);
    int *count = calloc(n, sizeof *count);
    int64_t total = 0;
    for (int r = 0; r < dp; r++) {
      cpdl__sampler_t *s = make(n, 5, r, dp, drop_last, table_max);
      int64_t per = cpdl__sampler_per_epoch(s);
      assert_int_equal(per, drop_last ? n / dp : (n + dp - 1) / dp);
      assert_int_equal(cpdl__sampler_seek(s, epoch, 0), 0);
      for (int64_t j = 0; j < per; j++) {
        int64_t index;
        assert_int_equal(cpdl__sampler_next(s, &index), 0);
        assert_int_equal(index, perm[(r + j * dp) % n]);
        count[index]++;
        total++;
      }
      cpdl__sampler_destroy(s);
    }
    if (drop_last) {
      /* A partition of n - n % dp samples: no sample twice. */
      assert_int_equal(total, n - n % dp);
      for (int64_t i = 0; i < n; i++)
        assert_true(count[i] <= 1);
    } else {
      /* Every sample at least once; the padding repeats the epoch's start. */
      assert_int_equal(total, (n + dp - 1) / dp * dp);
      for (int64_t i = 0; i < n; i++)
        assert_true(count[i] >= 1);
      assert_int_equal(count[perm[0]], 2);
    }
    free(count);
    free(perm);
    cpdl__sampler_destroy(whole);
  }
}

static void test_dp_partition_drop_last(void **state) {
  (void)state;
  dp_split(true, 0);
  dp_split(true, 16);
}

static void test_dp_cover_wrap(void **state) {
  (void)state;
  dp_split(false, 0);
  dp_split(false, 16);
  /* More replicas than samples with wrap: everyone still gets one. */
  cpdl__sampler_t *s = make(3, 1, 6, 8, false, 0);
  assert_int_equal(cpdl__sampler_per_epoch(s), 1);
  int64_t index;
  assert_int_equal(cpdl__sampler_next(s, &index), 0);
  assert_true(index >= 0 && index < 3);
  cpdl__sampler_destroy(s);
}

static void test_seek_resumes(void **state) {
  (void)state;
  cpdl__sampler_t *a = make(777, 3, 2, 5, false, 0);
  int64_t ignored;
  for (int i = 0; i < 400; i++) /* crosses two epochs of 156 */
    assert_int_equal(cpdl__sampler_next(a, &ignored), 0);
  uint64_t epoch;
  int64_t position;
  cpdl__sampler_tell(a, &epoch, &position);
  assert_int_equal(epoch, 400 / 156);
  assert_int_equal(position, 400 % 156);
  cpdl__sampler_t *b = make(777, 3, 2, 5, false, 0);
  assert_int_equal(cpdl__sampler_seek(b, epoch, position), 0);
  for (int i = 0; i < 500; i++) {
    int64_t x, y;
    assert_int_equal(cpdl__sampler_next(a, &x), 0);
    assert_int_equal(cpdl__sampler_next(b, &y), 0);
    assert_int_equal(x, y);
  }
  assert_int_equal(cpdl__sampler_seek(b, 0, 156), CPDL_EARG);
  assert_int_equal(cpdl__sampler_seek(b, 0, -1), CPDL_EARG);
  assert_int_equal(cpdl__sampler_index(b, 0, 156, &ignored), CPDL_EARG);
  cpdl__sampler_destroy(a);
  cpdl__sampler_destroy(b);
}

/* Fisher–Yates must be uniform: every one of the 24 orders of 4 samples
 * shows up about equally often (an off-by-one in the swap range would make
 * some impossible or twice as likely). */
static void test_uniform_orders(void **state) {
  (void)state;
  cpdl__sampler_t *s = make(4, 11, 0, 1, true, 0);
  int hist[256] = {0};
  const int epochs = 24000;
  for (int e = 0; e < epochs; e++) {
    int code = 0;
    for (int i = 0; i < 4; i++) {
      int64_t index;
      assert_int_equal(cpdl__sampler_next(s, &index), 0);
      code = code * 4 + (int)index;
    }
    hist[code]++;
  }
  int orders = 0;
  for (int c = 0; c < 256; c++) {
    if (!hist[c])
      continue;
    orders++;
    assert_true(hist[c] > 800 && hist[c] < 1200); /* expected 1000, sd ~31 */
  }
  assert_int_equal(orders, 24);
  cpdl__sampler_destroy(s);
}

static void test_errors(void **state) {
  (void)state;
  cpdl__sampler_t *s = NULL;
  cpdl__sampler_params_t p = {.n_samples = 0, .seed = 1, .dp_rank = 0, .dp_size = 1};
  assert_int_equal(cpdl__sampler_create(&p, &s), CPDL_EARG);
  assert_null(s);
  p.n_samples = 10;
  p.dp_rank = 2;
  p.dp_size = 2;
  assert_int_equal(cpdl__sampler_create(&p, &s), CPDL_EARG);
  p.dp_rank = 0;
  p.dp_size = 0;
  assert_int_equal(cpdl__sampler_create(&p, &s), CPDL_EARG);
  /* drop_last with fewer samples than replicas: the message says the fix. */
  p.n_samples = 3;
  p.dp_size = 4;
  p.drop_last = true;
  assert_int_equal(cpdl__sampler_create(&p, &s), CPDL_EARG);
  assert_non_null(strstr(cpdl_last_error(), "drop_last=0"));
  p.drop_last = false;
  assert_int_equal(cpdl__sampler_create(&p, &s), 0);
  cpdl__sampler_destroy(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_permutation_table),
      cmocka_unit_test(test_permutation_feistel),
      cmocka_unit_test(test_deterministic),
      cmocka_unit_test(test_dp_partition_drop_last),
      cmocka_unit_test(test_dp_cover_wrap),
      cmocka_unit_test(test_seek_resumes),
      cmocka_unit_test(test_uniform_orders),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
