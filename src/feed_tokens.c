/* feed_tokens.c — the feed kind of token sources (synthetic, llmc,
 * megatron): epoch e's documents in the global order (perm.c), cut into rows
 * by collate.c.
 *   pack: the epoch's documents concatenated; row g is the window of seq_len
 *         + 1 tokens starting at token g*seq_len (consecutive windows share
 *         one token); rows = (T - 1) / seq_len of T tokens.
 *   pad:  row g is the g-th document of >= 2 tokens in the epoch's order.
 *   thd:  whole documents in order, each padded to a multiple of 2*cp, as
 *         many as fit a row (cpdl__thd_plan_row); the last row of the epoch
 *         may be short (padding).
 * Finding row g without reading what comes before it: pack and pad keep the
 * cumulative weight (tokens; usable documents) of every 64th position of the
 * epoch's order (8 bytes per 64 documents: 1.25 MiB for 10M documents), then
 * a binary search and at most 64 lengths; thd keeps the start (position,
 * offset) of every 64th row, found by running the packing on lengths alone,
 * then at most 63 rows of it. Both indexes grow from the epoch's start only
 * as far as the rows asked for (lengths, never tokens), so the first batch
 * does not wait for a pass over 10M documents; counting an epoch (epochs=)
 * completes them. T and the pad count do not depend on the order, so every
 * epoch of pack or pad has the same rows; thd counts each epoch with the
 * packing code that makes its rows.
 */
#include "feed_kind.h"
#include "schedule.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 64 /* positions per index entry (pack, pad); rows per mark (thd) */

/* thd: row starts from a base (position, offset) of one epoch. */
typedef struct thd_index {
  bool built;
  uint64_t epoch;
  int64_t base_pos, base_off;
  int64_t n_marks, cap_marks;
  int64_t (*marks)[2];       /* start of row BLOCK*k */
  /* the scan so far: row f_row starts at (f_pos, f_off); complete: the
   * epoch has exactly f_row rows from the base */
  int64_t f_row, f_pos, f_off;
  bool complete;
  int64_t sim_row, sim_pos, sim_off; /* a known row start, for forward moves */
} thd_index_t;

typedef struct tokens {
  cpdl__source_t *source;
  cpdl__perm_t *perm;
  cpdl__collate_t *collate;
  cpdl__collate_params_t params;
  cpdl__doc_order_t order;
  int64_t n;                 /* documents */
  bool thd;
  /* pack, pad: the entered epoch's index, grown as far as rows are asked for */
  bool have_index;
  uint64_t index_epoch;
  int64_t n_blocks;
  uint64_t *cum;             /* [n_blocks + 1]: weight of positions [0, BLOCK*j) */
  int64_t indexed;           /* positions summed into cum (a multiple of BLOCK, or n) */
  uint64_t total;            /* the epoch's whole weight once known (the same every epoch);
                                UINT64_MAX before */
  thd_index_t main, wrap;    /* thd: from the entered base; from the epoch's start */
  /* thd, schedule=balanced (docs/schedule.md): the global batch's pieces, its
   * schedule (the same on every leader), this replica's row */
  cpdl__schedule_t *schedule;
  cpdl__schedule_piece_t *batch_pieces;
  int64_t cap_pieces, n_pieces;
  cpdl__thd_piece_t *row_pieces;
  cpdl__dynamic_t *dynamic;  /* schedule=dynamic: every local rank's block (feed_dynamic.c) */
  /* pack, pad: where each row of the step starts (row() finds it, fill()
   * writes the row from there, on several threads at once: feed.h) */
  struct row_start {
    int64_t position, offset, index;
  } *starts;
  uint64_t starts_epoch;
} tokens_t;

static int order_read(void *arg, uint64_t epoch, int64_t position, cpdl__sample_t *out) {
  tokens_t *t = arg;
  if (position < 0 || position >= t->n)
    return CPDL_EEOF;
  return cpdl__source_read(t->source, cpdl__perm_at(t->perm, epoch, position), out);
}

