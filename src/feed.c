/* feed.c — the leader's batch stream: source plugin → sampler → collate.
 *
 * Invariant: everything a step contains follows from (config, dp_rank,
 * dp_size, cursor), so nodes of one replica agree without communication and
 * a run resumes exactly. The cursor is CPDL__CURSOR_WORDS words:
 *   [0] epoch, [1] position in this replica's epoch of the document the next
 *   step starts in, [2] token offset in that document (pack; 0 for pad),
 *   [3] steps produced so far.
 * Pre-collated sources (npy) pass their batches through (words 0-2 are then
 * 0): a pass (epoch) gives every replica the same number of steps P, n / dp
 * of n batches with drop_last=1 (the last n % dp batches are not read) or
 * ceil(n / dp) with drop_last=0 (the last row of the pass wraps to batches
 * 0, 1, …); step s of replica r reads batch ((s mod P) * dp + r) mod n.
 * Neither kind of source ends by itself: passes roll over, and the loader
 * ends the run at steps= or after epochs= passes (cpdl__feed_steps counts
 * them from lengths alone).
 * Global-order sources (gpt:, Megatron's GPTDataset) bypass sampler and
 * collate: step k, replica r, row b is sample base + ((k - k0)*dp + r)*batch + b
 * (Megatron's pretraining sampler after a resume at step k0 with `base`
 * samples consumed; the URI's consumed_samples= sets it at step 0); the
 * cursor is [1] (CPDL__CURSOR_CONSUMED) samples consumed before the next step
 * (the same on every replica, whatever dp is), [3] steps. The stream ends at
 * the last full global batch (CPDL_EEOF); epochs= does not bound it.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct cpdl__feed {
  cpdl__source_t *source;
  bool batches;          /* pre-collated: batches pass through */
  bool double_buffer;    /* the collate keeps two output sets */
  int dp_rank, dp_size;
  int64_t n_batches;
  int64_t per_pass;      /* pre-collated: this replica's steps per pass */
  cpdl__collate_kind_t kind;
  cpdl__sampler_t *sampler;
  cpdl__collate_t *collate;
  uint64_t steps;        /* steps produced; the next step's number */
  /* global order (gpt:) */
  bool global;
  int batch;               /* the config's (also counted by cpdl__feed_steps) */
  int64_t seq_len, n_global;
  uint64_t base, base_step;  /* samples consumed at step base_step (the last seek) */
  int n_sets, set;
  int64_t *rows[2][3];       /* input_ids, labels, position_ids [batch, seq_len] */
  float *loss_mask[2];
};

/* The value of `key` in the query of uri as an unsigned integer; 0 if absent. */
static int uri_u64(const char *uri, const char *key, uint64_t *out) {
  *out = 0;
  const char *q = strchr(uri, '?');
  size_t klen = strlen(key);
  while (q) {
    q++;
    if (strncmp(q, key, klen) == 0 && q[klen] == '=') {
      char *end;
      errno = 0;
      unsigned long long v = strtoull(q + klen + 1, &end, 10);
      if (errno || end == q + klen + 1 || (*end && *end != '&') || q[klen + 1] == '-')
        return cpdl__error(CPDL_EARG, "feed: %s= in \"%.200s\" is not a non-negative integer",
                           key, uri);
      *out = v;
      return 0;
    }
    q = strchr(q, '&');
  }
  return 0;
}

