/* test_feed.c — the feed over the real `synthetic:` plugin: exact resume
 * from a saved cursor, agreement between two nodes of a replica, replicas
 * and seeds that differ, the seed reaching the synthetic plugin, EOT label
 * masking, field names and shapes, configuration errors, and the split
 * fill (plan on one thread, rows filled by four threads at once) giving the
 * bytes of feed_next on one. Tests that need the plugin skip with a message
 * when it is not built. CI runs this program under ThreadSanitizer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define STEPS 20
#define MAX_STEP_BYTES (8 * 4 * 64 * 4) /* 4 fields of [4, 64] int64 */

static cpdl_config_t config(const char *collate, const char *source) {
  cpdl_config_t cfg;
  cpdl_config_init(&cfg);
  cfg.seq_len = 64;
  cfg.batch = 4;
  cfg.seed = 2024;
  snprintf(cfg.collate, sizeof cfg.collate, "%s", collate);
  /* short documents so rows hold several and documents span rows */
  snprintf(cfg.source, sizeof cfg.source, "%s", source);
  return cfg;
}

#define SOURCE "synthetic:?samples=500&mean=40&min=1&max=150"

/* Open, or skip the test when the synthetic plugin is not there. */
static cpdl__feed_t *open_or_skip(const cpdl_config_t *cfg, int dp_rank, int dp_size) {
  cpdl__feed_t *feed = NULL;
  int rc = cpdl__feed_open(cfg, dp_rank, dp_size, &feed);
  if (rc == CPDL_EPLUGIN) {
    print_message("SKIP: the synthetic plugin is not available (%s); build the plugins and set "
                  "CPDL_PLUGIN_PATH\n",
                  cpdl_last_error());
    skip();
  }
  if (rc)
    fail_msg("cpdl__feed_open: %s: %s", cpdl_err_name(rc), cpdl_last_error());
  return feed;
}

/* One step flattened: every field's bytes, in field order. */
static size_t step_bytes(cpdl__feed_t *feed, unsigned char *out, const char **names, int *n_fields) {
  cpdl_tensor_t fields[CPDL_MAX_FIELDS];
  int nf = 0;
  int rc = cpdl__feed_next(feed, fields, &nf);
  if (rc)
    fail_msg("cpdl__feed_next: %s: %s", cpdl_err_name(rc), cpdl_last_error());
  size_t at = 0;
  for (int i = 0; i < nf; i++) {
    size_t n = cpdl_dtype_size(fields[i].dtype);
    for (int d = 0; d < fields[i].ndim; d++)
      n *= (size_t)fields[i].shape[d];
    assert_true(at + n <= MAX_STEP_BYTES);
    memcpy(out + at, fields[i].data, n);
    at += n;
    if (names)
      names[i] = fields[i].name;
  }
  if (n_fields)
    *n_fields = nf;
  return at;
}

static void check_resume(const char *collate, int dp_rank, int dp_size) {
  cpdl_config_t cfg = config(collate, SOURCE);
  unsigned char(*run)[MAX_STEP_BYTES] = malloc(STEPS * sizeof *run);
  size_t sizes[STEPS];
  uint64_t cursor[CPDL__CURSOR_WORDS];
  cpdl__feed_t *a = open_or_skip(&cfg, dp_rank, dp_size);
  for (int k = 0; k < STEPS; k++) {
    sizes[k] = step_bytes(a, run[k], NULL, NULL);
    if (k == 9)
      cpdl__feed_cursor(a, cursor);
  }
  cpdl__feed_close(a);
  assert_int_equal(cursor[CPDL__CURSOR_STEP], 10); /* steps produced */

  cpdl__feed_t *b = open_or_skip(&cfg, dp_rank, dp_size);
  assert_int_equal(cpdl__feed_seek(b, cursor), 0);
  unsigned char *got = malloc(MAX_STEP_BYTES);
  for (int k = 10; k < STEPS; k++) {
    size_t n = step_bytes(b, got, NULL, NULL);
    assert_int_equal(n, sizes[k]);
    assert_memory_equal(got, run[k], n);
  }
  uint64_t end[CPDL__CURSOR_WORDS];
  cpdl__feed_cursor(b, end);
  assert_int_equal(end[CPDL__CURSOR_STEP], STEPS);
  cpdl__feed_close(b);
  free(got);
  free(run);
}

