/* error.c — error codes, their names and texts, and the thread-local message.
 *
 * The code table is CPDL_ERRNO_MAP in cpdl/prep.h; this file only renders it.
 * Messages are per thread so loader threads and the caller never overwrite
 * each other's explanation.
 */
#include "base.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* Every code of the table lies in the one range (cpdl/prep.h), so the range
 * tells cpdl's codes from -errno values everywhere (here, ring.c, Python). */
#define CPDL__ERR_IN_RANGE(name, value, text)                                            \
  _Static_assert(CPDL_ERRNO_IS_OWN(value), "CPDL_" #name " lies outside "                \
                 "[CPDL_ERRNO_LAST, CPDL_ERRNO_FIRST]");
CPDL_ERRNO_MAP(CPDL__ERR_IN_RANGE)
#undef CPDL__ERR_IN_RANGE

#define CPDL__MSG_MAX 1024
static _Thread_local char last_msg[CPDL__MSG_MAX];

const char *cpdl_strerror(int err) {
  switch (err) {
  case 0: return "success";
#define CPDL__ERR_TEXT(name, value, text) case CPDL_##name: return text;
  CPDL_ERRNO_MAP(CPDL__ERR_TEXT)
#undef CPDL__ERR_TEXT
  default: break;
  }
  if (err < 0 && err > CPDL_ERRNO_FIRST)
    return strerror(-err);
  return "unknown error";
}

const char *cpdl_err_name(int err) {
  switch (err) {
  case 0: return "CPDL_OK";
#define CPDL__ERR_NAME(name, value, text) case CPDL_##name: return "CPDL_" #name;
  CPDL_ERRNO_MAP(CPDL__ERR_NAME)
#undef CPDL__ERR_NAME
  default: break;
  }
  if (err < 0 && err > CPDL_ERRNO_FIRST) {
    const char *name = strerrorname_np(-err);
    if (name)
      return name;
  }
  return "CPDL_UNKNOWN";
}

const char *cpdl_last_error(void) { return last_msg; }

void cpdl__error_clear(void) { last_msg[0] = '\0'; }

int cpdl__error(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_msg, sizeof last_msg, fmt, ap);
  va_end(ap);
  return code;
}

int cpdl__error_prefix(int code, const char *fmt, ...) {
  char prefix[256], old[CPDL__MSG_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  memcpy(old, last_msg, sizeof old);
  /* Truncation is acceptable: the prefix matters more than the tail. */
  size_t n = strnlen(prefix, sizeof prefix - 1);
  memcpy(last_msg, prefix, n);
  size_t at = n;
  if (at + 2 < sizeof last_msg) {
    last_msg[at++] = ':';
    last_msg[at++] = ' ';
  }
  size_t room = sizeof last_msg - 1 - at;
  size_t len = strnlen(old, room);
  memcpy(last_msg + at, old, len);
  last_msg[at + len] = '\0';
  return code;
}

bool cpdl__mul_size(size_t a, size_t b, size_t *out) { return !__builtin_mul_overflow(a, b, out); }
bool cpdl__add_size(size_t a, size_t b, size_t *out) { return !__builtin_add_overflow(a, b, out); }