static int global_open(cpdl__feed_t *feed, const cpdl_config_t *cfg, bool double_buffer) {
  feed->global = true;
  /* Its rows are Megatron's samples, already packed: a collate or a packing
   * of cpdl's own would be ignored, so asking for one is an error. */
  if (cfg->mode == CPDL_MODE_THD)
    return cpdl__error(CPDL_EARG, "mode=thd packs whole documents itself (mode thd: collate=pack, "
                       "each document padded to 2*cp), but the gpt: source delivers Megatron's "
                       "fixed samples of seq_len + 1 tokens, which cpdl does not repack; use "
                       "mode=contiguous or mode=round_robin with gpt:, or mode=thd with "
                       "megatron:PREFIX (the same .bin/.idx files)");
  if (strcmp(cfg->collate, "pack") != 0)
    return cpdl__error(CPDL_EARG, "collate=%s does not apply to the gpt: source: its samples are "
                       "Megatron's, packed by its GPTDataset (no padding of cpdl's); leave collate "
                       "at pack (the default), or use megatron:PREFIX with collate=%s",
                       cfg->collate, cfg->collate);
  /* consumed_samples=C: start where a Megatron run left off (its
   * consumed_samples); a resume state replaces it (cpdl__feed_seek). */
  int rc = uri_u64(cfg->source, "consumed_samples", &feed->base);
  if (rc)
    return rc;
  feed->batch = cfg->batch;
  feed->seq_len = cfg->seq_len;
  feed->n_global = cpdl__source_count(feed->source);
  feed->n_sets = double_buffer ? 2 : 1;
  size_t elems;
  if (cfg->batch < 1 || cfg->seq_len < 1 ||
      !cpdl__mul_size((size_t)cfg->batch, (size_t)cfg->seq_len, &elems) || elems > SIZE_MAX / 8)
    return cpdl__error(CPDL_EOVERFLOW, "feed: batch %d x seq_len %lld does not fit in memory",
                       cfg->batch, (long long)cfg->seq_len);
  for (int s = 0; s < feed->n_sets; s++) {
    for (int f = 0; f < 3; f++)
      if (!(feed->rows[s][f] = malloc(elems * sizeof(int64_t))))
        return cpdl__error(-ENOMEM, "feed: out of memory for [%d, %lld] rows", cfg->batch,
                           (long long)cfg->seq_len);
    if (!(feed->loss_mask[s] = malloc(elems * sizeof(float))))
      return cpdl__error(-ENOMEM, "feed: out of memory for [%d, %lld] rows", cfg->batch,
                         (long long)cfg->seq_len);
  }
  return 0;
}

static void global_free(cpdl__feed_t *feed) {
  for (int s = 0; s < 2; s++) {
    for (int f = 0; f < 3; f++)
      free(feed->rows[s][f]);
    free(feed->loss_mask[s]);
  }
}

static void set_field(cpdl_tensor_t *t, const char *name, cpdl_dtype_t dtype,
                      const cpdl__feed_t *feed, const void *data) {
  memset(t, 0, sizeof *t);
  t->name = name;
  t->dtype = dtype;
  t->ndim = 2;
  t->shape[0] = feed->batch;
  t->shape[1] = feed->seq_len;
  t->data = data;
}

/* Step feed->steps of this replica: rows of consecutive global samples. */
static int global_next(cpdl__feed_t *feed, cpdl_tensor_t *fields, int *n_fields) {
  uint64_t dp = (uint64_t)feed->dp_size, b = (uint64_t)feed->batch;
  uint64_t k = feed->steps - feed->base_step;
  uint64_t n = (uint64_t)feed->n_global;
  /* the whole global batch of this step must exist (Megatron drops the last
   * partial one) */
  if (feed->base > n || k > (n - feed->base) / (dp * b) ||
      (k + 1) > (n - feed->base) / (dp * b))
    return cpdl__error(CPDL_EEOF, "feed: the source's %llu samples are consumed (%llu before "
                       "this step, %llu per global batch)", (unsigned long long)n,
                       (unsigned long long)(feed->base + k * dp * b), (unsigned long long)(dp * b));
  uint64_t first = feed->base + (k * dp + (uint64_t)feed->dp_rank) * b;
  feed->set = (feed->set + 1) % feed->n_sets;
  int s = feed->set;
  int64_t S = feed->seq_len;
  for (int64_t row = 0; row < feed->batch; row++) {
    int rc = cpdl__source_read_row(feed->source, (int64_t)(first + (uint64_t)row), S,
                                   feed->rows[s][0] + row * S, feed->rows[s][1] + row * S,
                                   feed->loss_mask[s] + row * S, feed->rows[s][2] + row * S);
    if (rc)
      return rc;
  }
  set_field(&fields[0], "input_ids", CPDL_DTYPE_INT64, feed, feed->rows[s][0]);
  set_field(&fields[1], "labels", CPDL_DTYPE_INT64, feed, feed->rows[s][1]);
  set_field(&fields[2], "loss_mask", CPDL_DTYPE_FLOAT32, feed, feed->loss_mask[s]);
  set_field(&fields[3], "position_ids", CPDL_DTYPE_INT64, feed, feed->rows[s][2]);
  *n_fields = 4;
  return 0;
}

