/* feed.c — the leader's batch stream: one global order of training rows.
 *
 * Invariant: the rows are a function of the data and of seed, seq_len,
 * batch, collate, mode and the padding multiple alone — never of dp, cp, tp
 * or the node count (docs/design.md#the-global-order). Epoch e is a sequence
 * of rows (the kind makes them: feed_kind.h); with G = dp * unit rows per
 * global batch, row b of replica r at the k-th step of the epoch is row
 *   consumed0 + (k*dp + r)*unit + b
 * (unit = batch; 1 for pre-collated sources, whose rows are whole batches),
 * consumed0 being where the epoch was entered (0, or a resume point). An
 * epoch ends at its last full global batch with drop_last=1; with
 * drop_last=0 its last global batch is completed by the epoch's first rows
 * again (wrap). Epochs roll over (gpt: ends instead, Megatron's rule).
 * Every replica takes the same number of steps, and the cursor — epoch, rows
 * consumed, a thd document position, steps — is the same on every replica:
 * it restores a job of any layout. Group leaders find their rows without
 * reading the rows before them (the kinds' indexes).
 */
#include "feed_kind.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The loader's parameters for the source's plugin. The URI is not rewritten:
 * a plugin that takes seed= (synthetic:, gpt:) or seq_len= (gpt:) uses the
 * URI's key when given, else these, so `seed=` alone decides the whole
 * stream of a URI without one, and a URI's own seed= keeps its documents
 * whatever the loader's seed (the config's seed still orders them: perm.c). */
static cpdl_source_params_t source_params(const cpdl_config_t *cfg) {
  cpdl_source_params_t params = {
      .struct_size = sizeof params,
      .seed = cfg->seed,
      .seq_len = cfg->seq_len, /* Megatron's --seq-length (gpt:) */
  };
  return params;
}

int cpdl__feed_open(const cpdl_config_t *cfg, int dp_rank, int dp_size, cpdl__feed_t **out) {
  *out = NULL;
  if (dp_size < 1 || dp_rank < 0 || dp_rank >= dp_size)
    return cpdl__error(CPDL_EARG, "feed: dp_rank %d is not in [0, dp_size %d)", dp_rank, dp_size);
  cpdl__feed_t *feed = calloc(1, sizeof *feed);
  if (!feed)
    return cpdl__error(-ENOMEM, "feed: out of memory");
  feed->dp_rank = dp_rank;
  feed->dp_size = dp_size;
  feed->drop_last = cfg->drop_last != 0;
  feed->rolls = true;
  const cpdl_source_params_t params = source_params(cfg);
  int rc = cpdl__source_open(cfg->source[0] ? cfg->source : "synthetic:", &params, &feed->source);
  if (rc) {
    free(feed);
    return rc;
  }
  if (strcmp(cfg->schedule, "static") != 0 &&
      (cpdl__source_has_batches(feed->source) || cpdl__source_global_order(feed->source)))
    rc = cpdl__error(CPDL_EARG, "config key schedule: %s moves documents between rows, so it needs a "
                     "source of documents (synthetic:, llmc:, megatron:) in mode=thd; \"%s\" gives "
                     "ready-made %s", cfg->schedule, cfg->source,
                     cpdl__source_has_batches(feed->source) ? "batches" : "rows");
  else if (cpdl__source_has_batches(feed->source))
    rc = cpdl__feed_batches_open(feed, cfg);
  else if (cpdl__source_global_order(feed->source))
    rc = cpdl__feed_rows_open(feed, cfg);
  else
    rc = cpdl__feed_tokens_open(feed, cfg);
  if (!rc) {
    /* The first epoch is entered at open: its index is built here, once. */
    uint64_t start[CPDL__CURSOR_WORDS] = {0};
    start[CPDL__CURSOR_CONSUMED] = (uint64_t)feed->consumed; /* the source's consumed() */
    rc = cpdl__feed_seek(feed, start);
  }
  if (rc) {
    cpdl__feed_close(feed);
    return rc;
  }
  *out = feed;
  return 0;
}

static int enter(cpdl__feed_t *feed, const uint64_t *words) {
  int64_t consumed = feed->consumed, have = 0;
  int rc = feed->ops->enter(feed, feed->epoch, words, &consumed);
  if (!rc && consumed > 0)
    rc = feed->ops->rows(feed, consumed, &have);
  if (rc)
    return rc;
  if (consumed > have)
    consumed = have; /* past the end after a wrapped global batch: the epoch is done */
  feed->consumed = consumed;
  feed->entered = true;
  return 0;
}

