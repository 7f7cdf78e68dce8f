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
  int64_t seq_len;
  int batch;
  cpdl__sampler_t *sampler;
  cpdl__collate_t *collate;
  uint64_t steps;        /* steps produced; the next step's number */
};

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
  } else {
    rc = cpdl__collate_next(feed->collate, fields, n_fields);
  }
  if (rc)
    return rc;
  feed->steps++;
  return 0;
}

/* Pack: a stream of T tokens holds floor((T - 1) / S) rows (windows of S + 1
 * tokens overlapping by one); pad: one row per sample of >= 2 tokens. */
static uint64_t rows_to_steps(unsigned __int128 rows, int batch) {
  unsigned __int128 steps = rows / (unsigned)batch;
  return steps > UINT64_MAX ? UINT64_MAX : (uint64_t)steps;
}

int cpdl__feed_steps(cpdl__feed_t *feed, uint64_t epochs, uint64_t cap, uint64_t *out) {
  *out = 0;
  if (feed->batches) {
    unsigned __int128 n = (unsigned __int128)feed->per_pass * epochs;
    *out = n > cap ? cap : (uint64_t)n;
    return 0;
  }
  const int64_t per_epoch = cpdl__sampler_per_epoch(feed->sampler);
  const bool pack = feed->kind == CPDL__COLLATE_PACK;
  unsigned __int128 tokens = 0, rows = 0;
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
      if (pack)
        tokens += (uint64_t)n;
      else
        rows += n >= 2;
    }
    if (pack)
      rows = tokens > 0 ? (tokens - 1) / (uint64_t)feed->seq_len : 0;
    steps = rows_to_steps(rows, feed->batch);
  }
  *out = steps < cap ? steps : cap;
  return 0;
}

void cpdl__feed_cursor(const cpdl__feed_t *feed, uint64_t words[CPDL__CURSOR_WORDS]) {
  memset(words, 0, CPDL__CURSOR_WORDS * sizeof *words);
  if (!feed->batches) {
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
  cpdl__collate_destroy(feed->collate);
  cpdl__sampler_destroy(feed->sampler);
  cpdl__source_close(feed->source);
  free(feed);
}

bool cpdl__feed_double_buffered(const cpdl__feed_t *feed) {
  return !feed->batches && feed->collate && feed->double_buffer;
}

bool cpdl__feed_global_order(const cpdl__feed_t *feed) {
  (void)feed; /* every order today is per replica (sampler or npy batches r, r + dp, …) */
  return false;
}
