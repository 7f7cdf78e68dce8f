/* test_gpt_rng.c — the gpt plugin's numpy RandomState stream against values
 * numpy 1.24 produced (fixtures below, generated with
 *   rs = numpy.random.RandomState(seed); rs._bit_generator.random_raw(1001)
 *   rs.shuffle(numpy.arange(20, dtype=numpy.int32))        # seed 1234
 *   rs.randint(0, 2**40 + 1, dtype=numpy.int64)            # seed 3, masked
 *   rs.randint(0, 1001, dtype=numpy.int64)                 # seed 3
 * ): init_genrand seeding, the first outputs and one after the state
 * regenerates, the legacy shuffle, and the masked interval sampler on both
 * its 32- and 64-bit paths (64-bit draws take the high word first).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "gpt_rng.h"

static const struct {
  uint32_t seed, first[4], at1000;
} raw[] = {
  {0u, {2357136044u, 2546248239u, 3071714933u, 3626093760u}, 1333075495u},
  {1234u, {822569775u, 2137449171u, 2671936806u, 3512589365u}, 3796541357u},
  {4294967295u, {419326371u, 479346978u, 3918654476u, 2416749639u}, 1661208369u},
};

static void test_raw_stream(void **state) {
  (void)state;
  for (size_t s = 0; s < sizeof raw / sizeof raw[0]; s++) {
    gpt_mt_t mt;
    gpt_mt_seed(&mt, raw[s].seed);
    for (int k = 0; k < 4; k++)
      assert_int_equal(gpt_mt_next32(&mt), raw[s].first[k]);
    for (int k = 4; k < 1000; k++)
      gpt_mt_next32(&mt);
    assert_int_equal(gpt_mt_next32(&mt), raw[s].at1000);
  }
}

static void test_shuffle(void **state) {
  (void)state;
  static const int32_t want[20] = {3, 13, 2, 16, 14, 5, 4, 0, 8, 18,
                                   17, 11, 10, 9, 7, 1, 19, 12, 6, 15};
  int32_t x[20];
  uint32_t u[20];
  int64_t w[20];
  for (int k = 0; k < 20; k++)
    x[k] = k, u[k] = (uint32_t)k, w[k] = k;
  gpt_mt_t mt;
  gpt_mt_seed(&mt, 1234);
  gpt_mt_shuffle_i32(&mt, x, 20);
  assert_memory_equal(x, want, sizeof want);
  gpt_mt_seed(&mt, 1234);
  gpt_mt_shuffle_u32(&mt, u, 20);
  gpt_mt_seed(&mt, 1234);
  gpt_mt_shuffle_i64(&mt, w, 20);
  for (int k = 0; k < 20; k++) {
    assert_int_equal(u[k], (uint32_t)want[k]);
    assert_int_equal(w[k], want[k]);
  }
  /* n <= 1 draws nothing, as numpy */
  gpt_mt_seed(&mt, 1234);
  gpt_mt_shuffle_i32(&mt, x, 1);
  gpt_mt_shuffle_i32(&mt, x, 0);
  assert_int_equal(gpt_mt_next32(&mt), raw[1].first[0]);
}

static void test_interval(void **state) {
  (void)state;
  static const uint64_t wide[4] = {1073054410371ull, 867663915883ull, 593770158997ull,
                                   511502908838ull};
  static const uint64_t narrow[4] = {874, 664, 249, 643};
  gpt_mt_t mt;
  gpt_mt_seed(&mt, 3);
  for (int k = 0; k < 4; k++)
    assert_int_equal(gpt_mt_interval(&mt, 1ull << 40), wide[k]);
  gpt_mt_seed(&mt, 3);
  for (int k = 0; k < 4; k++)
    assert_int_equal(gpt_mt_interval(&mt, 1000), narrow[k]);
  assert_int_equal(gpt_mt_interval(&mt, 0), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_raw_stream),
    cmocka_unit_test(test_shuffle),
    cmocka_unit_test(test_interval),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
