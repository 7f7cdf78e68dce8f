/* test_perm.c — the global document order: deterministic, a permutation per
 * epoch, different per epoch and seed, uniform over small domains, and the
 * same guarantees on the table-free (Feistel) path. It has no replica in it:
 * the order is the same whatever the job's layout (docs/design.md#the-global-order). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "internal.h"

static cpdl__perm_t *make(int64_t n, uint64_t seed, int64_t table_max) {
  cpdl__perm_t *p = NULL;
  assert_int_equal(cpdl__perm_create(n, seed, table_max, &p), 0);
  assert_non_null(p);
  assert_int_equal(cpdl__perm_size(p), n);
  return p;
}

/* Epoch `epoch` must be a permutation of [0, n). */
static void assert_epoch_is_permutation(cpdl__perm_t *p, uint64_t epoch, int64_t n, int64_t *order) {
  char *seen = calloc((size_t)n, 1);
  assert_non_null(seen);
  for (int64_t i = 0; i < n; i++) {
    int64_t index = cpdl__perm_at(p, epoch, i);
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
  cpdl__perm_t *p = make(n, 7, table_max);
  int64_t *e0 = malloc(n * sizeof *e0), *e1 = malloc(n * sizeof *e1);
  assert_epoch_is_permutation(p, 0, n, e0);
  assert_epoch_is_permutation(p, 1, n, e1);
  assert_true(memcmp(e0, e1, n * sizeof *e0) != 0); /* epochs differ */
  int64_t fixed = 0; /* not the identity either */
  for (int64_t i = 0; i < n; i++)
    fixed += e0[i] == i;
  assert_true(fixed < 20);
  for (int e = 2; e < 5; e++)
    assert_epoch_is_permutation(p, (uint64_t)e, n, NULL);
  /* Going back to an epoch gives it again (the table is rebuilt). */
  for (int64_t i = 0; i < n; i++)
    assert_int_equal(cpdl__perm_at(p, 0, i), e0[i]);
  free(e0);
  free(e1);
  cpdl__perm_destroy(p);
}

static void test_permutation_table(void **state) {
  (void)state;
  permutation_per_epoch(0);
}

static void test_permutation_feistel(void **state) {
  (void)state;
  permutation_per_epoch(10); /* n = 1000 > 10: no table */
  for (int64_t n = 1; n <= 17; n++) { /* tiny and odd domains, including n = 1 */
    cpdl__perm_t *p = make(n, 99, 1);
    for (int e = 0; e < 3; e++)
      assert_epoch_is_permutation(p, (uint64_t)e, n, NULL);
    cpdl__perm_destroy(p);
  }
}

/* A pure function of (n, seed, epoch): two instances agree, another seed differs. */
static void deterministic(int64_t table_max) {
  const int64_t n = 777;
  cpdl__perm_t *a = make(n, 42, table_max), *b = make(n, 42, table_max), *c = make(n, 43, table_max);
  int64_t same = 0;
  for (uint64_t e = 0; e < 3; e++)
    for (int64_t i = 0; i < n; i++) {
      assert_int_equal(cpdl__perm_at(a, e, i), cpdl__perm_at(b, e, i));
      same += cpdl__perm_at(a, e, i) == cpdl__perm_at(c, e, i);
    }
  assert_true(same < 30);
  cpdl__perm_destroy(a);
  cpdl__perm_destroy(b);
  cpdl__perm_destroy(c);
}

static void test_deterministic(void **state) {
  (void)state;
  deterministic(0);
  deterministic(10);
}

/* Over many seeds every order of 3 elements appears about equally often
 * (table and Feistel paths). */
static void test_uniform_orders(void **state) {
  (void)state;
  for (int path = 0; path < 2; path++) {
    int count[6] = {0};
    for (uint64_t seed = 0; seed < 6000; seed++) {
      cpdl__perm_t *p = make(3, seed, path ? 1 : 0);
      int64_t a = cpdl__perm_at(p, 0, 0), b = cpdl__perm_at(p, 0, 1);
      count[a * 2 + (b > (a == 0 ? 1 : 0) ? 1 : 0)]++;
      cpdl__perm_destroy(p);
    }
    for (int k = 0; k < 6; k++)
      assert_true(count[k] > 800 && count[k] < 1200);
  }
}

static void test_errors(void **state) {
  (void)state;
  cpdl__perm_t *p = (cpdl__perm_t *)&p;
  assert_int_equal(cpdl__perm_create(0, 1, 0, &p), CPDL_EARG);
  assert_null(p);
  cpdl__perm_destroy(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_permutation_table),
      cmocka_unit_test(test_permutation_feistel),
      cmocka_unit_test(test_deterministic),
      cmocka_unit_test(test_uniform_orders),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
