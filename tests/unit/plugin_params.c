/* plugin_params.c — a test plugin that reports what the host lent it at
 * open, for test_source.c: sample 0 is five int64 tokens {opened through
 * open_params, params given, params->struct_size, seed, seq_len} (seed and
 * seq_len through CPDL_SOURCE_PARAM, defaults 1234 and -7), so a test sees
 * both the host's side and what a plugin reading past the host's struct
 * gets. Built twice: CPDL_PARAMS_OLD=0 as cpdl-params.so, and
 * CPDL_PARAMS_OLD=1 as cpdl-oldparams.so, a plugin built before
 * open_params existed (its struct_size ends at `length`), which the host
 * must open through open() alone. consumed= is returned by consumed() when
 * the descriptor has it (a global-order source's start).
 */
#include "cpdl/plugin.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct {
  int64_t report[5];
  int64_t consumed;
} params_state_t;

static int open_common(const cpdl_source_host_t *host, int via_params,
                       const cpdl_source_params_t *params, const char *query, void **state,
                       char *err, size_t errlen) {
  static const char *const known[] = {"consumed", NULL};
  int rc = host->query_check(query, known, err, errlen);
  if (rc)
    return rc;
  params_state_t *s = calloc(1, sizeof *s);
  if (!s) {
    snprintf(err, errlen, "params: out of memory");
    return -12;
  }
  if ((rc = host->query_int(query, "consumed", 0, -100, 100, &s->consumed, err, errlen))) {
    free(s);
    return rc;
  }
  s->report[0] = via_params;
  s->report[1] = params != NULL;
  s->report[2] = params ? (int64_t)params->struct_size : 0;
  s->report[3] = (int64_t)CPDL_SOURCE_PARAM(params, seed, UINT64_C(1234));
  s->report[4] = CPDL_SOURCE_PARAM(params, seq_len, INT64_C(-7));
  *state = s;
  return 0;
}

static int p_open(const cpdl_source_host_t *host, const char *path, const char *query,
                  void **state, char *err, size_t errlen) {
  (void)path;
  return open_common(host, 0, NULL, query, state, err, errlen);
}

#if !CPDL_PARAMS_OLD
static int p_open_params(const cpdl_source_host_t *host, const cpdl_source_params_t *params,
                         const char *path, const char *query, void **state, char *err,
                         size_t errlen) {
  (void)path;
  return open_common(host, 1, params, query, state, err, errlen);
}
#endif

static int64_t p_count(void *state) { (void)state; return 1; }

static int p_read(void *state, int64_t i, const void **tokens, int64_t *n, int *token_bytes,
                  char *err, size_t errlen) {
  (void)i, (void)err, (void)errlen;
  *tokens = ((params_state_t *)state)->report;
  *n = 5;
  *token_bytes = 8;
  return 0;
}

static void p_close(void *state) { free(state); }

static int p_read_row(void *state, int64_t i, int64_t width, int64_t *input_ids, int64_t *labels,
                      float *loss_mask, int64_t *position_ids, char *err, size_t errlen) {
  (void)state, (void)i, (void)width, (void)input_ids, (void)labels, (void)loss_mask;
  (void)position_ids;
  snprintf(err, errlen, "params: no rows");
  return CPDL_SOURCE_ESOURCE;
}

static int64_t p_consumed(void *state) { return ((params_state_t *)state)->consumed; }

static const cpdl_source_plugin_t descriptor = {
  .abi_version = CPDL_SOURCE_ABI_VERSION,
#if CPDL_PARAMS_OLD
  .struct_size = offsetof(cpdl_source_plugin_t, open_params),
  .name = "oldparams",
#else
  .struct_size = sizeof(cpdl_source_plugin_t),
  .name = "params",
  .open_params = p_open_params,
#endif
  .description = "reports the parameters it was opened with",
  .flags = CPDL_SOURCE_GLOBAL_ORDER,
  .open = p_open,
  .count = p_count,
  .read = p_read,
  .close = p_close,
  .read_row = p_read_row,
  /* set even in the old build: a host must not read past struct_size */
  .consumed = p_consumed,
};

CPDL_SOURCE_PLUGIN_EXPORT const cpdl_source_plugin_t *cpdl_source_plugin_v1(void) {
  return &descriptor;
}
