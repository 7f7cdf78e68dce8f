/* test_epochs.c — one epoch over all replicas, through the real feed and
 * plugins: for dp in {1, 2, 3}, pack and pad, synthetic, llmc and megatron
 * sources written here,
 *  - cpdl__feed_steps(e) is exact: e passes hold that many whole steps and
 *    not one more (the last of them is still in pass e - 1; one step more
 *    is in pass e);
 *  - over one epoch the replicas together deliver no token (pack) and no
 *    document (pad) twice, and leave out no more than the rows after the
 *    epoch's last full global batch (and pack's last partial window).
 * llmc/megatron tokens are unique ids (the EOT 0 excepted), so a token or a
 * pad row names its document; synthetic tokens are random, so what is
 * delivered must be a sub-multiset of the source's tokens.
 */
#include "source_test_util.h"

#include <unistd.h>

#define N_DOCS 97 /* not a multiple of 2 or 3 */
#define SEQ 16
#define ROWS 2
#define MAX_TOKENS 8192

static char dir[128];
static int64_t doc_len[N_DOCS];
static int64_t n_tokens; /* of all documents */

static int setup(void **state) {
  (void)state;
  return tmpdir_create(dir, sizeof dir, "epochs");
}

static int teardown(void **state) {
  (void)state;
  return tmpdir_remove(dir);
}

/* Document d: EOT (0) then doc_len[d] - 1 unique ids (1, 2, … over all). */
static void make_docs(void) {
  n_tokens = 0;
  for (int d = 0; d < N_DOCS; d++) {
    doc_len[d] = 1 + (d * 37 + 11) % 53; /* 1 .. 53: some 1-token documents */
    n_tokens += doc_len[d];
  }
  assert_true(n_tokens < MAX_TOKENS);
}

static void tokens_all(uint16_t *out) {
  int64_t k = 0;
  uint16_t id = 1;
  for (int d = 0; d < N_DOCS; d++)
    for (int64_t j = 0; j < doc_len[d]; j++)
      out[k++] = j == 0 ? 0 : id++;
}

static void write_llmc(char *uri, size_t size) {
  char path[256];
  snprintf(path, sizeof path, "%s/shard.bin", dir);
  FILE *f = open_file(path, "wb");
  int32_t header[256] = {20240520, 1, (int32_t)n_tokens};
  write_bytes(f, header, sizeof header);
  uint16_t tok[MAX_TOKENS];
  tokens_all(tok);
  write_bytes(f, tok, (size_t)n_tokens * 2);
  fclose(f);
  snprintf(uri, size, "llmc:%s?eot=0", path);
}

/* MMIDIDX: one sequence per document, uint16 (dtype code 8). */
static void write_megatron(char *uri, size_t size) {
  char path[256];
  snprintf(path, sizeof path, "%s/corpus.bin", dir);
  FILE *f = open_file(path, "wb");
  uint16_t tok[MAX_TOKENS];
  tokens_all(tok);
  write_bytes(f, tok, (size_t)n_tokens * 2);
  fclose(f);
  snprintf(path, sizeof path, "%s/corpus.idx", dir);
  f = open_file(path, "wb");
  uint64_t version = 1, n = N_DOCS, n_doc_idx = N_DOCS + 1;
  uint8_t code = 8;
  write_bytes(f, "MMIDIDX\0\0", 9);
  write_bytes(f, &version, 8);
  write_bytes(f, &code, 1);
  write_bytes(f, &n, 8);
  write_bytes(f, &n_doc_idx, 8);
  int64_t pos = 0;
  for (int d = 0; d < N_DOCS; d++) {
    int32_t len = (int32_t)doc_len[d];
    write_bytes(f, &len, 4);
  }
  for (int d = 0; d < N_DOCS; d++) {
    int64_t ptr = pos * 2;
    write_bytes(f, &ptr, 8);
    pos += doc_len[d];
  }
  for (int64_t d = 0; d <= N_DOCS; d++)
    write_bytes(f, &d, 8);
  fclose(f);
  snprintf(uri, size, "megatron:%s/corpus", dir);
}