/* The split fill: plan, then n threads fill their rows at once. */
typedef struct fill_arg {
  cpdl__feed_t *feed;
  int part, n_parts, rc;
  char msg[256];
} fill_arg_t;

static void *fill_main(void *arg) {
  fill_arg_t *a = arg;
  a->rc = cpdl__feed_fill(a->feed, a->part, a->n_parts);
  if (a->rc)
    snprintf(a->msg, sizeof a->msg, "%s", cpdl_last_error());
  return NULL;
}

static size_t split_step(cpdl__feed_t *feed, int n_parts, unsigned char *out) {
  cpdl_tensor_t fields[CPDL_MAX_FIELDS];
  int nf = 0;
  int rc = cpdl__feed_plan(feed, fields, &nf);
  if (rc)
    fail_msg("cpdl__feed_plan: %s: %s", cpdl_err_name(rc), cpdl_last_error());
  pthread_t th[8];
  fill_arg_t args[8];
  for (int p = 0; p < n_parts; p++) {
    args[p] = (fill_arg_t){.feed = feed, .part = p, .n_parts = n_parts};
    assert_int_equal(pthread_create(&th[p], NULL, fill_main, &args[p]), 0);
  }
  for (int p = 0; p < n_parts; p++) {
    pthread_join(th[p], NULL);
    if (args[p].rc)
      fail_msg("cpdl__feed_fill part %d: %s: %s", p, cpdl_err_name(args[p].rc), args[p].msg);
  }
  size_t at = 0;
  for (int i = 0; i < nf; i++) {
    size_t n = cpdl_dtype_size(fields[i].dtype);
    for (int d = 0; d < fields[i].ndim; d++)
      n *= (size_t)fields[i].shape[d];
    assert_true(at + n <= MAX_STEP_BYTES);
    memcpy(out + at, fields[i].data, n);
    at += n;
  }
  return at;
}

/* threads=1 feed_next against threads=4 plan + 4 (and 3) parallel fills:
 * the same bytes, step after step, across an epoch's end (wrap). */
static void check_split(const char *collate, int position_ids, int dp_rank, int dp_size) {
  cpdl_config_t cfg = config(collate, "synthetic:?samples=120&mean=40&min=1&max=150");
  cfg.position_ids = position_ids;
  cfg.drop_last = 0;
  cpdl__feed_t *one = open_or_skip(&cfg, dp_rank, dp_size);
  cfg.threads = 4;
  cpdl__feed_t *many = open_or_skip(&cfg, dp_rank, dp_size);
  assert_true(cpdl__feed_splits(many));
  unsigned char *want = malloc(MAX_STEP_BYTES), *got = malloc(MAX_STEP_BYTES);
  for (int k = 0; k < STEPS; k++) {
    size_t n = step_bytes(one, want, NULL, NULL);
    assert_int_equal(split_step(many, k % 2 ? 3 : 4, got), n);
    assert_memory_equal(got, want, n);
  }
  free(want);
  free(got);
  cpdl__feed_close(one);
  cpdl__feed_close(many);
}

static void test_split_fill(void **state) {
  (void)state;
  check_split("pack", 0, 0, 1);
  check_split("pack", 1, 1, 2);
  check_split("pad", 0, 1, 3);
  /* a fill part outside [0, n) is refused */
  cpdl_config_t cfg = config("pack", SOURCE);
  cpdl__feed_t *f = open_or_skip(&cfg, 0, 1);
  assert_int_equal(cpdl__feed_fill(f, 2, 2), CPDL_EARG);
  cpdl__feed_close(f);
}

static void test_resume_pack(void **state) {
  (void)state;
  check_resume("pack", 0, 1);
  check_resume("pack", 1, 3);
}

static void test_resume_pad(void **state) {
  (void)state;
  check_resume("pad", 0, 1);
  check_resume("pad", 2, 3);
}

