/* test_source.c — the plugin host (URI parsing, discovery, ABI checks, error
 * texts) and the synthetic plugin (determinism, EOT placement, length
 * distributions, query validation). CTest sets CPDL_PLUGIN_PATH to the build
 * tree's plugin directory; CPDL_TEST_PLUGIN_DIR holds deliberately broken
 * plugins built from tests/unit/plugin_broken.c.
 */
#include "source_test_util.h"

/* Copy sample i out (synthetic buffers live only until the next read). */
static uint32_t *read_copy(cpdl__source_t *src, int64_t i, int64_t *n) {
  cpdl__sample_t s;
  assert_int_equal(cpdl__source_read(src, i, &s), 0);
  assert_int_equal(s.token_bytes, 4);
  assert_true(s.n_tokens >= 1);
  uint32_t *copy = malloc((size_t)s.n_tokens * 4);
  assert_non_null(copy);
  memcpy(copy, s.tokens, (size_t)s.n_tokens * 4);
  *n = s.n_tokens;
  return copy;
}

static void test_synthetic_defaults(void **state) {
  (void)state;
  cpdl__source_t *src = open_ok("synthetic:");
  assert_string_equal(cpdl__source_name(src), "synthetic");
  assert_int_equal(cpdl__source_count(src), 1000000);
  assert_int_equal(cpdl__source_eot(src), 50256);
  assert_false(cpdl__source_has_batches(src));
  assert_false(cpdl__source_stable(src));
  assert_int_equal(cpdl__source_document_count(src), 1000000);
  for (int64_t i = 0; i < 50; i++) {
    int64_t n;
    uint32_t *t = read_copy(src, i * 9973, &n);
    assert_int_equal(t[n - 1], 50256);
    for (int64_t j = 0; j + 1 < n; j++) {
      assert_true(t[j] < 50257);
      assert_int_not_equal(t[j], 50256);
    }
    free(t);
  }
  cpdl__sample_t s;
  assert_int_equal(cpdl__source_read(src, 1000000, &s), CPDL_EARG);
  assert_int_equal(cpdl__source_read(src, -1, &s), CPDL_EARG);
  cpdl__source_close(src);
}

static void test_synthetic_deterministic(void **state) {
  (void)state;
  const char *uri = "synthetic:?seed=77&vocab=1000&eot=999&samples=100&mean=64&max=512";
  cpdl__source_t *a = open_ok(uri), *b = open_ok(uri);
  cpdl__source_t *c = open_ok("synthetic:?seed=78&vocab=1000&eot=999&samples=100&mean=64&max=512");
  int64_t differ = 0;
  /* read b in reverse order: content depends on the index only */
  for (int64_t i = 0; i < 100; i++) {
    int64_t na, nb, nc;
    uint32_t *ta = read_copy(a, i, &na);
    uint32_t *tb = read_copy(b, 99 - i, &nb);
    uint32_t *tb2 = read_copy(b, i, &nb);
    uint32_t *tc = read_copy(c, i, &nc);
    assert_int_equal(na, nb);
    assert_memory_equal(ta, tb2, (size_t)na * 4);
    if (na != nc || memcmp(ta, tc, (size_t)na * 4) != 0)
      differ++;
    for (int64_t j = 0; j < na; j++)
      assert_true(ta[j] < 1000);
    assert_int_equal(ta[na - 1], 999);
    free(ta);
    free(tb);
    free(tb2);
    free(tc);
  }
  assert_true(differ >= 99); /* another seed gives other documents */
  cpdl__source_close(a);
  cpdl__source_close(b);
  cpdl__source_close(c);
}

static void test_synthetic_lengths(void **state) {
  (void)state;
  cpdl__source_t *fixed = open_ok("synthetic:?dist=fixed&mean=37&samples=20");
  for (int64_t i = 0; i < 20; i++) {
    cpdl__sample_t s;
    assert_int_equal(cpdl__source_read(fixed, i, &s), 0);
    assert_int_equal(s.n_tokens, 37);
  }
  cpdl__source_close(fixed);

  cpdl__source_t *uni = open_ok("synthetic:?dist=uniform&min=10&max=20&mean=15&samples=2000");
  int64_t seen_min = 1 << 30, seen_max = 0;
  for (int64_t i = 0; i < 2000; i++) {
    cpdl__sample_t s;
    assert_int_equal(cpdl__source_read(uni, i, &s), 0);
    assert_true(s.n_tokens >= 10 && s.n_tokens <= 20);
    seen_min = s.n_tokens < seen_min ? s.n_tokens : seen_min;
    seen_max = s.n_tokens > seen_max ? s.n_tokens : seen_max;
  }
  assert_int_equal(seen_min, 10);
  assert_int_equal(seen_max, 20);
  cpdl__source_close(uni);

  cpdl__source_t *ex = open_ok("synthetic:?dist=exp&mean=200&min=1&max=100000&samples=20000");
  double sum = 0;
  for (int64_t i = 0; i < 20000; i++) {
    cpdl__sample_t s;
    assert_int_equal(cpdl__source_read(ex, i, &s), 0);
    sum += (double)s.n_tokens;
  }
  double mean = sum / 20000;
  assert_true(mean > 190 && mean < 210);
  cpdl__source_close(ex);
}