static int order_length(void *arg, uint64_t epoch, int64_t position, int64_t *n_tokens) {
  tokens_t *t = arg;
  if (position < 0 || position >= t->n)
    return CPDL_EEOF;
  int64_t index = cpdl__perm_at(t->perm, epoch, position);
  int rc = cpdl__source_length(t->source, index, n_tokens);
  if (!rc && *n_tokens < 0)
    rc = cpdl__error(CPDL_ESOURCE, "feed: sample %lld has %lld tokens", (long long)index,
                     (long long)*n_tokens);
  return rc;
}

/* pack: tokens; pad: 1 for a document of >= 2 tokens (one row). */
static uint64_t weight(const tokens_t *t, int64_t n_tokens) {
  return t->params.kind == CPDL__COLLATE_PACK ? (uint64_t)n_tokens : (uint64_t)(n_tokens >= 2);
}

/* ---- pack, pad: the cumulative index ------------------------------------ */

/* Start indexing `epoch` (nothing summed yet) unless it is the one indexed. */
static void start_index(tokens_t *t, uint64_t epoch) {
  if (t->have_index && t->index_epoch == epoch)
    return;
  t->cum[0] = 0;
  t->indexed = 0;
  t->index_epoch = epoch;
  t->have_index = true;
}

/* Sum blocks of lengths until the index reaches past weight `target` (its
 * frontier's cumulative weight > target) or the epoch's end. */
static int extend_index(tokens_t *t, uint64_t target) {
  while (t->indexed < t->n && t->cum[t->indexed / BLOCK] <= target) {
    int64_t j = t->indexed / BLOCK, end = t->indexed + BLOCK < t->n ? t->indexed + BLOCK : t->n;
    uint64_t acc = t->cum[j];
    for (int64_t p = t->indexed; p < end; p++) {
      int64_t len;
      int rc = order_length(t, t->index_epoch, p, &len);
      if (rc)
        return cpdl__error_prefix(rc, "feed: indexing epoch %llu",
                                  (unsigned long long)t->index_epoch);
      acc += weight(t, len);
    }
    t->cum[j + 1] = acc;
    t->indexed = end;
  }
  if (t->indexed == t->n) {
    uint64_t acc = t->cum[t->n_blocks];
    if (t->total != UINT64_MAX && acc != t->total)
      return cpdl__error(CPDL_ESOURCE, "feed: epoch %llu weighs %llu, an earlier epoch %llu: the "
                         "source's lengths changed while it was open",
                         (unsigned long long)t->index_epoch, (unsigned long long)acc,
                         (unsigned long long)t->total);
    t->total = acc;
  }
  return 0;
}

static int64_t flat_rows(const tokens_t *t) {
  if (t->params.kind == CPDL__COLLATE_PAD)
    return (int64_t)t->total;
  return t->total >= 1 ? (int64_t)((t->total - 1) / (uint64_t)t->params.seq_len) : 0;
}

/* The epoch's whole weight without the index: T and the pad count do not
 * depend on the order, so the lengths are summed in the source's order
 * (sequential, no permutation lookups). */
static int compute_total(tokens_t *t) {
  uint64_t acc = 0;
  for (int64_t i = 0; i < t->n; i++) {
    int64_t len;
    int rc = cpdl__source_length(t->source, i, &len);
    if (rc)
      return cpdl__error_prefix(rc, "feed: counting the epoch's rows");
    acc += weight(t, len < 0 ? 0 : len);
  }
  t->total = acc;
  return 0;
}

/* pack, pad: min(rows of the indexed epoch, want), indexing no further than
 * needed; want = INT64_MAX (counting the epoch) sums the lengths instead. */
static int flat_have(tokens_t *t, int64_t want, int64_t *have) {
  int rc;
  if (t->total == UINT64_MAX && want == INT64_MAX && (rc = compute_total(t)))
    return rc;
  if (t->total != UINT64_MAX) {
    int64_t rows = flat_rows(t);
    *have = want < rows ? want : rows;
    return 0;
  }
  /* pack: rows >= want iff T >= want*S + 1; pad: iff U >= want */
  uint64_t S = (uint64_t)t->params.seq_len, w = want > 0 ? (uint64_t)want : 0;
  uint64_t target = t->params.kind == CPDL__COLLATE_PAD ? (w ? w - 1 : 0)
                    : w > (UINT64_MAX - 1) / S ? UINT64_MAX - 1 : w * S;
  if ((rc = extend_index(t, target)))
    return rc;
  if (t->indexed < t->n) {
    *have = want;
    return 0;
  }
  int64_t rows = flat_rows(t);
  *have = want < rows ? want : rows;
  return 0;
}

