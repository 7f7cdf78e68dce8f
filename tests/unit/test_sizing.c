/* test_sizing.c — the ring's slots and the collate's output sets by bytes and
 * need (sizing.c; the formula above cpdl_tools_memory_t in cpdl/tools.h):
 * small steps get the lookahead cap, large ones the protocol's minimum, a
 * budget in between what fits; slots= wins; a budget too small for two steps
 * is an error that gives the bytes needed; a second collate set only where
 * the producer pipelines and the ring runs ahead; a collate's reported bytes
 * follow its sets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "cpdl/tools.h"
#include "internal.h"

#define MiB ((uint64_t)1 << 20)

static cpdl_tools_memory_t plan_ok(const cpdl_config_t *cfg, uint64_t rank_block,
                                   uint64_t shared_block, int regions, int max_sets) {
  cpdl_tools_memory_t m;
  assert_int_equal(cpdl__sizing_plan(cfg, rank_block, shared_block, regions, max_sets, &m), 0);
  assert_int_equal(m.slot_bytes, (uint64_t)regions * rank_block + shared_block);
  assert_int_equal(m.ring_bytes, (uint64_t)m.slots * m.slot_bytes);
  assert_int_equal(m.slots_need, 2);
  assert_int_equal(m.slots_max, 4);
  assert_int_equal(m.n_regions, regions);
  return m;
}

static void default_budget_scales_slots_with_the_step(void **state) {
  (void)state;
  cpdl_config_t cfg;
  cpdl_config_init(&cfg);
  /* 1M tokens, cp 2, four int64 fields: two 16 MiB blocks a step. */
  cpdl_tools_memory_t m = plan_ok(&cfg, 16 * MiB, 0, 2, 2);
  assert_int_equal(m.budget_bytes, 64 * MiB);
  assert_int_equal(m.slots, 2);
  assert_int_equal(m.collate_sets, 1); /* the ring is at its minimum: no second set */
  /* 128K: 4 MiB a step, the lookahead cap (16 would fit). */
  m = plan_ok(&cfg, 2 * MiB, 0, 2, 2);
  assert_int_equal(m.slots, 4);
  assert_int_equal(m.collate_sets, 2);
  /* 512K at cp 1 plus shared fields: 20 MiB a step, 3 fit. */
  m = plan_ok(&cfg, 16 * MiB, 4 * MiB, 1, 2);
  assert_int_equal(m.slots, 3);
  assert_int_equal(m.collate_sets, 2);
  /* A step larger than the whole default budget still gets the minimum. */
  m = plan_ok(&cfg, 256 * MiB, 0, 4, 2);
  assert_int_equal(m.slots, 2);
  /* No pipelining producer: one set whatever the ring. */
  m = plan_ok(&cfg, 4096, 0, 2, 1);
  assert_int_equal(m.slots, 4);
  assert_int_equal(m.collate_sets, 1);
}

static void budget_fits(void **state) {
  (void)state;
  cpdl_config_t cfg;
  cpdl_config_init(&cfg);
  assert_int_equal(cpdl_config_parse(&cfg, "ring_bytes=100M"), 0);
  cpdl_tools_memory_t m = plan_ok(&cfg, 16 * MiB, 0, 2, 2);
  assert_int_equal(m.slots, 3); /* floor(100 / 32) */
  assert_int_equal(m.collate_sets, 2);
  assert_int_equal(cpdl_config_parse(&cfg, "ring_bytes=1G"), 0);
  m = plan_ok(&cfg, 16 * MiB, 0, 2, 2);
  assert_int_equal(m.slots, 4); /* the cap */
  /* slots= sets the ring exactly, budget or not. */
  assert_int_equal(cpdl_config_parse(&cfg, "slots=7 ring_bytes=1M"), 0);
  m = plan_ok(&cfg, 16 * MiB, 0, 2, 2);
  assert_int_equal(m.slots, 7);
  assert_int_equal(m.slots_given, 7);
  assert_int_equal(cpdl_config_parse(&cfg, "slots=2 ring_bytes=0"), 0);
  m = plan_ok(&cfg, 1024, 0, 2, 2);
  assert_int_equal(m.slots, 2);
  assert_int_equal(m.collate_sets, 1);
}

