/* test_pin.c — the placement plan (pin_plan.c) on synthetic and XML
 * topologies, so the results do not depend on the machine running the test:
 * threads near their consumers, off the training ranks' cores where there is
 * room, sensible fallbacks, cores:<list> honoured and validated, none, and
 * GPUs found through hwloc's PCI objects by bus id and by index.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <hwloc.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* "pack:2 numa:2 core:4 pu:1": NUMA 0 = PUs 0-3, 1 = 4-7, 2 = 8-11, 3 = 12-15. */
#define FOUR_NUMA "pack:2 numa:2 core:4 pu:1"

static hwloc_topology_t synthetic(const char *description) {
  hwloc_topology_t topo;
  assert_int_equal(hwloc_topology_init(&topo), 0);
  assert_int_equal(hwloc_topology_set_synthetic(topo, description), 0);
  assert_int_equal(hwloc_topology_load(topo), 0);
  return topo;
}

static hwloc_topology_t from_xml(const char *name) {
  char path[4096], here[4096];
  snprintf(here, sizeof here, "%s", __FILE__);
  snprintf(path, sizeof path, "%s/../data/%s", dirname(here), name);
  hwloc_topology_t topo;
  assert_int_equal(hwloc_topology_init(&topo), 0);
  assert_int_equal(hwloc_topology_set_xml(topo, path), 0);
  assert_int_equal(hwloc_topology_set_io_types_filter(topo, HWLOC_TYPE_FILTER_KEEP_ALL), 0);
  assert_int_equal(hwloc_topology_load(topo), 0);
  return topo;
}

/* One group (0) whose member i has CP rank i, member 0 the leader. */
static void one_group(cpdl__pin_member_t *m, int n, const char *const *bindings,
                      const char *const *gpus) {
  for (int i = 0; i < n; i++)
    m[i] = (cpdl__pin_member_t){.world_rank = i, .group = 0, .cp_rank = i, .is_leader = i == 0,
                                .binding = bindings ? bindings[i] : NULL,
                                .gpu = gpus ? gpus[i] : NULL};
}

static cpdl__pin_plan_t *plan_for(hwloc_topology_t topo, const char *policy, int n_threads,
                                  const cpdl__pin_member_t *m, int n, int group) {
  cpdl__pin_plan_in_t in = {.policy = policy, .n_threads = n_threads, .members = m,
                            .n_members = n, .group = group};
  cpdl__pin_plan_t *plan = NULL;
  int rc = cpdl__pin_plan_make(topo, &in, &plan);
  if (rc != 0)
    fail_msg("plan failed: %s", cpdl_last_error());
  assert_non_null(plan);
  return plan;
}

static void assert_cpus(hwloc_const_bitmap_t set, const char *want) {
  char got[256] = "(unbound)";
  if (set)
    hwloc_bitmap_list_snprintf(got, sizeof got, set);
  if (strcmp(got, want) != 0)
    fail_msg("cpuset %s, want %s", got, want);
}

static bool overlaps_list(hwloc_const_bitmap_t set, const char *list) {
  hwloc_bitmap_t other = hwloc_bitmap_alloc();
  hwloc_bitmap_list_sscanf(other, list);
  bool hit = hwloc_bitmap_intersects(set, other);
  hwloc_bitmap_free(other);
  return hit;
}

/* ---- policy text ---------------------------------------------------------- */

static void test_policy_parse(void **state) {
  (void)state;
  cpdl__pin_policy_t kind;
  hwloc_bitmap_t cpus = NULL;
  assert_int_equal(cpdl__pin_policy_parse(NULL, &kind, NULL), 0);
  assert_int_equal(kind, CPDL__PIN_AUTO);
  assert_int_equal(cpdl__pin_policy_parse("numa", &kind, NULL), 0);
  assert_int_equal(kind, CPDL__PIN_NUMA);
  assert_int_equal(cpdl__pin_policy_parse("none", &kind, NULL), 0);
  assert_int_equal(kind, CPDL__PIN_NONE);
  assert_int_equal(cpdl__pin_policy_parse("cores:0-2,7,9-10", &kind, &cpus), 0);
  assert_int_equal(kind, CPDL__PIN_CORES);
  assert_cpus(cpus, "0-2,7,9-10");
  hwloc_bitmap_free(cpus);

  const char *bad[] = {"cores:", "cores:3-1", "cores:a", "cores:1,", "cores:1-", "cores:1;2",
                       "cores:99999999", "fast", "Auto"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    cpus = NULL;
    int rc = cpdl__pin_policy_parse(bad[i], &kind, &cpus);
    if (rc != CPDL_EARG)
      fail_msg("policy \"%s\" gave %d, want CPDL_EARG", bad[i], rc);
    assert_null(cpus);
    assert_non_null(strstr(cpdl_last_error(), "pin="));
  }
}

