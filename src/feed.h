/* feed.h — what the leader's loader threads pull batches from:
 * the data-source host (source.c), the feed (feed.c: the global order of
 * rows, its kinds behind feed_kind.h), the document order (perm.c) and the
 * collate. No MPI, no shared memory. Never installed.
 */
#ifndef CPDL_FEED_H
#define CPDL_FEED_H

#include "base.h"
#include "cpdl.h"
#include "cpdl/plugin.h" /* cpdl_source_params_t */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- source.c (plugin host; ABI in include/cpdl/plugin.h) -----------------
 * A data source opened from a URI "scheme:path?key=value&...". Token samples
 * are zero-copy views (mmap) where the format allows. */
typedef struct cpdl__source cpdl__source_t;
typedef struct cpdl__sample {
  /* Belongs to the source. Valid until the source closes when
   * cpdl__source_stable() (mmap-backed: llmc, megatron); for generated
   * sources (synthetic) only until the next read on the same source.
   * Reads on one source are serialized by the host when the plugin does not
   * declare concurrent reads. */
  const void *tokens;
  int64_t n_tokens;
  int token_bytes;         /* 2, 4 or 8 (unsigned 16/32 bit, or int64) */
} cpdl__sample_t;
/* The URI goes to the plugin as given; `params` (NULL: none) are the
 * loader's parameters (plugin.h, cpdl_source_params_t), lent for the call.
 * \return 0, CPDL_EPLUGIN (unknown scheme: lists known ones; ABI mismatch:
 *         both versions; missing symbol; dlerror() text), CPDL_ESOURCE,
 *         CPDL_ECORRUPT (file, offset, what was expected). */
int cpdl__source_open(const char *uri, const cpdl_source_params_t *params, cpdl__source_t **out);
const char *cpdl__source_name(const cpdl__source_t *src);  /* plugin name */
int64_t cpdl__source_count(const cpdl__source_t *src);      /* samples */
int cpdl__source_read(cpdl__source_t *src, int64_t index, cpdl__sample_t *out);
int64_t cpdl__source_eot(const cpdl__source_t *src);        /* EOT token id, or -1 */
/* Tokens of sample `index` without producing them (the plugin's length(), or
 * a read when it has none). */
int cpdl__source_length(cpdl__source_t *src, int64_t index, int64_t *n_tokens);
/* Pre-collated sources (npy): batches instead of samples. has_batches is
 * true for them; read_batch fills tensors owned by the source, valid until
 * the next call. */
bool cpdl__source_has_batches(const cpdl__source_t *src);
int64_t cpdl__source_batch_count(const cpdl__source_t *src);
int cpdl__source_read_batch(cpdl__source_t *src, int64_t step, cpdl_tensor_t *fields, int *n_fields);
void cpdl__source_close(cpdl__source_t *src);
/* Extras (for inspect, the binding and tests). */
const char *cpdl__source_description(const cpdl__source_t *src);
const char *cpdl__source_plugin_path(const cpdl__source_t *src); /* the .so loaded */
bool cpdl__source_stable(const cpdl__source_t *src); /* tokens valid until close */
/* Reads may run on several threads at once (CPDL_SOURCE_CONCURRENT_READS); a
 * source that is not stable keeps each thread's view until its next read. */
bool cpdl__source_concurrent(const cpdl__source_t *src);
/* Sources with one global sample order (CPDL_SOURCE_GLOBAL_ORDER: gpt): sample
 * `index` as one training row of `width` positions (plugin.h, read_row). */
bool cpdl__source_global_order(const cpdl__source_t *src);
/* Global-order sources: the samples consumed before the stream begins (the
 * plugin's consumed(), e.g. gpt:'s consumed_samples=; 0 without one).
 * \return 0, CPDL_EPLUGIN (a value outside [0, count]). */
int cpdl__source_consumed(const cpdl__source_t *src, int64_t *consumed);
int cpdl__source_read_row(cpdl__source_t *src, int64_t index, int64_t width, int64_t *input_ids,
                          int64_t *labels, float *loss_mask, int64_t *position_ids);
