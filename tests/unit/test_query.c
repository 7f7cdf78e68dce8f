/* test_query.c — the one parser of "k=v&k=v" queries (src/query.h): pieces,
 * keys and values as the grammar in query.h states them, the empty query,
 * repeated keys (found, so that the host refuses them), values holding '=',
 * pieces without '=', values too long for the caller's buffer, integers and
 * their ranges, and the unknown-key message. Pure: no plugin, no file.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "cpdl/plugin.h"
#include "query.h"

static const char *const known[] = {"seed", "vocab", "split", NULL};

/* Fail unless err holds needle; prints both on failure. */
static void assert_has(const char *err, const char *needle) {
  if (!strstr(err, needle)) {
    print_error("message \"%s\" lacks \"%s\"\n", err, needle);
    fail();
  }
}

/* The pieces of q as "key=value|key=value|" (every piece, in order). */
static void pieces(const char *q, char *out, size_t size) {
  size_t n = 0;
  out[0] = '\0';
  cpdl__query_piece_t p;
  for (const char *c = q; cpdl__query_next(&c, &p);)
    n += (size_t)snprintf(out + n, size - n, "%.*s=%.*s|", (int)p.key_len, p.key,
                          (int)p.value_len, p.value);
}

static void test_empty(void **state) {
  (void)state;
  char buf[16] = "untouched", err[128] = "";
  int64_t v = 0;
  size_t len = 0;
  cpdl__query_piece_t p;
  for (int k = 0; k < 4; k++) {
    /* NULL, "" and queries of empty pieces alone are all the empty query */
    const char *q = (const char *[]){NULL, "", "&", "&&&"}[k];
    const char *c = q;
    assert_false(cpdl__query_next(&c, &p));
    assert_false(cpdl__query_find(q, "seed", &p));
    assert_int_equal(cpdl__query_get(q, "seed", buf, sizeof buf), 0);
    assert_string_equal(buf, "untouched");
    assert_int_equal(cpdl__query_int(q, "seed", 42, 0, 100, &v, err, sizeof err), 0);
    assert_int_equal(v, 42);
    assert_int_equal(cpdl__query_check(q, known, err, sizeof err), 0);
    assert_null(cpdl__query_repeated(q, &len));
  }
}

static void test_pieces(void **state) {
  (void)state;
  char out[256];
  /* empty pieces are skipped; '=' in a value belongs to the value */
  pieces("a=1&&b=2&", out, sizeof out);
  assert_string_equal(out, "a=1|b=2|");
  pieces("split=969,30,1&x=a=b==", out, sizeof out);
  assert_string_equal(out, "split=969,30,1|x=a=b==|");
  /* no '=': the key, with an empty value; "=5": an empty key */
  pieces("flag&=5&k=", out, sizeof out);
  assert_string_equal(out, "flag=|=5|k=|");
  /* no decoding */
  pieces("p=%2F+x y", out, sizeof out);
  assert_string_equal(out, "p=%2F+x y|");
}

static void test_get(void **state) {
  (void)state;
  char buf[16];
  const char *q = "seed=7&seeds=8&vocab&split=a=b&=9";
  assert_int_equal(cpdl__query_get(q, "seed", buf, sizeof buf), 1);
  assert_string_equal(buf, "7");
  assert_int_equal(cpdl__query_get(q, "seeds", buf, sizeof buf), 1);
  assert_string_equal(buf, "8");
  assert_int_equal(cpdl__query_get(q, "see", buf, sizeof buf), 0); /* keys match whole */
  assert_int_equal(cpdl__query_get(q, "vocab", buf, sizeof buf), 1);
  assert_string_equal(buf, "");
  assert_int_equal(cpdl__query_get(q, "split", buf, sizeof buf), 1);
  assert_string_equal(buf, "a=b");
  assert_int_equal(cpdl__query_get(q, "", buf, sizeof buf), 0); /* "=9" names nothing */
  assert_int_equal(cpdl__query_get(q, "9", buf, sizeof buf), 0); /* values are not keys */
  /* the first of a repeated key (the host refuses such a URI before any lookup) */
  assert_int_equal(cpdl__query_get("k=1&k=2", "k", buf, sizeof buf), 1);
  assert_string_equal(buf, "1");
}

static void test_overlong(void **state) {
  (void)state;
  char buf[4] = "xyz";
  /* exactly fits: 3 bytes and the NUL */
  assert_int_equal(cpdl__query_get("k=abc", "k", buf, sizeof buf), 1);
  assert_string_equal(buf, "abc");
  /* one byte more: refused, buf untouched */
  assert_int_equal(cpdl__query_get("k=abcd", "k", buf, sizeof buf), CPDL_SOURCE_EARG);
  assert_string_equal(buf, "abc");
  assert_int_equal(cpdl__query_get("k=", "k", NULL, 0), CPDL_SOURCE_EARG); /* no room for the NUL */
  assert_int_equal(cpdl__query_get("j=1", "k", NULL, 0), 0);               /* absent needs none */
  /* an integer's text is at most 63 bytes */
  char q[128], err[128] = "";
  int64_t v = -1;
  snprintf(q, sizeof q, "n=%063d", 5);
  assert_int_equal(cpdl__query_int(q, "n", 0, 0, 10, &v, err, sizeof err), 0);
  assert_int_equal(v, 5);
  snprintf(q, sizeof q, "n=%064d", 5);
  assert_int_equal(cpdl__query_int(q, "n", 0, 0, 10, &v, err, sizeof err), CPDL_SOURCE_EARG);
  assert_has(err, "query key 'n': value too long");
}