static int read_sample(void *arg, int64_t index, cpdl__sample_t *out) {
  return cpdl__source_read((cpdl__source_t *)arg, index, out);
}

/* True if the query part of uri ("scheme:path?k=v&k=v") has key. */
static bool uri_has_key(const char *uri, const char *key) {
  const char *q = strchr(uri, '?');
  size_t klen = strlen(key);
  while (q) {
    q++;
    if (strncmp(q, key, klen) == 0 && (q[klen] == '=' || q[klen] == '&' || q[klen] == '\0'))
      return true;
    q = strchr(q, '&');
  }
  return false;
}

/* The source URI to open: "synthetic:" by default; a synthetic URI without a
 * seed gets the config's, so `seed=` alone decides the whole stream. */
static int source_uri(const cpdl_config_t *cfg, char *buf, size_t size) {
  const char *uri = cfg->source[0] ? cfg->source : "synthetic:";
  int n;
  if (strncmp(uri, "synthetic:", 10) == 0 && !uri_has_key(uri, "seed"))
    /* As signed: the plugin parses int64 and takes the bits back as uint64. */
    n = snprintf(buf, size, "%s%cseed=%lld", uri, strchr(uri, '?') ? '&' : '?',
                 (long long)(int64_t)cfg->seed);
  else if (strncmp(uri, "gpt:", 4) == 0) {
    /* Megatron's --seq-length and --seed are the loader's. */
    char extra[64] = "", *e = extra;
    if (!uri_has_key(uri, "seq_len"))
      e += snprintf(e, sizeof extra, "&seq_len=%lld", (long long)cfg->seq_len);
    if (!uri_has_key(uri, "seed"))
      snprintf(e, sizeof extra - (size_t)(e - extra), "&seed=%llu", (unsigned long long)cfg->seed);
    n = snprintf(buf, size, "%s%s%s", uri, strchr(uri, '?') ? "" : "?",
                 extra + (strchr(uri, '?') ? 0 : 1));
  }
  else
    n = snprintf(buf, size, "%s", uri);
  if (n < 0 || (size_t)n >= size)
    return cpdl__error(CPDL_EARG, "feed: source URI \"%.64s…\" is longer than %zu bytes", uri, size - 1);
  return 0;
}