/* Two nodes of one replica agree; two replicas and two seeds differ. */
static void test_agreement(void **state) {
  (void)state;
  cpdl_config_t cfg = config("pack", SOURCE);
  cpdl_config_t other_seed = cfg;
  other_seed.seed = 2025;
  cpdl__feed_t *n0 = open_or_skip(&cfg, 1, 2), *n1 = open_or_skip(&cfg, 1, 2);
  cpdl__feed_t *r0 = open_or_skip(&cfg, 0, 2), *s2 = open_or_skip(&other_seed, 1, 2);
  unsigned char *a = malloc(MAX_STEP_BYTES), *b = malloc(MAX_STEP_BYTES);
  unsigned char *c = malloc(MAX_STEP_BYTES), *d = malloc(MAX_STEP_BYTES);
  for (int k = 0; k < 5; k++) {
    size_t n = step_bytes(n0, a, NULL, NULL);
    assert_int_equal(step_bytes(n1, b, NULL, NULL), n);
    assert_memory_equal(a, b, n);
    assert_int_equal(step_bytes(r0, c, NULL, NULL), n);
    assert_true(memcmp(a, c, n) != 0);
    assert_int_equal(step_bytes(s2, d, NULL, NULL), n);
    assert_true(memcmp(a, d, n) != 0);
  }
  cpdl__feed_close(n0);
  cpdl__feed_close(n1);
  cpdl__feed_close(r0);
  cpdl__feed_close(s2);
  free(a);
  free(b);
  free(c);
  free(d);
}

/* A seed written in the URI wins over the config's. */
static void test_uri_seed(void **state) {
  (void)state;
  cpdl_config_t x = config("pad", "synthetic:?seed=5&samples=50&mean=40&min=2");
  cpdl_config_t y = x;
  y.seed = x.seed + 1; /* the order differs, documents do not: compare document content */
  cpdl_config_t z = config("pad", "synthetic:?samples=50&mean=40&min=2");
  cpdl_config_t w = z;
  w.seed = z.seed + 1;
  /* dp 1 reads every document once per epoch: the multiset of first tokens
   * over one epoch depends only on the documents. */
  /* the config's seed given in the URI too: the same stream as z's */
  cpdl_config_t v = config("pad", "synthetic:?samples=50&mean=40&min=2&seed=2024");
  const cpdl_config_t *cfgs[] = {&x, &y, &z, &w, &v};
  int64_t sums[5] = {0};
  for (int i = 0; i < 5; i++) {
    cpdl_config_t c = *cfgs[i];
    c.batch = 1;
    c.seq_len = 8;
    cpdl__feed_t *f = open_or_skip(&c, 0, 1);
    for (int k = 0; k < 50; k++) {
      cpdl_tensor_t fl[CPDL_MAX_FIELDS];
      int nf;
      assert_int_equal(cpdl__feed_next(f, fl, &nf), 0);
      int64_t v = ((const int64_t *)fl[0].data)[0];
      sums[i] += v * v + 7 * v;
    }
    cpdl__feed_close(f);
  }
  assert_int_equal(sums[0], sums[1]); /* same documents: the URI's seed */
  assert_true(sums[2] != sums[3]);    /* config seed reached the plugin */
  assert_int_equal(sums[2], sums[4]); /* as its default of seed=: the URI is not rewritten */
}

