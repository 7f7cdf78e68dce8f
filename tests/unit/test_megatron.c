/* test_megatron.c — the megatron plugin: .idx/.bin pairs written here by an
 * independent writer (the MMIDIDX layout of Megatron-LM's
 * IndexedDatasetBuilder) are read back token by token per document and per
 * sequence, for uint16/int32/int64 tokens, with and without the optional
 * modes array; each corruption gives its error naming file and offset.
 */
#include "source_test_util.h"

#include <unistd.h>

static char dir[128];

static int setup(void **state) {
  (void)state;
  return tmpdir_create(dir, sizeof dir, "megatron");
}

static int teardown(void **state) {
  (void)state;
  return tmpdir_remove(dir);
}

/* A dataset description for the writer. */
typedef struct ds {
  uint8_t dtype_code;
  int item;
  uint64_t n_seqs, n_doc_idx;
  int32_t lengths[64];
  int64_t pointers[64];
  int64_t doc_idx[65];
  int with_modes;
  uint64_t version;
  const char *magic;     /* 9 bytes */
  int64_t idx_truncate;  /* >= 0: cut the .idx to this many bytes */
  uint64_t header_n_seqs; /* != 0: N written in the header instead of n_seqs */
} ds_t;

static void write_idx(const char *prefix, const ds_t *d) {
  char path[256];
  snprintf(path, sizeof path, "%s/%s.idx", dir, prefix);
  FILE *f = open_file(path, "wb");
  write_bytes(f, d->magic ? d->magic : "MMIDIDX\0\0", 9);
  uint64_t version = d->version ? d->version : 1;
  write_bytes(f, &version, 8);
  write_bytes(f, &d->dtype_code, 1);
  write_bytes(f, d->header_n_seqs ? &d->header_n_seqs : &d->n_seqs, 8);
  write_bytes(f, &d->n_doc_idx, 8);
  write_bytes(f, d->lengths, 4 * d->n_seqs);
  write_bytes(f, d->pointers, 8 * d->n_seqs);
  write_bytes(f, d->doc_idx, 8 * d->n_doc_idx);
  if (d->with_modes)
    for (uint64_t k = 0; k < d->n_seqs; k++)
      write_bytes(f, "\x01", 1);
  fclose(f);
  if (d->idx_truncate >= 0)
    assert_int_equal(truncate(path, d->idx_truncate), 0);
}

/* Tokens of the .bin: token k of the file has value (k * 7 + 3) % 60000. */
static void write_bin(const char *prefix, int item, uint64_t n_tokens) {
  char path[256];
  snprintf(path, sizeof path, "%s/%s.bin", dir, prefix);
  FILE *f = open_file(path, "wb");
  for (uint64_t k = 0; k < n_tokens; k++) {
    uint64_t v = (k * 7 + 3) % 60000;
    write_bytes(f, &v, (size_t)item); /* little-endian low bytes */
  }
  fclose(f);
}

static uint64_t token_at(const void *p, int item, int64_t k) {
  uint64_t v = 0;
  memcpy(&v, (const uint8_t *)p + k * item, (size_t)item);
  return v;
}

/* A contiguous dataset: documents of n_seq_per_doc sequences each. */
static void make_contiguous(ds_t *d, uint8_t code, int item, int n_docs, const int *seqs_per_doc,
                            uint64_t *n_tokens) {
  memset(d, 0, sizeof *d);
  d->dtype_code = code;
  d->item = item;
  d->idx_truncate = -1;
  uint64_t k = 0, pos = 0;
  d->doc_idx[0] = 0;
  for (int j = 0; j < n_docs; j++) {
    for (int q = 0; q < seqs_per_doc[j]; q++, k++) {
      d->lengths[k] = (int32_t)(3 + (k * 5) % 11);
      d->pointers[k] = (int64_t)(pos * (uint64_t)item);
      pos += (uint64_t)d->lengths[k];
    }
    d->doc_idx[j + 1] = (int64_t)k;
  }
  d->n_seqs = k;
  d->n_doc_idx = (uint64_t)n_docs + 1;
  *n_tokens = pos;
}