int cpdl__feed_open(const cpdl_config_t *cfg, int dp_rank, int dp_size, cpdl__feed_t **out) {
  *out = NULL;
  if (dp_size < 1 || dp_rank < 0 || dp_rank >= dp_size)
    return cpdl__error(CPDL_EARG, "feed: dp_rank %d is not in [0, dp_size %d)", dp_rank, dp_size);
  cpdl__collate_params_t cp = {
      .seq_len = cfg->seq_len,
      .batch = cfg->batch,
      .padding_token_id = cfg->padding_token_id,
      .position_ids = cfg->position_ids,
      .loss_on_eot = cfg->loss_on_eot,
      .eot_token = -1,
      /* Several loader threads pipeline collation with preparation. */
      .double_buffer = cfg->threads > 1,
      .thd_multiple = cfg->mode == CPDL_MODE_THD ? 2 * cfg->cp : 0,
  };
  int rc = cpdl__collate_parse(cfg->collate, &cp.kind);
  if (rc)
    return cpdl__error_prefix(rc, "config key collate");
  char uri[CPDL_SOURCE_MAX + 32];
  rc = source_uri(cfg, uri, sizeof uri);
  if (rc)
    return rc;

  cpdl__feed_t *feed = calloc(1, sizeof *feed);
  if (!feed)
    return cpdl__error(-ENOMEM, "feed: out of memory");
  feed->dp_rank = dp_rank;
  feed->dp_size = dp_size;
  feed->kind = cp.kind;
  feed->seq_len = cfg->seq_len;
  feed->batch = cfg->batch;
  rc = cpdl__source_open(uri, &feed->source);
  if (rc)
    goto fail_free;

  if (cpdl__source_has_batches(feed->source)) {
    feed->batches = true;
    feed->n_batches = cpdl__source_batch_count(feed->source);
    if (feed->n_batches < 0) {
      rc = cpdl__error(CPDL_ESOURCE, "feed: source \"%s\" reports %lld batches", uri,
                       (long long)feed->n_batches);
      goto fail_close;
    }
    feed->per_pass = cfg->drop_last ? feed->n_batches / dp_size
                                    : feed->n_batches / dp_size + (feed->n_batches % dp_size != 0);
    if (feed->per_pass == 0) {
      rc = cpdl__error(CPDL_ESOURCE,
                       "feed: source \"%s\" has %lld batches, fewer than dp_size %d, so with "
                       "drop_last=1 replica %d would get none; set drop_last=0 (wrap) or add "
                       "batches", uri, (long long)feed->n_batches, dp_size, dp_rank);
      goto fail_close;
    }
    *out = feed;
    return 0;
  }
  if (cpdl__source_global_order(feed->source)) {
    rc = global_open(feed, cfg, cp.double_buffer);
    if (rc) {
      global_free(feed);
      goto fail_close;
    }
    feed->double_buffer = cp.double_buffer;
    *out = feed;
    return 0;
  }

  cpdl__sampler_params_t sp = {
      .n_samples = cpdl__source_count(feed->source),
      .seed = cfg->seed,
      .dp_rank = dp_rank,
      .dp_size = dp_size,
      .drop_last = cfg->drop_last != 0,
  };
  if (sp.n_samples < 1) {
    rc = cpdl__error(CPDL_ESOURCE, "feed: source \"%s\" has %lld samples; it needs at least one", uri,
                     (long long)sp.n_samples);
    goto fail_close;
  }
  rc = cpdl__sampler_create(&sp, &feed->sampler);
  if (rc)
    goto fail_close;
  cp.eot_token = cpdl__source_eot(feed->source);
  feed->double_buffer = cp.double_buffer;
  rc = cpdl__collate_create(&cp, feed->sampler, read_sample, feed->source, &feed->collate);
  if (rc)
    goto fail_sampler;
  *out = feed;
  return 0;

fail_sampler:
  cpdl__sampler_destroy(feed->sampler);
fail_close:
  cpdl__source_close(feed->source);
fail_free:
  free(feed);
  return rc;
}

int cpdl__feed_next(cpdl__feed_t *feed, cpdl_tensor_t *fields, int *n_fields) {
  int rc;
  if (feed->batches) {
    /* < per_pass * dp + dp <= 2 n + dp: no overflow. */
    uint64_t in_pass = feed->steps % (uint64_t)feed->per_pass;
    uint64_t global = in_pass * (uint64_t)feed->dp_size + (uint64_t)feed->dp_rank;
    int64_t batch = (int64_t)(global % (uint64_t)feed->n_batches);
    rc = cpdl__source_read_batch(feed->source, batch, fields, n_fields);
  } else if (feed->global) {
    rc = global_next(feed, fields, n_fields);
  } else {
    rc = cpdl__collate_next(feed->collate, fields, n_fields);
  }
  if (rc)
    return rc;
  feed->steps++;
  return 0;
}

