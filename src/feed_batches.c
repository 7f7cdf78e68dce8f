/* feed_batches.c — the feed kind of pre-collated sources (npy): a row is a
 * whole batch, so a replica takes one per step (unit 1). Epoch e is the
 * source's batches in order; with drop_last=1 its last n mod dp batches are
 * not read, with drop_last=0 the last global batch takes batches 0, 1, …
 * again: step s of an epoch, replica r, reads batch (s*dp + r) mod n. The
 * tensors belong to the source (valid until the next read).
 */
#include "feed_kind.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct batches {
  int64_t n;
  cpdl_tensor_t fields[CPDL_MAX_FIELDS];
  int n_fields;
} batches_t;

static int batches_enter(cpdl__feed_t *feed, uint64_t epoch, const uint64_t *words,
                         int64_t *consumed) {
  (void)feed;
  (void)epoch;
  (void)words;
  (void)consumed;
  return 0;
}

static int batches_rows(cpdl__feed_t *feed, int64_t want, int64_t *have) {
  int64_t n = ((batches_t *)feed->impl)->n;
  *have = want < n ? want : n;
  return 0;
}

static int batches_count(cpdl__feed_t *feed, uint64_t epoch, int64_t *rows, bool *constant) {
  (void)epoch;
  *rows = ((batches_t *)feed->impl)->n;
  *constant = true;
  return 0;
}

static void batches_begin(cpdl__feed_t *feed) { (void)feed; }

static int batches_row(cpdl__feed_t *feed, int b, int64_t index, bool wrapped) {
  batches_t *x = feed->impl;
  (void)b; /* unit 1: always 0 */
  if (wrapped)
    index %= x->n;
  x->n_fields = CPDL_MAX_FIELDS;
  return cpdl__source_read_batch(feed->source, index, x->fields, &x->n_fields);
}

static void batches_finish(cpdl__feed_t *feed, cpdl_tensor_t *fields, int *n_fields) {
  batches_t *x = feed->impl;
  memcpy(fields, x->fields, (size_t)x->n_fields * sizeof *fields);
  *n_fields = x->n_fields;
}

/* The source's batch 0 gives the names, dtypes and shapes (the plugin
 * promises the same every step); its data pointers are dropped. */
static int batches_spec(cpdl__feed_t *feed, cpdl_tensor_t *fields, int *n_fields) {
  *n_fields = CPDL_MAX_FIELDS;
  int rc = cpdl__source_read_batch(feed->source, 0, fields, n_fields);
  if (rc)
    return rc;
  for (int i = 0; i < *n_fields; i++)
    fields[i].data = NULL;
  return 0;
}

static void batches_close(cpdl__feed_t *feed) {
  free(feed->impl);
  feed->impl = NULL;
}

static const cpdl__feed_ops_t batches_ops = {
    .name = "batches",
    .enter = batches_enter,
    .rows = batches_rows,
    .count = batches_count,
    .begin = batches_begin,
    .row = batches_row,
    .finish = batches_finish,
    .spec = batches_spec,
    .close = batches_close,
};

int cpdl__feed_batches_open(cpdl__feed_t *feed, const cpdl_config_t *cfg) {
  batches_t *x = calloc(1, sizeof *x);
  if (!x)
    return cpdl__error(-ENOMEM, "feed: out of memory");
  feed->ops = &batches_ops;
  feed->impl = x;
  feed->unit = 1;
  x->n = cpdl__source_batch_count(feed->source);
  if (x->n < 1)
    return cpdl__error(CPDL_ESOURCE, "feed: source \"%s\" reports %lld batches; it needs at least "
                       "one", cfg->source, (long long)x->n);
  return 0;
}