static cpdl_config_t config(const char *collate, const char *uri, int drop_last) {
  cpdl_config_t cfg;
  cpdl_config_init(&cfg);
  cfg.seq_len = SEQ;
  cfg.batch = ROWS;
  cfg.seed = 77;
  cfg.drop_last = drop_last;
  snprintf(cfg.collate, sizeof cfg.collate, "%s", collate);
  snprintf(cfg.source, sizeof cfg.source, "%s", uri);
  return cfg;
}

static cpdl__feed_t *open_feed(const cpdl_config_t *cfg, int r, int dp) {
  cpdl__feed_t *f = NULL;
  int rc = cpdl__feed_open(cfg, r, dp, &f);
  if (rc)
    fail_msg("feed_open %s: %s", cfg->source, cpdl_last_error());
  return f;
}

/* One step; its input_ids (and labels in *labels). */
static const int64_t *step2(cpdl__feed_t *f, const int64_t **labels) {
  cpdl_tensor_t t[CPDL_MAX_FIELDS];
  int n = 0;
  int rc = cpdl__feed_next(f, t, &n);
  if (rc)
    fail_msg("feed_next: %s", cpdl_last_error());
  assert_string_equal(t[0].name, "input_ids");
  assert_string_equal(t[1].name, "labels");
  if (labels)
    *labels = t[1].data;
  return t[0].data;
}

static void step(cpdl__feed_t *f) { (void)step2(f, NULL); }

/* The epoch of the last step taken (the cursor's). */
static uint64_t cursor_epoch(cpdl__feed_t *f) {
  uint64_t w[CPDL__CURSOR_WORDS];
  assert_int_equal(cpdl__feed_cursor(f, w), 0);
  return w[CPDL__CURSOR_EPOCH];
}

/* feed_steps(e) whole steps fit e passes, one more does not. */
static void check_exact(const cpdl_config_t *cfg, int r, int dp, bool pack) {
  for (uint64_t e = 1; e <= 2; e++) {
    cpdl__feed_t *f = open_feed(cfg, r, dp);
    uint64_t n = 0;
    assert_int_equal(cpdl__feed_steps(f, e, UINT64_MAX, &n), 0);
    assert_true(n > 0);
    uint64_t capped = 0;
    assert_int_equal(cpdl__feed_steps(f, e, 3, &capped), 0);
    assert_int_equal(capped, n < 3 ? n : 3);
    (void)pack;
    for (uint64_t s = 0; s < n; s++)
      step(f);
    /* the n-th step is still in pass e - 1, the next one is in pass e */
    assert_int_equal(cursor_epoch(f), e - 1);
    step(f);
    assert_int_equal(cursor_epoch(f), e);
    cpdl__feed_close(f);
  }
}

/* One epoch of every replica: delivered tokens/documents counted by id.
 * With drop_last=0 the tail of an epoch wraps (dp - n % dp documents are
 * read twice, by design): only the exact step counts are checked there. */
