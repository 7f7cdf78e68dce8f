/* feed_dynamic.c — schedule=dynamic's per-rank blocks (docs/schedule.md): from
 * one global batch's dynamic schedule (schedule.c), each CP rank of this
 * replica that the group holds gets its row of the step's per-rank fields —
 * the zigzag chunks j and 2c-1-j of each of its sub-samples (padded to a
 * multiple of 2c), its own cu_seqlens / cu_seqlens_padded / cu_local, and per
 * entry doc_ids, cp_group, cp_chunk — and the step carries the group table.
 * Invariants: a rank's row is written whole every step (token tails are never
 * left over: the entries tile the block; list tails repeat the last boundary
 * or hold -1), and the bytes are a function of the schedule and the data
 * alone, so every node's leader writes the same rows for the same ranks.
 * The token rules are thd's (collate.c): input = doc[o+u], label = doc[o+u+1]
 * (-100 for EOT unless loss_on_eot), loss_mask = label != -100, padding =
 * pad token / -100 / 0, position ids 0.. through the sub-sample's padding.
 */
#include "feed_kind.h"
#include "schedule.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define IGNORE_INDEX (-100)

typedef struct dyn_set {
  int64_t *input_ids, *labels, *position_ids; /* [cp][block] */
  unsigned char *loss_mask;                   /* [cp][block] of loss_mask_dtype */
  int32_t *cu, *cu_padded, *cu_local;         /* [cp][cap + 1] */
  int64_t *doc_ids;                           /* [cp][cap] */
  int32_t *group, *chunk;                     /* [cp][cap] */
  int64_t *entries;                           /* [cp]: each local rank's entries n */
} dyn_set_t;

struct cpdl__dynamic {
  cpdl__dynamic_params_t p;
  int n_ranks, n_groups;
  int64_t block, cap;  /* tokens per rank; entries per rank (block / 2) */
  size_t mask_size;
  bool *local;         /* [cp]: rows this group's leader writes */
  dyn_set_t sets[2];
  int n_sets, current;
  int32_t *groups;     /* [n_groups][2]: first schedule rank, size */
  int32_t *world;      /* [tp][n_ranks]: world rank of schedule rank s at tp rank t */
};

static void set_free(dyn_set_t *s) {
  free(s->input_ids);
  free(s->labels);
  free(s->position_ids);
  free(s->loss_mask);
  free(s->cu);
  free(s->cu_padded);
  free(s->cu_local);
  free(s->doc_ids);
  free(s->group);
  free(s->chunk);
  free(s->entries);
}

void cpdl__dynamic_destroy(cpdl__dynamic_t *d) {
  if (!d)
    return;
  for (int k = 0; k < 2; k++)
    set_free(&d->sets[k]);
  free(d->local);
  free(d->groups);
  free(d->world);
  free(d);
}

