/* dtype.c — element types and preparation modes: sizes, names, parsing, and the float16 /
 * bfloat16 conversions (round to nearest even; NaN stays NaN; overflow goes to infinity). */
#include "base.h"

#include <math.h>
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
  if (!out)
    return cpdl__error(CPDL_EARG, "cpdl_dtype_parse: out is NULL");
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

static const char *const modes[] = {"contiguous", "round_robin", "aux_only", "thd"};
#define N_MODES (int)(sizeof modes / sizeof modes[0])

const char *cpdl_mode_name(cpdl_mode_t mode) {
  return (unsigned)mode < (unsigned)N_MODES ? modes[mode] : "?";
}

int cpdl_mode_parse(const char *name, cpdl_mode_t *out) {
  if (!out)
    return cpdl__error(CPDL_EARG, "cpdl_mode_parse: out is NULL");
  for (int i = 0; i < N_MODES; i++) {
    if (name && strcmp(name, modes[i]) == 0) {
      *out = (cpdl_mode_t)i;
      return 0;
    }
  }
  return cpdl__error(CPDL_EARG, "unknown mode '%s' (expected contiguous, round_robin, aux_only or thd)",
                     name ? name : "(null)");
}

/* ---- half-precision conversion ------------------------------------------- */

uint16_t cpdl__dtype_f32_to_f16(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof x);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t exp = (x >> 23) & 0xffu;
  uint32_t man = x & 0x7fffffu;
  if (exp == 0xff)
    return (uint16_t)(sign | 0x7c00u | (man ? 0x200u : 0));
  int32_t e = (int32_t)exp - 127 + 15;
  if (e >= 31)
    return (uint16_t)(sign | 0x7c00u);
  if (e <= 0) { /* half subnormal (or zero): value = man24 >> (14 - e) units of 2^-24 */
    if (e < -10)
      return (uint16_t)sign;
    man |= 0x800000u;
    uint32_t shift = (uint32_t)(14 - e);
    uint32_t h = man >> shift, rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1)))
      h++;
    return (uint16_t)(sign | h);
  }
  uint32_t h = ((uint32_t)e << 10) | (man >> 13), rem = man & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1)))
    h++; /* a carry into the exponent is the correct rounding, up to infinity */
  return (uint16_t)(sign | h);
}

float cpdl__dtype_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, x;
  if (exp == 0) {
    float v = ldexpf((float)man, -24);
    return sign ? -v : v;
  }
  if (exp == 31)
    x = sign | 0x7f800000u | (man << 13);
  else
    x = sign | ((exp + 112) << 23) | (man << 13);
  float f;
  memcpy(&f, &x, sizeof f);
  return f;
}

uint16_t cpdl__dtype_f32_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof x);
  if ((x & 0x7fffffffu) > 0x7f800000u)
    return (uint16_t)((x >> 16) | 0x40u); /* keep NaN a (quiet) NaN */
  x += 0x7fffu + ((x >> 16) & 1u);        /* round to nearest even */
  return (uint16_t)(x >> 16);
}

float cpdl__dtype_bf16_to_f32(uint16_t h) {
  uint32_t x = (uint32_t)h << 16;
  float f;
  memcpy(&f, &x, sizeof f);
  return f;
}
