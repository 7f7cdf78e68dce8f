/* test_llmc.c — the llmc plugin: shards written here by an independent
 * writer (header + tokens, as llm.c's write_datafile does) are read back
 * token by token, documents included (EOT starts a document), across several
 * shards (glob and comma list), for uint16 and uint32; every corruption gives
 * CPDL_ECORRUPT naming the file and offset.
 */
#include "source_test_util.h"

static char dir[128];

/* Write an llm.c shard: header (magic, version, count) + tokens. */
static void write_shard(const char *name, int32_t magic, int32_t version, int32_t count,
                        const void *tokens, size_t token_bytes, size_t n_written) {
  char path[256];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = open_file(path, "wb");
  int32_t header[256] = {0};
  header[0] = magic;
  header[1] = version;
  header[2] = count;
  write_bytes(f, header, sizeof header);
  write_bytes(f, tokens, token_bytes * n_written);
  fclose(f);
}

static int setup(void **state) {
  (void)state;
  return tmpdir_create(dir, sizeof dir, "llmc");
}

static int teardown(void **state) {
  (void)state;
  return tmpdir_remove(dir);
}

static cpdl__source_t *open_uri(const char *fmt, const char *arg) {
  char uri[1024];
  int n = snprintf(uri, sizeof uri, fmt, arg);
  assert_true(n > 0 && (size_t)n < sizeof uri);
  return open_ok(uri);
}

/* Expected documents of a token stream: start at index 0 and at every EOT. */
static void check_docs_u16(cpdl__source_t *src, int64_t first_doc, const uint16_t *t, int64_t n,
                           uint16_t eot, int64_t *docs_seen) {
  int64_t d = first_doc, start = 0;
  for (int64_t k = 1; k <= n; k++) {
    if (k == n || t[k] == eot) {
      cpdl__sample_t s;
      assert_int_equal(cpdl__source_read(src, d, &s), 0);
      assert_int_equal(s.token_bytes, 2);
      assert_int_equal(s.n_tokens, k - start);
      assert_memory_equal(s.tokens, t + start, (size_t)(k - start) * 2);
      d++;
      start = k;
    }
  }
  *docs_seen = d - first_doc;
}

static void test_u16_single_and_glob(void **state) {
  (void)state;
  /* shard a: starts with EOT, as llm.c writes; shard b: leading tokens
   * before its first EOT form their own document; shard c: empty. */
  uint16_t a[] = {50256, 1, 2, 3, 50256, 4, 50256, 50256, 5, 6};
  uint16_t b[] = {7, 8, 50256, 9, 65535, 0};
  write_shard("train_000.bin", 20240520, 1, 10, a, 2, 10);
  write_shard("train_001.bin", 20240520, 1, 6, b, 2, 6);
  write_shard("train_002.bin", 20240520, 1, 0, NULL, 2, 0);

  char path[256];
  snprintf(path, sizeof path, "%s/train_000.bin", dir);
  cpdl__source_t *src = open_uri("llmc:%s", path);
  assert_int_equal(cpdl__source_count(src), 4);
  assert_int_equal(cpdl__source_eot(src), 50256);
  assert_true(cpdl__source_stable(src));
  int64_t seen;
  check_docs_u16(src, 0, a, 10, 50256, &seen);
  assert_int_equal(seen, 4);
  cpdl__source_close(src);

  /* glob, listed out of order on disk: shards are sorted, documents never
   * span shards, the empty shard contributes nothing */
  snprintf(path, sizeof path, "%s/train_*.bin", dir);
  src = open_uri("llmc:%s", path);
  assert_int_equal(cpdl__source_count(src), 6);
  check_docs_u16(src, 0, a, 10, 50256, &seen);
  check_docs_u16(src, 4, b, 6, 50256, &seen);
  assert_int_equal(seen, 2);
  cpdl__sample_t s;
  assert_int_equal(cpdl__source_read(src, 6, &s), CPDL_EARG);
  cpdl__source_close(src);

  /* comma list in reverse order gives the same sorted dataset; eot= override */
  char list[600];
  snprintf(list, sizeof list, "%s/train_001.bin,%s/train_000.bin?eot=4", dir, dir);
  src = open_uri("llmc:%s", list);
  assert_int_equal(cpdl__source_eot(src), 4);
  check_docs_u16(src, 0, a, 10, 4, &seen);
  assert_int_equal(seen, 2); /* [50256 1 2 3 50256] [4 50256 50256 5 6] */
  int64_t first_b = seen;
  check_docs_u16(src, first_b, b, 6, 4, &seen);
  assert_int_equal(seen, 1);
  assert_int_equal(cpdl__source_count(src), 3);
  cpdl__source_close(src);
}