static void test_synthetic_bad_query(void **state) {
  (void)state;
  expect_open_error("synthetic:?seed=1&colour=red", CPDL_EARG, "unknown query key 'colour'",
                    "vocab", NULL);
  expect_open_error("synthetic:?dist=normal", CPDL_EARG, "dist=normal", NULL, NULL);
  expect_open_error("synthetic:?vocab=abc", CPDL_EARG, "'vocab=abc'", NULL, NULL);
  expect_open_error("synthetic:?min=10&max=5", CPDL_EARG, "min <= max", NULL, NULL);
  expect_open_error("synthetic:?min=10&max=50&mean=60", CPDL_EARG, "min <= mean <= max", NULL,
                    NULL);
  /* the default mean (1024) is clamped into explicit bounds */
  cpdl__source_t *src = open_ok("synthetic:?min=10&max=50&samples=100");
  for (int64_t i = 0; i < 100; i++) {
    cpdl__sample_t s;
    assert_int_equal(cpdl__source_read(src, i, &s), 0);
    assert_true(s.n_tokens >= 10 && s.n_tokens <= 50);
  }
  cpdl__source_close(src);
  expect_open_error("synthetic:/some/path", CPDL_EARG, "takes no path", NULL, NULL);
}

static void test_uri_errors(void **state) {
  (void)state;
  expect_open_error("", CPDL_EARG, "empty", NULL, NULL);
  expect_open_error("/data/no/scheme", CPDL_EARG, "no scheme", NULL, NULL);
  expect_open_error("Bad$cheme:x", CPDL_EARG, "scheme may hold only", NULL, NULL);
  /* the known schemes are listed */
  expect_open_error("parquet:/data/x", CPDL_EPLUGIN, "unknown data source scheme 'parquet'",
                    "cpdl-parquet.so", "synthetic");
  assert_msg_contains("CPDL_PLUGIN_PATH");
  /* a key given twice is ambiguous: refused, naming it */
  expect_open_error("synthetic:?seed=1&seed=2", CPDL_EARG, "query key 'seed'", "more than once",
                    NULL);
  expect_open_error("synthetic:?vocab=9&samples=3&vocab", CPDL_EARG, "'vocab'", NULL, NULL);
}

static void test_public_api(void **state) {
  (void)state;
  cpdl_source_t *src = NULL;
  assert_int_equal(cpdl_source_open("synthetic:?samples=5&dist=fixed&mean=8", &src), 0);
  assert_int_equal(cpdl_source_count(src), 5);
  assert_int_equal(cpdl_source_eot(src), 50256);
  const void *tokens;
  int64_t n;
  int tb;
  assert_int_equal(cpdl_source_read(src, 4, &tokens, &n, &tb), 0);
  assert_int_equal(n, 8);
  assert_int_equal(tb, 4);
  assert_int_equal(((const uint32_t *)tokens)[7], 50256);
  assert_int_equal(cpdl_source_read(src, 5, &tokens, &n, &tb), CPDL_EARG);
  cpdl_source_close(src);
  cpdl_source_close(NULL);
  /* Counts are never error codes: a NULL source counts 0 and says why. */
  cpdl__error_clear();
  assert_int_equal(cpdl_source_count(NULL), 0);
  assert_msg_contains("cpdl_source_count: the source is NULL");
  assert_int_equal(cpdl_source_document_count(NULL), 0);
  assert_int_equal(cpdl_source_batch_count(NULL), 0);
  assert_int_equal(cpdl_source_eot(NULL), -1);
}

/* Plugin search path: a directory listed first shadows later ones; broken
 * plugins give their specific errors. */
static char tmpdir[256];