/* Documents: sample i is document i unless the plugin says otherwise
 * (megatron ?unit=sequence): document j = samples [*first, *first+*n). */
int64_t cpdl__source_document_count(const cpdl__source_t *src);
int cpdl__source_document(const cpdl__source_t *src, int64_t doc, int64_t *first,
                          int64_t *n_samples);
/* "a, b, c" of the schemes found on the plugin search path; \return count. */
int cpdl__source_list(char *buf, size_t size);

/* ---- feed.c (+ feed_tokens.c, feed_rows.c, feed_batches.c), perm.c, collate.c
 * What the leader's loader threads pull batches from: one global order of
 * training rows (docs/design.md#the-global-order), a function of the data and
 * of seed, seq_len, batch, collate, mode and the padding multiple — never of
 * dp, cp, tp or the node count: row b of replica r at the k-th step of an
 * epoch is row consumed0 + (k*dp + r)*unit + b of that epoch. Every node of
 * a replica produces the same collated batch for the same step without
 * communication, and the cursor (a few integers, the same on every replica)
 * says where the next step starts: setting it reproduces the stream from
 * there, under any layout. */
#define CPDL__CURSOR_WORDS 5
#define CPDL__CURSOR_EPOCH 0    /* the epoch of the next step */
#define CPDL__CURSOR_CONSUMED 1 /* rows of that epoch consumed (gpt: samples, npy: batches) */
#define CPDL__CURSOR_POSITION 2 /* thd: the document position where row CONSUMED starts */
#define CPDL__CURSOR_OFFSET 3   /* thd: the pair offset in that document */
#define CPDL__CURSOR_STEP 4     /* the word counting the steps produced (== the loader's step) */
typedef struct cpdl__feed cpdl__feed_t;
/* \return 0, CPDL_EPLUGIN (unknown scheme, ABI mismatch, dlerror text),
 *         CPDL_ESOURCE, CPDL_ECORRUPT (file named with offset), CPDL_EARG.
 * The first epoch's index is built here (one pass over the lengths). */
int cpdl__feed_open(const cpdl_config_t *cfg, int dp_rank, int dp_size, cpdl__feed_t **out);
/* The fields a step has — names, dtypes, shapes; data NULL — producing
 * nothing (npy reads its first batch's headers). \return 0 or a source error. */
int cpdl__feed_spec(cpdl__feed_t *feed, cpdl_tensor_t *fields, int *n_fields);
/* Collate the next step. On return fields[0..*n_fields) describe tensors of
 * shape [batch, seq_len] (or the npy plugin's arrays) owned by the feed, valid
 * until the next call. Fields are named from the vocabulary (cpdl/fields.h);
 * CPDL_FIELD_LOSS_MASK, if present, is the loss mask (float32). Shapes and
 * dtypes are the spec's for every step.
 * \return 0, CPDL_EEOF (gpt: its last full global batch is behind), or an error. */
int cpdl__feed_next(cpdl__feed_t *feed, cpdl_tensor_t *fields, int *n_fields);
/* The next step in two stages, so several threads can fill its rows: plan
 * (one thread) does what feed_next does but fills only the rows that cannot
 * be split (every row of a feed that cpdl__feed_splits() says does not) and
 * describes the fields; then fill(part, n_parts) on each of n_parts threads at
 * once fills the rows b with b % n_parts == part. The fields' data is complete
 * once every part has returned 0; plan never runs while a fill does.
 * feed_next = plan + fill(0, 1). \return as feed_next; fill: a read error or
 * CPDL_ESOURCE (message in the failing thread's cpdl_last_error()). */
int cpdl__feed_plan(cpdl__feed_t *feed, cpdl_tensor_t *fields, int *n_fields);
int cpdl__feed_fill(cpdl__feed_t *feed, int part, int n_parts);
/* True when fill does the rows' work and may run on several threads (pack and
 * pad rows of token sources that are stable or read concurrently); false:
 * plan does it all and fill does nothing. */
