/* feed.h — what the leader's loader threads pull batches from:
 * the data-source host (source.c), the feed (feed.c: source → sampler →
 * collate, with a cursor; or a global-order or pre-collated source), the
 * sampler and the collate. No MPI, no shared memory. Never installed.
 */
#ifndef CPDL_FEED_H
#define CPDL_FEED_H

#include "base.h"
#include "cpdl.h"

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
/* \return 0, CPDL_EPLUGIN (unknown scheme: lists known ones; ABI mismatch:
 *         both versions; missing symbol; dlerror() text), CPDL_ESOURCE,
 *         CPDL_ECORRUPT (file, offset, what was expected). */
int cpdl__source_open(const char *uri, cpdl__source_t **out);
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
/* Sources with one global sample order (CPDL_SOURCE_GLOBAL_ORDER: gpt): sample
 * `index` as one training row of `width` positions (plugin.h, read_row). */
bool cpdl__source_global_order(const cpdl__source_t *src);
int cpdl__source_read_row(cpdl__source_t *src, int64_t index, int64_t width, int64_t *input_ids,
                          int64_t *labels, float *loss_mask, int64_t *position_ids);
/* Documents: sample i is document i unless the plugin says otherwise
 * (megatron ?unit=sequence): document j = samples [*first, *first+*n). */
int64_t cpdl__source_document_count(const cpdl__source_t *src);
int cpdl__source_document(const cpdl__source_t *src, int64_t doc, int64_t *first,
                          int64_t *n_samples);
/* "a, b, c" of the schemes found on the plugin search path; \return count. */
int cpdl__source_list(char *buf, size_t size);

/* ---- feed.c, sampler.c, collate.c --------------------------------
 * What the leader's loader threads pull batches from: sampler → source
 * plugin → collate. Deterministic from (config, dp_rank, dp_size): every node
 * of a replica produces the same collated batch for the same step without
 * communication. The cursor (a few integers) says where the next step
 * starts; setting it reproduces the stream exactly from there. */
#define CPDL__CURSOR_WORDS 4
#define CPDL__CURSOR_STEP 3     /* the word counting the steps produced (== the loader's step) */
#define CPDL__CURSOR_CONSUMED 1 /* global order: the job's consumed-sample count */
typedef struct cpdl__feed cpdl__feed_t;
/* \return 0, CPDL_EPLUGIN (unknown scheme, ABI mismatch, dlerror text),
 *         CPDL_ESOURCE, CPDL_ECORRUPT (file named with offset), CPDL_EARG. */
int cpdl__feed_open(const cpdl_config_t *cfg, int dp_rank, int dp_size, cpdl__feed_t **out);
/* Collate the next step. On return fields[0..*n_fields) describe tensors of
 * shape [batch, seq_len] (or the npy plugin's arrays) owned by the feed, valid
 * until the next call. A field named "loss_mask", if present, is the loss
 * mask. Shapes and dtypes are the same for every step of a feed.
 * \return 0, CPDL_EEOF, or an error. */
int cpdl__feed_next(cpdl__feed_t *feed, cpdl_tensor_t *fields, int *n_fields);
/* Steps this replica's first `epochs` passes over the data hold, at most cap
 * (counting stops there): lengths only, O(epochs * samples of a replica). */
int cpdl__feed_steps(cpdl__feed_t *feed, uint64_t epochs, uint64_t cap, uint64_t *out);
void cpdl__feed_cursor(const cpdl__feed_t *feed, uint64_t words[CPDL__CURSOR_WORDS]);
int cpdl__feed_seek(cpdl__feed_t *feed, const uint64_t words[CPDL__CURSOR_WORDS]);
/* Whether the feed's order is global: one sequence of samples for the whole
 * job, dealt to the replicas step by step (Megatron's order), so that its
 * whole position is one consumed-sample count — cursor word
 * CPDL__CURSOR_CONSUMED, the same on every replica — and a job may resume it
 * with another dp size. Such a feed must seek from the cursor
 * {0, consumed, 0, step} on any replica. False for per-replica orders, whose
 * cursor is one replica's own (epoch, position, offset, steps). */
bool cpdl__feed_global_order(const cpdl__feed_t *feed);
void cpdl__feed_close(cpdl__feed_t *feed);
/* True when a step's tensors stay valid until the call after the next one
 * (the collate is double-buffered: cfg->threads > 1 and not pre-collated). */
bool cpdl__feed_double_buffered(const cpdl__feed_t *feed);

/* ---- sampler.c ------------------------------------------------------------
 * Which sample a replica reads at (epoch, position): a pure function of
 * (n_samples, seed, epoch, dp_rank, dp_size, drop_last). The epoch's
 * permutation is Fisher–Yates (materialized, n <= table_max) or a keyed
 * Feistel permutation with cycle walking (no memory, larger n). Replica r
 * takes positions r, r+dp, r+2dp, … of it; per epoch floor(n/dp) samples
 * (drop_last) or ceil(n/dp), wrapping to the start of the same permutation.
 * Its state is (epoch, position of the next sample); epochs roll over. */