static void test_plugin_path(void **state) {
  (void)state;
  const char *orig = getenv("CPDL_PLUGIN_PATH");
  char *saved = orig ? strdup(orig) : NULL;
  assert_int_equal(tmpdir_create(tmpdir, sizeof tmpdir, "source"), 0);
  char path[512], env[1024];

  /* not an ELF file: dlopen's own text is passed on */
  snprintf(path, sizeof path, "%s/cpdl-garbage.so", tmpdir);
  write_file(path, "wb", "not a shared object", 19);
  snprintf(env, sizeof env, "%s:%s", tmpdir, saved ? saved : "");
  setenv("CPDL_PLUGIN_PATH", env, 1);

  expect_open_error("garbage:x", CPDL_EPLUGIN, "cannot be loaded", "cpdl-garbage.so", NULL);
  /* the unknown-scheme listing includes what the extra dir holds */
  expect_open_error("nothere:x", CPDL_EPLUGIN, "garbage", "synthetic", NULL);
  char list[512];
  assert_true(cpdl__source_list(list, sizeof list) >= 2);

#ifdef CPDL_TEST_PLUGIN_DIR
  snprintf(env, sizeof env, "%s:%s", CPDL_TEST_PLUGIN_DIR, saved ? saved : "");
  setenv("CPDL_PLUGIN_PATH", env, 1);
  expect_open_error("badabi:x", CPDL_EPLUGIN, "ABI version 99", "version 1", NULL);
  expect_open_error("small:x", CPDL_EPLUGIN, "struct_size 8", NULL, NULL);
  expect_open_error("misnamed:x", CPDL_EPLUGIN, "names itself 'other'", NULL, NULL);
  expect_open_error("nosym:x", CPDL_EPLUGIN, "no entry symbol 'cpdl_source_plugin_v1'", NULL,
                    NULL);
#endif

  if (saved) {
    setenv("CPDL_PLUGIN_PATH", saved, 1);
    free(saved);
  } else {
    unsetenv("CPDL_PLUGIN_PATH");
  }
  (void)tmpdir_remove(tmpdir); /* best effort: cleanup is not under test */
}

/* The loader's parameters through the plugin ABI: the URI is never
 * rewritten; a key in the URI wins over the parameter; a member past the
 * host's struct_size reads as the plugin's default; a plugin built before
 * open_params is opened through open(). */
static const int64_t *read_report(cpdl__source_t *src) {
  cpdl__sample_t s;
  assert_int_equal(cpdl__source_read(src, 0, &s), 0);
  assert_int_equal(s.n_tokens, 5);
  assert_int_equal(s.token_bytes, 8);
  return s.tokens;
}

static cpdl__source_t *open_params_ok(const char *uri, const cpdl_source_params_t *params) {
  cpdl__source_t *src = NULL;
  int rc = cpdl__source_open(uri, params, &src);
  if (rc)
    print_error("open %s: %s\n", uri, cpdl_last_error());
  assert_int_equal(rc, 0);
  return src;
}

/* Every sample of a and b alike (synthetic, uint32 tokens). */
static void assert_same_samples(cpdl__source_t *a, cpdl__source_t *b, bool same) {
  int64_t differ = 0, n = cpdl__source_count(a);
  assert_int_equal(cpdl__source_count(b), n);
  for (int64_t i = 0; i < n; i++) {
    int64_t na, nb;
    uint32_t *ta = read_copy(a, i, &na), *tb = read_copy(b, i, &nb);
    differ += na != nb || memcmp(ta, tb, (size_t)na * 4) != 0;
    free(ta);
    free(tb);
  }
  if (same)
    assert_int_equal(differ, 0);
  else
    assert_true(differ > n / 2);
}

