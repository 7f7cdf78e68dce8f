/* test_npy.c — the npy plugin: step directories of .npy files written here
 * by an independent writer (NPY v1 and v2 headers, padded as numpy pads them)
 * are read back as zero-copy tensors with the right names, dtypes, shapes and
 * bytes; bad headers, truncated data and a step whose shape differs give
 * their errors naming the file and offset.
 */
#include "source_test_util.h"

static char dir[128];

static int setup(void **state) {
  (void)state;
  return tmpdir_create(dir, sizeof dir, "npy");
}

static int teardown(void **state) {
  (void)state;
  return tmpdir_remove(dir);
}

/* Create <dir>/<sub>/<name> for writing, making <dir>/<sub> as needed. */
static FILE *create_in(const char *sub, const char *name) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, sub);
  mkdir_p(path);
  snprintf(path, sizeof path, "%s/%s/%s", dir, sub, name);
  return open_file(path, "wb");
}

/* Write <dir>/<sub>/<name>.npy with the given header dict text and data.
 * version 1: u16 header length; 2: u32. The header is padded with spaces
 * and a newline to a multiple of 64, as numpy does. data_bytes may differ
 * from the dict's claim to make corrupt files. */
static void write_npy(const char *sub, const char *name, int version, const char *dict,
                      const void *data, size_t data_bytes) {
  FILE *f = create_in(sub, name);
  size_t prefix = version == 1 ? 10 : 12;
  size_t len = strlen(dict) + 1;
  size_t total = (prefix + len + 63) / 64 * 64;
  size_t hlen = total - prefix;
  write_bytes(f, "\x93NUMPY", 6);
  uint8_t ver[2] = {(uint8_t)version, 0};
  write_bytes(f, ver, 2);
  uint8_t l[4] = {(uint8_t)hlen, (uint8_t)(hlen >> 8), (uint8_t)(hlen >> 16), (uint8_t)(hlen >> 24)};
  write_bytes(f, l, version == 1 ? 2 : 4);
  write_bytes(f, dict, strlen(dict));
  for (size_t k = strlen(dict); k + 1 < hlen; k++)
    fputc(' ', f);
  fputc('\n', f);
  write_bytes(f, data, data_bytes);
  fclose(f);
}

static void test_read_steps(void **state) {
  (void)state;
  int64_t ids[2][2][6];
  float emb[2][2][3];
  uint8_t mask[2][2 * 6];
  for (int s = 0; s < 2; s++) {
    for (int k = 0; k < 12; k++) {
      ids[s][k / 6][k % 6] = 1000 * s + k;
      mask[s][k] = (uint8_t)((k + s) & 1);
    }
    for (int k = 0; k < 6; k++)
      emb[s][k / 3][k % 3] = (float)s + 0.25f * (float)k;
    char sub[32];
    snprintf(sub, sizeof sub, "b/step%04d", s);
    write_npy(sub, "input_ids.npy", s ? 2 : 1,
              "{'descr': '<i8', 'fortran_order': False, 'shape': (2, 6), }", ids[s], sizeof ids[s]);
    write_npy(sub, "pixel_values.npy", 1,
              "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", emb[s], sizeof emb[s]);
    write_npy(sub, "padding_mask.npy", 3,
              "{'descr': '|b1', 'fortran_order': False, 'shape': (2, 6), }", mask[s], sizeof mask[s]);
  }
  char uri[256];
  snprintf(uri, sizeof uri, "npy:%s/b", dir);
  cpdl__source_t *src = open_ok(uri);
  assert_true(cpdl__source_has_batches(src));
  assert_int_equal(cpdl__source_batch_count(src), 2);
  assert_int_equal(cpdl__source_count(src), 2);
  cpdl__sample_t sample;
  assert_int_equal(cpdl__source_read(src, 0, &sample), CPDL_ESOURCE);
  assert_msg_contains("pre-collated");
  for (int s = 1; s >= 0; s--) { /* any order */
    cpdl_tensor_t t[CPDL_MAX_FIELDS];
    int n = 0;
    assert_int_equal(cpdl__source_read_batch(src, s, t, &n), 0);
    assert_int_equal(n, 3); /* sorted by name */
    assert_string_equal(t[0].name, "input_ids");
    assert_int_equal(t[0].dtype, CPDL_DTYPE_INT64);
    assert_int_equal(t[0].ndim, 2);
    assert_int_equal(t[0].shape[0], 2);
    assert_int_equal(t[0].shape[1], 6);
    assert_memory_equal(t[0].data, ids[s], sizeof ids[s]);
    assert_int_equal((uintptr_t)t[0].data % 64, 0); /* numpy's 64-byte header padding */
    assert_string_equal(t[1].name, "padding_mask");
    assert_int_equal(t[1].dtype, CPDL_DTYPE_BOOL);
    assert_memory_equal(t[1].data, mask[s], sizeof mask[s]);
    assert_string_equal(t[2].name, "pixel_values");
    assert_int_equal(t[2].dtype, CPDL_DTYPE_FLOAT32);
    assert_int_equal(t[2].shape[1], 3);
    assert_memory_equal(t[2].data, emb[s], sizeof emb[s]);
  }
  cpdl_tensor_t t[CPDL_MAX_FIELDS];
  int n;
  assert_int_equal(cpdl__source_read_batch(src, 2, t, &n), CPDL_EEOF);
  cpdl__source_close(src);
}