/* ---- auto ----------------------------------------------------------------- */

/* Two CP ranks bound to PU 0 (NUMA 0) and PU 4 (NUMA 1), three threads:
 * thread 0 and the worker for region 0 on NUMA 0, the worker for region 1 on
 * NUMA 1, none of them on a rank's core and no two on one core. */
static void test_auto_near_consumers_off_rank_cores(void **state) {
  (void)state;
  hwloc_topology_t topo = synthetic(FOUR_NUMA);
  const char *bind[] = {"0", "4"};
  cpdl__pin_member_t m[2];
  one_group(m, 2, bind, NULL);
  cpdl__pin_plan_t *plan = plan_for(topo, "auto", 3, m, 2, 0);
  assert_int_equal(plan->policy, CPDL__PIN_AUTO);
  assert_cpus(plan->thread_cpuset[0], "1");
  assert_cpus(plan->thread_cpuset[1], "2");
  assert_cpus(plan->thread_cpuset[2], "5");
  int want_numa[] = {0, 0, 1};
  for (int t = 0; t < 3; t++) {
    assert_int_equal(plan->thread_numa[t], want_numa[t]);
    assert_false(overlaps_list(plan->thread_cpuset[t], "0,4"));
  }
  assert_int_equal(plan->n_regions, 2);
  assert_int_equal(plan->region_numa[0], 0);
  assert_int_equal(plan->region_numa[1], 1);
  assert_int_equal(plan->member_numa[1], 1);
  assert_string_equal(plan->note, "");
  cpdl__pin_plan_free(plan);

  /* More threads than free cores on NUMA 1: the first takes its last free
   * core, the others free cores of the same package (NUMA 0) rather than
   * doubling up; never a rank's core, never two on one core. */
  const char *bind2[] = {"4-5", "6"};
  one_group(m, 2, bind2, NULL);
  plan = plan_for(topo, "auto", 5, m, 2, 0);
  assert_cpus(plan->thread_cpuset[0], "7");
  assert_int_equal(plan->thread_numa[0], 1);
  for (int t = 1; t < 5; t++) {
    assert_int_equal(plan->thread_numa[t], 0);
    assert_int_equal(hwloc_bitmap_weight(plan->thread_cpuset[t]), 1);
    assert_false(overlaps_list(plan->thread_cpuset[t], "4-7"));
    for (int u = 0; u < t; u++)
      assert_false(hwloc_bitmap_intersects(plan->thread_cpuset[t], plan->thread_cpuset[u]));
  }
  /* Past every free core of the package, threads share those cores. */
  cpdl__pin_plan_free(plan);
  plan = plan_for(topo, "auto", 7, m, 2, 0);
  assert_cpus(plan->thread_cpuset[5], "7");
  assert_false(overlaps_list(plan->thread_cpuset[6], "4-6"));
  cpdl__pin_plan_free(plan);
  hwloc_topology_destroy(topo);
}

/* Ranks fill NUMA 0: the thread moves to a free core of the same package
 * (and says so); when the whole package is taken it shares its consumer's
 * NUMA node rather than crossing to the other package. */
static void test_auto_fallbacks(void **state) {
  (void)state;
  hwloc_topology_t topo = synthetic(FOUR_NUMA);
  const char *bind[] = {"0", "1", "2", "3"};
  cpdl__pin_member_t m[8];
  one_group(m, 4, bind, NULL);
  cpdl__pin_plan_t *plan = plan_for(topo, "auto", 2, m, 4, 0);
  assert_cpus(plan->thread_cpuset[0], "4");
  assert_cpus(plan->thread_cpuset[1], "5");
  assert_int_equal(plan->region_numa[0], 0); /* memory still near the consumer */
  assert_non_null(strstr(plan->note, "package"));
  cpdl__pin_plan_free(plan);

  const char *full[] = {"0", "1", "2", "3", "4", "5", "6", "7"};
  one_group(m, 8, full, NULL);
  plan = plan_for(topo, "auto", 1, m, 8, 0);
  assert_cpus(plan->thread_cpuset[0], "0-3");
  assert_int_equal(plan->thread_numa[0], 0);
  assert_non_null(strstr(plan->note, "share cores with training ranks"));
  cpdl__pin_plan_free(plan);
  hwloc_topology_destroy(topo);
}