static void test_fields_and_eot(void **state) {
  (void)state;
  for (int loss_on_eot = 0; loss_on_eot < 2; loss_on_eot++) {
    cpdl_config_t cfg = config("pack", SOURCE);
    cfg.loss_on_eot = loss_on_eot;
    cpdl__feed_t *f = open_or_skip(&cfg, 0, 1);
    int eot_labels = 0, masked = 0;
    for (int k = 0; k < 5; k++) {
      cpdl_tensor_t fl[CPDL_MAX_FIELDS];
      int nf;
      assert_int_equal(cpdl__feed_next(f, fl, &nf), 0);
      assert_int_equal(nf, 4);
      const char *want[] = {"input_ids", "labels", "position_ids", "_packed_seq_ids"};
      for (int i = 0; i < 4; i++) {
        assert_string_equal(fl[i].name, want[i]);
        assert_int_equal(fl[i].dtype, CPDL_DTYPE_INT64);
        assert_int_equal(fl[i].shape[0], 4);
        assert_int_equal(fl[i].shape[1], 64);
      }
      const int64_t *labels = fl[1].data;
      for (int t = 0; t < 4 * 64; t++) {
        eot_labels += labels[t] == 50256; /* the synthetic plugin's default EOT */
        masked += labels[t] == -100;
      }
    }
    if (loss_on_eot) {
      assert_true(eot_labels > 0);
      assert_int_equal(masked, 0);
    } else {
      assert_int_equal(eot_labels, 0);
      assert_true(masked > 0);
    }
    cpdl__feed_close(f);
  }
  cpdl_config_t cfg = config("pad", SOURCE);
  cpdl__feed_t *f = open_or_skip(&cfg, 0, 1);
  cpdl_tensor_t fl[CPDL_MAX_FIELDS];
  int nf;
  assert_int_equal(cpdl__feed_next(f, fl, &nf), 0);
  assert_int_equal(nf, 3);
  assert_string_equal(fl[2].name, "attention_mask");
  cpdl__feed_close(f);
}

static void test_errors(void **state) {
  (void)state;
  cpdl__feed_t *f = NULL;
  cpdl_config_t cfg = config("stack", SOURCE);
  assert_int_equal(cpdl__feed_open(&cfg, 0, 1, &f), CPDL_EARG);
  assert_non_null(strstr(cpdl_last_error(), "collate"));
  cfg = config("pack", SOURCE);
  assert_int_equal(cpdl__feed_open(&cfg, 2, 2, &f), CPDL_EARG);
  cfg = config("pack", "nosuchscheme:/x");
  assert_int_equal(cpdl__feed_open(&cfg, 0, 1, &f), CPDL_EPLUGIN);
  assert_null(f);
  /* drop_last with an epoch smaller than a global batch: no step (the
   * loader refuses it at open), and next() says the fix */
  cfg = config("pack", "synthetic:?samples=2");
  f = open_or_skip(&cfg, 3, 4);
  uint64_t steps = 9;
  assert_int_equal(cpdl__feed_steps(f, 1, UINT64_MAX, &steps), 0);
  assert_int_equal(steps, 0);
  cpdl_tensor_t fl[CPDL_MAX_FIELDS];
  int nf;
  assert_int_equal(cpdl__feed_next(f, fl, &nf), CPDL_ESOURCE);
  assert_non_null(strstr(cpdl_last_error(), "drop_last=0"));
  cpdl__feed_close(f);
  cfg.drop_last = 0;
  f = open_or_skip(&cfg, 3, 4);
  assert_int_equal(cpdl__feed_next(f, fl, &nf), 0);
  /* a cursor out of range */
  uint64_t bad[CPDL__CURSOR_WORDS] = {0, UINT64_MAX, 0, 0, 1};
  assert_int_equal(cpdl__feed_seek(f, bad), CPDL_EARG);
  cpdl__feed_close(f);
  f = NULL;
  cfg = config("pack", "synthetic:?samples=0");
  assert_true(cpdl__feed_open(&cfg, 0, 1, &f) < 0);
  assert_null(f);
  cfg = config("pack", SOURCE);
  cfg.seq_len = 0;
  assert_int_equal(cpdl__feed_open(&cfg, 0, 1, &f), CPDL_EARG);
  assert_null(f);
}

/* An int64 [1, 4] .npy (v1) whose values are base, base+1, … */
static void write_npy(const char *path, int64_t base) {
  char header[128];
  int n = snprintf(header, sizeof header, "{'descr': '<i8', 'fortran_order': False, 'shape': (1, 4), }");
  int total = 10 + n + 1;
  int pad = (64 - total % 64) % 64;
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  unsigned short hlen = (unsigned short)(n + pad + 1);
  fwrite("\x93NUMPY\x01\x00", 1, 8, f);
  fwrite(&hlen, 2, 1, f);
  fwrite(header, 1, (size_t)n, f);
  for (int i = 0; i < pad; i++)
    fputc(' ', f);
  fputc('\n', f);
  for (int64_t i = 0; i < 4; i++) {
    int64_t v = base + i;
    fwrite(&v, 8, 1, f);
  }
  fclose(f);
}