/* The document position where cumulative weight `target` lies: pack, the
 * document holding token `target` (and the offset in it); pad, the
 * target-th usable document. */
static int locate(tokens_t *t, uint64_t target, int64_t *position, int64_t *offset) {
  int rc = extend_index(t, target);
  if (rc)
    return rc;
  int64_t known = t->indexed == t->n ? t->n_blocks : t->indexed / BLOCK; /* cum[0..known] */
  int64_t lo = 0, hi = known - 1; /* the last block j with cum[j] <= target */
  while (lo < hi) {
    int64_t mid = lo + (hi - lo + 1) / 2;
    if (t->cum[mid] <= target)
      lo = mid;
    else
      hi = mid - 1;
  }
  uint64_t acc = t->cum[lo];
  for (int64_t p = lo * BLOCK; p < t->n; p++) {
    int64_t len;
    if ((rc = order_length(t, t->index_epoch, p, &len)))
      return rc;
    uint64_t w = weight(t, len);
    if (w > 0 && target < acc + w) {
      *position = p;
      *offset = t->params.kind == CPDL__COLLATE_PACK ? (int64_t)(target - acc) : 0;
      return 0;
    }
    acc += w;
  }
  return cpdl__error(CPDL_ESOURCE, "feed: weight %llu is past the end of epoch %llu",
                     (unsigned long long)target, (unsigned long long)t->index_epoch);
}

/* ---- thd: row marks ------------------------------------------------------ */

static void thd_free(thd_index_t *x) {
  free(x->marks);
  memset(x, 0, sizeof *x);
}

static int thd_mark(thd_index_t *x, int64_t pos, int64_t off) {
  if (x->n_marks == x->cap_marks) {
    int64_t cap = x->cap_marks ? 2 * x->cap_marks : 64;
    void *m = realloc(x->marks, (size_t)cap * sizeof *x->marks);
    if (!m)
      return cpdl__error(-ENOMEM, "feed: out of memory for the thd row index");
    x->marks = m;
    x->cap_marks = cap;
  }
  x->marks[x->n_marks][0] = pos;
  x->marks[x->n_marks][1] = off;
  x->n_marks++;
  return 0;
}

/* Rows of `epoch` from (pos, off), counted with the packing alone. */
static int thd_scan(tokens_t *t, uint64_t epoch, int64_t pos, int64_t off, int64_t *rows) {
  int64_t r = 0;
  for (;;) {
    int rc = cpdl__thd_plan_row(t->params.seq_len, t->params.thd_multiple, &t->order, epoch, &pos,
                                &off, NULL, NULL);
    if (rc < 0)
      return rc;
    if (rc == 0)
      break;
    r++;
  }
  *rows = r;
  return 0;
}

/* Index `epoch`'s rows from (pos, off), nothing scanned yet, unless it is the one indexed. */
static int thd_start(thd_index_t *x, uint64_t epoch, int64_t pos, int64_t off) {
  if (x->built && x->epoch == epoch && x->base_pos == pos && x->base_off == off)
    return 0;
  x->built = false;
  x->n_marks = 0;
  int rc = thd_mark(x, pos, off);
  if (rc)
    return rc;
  x->epoch = epoch;
  x->base_pos = x->sim_pos = x->f_pos = pos;
  x->base_off = x->sim_off = x->f_off = off;
  x->sim_row = x->f_row = 0;
  x->complete = false;
  x->built = true;
  return 0;
}

/* Scan on until row `want` is known to start (or the epoch ends): marks
 * every BLOCK rows. */
static int thd_extend(tokens_t *t, thd_index_t *x, int64_t want) {
  while (!x->complete && x->f_row < want) {
    int rc = cpdl__thd_plan_row(t->params.seq_len, t->params.thd_multiple, &t->order, x->epoch,
                                &x->f_pos, &x->f_off, NULL, NULL);
    if (rc < 0)
      return rc;
    if (rc == 0) {
      x->complete = true;
      break;
    }
    x->f_row++;
    if (x->f_row % BLOCK == 0 && (rc = thd_mark(x, x->f_pos, x->f_off)))
      return rc;
  }
  return 0;
}