/* Unbound ranks occupy no core in particular. On one NUMA node the region
 * goes there and a thread takes a whole core (both hyperthreads); across
 * several NUMA nodes an unbound rank's node is unknown (-1). */
static void test_auto_unbound_ranks(void **state) {
  (void)state;
  hwloc_topology_t topo = synthetic("core:4 pu:2");
  const char *bind[] = {"0-7", NULL};
  cpdl__pin_member_t m[2];
  one_group(m, 2, bind, NULL);
  cpdl__pin_plan_t *plan = plan_for(topo, "auto", 2, m, 2, 0);
  assert_cpus(plan->thread_cpuset[0], "0-1");
  assert_cpus(plan->thread_cpuset[1], "2-3");
  assert_int_equal(plan->region_numa[0], 0);
  assert_int_equal(plan->member_numa[1], 0);
  cpdl__pin_plan_free(plan);
  hwloc_topology_destroy(topo);

  topo = synthetic(FOUR_NUMA);
  const char *wide[] = {"0-15", "0-15"};
  one_group(m, 2, wide, NULL);
  plan = plan_for(topo, "auto", 1, m, 2, 0);
  assert_int_equal(plan->region_numa[0], -1);
  assert_int_equal(plan->region_numa[1], -1);
  assert_int_equal(hwloc_bitmap_weight(plan->thread_cpuset[0]), 1);
  cpdl__pin_plan_free(plan);
  hwloc_topology_destroy(topo);
}

/* Two groups on one node, both near NUMA 0: their leaders' threads never
 * share a core, whichever group asks. */
static void test_auto_two_groups(void **state) {
  (void)state;
  hwloc_topology_t topo = synthetic(FOUR_NUMA);
  cpdl__pin_member_t m[2] = {
      {.world_rank = 0, .group = 0, .cp_rank = 0, .is_leader = true, .binding = "0"},
      {.world_rank = 1, .group = 1, .cp_rank = 0, .is_leader = true, .binding = "1"}};
  cpdl__pin_plan_t *g0 = plan_for(topo, "auto", 2, m, 2, 0);
  cpdl__pin_plan_t *g1 = plan_for(topo, "auto", 2, m, 2, 1);
  assert_cpus(g0->thread_cpuset[0], "2");
  assert_cpus(g0->thread_cpuset[1], "3");
  assert_cpus(g1->thread_cpuset[0], "4"); /* NUMA 0 is taken: same package */
  assert_int_equal(g1->n_regions, 1);
  for (int t = 0; t < 2; t++) {
    assert_false(hwloc_bitmap_intersects(g1->thread_cpuset[t], g0->thread_cpuset[0]));
    assert_false(hwloc_bitmap_intersects(g1->thread_cpuset[t], g0->thread_cpuset[1]));
    assert_false(overlaps_list(g1->thread_cpuset[t], "0-1"));
  }
  cpdl__pin_plan_free(g0);
  cpdl__pin_plan_free(g1);
  hwloc_topology_destroy(topo);
}

/* ---- numa, cores, none ---------------------------------------------------- */

static void test_numa_policy(void **state) {
  (void)state;
  hwloc_topology_t topo = synthetic(FOUR_NUMA);
  const char *bind[] = {"0", "12-13"};
  cpdl__pin_member_t m[2];
  one_group(m, 2, bind, NULL);
  cpdl__pin_plan_t *plan = plan_for(topo, "numa", 3, m, 2, 0);
  assert_cpus(plan->thread_cpuset[0], "1-3");
  assert_cpus(plan->thread_cpuset[1], "1-3");
  assert_cpus(plan->thread_cpuset[2], "14-15");
  assert_int_equal(plan->thread_numa[2], 3);
  assert_int_equal(plan->region_numa[1], 3);
  cpdl__pin_plan_free(plan);

  /* A node full of ranks: the whole node, shared. */
  const char *full[] = {"0-3", "8"};
  one_group(m, 2, full, NULL);
  plan = plan_for(topo, "numa", 1, m, 2, 0);
  assert_cpus(plan->thread_cpuset[0], "0-3");
  cpdl__pin_plan_free(plan);
  hwloc_topology_destroy(topo);
}