int cpdl__dynamic_create(const cpdl__dynamic_params_t *p, const cpdl__schedule_t *s,
                         cpdl__dynamic_t **out) {
  *out = NULL;
  if (p->cp < 1 || p->tp < 1 || p->dp_rank < 0 || s->params.cp != p->cp ||
      p->dp_rank >= s->params.dp || s->block % 2 || s->block < 2 ||
      (p->loss_mask_dtype != CPDL_DTYPE_INT64 && p->loss_mask_dtype != CPDL_DTYPE_FLOAT32 &&
       p->loss_mask_dtype != CPDL_DTYPE_INT32 && p->loss_mask_dtype != CPDL_DTYPE_BOOL))
    return cpdl__error(CPDL_EARG, "feed: schedule=dynamic with cp %d, tp %d, dp_rank %d, a block "
                       "of %lld tokens and a loss_mask of %s is not supported", p->cp, p->tp,
                       p->dp_rank, (long long)s->block, cpdl_dtype_name(p->loss_mask_dtype));
  cpdl__dynamic_t *d = calloc(1, sizeof *d);
  if (!d)
    return cpdl__error(-ENOMEM, "feed: out of memory");
  d->p = *p;
  d->n_ranks = s->n_ranks;
  d->n_groups = s->n_groups;
  d->block = s->block;
  d->cap = s->block / 2; /* every share is a positive multiple of 2 tokens */
  d->mask_size = cpdl_dtype_size(p->loss_mask_dtype);
  d->n_sets = p->double_buffer ? 2 : 1;
  const size_t cp = (size_t)p->cp, B = (size_t)d->block, K = (size_t)d->cap;
  bool ok = (d->local = calloc(cp, sizeof *d->local)) &&
            (d->groups = malloc((size_t)d->n_groups * 2 * sizeof *d->groups)) &&
            (d->world = malloc((size_t)p->tp * (size_t)d->n_ranks * sizeof *d->world));
  for (int k = 0; ok && k < d->n_sets; k++) {
    dyn_set_t *t = &d->sets[k];
    ok = (t->input_ids = calloc(cp * B, 8)) && (t->labels = calloc(cp * B, 8)) &&
         (t->position_ids = calloc(cp * B, 8)) && (t->loss_mask = calloc(cp * B, d->mask_size)) &&
         (t->cu = calloc(cp * (K + 1), 4)) && (t->cu_padded = calloc(cp * (K + 1), 4)) &&
         (t->cu_local = calloc(cp * (K + 1), 4)) && (t->doc_ids = calloc(cp * K, 8)) &&
         (t->group = calloc(cp * K, 4)) && (t->chunk = calloc(cp * K, 4)) &&
         (t->entries = calloc(cp, sizeof *t->entries));
  }
  if (!ok) {
    cpdl__dynamic_destroy(d);
    return cpdl__error(-ENOMEM, "feed: out of memory for schedule=dynamic's blocks (cp %d x %lld "
                       "tokens)", p->cp, (long long)d->block);
  }
  for (int i = 0; i < p->cp; i++)
    d->local[i] = true; /* until the loader says which of them this group holds */
  for (int g = 0; g < d->n_groups; g++) {
    d->groups[2 * g] = s->group_first[g];
    d->groups[2 * g + 1] = s->group_size[g];
  }
  for (int64_t i = 0; i < (int64_t)p->tp * d->n_ranks; i++)
    d->world[i] = -1;
  *out = d;
  return 0;
}

int cpdl__dynamic_set_mesh(cpdl__dynamic_t *d, const int *world_at, const int *local_cp,
                           int n_local_cp) {
  if (world_at)
    for (int64_t i = 0; i < (int64_t)d->p.tp * d->n_ranks; i++)
      d->world[i] = world_at[i];
  if (local_cp) {
    for (int i = 0; i < d->p.cp; i++)
      d->local[i] = false;
    for (int i = 0; i < n_local_cp; i++) {
      if (local_cp[i] < 0 || local_cp[i] >= d->p.cp)
        return cpdl__error(CPDL_EARG, "feed: local CP rank %d is outside [0, %d)", local_cp[i],
                           d->p.cp);
      d->local[local_cp[i]] = true;
    }
  }
  return 0;
}

/* Field `id` of the vocabulary (cpdl/fields.h): its name and dtype from there. */
static void set_tensor(cpdl_tensor_t *f, cpdl_field_id_t id, int ndim, int64_t d0, int64_t d1,
                       int64_t d2, const void *data) {
  memset(f, 0, sizeof *f);
  f->name = cpdl_field_name(id);
  f->dtype = cpdl_field_info(id)->dtype;
  f->ndim = ndim;
  f->shape[0] = d0;
  f->shape[1] = d1;
  f->shape[2] = d2;
  f->data = data;
}

/* The fields, per-rank ones first (row r of each: CP rank r's block). */
static int fields_of(const cpdl__dynamic_t *d, const dyn_set_t *t, cpdl_tensor_t *f, int *n) {
  const int64_t cp = d->p.cp, B = d->block, K = d->cap;
  set_tensor(&f[0], CPDL_FIELD_INPUT_IDS, 3, cp, 1, B, t ? t->input_ids : NULL);
  set_tensor(&f[1], CPDL_FIELD_LABELS, 3, cp, 1, B, t ? t->labels : NULL);
  set_tensor(&f[2], CPDL_FIELD_POSITION_IDS, 3, cp, 1, B, t ? t->position_ids : NULL);
  set_tensor(&f[3], CPDL_FIELD_LOSS_MASK, 3, cp, 1, B, t ? t->loss_mask : NULL);
  f[3].dtype = d->p.loss_mask_dtype; /* the collate's (float32, the vocabulary's, by default) */
  set_tensor(&f[4], CPDL_FIELD_CU_SEQLENS, 2, cp, K + 1, 0, t ? t->cu : NULL);
  set_tensor(&f[5], CPDL_FIELD_CU_SEQLENS_PADDED, 2, cp, K + 1, 0, t ? t->cu_padded : NULL);
  set_tensor(&f[6], CPDL_FIELD_CU_LOCAL, 2, cp, K + 1, 0, t ? t->cu_local : NULL);
  set_tensor(&f[7], CPDL_FIELD_DOC_IDS, 2, cp, K, 0, t ? t->doc_ids : NULL);
  set_tensor(&f[8], CPDL_FIELD_CP_GROUP, 2, cp, K, 0, t ? t->group : NULL);
  set_tensor(&f[9], CPDL_FIELD_CP_CHUNK, 2, cp, K, 0, t ? t->chunk : NULL);
  /* shared: the group table */
  set_tensor(&f[10], CPDL_FIELD_CP_GROUPS, 2, d->n_groups, 2, 0, t ? d->groups : NULL);
  set_tensor(&f[11], CPDL_FIELD_CP_WORLD_RANKS, 2, d->p.tp, d->n_ranks, 0,
             t ? d->world : NULL);
  *n = CPDL__DYNAMIC_FIELDS;
  return 0;
}