/* Opening <dir>/<sub> fails with code and a message holding n1 and n2. */
static void expect_open(const char *sub, int code, const char *n1, const char *n2) {
  char uri[256];
  snprintf(uri, sizeof uri, "npy:%s/%s", dir, sub);
  expect_open_error(uri, code, n1, n2, NULL);
}

static void test_bad_headers(void **state) {
  (void)state;
  int32_t v[4] = {1, 2, 3, 4};
  const char *ok = "{'descr': '<i4', 'fortran_order': False, 'shape': (4,), }";
  write_npy("bigendian/s0", "x.npy", 1, "{'descr': '>i4', 'fortran_order': False, 'shape': (4,), }",
            v, 16);
  expect_open("bigendian", CPDL_EDTYPE, "dtype '>i4' not supported", "x.npy: offset 10");
  write_npy("fortran/s0", "x.npy", 1, "{'descr': '<i4', 'fortran_order': True, 'shape': (4,), }",
            v, 16);
  expect_open("fortran", CPDL_ECORRUPT, "fortran_order", NULL);
  write_npy("trunc/s0", "x.npy", 1, ok, v, 12);
  expect_open("trunc", CPDL_ECORRUPT, "need 16 data bytes, the file has 12", "truncated");
  write_npy("noshape/s0", "x.npy", 1, "{'descr': '<i4', 'fortran_order': False}", v, 16);
  expect_open("noshape", CPDL_ECORRUPT, "no 'shape'", NULL);
  write_npy("scalar/s0", "x.npy", 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (), }",
            v, 4);
  expect_open("scalar", CPDL_ECORRUPT, "0-d", NULL);
  write_npy("fivedim/s0", "x.npy", 1,
            "{'descr': '<i4', 'fortran_order': False, 'shape': (1, 1, 1, 1, 4), }", v, 16);
  expect_open("fivedim", CPDL_ECORRUPT, "bad 'shape'", NULL);
  write_npy("overflow/s0", "x.npy", 1,
            "{'descr': '<i8', 'fortran_order': False, 'shape': (4294967296, 4294967296, 16), }",
            v, 16);
  expect_open("overflow", CPDL_EOVERFLOW, "overflows", NULL);

  FILE *f = create_in("magic/s0", "x.npy");
  write_bytes(f, "PK\x03\x04 not an npy file at all", 28);
  fclose(f);
  expect_open("magic", CPDL_ECORRUPT, "x.npy: offset 0: expected the NPY magic", NULL);

  /* header length pointing past the end of the file */
  f = create_in("hlen/s0", "x.npy");
  write_bytes(f, "\x93NUMPY\x01\x00\xff\xff{'descr'", 18);
  fclose(f);
  expect_open("hlen", CPDL_ECORRUPT, "offset 8: header length 65535 runs past", NULL);

  write_npy("version/s0", "x.npy", 4, ok, v, 16);
  expect_open("version", CPDL_ECORRUPT, "offset 6: NPY format version 4", NULL);

  char path[512];
  snprintf(path, sizeof path, "%s/empty", dir);
  mkdir_p(path);
  expect_open("empty", CPDL_ECORRUPT, "no step directories", NULL);
  expect_open("absent", -ENOENT, "cannot open directory", NULL);
}