int cpdl__feed_next(cpdl__feed_t *feed, cpdl_tensor_t *fields, int *n_fields) {
  int rc = cpdl__feed_plan(feed, fields, n_fields);
  return rc ? rc : cpdl__feed_fill(feed, 0, 1);
}

bool cpdl__feed_splits(const cpdl__feed_t *feed) {
  return feed->ops->splits && feed->ops->splits(feed);
}

int cpdl__feed_fill(cpdl__feed_t *feed, int part, int n_parts) {
  if (n_parts < 1 || part < 0 || part >= n_parts || part >= CPDL__COLLATE_READERS)
    return cpdl__error(CPDL_EARG, "feed: fill part %d of %d", part, n_parts);
  return feed->ops->fill ? feed->ops->fill(feed, part, n_parts) : 0;
}

int cpdl__feed_plan(cpdl__feed_t *feed, cpdl_tensor_t *fields, int *n_fields) {
  const int64_t G = (int64_t)feed->dp_size * feed->unit;
  int64_t have = 0; /* rows of the epoch, as far as this step needs to know */
  for (;;) {
    int rc;
    if (!feed->entered && (rc = enter(feed, NULL)))
      return rc;
    if ((rc = feed->ops->rows(feed, feed->consumed + G, &have)))
      return rc;
    int64_t remaining = have - feed->consumed; /* < G: have is the epoch's rows, exactly */
    if (remaining >= G || (!feed->drop_last && feed->rolls && remaining > 0))
      break;
    if (!feed->rolls)
      return cpdl__error(CPDL_EEOF, "feed: the source's %lld samples are consumed (%lld before "
                         "this step, %lld per global batch)", (long long)have,
                         (long long)feed->consumed, (long long)G);
    if (feed->consumed == 0)
      return cpdl__error(CPDL_ESOURCE, "feed: epoch %llu holds %lld rows, fewer than one global "
                         "batch of %lld (dp %d x %d) with drop_last=1; set drop_last=0 (wrap), "
                         "use more data or fewer replicas", (unsigned long long)feed->epoch,
                         (long long)have, (long long)G, feed->dp_size, feed->unit);
    feed->epoch++;
    feed->consumed = 0;
    feed->entered = false;
  }
  feed->ops->begin(feed);
  int64_t first = feed->consumed + (int64_t)feed->dp_rank * feed->unit;
  for (int b = 0; b < feed->unit; b++) {
    int64_t i = first + b;
    bool wrapped = i >= have;
    int rc = feed->ops->row(feed, b, wrapped ? i - have : i, wrapped);
    if (rc)
      return rc;
  }
  feed->ops->finish(feed, fields, n_fields);
  feed->consumed += G;
  feed->steps++;
  return 0;
}

void cpdl__feed_lengths(const cpdl__feed_t *feed, const cpdl_tensor_t *fields, int n_fields,
                        int64_t *rows) {
  for (int i = 0; i < n_fields; i++)
    rows[i] = fields[i].shape[0];
  if (feed->ops->lengths)
    feed->ops->lengths(feed, rows, n_fields);
}

int cpdl__feed_spec(cpdl__feed_t *feed, cpdl_tensor_t *fields, int *n_fields) {
  return feed->ops->spec(feed, fields, n_fields);
}

/* Steps in r rows (r may be <= 0: none). */
static uint64_t steps_in(const cpdl__feed_t *feed, int64_t r) {
  const int64_t G = (int64_t)feed->dp_size * feed->unit;
  if (r <= 0)
    return 0;
  return (uint64_t)(feed->drop_last ? r / G : r / G + (r % G != 0));
}