/* min(rows from the index's base, want). */
static int thd_have(tokens_t *t, thd_index_t *x, int64_t want, int64_t *have) {
  int rc = thd_extend(t, x, want);
  if (rc)
    return rc;
  *have = x->f_row < want ? x->f_row : want;
  return 0;
}

/* The start of row `row` (at most the epoch's rows: its end) of an index. */
static int thd_find(tokens_t *t, thd_index_t *x, int64_t row, int64_t *pos, int64_t *off) {
  int rc = thd_extend(t, x, row);
  if (rc)
    return rc;
  if (row > x->f_row)
    return cpdl__error(CPDL_ESOURCE, "feed: thd row %lld is past the end of epoch %llu (%lld rows)",
                       (long long)row, (unsigned long long)x->epoch, (long long)x->f_row);
  if (!(x->sim_row <= row && row - x->sim_row < BLOCK)) {
    int64_t k = row / BLOCK;
    x->sim_row = k * BLOCK;
    x->sim_pos = x->marks[k][0];
    x->sim_off = x->marks[k][1];
  }
  while (x->sim_row < row) {
    rc = cpdl__thd_plan_row(t->params.seq_len, t->params.thd_multiple, &t->order, x->epoch,
                            &x->sim_pos, &x->sim_off, NULL, NULL);
    if (rc < 0)
      return rc;
    if (rc == 0)
      return cpdl__error(CPDL_ESOURCE, "feed: thd row %lld is past the end of epoch %llu",
                         (long long)row, (unsigned long long)x->epoch);
    x->sim_row++;
  }
  *pos = x->sim_pos;
  *off = x->sim_off;
  return 0;
}

/* ---- the ops --------------------------------------------------------------- */

static int tokens_enter(cpdl__feed_t *feed, uint64_t epoch, const uint64_t *words,
                        int64_t *consumed) {
  tokens_t *t = feed->impl;
  if (!t->thd) {
    start_index(t, epoch);
    return 0;
  }
  /* thd: rows from the epoch's start; a cursor whose row there does not
   * start at its document position was cut with another padding multiple
   * (another cp): rows are counted from that position instead. */
  int rc = thd_start(&t->main, epoch, 0, 0);
  if (rc || !words)
    return rc;
  int64_t want_pos = (int64_t)words[CPDL__CURSOR_POSITION];
  int64_t want_off = (int64_t)words[CPDL__CURSOR_OFFSET];
  if (*consumed == 0 && want_pos == 0 && want_off == 0)
    return 0;
  if (want_pos >= t->n) { /* the cursor's epoch has no row left */
    *consumed = INT64_MAX;
    return 0;
  }
  int64_t have = 0;
  if ((rc = thd_have(t, &t->main, *consumed, &have)))
    return rc;
  if (have == *consumed) {
    int64_t pos = 0, off = 0;
    if ((rc = thd_find(t, &t->main, *consumed, &pos, &off)))
      return rc;
    if (pos == want_pos && off == want_off)
      return 0;
  }
  if ((rc = thd_start(&t->main, epoch, want_pos, want_off)))
    return rc;
  *consumed = 0;
  return 0;
}

static int tokens_rows(cpdl__feed_t *feed, int64_t want, int64_t *have) {
  tokens_t *t = feed->impl;
  return t->thd ? thd_have(t, &t->main, want, have) : flat_have(t, want, have);
}

static int tokens_count(cpdl__feed_t *feed, uint64_t epoch, int64_t *rows, bool *constant) {
  tokens_t *t = feed->impl;
  if (!t->thd) { /* T and the pad count do not depend on the order: the entered epoch's */
    *constant = true;
    return flat_have(t, INT64_MAX, rows);
  }
  *constant = false;
  return thd_scan(t, epoch, 0, 0, rows);
}

static void tokens_begin(cpdl__feed_t *feed) {
  tokens_t *t = feed->impl;
  if (t->dynamic)
    cpdl__dynamic_begin(t->dynamic);
  else
    cpdl__collate_begin(t->collate);
}

