/* schedule.h — the work-balanced schedule of one global batch (schedule.c).
 * Pure: no MPI, no I/O, no clock. Every node computes the same schedule from
 * the same document lengths with no communication (docs/schedule.md).
 * Internal (never installed); MPI-free like base.h.
 *
 * Units: a document's length is its input/label PAIRS (tokens - 1), as
 * mode thd counts them (docs/thd.md); offsets are pairs into the document.
 * "Rank" here is a schedule rank s = replica * cp + cp_rank, 0 <= s < dp*cp;
 * the loader maps it to world ranks (tp ranks of one s see the same view).
 */
#ifndef CPDL_SCHEDULE_H
#define CPDL_SCHEDULE_H

#include "base.h"

#include <stdint.h>

typedef enum {
  CPDL__SCHEDULE_STATIC = 0,   /* today's thd: rows filled in order */
  CPDL__SCHEDULE_BALANCED = 1, /* documents moved between rows and replicas */
  CPDL__SCHEDULE_DYNAMIC = 2,  /* a CP size per document, 1 .. dp*cp */
} cpdl__schedule_kind_t;

/* Work of a document of L pairs, whole: a*L + b*L^2; a rank that holds it
 * with c-1 others does 1/c of it. Defaults from Llama-3-8B's dimensions
 * (d_model 4096, 32 layers, vocabulary 128256, GQA k/v width 1024, MLP
 * 14336): a = (2*layers*params_per_layer + 2*d*V) / (2*layers*d) = 57256
 * when b = 1 (causal attention: 2*layers*d*L^2 FLOPs forward; the backward
 * scales both terms alike). docs/schedule.md derives it. */
#define CPDL__SCHEDULE_COST_A 57256.0
#define CPDL__SCHEDULE_COST_B 1.0

typedef struct {
  cpdl__schedule_kind_t kind;
  int dp, cp, batch;     /* replicas, CP ranks per replica, rows per replica */
  int64_t seq_len;       /* a row's tokens; a multiple of pad_multiple, below 2^31 */
  int pad_multiple;      /* static/balanced: each document padded to this (today
                            2*cp; a multiple of 2*cp). dynamic pads to 2*c. */
  double cost_a, cost_b; /* >= 0, not both 0 */
} cpdl__schedule_params_t;

/* A document (or the part of one) in a global batch, in global order. */
typedef struct {
  int64_t doc_id; /* the document's global id (its position in the global order) */
  int64_t offset; /* its first pair in this piece */
  int64_t len;    /* pairs, >= 1 */
} cpdl__schedule_piece_t;

/* One entry of a rank's list: a sub-sample (or padding) it takes part in. */
typedef struct {
  int64_t doc_id;      /* -1: padding that fills the rest of a row or block */
  int64_t offset, len; /* pairs of the document: [offset, offset + len) */
  int64_t padded;      /* the sub-sample's whole padded length (all c shares) */
  int64_t local_start; /* its share's first token in this rank's block */
  int32_t group;       /* id into the group table; the group's size is c */
  int32_t chunk;       /* this rank's place in the group: it holds zigzag chunks
                          `chunk` and 2c-1-chunk of padded/(2c) tokens each */
  int32_t row;         /* static/balanced: the replica's row; dynamic: 0 */
  int32_t piece;       /* index of the piece in the batch's split order; -1 padding */
} cpdl__schedule_sub_t;

typedef struct cpdl__schedule {
  cpdl__schedule_params_t params;
  int n_ranks;                 /* dp * cp */
  int64_t block;               /* tokens of each rank's block: batch * seq_len / cp */
  /* The pieces after splitting those longer than seq_len (static's rule). */
  cpdl__schedule_piece_t *pieces;
  int64_t n_pieces;
  /* Rank s's entries, in the order it runs them: subs[rank_begin[s] ..
   * rank_begin[s+1]). Dynamic: ordered by piece index, one order for all
   * ranks, so no two groups can wait on each other (docs/schedule.md says
   * why); static/balanced: row by row, the same list on every rank of a
   * replica. Their local shares tile the block: local_start is the sum of
   * the shares before, the last entry ends at `block`. */
  int64_t *rank_begin;
  cpdl__schedule_sub_t *subs;
  double *rank_work;           /* modeled work per rank */
  double total_work;           /* sum over ranks */
  /* The group table, the same for every batch of a layout: for every size
   * c = 1 .. n_ranks, the aligned groups {k*c .. k*c+c-1}, k < n_ranks / c,
   * by size then k (cpdl__schedule_group_id). Group g's members are the
   * schedule ranks group_first[g] .. group_first[g] + group_size[g] - 1:
   * about n_ranks * ln(n_ranks) groups, two ints each. */
  int n_groups;
  int32_t *group_first;
  int32_t *group_size;
  int32_t *size_base;          /* [n_ranks + 2]: id of size c's first group */
  /* 1 when the balancing heuristic could not place every piece within the
   * rows' (or blocks') capacity and this batch got the static layout. */
  int fell_back;
  /* workspace (grown as needed, reused across batches) */
  int64_t cap_pieces, cap_subs;
  void *work;
  size_t work_size;
} cpdl__schedule_t;

