/* query.c — the one parser of "k=v&k=v" queries (grammar in query.h).
 * Everything walks the query with cpdl__query_next, so a lookup, the
 * unknown-key check and the repeated-key check cannot disagree on where a
 * piece, a key or a value ends. Pure and reentrant: plugins call it from
 * their open() through the host table, possibly on several threads.
 */
#include "query.h"

#include "cpdl/plugin.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Long enough for any int64 in any base strtoll accepts, with a sign. */
#define INT_TEXT_MAX 64

bool cpdl__query_next(const char **cursor, cpdl__query_piece_t *piece) {
  const char *p = *cursor;
  while (p && *p == '&')
    p++; /* empty pieces name nothing */
  if (!p || !*p) {
    *cursor = p;
    return false;
  }
  const char *end = strchr(p, '&');
  size_t len = end ? (size_t)(end - p) : strlen(p);
  const char *eq = memchr(p, '=', len);
  piece->key = p;
  piece->key_len = eq ? (size_t)(eq - p) : len;
  piece->value = eq ? eq + 1 : p + len;
  piece->value_len = eq ? len - piece->key_len - 1 : 0;
  *cursor = p + len;
  return true;
}

static bool key_is(const cpdl__query_piece_t *piece, const char *key, size_t key_len) {
  return piece->key_len == key_len && memcmp(piece->key, key, key_len) == 0;
}

bool cpdl__query_find(const char *query, const char *key, cpdl__query_piece_t *value) {
  size_t key_len = strlen(key);
  cpdl__query_piece_t piece;
  for (const char *p = query; cpdl__query_next(&p, &piece);)
    if (piece.key_len > 0 && key_is(&piece, key, key_len)) {
      *value = piece;
      return true;
    }
  return false;
}

int cpdl__query_get(const char *query, const char *key, char *buf, size_t buflen) {
  cpdl__query_piece_t piece;
  if (!cpdl__query_find(query, key, &piece))
    return 0;
  if (piece.value_len + 1 > buflen)
    return CPDL_SOURCE_EARG;
  memcpy(buf, piece.value, piece.value_len);
  buf[piece.value_len] = '\0';
  return 1;
}

int cpdl__query_int(const char *query, const char *key, int64_t dflt, int64_t min, int64_t max,
                    int64_t *out, char *err, size_t errlen) {
  char buf[INT_TEXT_MAX];
  int found = cpdl__query_get(query, key, buf, sizeof buf);
  if (found < 0) {
    snprintf(err, errlen, "query key '%s': value too long", key);
    return CPDL_SOURCE_EARG;
  }
  if (!found) {
    *out = dflt;
    return 0;
  }
  char *end;
  errno = 0;
  long long v = strtoll(buf, &end, 0);
  if (buf[0] == '\0' || *end != '\0' || errno || v < min || v > max) {
    snprintf(err, errlen, "query key '%s=%s': expected an integer in [%" PRId64 ", %" PRId64 "]",
             key, buf, min, max);
    return CPDL_SOURCE_EARG;
  }
  *out = v;
  return 0;
}

int cpdl__query_check(const char *query, const char *const *known, char *err, size_t errlen) {
  cpdl__query_piece_t piece;
  for (const char *p = query; cpdl__query_next(&p, &piece);) {
    bool ok = piece.key_len == 0; /* "=5" names no key */
    for (int k = 0; !ok && known[k]; k++)
      ok = key_is(&piece, known[k], strlen(known[k]));
    if (ok)
      continue;
    size_t n = (size_t)snprintf(err, errlen, "unknown query key '%.*s' (known:",
                                (int)piece.key_len, piece.key);
    for (int k = 0; known[k] && n < errlen; k++)
      n += (size_t)snprintf(err + n, errlen - n, " %s", known[k]);
    if (n < errlen)
      snprintf(err + n, errlen - n, ")");
    return CPDL_SOURCE_EARG;
  }
  return 0;
}

const char *cpdl__query_repeated(const char *query, size_t *len) {
  cpdl__query_piece_t piece, later;
  for (const char *p = query; cpdl__query_next(&p, &piece);) {
    if (piece.key_len == 0)
      continue;
    for (const char *q = p; cpdl__query_next(&q, &later);)
      if (key_is(&later, piece.key, piece.key_len)) {
        *len = piece.key_len;
        return piece.key;
      }
  }
  return NULL;
}
