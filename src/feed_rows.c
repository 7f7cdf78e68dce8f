/* feed_rows.c — the feed kind of sources whose samples are training rows in
 * one global order (gpt:, Megatron-LM's GPTDataset; CPDL_SOURCE_GLOBAL_ORDER):
 * row i is sample i, read through read_row(). One epoch, the source's own:
 * the stream ends at the last full global batch (CPDL_EEOF), as Megatron
 * drops its last partial one; epochs= does not bound it. The source's
 * consumed() (gpt:'s consumed_samples=) starts it where a Megatron run left
 * off (a resume state replaces it).
 */
#include "feed_kind.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct rows {
  int batch;
  int64_t seq_len, n;
  int n_sets, set;
  int64_t *ids[2][3];       /* input_ids, labels, position_ids [batch, seq_len] */
  float *loss_mask[2];
} rows_t;

static int rows_enter(cpdl__feed_t *feed, uint64_t epoch, const uint64_t *words,
                      int64_t *consumed) {
  rows_t *r = feed->impl;
  (void)words;
  if (epoch != 0 || *consumed > r->n)
    return cpdl__error(CPDL_EARG, "feed: cursor (epoch %llu, %lld samples consumed) is not one of "
                       "a gpt: source of %lld samples", (unsigned long long)epoch,
                       (long long)*consumed, (long long)r->n);
  return 0;
}

static int rows_rows(cpdl__feed_t *feed, int64_t want, int64_t *have) {
  int64_t n = ((rows_t *)feed->impl)->n;
  *have = want < n ? want : n;
  return 0;
}

static int rows_count(cpdl__feed_t *feed, uint64_t epoch, int64_t *rows, bool *constant) {
  (void)epoch;
  *rows = ((rows_t *)feed->impl)->n;
  *constant = true;
  return 0;
}

static void rows_begin(cpdl__feed_t *feed) {
  rows_t *r = feed->impl;
  r->set = (r->set + 1) % r->n_sets;
}

static int rows_row(cpdl__feed_t *feed, int b, int64_t index, bool wrapped) {
  rows_t *r = feed->impl;
  (void)wrapped; /* never: the stream ends instead */
  int s = r->set;
  int64_t S = r->seq_len;
  return cpdl__source_read_row(feed->source, index, S, r->ids[s][0] + b * S, r->ids[s][1] + b * S,
                               r->loss_mask[s] + b * S, r->ids[s][2] + b * S);
}

/* Field `id` of the vocabulary (cpdl/fields.h), in its dtype: the buffers
 * below are int64 ids and a float32 loss mask, as the table says. */
static void set_field(cpdl_tensor_t *t, cpdl_field_id_t id, const rows_t *r, const void *data) {
  memset(t, 0, sizeof *t);
  t->name = cpdl_field_name(id);
  t->dtype = cpdl_field_info(id)->dtype;
  t->ndim = 2;
  t->shape[0] = r->batch;
  t->shape[1] = r->seq_len;
  t->data = data;
}

static void fields_of(const rows_t *r, int s, cpdl_tensor_t *fields, int *n_fields) {
  set_field(&fields[0], CPDL_FIELD_INPUT_IDS, r, s < 0 ? NULL : r->ids[s][0]);
  set_field(&fields[1], CPDL_FIELD_LABELS, r, s < 0 ? NULL : r->ids[s][1]);
  set_field(&fields[2], CPDL_FIELD_LOSS_MASK, r, s < 0 ? NULL : r->loss_mask[s]);
  set_field(&fields[3], CPDL_FIELD_POSITION_IDS, r, s < 0 ? NULL : r->ids[s][2]);
  *n_fields = 4;
}

static void rows_finish(cpdl__feed_t *feed, cpdl_tensor_t *fields, int *n_fields) {
  rows_t *r = feed->impl;
  fields_of(r, r->set, fields, n_fields);
}

static int rows_spec(cpdl__feed_t *feed, cpdl_tensor_t *fields, int *n_fields) {
  fields_of(feed->impl, -1, fields, n_fields);
  return 0;
}

static void rows_close(cpdl__feed_t *feed) {
  rows_t *r = feed->impl;
  if (!r)
    return;
  for (int s = 0; s < 2; s++) {
    for (int f = 0; f < 3; f++)
      free(r->ids[s][f]);
    free(r->loss_mask[s]);
  }
  free(r);
  feed->impl = NULL;
}

static void rows_single_buffer(cpdl__feed_t *feed) {
  rows_t *r = feed->impl;
  for (int f = 0; f < 3; f++) {
    free(r->ids[1][f]);
    r->ids[1][f] = NULL;
  }
  free(r->loss_mask[1]);
  r->loss_mask[1] = NULL;
  r->n_sets = 1;
  r->set = 0;
}

static uint64_t rows_buffer_bytes(const cpdl__feed_t *feed, uint64_t *set_bytes) {
  const rows_t *r = feed->impl;
  uint64_t elems = (uint64_t)r->batch * (uint64_t)r->seq_len;
  uint64_t set = elems * (3 * sizeof(int64_t) + sizeof(float)); /* as rows_open allocates */
  if (set_bytes)
    *set_bytes = set;
  return (uint64_t)r->n_sets * set;
}

static const cpdl__feed_ops_t rows_ops = {
    .name = "rows",
    .enter = rows_enter,
    .rows = rows_rows,
    .count = rows_count,
    .begin = rows_begin,
    .row = rows_row,
    .finish = rows_finish,
    .spec = rows_spec,
    .close = rows_close,
    .single_buffer = rows_single_buffer,
    .buffer_bytes = rows_buffer_bytes,
};

int cpdl__feed_rows_open(cpdl__feed_t *feed, const cpdl_config_t *cfg) {
  rows_t *r = calloc(1, sizeof *r);
  if (!r)
    return cpdl__error(-ENOMEM, "feed: out of memory");
  feed->ops = &rows_ops;
  feed->impl = r;
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
  feed->unit = cfg->batch;
  feed->rolls = false;
  feed->double_buffer = cfg->threads > 1;
  /* Start where a Megatron run left off (the plugin's consumed_samples=). */
  int rc = cpdl__source_consumed(feed->source, &feed->consumed);
  if (rc)
    return rc;
  r->n = cpdl__source_count(feed->source);
  r->batch = cfg->batch;
  r->seq_len = cfg->seq_len;
  r->n_sets = feed->double_buffer ? 2 : 1;
  r->set = r->n_sets - 1;
  size_t elems;
  if (cfg->batch < 1 || cfg->seq_len < 1 ||
      !cpdl__mul_size((size_t)cfg->batch, (size_t)cfg->seq_len, &elems) || elems > SIZE_MAX / 8)
    return cpdl__error(CPDL_EOVERFLOW, "feed: batch %d x seq_len %lld does not fit in memory",
                       cfg->batch, (long long)cfg->seq_len);
  for (int s = 0; s < r->n_sets; s++) {
    for (int f = 0; f < 3; f++)
      if (!(r->ids[s][f] = malloc(elems * sizeof(int64_t))))
        return cpdl__error(-ENOMEM, "feed: out of memory for [%d, %lld] rows", cfg->batch,
                           (long long)cfg->seq_len);
    if (!(r->loss_mask[s] = malloc(elems * sizeof(float))))
      return cpdl__error(-ENOMEM, "feed: out of memory for [%d, %lld] rows", cfg->batch,
                         (long long)cfg->seq_len);
  }
  return 0;
}