bool cpdl__feed_splits(const cpdl__feed_t *feed);
/* Steps from the cursor to the end of epoch `epochs` - 1, at most cap
 * (counting stops there): pack, pad and npy in O(1), thd by running its
 * packing over each epoch's lengths. The same on every replica. */
int cpdl__feed_steps(cpdl__feed_t *feed, uint64_t epochs, uint64_t cap, uint64_t *out);
/* The cursor after the last step (thd: may run the packing ahead to the
 * next global batch's first row). \return 0 or a source error. */
int cpdl__feed_cursor(cpdl__feed_t *feed, uint64_t words[CPDL__CURSOR_WORDS]);
/* Position the feed at a cursor of any replica of a job of any layout (the
 * same data and stream keys). \return 0, CPDL_EARG (a cursor this data
 * cannot hold), a source error. */
int cpdl__feed_seek(cpdl__feed_t *feed, const uint64_t words[CPDL__CURSOR_WORDS]);
/* The valid entries along dim 0 of each field of the step cpdl__feed_next
 * returned last (rows[i] for fields[i]): shape[0], but less for a field of
 * variable length (mode thd's cu_seqlens and cu_seqlens_padded: n+1 of
 * their capacity). The publisher stores them with the step (segment.h, the
 * slot lengths table), so no consumer re-derives them from the data. Call it
 * right after next() or plan(), on the same thread (rows that plan leaves to
 * fill have fixed lengths). */
void cpdl__feed_lengths(const cpdl__feed_t *feed, const cpdl_tensor_t *fields, int n_fields,
                        int64_t *rows);
void cpdl__feed_close(cpdl__feed_t *feed);
/* True when a step's tensors stay valid until the call after the next one
 * (the collate is double-buffered: cfg->threads > 1 and not pre-collated). */
bool cpdl__feed_double_buffered(const cpdl__feed_t *feed);
/* Before the first cpdl__feed_next(): one output set only (the loader's
 * sizing found no room or no use for the second: sizing.c); the feed is no
 * longer double-buffered. */
void cpdl__feed_single_buffer(cpdl__feed_t *feed);
/* Bytes of the output buffers the feed itself allocated (collate sets and
 * scratch; 0 for pre-collated sources, whose tensors are the source's
 * mappings); *set_bytes (may be NULL): one output set's. */
uint64_t cpdl__feed_buffer_bytes(const cpdl__feed_t *feed, uint64_t *set_bytes);
/* schedule=dynamic (docs/schedule.md): the step's first N fields are per
 * rank, with a leading dim cp (row r: CP rank r's block, made for
 * cpdl__prep_plan_blocks); 0 for every other feed. */
int cpdl__feed_rank_fields(const cpdl__feed_t *feed);
/* schedule=dynamic: the valid entries of CP rank cp_rank's per-rank fields
 * (rows[0 .. cpdl__feed_rank_fields), along the rank's own dim 0: its lists
 * hold n+1 or n of their capacity) of the step next() returned last, for the
 * slot lengths table of that rank's region. Call it as cpdl__feed_lengths. */
void cpdl__feed_rank_lengths(const cpdl__feed_t *feed, int cp_rank, int64_t *rows);
/* schedule=dynamic: the mesh's world rank of every coordinate (world_at,
 * cpdl__mesh_t's) for the group table, and the CP ranks of this replica whose
 * blocks this leader writes (NULL: all). Other feeds ignore it.
 * \return 0 or CPDL_EARG. */
int cpdl__feed_set_mesh(cpdl__feed_t *feed, const int *world_at, const int *local_cp,
                        int n_local_cp);
/* "tokens", "rows" or "batches" (feed_kind.h). */
const char *cpdl__feed_kind(const cpdl__feed_t *feed);

/* ---- perm.c ---------------------------------------------------------------
 * The document at (epoch, position): a permutation of [0, n) per epoch, a
 * pure function of (n, seed, epoch). Fisher–Yates (materialized, n <=
 * table_max) or a keyed Feistel permutation with cycle walking (no memory,
 * larger n). */
typedef struct cpdl__perm cpdl__perm_t;
/* table_max: largest n shuffled with a table; 0 = default (1 << 26).
 * \return 0, CPDL_EARG (n < 1), -ENOMEM. */
