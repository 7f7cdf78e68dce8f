/* api_null.c — the error convention of include/cpdl.h as a checked contract.
 *
 * Every exported function of libcpdl.so and libcpdl_prep.so is called with
 * NULL pointer arguments (and, where it takes none, out-of-range values) and
 * must return CPDL_EARG with a message, or the documented 0 / -1 / "" / "?" /
 * NULL with a message, or — for close, destroy and release — do nothing.
 * The list is checked against `nm -D` of both libraries: a new export that
 * is not listed here fails the test, so the rule cannot be skipped. Linked
 * against the shared library, not the static archive: these are the calls
 * users make. No MPI initialization is needed (every call fails before
 * touching the control plane).
 */
#include <cpdl.h>
#include <cpdl/device.h>
#include <cpdl/tools.h>

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A message no call below writes: set before each call, so "left a message"
 * means "replaced this one". */
#define SENTINEL "api-null-sentinel"
static void set_sentinel(void) {
  cpdl_dtype_t d;
  assert_int_equal(cpdl_dtype_parse(SENTINEL, &d), CPDL_EDTYPE);
  assert_non_null(strstr(cpdl_last_error(), SENTINEL));
}
static bool new_message(void) {
  const char *m = cpdl_last_error();
  return m[0] != '\0' && strstr(m, SENTINEL) == NULL;
}

#define EXPECT_EARG(call)                                                                        \
  do {                                                                                           \
    set_sentinel();                                                                              \
    int rc_ = (call);                                                                            \
    if (rc_ != CPDL_EARG || !new_message())                                                      \
      fail_msg("%s: returned %d (%s), message '%s'; want CPDL_EARG and a message", #call, rc_,  \
               cpdl_err_name(rc_), cpdl_last_error());                                           \
  } while (0)
#define EXPECT_VALUE(call, want)                                                                 \
  do {                                                                                           \
    set_sentinel();                                                                              \
    long long v_ = (long long)(call);                                                            \
    if (v_ != (long long)(want) || !new_message())                                               \
      fail_msg("%s: returned %lld, message '%s'; want %lld and a message", #call, v_,           \
               cpdl_last_error(), (long long)(want));                                            \
  } while (0)
#define EXPECT_TEXT(call, want)                                                                  \
  do {                                                                                           \
    set_sentinel();                                                                              \
    const char *t_ = (call);                                                                     \
    if (!t_ || strcmp(t_, want) != 0 || !new_message())                                          \
      fail_msg("%s: returned '%s', message '%s'; want '%s' and a message", #call,               \
               t_ ? t_ : "(NULL)", cpdl_last_error(), want);                                     \
  } while (0)
#define EXPECT_NULL(call)                                                                        \
  do {                                                                                           \
    set_sentinel();                                                                              \
    const void *p_ = (call);                                                                     \
    if (p_ || !new_message())                                                                    \
      fail_msg("%s: returned %p, message '%s'; want NULL and a message", #call, p_,             \
               cpdl_last_error());                                                               \
  } while (0)