int cpdl__feed_steps(cpdl__feed_t *feed, uint64_t epochs, uint64_t cap, uint64_t *out) {
  *out = 0;
  if (!feed->rolls) { /* gpt: ends by itself at its last full global batch */
    int64_t have;
    int rc = feed->ops->rows(feed, INT64_MAX, &have);
    if (rc)
      return rc;
    int64_t G = (int64_t)feed->dp_size * feed->unit;
    uint64_t n = have > feed->consumed ? (uint64_t)((have - feed->consumed) / G) : 0;
    *out = n < cap ? n : cap;
    return 0;
  }
  int rc;
  if (!feed->entered && (rc = enter(feed, NULL)))
    return rc;
  unsigned __int128 steps = 0;
  if (feed->epoch < epochs) {
    /* cap = 1 (is there a step at all?) needs the first global batch only */
    const int64_t G = (int64_t)feed->dp_size * feed->unit;
    int64_t want = cap == 1 ? feed->consumed + G : INT64_MAX, have;
    if ((rc = feed->ops->rows(feed, want, &have)))
      return rc;
    steps = steps_in(feed, have - feed->consumed);
  }
  for (uint64_t e = feed->epoch + 1; e < epochs && steps < cap; e++) {
    int64_t rows;
    bool constant = false;
    if ((rc = feed->ops->count(feed, e, &rows, &constant)))
      return cpdl__error_prefix(rc, "counting the steps of %llu epochs (config key epochs)",
                                (unsigned long long)epochs);
    if (constant) { /* every later epoch alike */
      steps += (unsigned __int128)steps_in(feed, rows) * (epochs - e);
      break;
    }
    steps += steps_in(feed, rows);
  }
  *out = steps < cap ? (uint64_t)steps : cap;
  return 0;
}

int cpdl__feed_cursor(cpdl__feed_t *feed, uint64_t words[CPDL__CURSOR_WORDS]) {
  memset(words, 0, CPDL__CURSOR_WORDS * sizeof *words);
  words[CPDL__CURSOR_EPOCH] = feed->epoch;
  words[CPDL__CURSOR_CONSUMED] = (uint64_t)feed->consumed;
  words[CPDL__CURSOR_STEP] = feed->steps;
  if (feed->ops->position && feed->entered)
    return feed->ops->position(feed, feed->consumed, words);
  return 0;
}

int cpdl__feed_seek(cpdl__feed_t *feed, const uint64_t words[CPDL__CURSOR_WORDS]) {
  if (words[CPDL__CURSOR_CONSUMED] > (uint64_t)INT64_MAX || words[CPDL__CURSOR_POSITION] > (uint64_t)INT64_MAX ||
      words[CPDL__CURSOR_OFFSET] > (uint64_t)INT64_MAX)
    return cpdl__error(CPDL_EARG, "feed: cursor row %llu / position %llu / offset %llu out of range",
                       (unsigned long long)words[CPDL__CURSOR_CONSUMED],
                       (unsigned long long)words[CPDL__CURSOR_POSITION],
                       (unsigned long long)words[CPDL__CURSOR_OFFSET]);
  feed->epoch = words[CPDL__CURSOR_EPOCH];
  feed->consumed = (int64_t)words[CPDL__CURSOR_CONSUMED];
  feed->steps = words[CPDL__CURSOR_STEP];
  feed->entered = false;
  return enter(feed, words);
}

void cpdl__feed_close(cpdl__feed_t *feed) {
  if (!feed)
    return;
  if (feed->ops)
    feed->ops->close(feed);
  cpdl__source_close(feed->source);
  free(feed);
}

bool cpdl__feed_double_buffered(const cpdl__feed_t *feed) { return feed->double_buffer; }

void cpdl__feed_single_buffer(cpdl__feed_t *feed) {
  if (feed->double_buffer && feed->ops->single_buffer)
    feed->ops->single_buffer(feed);
  feed->double_buffer = false;
}

uint64_t cpdl__feed_buffer_bytes(const cpdl__feed_t *feed, uint64_t *set_bytes) {
  if (set_bytes)
    *set_bytes = 0;
  return feed->ops->buffer_bytes ? feed->ops->buffer_bytes(feed, set_bytes) : 0;
}

int cpdl__feed_rank_fields(const cpdl__feed_t *feed) { return feed->rank_fields; }

void cpdl__feed_rank_lengths(const cpdl__feed_t *feed, int cp_rank, int64_t *rows) {
  if (feed->ops->rank_lengths)
    feed->ops->rank_lengths(feed, cp_rank, rows);
}

int cpdl__feed_set_mesh(cpdl__feed_t *feed, const int *world_at, const int *local_cp,
                        int n_local_cp) {
  return feed->ops->mesh ? feed->ops->mesh(feed, world_at, local_cp, n_local_cp) : 0;
}

const char *cpdl__feed_kind(const cpdl__feed_t *feed) { return feed->ops->name; }