static void budget_too_small_names_the_bytes(void **state) {
  (void)state;
  cpdl_config_t cfg;
  cpdl_config_init(&cfg);
  assert_int_equal(cpdl_config_parse(&cfg, "ring_bytes=48M"), 0);
  cpdl_tools_memory_t m;
  assert_int_equal(cpdl__sizing_plan(&cfg, 16 * MiB, 0, 2, 2, &m), CPDL_EARG);
  const char *msg = cpdl_last_error();
  assert_non_null(strstr(msg, "ring_bytes=50331648"));
  assert_non_null(strstr(msg, "ring_bytes >= 67108864"));
  /* slots=1 cannot be set, and cannot reach the plan either. */
  assert_int_equal(cpdl_config_parse(&cfg, "slots=1"), CPDL_EARG);
  assert_non_null(strstr(cpdl_last_error(), "0, sized by need"));
  cfg.slots = 1;
  assert_int_equal(cpdl__sizing_plan(&cfg, 4096, 0, 1, 1, &m), CPDL_EARG);
  /* Overflow of one step is an error, not a wrapped size. */
  cpdl_config_init(&cfg);
  assert_int_equal(cpdl__sizing_plan(&cfg, UINT64_MAX / 2, 0, 4, 1, &m), CPDL_EOVERFLOW);
}

static int order_read(void *arg, uint64_t epoch, int64_t position, cpdl__sample_t *out) {
  static int64_t tokens[256];
  for (int i = 0; i < 256; i++)
    tokens[i] = i * 7 + 1;
  (void)arg;
  (void)epoch;
  if (position > 0)
    return CPDL_EEOF;
  out->tokens = tokens;
  out->n_tokens = 256;
  out->token_bytes = 8;
  return 0;
}

static int order_length(void *arg, uint64_t epoch, int64_t position, int64_t *n) {
  (void)arg;
  (void)epoch;
  if (position > 0)
    return CPDL_EEOF;
  *n = 256;
  return 0;
}

/* The collate's own count of its buffers halves its sets' share when it
 * drops the second set, and the step it then makes is the same. */
static void collate_single_buffer(void **state) {
  (void)state;
  cpdl__doc_order_t order = {.read = order_read, .length = order_length, .arg = NULL};
  cpdl__collate_params_t params = {.kind = CPDL__COLLATE_PACK, .seq_len = 16, .batch = 2,
                                   .loss_on_eot = 1, .eot_token = -1, .double_buffer = true};
  cpdl__collate_t *two = NULL, *one = NULL;
  assert_int_equal(cpdl__collate_create(&params, &order, &two), 0);
  assert_int_equal(cpdl__collate_create(&params, &order, &one), 0);
  uint64_t set = 0;
  uint64_t both = cpdl__collate_buffer_bytes(two, &set);
  assert_int_equal(set, 4 * 2 * 16 * sizeof(int64_t));
  assert_int_equal(both, 2 * set + 17 * sizeof(int64_t));
  cpdl__collate_single_buffer(one);
  assert_int_equal(cpdl__collate_buffer_bytes(one, NULL), set + 17 * sizeof(int64_t));
  cpdl_tensor_t a[8], b[8];
  int na = 8, nb = 8;
  assert_int_equal(cpdl__collate_next(two, a, &na), 0);
  assert_int_equal(cpdl__collate_next(one, b, &nb), 0);
  assert_int_equal(na, nb);
  for (int f = 0; f < na; f++)
    assert_memory_equal(a[f].data, b[f].data, 2 * 16 * sizeof(int64_t));
  /* One set: the next step reuses it. */
  const void *first = b[0].data;
  nb = 8;
  assert_int_equal(cpdl__collate_next(one, b, &nb), 0);
  assert_ptr_equal(b[0].data, first);
  cpdl__collate_destroy(two);
  cpdl__collate_destroy(one);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(default_budget_scales_slots_with_the_step),
      cmocka_unit_test(budget_fits),
      cmocka_unit_test(budget_too_small_names_the_bytes),
      cmocka_unit_test(collate_single_buffer),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