/* "static", "balanced", "dynamic". \return 0 or CPDL_EARG naming the choices. */
int cpdl__schedule_parse(const char *name, cpdl__schedule_kind_t *out);
const char *cpdl__schedule_name(cpdl__schedule_kind_t kind);
/* "a,b" (two non-negative numbers, not both 0). \return 0 or CPDL_EARG. */
int cpdl__schedule_cost_parse(const char *text, double *a, double *b);

/* Check params. \return 0 or CPDL_EARG naming the field and the fix. */
int cpdl__schedule_check(const cpdl__schedule_params_t *params);

/* The id of the aligned group of size c holding schedule rank s (c <= n_ranks,
 * s < (n_ranks / c) * c), or -1 when s lies past the last whole group of c. */
int32_t cpdl__schedule_group_id(int n_ranks, int c, int s);

/* \return 0, CPDL_EARG (cpdl__schedule_check), -ENOMEM. */
int cpdl__schedule_create(const cpdl__schedule_params_t *params, cpdl__schedule_t **out);
void cpdl__schedule_destroy(cpdl__schedule_t *s);

/* The global batch of static thd (today's packing, the one every kind
 * schedules): fill dp*batch rows of seq_len in order, each document padded to
 * pad_multiple; a document that no longer fits waits for the next row, one
 * longer than a row fills it and continues in the next. lens[i] is document
 * (first_doc_id + i)'s pairs (documents of 0 pairs are skipped), starting at
 * pair first_offset of document 0. Writes up to `cap` pieces to out (cap >=
 * dp*batch*seq_len/pad_multiple always suffices), *n_out, and where the next
 * batch starts: document index *next_doc (relative to lens) at pair
 * *next_offset. \return the rows filled (dp*batch unless lens ran out), or
 * CPDL_EARG (bad params, first_offset past document 0, cap too small). */
int64_t cpdl__schedule_cut(const cpdl__schedule_params_t *params, const int64_t *lens, int64_t n,
                           int64_t first_doc_id, int64_t first_offset, cpdl__schedule_piece_t *out,
                           int64_t cap, int64_t *n_out, int64_t *next_doc, int64_t *next_offset);

/* Schedule one global batch: the pieces in global order (any lengths: those
 * longer than seq_len are first split into seq_len-long pieces and a rest,
 * as static does). The result lives in s until the next build.
 * \return 0; CPDL_EARG when a piece has len < 1 or the pieces do not fit in
 * dp*batch rows even in the static order (the message says how many rows they
 * need); -ENOMEM. */
int cpdl__schedule_build(cpdl__schedule_t *s, const cpdl__schedule_piece_t *pieces, int64_t n);

/* Rank r's boundaries over its entries (padding included), int32 [n+1]:
 * cu_seqlens (real pairs), cu_seqlens_padded (whole padded lengths) and
 * cu_local (cumulative shares in the block: cu_padded / cp for static and
 * balanced). Any output may be NULL. \return n, the rank's entry count, CPDL_EARG (r out
 * of range) or CPDL_EOVERFLOW (a sum past 2^31). */
int64_t cpdl__schedule_rank_cu(const cpdl__schedule_t *s, int r, int32_t *cu_seqlens,
                               int32_t *cu_seqlens_padded, int32_t *cu_local);

/* The work of one document of len pairs under the params' model, whole. */
static inline double cpdl__schedule_cost(const cpdl__schedule_params_t *p, int64_t len) {
  double l = (double)len;
  return p->cost_a * l + p->cost_b * l * l;
}

#endif /* CPDL_SCHEDULE_H */