/* The index and row number of the step's row `i` (from the base), as feed.c
 * numbers them: rows past the epoch's end (drop_last=0 refilling the last
 * global batch) count from the epoch's start. */
static int thd_row_at(tokens_t *t, cpdl__feed_t *feed, int64_t i, thd_index_t **x, int64_t *row) {
  const int64_t G = (int64_t)feed->dp_size * feed->unit;
  int64_t have, rows;
  int rc = thd_have(t, &t->main, feed->consumed + G, &have);
  if (rc)
    return rc;
  *x = &t->main;
  *row = i;
  if (i < have)
    return 0;
  if (t->main.base_pos || t->main.base_off) {
    if ((rc = thd_start(&t->wrap, feed->epoch, 0, 0)))
      return rc;
    *x = &t->wrap;
  }
  if ((rc = thd_have(t, *x, INT64_MAX, &rows)))
    return rc;
  *row = (i - have) % rows;
  return 0;
}

static int capture_piece(void *arg, int64_t position, int64_t offset, int64_t len, int64_t padded,
                         int64_t at) {
  tokens_t *t = arg;
  (void)padded, (void)at;
  if (t->n_pieces == t->cap_pieces)
    return cpdl__error(CPDL_ESOURCE, "feed: a global batch of more than %lld thd pieces",
                       (long long)t->cap_pieces);
  /* doc_id: the document's position in the epoch's order (what the collate reads by) */
  t->batch_pieces[t->n_pieces++] = (cpdl__schedule_piece_t){position, offset, len};
  return 0;
}

/* schedule=balanced|dynamic: the global batch's dp rows planned from lengths
 * (the static thd rows every layout shares) and scheduled. Every leader
 * computes the same schedule from the same lengths. */
static int schedule_batch(tokens_t *t, cpdl__feed_t *feed) {
  t->n_pieces = 0;
  for (int q = 0; q < feed->dp_size; q++) {
    thd_index_t *x = &t->main;
    int64_t row = 0, pos = 0, off = 0;
    int rc = thd_row_at(t, feed, feed->consumed + q, &x, &row);
    if (!rc)
      rc = thd_find(t, x, row, &pos, &off);
    if (!rc)
      rc = cpdl__thd_plan_row(t->params.seq_len, t->params.thd_multiple, &t->order, x->epoch, &pos,
                              &off, capture_piece, t);
    if (rc < 0)
      return rc;
    if (rc == 0)
      return cpdl__error(CPDL_ESOURCE, "feed: thd row %lld of epoch %llu is empty", (long long)row,
                         (unsigned long long)feed->epoch);
    x->sim_row = row + 1; /* the next row starts where this one's plan stopped */
    x->sim_pos = pos;
    x->sim_off = off;
  }
  int rc = cpdl__schedule_build(t->schedule, t->batch_pieces, t->n_pieces);
  if (rc)
    return cpdl__error_prefix(rc, "feed: scheduling the global batch at row %lld of epoch %llu",
                              (long long)feed->consumed, (unsigned long long)feed->epoch);
  return 0;
}

/* schedule=balanced: this replica's share of the schedule made into its row;
 * dynamic: every local CP rank's block written from its entries. */
static int scheduled_row(tokens_t *t, cpdl__feed_t *feed) {
  int rc = schedule_batch(t, feed);
  if (rc)
    return rc;
  if (t->dynamic)
    return cpdl__dynamic_fill(t->dynamic, t->schedule, &t->order, feed->epoch, t->perm);
  const cpdl__schedule_t *s = t->schedule;
  const int r0 = feed->dp_rank * s->params.cp; /* the replica's CP ranks share one list */
  const int64_t begin = s->rank_begin[r0], n = s->rank_begin[r0 + 1] - begin;
  for (int64_t k = 0; k < n; k++) {
    const cpdl__schedule_sub_t *e = &s->subs[begin + k];
    t->row_pieces[k] = (cpdl__thd_piece_t){e->doc_id, e->offset, e->len, e->padded,
                                           e->doc_id < 0 ? -1 : cpdl__perm_at(t->perm, feed->epoch, e->doc_id)};
  }
  if ((rc = cpdl__collate_seek(t->collate, feed->epoch, 0, 0)))
    return rc;
  return cpdl__collate_thd_pieces(t->collate, t->row_pieces, n);
}