static cpdl__source_t *open_prefix(const char *prefix, const char *query) {
  char uri[512];
  snprintf(uri, sizeof uri, "megatron:%s/%s%s", dir, prefix, query);
  return open_ok(uri);
}

static void check_dataset(uint8_t code, int item, int with_modes) {
  const int seqs_per_doc[] = {1, 3, 1, 0, 2, 1};
  ds_t d;
  uint64_t n_tokens;
  make_contiguous(&d, code, item, 6, seqs_per_doc, &n_tokens);
  d.with_modes = with_modes;
  char prefix[32];
  snprintf(prefix, sizeof prefix, "ds_%d_%d", code, with_modes);
  write_idx(prefix, &d);
  write_bin(prefix, item, n_tokens);

  /* unit=document: document j = its sequences concatenated */
  cpdl__source_t *src = open_prefix(prefix, "");
  assert_int_equal(cpdl__source_count(src), 6);
  assert_int_equal(cpdl__source_document_count(src), 6);
  assert_int_equal(cpdl__source_eot(src), -1);
  uint64_t file_pos = 0;
  for (int j = 0; j < 6; j++) {
    cpdl__sample_t s;
    assert_int_equal(cpdl__source_read(src, j, &s), 0);
    assert_int_equal(s.token_bytes, item);
    int64_t want = 0;
    for (int64_t k = d.doc_idx[j]; k < d.doc_idx[j + 1]; k++)
      want += d.lengths[k];
    assert_int_equal(s.n_tokens, want);
    for (int64_t t = 0; t < s.n_tokens; t++, file_pos++)
      assert_int_equal(token_at(s.tokens, item, t), (file_pos * 7 + 3) % 60000);
  }
  assert_int_equal(file_pos, n_tokens);
  cpdl__source_close(src);

  /* unit=sequence: sample k = sequence k; documents group sequences */
  src = open_prefix(prefix, "?unit=sequence&eot=2");
  assert_int_equal(cpdl__source_count(src), (int64_t)d.n_seqs);
  assert_int_equal(cpdl__source_document_count(src), 6);
  assert_int_equal(cpdl__source_eot(src), 2);
  for (uint64_t k = 0; k < d.n_seqs; k++) {
    cpdl__sample_t s;
    assert_int_equal(cpdl__source_read(src, (int64_t)k, &s), 0);
    assert_int_equal(s.n_tokens, d.lengths[k]);
    uint64_t first = (uint64_t)d.pointers[k] / (uint64_t)item;
    for (int64_t t = 0; t < s.n_tokens; t++)
      assert_int_equal(token_at(s.tokens, item, t), ((first + (uint64_t)t) * 7 + 3) % 60000);
  }
  for (int j = 0; j < 6; j++) {
    int64_t first, n;
    assert_int_equal(cpdl__source_document(src, j, &first, &n), 0);
    assert_int_equal(first, d.doc_idx[j]);
    assert_int_equal(n, d.doc_idx[j + 1] - d.doc_idx[j]);
  }
  cpdl__source_close(src);
}

static void test_read_all_dtypes(void **state) {
  (void)state;
  check_dataset(8, 2, 0); /* uint16 */
  check_dataset(8, 2, 1); /* uint16, with modes */
  check_dataset(4, 4, 0); /* int32 */
  check_dataset(5, 8, 1); /* int64 */
  check_dataset(3, 2, 0); /* int16 */
}

/* Opening prefix + query fails with code; the message names the prefix, n1 and n2. */
static void expect_error(const char *prefix, const char *query, int code, const char *n1,
                         const char *n2) {
  char uri[512];
  snprintf(uri, sizeof uri, "megatron:%s/%s%s", dir, prefix, query);
  expect_open_error(uri, code, prefix, n1, n2);
}

