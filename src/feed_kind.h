/* feed_kind.h — the ops table behind a feed (feed.c) and its three kinds,
 * one file each, as redis keeps its event backends behind one interface:
 *   feed_tokens.c   token sources (synthetic, llmc, megatron): the global
 *                   document order (perm.c), cut into pack/pad/thd rows by
 *                   collate.c, found through a sparse index built at open;
 *   feed_rows.c     sources whose samples are rows (gpt:, Megatron's order);
 *   feed_batches.c  pre-collated sources (npy): a row is a whole batch.
 * feed_dynamic.c writes schedule=dynamic's per-rank blocks for feed_tokens.c.
 * feed.c owns what is common: the global rule (row b of replica r at step k
 * of an epoch is row consumed + (k*dp + r)*unit + b), epochs, drop_last and
 * wrap, the cursor. A kind only makes rows. Never installed.
 */
#ifndef CPDL_FEED_KIND_H
#define CPDL_FEED_KIND_H

#include "internal.h"
#include "schedule.h"

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
  int rank_fields;          /* schedule=dynamic: the leading per-rank fields (cpdl__feed_rank_fields) */
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
  /* Optional, with splits (feed.h: cpdl__feed_plan): row() only finds where
   * row b starts; fill() writes rows b = part, part + n_parts, ... of the
   * step on the calling thread, and may run on n_parts threads at once. */
  int (*fill)(cpdl__feed_t *feed, int part, int n_parts);
  bool (*splits)(const cpdl__feed_t *feed);
  void (*finish)(cpdl__feed_t *feed, cpdl_tensor_t *fields, int *n_fields);
  /* Optional (thd): the valid entries along dim 0 of each field finish()
   * described (cpdl__feed_lengths); NULL: shape[0] for every field. */
  void (*lengths)(const cpdl__feed_t *feed, int64_t *rows, int n_fields);
  /* Names, dtypes and shapes of a step's fields, data NULL, producing nothing. */
  int (*spec)(cpdl__feed_t *feed, cpdl_tensor_t *fields, int *n_fields);
  /* Optional (thd): the document position of row `index` (from the base)
   * into cursor words CPDL__CURSOR_POSITION and CPDL__CURSOR_OFFSET. */
  int (*position)(cpdl__feed_t *feed, int64_t index, uint64_t *words);
  /* Optional (schedule=dynamic): cpdl__feed_set_mesh, cpdl__feed_rank_lengths. */
  int (*mesh)(cpdl__feed_t *feed, const int *world_at, const int *local_cp, int n_local_cp);
  void (*rank_lengths)(const cpdl__feed_t *feed, int cp_rank, int64_t *rows);
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

/* ---- feed_dynamic.c: schedule=dynamic's per-rank blocks (docs/schedule.md) ----
 * A step's fields: CPDL__DYNAMIC_RANK_FIELDS per-rank fields first, each with
 * a leading dim cp (row r: CP rank r's block, written only for the ranks this
 * group holds) — input_ids, labels, position_ids, loss_mask [cp, 1, block],
 * cu_seqlens, cu_seqlens_padded, cu_local int32 [cp, block/2 + 1], doc_ids
 * int64, cp_group, cp_chunk int32 [cp, block/2] — then the group table,
 * shared: cp_groups int32 [n_groups, 2] (first schedule rank, size) and
 * cp_world_ranks int32 [tp, dp*cp] (the world rank of schedule rank s at tp
 * rank t). */
#define CPDL__DYNAMIC_RANK_FIELDS 10
#define CPDL__DYNAMIC_FIELDS 12
typedef struct cpdl__dynamic cpdl__dynamic_t;
typedef struct {
  int cp, tp, dp_rank;
  int64_t padding_token_id, eot_token; /* eot_token -1: none */
  int loss_on_eot;
  cpdl_dtype_t loss_mask_dtype;        /* the vocabulary's (cpdl/fields.h), as thd's collate */
  bool double_buffer;                  /* two output sets, used in turn */
} cpdl__dynamic_params_t;
/* s: the schedule (its layout: dp, cp, block, group table). 
eturn 0,
 * CPDL_EARG, -ENOMEM. */
int cpdl__dynamic_create(const cpdl__dynamic_params_t *params, const cpdl__schedule_t *s,
                         cpdl__dynamic_t **out);
void cpdl__dynamic_destroy(cpdl__dynamic_t *d);
/* world_at (may be NULL): cpdl__mesh_t's, [tp * dp*cp]; local_cp (may be
 * NULL: all): the CP ranks whose rows this group's leader writes. */
int cpdl__dynamic_set_mesh(cpdl__dynamic_t *d, const int *world_at, const int *local_cp,
                           int n_local_cp);
int cpdl__dynamic_spec(const cpdl__dynamic_t *d, cpdl_tensor_t *fields, int *n_fields);
void cpdl__dynamic_begin(cpdl__dynamic_t *d);
/* The local ranks' rows from schedule s of epoch `epoch` (piece doc_id = a
 * position of order; doc_ids name perm's sample). 
eturn 0 or an error. */
int cpdl__dynamic_fill(cpdl__dynamic_t *d, const cpdl__schedule_t *s,
                       const cpdl__doc_order_t *order, uint64_t epoch, cpdl__perm_t *perm);
void cpdl__dynamic_fields(const cpdl__dynamic_t *d, cpdl_tensor_t *fields, int *n_fields);
/* The valid entries of CP rank cp_rank's per-rank fields of the last fill
 * (rows[0 .. CPDL__DYNAMIC_RANK_FIELDS), along the rank's own dim 0): 1 for
 * the token fields, n+1 for the cu_* fields, n for the lists. */
void cpdl__dynamic_rank_lengths(const cpdl__dynamic_t *d, int cp_rank, int64_t *rows);

#endif /* CPDL_FEED_KIND_H */