int cpdl__dynamic_spec(const cpdl__dynamic_t *d, cpdl_tensor_t *fields, int *n_fields) {
  return fields_of(d, NULL, fields, n_fields);
}

void cpdl__dynamic_begin(cpdl__dynamic_t *d) { d->current = (d->current + 1) % d->n_sets; }

void cpdl__dynamic_fields(const cpdl__dynamic_t *d, cpdl_tensor_t *fields, int *n_fields) {
  fields_of(d, &d->sets[d->current], fields, n_fields);
}

void cpdl__dynamic_rank_lengths(const cpdl__dynamic_t *d, int cp_rank, int64_t *rows) {
  const dyn_set_t *t = &d->sets[d->current];
  bool mine = cp_rank >= 0 && cp_rank < d->p.cp && d->local[cp_rank];
  const int64_t n = mine ? t->entries[cp_rank] : d->cap;
  for (int i = 0; i < 4; i++) /* the token fields, [1, block] */
    rows[i] = 1;
  for (int i = 4; i < 7; i++) /* cu_seqlens, cu_seqlens_padded, cu_local */
    rows[i] = mine ? n + 1 : d->cap + 1;
  for (int i = 7; i < CPDL__DYNAMIC_RANK_FIELDS; i++) /* doc_ids, cp_group, cp_chunk */
    rows[i] = n;
}

static inline int64_t token_at(const cpdl__sample_t *doc, int64_t i) {
  const unsigned char *p = (const unsigned char *)doc->tokens + (size_t)i * (size_t)doc->token_bytes;
  switch (doc->token_bytes) {
  case 2: { uint16_t v; memcpy(&v, p, 2); return v; }
  case 4: { uint32_t v; memcpy(&v, p, 4); return v; }
  default: { int64_t v; memcpy(&v, p, 8); return v; }
  }
}

static inline void store_mask(const cpdl__dynamic_t *d, unsigned char *at, int on) {
  switch (d->p.loss_mask_dtype) {
  case CPDL_DTYPE_FLOAT32: { float v = (float)on; memcpy(at, &v, 4); break; }
  case CPDL_DTYPE_INT32: { int32_t v = on; memcpy(at, &v, 4); break; }
  case CPDL_DTYPE_BOOL: *at = (unsigned char)on; break;
  default: { int64_t v = on; memcpy(at, &v, 8); break; }
  }
}

/* Padded positions [u0, u0 + count) of a sub-sample of `len` real pairs from
 * pair `offset` of doc (NULL: padding) into rank row positions from `at`. */
static void put_run(const cpdl__dynamic_t *d, const dyn_set_t *t, int64_t row_base, int64_t at,
                    const cpdl__sample_t *doc, int64_t offset, int64_t len, int64_t u0,
                    int64_t count) {
  int64_t *ids = t->input_ids + row_base + at, *labels = t->labels + row_base + at;
  int64_t *pos = t->position_ids + row_base + at;
  unsigned char *mask = t->loss_mask + (size_t)(row_base + at) * d->mask_size;
  for (int64_t j = 0; j < count; j++) {
    const int64_t u = u0 + j;
    pos[j] = u;
    if (doc && u < len) {
      int64_t label = token_at(doc, offset + u + 1);
      if (!d->p.loss_on_eot && d->p.eot_token >= 0 && label == d->p.eot_token)
        label = IGNORE_INDEX;
      ids[j] = token_at(doc, offset + u);
      labels[j] = label;
      store_mask(d, mask + (size_t)j * d->mask_size, label != IGNORE_INDEX);
    } else {
      ids[j] = d->p.padding_token_id;
      labels[j] = IGNORE_INDEX;
      store_mask(d, mask + (size_t)j * d->mask_size, 0);
    }
  }
}