static void test_params(void **state) {
  (void)state;
  /* synthetic: the parameter is seed='s default, the URI's seed= wins */
  cpdl_source_params_t params = {.struct_size = sizeof params, .seed = 77, .seq_len = 4096};
  cpdl__source_t *a = open_params_ok("synthetic:?samples=40&vocab=1000&eot=999&mean=30", &params);
  cpdl__source_t *b = open_ok("synthetic:?samples=40&vocab=1000&eot=999&mean=30&seed=77");
  assert_same_samples(a, b, true);
  cpdl__source_close(a);
  a = open_params_ok("synthetic:?samples=40&vocab=1000&eot=999&mean=30&seed=5", &params);
  cpdl__source_close(b);
  b = open_ok("synthetic:?seed=5&samples=40&vocab=1000&eot=999&mean=30");
  assert_same_samples(a, b, true);
  cpdl__source_close(b);
  b = open_ok("synthetic:?samples=40&vocab=1000&eot=999&mean=30"); /* seed 1234 */
  assert_same_samples(a, b, false);
  cpdl__source_close(a);
  /* the seed's 64 bits: the parameter UINT64_MAX is the key's -1 */
  params.seed = UINT64_MAX;
  a = open_params_ok("synthetic:?samples=40&vocab=1000&eot=999&mean=30", &params);
  cpdl__source_close(b);
  b = open_ok("synthetic:?samples=40&vocab=1000&eot=999&mean=30&seed=-1");
  assert_same_samples(a, b, true);
  cpdl__source_close(a);
  cpdl__source_close(b);
  /* the host table's query services are the one parser: an empty key passes */
  cpdl__source_close(open_ok("synthetic:?=5&samples=3&&"));

#ifdef CPDL_TEST_PLUGIN_DIR
  const char *orig = getenv("CPDL_PLUGIN_PATH");
  char *saved = orig ? strdup(orig) : NULL, env[1024];
  snprintf(env, sizeof env, "%s:%s", CPDL_TEST_PLUGIN_DIR, saved ? saved : "");
  setenv("CPDL_PLUGIN_PATH", env, 1);
  params.seed = UINT64_C(0x8000000000000005);
  params.seq_len = 8192;
  /* all of the host's struct */
  a = open_params_ok("params:", &params);
  const int64_t *r = read_report(a);
  assert_int_equal(r[0], 1);
  assert_int_equal(r[1], 1);
  assert_int_equal(r[2], sizeof(cpdl_source_params_t));
  assert_true((uint64_t)r[3] == params.seed);
  assert_int_equal(r[4], 8192);
  cpdl__source_close(a);
  /* an older host's struct ends before seq_len: the plugin's default */
  cpdl_source_params_t older = params;
  older.struct_size = offsetof(cpdl_source_params_t, seq_len);
  a = open_params_ok("params:", &older);
  r = read_report(a);
  assert_int_equal(r[0], 1);
  assert_int_equal(r[2], offsetof(cpdl_source_params_t, seq_len));
  assert_true((uint64_t)r[3] == params.seed);
  assert_int_equal(r[4], -7);
  cpdl__source_close(a);
  /* no loader (cpdl_source_open): no parameters, every default */
  cpdl_source_t *pub = NULL;
  assert_int_equal(cpdl_source_open("params:", &pub), 0);
  const void *tokens;
  int64_t n;
  int width;
  assert_int_equal(cpdl_source_read(pub, 0, &tokens, &n, &width), 0);
  r = tokens;
  assert_int_equal(r[0], 1);
  assert_int_equal(r[1], 0);
  assert_int_equal(r[3], 1234);
  assert_int_equal(r[4], -7);
  cpdl_source_close(pub);
  /* a plugin built before open_params: opened through open(), no parameters */
  a = open_params_ok("oldparams:", &params);
  r = read_report(a);
  assert_int_equal(r[0], 0);
  assert_int_equal(r[1], 0);
  assert_int_equal(r[3], 1234);
  int64_t consumed = -1;
  /* and its consumed(), past its struct_size, is never called: 0 */
  cpdl__source_close(a);
  a = open_params_ok("oldparams:?consumed=1", &params);
  assert_int_equal(cpdl__source_consumed(a, &consumed), 0);
  assert_int_equal(consumed, 0);
  cpdl__source_close(a);
  /* consumed() is checked against [0, count] */
  a = open_params_ok("params:?consumed=1", &params);
  assert_int_equal(cpdl__source_consumed(a, &consumed), 0);
  assert_int_equal(consumed, 1);
  cpdl__source_close(a);
  a = open_params_ok("params:?consumed=2", &params);
  assert_int_equal(cpdl__source_consumed(a, &consumed), CPDL_EPLUGIN);
  assert_int_equal(consumed, 0);
  assert_msg_contains("2 samples are consumed before the stream, outside [0, 1]");
  cpdl__source_close(a);
  a = open_params_ok("params:?consumed=-1", &params);
  assert_int_equal(cpdl__source_consumed(a, &consumed), CPDL_EPLUGIN);
  cpdl__source_close(a);
  if (saved) {
    setenv("CPDL_PLUGIN_PATH", saved, 1);
    free(saved);
  } else {
    unsetenv("CPDL_PLUGIN_PATH");
  }
#endif
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_synthetic_defaults),
    cmocka_unit_test(test_synthetic_deterministic),
    cmocka_unit_test(test_synthetic_lengths),
    cmocka_unit_test(test_synthetic_bad_query),
    cmocka_unit_test(test_uri_errors),
    cmocka_unit_test(test_public_api),
    cmocka_unit_test(test_plugin_path),
    cmocka_unit_test(test_params),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
