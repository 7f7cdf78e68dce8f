/* feed_kind.h — the ops table behind a feed (feed.c) and its three kinds,
 * one file each, as redis keeps its event backends behind one interface:
 *   feed_tokens.c   token sources (synthetic, llmc, megatron): the global
 *                   document order (perm.c), cut into pack/pad/thd rows by
 *                   collate.c, found through a sparse index built at open;
 *   feed_rows.c     sources whose samples are rows (gpt:, Megatron's order);
 *   feed_batches.c  pre-collated sources (npy): a row is a whole batch.
 * feed.c owns what is common: the global rule (row b of replica r at step k
 * of an epoch is row consumed + (k*dp + r)*unit + b), epochs, drop_last and
 * wrap, the cursor. A kind only makes rows. Never installed.
 */
#ifndef CPDL_FEED_KIND_H
#define CPDL_FEED_KIND_H

#include "internal.h"

typedef struct cpdl__feed_ops cpdl__feed_ops_t;

struct cpdl__feed {
  const cpdl__feed_ops_t *ops;
  void *impl;               /* the kind's */
  cpdl__source_t *source;
  int dp_rank, dp_size;
  int unit;                 /* rows of a replica's step: batch, or 1 (pre-collated) */
  bool drop_last;
  bool rolls;               /* epochs roll over; false: the stream ends (gpt:) */
  bool double_buffer;       /* a step's tensors survive the next step */
  /* The cursor: the next step starts at row `consumed` of epoch `epoch`,
   * counted from the epoch's base (its start, or a thd document position). */
  uint64_t epoch, steps;
  int64_t consumed;
  bool entered;
};

struct cpdl__feed_ops {
  const char *name;
  /* Enter `epoch` where `words` (a cursor; NULL: the epoch's start) say:
   * *consumed comes in as the cursor's row count and may be rebased to 0
   * (thd: the cursor's document position under another padding multiple).
   * \return 0, CPDL_EARG (a cursor this data cannot hold), an error. */
  int (*enter)(cpdl__feed_t *feed, uint64_t epoch, const uint64_t *words, int64_t *consumed);
  /* *have = min(rows of the entered epoch from its base, want): the index
   * grows only as far as `want` needs (the first batch does not wait for a
   * pass over the whole epoch). */
  int (*rows)(cpdl__feed_t *feed, int64_t want, int64_t *have);
  /* Rows of epoch `epoch` from its start, without entering it; *constant:
   * every epoch has as many (pack, pad, npy). */
  int (*count)(cpdl__feed_t *feed, uint64_t epoch, int64_t *rows, bool *constant);
  void (*begin)(cpdl__feed_t *feed);  /* a step starts: the next output set */
  /* Row `index` of the entered epoch from its base into row `b` of the
   * step; wrapped: `index` counts from the epoch's start instead (drop_last=0
   * refills the last global batch from there). */
  int (*row)(cpdl__feed_t *feed, int b, int64_t index, bool wrapped);
  void (*finish)(cpdl__feed_t *feed, cpdl_tensor_t *fields, int *n_fields);
  /* Optional (thd): the valid entries along dim 0 of each field finish()
   * described (cpdl__feed_lengths); NULL: shape[0] for every field. */
  void (*lengths)(const cpdl__feed_t *feed, int64_t *rows, int n_fields);
  /* Names, dtypes and shapes of a step's fields, data NULL, producing nothing. */
  int (*spec)(cpdl__feed_t *feed, cpdl_tensor_t *fields, int *n_fields);
  /* Optional (thd): the document position of row `index` (from the base)
   * into cursor words CPDL__CURSOR_POSITION and CPDL__CURSOR_OFFSET. */
  int (*position)(cpdl__feed_t *feed, int64_t index, uint64_t *words);
  void (*close)(cpdl__feed_t *feed);
  /* Optional (double-buffered kinds): before the first step, keep one output set. */
  void (*single_buffer)(cpdl__feed_t *feed);
  /* Optional: bytes of the kind's own output buffers, all sets (one in *set_bytes). */
  uint64_t (*buffer_bytes)(const cpdl__feed_t *feed, uint64_t *set_bytes);
};

/* Each kind's open: fills feed->ops, impl, unit, rolls, double_buffer. */
int cpdl__feed_tokens_open(cpdl__feed_t *feed, const cpdl_config_t *cfg);
int cpdl__feed_rows_open(cpdl__feed_t *feed, const cpdl_config_t *cfg);
int cpdl__feed_batches_open(cpdl__feed_t *feed, const cpdl_config_t *cfg);

#endif /* CPDL_FEED_KIND_H */