int cpdl__dynamic_fill(cpdl__dynamic_t *d, const cpdl__schedule_t *s, const cpdl__doc_order_t *order,
                       uint64_t epoch, cpdl__perm_t *perm) {
  dyn_set_t *t = &d->sets[d->current];
  const int64_t B = d->block, K = d->cap;
  for (int cp_rank = 0; cp_rank < d->p.cp; cp_rank++) {
    if (!d->local[cp_rank])
      continue;
    const int r = d->p.dp_rank * d->p.cp + cp_rank; /* the schedule rank */
    int32_t *cu = t->cu + (size_t)cp_rank * (size_t)(K + 1);
    int32_t *cu_padded = t->cu_padded + (size_t)cp_rank * (size_t)(K + 1);
    int32_t *cu_local = t->cu_local + (size_t)cp_rank * (size_t)(K + 1);
    const int64_t begin = s->rank_begin[r], n = s->rank_begin[r + 1] - begin;
    if (n > K)
      return cpdl__error(CPDL_EARG, "feed: schedule rank %d has %lld entries, more than a block "
                         "of %lld tokens holds (%lld)", r, (long long)n, (long long)B, (long long)K);
    int64_t got = cpdl__schedule_rank_cu(s, r, cu, cu_padded, cu_local);
    if (got < 0)
      return got;
    if (cu_local[n] != B)
      return cpdl__error(CPDL_EARG, "feed: schedule rank %d's entries cover %d of its block's "
                         "%lld tokens", r, cu_local[n], (long long)B);
    t->entries[cp_rank] = n;
    for (int64_t k = n + 1; k <= K; k++) {
      cu[k] = cu[n];
      cu_padded[k] = cu_padded[n];
      cu_local[k] = (int32_t)B;
    }
    const int64_t row_base = (int64_t)cp_rank * B;
    const size_t list = (size_t)cp_rank * (size_t)K;
    for (int64_t k = 0; k < n; k++) {
      const cpdl__schedule_sub_t *e = &s->subs[begin + k];
      const int64_t c = s->group_size[e->group], half = e->padded / (2 * c);
      cpdl__sample_t doc = {0};
      if (e->doc_id >= 0) {
        int rc = order->read(order->arg, epoch, e->doc_id, &doc);
        if (rc)
          return cpdl__error_prefix(rc == CPDL_EEOF ? CPDL_ESOURCE : rc, "feed: reading the "
                                    "document at position %lld of epoch %llu",
                                    (long long)e->doc_id, (unsigned long long)epoch);
        if (e->offset + e->len + 1 > doc.n_tokens ||
            (doc.token_bytes != 2 && doc.token_bytes != 4 && doc.token_bytes != 8))
          return cpdl__error(CPDL_ESOURCE, "feed: the document at position %lld of epoch %llu "
                             "has %lld tokens of %d bytes; the schedule needs pairs [%lld, %lld) "
                             "(the source changed while open?)", (long long)e->doc_id,
                             (unsigned long long)epoch, (long long)doc.n_tokens, doc.token_bytes,
                             (long long)e->offset, (long long)(e->offset + e->len));
      }
      const cpdl__sample_t *src = e->doc_id >= 0 ? &doc : NULL;
      /* chunks j and 2c-1-j: the rank's share of the sub-sample, in that order */
      put_run(d, t, row_base, e->local_start, src, e->offset, e->len, e->chunk * half, half);
      put_run(d, t, row_base, e->local_start + half, src, e->offset, e->len,
              (2 * c - 1 - e->chunk) * half, half);
      t->doc_ids[list + (size_t)k] = e->doc_id < 0 ? -1 : cpdl__perm_at(perm, epoch, e->doc_id);
      t->group[list + (size_t)k] = e->group;
      t->chunk[list + (size_t)k] = e->chunk;
    }
    for (int64_t k = n; k < K; k++) {
      t->doc_ids[list + (size_t)k] = -1;
      t->group[list + (size_t)k] = -1;
      t->chunk[list + (size_t)k] = -1;
    }
  }
  return 0;
}