/* Pre-collated batches pass through unchanged. Every replica gets the same
 * number of steps per pass: 5 batches, dp 2 → 2 each (drop_last=1: batch 4
 * is not read) or 3 each (drop_last=0: replica 1's third step wraps to batch
 * 0); passes roll over; resume by cursor. */
static void test_npy_batches(void **state) {
  (void)state;
  char dir[] = "/tmp/cpdl-test-feed-XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[256];
  for (int step = 0; step < 5; step++) {
    snprintf(path, sizeof path, "%s/step%04d", dir, step);
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(path, sizeof path, "%s/step%04d/input_ids.npy", dir, step);
    write_npy(path, 100 * step);
    snprintf(path, sizeof path, "%s/step%04d/labels.npy", dir, step);
    write_npy(path, 100 * step + 1);
  }
  char uri[300];
  snprintf(uri, sizeof uri, "npy:%s", dir);
  for (int drop_last = 1; drop_last >= 0; drop_last--) {
    cpdl_config_t cfg = config("pack", uri);
    cfg.drop_last = drop_last;
    const int64_t want[2][2][3] = {{{0, 2, 0}, {1, 3, 1}}, {{0, 2, 4}, {1, 3, 0}}};
    const int per_pass = drop_last ? 2 : 3;
    for (int dp_rank = 0; dp_rank < 2; dp_rank++) {
      cpdl__feed_t *f = NULL;
      int rc = cpdl__feed_open(&cfg, dp_rank, 2, &f);
      if (rc == CPDL_EPLUGIN) {
        print_message("SKIP: the npy plugin is not available (%s)\n", cpdl_last_error());
        skip();
      }
      assert_int_equal(rc, 0);
      uint64_t steps = 0;
      assert_int_equal(cpdl__feed_steps(f, 1, UINT64_MAX, &steps), 0);
      assert_int_equal(steps, per_pass);
      assert_int_equal(cpdl__feed_steps(f, 3, UINT64_MAX, &steps), 0);
      assert_int_equal(steps, 3 * per_pass);
      uint64_t cursor[CPDL__CURSOR_WORDS];
      for (int s = 0; s < 3; s++) {
        if (s == 1)
          cpdl__feed_cursor(f, cursor);
        cpdl_tensor_t fl[CPDL_MAX_FIELDS];
        int nf = 0;
        assert_int_equal(cpdl__feed_next(f, fl, &nf), 0);
        assert_int_equal(nf, 2);
        int64_t batch = want[!drop_last][dp_rank][s];
        for (int i = 0; i < nf; i++) {
          int64_t base = 100 * batch + (strcmp(fl[i].name, "labels") == 0);
          assert_int_equal(fl[i].dtype, CPDL_DTYPE_INT64);
          assert_int_equal(fl[i].shape[1], 4);
          assert_int_equal(((const int64_t *)fl[i].data)[3], base + 3);
        }
      }
      /* resume after the first batch */
      cpdl_tensor_t fl[CPDL_MAX_FIELDS];
      int nf;
      assert_int_equal(cpdl__feed_seek(f, cursor), 0);
      assert_int_equal(cpdl__feed_next(f, fl, &nf), 0);
      assert_int_equal(((const int64_t *)fl[0].data)[0], 100 * want[!drop_last][dp_rank][1]);
      cpdl__feed_close(f);
    }
  }
  /* Fewer batches than replicas with drop_last=1: an error, not a replica
   * without data. */
  cpdl_config_t cfg = config("pack", uri);
  cpdl__feed_t *f = NULL;
  assert_int_equal(cpdl__feed_open(&cfg, 0, 6, &f), 0);
  uint64_t steps = 9;
  assert_int_equal(cpdl__feed_steps(f, 1, UINT64_MAX, &steps), 0);
  assert_int_equal(steps, 0);
  cpdl_tensor_t fl[CPDL_MAX_FIELDS];
  int nf;
  assert_int_equal(cpdl__feed_next(f, fl, &nf), CPDL_ESOURCE);
  assert_non_null(strstr(cpdl_last_error(), "drop_last=0"));
  cpdl__feed_close(f);
  for (int step = 0; step < 5; step++) {
    snprintf(path, sizeof path, "%s/step%04d/input_ids.npy", dir, step);
    unlink(path);
    snprintf(path, sizeof path, "%s/step%04d/labels.npy", dir, step);
    unlink(path);
    snprintf(path, sizeof path, "%s/step%04d", dir, step);
    rmdir(path);
  }
  rmdir(dir);
}

