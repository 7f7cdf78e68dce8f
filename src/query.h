/* query.h — the one parser of a data-source URI's query, "k=v&k=v" (the text
 * after '?'). Used by the plugin host (source.c: the repeated-key check at
 * open) and behind the host services lent to plugins (query_get, query_int,
 * query_check in include/cpdl/plugin.h). Pure: no allocation, no global
 * state, no thread-local error; messages go into the caller's buffer.
 * Never installed.
 *
 * The grammar, as every caller sees it:
 *  - pieces are separated by '&'; an empty piece ("a=1&&b=2", a trailing
 *    '&') is skipped everywhere;
 *  - a piece's key runs to its first '='; the value is the rest, '='s
 *    included ("split=a=b" has the value "a=b"); a piece without '=' is its
 *    key with an empty value ("flag" reads as "flag=");
 *  - a piece with an empty key ("=5") names nothing: it matches no key and
 *    query_check lets it pass;
 *  - a key given twice is an error at open (cpdl__query_repeated; source.c
 *    refuses the URI), so lookups, which take the first, never see one.
 *  - no decoding: '%', '+' and spaces are bytes of the value.
 * A NULL query is the empty query.
 */
#ifndef CPDL_QUERY_H
#define CPDL_QUERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One piece of a query. key and value point into the query (not
 * NUL-terminated: use the lengths). */
typedef struct cpdl__query_piece {
  const char *key;
  size_t key_len;
  const char *value; /* after the first '='; the end of the piece when it has none */
  size_t value_len;
} cpdl__query_piece_t;

/* The next non-empty piece at *cursor (start with the query itself), or
 * false at the end; *cursor moves past it. */
bool cpdl__query_next(const char **cursor, cpdl__query_piece_t *piece);

/* The value of the first piece whose key is `key`: true and *value set, or
 * false when absent. */
bool cpdl__query_find(const char *query, const char *key, cpdl__query_piece_t *value);

/* The value of `key` copied into buf (NUL-terminated).
 * \return 1 found, 0 absent, CPDL_EARG (-4001) when the value needs more than
 *         buflen - 1 bytes (buf untouched). */
int cpdl__query_get(const char *query, const char *key, char *buf, size_t buflen);

/* The integer value of `key` (strtoll base 0: decimal, 0x hex, 0 octal) in
 * [min, max], or dflt when absent.
 * \return 0, or CPDL_EARG with a message in err naming the key, the value and
 *         the range ("query key 'vocab=x': expected an integer in [2, 4294967296]"),
 *         or saying that the value is too long (more than 63 bytes). */
int cpdl__query_int(const char *query, const char *key, int64_t dflt, int64_t min, int64_t max,
                    int64_t *out, char *err, size_t errlen);

/* Every key of the query is in the NULL-terminated list `known`.
 * \return 0, or CPDL_EARG with "unknown query key 'k' (known: a b c)" in err. */
int cpdl__query_check(const char *query, const char *const *known, char *err, size_t errlen);

/* The first key that occurs twice (its length in *len), or NULL. */
const char *cpdl__query_repeated(const char *query, size_t *len);

#endif /* CPDL_QUERY_H */