int cpdl__perm_create(int64_t n, uint64_t seed, int64_t table_max, cpdl__perm_t **out);
void cpdl__perm_destroy(cpdl__perm_t *perm);
int64_t cpdl__perm_size(const cpdl__perm_t *perm);
/* perm_epoch[position], 0 <= position < n. Not const: it may rebuild the
 * cached epoch's table. */
int64_t cpdl__perm_at(cpdl__perm_t *perm, uint64_t epoch, int64_t position);

/* ---- collate.c ------------------------------------------------------------
 * Turns documents into [batch, seq_len] tensors (int64; thd's loss_mask float32)
 * (docs/design.md#the-data-path); see collate.c for the exact window and
 * position rules. Documents come through a cpdl__doc_order_t, so tests need
 * no plugin; an epoch's last position is followed by CPDL_EEOF. */
typedef enum { CPDL__COLLATE_PACK = 0, CPDL__COLLATE_PAD = 1 } cpdl__collate_kind_t;
typedef struct cpdl__doc_order {
  /* Document `position` of `epoch`: its tokens, or only its length. Both
   * return CPDL_EEOF past the epoch's last document. */
  int (*read)(void *arg, uint64_t epoch, int64_t position, cpdl__sample_t *out);
  int (*length)(void *arg, uint64_t epoch, int64_t position, int64_t *n_tokens);
  void *arg;
} cpdl__doc_order_t;
typedef struct cpdl__collate_params {
  cpdl__collate_kind_t kind;
  int64_t seq_len;          /* S >= 1 */
  int batch;                /* B >= 1 */
  int64_t padding_token_id; /* pad: input_ids filler */
  int position_ids;         /* pack: 0 = restart per document, 1 = continuous */
  int loss_on_eot;          /* 0: labels equal to eot_token become -100 */
  int64_t eot_token;        /* -1: none */
  bool double_buffer;       /* two output sets, used in turn (see collate_begin) */
  int thd_multiple;         /* pack, batch 1: > 0 pads each document to a multiple of this
                             * (2*cp, mode thd) and adds loss_mask and the cu_seqlens fields */
  bool thd_doc_ids;         /* thd: also doc_ids, int64 [S/thd_multiple]: each row entry's
                             * document (its source sample), -1 past them or for padding
                             * (schedule=balanced: cpdl__collate_thd_pieces fills it) */
} cpdl__collate_params_t;
typedef struct cpdl__collate cpdl__collate_t;
/* "pack" | "pad". \return 0 or CPDL_EARG. */
int cpdl__collate_parse(const char *name, cpdl__collate_kind_t *out);
/* \return 0, CPDL_EARG (bad kind, sizes, position_ids), CPDL_EOVERFLOW, -ENOMEM. */
int cpdl__collate_create(const cpdl__collate_params_t *params, const cpdl__doc_order_t *order,
                         cpdl__collate_t **out);
void cpdl__collate_destroy(cpdl__collate_t *collate);
/* Before the first begin(): keep one output set (free the second). */
void cpdl__collate_single_buffer(cpdl__collate_t *collate);
/* Bytes of every buffer the collate allocated: its output sets and its
 * token window; *set_bytes (may be NULL) gets one set's. */
uint64_t cpdl__collate_buffer_bytes(const cpdl__collate_t *collate, uint64_t *set_bytes);
/* A step: begin() moves to the next output set (with double_buffer the
 * previous step's set stays intact, so one thread may prepare step k while
 * another collates k+1); row(b) fills row b from the cursor and moves the
 * cursor past it; fields() describes the set (4 fields for pack, 7 for thd,
 * 3 for pad), valid until the next begin() — or the one after it.
 * row \return 0, a read error, CPDL_ESOURCE (the epoch ended inside a pack or
 * pad row), CPDL_EEOF (thd: the epoch holds no more pairs). */
