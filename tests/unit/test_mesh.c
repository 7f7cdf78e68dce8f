/* test_mesh.c — cpdl__mesh_coords, the pure rank → (dp, cp, tp) mapping:
 * every order, several shapes, a bijection check, and the errors. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "internal.h"

static void assert_contains(const char *haystack, const char *needle) {
  if (!strstr(haystack, needle))
    fail_msg("expected \"%s\" in \"%s\"", needle, haystack);
}

/* Default order: rank = (dp*cp + cp_rank)*tp + tp_rank, spelled out. */
static void test_default_order(void **state) {
  (void)state;
  int dp, cp, tp;
  /* size 16, cp 2, tp 4 -> dp 2. rank 13 = (1*2 + 1)*4 + 1 */
  assert_int_equal(cpdl__mesh_coords(13, 16, 2, 4, "dp,cp,tp", &dp, &cp, &tp), 0);
  assert_int_equal(dp, 1);
  assert_int_equal(cp, 1);
  assert_int_equal(tp, 1);
  assert_int_equal(cpdl__mesh_coords(6, 16, 2, 4, NULL, &dp, &cp, &tp), 0);
  assert_int_equal(dp, 0);
  assert_int_equal(cp, 1);
  assert_int_equal(tp, 2);
  /* cp only: cp rank is rank % cp, dp is rank / cp. */
  for (int r = 0; r < 8; r++) {
    assert_int_equal(cpdl__mesh_coords(r, 8, 4, 1, "dp,cp,tp", &dp, &cp, &tp), 0);
    assert_int_equal(cp, r % 4);
    assert_int_equal(dp, r / 4);
    assert_int_equal(tp, 0);
  }
}

static void test_other_orders(void **state) {
  (void)state;
  int dp, cp, tp;
  /* "tp,cp,dp": dp fastest. size 12, cp 3, tp 2 -> dp 2. rank = (tp*3 + cp)*2 + dp */
  assert_int_equal(cpdl__mesh_coords(11, 12, 3, 2, "tp,cp,dp", &dp, &cp, &tp), 0);
  assert_int_equal(tp, 1);
  assert_int_equal(cp, 2);
  assert_int_equal(dp, 1);
  /* "cp,dp,tp": rank = (cp*dp_size + dp)*tp + tp_rank; rank 7 of 12 = (1*2+1)*2+1 */
  assert_int_equal(cpdl__mesh_coords(7, 12, 3, 2, "cp,dp,tp", &dp, &cp, &tp), 0);
  assert_int_equal(cp, 1);
  assert_int_equal(dp, 1);
  assert_int_equal(tp, 1);
}

/* For every order and several shapes, the mapping is a bijection onto
 * [0,dp) × [0,cp) × [0,tp) and matches the mixed-radix formula. */
static void test_all_orders_bijective(void **state) {
  (void)state;
  static const char *const orders[] = {"dp,cp,tp", "dp,tp,cp", "cp,dp,tp",
                                       "cp,tp,dp", "tp,dp,cp", "tp,cp,dp"};
  static const int shapes[][3] = {{1, 1, 1}, {4, 1, 1}, {1, 4, 1}, {1, 1, 4},
                                  {2, 2, 2}, {3, 2, 5}, {2, 8, 1}, {5, 1, 3}};
  for (size_t o = 0; o < 6; o++) {
    const char *order = orders[o];
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
      int dsz = shapes[s][0], csz = shapes[s][1], tsz = shapes[s][2];
      int size = dsz * csz * tsz;
      unsigned char seen[128] = {0};
      for (int r = 0; r < size; r++) {
        int c[3];
        assert_int_equal(cpdl__mesh_coords(r, size, csz, tsz, order, &c[0], &c[1], &c[2]), 0);
        assert_in_range(c[0], 0, dsz - 1);
        assert_in_range(c[1], 0, csz - 1);
        assert_in_range(c[2], 0, tsz - 1);
        int cell = (c[0] * csz + c[1]) * tsz + c[2];
        assert_int_equal(seen[cell], 0);
        seen[cell] = 1;
        /* Recompose in the order's axes: slowest first. */
        int extent[3] = {dsz, csz, tsz}, back = 0;
        for (int i = 0; i < 3; i++) {
          int axis = order[3 * i] == 'd' ? 0 : order[3 * i] == 'c' ? 1 : 2;
          back = back * extent[axis] + c[axis];
        }
        if (back != r)
          fail_msg("order %s shape %dx%dx%d: rank %d maps back to %d", order, dsz, csz, tsz, r,
                   back);
      }
    }
  }
}

static void test_errors(void **state) {
  (void)state;
  int dp, cp, tp;
  static const char *const bad_orders[] = {"", "dp,cp", "dp,cp,tp,", "dp,dp,tp", "dp cp tp",
                                           "DP,CP,TP", "dp,cp,xx", "dp,cp,tpx"};
  for (size_t i = 0; i < sizeof bad_orders / sizeof bad_orders[0]; i++) {
    assert_int_equal(cpdl__mesh_coords(0, 4, 2, 1, bad_orders[i], &dp, &cp, &tp), CPDL_EMESH);
    assert_contains(cpdl_last_error(), "permutation of dp,cp,tp");
  }
  assert_int_equal(cpdl__mesh_coords(0, 6, 4, 1, "dp,cp,tp", &dp, &cp, &tp), CPDL_EMESH);
  assert_contains(cpdl_last_error(), "communicator of 6 ranks does not split into cp=4");
  assert_contains(cpdl_last_error(), "multiple of 4");
  assert_int_equal(cpdl__mesh_coords(0, 8, 2, 3, NULL, &dp, &cp, &tp), CPDL_EMESH);
  assert_contains(cpdl_last_error(), "multiple of 6");
  assert_int_equal(cpdl__mesh_coords(0, 4, 0, 1, NULL, &dp, &cp, &tp), CPDL_EMESH);
  assert_int_equal(cpdl__mesh_coords(0, 4, 1, -1, NULL, &dp, &cp, &tp), CPDL_EMESH);
  assert_int_equal(cpdl__mesh_coords(4, 4, 2, 1, NULL, &dp, &cp, &tp), CPDL_EMESH);
  assert_int_equal(cpdl__mesh_coords(-1, 4, 2, 1, NULL, &dp, &cp, &tp), CPDL_EMESH);
  assert_int_equal(cpdl__mesh_coords(0, 4, 1 << 20, 1 << 20, NULL, &dp, &cp, &tp), CPDL_EMESH);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_default_order),
      cmocka_unit_test(test_other_orders),
      cmocka_unit_test(test_all_orders_bijective),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