static void test_int(void **state) {
  (void)state;
  char err[128];
  int64_t v;
  struct {
    const char *q;
    int64_t want;
  } good[] = {{"n=10", 10}, {"n=0x10", 16}, {"n=010", 8}, {"n=-5", -5}, {"n=+3", 3},
              {"n=-9223372036854775808", INT64_MIN}, {"n=9223372036854775807", INT64_MAX}};
  for (size_t k = 0; k < sizeof good / sizeof good[0]; k++) {
    assert_int_equal(cpdl__query_int(good[k].q, "n", 0, INT64_MIN, INT64_MAX, &v, err, sizeof err), 0);
    assert_true(v == good[k].want);
  }
  const char *bad[] = {"n=", "n", "n=5x", "n=x", "n= ", "n=9223372036854775808", "n=1e3"};
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
    err[0] = '\0';
    v = 77;
    assert_int_equal(cpdl__query_int(bad[k], "n", 0, INT64_MIN, INT64_MAX, &v, err, sizeof err),
                     CPDL_SOURCE_EARG);
    assert_int_equal(v, 77); /* untouched on error */
    assert_has(err, "query key 'n=");
    assert_has(err, "expected an integer in [-9223372036854775808, 9223372036854775807]");
  }
  /* the range is the caller's */
  assert_int_equal(cpdl__query_int("vocab=1", "vocab", 0, 2, 100, &v, err, sizeof err),
                   CPDL_SOURCE_EARG);
  assert_has(err, "query key 'vocab=1': expected an integer in [2, 100]");
  assert_int_equal(cpdl__query_int("vocab=101", "vocab", 0, 2, 100, &v, err, sizeof err),
                   CPDL_SOURCE_EARG);
  assert_int_equal(cpdl__query_int("vocab=100", "vocab", 0, 2, 100, &v, err, sizeof err), 0);
  assert_int_equal(v, 100);
}

static void test_repeated(void **state) {
  (void)state;
  size_t len = 0;
  const char *q = "seed=1&vocab=2&seed=3";
  const char *dup = cpdl__query_repeated(q, &len);
  assert_ptr_equal(dup, q);
  assert_int_equal(len, 4);
  /* with or without '=', and the first key given twice is the one named */
  q = "a=1&vocab&b=2&b&vocab=3";
  dup = cpdl__query_repeated(q, &len);
  assert_non_null(dup);
  assert_int_equal(len, 5);
  assert_memory_equal(dup, "vocab", 5);
  /* prefixes, values and empty keys are not repeats */
  assert_null(cpdl__query_repeated("ab=1&a=2&abc=3", &len));
  assert_null(cpdl__query_repeated("a=b&b=a", &len));
  assert_null(cpdl__query_repeated("=1&=2&&", &len));
}

static void test_check(void **state) {
  (void)state;
  char err[128] = "";
  assert_int_equal(cpdl__query_check("seed=1&&vocab=2&split=a=b&=5&", known, err, sizeof err), 0);
  assert_int_equal(cpdl__query_check("seed=1&zz=2&yy", known, err, sizeof err), CPDL_SOURCE_EARG);
  assert_string_equal(err, "unknown query key 'zz' (known: seed vocab split)");
  assert_int_equal(cpdl__query_check("seedx", known, err, sizeof err), CPDL_SOURCE_EARG);
  assert_string_equal(err, "unknown query key 'seedx' (known: seed vocab split)");
  /* a small buffer gets a truncated, terminated message */
  char small[20];
  memset(small, 'x', sizeof small);
  assert_int_equal(cpdl__query_check("zz=1", known, small, sizeof small), CPDL_SOURCE_EARG);
  assert_int_equal(strlen(small), sizeof small - 1);
  assert_memory_equal(small, "unknown query key '", 19);
  /* no known keys at all */
  static const char *const none[] = {NULL};
  assert_int_equal(cpdl__query_check("", none, err, sizeof err), 0);
  assert_int_equal(cpdl__query_check("a=1", none, err, sizeof err), CPDL_SOURCE_EARG);
  assert_string_equal(err, "unknown query key 'a' (known:)");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_empty),    cmocka_unit_test(test_pieces), cmocka_unit_test(test_get),
      cmocka_unit_test(test_overlong), cmocka_unit_test(test_int),    cmocka_unit_test(test_repeated),
      cmocka_unit_test(test_check),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