static void test_cores_policy(void **state) {
  (void)state;
  hwloc_topology_t topo = synthetic(FOUR_NUMA);
  const char *bind[] = {"0", "4"};
  cpdl__pin_member_t m[2];
  one_group(m, 2, bind, NULL);
  cpdl__pin_plan_t *plan = plan_for(topo, "cores:9,2-3", 4, m, 2, 0);
  assert_int_equal(plan->policy, CPDL__PIN_CORES);
  assert_cpus(plan->thread_cpuset[0], "2");
  assert_cpus(plan->thread_cpuset[1], "3");
  assert_cpus(plan->thread_cpuset[2], "9");
  assert_cpus(plan->thread_cpuset[3], "2");
  assert_int_equal(plan->thread_numa[2], 2);
  assert_int_equal(plan->region_numa[1], 1); /* memory still follows consumers */
  cpdl__pin_plan_free(plan);

  /* A CPU the machine does not have: CPDL_EARG naming it and the allowed set. */
  cpdl__pin_plan_in_t in = {.policy = "cores:3,16", .n_threads = 1, .members = m,
                            .n_members = 2, .group = 0};
  plan = NULL;
  assert_int_equal(cpdl__pin_plan_make(topo, &in, &plan), CPDL_EARG);
  assert_null(plan);
  assert_non_null(strstr(cpdl_last_error(), "CPU 16"));
  assert_non_null(strstr(cpdl_last_error(), "0-15"));
  in.policy = "cores:2-";
  assert_int_equal(cpdl__pin_plan_make(topo, &in, &plan), CPDL_EARG);
  hwloc_topology_destroy(topo);
}

static void test_none_policy(void **state) {
  (void)state;
  hwloc_topology_t topo = synthetic(FOUR_NUMA);
  const char *bind[] = {"0", "4"};
  cpdl__pin_member_t m[2];
  one_group(m, 2, bind, NULL);
  cpdl__pin_plan_t *plan = plan_for(topo, "none", 3, m, 2, 0);
  for (int t = 0; t < 3; t++) {
    assert_null(plan->thread_cpuset[t]);
    assert_int_equal(plan->thread_numa[t], -1);
  }
  assert_int_equal(plan->n_regions, 2);
  assert_int_equal(plan->region_numa[0], -1);
  assert_int_equal(plan->region_numa[1], -1);
  assert_int_equal(plan->member_numa[1], 1); /* still known, for the report */
  cpdl__pin_plan_free(plan);
  hwloc_topology_destroy(topo);
}

/* ---- GPUs as PCI devices (tests/data/pin_2pack_3gpu.xml) ------------------ */

/* GPUs: 0000:c1:00.0 near NUMA 0 (PUs 0-3), 0000:07:00.0 near NUMA 1 (4-7),
 * 0000:87:00.0 on package 1 (8-15, NUMA 2+3); 0000:02:00.0 is a BMC VGA. */