static void test_step_mismatch(void **state) {
  (void)state;
  int32_t v[6] = {1, 2, 3, 4, 5, 6};
  write_npy("mm/s0", "x.npy", 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }",
            v, 24);
  write_npy("mm/s1", "x.npy", 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (3, 2), }",
            v, 24);
  write_npy("mm/s2", "y.npy", 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }",
            v, 24);
  char uri[256];
  snprintf(uri, sizeof uri, "npy:%s/mm", dir);
  cpdl__source_t *src = open_ok(uri);
  cpdl_tensor_t t[CPDL_MAX_FIELDS];
  int n;
  assert_int_equal(cpdl__source_read_batch(src, 0, t, &n), 0);
  assert_int_equal(((const int32_t *)t[0].data)[5], 6);
  assert_int_equal(cpdl__source_read_batch(src, 1, t, &n), CPDL_ECORRUPT);
  assert_msg_contains("s1/x.npy");
  assert_msg_contains("differ from step s0");
  assert_int_equal(cpdl__source_read_batch(src, 2, t, &n), -ENOENT);
  assert_msg_contains("s2/x.npy");
  assert_int_equal(cpdl__source_read_batch(src, 0, t, &n), 0); /* recovers */
  cpdl__source_close(src);
}

/* Step directories are read in the order of the number ending their names
 * (as `cpdl run --dump` writes step0 … step11), not in text order. */
static void test_step_order(void **state) {
  (void)state;
  const char *dict = "{'descr': '<i8', 'fortran_order': False, 'shape': (1, 1), }";
  for (int64_t k = 0; k < 12; k++) {
    char sub[32];
    snprintf(sub, sizeof sub, "o/step%lld", (long long)k);
    write_npy(sub, "input_ids.npy", 1, dict, &k, sizeof k);
  }
  char uri[256];
  snprintf(uri, sizeof uri, "npy:%s/o", dir);
  cpdl__source_t *src = open_ok(uri);
  assert_int_equal(cpdl__source_batch_count(src), 12);
  for (int64_t k = 0; k < 12; k++) {
    cpdl_tensor_t t[CPDL_MAX_FIELDS];
    int n = 0;
    assert_int_equal(cpdl__source_read_batch(src, k, t, &n), 0);
    assert_int_equal(((const int64_t *)t[0].data)[0], k);
  }
  cpdl__source_close(src);

  /* Leading zeros do not matter; the same number twice is an error. */
  int64_t v = 0;
  write_npy("dup/step1", "input_ids.npy", 1, dict, &v, sizeof v);
  write_npy("dup/step01", "input_ids.npy", 1, dict, &v, sizeof v);
  expect_open("dup", CPDL_EARG, "same step number 1", "step01");
  /* A directory whose name does not end in a number is named. */
  write_npy("nonum/step0", "input_ids.npy", 1, dict, &v, sizeof v);
  write_npy("nonum/extra", "input_ids.npy", 1, dict, &v, sizeof v);
  expect_open("nonum", CPDL_EARG, "nonum/extra", "must end in its step number");
  /* An empty path says what is expected. */
  expect_open_error("npy:", CPDL_EARG, "no directory given", "npy:/path", NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_read_steps),
    cmocka_unit_test(test_step_order),
    cmocka_unit_test(test_bad_headers),
    cmocka_unit_test(test_step_mismatch),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