void cpdl__collate_begin(cpdl__collate_t *collate);
int cpdl__collate_row(cpdl__collate_t *collate, int64_t row);
/* Pack and pad: row `row` of the current set from the cursor (epoch,
 * position, offset), read with reader `reader` (0 .. CPDL__COLLATE_READERS -
 * 1; reader 0 is also the cursor's), leaving the cursor where it is — the
 * same bytes as seek + row. Calls with different readers and rows may run at
 * once on different threads when the document order's read may (the source
 * is stable or reads concurrently), and a reader is never used by two
 * threads at once. \return as row, or CPDL_EARG (mode thd, a bad row,
 * reader or cursor). */
#define CPDL__COLLATE_READERS 16
int cpdl__collate_row_at(cpdl__collate_t *collate, int reader, int64_t row, uint64_t epoch,
                         int64_t position, int64_t offset);
/* The reader drops its document view: the next row reads it again (a
 * generated source's view ends at its thread's next read, which may have
 * come from elsewhere in between). */
void cpdl__collate_forget(cpdl__collate_t *collate, int reader);
void cpdl__collate_fields(const cpdl__collate_t *collate, cpdl_tensor_t *fields, int *n_fields);
/* begin, rows 0..batch-1, fields. */
int cpdl__collate_next(cpdl__collate_t *collate, cpdl_tensor_t *fields, int *n_fields);
/* The fields of a step of these parameters, data NULL. */
int cpdl__collate_spec(const cpdl__collate_params_t *params, cpdl_tensor_t *fields, int *n_fields);
/* The valid entries along dim 0 of each field of the step fields() last
 * described (rows[i] for its field i, i < n_fields): shape[0], except in
 * mode thd for cu_seqlens and cu_seqlens_padded, whose `capacity` entries
 * hold n+1 valid ones (the tail repeats the last boundary and S). */
void cpdl__collate_lengths(const cpdl__collate_t *collate, int64_t *rows, int n_fields);
/* Mode thd: the documents of one row, from lengths alone — the one packing
 * rule, used to make rows (collate) and to count and index them (feed).
 * From (*position, *offset) of `epoch`: whole documents' input/label pairs,
 * each padded to a multiple of `multiple`, while they fit seq_len; a document
 * longer than a row fills it and continues. place (may be NULL) is called
 * for each piece: pairs [offset, offset + len) of the document at position,
 * at row index `at`, taking `padded` positions. On return the cursor is the
 * next row's start (normalized: a document with a pair left, or the epoch's
 * end). \return 1 (a row), 0 (the epoch holds no more pairs), an error. */
typedef int (*cpdl__thd_place_fn)(void *arg, int64_t position, int64_t offset, int64_t len,
                                  int64_t padded, int64_t at);
int cpdl__thd_plan_row(int64_t seq_len, int64_t multiple, const cpdl__doc_order_t *order,
                       uint64_t epoch, int64_t *position, int64_t *offset,
                       cpdl__thd_place_fn place, void *place_arg);
/* Mode thd, a scheduled row (schedule=balanced, docs/schedule.md): the
 * current set's row made of pieces[0..n) in that order, pairs [offset, offset
 * + len) of the document at `position` of the cursor's epoch, each taking
 * `padded` positions (a multiple of thd_multiple; together exactly seq_len);
 * position -1 is padding (len 0). The cursor does not move.
 * \return 0, CPDL_EARG (pieces that do not tile the row), a read error. */
typedef struct {
  int64_t position, offset, len, padded;
  int64_t doc_id; /* written to doc_ids (thd_doc_ids): the source's sample, -1 padding */
} cpdl__thd_piece_t;
int cpdl__collate_thd_pieces(cpdl__collate_t *collate, const cpdl__thd_piece_t *pieces, int64_t n);
/* Where the next row starts: document `position` of `epoch`, token (thd:
 * pair) offset in it. */
void cpdl__collate_cursor(const cpdl__collate_t *collate, uint64_t *epoch, int64_t *position,
                          int64_t *offset);
/* \return 0 or CPDL_EARG (negative position or offset, offset in pad mode). */
int cpdl__collate_seek(cpdl__collate_t *collate, uint64_t epoch, int64_t position, int64_t offset);

#endif /* CPDL_FEED_H */