static void test_corrupt(void **state) {
  (void)state;
  const int spd[] = {1, 2, 1};
  ds_t d;
  uint64_t n_tokens;

  make_contiguous(&d, 8, 2, 3, spd, &n_tokens);
  d.magic = "MMIDIDY\0\0";
  write_idx("magic", &d);
  write_bin("magic", 2, n_tokens);
  expect_error("magic", "", CPDL_ECORRUPT, "offset 0: bad magic", "MMIDIDX");

  make_contiguous(&d, 8, 2, 3, spd, &n_tokens);
  d.version = 2;
  write_idx("version", &d);
  write_bin("version", 2, n_tokens);
  expect_error("version", "", CPDL_ECORRUPT, "offset 9: version 2", "expected 1");

  make_contiguous(&d, 7, 4, 3, spd, &n_tokens);
  write_idx("float", &d);
  write_bin("float", 4, n_tokens);
  expect_error("float", "", CPDL_EDTYPE, "offset 17: dtype code 7 (float32)", NULL);

  make_contiguous(&d, 8, 2, 3, spd, &n_tokens);
  write_idx("truncbin", &d);
  write_bin("truncbin", 2, n_tokens - 1);
  expect_error("truncbin", "", CPDL_ECORRUPT, "truncbin.bin, which has", "sequence 3");

  make_contiguous(&d, 8, 2, 3, spd, &n_tokens);
  d.idx_truncate = 34 + 4 * 4 + 8; /* cut inside the pointers */
  write_idx("truncidx", &d);
  write_bin("truncidx", 2, n_tokens);
  expect_error("truncidx", "", CPDL_ECORRUPT, "offset 18", "truncated");

  make_contiguous(&d, 8, 2, 3, spd, &n_tokens);
  d.header_n_seqs = UINT64_C(1) << 61; /* counts that overflow any size computation */
  write_idx("hugen", &d);
  write_bin("hugen", 2, n_tokens);
  expect_error("hugen", "", CPDL_ECORRUPT, "offset 18", "sequences");

  make_contiguous(&d, 8, 2, 3, spd, &n_tokens);
  d.lengths[2] = 1 << 30; /* length runs past the .bin */
  write_idx("longlen", &d);
  write_bin("longlen", 2, n_tokens);
  expect_error("longlen", "", CPDL_ECORRUPT, "sequence 2 spans", "longlen.bin");

  make_contiguous(&d, 8, 2, 3, spd, &n_tokens);
  d.lengths[1] = -4;
  write_idx("neglen", &d);
  write_bin("neglen", 2, n_tokens);
  expect_error("neglen", "", CPDL_ECORRUPT, "offset 38: sequence 1 has length -4", NULL);

  make_contiguous(&d, 8, 2, 3, spd, &n_tokens);
  d.pointers[3] = INT64_MAX - 1; /* pointer + bytes would overflow */
  write_idx("bigptr", &d);
  write_bin("bigptr", 2, n_tokens);
  expect_error("bigptr", "", CPDL_ECORRUPT, "sequence 3 spans", NULL);

  make_contiguous(&d, 8, 2, 3, spd, &n_tokens);
  d.pointers[1] += 1; /* odd byte for 2-byte tokens */
  write_idx("unaligned", &d);
  write_bin("unaligned", 2, n_tokens + 1);
  expect_error("unaligned", "?unit=sequence", CPDL_ECORRUPT, "not a multiple of the 2-byte", NULL);

  /* Megatron's writer stores each sequence right after the previous one: a
   * pointer that leaves a gap is corrupt, per document and per sequence. */
  make_contiguous(&d, 8, 2, 3, spd, &n_tokens);
  d.pointers[2] += 2; /* document 1 = sequences 1, 2 no longer adjacent */
  write_idx("gap", &d);
  write_bin("gap", 2, n_tokens + 1);
  char want[512];
  snprintf(want, sizeof want, "sequence 2 starts at byte %lld of %s/gap.bin, expected %lld",
           (long long)d.pointers[2], dir, (long long)d.pointers[2] - 2);
  expect_error("gap", "", CPDL_ECORRUPT, want, "gap.idx: offset 66");
  expect_error("gap", "?unit=sequence", CPDL_ECORRUPT, want, NULL);

  /* A corrupted length that still fits inside the .bin (document 0 is one
   * sequence: nothing but the next pointer betrays it). */
  make_contiguous(&d, 8, 2, 3, spd, &n_tokens);
  d.lengths[0] -= 1;
  write_idx("shortlen", &d);
  write_bin("shortlen", 2, n_tokens);
  snprintf(want, sizeof want, "sequence 1 starts at byte %lld of %s/shortlen.bin, expected %lld "
           "(sequence 0 starts at byte 0 and has %d tokens of 2 bytes)",
           (long long)d.pointers[1], dir, (long long)d.pointers[1] - 2, d.lengths[0]);
  expect_error("shortlen", "", CPDL_ECORRUPT, want, "shortlen.idx: offset 58");
  expect_error("shortlen", "?unit=sequence", CPDL_ECORRUPT, want, NULL);
  make_contiguous(&d, 8, 2, 3, spd, &n_tokens);
  d.lengths[1] += 1; /* one token into sequence 2 */
  write_idx("growlen", &d);
  write_bin("growlen", 2, n_tokens);
  expect_error("growlen", "", CPDL_ECORRUPT, "sequence 2 starts at byte", "expected");
  /* The last sequence's length: it must end where the .bin does. */
  make_contiguous(&d, 8, 2, 3, spd, &n_tokens);
  d.lengths[3] -= 2;
  write_idx("lastlen", &d);
  write_bin("lastlen", 2, n_tokens);
  snprintf(want, sizeof want, "lastlen.idx: offset 46: the last sequence (3, %d tokens) ends at "
           "byte %llu, but %s/lastlen.bin has %llu bytes", d.lengths[3],
           (unsigned long long)(2 * (n_tokens - 2)), dir, (unsigned long long)(2 * n_tokens));
  expect_error("lastlen", "?unit=sequence", CPDL_ECORRUPT, want, NULL);
  make_contiguous(&d, 8, 2, 3, spd, &n_tokens);
  for (int k = 0; k < 4; k++)
    d.pointers[k] += 4; /* all shifted: the first does not start at 0 */
  write_idx("firstptr", &d);
  write_bin("firstptr", 2, n_tokens + 2);
  expect_error("firstptr", "", CPDL_ECORRUPT, "firstptr.idx: offset 50: sequence 0 starts at "
               "byte 4", "expected 0");

  make_contiguous(&d, 8, 2, 3, spd, &n_tokens);
  d.doc_idx[3] = 3; /* must end at N = 4 */
  write_idx("docend", &d);
  write_bin("docend", 2, n_tokens);
  expect_error("docend", "", CPDL_ECORRUPT, "document index 3 is 3", "offset");

  make_contiguous(&d, 8, 2, 3, spd, &n_tokens);
  d.doc_idx[1] = 3, d.doc_idx[2] = 2; /* decreasing */
  write_idx("docorder", &d);
  write_bin("docorder", 2, n_tokens);
  expect_error("docorder", "", CPDL_ECORRUPT, "document index 2 is 2", NULL);

  make_contiguous(&d, 8, 2, 0, spd, &n_tokens); /* zero documents, zero sequences */
  write_idx("nodocs", &d);
  write_bin("nodocs", 2, 0);
  expect_error("nodocs", "", CPDL_ECORRUPT, "zero documents", NULL);

  make_contiguous(&d, 8, 2, 3, spd, &n_tokens);
  write_idx("trailing", &d);
  write_bin("trailing", 2, n_tokens);
  char path[256];
  snprintf(path, sizeof path, "%s/trailing.idx", dir);
  write_file(path, "ab", "xyz", 3); /* neither exact nor + N modes bytes */
  expect_error("trailing", "", CPDL_ECORRUPT, "expected the file to end here", NULL);

  expect_error("absent", "", -ENOENT, "absent.idx: cannot open", NULL);
  make_contiguous(&d, 8, 2, 3, spd, &n_tokens);
  write_idx("nobin", &d);
  expect_error("nobin", "", -ENOENT, "nobin.bin: cannot open", NULL);
  expect_error("magic", "?unit=token", CPDL_EARG, "unit=", NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_read_all_dtypes),
    cmocka_unit_test(test_corrupt),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