typedef struct cpdl__sampler cpdl__sampler_t;
typedef struct cpdl__sampler_params {
  int64_t n_samples;       /* >= 1 */
  uint64_t seed;
  int dp_rank, dp_size;    /* 0 <= dp_rank < dp_size */
  bool drop_last;
  int64_t table_max;       /* largest n shuffled with a table; 0 = default (1 << 26) */
} cpdl__sampler_params_t;
/* \return 0, CPDL_EARG (no samples, bad dp, drop_last with n < dp_size), -ENOMEM. */
int cpdl__sampler_create(const cpdl__sampler_params_t *params, cpdl__sampler_t **out);
void cpdl__sampler_destroy(cpdl__sampler_t *sampler);
int64_t cpdl__sampler_per_epoch(const cpdl__sampler_t *sampler); /* this replica's samples per epoch */
/* Sample index at (epoch, position < per_epoch), without moving the state.
 * Not const: it may rebuild the cached permutation. \return 0, CPDL_EARG, -ENOMEM. */
int cpdl__sampler_index(cpdl__sampler_t *sampler, uint64_t epoch, int64_t position, int64_t *index);
/* Index at the state, then advance it (rolling into the next epoch). */
int cpdl__sampler_next(cpdl__sampler_t *sampler, int64_t *index);
void cpdl__sampler_tell(const cpdl__sampler_t *sampler, uint64_t *epoch, int64_t *position);
/* \return 0 or CPDL_EARG (position >= per_epoch). */
int cpdl__sampler_seek(cpdl__sampler_t *sampler, uint64_t epoch, int64_t position);

/* ---- collate.c ------------------------------------------------------------
 * Turns the sampler's documents into [batch, seq_len] int64 tensors
 * (docs/design.md#the-data-path); see collate.c for the exact window and position rules. Samples
 * come through a read callback so tests need no plugin. The collate does not
 * own the sampler; it drives it (next/seek/tell). */
typedef enum { CPDL__COLLATE_PACK = 0, CPDL__COLLATE_PAD = 1 } cpdl__collate_kind_t;
typedef int (*cpdl__collate_read_fn)(void *arg, int64_t index, cpdl__sample_t *out);
typedef struct cpdl__collate_params {
  cpdl__collate_kind_t kind;
  int64_t seq_len;          /* S >= 1 */
  int batch;                /* B >= 1 */
  int64_t padding_token_id; /* pad: input_ids filler */
  int position_ids;         /* pack: 0 = restart per document, 1 = continuous */
  int loss_on_eot;          /* 0: labels equal to eot_token become -100 */
  int64_t eot_token;        /* -1: none */
  bool double_buffer;       /* two output sets, used in turn (see collate_next) */
  int thd_multiple;         /* pack, batch 1: > 0 pads each document to a multiple of this
                             * (2*cp, mode thd) and adds loss_mask and the cu_seqlens fields */
} cpdl__collate_params_t;
typedef struct cpdl__collate cpdl__collate_t;
/* "pack" | "pad". \return 0 or CPDL_EARG. */
int cpdl__collate_parse(const char *name, cpdl__collate_kind_t *out);
/* \return 0, CPDL_EARG (bad kind, sizes, position_ids), CPDL_EOVERFLOW, -ENOMEM. */
int cpdl__collate_create(const cpdl__collate_params_t *params, cpdl__sampler_t *sampler,
                         cpdl__collate_read_fn read, void *read_arg, cpdl__collate_t **out);
void cpdl__collate_destroy(cpdl__collate_t *collate);
/* One step. fields[] (4 for pack, 7 for pack with thd_multiple, 3 for pad) point into buffers owned by the
 * collate, valid until the next call — or, with double_buffer, until the call
 * after it (so one thread may prepare step k while another collates k+1). \return 0, a read error, CPDL_ESOURCE
 * (a whole epoch of documents too short to use). */
int cpdl__collate_next(cpdl__collate_t *collate, cpdl_tensor_t *fields, int *n_fields);
/* Mode thd: entries n+1 of this step's cu_seqlens / cu_seqlens_padded, whose fields hold
 * `capacity` entries with the tail repeating S: one more than the index of the first entry of
 * cu_padded that reaches seq_len (a binary search reading each probe once; at most capacity). */
int64_t cpdl__collate_thd_len(const int32_t *cu_padded, int64_t capacity, int64_t seq_len);
/* The rows and whole steps the collate makes of documents known only by their
 * lengths, fed in the order it reads them (cpdl__collate_count_doc with each
 * one's epoch): the same decisions as collate_next, so an epoch's count is
 * exact — pack: the windows its token stream fills (the tail shorter than a
 * step waits for the next epoch's tokens); pad: documents of >= 2 tokens;
 * thd: its rows, the epoch's last one ended with padding. */
typedef struct cpdl__collate_count {
  cpdl__collate_kind_t kind;
  int64_t seq_len;
  int batch, thd_multiple;
  unsigned __int128 tokens, rows; /* pack: tokens so far; every kind: rows completed */
  int64_t at;                     /* thd: pairs placed in the open row */
  uint64_t epoch;                 /* thd: the open row's epoch */
} cpdl__collate_count_t;
void cpdl__collate_count_init(cpdl__collate_count_t *count, const cpdl__collate_t *collate);
void cpdl__collate_count_doc(cpdl__collate_count_t *count, uint64_t epoch, int64_t n_tokens);
uint64_t cpdl__collate_count_steps(const cpdl__collate_count_t *count);
/* Where the next step starts: the document at sampler (epoch, position) and
 * the token offset in it. */
void cpdl__collate_cursor(const cpdl__collate_t *collate, uint64_t *epoch, int64_t *position,
                          int64_t *offset);
/* \return 0, CPDL_EARG (position or offset out of range, offset in pad mode), a read error. */
int cpdl__collate_seek(cpdl__collate_t *collate, uint64_t epoch, int64_t position, int64_t offset);

#endif /* CPDL_FEED_H */