#define EXPECT_VOID_MESSAGE(call)                                                                \
  do {                                                                                           \
    set_sentinel();                                                                              \
    call;                                                                                        \
    if (!new_message())                                                                          \
      fail_msg("%s: left message '%s'; want a message", #call, cpdl_last_error());             \
  } while (0)

/* ---- every export, one entry each ------------------------------------------ */

typedef void (*check_fn)(void);
typedef struct api_entry {
  const char *name;
  check_fn check;
  bool seen; /* exported by a library (nm) */
} api_entry_t;

/* errors (no pointer arguments: any int is valid) */
static void c_strerror(void) {
  assert_non_null(cpdl_strerror(12345));
  assert_string_equal(cpdl_strerror(CPDL_EARG), "invalid argument or option");
}
static void c_err_name(void) {
  assert_string_equal(cpdl_err_name(CPDL_ERRNO_LAST - 1), "CPDL_UNKNOWN");
  assert_string_equal(cpdl_err_name(CPDL_EEOF), "CPDL_EEOF");
}
static void c_last_error(void) { assert_non_null(cpdl_last_error()); }
/* dtypes and modes */
static void c_dtype_size(void) { assert_int_equal(cpdl_dtype_size(CPDL_DTYPE_COUNT), 0); }
static void c_dtype_name(void) { assert_string_equal(cpdl_dtype_name(CPDL_DTYPE_COUNT), "?"); }
static void c_dtype_parse(void) {
  EXPECT_EARG(cpdl_dtype_parse(NULL, NULL));
  EXPECT_EARG(cpdl_dtype_parse("int64", NULL)); /* never written through */
  cpdl_dtype_t d = CPDL_DTYPE_BOOL;
  set_sentinel();
  assert_int_equal(cpdl_dtype_parse(NULL, &d), CPDL_EDTYPE); /* documented: no name */
  assert_true(new_message());
}
/* the field vocabulary */
static void c_field_info(void) { EXPECT_NULL(cpdl_field_info(CPDL_FIELD_COUNT)); }
static void c_field_name(void) { EXPECT_TEXT(cpdl_field_name(CPDL_FIELD_COUNT), "?"); }
static void c_field_lookup(void) {
  EXPECT_EARG(cpdl_field_lookup(NULL, NULL));
  EXPECT_EARG(cpdl_field_lookup("labels", NULL)); /* never written through */
  cpdl_field_id_t id;
  EXPECT_EARG(cpdl_field_lookup(NULL, &id));
}
static void c_field_role_name(void) { EXPECT_TEXT(cpdl_field_role_name(CPDL_ROLE_COUNT), "?"); }
static void c_mode_name(void) { assert_string_equal(cpdl_mode_name((cpdl_mode_t)99), "?"); }
static void c_mode_parse(void) {
  EXPECT_EARG(cpdl_mode_parse(NULL, NULL));
  EXPECT_EARG(cpdl_mode_parse("thd", NULL));
  cpdl_mode_t m;
  EXPECT_EARG(cpdl_mode_parse(NULL, &m));
}
/* the batch contract */
static void c_prep_params_init(void) { EXPECT_VOID_MESSAGE(cpdl_prep_params_init(NULL)); }
static void c_prep_plan_create(void) {
  EXPECT_EARG(cpdl_prep_plan_create(NULL, 0, NULL, NULL));
  cpdl_prep_plan_t *plan = (cpdl_prep_plan_t *)&plan;
  EXPECT_EARG(cpdl_prep_plan_create(NULL, 0, NULL, &plan));
  assert_null(plan);
  cpdl_prep_params_t params;
  cpdl_prep_params_init(&params);
  EXPECT_EARG(cpdl_prep_plan_create(NULL, 2, &params, &plan));
}
static void c_prep_plan_destroy(void) { cpdl_prep_plan_destroy(NULL); }
static void c_prep_plan_nfields(void) { EXPECT_VALUE(cpdl_prep_plan_nfields(NULL), 0); }
static void c_prep_plan_field(void) { EXPECT_NULL(cpdl_prep_plan_field(NULL, 0)); }
static void c_prep_plan_rank_bytes(void) { EXPECT_VALUE(cpdl_prep_plan_rank_bytes(NULL), 0); }
static void c_prep_plan_shared_bytes(void) { EXPECT_VALUE(cpdl_prep_plan_shared_bytes(NULL), 0); }
static void c_prep_plan_seq_len(void) { EXPECT_VALUE(cpdl_prep_plan_seq_len(NULL), 0); }
static void c_prep_plan_padded_len(void) { EXPECT_VALUE(cpdl_prep_plan_padded_len(NULL), 0); }
static void c_prep_execute(void) {
  EXPECT_EARG(cpdl_prep_execute(NULL, NULL, 0, NULL, 0, NULL, NULL));
}
static void c_prep_execute_part(void) {
  EXPECT_EARG(cpdl_prep_execute_part(NULL, NULL, 0, NULL, 0, NULL, NULL, 0, 1));
}
/* sources */
static void c_source_open(void) {
  EXPECT_EARG(cpdl_source_open(NULL, NULL));
  EXPECT_EARG(cpdl_source_open("synthetic:", NULL));
  cpdl_source_t *src = (cpdl_source_t *)&src;
  EXPECT_EARG(cpdl_source_open(NULL, &src));
  assert_null(src);
}
static void c_source_count(void) { EXPECT_VALUE(cpdl_source_count(NULL), 0); }
static void c_source_eot(void) { EXPECT_VALUE(cpdl_source_eot(NULL), -1); }
static void c_source_read(void) { EXPECT_EARG(cpdl_source_read(NULL, 0, NULL, NULL, NULL)); }
static void c_source_name(void) { EXPECT_TEXT(cpdl_source_name(NULL), "?"); }
static void c_source_description(void) { EXPECT_TEXT(cpdl_source_description(NULL), ""); }
static void c_source_plugin_path(void) { EXPECT_TEXT(cpdl_source_plugin_path(NULL), ""); }
static void c_source_document_count(void) { EXPECT_VALUE(cpdl_source_document_count(NULL), 0); }
static void c_source_batch_count(void) { EXPECT_VALUE(cpdl_source_batch_count(NULL), 0); }
static void c_source_read_batch(void) { EXPECT_EARG(cpdl_source_read_batch(NULL, 0, NULL, NULL)); }
static void c_source_close(void) { cpdl_source_close(NULL); }
/* configuration */
static void c_config_init(void) { EXPECT_VOID_MESSAGE(cpdl_config_init(NULL)); }
static void c_config_set(void) {
  EXPECT_EARG(cpdl_config_set(NULL, NULL, NULL));
  cpdl_config_t cfg;
  cpdl_config_init(&cfg);
  EXPECT_EARG(cpdl_config_set(&cfg, NULL, "1"));
  EXPECT_EARG(cpdl_config_set(&cfg, "cp", NULL));
}
static void c_config_parse(void) {
  EXPECT_EARG(cpdl_config_parse(NULL, NULL));
  cpdl_config_t cfg;
  cpdl_config_init(&cfg);
  assert_int_equal(cpdl_config_parse(&cfg, NULL), 0); /* documented: nothing to apply */
}
static void c_config_from_env(void) { EXPECT_EARG(cpdl_config_from_env(NULL)); }
static void c_config_format(void) { EXPECT_EARG(cpdl_config_format(NULL, NULL, 0)); }
/* the loader */
static void c_loader_open_oob(void) {
  EXPECT_EARG(cpdl_loader_open_oob(NULL, NULL, NULL, NULL));
  cpdl_loader_t *L = (cpdl_loader_t *)&L;
  EXPECT_EARG(cpdl_loader_open_oob(NULL, NULL, NULL, &L));
  assert_null(L);
}
static void c_loader_open(void) { EXPECT_EARG(cpdl_loader_open(MPI_COMM_WORLD, NULL, NULL)); }
static void c_loader_open_mpi(void) {
  EXPECT_EARG(cpdl_loader_open_mpi(MPI_COMM_WORLD, NULL, NULL, NULL));
}
static void c_loader_open_world(void) { EXPECT_EARG(cpdl_loader_open_world(NULL, NULL)); }
static void c_loader_next(void) {
  EXPECT_EARG(cpdl_loader_next(NULL, NULL));
  cpdl_batch_t b;
  EXPECT_EARG(cpdl_loader_next(NULL, &b));
}
static void c_batch_release(void) { EXPECT_EARG(cpdl_batch_release(NULL, NULL)); }
static void c_loader_mesh(void) { EXPECT_EARG(cpdl_loader_mesh(NULL, NULL)); }
static void c_loader_segment_bytes(void) { EXPECT_VALUE(cpdl_loader_segment_bytes(NULL), 0); }
static void c_loader_state_size(void) {
  EXPECT_EARG(cpdl_loader_state_size(NULL, NULL));
  size_t n;
  EXPECT_EARG(cpdl_loader_state_size(NULL, &n));
}
static void c_loader_state_save(void) { EXPECT_EARG(cpdl_loader_state_save(NULL, NULL, 0, NULL)); }
static void c_loader_state_restore(void) { EXPECT_EARG(cpdl_loader_state_restore(NULL, NULL, 0)); }
static void c_loader_close(void) { assert_int_equal(cpdl_loader_close(NULL), 0); }
static void c_loader_mapping_retain(void) { EXPECT_NULL(cpdl_loader_mapping_retain(NULL)); }
static void c_mapping_release(void) { cpdl_mapping_release(NULL); }
static void c_version(void) { assert_string_equal(cpdl_version(), CPDL_VERSION_STRING); }
static void c_host_entry_v1(void) {
  const cpdl_host_api_t *api = cpdl_host_entry_v1();
  assert_non_null(api);
  assert_int_equal(api->abi_version, CPDL_HOST_ABI_VERSION);
  assert_string_equal(api->version, CPDL_VERSION_STRING);
  set_sentinel();
  assert_int_equal(api->loader_next(NULL, NULL), CPDL_EARG);
  assert_true(new_message());
}
/* the device feed (cpdl/device.h) */
static void c_device_feed_open(void) {
  EXPECT_EARG(cpdl_device_feed_open(NULL, NULL, NULL));
  cpdl_device_params_t params = {.struct_size = sizeof params, .prefetch = 1};
  cpdl_device_feed_t *feed = NULL;
  EXPECT_EARG(cpdl_device_feed_open(NULL, &params, &feed));
}
static void c_device_feed_next(void) { EXPECT_EARG(cpdl_device_feed_next(NULL, 0, NULL)); }
static void c_device_feed_close(void) { assert_int_equal(cpdl_device_feed_close(NULL), 0); }
/* the tools' header (cpdl/tools.h) */
static void c_tools_sweep(void) {
  /* remove = 0 never unlinks and a NULL report is allowed: the result is a count. */
  assert_true(cpdl_tools_sweep(0, NULL, NULL) >= 0);
}
static void c_tools_dump_collated(void) { EXPECT_EARG(cpdl_tools_dump_collated(NULL, NULL)); }
static void c_tools_binding_report(void) {
  EXPECT_EARG(cpdl_tools_binding_report(NULL, NULL));
  char *json = (char *)&json;
  EXPECT_EARG(cpdl_tools_binding_report(NULL, &json));
  assert_null(json);
}
static void c_tools_data_shape(void) { EXPECT_EARG(cpdl_tools_data_shape(NULL, NULL, NULL)); }
static void c_tools_memory(void) {
  EXPECT_EARG(cpdl_tools_memory(NULL, NULL));
  cpdl_tools_memory_t mem = {.struct_size = sizeof mem};
  EXPECT_EARG(cpdl_tools_memory(NULL, &mem));
}
static void c_tools_agree_min(void) {
  EXPECT_EARG(cpdl_tools_agree_min(NULL, NULL, 0, NULL));
  int64_t v = 1;
  EXPECT_EARG(cpdl_tools_agree_min(NULL, &v, 1, "the end of the run"));
}
static void c_tools_npy_write(void) {
  EXPECT_EARG(cpdl_tools_npy_write(NULL, CPDL_DTYPE_INT64, 1, NULL, NULL));
}
static void c_tools_mkdirs(void) { EXPECT_EARG(cpdl_tools_mkdirs(NULL)); }
static void c_tools_config_from_env_except(void) {
  EXPECT_EARG(cpdl_tools_config_from_env_except(NULL, NULL, 0));
  cpdl_config_t cfg;
  cpdl_config_init(&cfg);
  EXPECT_EARG(cpdl_tools_config_from_env_except(&cfg, NULL, 1));
}
static void c_tools_error(void) {
  set_sentinel();
  assert_int_equal(cpdl_tools_error(CPDL_EFIELD, "tool says %d", 7), CPDL_EFIELD);
  assert_string_equal(cpdl_last_error(), "tool says 7");
}

#define ENTRY(sym, fn) {"cpdl_" #sym, fn, false}
static api_entry_t api[] = {
    ENTRY(strerror, c_strerror),
    ENTRY(err_name, c_err_name),
    ENTRY(last_error, c_last_error),
    ENTRY(version, c_version),
    ENTRY(dtype_size, c_dtype_size),
    ENTRY(dtype_name, c_dtype_name),
    ENTRY(dtype_parse, c_dtype_parse),
    ENTRY(field_info, c_field_info),
    ENTRY(field_name, c_field_name),
    ENTRY(field_lookup, c_field_lookup),
    ENTRY(field_role_name, c_field_role_name),
    ENTRY(mode_name, c_mode_name),
    ENTRY(mode_parse, c_mode_parse),
    ENTRY(prep_params_init, c_prep_params_init),
    ENTRY(prep_plan_create, c_prep_plan_create),
    ENTRY(prep_plan_destroy, c_prep_plan_destroy),
    ENTRY(prep_plan_nfields, c_prep_plan_nfields),
    ENTRY(prep_plan_field, c_prep_plan_field),
    ENTRY(prep_plan_rank_bytes, c_prep_plan_rank_bytes),
    ENTRY(prep_plan_shared_bytes, c_prep_plan_shared_bytes),
    ENTRY(prep_plan_seq_len, c_prep_plan_seq_len),
    ENTRY(prep_plan_padded_len, c_prep_plan_padded_len),
    ENTRY(prep_execute, c_prep_execute),
    ENTRY(prep_execute_part, c_prep_execute_part),
    ENTRY(source_open, c_source_open),
    ENTRY(source_count, c_source_count),
    ENTRY(source_eot, c_source_eot),
    ENTRY(source_read, c_source_read),
    ENTRY(source_name, c_source_name),
    ENTRY(source_description, c_source_description),
    ENTRY(source_plugin_path, c_source_plugin_path),
    ENTRY(source_document_count, c_source_document_count),
    ENTRY(source_batch_count, c_source_batch_count),
    ENTRY(source_read_batch, c_source_read_batch),
    ENTRY(source_close, c_source_close),
    ENTRY(config_init, c_config_init),
    ENTRY(config_set, c_config_set),
    ENTRY(config_parse, c_config_parse),
    ENTRY(config_from_env, c_config_from_env),
    ENTRY(config_format, c_config_format),
    ENTRY(loader_open_oob, c_loader_open_oob),
    ENTRY(loader_open, c_loader_open),
    ENTRY(loader_open_mpi, c_loader_open_mpi),
    ENTRY(loader_open_world, c_loader_open_world),
    ENTRY(loader_next, c_loader_next),
    ENTRY(batch_release, c_batch_release),
    ENTRY(loader_mesh, c_loader_mesh),
    ENTRY(loader_segment_bytes, c_loader_segment_bytes),
    ENTRY(loader_state_size, c_loader_state_size),
    ENTRY(loader_state_save, c_loader_state_save),
    ENTRY(loader_state_restore, c_loader_state_restore),
    ENTRY(loader_close, c_loader_close),
    ENTRY(loader_mapping_retain, c_loader_mapping_retain),
    ENTRY(mapping_release, c_mapping_release),
    ENTRY(host_entry_v1, c_host_entry_v1),
    ENTRY(device_feed_open, c_device_feed_open),
    ENTRY(device_feed_next, c_device_feed_next),
    ENTRY(device_feed_close, c_device_feed_close),
    ENTRY(tools_sweep, c_tools_sweep),
    ENTRY(tools_dump_collated, c_tools_dump_collated),
    ENTRY(tools_binding_report, c_tools_binding_report),
    ENTRY(tools_data_shape, c_tools_data_shape),
    ENTRY(tools_memory, c_tools_memory),
    ENTRY(tools_agree_min, c_tools_agree_min),
    ENTRY(tools_npy_write, c_tools_npy_write),
    ENTRY(tools_mkdirs, c_tools_mkdirs),
    ENTRY(tools_config_from_env_except, c_tools_config_from_env_except),
    ENTRY(tools_error, c_tools_error),
};
#define N_API ((int)(sizeof api / sizeof api[0]))

static void test_every_function(void **state) {
  (void)state;
  for (int i = 0; i < N_API; i++)
    api[i].check();
}

/* The defined function symbols of a library that start with cpdl_, via nm -D. */
static int exported(const char *lib, char names[][64], int max) {
  char cmd[4200];
  snprintf(cmd, sizeof cmd, "nm -D --defined-only '%s'", lib);
  FILE *p = popen(cmd, "r");
  if (!p)
    fail_msg("cannot run nm on %s", lib);
  char line[512];
  int n = 0;
  while (fgets(line, sizeof line, p)) {
    char addr[64], type[8], name[256];
    if (sscanf(line, "%63s %7s %255s", addr, type, name) != 3 || strncmp(name, "cpdl_", 5) != 0)
      continue;
    char *at = strchr(name, '@'); /* a versioned symbol */
    if (at)
      *at = '\0';
    if (n < max)
      snprintf(names[n++], 64, "%.63s", name);
  }
  int status = pclose(p);
  if (status != 0)
    fail_msg("nm -D %s failed (status %d): is binutils installed?", lib, status);
  return n;
}

static void check_library(const char *lib, bool whole) {
  static char names[256][64];
  int n = exported(lib, names, 256);
  assert_true(n > 0);
  int missing = 0;
  for (int k = 0; k < n; k++) {
    int i = 0;
    while (i < N_API && strcmp(api[i].name, names[k]) != 0)
      i++;
    if (i == N_API) {
      print_error("%s exports %s, which tests/unit/api_null.c does not call: add its check\n",
                  lib, names[k]);
      missing++;
    } else {
      api[i].seen = true;
    }
  }
  assert_int_equal(missing, 0);
  if (!whole)
    return;
  for (int i = 0; i < N_API; i++)
    if (!api[i].seen)
      fail_msg("tests/unit/api_null.c lists %s, which %s does not export", api[i].name, lib);
}

static void test_list_is_every_export(void **state) {
  (void)state;
  check_library(CPDL_TEST_PREP_LIB, false);
  check_library(CPDL_TEST_LIB, true);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_list_is_every_export),
      cmocka_unit_test(test_every_function),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