static void test_gpu_locality(void **state) {
  (void)state;
  hwloc_topology_t topo = from_xml("pin_2pack_3gpu.xml");
  /* unbound ranks: only the GPU says where they are */
  const char *bind[] = {"0-15", "0-15", "0-15", "0-15"};
  const char *gpus[] = {"0000:c1:00.0", "#0", "#1", "00000000:07:00.0"};
  cpdl__pin_member_t m[4];
  one_group(m, 4, bind, gpus);
  cpdl__pin_plan_t *plan = plan_for(topo, "auto", 4, m, 4, 0);
  assert_string_equal(plan->member_gpu[0], "0000:c1:00.0");
  assert_string_equal(plan->member_gpu[1], "0000:07:00.0"); /* index 0 in bus order */
  assert_string_equal(plan->member_gpu[2], "0000:87:00.0");
  assert_string_equal(plan->member_gpu[3], "0000:07:00.0");
  assert_int_equal(plan->member_numa[0], 0);
  assert_int_equal(plan->member_numa[1], 1);
  assert_int_equal(plan->member_numa[2], -1); /* package-wide: two NUMA nodes */
  /* thread 0 near the leader's GPU, worker t near region t-1's GPU */
  assert_cpus(plan->thread_cpuset[0], "0");
  assert_cpus(plan->thread_cpuset[1], "1");
  assert_cpus(plan->thread_cpuset[2], "4");
  assert_true(overlaps_list(plan->thread_cpuset[3], "8-15"));
  assert_int_equal(plan->thread_member[2], 1);
  assert_int_equal(plan->region_numa[0], 0);
  assert_int_equal(plan->region_numa[1], 1);
  assert_int_equal(plan->region_numa[2], -1);
  assert_int_equal(plan->region_numa[3], 1);
  assert_string_equal(plan->note, "");
  cpdl__pin_plan_free(plan);

  /* The GPU beats the binding; a GPU that does not resolve falls back to the
   * binding and leaves a note. The VGA is not GPU #2: c1 is. */
  const char *bind2[] = {"12", "5", "9"};
  const char *gpus2[] = {"#2", "#3", "ff:00.0"};
  one_group(m, 3, bind2, gpus2);
  plan = plan_for(topo, "auto", 3, m, 3, 0);
  assert_string_equal(plan->member_gpu[0], "0000:c1:00.0");
  assert_int_equal(plan->member_numa[0], 0);
  assert_string_equal(plan->member_gpu[1], "");
  assert_int_equal(plan->member_numa[1], 1);  /* from its binding */
  assert_int_equal(plan->member_numa[2], 2);
  assert_cpus(plan->thread_cpuset[0], "0");
  assert_cpus(plan->thread_cpuset[2], "4");   /* off rank 1's PU 5 */
  assert_false(overlaps_list(plan->thread_cpuset[2], "5"));
  assert_non_null(strstr(plan->note, "GPU index 3"));
  assert_non_null(strstr(plan->note, "ff:00.0"));
  cpdl__pin_plan_free(plan);

  /* A local rank past the GPU count ("@<local rank>", no CPDL_GPU or
   * CUDA_VISIBLE_DEVICES) shares a GPU, as trainers do, and leaves no note:
   * of the 3 GPUs, @3 is #0 and @5 is #2 (c1). */
  const char *gpus3[] = {"@3", "#0", "@5"};
  one_group(m, 3, bind2, gpus3);
  plan = plan_for(topo, "auto", 3, m, 3, 0);
  assert_string_equal(plan->member_gpu[0], plan->member_gpu[1]);
  assert_string_not_equal(plan->member_gpu[0], "");
  assert_string_equal(plan->member_gpu[2], "0000:c1:00.0");
  assert_string_equal(plan->note, "");
  cpdl__pin_plan_free(plan);
  hwloc_topology_destroy(topo);
}

/* ---- GPU request from the environment ------------------------------------- */

static void test_gpu_request(void **state) {
  (void)state;
  char out[64];
  cpdl__pin_gpu_request("0000:41:00.0", "0,1", 1, out, sizeof out);
  assert_string_equal(out, "0000:41:00.0");
  cpdl__pin_gpu_request("3", NULL, 0, out, sizeof out);
  assert_string_equal(out, "#3");
  cpdl__pin_gpu_request(NULL, "2,3", 1, out, sizeof out);
  assert_string_equal(out, "#3");
  cpdl__pin_gpu_request(NULL, "4,5,6", 4, out, sizeof out); /* wraps */
  assert_string_equal(out, "#5");
  cpdl__pin_gpu_request(NULL, "5", 3, out, sizeof out);     /* launcher gave one GPU */
  assert_string_equal(out, "#5");
  cpdl__pin_gpu_request(NULL, "GPU-8a1b2c3d", 0, out, sizeof out);
  assert_string_equal(out, "");
  cpdl__pin_gpu_request(NULL, "", 0, out, sizeof out);
  assert_string_equal(out, "");
  cpdl__pin_gpu_request(NULL, NULL, 2, out, sizeof out); /* the local rank: wraps */
  assert_string_equal(out, "@2");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_policy_parse),
      cmocka_unit_test(test_auto_near_consumers_off_rank_cores),
      cmocka_unit_test(test_auto_fallbacks),
      cmocka_unit_test(test_auto_unbound_ranks),
      cmocka_unit_test(test_auto_two_groups),
      cmocka_unit_test(test_numa_policy),
      cmocka_unit_test(test_cores_policy),
      cmocka_unit_test(test_none_policy),
      cmocka_unit_test(test_gpu_locality),
      cmocka_unit_test(test_gpu_request),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