static void check_once(const char *uri, bool unique_ids) {
  const char *collates[] = {"pack", "pad"};
  int64_t max_len = 0, usable = 0, content = 0;
  for (int d = 0; d < N_DOCS; d++) {
    max_len = doc_len[d] > max_len ? doc_len[d] : max_len;
    usable += doc_len[d] >= 2;
    content += doc_len[d] - 1;
  }
  /* synthetic: the source's own tokens, as a multiset */
  static int64_t have[1 << 16], seen[1 << 16];
  memset(have, 0, sizeof have);
  if (!unique_ids) {
    cpdl__source_t *src = open_ok(uri);
    for (int64_t i = 0; i < cpdl__source_count(src); i++) {
      cpdl__sample_t s;
      assert_int_equal(cpdl__source_read(src, i, &s), 0);
      for (int64_t k = 0; k < s.n_tokens; k++)
        have[((const uint32_t *)s.tokens)[k] & 0xffff]++;
    }
    cpdl__source_close(src);
  }
  for (int c = 0; c < 2; c++) {
    bool pack = c == 0;
    for (int dp = 1; dp <= 3; dp++) {
      for (int r = 0; r < dp; r++) {
        cpdl_config_t wrap = config(collates[c], uri, 0);
        check_exact(&wrap, r, dp, pack);
      }
      cpdl_config_t cfg = config(collates[c], uri, 1);
      memset(seen, 0, sizeof seen);
      int64_t delivered = 0;
      for (int r = 0; r < dp; r++) {
        check_exact(&cfg, r, dp, pack);
        cpdl__feed_t *f = open_feed(&cfg, r, dp);
        uint64_t n = 0;
        assert_int_equal(cpdl__feed_steps(f, 1, UINT64_MAX, &n), 0);
        for (uint64_t s = 0; s < n; s++) {
          const int64_t *labels;
          const int64_t *ids = step2(f, &labels);
          for (int row = 0; row < ROWS; row++) {
            const int64_t *t = ids + row * SEQ, *l = labels + row * SEQ;
            if (pack || !unique_ids) {
              for (int k = 0; k < SEQ; k++) {
                seen[t[k] & 0xffff]++;
                delivered += !unique_ids || t[k] != 0;
              }
            } else { /* pad: the row's first label is its document's first id */
              seen[l[0] & 0xffff]++;
              delivered++;
            }
          }
        }
        cpdl__feed_close(f);
      }
      if (unique_ids) {
        for (int v = 1; v < (1 << 16); v++)
          if (seen[v] > 1)
            fail_msg("%s %s dp=%d: id %d delivered %lld times", uri, collates[c], dp, v,
                     (long long)seen[v]);
        /* left out: the epoch's rows after its last full global batch (fewer
         * than dp * ROWS), and for pack the tail of less than one window */
        (void)max_len;
        int64_t missing = pack ? content - delivered : usable - delivered;
        int64_t bound = pack ? dp * ROWS * SEQ + SEQ + 1 : dp * ROWS - 1;
        if (missing < 0 || missing > bound)
          fail_msg("%s %s dp=%d: %lld left out, at most %lld expected", uri, collates[c], dp,
                   (long long)missing, (long long)bound);
      } else {
        for (int v = pack ? 0 : 1; v < (1 << 16); v++) /* pad: 0 is the padding */
          if (seen[v] > have[v])
            fail_msg("%s %s dp=%d: token %d delivered %lld times, the source has %lld", uri,
                     collates[c], dp, v, (long long)seen[v], (long long)have[v]);
        assert_true(delivered > 0);
      }
    }
  }
}

static void test_llmc(void **state) {
  (void)state;
  make_docs();
  char uri[300];
  write_llmc(uri, sizeof uri);
  check_once(uri, true);
}

static void test_megatron(void **state) {
  (void)state;
  make_docs();
  char uri[300];
  write_megatron(uri, sizeof uri);
  check_once(uri, true);
}

static void test_synthetic(void **state) {
  (void)state;
  check_once("synthetic:?samples=97&mean=20&min=1&max=60&vocab=65536&eot=65535&seed=5", false);
}

/* epochs=1 (the default with steps=0) on a source smaller than one step of
 * a replica: a clear error at open rather than a run of no steps. */
static void test_steps_cap(void **state) {
  (void)state;
  cpdl_config_t cfg = config("pack", "synthetic:?samples=3&dist=fixed&mean=4", 1);
  cpdl__feed_t *f = open_feed(&cfg, 0, 1);
  uint64_t n = 99;
  assert_int_equal(cpdl__feed_steps(f, 1, UINT64_MAX, &n), 0);
  assert_int_equal(n, 0); /* 12 tokens hold no row of 16 + 1 */
  assert_int_equal(cpdl__feed_steps(f, 3, UINT64_MAX, &n), 0);
  assert_int_equal(n, 0); /* each epoch is cut into rows on its own: none holds one */
  cpdl__feed_close(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_llmc, setup, teardown),
      cmocka_unit_test_setup_teardown(test_megatron, setup, teardown),
      cmocka_unit_test(test_synthetic),
      cmocka_unit_test(test_steps_cap),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