static int tokens_row(cpdl__feed_t *feed, int b, int64_t index, bool wrapped) {
  tokens_t *t = feed->impl;
  int64_t pos = 0, off = 0;
  int rc;
  if (t->schedule) /* thd, batch 1: the row of this replica in the global batch */
    return scheduled_row(t, feed);
  if (!t->thd) {
    if (wrapped) /* the rows are known: the epoch ended inside this step */
      index %= flat_rows(t);
    uint64_t target = t->params.kind == CPDL__COLLATE_PACK
                          ? (uint64_t)index * (uint64_t)t->params.seq_len : (uint64_t)index;
    if ((rc = locate(t, target, &pos, &off)))
      return rc;
  } else {
    thd_index_t *x = &t->main;
    if (wrapped && (t->main.base_pos || t->main.base_off)) {
      if ((rc = thd_start(&t->wrap, feed->epoch, 0, 0)))
        return rc;
      x = &t->wrap;
    }
    if (wrapped) {
      int64_t rows;
      if ((rc = thd_have(t, x, INT64_MAX, &rows)))
        return rc;
      index %= rows;
    }
    if ((rc = thd_find(t, x, index, &pos, &off)))
      return rc;
  }
  if (!t->thd) { /* fill() writes it */
    t->starts[b] = (struct row_start){pos, off, index};
    t->starts_epoch = feed->epoch;
    return 0;
  }
  if ((rc = cpdl__collate_seek(t->collate, feed->epoch, pos, off)))
    return rc;
  if ((rc = cpdl__collate_row(t->collate, b)))
    return rc == CPDL_EEOF ? cpdl__error(CPDL_ESOURCE, "feed: thd row %lld of epoch %llu is empty",
                                         (long long)index, (unsigned long long)feed->epoch)
                           : rc;
  if (t->thd && !wrapped) { /* the next row starts where the collate stopped */
    uint64_t e;
    t->main.sim_row = index + 1;
    cpdl__collate_cursor(t->collate, &e, &t->main.sim_pos, &t->main.sim_off);
  }
  return 0;
}

/* pack, pad: rows part, part + n_parts, ... from the starts row() found,
 * with this part's reader. The starts, the permutation's cached epoch (row()
 * looked every start up in it) and the index are only read here. */
static int tokens_fill(cpdl__feed_t *feed, int part, int n_parts) {
  tokens_t *t = feed->impl;
  if (t->thd)
    return 0; /* row() made the row */
  cpdl__collate_forget(t->collate, part); /* this thread may have read since */
  for (int b = part; b < feed->unit; b += n_parts) {
    const struct row_start *r = &t->starts[b];
    int rc = cpdl__collate_row_at(t->collate, part, b, t->starts_epoch, r->position, r->offset);
    if (rc)
      return cpdl__error_prefix(rc, "feed: row %lld of epoch %llu", (long long)r->index,
                                (unsigned long long)t->starts_epoch);
  }
  return 0;
}

static bool tokens_splits(const cpdl__feed_t *feed) {
  const tokens_t *t = feed->impl;
  return !t->thd && (cpdl__source_stable(t->source) || cpdl__source_concurrent(t->source));
}

static void tokens_finish(cpdl__feed_t *feed, cpdl_tensor_t *fields, int *n_fields) {
  tokens_t *t = feed->impl;
  if (t->dynamic)
    cpdl__dynamic_fields(t->dynamic, fields, n_fields);
  else
    cpdl__collate_fields(t->collate, fields, n_fields);
}

static void tokens_lengths(const cpdl__feed_t *feed, int64_t *rows, int n_fields) {
  const tokens_t *t = feed->impl;
  if (!t->dynamic) /* dynamic: every field is whole along dim 0 (cp); per rank: below */
    cpdl__collate_lengths(t->collate, rows, n_fields);
}

static void tokens_rank_lengths(const cpdl__feed_t *feed, int cp_rank, int64_t *rows) {
  const tokens_t *t = feed->impl;
  if (t->dynamic)
    cpdl__dynamic_rank_lengths(t->dynamic, cp_rank, rows);
}