static void test_u32_large(void **state) {
  (void)state;
  /* a larger uint32 shard with pseudo-random documents */
  int64_t n = 200000;
  uint32_t *t = malloc((size_t)n * 4);
  assert_non_null(t);
  uint64_t x = 88172645463325252ull;
  int64_t expect_docs = 0;
  for (int64_t k = 0; k < n; k++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    t[k] = (x % 97 == 0 || k == 0) ? 128000u : (uint32_t)(x % 200000);
    if (t[k] == 128000u)
      expect_docs++;
  }
  write_shard("big.bin", 20240801, 7, (int32_t)n, t, 4, (size_t)n);
  char path[256];
  snprintf(path, sizeof path, "%s/big.bin", dir);
  cpdl__source_t *src = open_uri("llmc:%s", path);
  assert_int_equal(cpdl__source_eot(src), 128000);
  assert_int_equal(cpdl__source_count(src), expect_docs);
  int64_t pos = 0;
  for (int64_t d = 0; d < expect_docs; d++) {
    cpdl__sample_t s;
    assert_int_equal(cpdl__source_read(src, d, &s), 0);
    assert_int_equal(s.token_bytes, 4);
    const uint32_t *got = s.tokens;
    assert_int_equal(got[0], 128000u);
    for (int64_t k = 1; k < s.n_tokens; k++)
      assert_int_not_equal(got[k], 128000u);
    assert_memory_equal(got, t + pos, (size_t)s.n_tokens * 4);
    pos += s.n_tokens;
  }
  assert_int_equal(pos, n);
  cpdl__source_close(src);
  free(t);
}

/* Opening shard name fails with code; the message names the file, needle1 and needle2. */
static void expect_corrupt(const char *name, int code, const char *needle1, const char *needle2) {
  char path[256], uri[600];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  snprintf(uri, sizeof uri, "llmc:%s", path);
  expect_open_error(uri, code, path, needle1, needle2);
}

static void test_corrupt(void **state) {
  (void)state;
  uint16_t t[4] = {50256, 1, 2, 3};
  write_shard("magic.bin", 12345, 1, 4, t, 2, 4);
  expect_corrupt("magic.bin", CPDL_ECORRUPT, "offset 0: bad magic 12345", "20240520");
  write_shard("version.bin", 20240520, 7, 4, t, 2, 4);
  expect_corrupt("version.bin", CPDL_ECORRUPT, "offset 4: version 7", "expected version 1");
  write_shard("version32.bin", 20240801, 1, 2, t, 4, 2);
  expect_corrupt("version32.bin", CPDL_ECORRUPT, "offset 4: version 1", "expected version 7");
  write_shard("trunc.bin", 20240520, 1, 100, t, 2, 4);
  expect_corrupt("trunc.bin", CPDL_ECORRUPT, "offset 1032", "truncated");
  write_shard("trailing.bin", 20240520, 1, 2, t, 2, 4);
  expect_corrupt("trailing.bin", CPDL_ECORRUPT, "trailing bytes", "offset 1028");
  write_shard("negative.bin", 20240520, 1, -5, t, 2, 4);
  expect_corrupt("negative.bin", CPDL_ECORRUPT, "offset 8: negative token count", NULL);
  write_shard("empty.bin", 20240520, 1, 0, NULL, 2, 0);
  expect_corrupt("empty.bin", CPDL_ECORRUPT, "zero documents", NULL);
  /* shorter than a header */
  char path[256];
  snprintf(path, sizeof path, "%s/short.bin", dir);
  write_file(path, "wb", "abc", 3);
  expect_corrupt("short.bin", CPDL_ECORRUPT, "offset 0: expected a 1024-byte", "has 3 bytes");
  expect_corrupt("missing.bin", -ENOENT, "cannot open", NULL);

  /* mixed token widths across shards */
  write_shard("mix_a.bin", 20240520, 1, 4, t, 2, 4);
  write_shard("mix_b.bin", 20240801, 7, 2, t, 4, 2);
  char uri[600];
  snprintf(uri, sizeof uri, "llmc:%s/mix_*.bin", dir);
  expect_open_error(uri, CPDL_ECORRUPT, "one token width", NULL, NULL);
  /* unknown query key */
  snprintf(uri, sizeof uri, "llmc:%s/mix_a.bin?eos=1", dir);
  expect_open_error(uri, CPDL_EARG, "unknown query key 'eos'", NULL, NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_u16_single_and_glob),
    cmocka_unit_test(test_u32_large),
    cmocka_unit_test(test_corrupt),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