int cpdl__feed_steps(cpdl__feed_t *feed, uint64_t epochs, uint64_t cap, uint64_t *out) {
  *out = 0;
  if (feed->global) { /* ends by itself at its last full global batch */
    *out = cap;
    return 0;
  }
  if (feed->batches) {
    unsigned __int128 n = (unsigned __int128)feed->per_pass * epochs;
    *out = n > cap ? cap : (uint64_t)n;
    return 0;
  }
  /* The collate's own rule on the documents' lengths, in its order (collate.c). */
  const int64_t per_epoch = cpdl__sampler_per_epoch(feed->sampler);
  cpdl__collate_count_t count;
  cpdl__collate_count_init(&count, feed->collate);
  uint64_t steps = 0;
  for (uint64_t e = 0; e < epochs && steps < cap; e++) {
    for (int64_t p = 0; p < per_epoch; p++) {
      int64_t index, n;
      int rc = cpdl__sampler_index(feed->sampler, e, p, &index);
      if (!rc)
        rc = cpdl__source_length(feed->source, index, &n);
      if (rc)
        return cpdl__error_prefix(rc, "counting the steps of %llu epochs (config key epochs)",
                                  (unsigned long long)epochs);
      cpdl__collate_count_doc(&count, e, n);
    }
    steps = cpdl__collate_count_steps(&count);
  }
  *out = steps < cap ? steps : cap;
  return 0;
}

void cpdl__feed_cursor(const cpdl__feed_t *feed, uint64_t words[CPDL__CURSOR_WORDS]) {
  memset(words, 0, CPDL__CURSOR_WORDS * sizeof *words);
  if (feed->global) {
    words[CPDL__CURSOR_CONSUMED] = feed->base + (feed->steps - feed->base_step) *
                                                    (uint64_t)feed->dp_size * (uint64_t)feed->batch;
  } else if (!feed->batches) {
    uint64_t epoch;
    int64_t position, offset;
    cpdl__collate_cursor(feed->collate, &epoch, &position, &offset);
    words[0] = epoch;
    words[1] = (uint64_t)position;
    words[2] = (uint64_t)offset;
  }
  words[3] = feed->steps;
}

int cpdl__feed_seek(cpdl__feed_t *feed, const uint64_t words[CPDL__CURSOR_WORDS]) {
  if (feed->batches) {
    if (words[0] || words[1] || words[2])
      return cpdl__error(CPDL_EARG, "feed: cursor (%llu, %llu, %llu) is not one of a pre-collated source",
                         (unsigned long long)words[0], (unsigned long long)words[1],
                         (unsigned long long)words[2]);
    feed->steps = words[3];
    return 0;
  }
  if (feed->global) {
    if (words[0] || words[2] || words[CPDL__CURSOR_CONSUMED] > (uint64_t)feed->n_global)
      return cpdl__error(CPDL_EARG, "feed: cursor (%llu, %llu, %llu) is not one of a gpt: source "
                         "of %lld samples", (unsigned long long)words[0],
                         (unsigned long long)words[1], (unsigned long long)words[2],
                         (long long)feed->n_global);
    feed->base = words[CPDL__CURSOR_CONSUMED];
    feed->base_step = feed->steps = words[3];
    return 0;
  }
  if (words[1] > INT64_MAX || words[2] > INT64_MAX)
    return cpdl__error(CPDL_EARG, "feed: cursor position %llu / offset %llu out of range",
                       (unsigned long long)words[1], (unsigned long long)words[2]);
  int rc = cpdl__collate_seek(feed->collate, words[0], (int64_t)words[1], (int64_t)words[2]);
  if (rc)
    return rc;
  feed->steps = words[3];
  return 0;
}

void cpdl__feed_close(cpdl__feed_t *feed) {
  if (!feed)
    return;
  global_free(feed);
  cpdl__collate_destroy(feed->collate);
  cpdl__sampler_destroy(feed->sampler);
  cpdl__source_close(feed->source);
  free(feed);
}

bool cpdl__feed_double_buffered(const cpdl__feed_t *feed) {
  return !feed->batches && (feed->collate || feed->global) && feed->double_buffer;
}

bool cpdl__feed_global_order(const cpdl__feed_t *feed) {
  /* gpt: (CPDL_SOURCE_GLOBAL_ORDER); the sampler's and npy's orders are per replica */
  return feed && feed->global;
}