static int tokens_spec(cpdl__feed_t *feed, cpdl_tensor_t *fields, int *n_fields) {
  tokens_t *t = feed->impl;
  if (t->dynamic)
    return cpdl__dynamic_spec(t->dynamic, fields, n_fields);
  return cpdl__collate_spec(&t->params, fields, n_fields);
}

static int tokens_mesh(cpdl__feed_t *feed, const int *world_at, const int *local_cp,
                       int n_local_cp) {
  tokens_t *t = feed->impl;
  return t->dynamic ? cpdl__dynamic_set_mesh(t->dynamic, world_at, local_cp, n_local_cp) : 0;
}

static int tokens_position(cpdl__feed_t *feed, int64_t index, uint64_t *words) {
  tokens_t *t = feed->impl;
  if (!t->thd)
    return 0;
  int64_t have = 0;
  int rc = thd_have(t, &t->main, index + 1, &have);
  if (rc)
    return rc;
  if (have <= index) { /* past the epoch's rows: its end */
    words[CPDL__CURSOR_POSITION] = (uint64_t)t->n;
    words[CPDL__CURSOR_OFFSET] = 0;
    return 0;
  }
  int64_t pos = 0, off = 0;
  rc = thd_find(t, &t->main, index, &pos, &off);
  if (rc)
    return rc;
  words[CPDL__CURSOR_POSITION] = (uint64_t)pos;
  words[CPDL__CURSOR_OFFSET] = (uint64_t)off;
  return 0;
}

static void tokens_close(cpdl__feed_t *feed) {
  tokens_t *t = feed->impl;
  if (!t)
    return;
  cpdl__collate_destroy(t->collate);
  cpdl__perm_destroy(t->perm);
  cpdl__schedule_destroy(t->schedule);
  cpdl__dynamic_destroy(t->dynamic);
  free(t->batch_pieces);
  free(t->row_pieces);
  free(t->starts);
  free(t->cum);
  thd_free(&t->main);
  thd_free(&t->wrap);
  free(t);
  feed->impl = NULL;
}

/* schedule= (docs/schedule.md): static needs nothing; balanced and dynamic need thd. */
static int schedule_open(tokens_t *t, cpdl__feed_t *feed, const cpdl_config_t *cfg) {
  cpdl__schedule_kind_t kind;
  int rc = cpdl__schedule_parse(cfg->schedule, &kind);
  if (rc)
    return cpdl__error_prefix(rc, "config key schedule");
  if (kind == CPDL__SCHEDULE_STATIC)
    return 0;
  if (!t->thd)
    return cpdl__error(CPDL_EARG, "config key schedule: %s needs mode=thd (documents whole in "
                       "rows); this job has mode=%s", cfg->schedule, cpdl_mode_name(cfg->mode));
  cpdl__schedule_params_t p = {kind, feed->dp_size, cfg->cp, 1, cfg->seq_len,
                               t->params.thd_multiple, 0, 0};
  if ((rc = cpdl__schedule_cost_parse(cfg->cost, &p.cost_a, &p.cost_b)))
    return cpdl__error_prefix(rc, "config key cost");
  if ((rc = cpdl__schedule_create(&p, &t->schedule)))
    return rc;
  t->cap_pieces = (int64_t)feed->dp_size * (cfg->seq_len / t->params.thd_multiple);
  t->batch_pieces = malloc((size_t)t->cap_pieces * sizeof *t->batch_pieces);
  t->row_pieces = malloc((size_t)(cfg->seq_len / t->params.thd_multiple + 1) * sizeof *t->row_pieces);
  if (!t->batch_pieces || !t->row_pieces)
    return cpdl__error(-ENOMEM, "feed: out of memory for the schedule of %lld pieces",
                       (long long)t->cap_pieces);
  if (kind != CPDL__SCHEDULE_DYNAMIC)
    return 0;
  /* dynamic: the loss mask in the vocabulary's dtype, as thd's collate writes it */
  cpdl__dynamic_params_t dp = {.cp = cfg->cp, .tp = cfg->tp, .dp_rank = feed->dp_rank,
                               .padding_token_id = cfg->padding_token_id,
                               .eot_token = t->params.eot_token, .loss_on_eot = cfg->loss_on_eot,
                               .loss_mask_dtype = cpdl_field_info(CPDL_FIELD_LOSS_MASK)->dtype,
                               .double_buffer = t->params.double_buffer};
  if ((rc = cpdl__dynamic_create(&dp, t->schedule, &t->dynamic)))
    return rc;
  feed->rank_fields = CPDL__DYNAMIC_RANK_FIELDS;
  return 0;
}

