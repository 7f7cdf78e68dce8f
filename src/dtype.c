/* dtype.c — element types and preparation modes: sizes, names, parsing. */
#include "internal.h"

#include <string.h>

static const struct {
  const char *name;
  size_t size;
} dtypes[CPDL_DTYPE_COUNT] = {
    [CPDL_DTYPE_BOOL] = {"bool", 1},         [CPDL_DTYPE_UINT8] = {"uint8", 1},
    [CPDL_DTYPE_INT32] = {"int32", 4},       [CPDL_DTYPE_INT64] = {"int64", 8},
    [CPDL_DTYPE_FLOAT16] = {"float16", 2},   [CPDL_DTYPE_BFLOAT16] = {"bfloat16", 2},
    [CPDL_DTYPE_FLOAT32] = {"float32", 4},   [CPDL_DTYPE_FLOAT64] = {"float64", 8},
};

size_t cpdl_dtype_size(cpdl_dtype_t dtype) {
  return (unsigned)dtype < CPDL_DTYPE_COUNT ? dtypes[dtype].size : 0;
}

const char *cpdl_dtype_name(cpdl_dtype_t dtype) {
  return (unsigned)dtype < CPDL_DTYPE_COUNT ? dtypes[dtype].name : "?";
}

int cpdl_dtype_parse(const char *name, cpdl_dtype_t *out) {
  for (int i = 0; i < CPDL_DTYPE_COUNT; i++) {
    if (name && strcmp(name, dtypes[i].name) == 0) {
      *out = (cpdl_dtype_t)i;
      return 0;
    }
  }
  return cpdl__error(CPDL_EDTYPE,
                     "unknown dtype '%s' (expected bool, uint8, int32, int64, float16, "
                     "bfloat16, float32 or float64)",
                     name ? name : "(null)");
}

static const char *const modes[] = {"contiguous", "round_robin", "aux_only"};

const char *cpdl_mode_name(cpdl_mode_t mode) {
  return (unsigned)mode < 3 ? modes[mode] : "?";
}

int cpdl_mode_parse(const char *name, cpdl_mode_t *out) {
  for (int i = 0; i < 3; i++) {
    if (name && strcmp(name, modes[i]) == 0) {
      *out = (cpdl_mode_t)i;
      return 0;
    }
  }
  return cpdl__error(CPDL_EARG, "unknown mode '%s' (expected contiguous, round_robin or aux_only)",
                     name ? name : "(null)");
}