/* drop_last=0 with n % dp == 0 has nothing to wrap: 4 batches at dp 2 are exactly 2 steps
 * per replica per pass, and the pass delivers every batch once (no batch twice, none left
 * out), whichever replica gets which. */
static void test_npy_divisible(void **state) {
  (void)state;
  char dir[] = "/tmp/cpdl-test-feed-XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[256];
  for (int step = 0; step < 4; step++) {
    snprintf(path, sizeof path, "%s/step%04d", dir, step);
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(path, sizeof path, "%s/step%04d/input_ids.npy", dir, step);
    write_npy(path, 100 * step);
    snprintf(path, sizeof path, "%s/step%04d/labels.npy", dir, step);
    write_npy(path, 100 * step + 1);
  }
  char uri[300];
  snprintf(uri, sizeof uri, "npy:%s", dir);
  for (int drop_last = 0; drop_last <= 1; drop_last++) {
    cpdl_config_t cfg = config("pack", uri);
    cfg.drop_last = drop_last;
    int seen[4] = {0};
    for (int dp_rank = 0; dp_rank < 2; dp_rank++) {
      cpdl__feed_t *f = NULL;
      int rc = cpdl__feed_open(&cfg, dp_rank, 2, &f);
      if (rc == CPDL_EPLUGIN) {
        print_message("SKIP: the npy plugin is not available (%s)\n", cpdl_last_error());
        skip();
      }
      assert_int_equal(rc, 0);
      uint64_t steps = 0;
      assert_int_equal(cpdl__feed_steps(f, 1, UINT64_MAX, &steps), 0);
      assert_int_equal(steps, 2);
      assert_int_equal(cpdl__feed_steps(f, 3, UINT64_MAX, &steps), 0);
      assert_int_equal(steps, 6);
      for (uint64_t s = 0; s < 2; s++) {
        cpdl_tensor_t fl[CPDL_MAX_FIELDS];
        int nf = 0;
        assert_int_equal(cpdl__feed_next(f, fl, &nf), 0);
        int64_t first = ((const int64_t *)fl[0].data)[0];
        if (strcmp(fl[0].name, "labels") == 0)
          first -= 1;
        assert_true(first >= 0 && first % 100 == 0 && first / 100 < 4);
        seen[first / 100]++;
      }
      cpdl__feed_close(f);
    }
    for (int k = 0; k < 4; k++)
      assert_int_equal(seen[k], 1);
  }
  for (int step = 0; step < 4; step++) {
    snprintf(path, sizeof path, "%s/step%04d/input_ids.npy", dir, step);
    unlink(path);
    snprintf(path, sizeof path, "%s/step%04d/labels.npy", dir, step);
    unlink(path);
    snprintf(path, sizeof path, "%s/step%04d", dir, step);
    rmdir(path);
  }
  rmdir(dir);
}

/* schedule=dynamic (docs/schedule.md): every CP rank's block cut by the feed
 * itself. Per step, over the 4 schedule ranks of dp 2 x cp 2 (two feeds, one
 * per replica): the spec (10 per-rank fields [cp, ...], then the group
 * table); each rank's cu_local tiles its block and its lengths are what
 * cpdl__feed_rank_lengths says; every share holds the zigzag positions of its
 * chunk and next-token labels; the real pairs of all shares add up to static
 * thd's two rows; a group's members agree on its sub-samples in order; a
 * seek to a cursor reproduces the steps after it. */