static void tokens_single_buffer(cpdl__feed_t *feed) {
  cpdl__collate_single_buffer(((tokens_t *)feed->impl)->collate);
}

static uint64_t tokens_buffer_bytes(const cpdl__feed_t *feed, uint64_t *set_bytes) {
  return cpdl__collate_buffer_bytes(((const tokens_t *)feed->impl)->collate, set_bytes);
}

static const cpdl__feed_ops_t tokens_ops = {
    .name = "tokens",
    .enter = tokens_enter,
    .rows = tokens_rows,
    .count = tokens_count,
    .begin = tokens_begin,
    .row = tokens_row,
    .fill = tokens_fill,
    .splits = tokens_splits,
    .finish = tokens_finish,
    .lengths = tokens_lengths,
    .spec = tokens_spec,
    .position = tokens_position,
    .mesh = tokens_mesh,
    .rank_lengths = tokens_rank_lengths,
    .close = tokens_close,
    .single_buffer = tokens_single_buffer,
    .buffer_bytes = tokens_buffer_bytes,
};

int cpdl__feed_tokens_open(cpdl__feed_t *feed, const cpdl_config_t *cfg) {
  tokens_t *t = calloc(1, sizeof *t);
  if (!t)
    return cpdl__error(-ENOMEM, "feed: out of memory");
  feed->ops = &tokens_ops;
  feed->impl = t;
  t->source = feed->source;
  t->total = UINT64_MAX;
  t->params = (cpdl__collate_params_t){
      .seq_len = cfg->seq_len,
      .batch = cfg->batch,
      .padding_token_id = cfg->padding_token_id,
      .position_ids = cfg->position_ids,
      .loss_on_eot = cfg->loss_on_eot,
      .eot_token = cpdl__source_eot(feed->source),
      /* Several loader threads pipeline collation with preparation. */
      .double_buffer = cfg->threads > 1,
      .thd_multiple = cfg->mode == CPDL_MODE_THD ? 2 * cfg->cp : 0,
      .thd_doc_ids = cfg->mode == CPDL_MODE_THD && strcmp(cfg->schedule, "balanced") == 0,
  };
  int rc = cpdl__collate_parse(cfg->collate, &t->params.kind);
  if (rc)
    return cpdl__error_prefix(rc, "config key collate");
  t->thd = t->params.thd_multiple > 0;
  feed->unit = cfg->batch;
  feed->double_buffer = t->params.double_buffer;
  t->n = cpdl__source_count(feed->source);
  if (t->n < 1)
    return cpdl__error(CPDL_ESOURCE, "feed: source \"%s\" has %lld samples; it needs at least one",
                       cfg->source, (long long)t->n);
  if ((rc = cpdl__perm_create(t->n, cfg->seed, 0, &t->perm)))
    return rc;
  t->order = (cpdl__doc_order_t){.read = order_read, .length = order_length, .arg = t};
  if ((rc = cpdl__collate_create(&t->params, &t->order, &t->collate)))
    return rc;
  if ((rc = schedule_open(t, feed, cfg)))
    return rc;
  if (!t->thd) {
    t->n_blocks = (t->n + BLOCK - 1) / BLOCK;
    if (!(t->starts = calloc((size_t)cfg->batch, sizeof *t->starts)))
      return cpdl__error(-ENOMEM, "feed: out of memory for %d row starts", cfg->batch);
    if (!(t->cum = malloc((size_t)(t->n_blocks + 1) * sizeof *t->cum)))
      return cpdl__error(-ENOMEM, "feed: out of memory for the index of %lld documents",
                         (long long)t->n);
  }
  return 0;
}