#define DYN_S 64
#define DYN_CP 2
#define DYN_K (DYN_S / DYN_CP / 2)
static cpdl_config_t dynamic_config(const char *schedule) {
  cpdl_config_t cfg = config("pack", SOURCE);
  cfg.mode = CPDL_MODE_THD;
  cfg.batch = 1;
  cfg.cp = DYN_CP;
  snprintf(cfg.schedule, sizeof cfg.schedule, "%s", schedule);
  return cfg;
}

typedef struct {
  int64_t doc, padded, len;
} dyn_entry_t;

static void test_dynamic(void **state) {
  (void)state;
  cpdl_config_t cfg = dynamic_config("dynamic"), st = dynamic_config("static");
  cpdl__feed_t *f[2] = {open_or_skip(&cfg, 0, 2), open_or_skip(&cfg, 1, 2)};
  cpdl__feed_t *g[2] = {open_or_skip(&st, 0, 2), open_or_skip(&st, 1, 2)};
  assert_int_equal(cpdl__feed_rank_fields(f[0]), 10);
  assert_int_equal(cpdl__feed_rank_fields(g[0]), 0);
  uint64_t cursor[CPDL__CURSOR_WORDS];
  enum { STEPS_DYN = 8, FIELD_BYTES = 4096 };
  static unsigned char saved[STEPS_DYN][CPDL_MAX_FIELDS][FIELD_BYTES];
  int spread = 0;
  for (int k = 0; k < STEPS_DYN; k++) {
    int64_t real = 0, want = 0;
    /* group id -> member chunk -> entries (a few per step) */
    static dyn_entry_t lists[64][4][DYN_K];
    int count[64][4];
    memset(count, 0, sizeof count);
    int n_groups = 0;
    const int32_t *table = NULL;
    for (int q = 0; q < 2; q++) {
      cpdl_tensor_t fl[CPDL_MAX_FIELDS], sl[CPDL_MAX_FIELDS];
      int nf = 0, ns = 0;
      assert_int_equal(cpdl__feed_next(f[q], fl, &nf), 0);
      assert_int_equal(cpdl__feed_next(g[q], sl, &ns), 0);
      int64_t srows[CPDL_MAX_FIELDS];
      cpdl__feed_lengths(g[q], sl, ns, srows);
      want += ((const int32_t *)sl[4].data)[srows[4] - 1]; /* static's real pairs */
      assert_int_equal(nf, 12);
      const char *names[] = {"input_ids", "labels", "position_ids", "loss_mask", "cu_seqlens",
                             "cu_seqlens_padded", "cu_local", "doc_ids", "cp_group", "cp_chunk",
                             "cp_groups", "cp_world_ranks"};
      for (int i = 0; i < nf; i++) {
        assert_string_equal(fl[i].name, names[i]);
        if (i < 10)
          assert_int_equal(fl[i].shape[0], DYN_CP);
      }
      assert_int_equal(fl[0].shape[2], DYN_S / DYN_CP);
      assert_int_equal(fl[4].shape[1], DYN_K + 1);
      n_groups = (int)fl[10].shape[0];
      table = fl[10].data;
      assert_int_equal(n_groups, 8); /* W = 4: 4 + 2 + 1 + 1 aligned groups */
      for (int i = 0; i < nf; i++) { /* for the resume check below */
        size_t n = cpdl_dtype_size(fl[i].dtype);
        for (int d = 0; d < fl[i].ndim; d++)
          n *= (size_t)fl[i].shape[d];
        if (q == 0 && n <= FIELD_BYTES)
          memcpy(saved[k][i], fl[i].data, n);
      }
      for (int c = 0; c < DYN_CP; c++) {
        const int s = q * DYN_CP + c, B = DYN_S / DYN_CP;
        const int64_t *ids = (const int64_t *)fl[0].data + c * B;
        const int64_t *labels = (const int64_t *)fl[1].data + c * B;
        const int64_t *pos = (const int64_t *)fl[2].data + c * B;
        const int32_t *cu = (const int32_t *)fl[4].data + c * (DYN_K + 1);
        const int32_t *cup = (const int32_t *)fl[5].data + c * (DYN_K + 1);
        const int32_t *cul = (const int32_t *)fl[6].data + c * (DYN_K + 1);
        const int64_t *docs = (const int64_t *)fl[7].data + c * DYN_K;
        const int32_t *grp = (const int32_t *)fl[8].data + c * DYN_K;
        const int32_t *chk = (const int32_t *)fl[9].data + c * DYN_K;
        int64_t rows[CPDL_MAX_FIELDS];
        cpdl__feed_rank_lengths(f[q], c, rows);
        const int64_t n = rows[7];
        assert_true(n >= 1 && n <= DYN_K);
        assert_int_equal(rows[4], n + 1);
        assert_int_equal(rows[0], 1);
        assert_int_equal(cul[0], 0);
        assert_int_equal(cul[n], B);
        for (int64_t e = 0; e < n; e++) {
          const int32_t gid = grp[e], first = table[2 * gid], size = table[2 * gid + 1];
          assert_true(gid >= 0 && gid < n_groups && s >= first && s < first + size);
          assert_int_equal(chk[e], s - first);
          const int64_t P = cup[e + 1] - cup[e], L = cu[e + 1] - cu[e], h = P / (2 * size);
          assert_int_equal(P % (2 * size), 0);
          assert_int_equal(cul[e + 1] - cul[e], P / size);
          spread += size > 1 && L > 0;
          for (int half = 0; half < 2; half++) {
            const int64_t u0 = (half ? 2 * size - 1 - chk[e] : chk[e]) * h;
            for (int64_t t = 0; t < h; t++) {
              const int64_t at = cul[e] + half * h + t, u = u0 + t;
              assert_int_equal(pos[at], u);
              real += u < L;
              if (u >= L)
                assert_int_equal(labels[at], -100);
              else if (t + 1 < h && u + 1 < L)
                assert_int_equal(labels[at], ids[at + 1]); /* the next pair's input */
            }
          }
          assert_true(count[gid][chk[e]] < DYN_K);
          lists[gid][chk[e]][count[gid][chk[e]]++] = (dyn_entry_t){docs[e], P, L};
        }
      }
    }
    assert_int_equal(real, want);
    for (int gid = 0; gid < n_groups; gid++)
      for (int j = 1; j < table[2 * gid + 1]; j++) {
        assert_int_equal(count[gid][j], count[gid][0]);
        for (int e = 0; e < count[gid][0]; e++)
          assert_memory_equal(&lists[gid][j][e], &lists[gid][0][e], sizeof(dyn_entry_t));
      }
    if (k == 3)
      cpdl__feed_cursor(f[0], cursor);
  }
  assert_true(spread > 0);
  cpdl__feed_t *b = open_or_skip(&cfg, 0, 2);
  assert_int_equal(cpdl__feed_seek(b, cursor), 0);
  for (int k = 4; k < STEPS_DYN; k++) {
    cpdl_tensor_t fl[CPDL_MAX_FIELDS];
    int nf = 0;
    assert_int_equal(cpdl__feed_next(b, fl, &nf), 0);
    for (int i = 0; i < nf; i++) {
      size_t n = cpdl_dtype_size(fl[i].dtype);
      for (int d = 0; d < fl[i].ndim; d++)
        n *= (size_t)fl[i].shape[d];
      if (n <= FIELD_BYTES)
        assert_memory_equal(fl[i].data, saved[k][i], n);
    }
  }
  cpdl__feed_close(b);
  for (int q = 0; q < 2; q++) {
    cpdl__feed_close(f[q]);
    cpdl__feed_close(g[q]);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_resume_pack),
      cmocka_unit_test(test_split_fill),
      cmocka_unit_test(test_resume_pad),
      cmocka_unit_test(test_agreement),
      cmocka_unit_test(test_uri_seed),
      cmocka_unit_test(test_fields_and_eot),
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_npy_batches),
      cmocka_unit_test(test_npy_divisible),
      cmocka_unit_test(test_dynamic),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
