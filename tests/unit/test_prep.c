/* test_prep.c — batch preparation (src/prep.c plan, src/prep_exec.c executor) against a slow reference.
 *
 * The reference in this file materializes every output field padded to full length, element
 * by element from multi-indices, then slices each rank's shard out of it. The library never
 * materializes anything; agreement of the two over many shapes, dtypes, cp sizes and modes is
 * what the tests assert, plus each error the contract names.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ---- tensors the tests own ------------------------------------------------ */

typedef struct owned {
  cpdl_tensor_t t;
  void *buf;
} owned_t;

#define MAX_IN 16

typedef struct batch {
  int n;
  owned_t in[MAX_IN];
  cpdl_tensor_t view[MAX_IN];
} batch_t;

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

static int64_t numel(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int d = 0; d < ndim; d++)
    n *= shape[d];
  return n;
}

/* Add a tensor filled with distinct-looking random bytes; returns its buffer. */
static void *add(batch_t *b, const char *name, cpdl_dtype_t dt, int ndim, ...) {
  assert_true(b->n < MAX_IN);
  owned_t *o = &b->in[b->n];
  memset(o, 0, sizeof *o);
  o->t.name = name;
  o->t.dtype = dt;
  o->t.ndim = ndim;
  va_list ap;
  va_start(ap, ndim);
  for (int d = 0; d < ndim; d++)
    o->t.shape[d] = va_arg(ap, int64_t);
  va_end(ap);
  size_t bytes = (size_t)numel(ndim, o->t.shape) * cpdl_dtype_size(dt);
  o->buf = malloc(bytes ? bytes : 1);
  assert_non_null(o->buf);
  unsigned char *p = o->buf;
  for (size_t k = 0; k < bytes; k++)
    p[k] = (unsigned char)rng();
  if (dt == CPDL_DTYPE_BOOL)
    for (size_t k = 0; k < bytes; k++)
      p[k] &= 1;
  o->t.data = o->buf;
  b->view[b->n] = o->t;
  b->n++;
  return o->buf;
}

static void batch_free(batch_t *b) {
  for (int i = 0; i < b->n; i++)
    free(b->in[i].buf);
  b->n = 0;
}

/* ---- element values (test-side encoders, only for exact small values) ----- */

static uint16_t half_from_int(int64_t v) {
  /* exact IEEE half encoding of an integer with |v| < 2048 */
  assert_true(v > -2048 && v < 2048);
  if (v == 0)
    return 0;
  uint16_t sign = v < 0 ? 0x8000 : 0;
  uint64_t a = (uint64_t)(v < 0 ? -v : v);
  int e = 63 - __builtin_clzll(a);
  uint64_t man = (a << (10 - e)) & 0x3ff;
  return (uint16_t)(sign | ((uint16_t)(e + 15) << 10) | man);
}

static double half_to_double(uint16_t h) {
  int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
  return (h & 0x8000) ? -v : v;
}

static void ref_store(cpdl_dtype_t dt, unsigned char *p, double v) {
  switch (dt) {
  case CPDL_DTYPE_BOOL: p[0] = v != 0; break;
  case CPDL_DTYPE_UINT8: p[0] = (uint8_t)(int64_t)v; break;
  case CPDL_DTYPE_INT32: { int32_t x = (int32_t)v; memcpy(p, &x, 4); break; }
  case CPDL_DTYPE_INT64: { int64_t x = (int64_t)v; memcpy(p, &x, 8); break; }
  case CPDL_DTYPE_FLOAT16: { uint16_t h = half_from_int((int64_t)v); assert_true((double)(int64_t)v == v); memcpy(p, &h, 2); break; }
  case CPDL_DTYPE_BFLOAT16: {
    float f = (float)v;
    uint32_t x;
    memcpy(&x, &f, 4);
    assert_int_equal(x & 0xffff, 0); /* exactly representable in tests */
    uint16_t h = (uint16_t)(x >> 16);
    memcpy(p, &h, 2);
    break;
  }
  case CPDL_DTYPE_FLOAT32: { float f = (float)v; memcpy(p, &f, 4); break; }
  case CPDL_DTYPE_FLOAT64: memcpy(p, &v, 8); break;
  default: fail();
  }
}

static double ref_load(cpdl_dtype_t dt, const unsigned char *p) {
  switch (dt) {
  case CPDL_DTYPE_BOOL:
  case CPDL_DTYPE_UINT8: return p[0];
  case CPDL_DTYPE_INT32: { int32_t x; memcpy(&x, p, 4); return x; }
  case CPDL_DTYPE_INT64: { int64_t x; memcpy(&x, p, 8); return (double)x; }
  case CPDL_DTYPE_FLOAT16: { uint16_t h; memcpy(&h, p, 2); return half_to_double(h); }
  case CPDL_DTYPE_BFLOAT16: { uint16_t h; memcpy(&h, p, 2); uint32_t x = (uint32_t)h << 16; float f; memcpy(&f, &x, 4); return f; }
  case CPDL_DTYPE_FLOAT32: { float f; memcpy(&f, p, 4); return f; }
  case CPDL_DTYPE_FLOAT64: { double d; memcpy(&d, p, 8); return d; }
  default: fail();
  }
  return 0;
}

static bool ref_is_zero(cpdl_dtype_t dt, const unsigned char *p) {
  if (dt == CPDL_DTYPE_FLOAT16 || dt == CPDL_DTYPE_BFLOAT16) {
    uint16_t h;
    memcpy(&h, p, 2);
    return h == 0 || h == 0x8000;
  }
  return ref_load(dt, p) == 0.0;
}

/* ---- the reference: padded full tensors, then slices ---------------------- */

typedef struct ref_field {
  char name[CPDL_NAME_MAX];
  cpdl_dtype_t dtype;
  int ndim;
  int64_t shape[CPDL_MAX_DIMS]; /* padded (seq dim = P) or whole for shared */
  int seq_dim;
  int shared;
  unsigned char *data;
} ref_field_t;

typedef struct ref {
  int n;
  ref_field_t f[CPDL_MAX_FIELDS];
  int64_t B, S, P;
} ref_t;

static const cpdl_tensor_t *find(const batch_t *b, const char *name) {
  for (int i = 0; i < b->n; i++)
    if (strcmp(b->view[i].name, name) == 0)
      return &b->view[i];
  return NULL;
}

static void unravel(int64_t lin, int ndim, const int64_t *shape, int64_t *idx) {
  for (int d = ndim - 1; d >= 0; d--) {
    idx[d] = shape[d] ? lin % shape[d] : 0;
    lin = shape[d] ? lin / shape[d] : 0;
  }
}

static int64_t ravel(int ndim, const int64_t *shape, const int64_t *idx) {
  int64_t lin = 0;
  for (int d = 0; d < ndim; d++)
    lin = lin * shape[d] + idx[d];
  return lin;
}

static ref_field_t *ref_new(ref_t *r, const char *name, cpdl_dtype_t dt, int ndim, const int64_t *shape,
                            int seq_dim, int shared) {
  ref_field_t *f = &r->f[r->n++];
  memset(f, 0, sizeof *f);
  snprintf(f->name, sizeof f->name, "%s", name);
  f->dtype = dt;
  f->ndim = ndim;
  memcpy(f->shape, shape, sizeof f->shape);
  f->seq_dim = seq_dim;
  f->shared = shared;
  if (seq_dim >= 0)
    f->shape[seq_dim] = r->P;
  size_t bytes = (size_t)numel(ndim, f->shape) * cpdl_dtype_size(dt);
  f->data = calloc(bytes ? bytes : 1, 1);
  assert_non_null(f->data);
  return f;
}

enum { PAD_VALUE, PAD_CONTINUE };

/* Sequence field from tensor t padded to P on seq_dim. expand_dim: a dim of size 1 in t to be
 * broadcast to B (or -1). */
static void ref_pad_copy(ref_t *r, const char *out_name, const cpdl_tensor_t *t, int seq_dim,
                         int expand_dim, int pad_kind, double pad) {
  int64_t shape[CPDL_MAX_DIMS];
  memcpy(shape, t->shape, sizeof shape);
  if (expand_dim >= 0)
    shape[expand_dim] = r->B;
  ref_field_t *f = ref_new(r, out_name, t->dtype, t->ndim, shape, seq_dim, 0);
  size_t es = cpdl_dtype_size(t->dtype);
  int64_t n = numel(f->ndim, f->shape);
  for (int64_t lin = 0; lin < n; lin++) {
    int64_t idx[CPDL_MAX_DIMS] = {0};
    unravel(lin, f->ndim, f->shape, idx);
    int64_t src_idx[CPDL_MAX_DIMS];
    memcpy(src_idx, idx, sizeof idx);
    if (expand_dim >= 0 && t->shape[expand_dim] == 1)
      src_idx[expand_dim] = 0;
    unsigned char *dst = f->data + (size_t)lin * es;
    if (idx[seq_dim] < r->S) {
      memcpy(dst, (const unsigned char *)t->data + (size_t)ravel(t->ndim, t->shape, src_idx) * es, es);
    } else if (pad_kind == PAD_CONTINUE) {
      src_idx[seq_dim] = r->S - 1;
      double last = ref_load(t->dtype, (const unsigned char *)t->data + (size_t)ravel(t->ndim, t->shape, src_idx) * es);
      ref_store(t->dtype, dst, last + (double)(idx[seq_dim] - r->S + 1));
    } else {
      ref_store(t->dtype, dst, pad);
    }
  }
}

static const char *const standard[] = {"input_ids", "inputs_embeds", "mm_token_type_ids",
                                       "_packed_seq_ids", "per_layer_inputs", "padding_mask",
                                       "labels", "loss_mask", "position_ids", "attention_mask"};

/* Reference of rules 1-7. Returns false when the reference itself expects an error. */
static void ref_prepare(const batch_t *b, const cpdl_prep_params_t *p, ref_t *r) {
  memset(r, 0, sizeof *r);
  const cpdl_tensor_t *prim = find(b, "input_ids");
  bool is_ids = prim != NULL;
  if (!prim)
    prim = find(b, "inputs_embeds");
  assert_non_null(prim);
  r->B = prim->shape[0];
  r->S = prim->shape[1];
  int64_t m = 2 * (int64_t)p->cp_size;
  r->P = (r->S + m - 1) / m * m;
  const int64_t B = r->B, S = r->S, P = r->P;

  if (p->mode == CPDL_MODE_AUX_ONLY) {
    ref_field_t *f = ref_new(r, prim->name, prim->dtype, prim->ndim, prim->shape, -1, 1);
    memcpy(f->data, prim->data, (size_t)numel(prim->ndim, prim->shape) * cpdl_dtype_size(prim->dtype));
  } else {
    ref_pad_copy(r, prim->name, prim, 1, -1, PAD_VALUE, is_ids ? (double)p->padding_token_id : 0);
  }
  const cpdl_tensor_t *labels = find(b, "labels"), *loss = find(b, "loss_mask");
  if (labels) {
    ref_pad_copy(r, "labels", labels, 1, -1, PAD_VALUE, -100);
    if (loss)
      ref_pad_copy(r, "loss_mask", loss, 1, -1, PAD_VALUE, 0);
  } else {
    ref_pad_copy(r, "labels", loss, 1, -1, PAD_VALUE, -100);
  }
  const cpdl_tensor_t *pos = find(b, "position_ids");
  int64_t bs[CPDL_MAX_DIMS] = {B, S, 0, 0};
  if (pos) {
    int sd = pos->ndim - 1;
    ref_pad_copy(r, "position_ids", pos, sd, sd - 1, PAD_CONTINUE, 0);
  } else if (p->cp_size > 1 || p->tp_size > 1) {
    ref_field_t *f = ref_new(r, "position_ids", CPDL_DTYPE_INT64, 2, bs, 1, 0);
    for (int64_t row = 0; row < B; row++)
      for (int64_t i = 0; i < P; i++)
        ref_store(CPDL_DTYPE_INT64, f->data + (size_t)(row * P + i) * 8, (double)i);
  }
  /* is_pad[b*S+i] from the padding information (rule 1) */
  const cpdl_tensor_t *pm = find(b, "padding_mask"), *am = find(b, "attention_mask");
  bool *is_pad = calloc((size_t)(B * S), 1);
  assert_non_null(is_pad);
  for (int64_t row = 0; row < B; row++)
    for (int64_t i = 0; i < S; i++) {
      bool pad = false;
      if (pm) {
        pad = !ref_is_zero(pm->dtype, (const unsigned char *)pm->data + (size_t)(row * S + i) * cpdl_dtype_size(pm->dtype));
      } else if (am && am->ndim == 2) {
        pad = ref_is_zero(am->dtype, (const unsigned char *)am->data + (size_t)(row * S + i) * cpdl_dtype_size(am->dtype));
      } else if (am) {
        int64_t idx[4] = {row, 0, i, i};
        bool zero = ref_is_zero(am->dtype, (const unsigned char *)am->data +
                                               (size_t)ravel(4, am->shape, idx) * cpdl_dtype_size(am->dtype));
        pad = am->dtype == CPDL_DTYPE_BOOL ? zero : !zero;
      }
      is_pad[row * S + i] = pad;
    }
  if (pm) {
    ref_pad_copy(r, "padding_mask", pm, 1, -1, PAD_VALUE, 1);
  } else if (am) {
    ref_field_t *f = ref_new(r, "padding_mask", CPDL_DTYPE_BOOL, 2, bs, 1, 0);
    for (int64_t row = 0; row < B; row++)
      for (int64_t i = 0; i < P; i++)
        f->data[row * P + i] = i < S ? is_pad[row * S + i] : 1;
  }
  const cpdl_tensor_t *packed = find(b, "_packed_seq_ids");
  if (packed) {
    ref_pad_copy(r, "_packed_seq_ids", packed, 1, -1, PAD_VALUE, 0);
  } else {
    ref_field_t *f = ref_new(r, "_packed_seq_ids", CPDL_DTYPE_INT64, 2, bs, 1, 0);
    for (int64_t row = 0; row < B; row++)
      for (int64_t i = 0; i < P; i++)
        ref_store(CPDL_DTYPE_INT64, f->data + (size_t)(row * P + i) * 8, i < S && !is_pad[row * S + i] ? 1 : 0);
  }
  free(is_pad);
  const cpdl_tensor_t *t;
  if ((t = find(b, "mm_token_type_ids")))
    ref_pad_copy(r, t->name, t, 1, -1, PAD_VALUE, 0);
  if ((t = find(b, "per_layer_inputs")))
    ref_pad_copy(r, t->name, t, 1, -1, PAD_VALUE, 0);
  for (int k = 0; k < p->n_metadata; k++)
    if ((t = find(b, p->metadata[k].name)))
      ref_pad_copy(r, t->name, t, p->metadata[k].seq_dim, -1, PAD_VALUE, p->metadata[k].pad_value);
  for (int i = 0; i < b->n; i++) {
    t = &b->view[i];
    bool seq = false;
    for (size_t s = 0; s < sizeof standard / sizeof standard[0]; s++)
      seq |= strcmp(t->name, standard[s]) == 0;
    for (int k = 0; k < p->n_metadata; k++)
      seq |= strcmp(t->name, p->metadata[k].name) == 0;
    if (seq)
      continue;
    ref_field_t *f = ref_new(r, t->name, t->dtype, t->ndim, t->shape, -1, 1);
    memcpy(f->data, t->data, (size_t)numel(t->ndim, t->shape) * cpdl_dtype_size(t->dtype));
  }
}

static void ref_free(ref_t *r) {
  for (int i = 0; i < r->n; i++)
    free(r->f[i].data);
  r->n = 0;
}

/* Padded positions kept by cp_rank, in shard order. */
static void ref_positions(const ref_t *r, const cpdl_prep_params_t *p, int cp_rank, int64_t *pos) {
  int64_t L = r->P / p->cp_size;
  if (p->mode == CPDL_MODE_ROUND_ROBIN) {
    int64_t C = r->P / (2 * p->cp_size);
    for (int64_t k = 0; k < C; k++) {
      pos[k] = cp_rank * C + k;
      pos[C + k] = (2 * p->cp_size - 1 - cp_rank) * C + k;
    }
  } else {
    for (int64_t k = 0; k < L; k++)
      pos[k] = cp_rank * L + k;
  }
}

/* Prepare with the library for `ranks` and compare every field with the reference. */
static void check_ranks(batch_t *b, const cpdl_prep_params_t *p, const int *ranks, int n_ranks) {
  ref_t r;
  ref_prepare(b, p, &r);
  cpdl_prep_plan_t *plan = NULL;
  int rc = cpdl_prep_plan_create(b->view, b->n, p, &plan);
  if (rc)
    fprintf(stderr, "plan: %s\n", cpdl_last_error());
  assert_int_equal(rc, 0);
  assert_int_equal(cpdl_prep_plan_seq_len(plan), r.S);
  assert_int_equal(cpdl_prep_plan_padded_len(plan), r.P);
  assert_int_equal(cpdl_prep_plan_nfields(plan), r.n);
  size_t rank_bytes = cpdl_prep_plan_rank_bytes(plan), shared_bytes = cpdl_prep_plan_shared_bytes(plan);
  assert_int_equal(rank_bytes % 64, 0);
  assert_int_equal(shared_bytes % 64, 0);
  int64_t L = r.P / p->cp_size;

  /* layout: names, shapes, alignment, fields inside their block, no overlap */
  for (int i = 0; i < r.n; i++) {
    const cpdl_prep_field_t *f = cpdl_prep_plan_field(plan, i);
    assert_non_null(f);
    assert_string_equal(f->name, r.f[i].name);
    assert_int_equal(f->dtype, r.f[i].dtype);
    assert_int_equal(f->ndim, r.f[i].ndim);
    assert_int_equal(f->seq_dim, r.f[i].seq_dim);
    assert_int_equal(f->shared, r.f[i].shared);
    for (int d = 0; d < f->ndim; d++)
      assert_int_equal(f->shape[d], d == f->seq_dim ? L : r.f[i].shape[d]);
    assert_int_equal(f->nbytes, (size_t)numel(f->ndim, f->shape) * cpdl_dtype_size(f->dtype));
    assert_int_equal(f->offset % 64, 0);
    assert_true(f->offset + f->nbytes <= (f->shared ? shared_bytes : rank_bytes));
    for (int j = 0; j < i; j++) {
      const cpdl_prep_field_t *g = cpdl_prep_plan_field(plan, j);
      if (g->shared == f->shared && f->nbytes && g->nbytes)
        assert_true(g->offset + g->nbytes <= f->offset || f->offset + f->nbytes <= g->offset);
    }
  }
  assert_null(cpdl_prep_plan_field(plan, r.n));

  void *blocks[16];
  assert_true(n_ranks <= 16);
  for (int k = 0; k < n_ranks; k++) {
    blocks[k] = malloc(rank_bytes + 64);
    assert_non_null(blocks[k]);
    memset(blocks[k], 0xA5, rank_bytes + 64);
  }
  unsigned char *shared = malloc(shared_bytes + 64);
  assert_non_null(shared);
  memset(shared, 0xA5, shared_bytes + 64);
  rc = cpdl_prep_execute(plan, b->view, b->n, ranks, n_ranks, blocks, shared);
  if (rc)
    fprintf(stderr, "execute: %s\n", cpdl_last_error());
  assert_int_equal(rc, 0);

  int64_t *pos = malloc(sizeof(int64_t) * (size_t)(L ? L : 1));
  assert_non_null(pos);
  for (int k = 0; k < n_ranks; k++) {
    ref_positions(&r, p, ranks[k], pos);
    /* nothing past the block was written */
    for (int x = 0; x < 64; x++)
      assert_int_equal(((unsigned char *)blocks[k])[rank_bytes + x], 0xA5);
    for (int i = 0; i < r.n; i++) {
      const cpdl_prep_field_t *f = cpdl_prep_plan_field(plan, i);
      const ref_field_t *rf = &r.f[i];
      size_t es = cpdl_dtype_size(f->dtype);
      const unsigned char *got = (f->shared ? shared : (unsigned char *)blocks[k]) + f->offset;
      int64_t n = numel(f->ndim, f->shape);
      for (int64_t lin = 0; lin < n; lin++) {
        int64_t idx[CPDL_MAX_DIMS] = {0};
        unravel(lin, f->ndim, f->shape, idx);
        if (f->seq_dim >= 0)
          idx[f->seq_dim] = pos[idx[f->seq_dim]];
        const unsigned char *want = rf->data + (size_t)ravel(rf->ndim, rf->shape, idx) * es;
        if (memcmp(got + (size_t)lin * es, want, es) != 0) {
          fprintf(stderr, "field %s rank %d element %lld (padded pos %lld, mode %s, cp %d, S %lld): differs\n",
                  f->name, ranks[k], (long long)lin, f->seq_dim >= 0 ? (long long)idx[f->seq_dim] : -1LL,
                  cpdl_mode_name(p->mode), p->cp_size, (long long)r.S);
          fail();
        }
      }
    }
  }
  for (int x = 0; x < 64; x++)
    assert_int_equal(shared[shared_bytes + x], 0xA5);
  free(pos);
  free(shared);
  for (int k = 0; k < n_ranks; k++)
    free(blocks[k]);
  cpdl_prep_plan_destroy(plan);
  ref_free(&r);
}

static void check_all_ranks(batch_t *b, const cpdl_prep_params_t *p) {
  int ranks[16];
  for (int k = 0; k < p->cp_size; k++)
    ranks[k] = k;
  check_ranks(b, p, ranks, p->cp_size);
}

/* A 2-D attention mask with each row's tail padded (row b keeps S - b%3 tokens). */
static void tail_mask(void *buf, cpdl_dtype_t dt, int64_t B, int64_t S) {
  size_t es = cpdl_dtype_size(dt);
  for (int64_t row = 0; row < B; row++)
    for (int64_t i = 0; i < S; i++)
      ref_store(dt, (unsigned char *)buf + (size_t)(row * S + i) * es, i < S - row % 3 ? 1 : 0);
}

static const int cps[] = {1, 2, 3, 5, 6, 8};
static const int64_t seqs[] = {1, 7, 12, 16, 30, 37};

/* ---- tests ---------------------------------------------------------------- */

static void test_contract_all_modes(void **state) {
  (void)state;
  for (int mode = 0; mode < 3; mode++)
    for (size_t c = 0; c < sizeof cps / sizeof cps[0]; c++)
      for (size_t s = 0; s < sizeof seqs / sizeof seqs[0]; s++) {
        int64_t B = 3, S = seqs[s];
        batch_t b = {0};
        add(&b, "input_ids", CPDL_DTYPE_INT64, 2, B, S);
        add(&b, "labels", CPDL_DTYPE_INT64, 2, B, S);
        add(&b, "loss_mask", CPDL_DTYPE_INT64, 2, B, S);
        tail_mask(add(&b, "attention_mask", CPDL_DTYPE_INT64, 2, B, S), CPDL_DTYPE_INT64, B, S);
        cpdl_prep_params_t p;
        cpdl_prep_params_init(&p);
        p.cp_size = cps[c];
        p.mode = (cpdl_mode_t)mode;
        p.padding_token_id = 50257;
        check_all_ranks(&b, &p);
        batch_free(&b);
      }
}

static void test_every_field_and_pad_value(void **state) {
  (void)state;
  cpdl_metadata_field_t meta[] = {
      {"token_types4", 2, 5.0},     /* [B,4,S] int64, seq on dim 2 */
      {"score", 1, 3.0},            /* float16 */
      {"weight", 1, -1.5},          /* float32 */
      {"flags", 1, 1.0},            /* bool */
      {"absent_meta", 1, 9.0},      /* not in the batch: not produced */
  };
  for (size_t c = 0; c < sizeof cps / sizeof cps[0]; c++)
    for (int mode = 0; mode < 3; mode++) {
      int64_t B = 2, S = 11;
      batch_t b = {0};
      add(&b, "pixel_values", CPDL_DTYPE_UINT8, 3, (int64_t)3, (int64_t)5, (int64_t)7);
      add(&b, "input_ids", CPDL_DTYPE_INT32, 2, B, S);
      add(&b, "weight", CPDL_DTYPE_FLOAT32, 2, B, S);
      add(&b, "labels", CPDL_DTYPE_INT32, 2, B, S);
      add(&b, "loss_mask", CPDL_DTYPE_FLOAT32, 2, B, S);
      int32_t *pos = add(&b, "position_ids", CPDL_DTYPE_INT32, 2, B, S);
      for (int64_t k = 0; k < B * S; k++)
        pos[k] = (int32_t)(k % S) * 2 + (int32_t)(k / S) * 100; /* distinct per row */
      add(&b, "padding_mask", CPDL_DTYPE_BOOL, 2, B, S);
      add(&b, "attention_mask", CPDL_DTYPE_INT64, 2, B, S); /* dropped: padding_mask wins */
      add(&b, "_packed_seq_ids", CPDL_DTYPE_INT32, 2, B, S);
      add(&b, "mm_token_type_ids", CPDL_DTYPE_UINT8, 2, B, S);
      add(&b, "per_layer_inputs", CPDL_DTYPE_BFLOAT16, 4, B, S, (int64_t)2, (int64_t)3);
      add(&b, "token_types4", CPDL_DTYPE_INT64, 3, B, (int64_t)4, S);
      add(&b, "score", CPDL_DTYPE_FLOAT16, 2, B, S);
      add(&b, "flags", CPDL_DTYPE_BOOL, 2, B, S);
      add(&b, "odd", CPDL_DTYPE_FLOAT64, 1, (int64_t)5); /* pass-through */
      add(&b, "per_token_unnamed", CPDL_DTYPE_INT64, 2, B, S); /* pass-through, not sharded */
      cpdl_prep_params_t p;
      cpdl_prep_params_init(&p);
      p.cp_size = cps[c];
      p.mode = (cpdl_mode_t)mode;
      p.padding_token_id = -7;
      p.metadata = meta;
      p.n_metadata = 5;
      check_all_ranks(&b, &p);

      /* the output order the lead decided */
      cpdl_prep_plan_t *plan;
      assert_int_equal(cpdl_prep_plan_create(b.view, b.n, &p, &plan), 0);
      const char *order[] = {"input_ids", "labels", "loss_mask", "position_ids", "padding_mask",
                             "_packed_seq_ids", "mm_token_type_ids", "per_layer_inputs",
                             "token_types4", "score", "weight", "flags", "pixel_values", "odd",
                             "per_token_unnamed"};
      assert_int_equal(cpdl_prep_plan_nfields(plan), 15);
      for (int i = 0; i < 15; i++)
        assert_string_equal(cpdl_prep_plan_field(plan, i)->name, order[i]);
      for (int i = 0; i < 15; i++)
        assert_string_not_equal(cpdl_prep_plan_field(plan, i)->name, "attention_mask");
      assert_int_equal(cpdl_prep_plan_field(plan, 8)->seq_dim, 2);
      assert_int_equal(cpdl_prep_plan_field(plan, 14)->shared, 1);
      assert_int_equal(cpdl_prep_plan_field(plan, 14)->seq_dim, -1);
      cpdl_prep_plan_destroy(plan);
      batch_free(&b);
    }
}

/* Pad values in half types, checked against their IEEE bit patterns. */
static void test_half_pad_bits(void **state) {
  (void)state;
  int64_t B = 1, S = 3;
  batch_t b = {0};
  add(&b, "inputs_embeds", CPDL_DTYPE_FLOAT16, 3, B, S, (int64_t)2);
  add(&b, "labels", CPDL_DTYPE_BFLOAT16, 2, B, S);
  add(&b, "loss_mask", CPDL_DTYPE_FLOAT16, 2, B, S);
  add(&b, "m", CPDL_DTYPE_FLOAT16, 2, B, S);
  cpdl_metadata_field_t meta = {"m", 1, -100.0};
  cpdl_prep_params_t p;
  cpdl_prep_params_init(&p);
  p.cp_size = 2; /* S 3 -> 4: one pad position */
  p.metadata = &meta;
  p.n_metadata = 1;
  cpdl_prep_plan_t *plan;
  assert_int_equal(cpdl_prep_plan_create(b.view, b.n, &p, &plan), 0);
  unsigned char *blk = malloc(cpdl_prep_plan_rank_bytes(plan));
  int rank = 1;
  assert_int_equal(cpdl_prep_execute(plan, b.view, b.n, &rank, 1, (void *const *)&blk, NULL), 0);
  uint16_t v;
  const cpdl_prep_field_t *f = cpdl_prep_plan_field(plan, 1); /* labels bf16 */
  assert_string_equal(f->name, "labels");
  memcpy(&v, blk + f->offset + 2, 2);
  assert_int_equal(v, 0xC2C8); /* bfloat16(-100) */
  f = cpdl_prep_plan_field(plan, 5);
  assert_string_equal(f->name, "m");
  memcpy(&v, blk + f->offset + 2, 2);
  assert_int_equal(v, 0xD640); /* float16(-100) */
  f = cpdl_prep_plan_field(plan, 0);
  memcpy(&v, blk + f->offset + 4, 2); /* embeds pad: +0 */
  assert_int_equal(v, 0);
  free(blk);
  cpdl_prep_plan_destroy(plan);
  check_all_ranks(&b, &p);
  batch_free(&b);
}

/* float16/bfloat16 conversion of metadata pad values: rounding, overflow, subnormals
 * (expected values are IEEE 754 binary16 / bfloat16 encodings). */
static void test_half_conversion(void **state) {
  (void)state;
  static const struct {
    cpdl_dtype_t dt;
    double value;
    uint16_t bits;
  } cases[] = {
      {CPDL_DTYPE_FLOAT16, 1.0, 0x3C00},    {CPDL_DTYPE_FLOAT16, -2.0, 0xC000},
      {CPDL_DTYPE_FLOAT16, 2049.0, 0x6800}, /* tie rounds to even: 2048 */
      {CPDL_DTYPE_FLOAT16, 2051.0, 0x6802}, /* tie rounds to even: 2052 */
      {CPDL_DTYPE_FLOAT16, 65504.0, 0x7BFF}, {CPDL_DTYPE_FLOAT16, 65520.0, 0x7C00}, /* to inf */
      {CPDL_DTYPE_FLOAT16, 1e6, 0x7C00},    {CPDL_DTYPE_FLOAT16, 0.5, 0x3800},
      {CPDL_DTYPE_FLOAT16, 0x1p-24, 0x0001}, {CPDL_DTYPE_FLOAT16, 0x1p-14, 0x0400},
      {CPDL_DTYPE_FLOAT16, 0x1p-26, 0x0000}, {CPDL_DTYPE_FLOAT16, -0.0, 0x8000},
      {CPDL_DTYPE_FLOAT16, 0x1p-25, 0x0000}, /* subnormal tie to even: 0 */
      {CPDL_DTYPE_FLOAT16, 0x3p-25, 0x0002}, /* subnormal tie to even: 2 units */
      {CPDL_DTYPE_BFLOAT16, 1.0, 0x3F80},   {CPDL_DTYPE_BFLOAT16, -100.0, 0xC2C8},
      {CPDL_DTYPE_BFLOAT16, 257.0, 0x4380}, /* tie rounds to even: 256 */
      {CPDL_DTYPE_BFLOAT16, 259.0, 0x4382}, /* tie rounds to even: 260 */
  };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    batch_t b = {0};
    add(&b, "input_ids", CPDL_DTYPE_INT64, 2, (int64_t)1, (int64_t)1);
    add(&b, "labels", CPDL_DTYPE_INT64, 2, (int64_t)1, (int64_t)1);
    add(&b, "m", cases[c].dt, 2, (int64_t)1, (int64_t)1);
    cpdl_metadata_field_t meta = {"m", 1, cases[c].value};
    cpdl_prep_params_t p;
    cpdl_prep_params_init(&p);
    p.metadata = &meta;
    p.n_metadata = 1; /* cp 1: S=1 padded to 2, position 1 is padding */
    cpdl_prep_plan_t *plan;
    assert_int_equal(cpdl_prep_plan_create(b.view, b.n, &p, &plan), 0);
    const cpdl_prep_field_t *f = cpdl_prep_plan_field(plan, cpdl_prep_plan_nfields(plan) - 1);
    assert_string_equal(f->name, "m");
    unsigned char *blk = malloc(cpdl_prep_plan_rank_bytes(plan));
    int rank = 0;
    assert_int_equal(cpdl_prep_execute(plan, b.view, b.n, &rank, 1, (void *const *)&blk, NULL), 0);
    uint16_t got;
    memcpy(&got, blk + f->offset + 2, 2);
    if (got != cases[c].bits)
      fprintf(stderr, "%s(%g): got 0x%04x, want 0x%04x\n", cpdl_dtype_name(cases[c].dt), cases[c].value,
              got, cases[c].bits);
    assert_int_equal(got, cases[c].bits);
    free(blk);
    cpdl_prep_plan_destroy(plan);
    batch_free(&b);
  }
}

static void fill_4d(unsigned char *m, cpdl_dtype_t dt, int64_t B, int64_t S, double on, double off,
                    double diag_pad, int64_t real_len) {
  size_t es = cpdl_dtype_size(dt);
  for (int64_t row = 0; row < B; row++)
    for (int64_t i = 0; i < S; i++)
      for (int64_t j = 0; j < S; j++) {
        double v = j <= i ? on : off;
        if (i == j && i >= real_len - row)
          v = diag_pad;
        unsigned char *e = m + (size_t)((row * S + i) * S + j) * es;
        if (isinf(v) && dt == CPDL_DTYPE_FLOAT32) {
          float f = (float)v;
          memcpy(e, &f, 4);
        } else {
          ref_store(dt, e, v);
        }
      }
}

static void test_4d_masks(void **state) {
  (void)state;
  for (size_t c = 0; c < sizeof cps / sizeof cps[0]; c++) {
    int64_t B = 2, S = 9;
    cpdl_prep_params_t p;
    cpdl_prep_params_init(&p);
    p.cp_size = cps[c];
    /* bool: true = attend; padded tokens have a false diagonal */
    batch_t b = {0};
    add(&b, "input_ids", CPDL_DTYPE_INT64, 2, B, S);
    add(&b, "labels", CPDL_DTYPE_INT64, 2, B, S);
    fill_4d(add(&b, "attention_mask", CPDL_DTYPE_BOOL, 4, B, (int64_t)1, S, S), CPDL_DTYPE_BOOL, B, S, 1, 0, 0, 7);
    check_all_ranks(&b, &p);
    batch_free(&b);
    /* additive float32: 0 where attended, -inf elsewhere; padded tokens' diagonal is -inf */
    add(&b, "input_ids", CPDL_DTYPE_INT64, 2, B, S);
    add(&b, "labels", CPDL_DTYPE_INT64, 2, B, S);
    fill_4d(add(&b, "attention_mask", CPDL_DTYPE_FLOAT32, 4, B, (int64_t)1, S, S), CPDL_DTYPE_FLOAT32, B, S, 0, -INFINITY, -INFINITY, 6);
    check_all_ranks(&b, &p);
    batch_free(&b);
    /* int64 "additive": a non-zero diagonal pads even if the token looks real elsewhere */
    add(&b, "input_ids", CPDL_DTYPE_INT64, 2, B, S);
    add(&b, "labels", CPDL_DTYPE_INT64, 2, B, S);
    fill_4d(add(&b, "attention_mask", CPDL_DTYPE_INT64, 4, B, (int64_t)1, S, S), CPDL_DTYPE_INT64, B, S, 0, 0, 1, 5);
    check_all_ranks(&b, &p);
    batch_free(&b);
    /* float16/bfloat16 additive with -0 on real diagonals: -0 is zero, so not padding */
    for (int h = 0; h < 2; h++) {
      cpdl_dtype_t dt = h ? CPDL_DTYPE_BFLOAT16 : CPDL_DTYPE_FLOAT16;
      add(&b, "input_ids", CPDL_DTYPE_INT64, 2, B, S);
      add(&b, "labels", CPDL_DTYPE_INT64, 2, B, S);
      uint16_t *m = add(&b, "attention_mask", dt, 4, B, (int64_t)1, S, S);
      for (int64_t k = 0; k < B * S * S; k++)
        m[k] = 0x8000; /* -0 */
      for (int64_t row = 0; row < B; row++)
        m[((row * S) + (S - 1)) * S + (S - 1)] = h ? 0xff80 : 0xfc00; /* -inf: last token pads */
      check_all_ranks(&b, &p);
      batch_free(&b);
    }
  }
}

static void test_position_ids(void **state) {
  (void)state;
  for (size_t c = 0; c < sizeof cps / sizeof cps[0]; c++)
    for (int mode = 0; mode < 3; mode++) {
      int64_t B = 3, S = 10;
      cpdl_prep_params_t p;
      cpdl_prep_params_init(&p);
      p.cp_size = cps[c];
      p.mode = (cpdl_mode_t)mode;
      /* mRoPE [3,B,S]: each of the 3*B rows continues from its own last value */
      batch_t b = {0};
      add(&b, "input_ids", CPDL_DTYPE_INT64, 2, B, S);
      add(&b, "labels", CPDL_DTYPE_INT64, 2, B, S);
      int64_t *pos = add(&b, "position_ids", CPDL_DTYPE_INT64, 3, (int64_t)3, B, S);
      for (int64_t k = 0; k < 3 * B * S; k++)
        pos[k] = (k % S) + 1000 * (k / S);
      check_all_ranks(&b, &p);
      batch_free(&b);
      /* [1,S] expanded to [B,S]; float32 positions */
      add(&b, "input_ids", CPDL_DTYPE_INT64, 2, B, S);
      add(&b, "labels", CPDL_DTYPE_INT64, 2, B, S);
      float *fpos = add(&b, "position_ids", CPDL_DTYPE_FLOAT32, 2, (int64_t)1, S);
      for (int64_t k = 0; k < S; k++)
        fpos[k] = (float)(3 * k + 1);
      check_all_ranks(&b, &p);
      batch_free(&b);
      /* [3,1,S] expanded to [3,B,S], bfloat16 */
      add(&b, "input_ids", CPDL_DTYPE_INT64, 2, B, S);
      add(&b, "labels", CPDL_DTYPE_INT64, 2, B, S);
      uint16_t *hpos = add(&b, "position_ids", CPDL_DTYPE_BFLOAT16, 3, (int64_t)3, (int64_t)1, S);
      for (int64_t k = 0; k < 3 * S; k++) {
        float f = (float)(k % S + 10 * (k / S));
        uint32_t x;
        memcpy(&x, &f, 4);
        hpos[k] = (uint16_t)(x >> 16);
      }
      check_all_ranks(&b, &p);
      batch_free(&b);
    }
  /* absent: synthesized only when cp > 1 or tp > 1 */
  for (int tp = 1; tp <= 2; tp++) {
    batch_t b = {0};
    add(&b, "input_ids", CPDL_DTYPE_INT64, 2, (int64_t)2, (int64_t)5);
    add(&b, "labels", CPDL_DTYPE_INT64, 2, (int64_t)2, (int64_t)5);
    cpdl_prep_params_t p;
    cpdl_prep_params_init(&p);
    p.tp_size = tp;
    cpdl_prep_plan_t *plan;
    assert_int_equal(cpdl_prep_plan_create(b.view, b.n, &p, &plan), 0);
    bool has = false;
    for (int i = 0; i < cpdl_prep_plan_nfields(plan); i++)
      has |= strcmp(cpdl_prep_plan_field(plan, i)->name, "position_ids") == 0;
    assert_int_equal(has, tp > 1);
    cpdl_prep_plan_destroy(plan);
    check_all_ranks(&b, &p);
    batch_free(&b);
  }
}

static void test_loss_mask_as_labels_and_packed_ids(void **state) {
  (void)state;
  for (size_t c = 0; c < sizeof cps / sizeof cps[0]; c++) {
    int64_t B = 2, S = 13;
    cpdl_prep_params_t p;
    cpdl_prep_params_init(&p);
    p.cp_size = cps[c];
    /* loss_mask stands in for labels: output "labels" with -100 pad, no loss_mask */
    batch_t b = {0};
    add(&b, "input_ids", CPDL_DTYPE_INT64, 2, B, S);
    add(&b, "loss_mask", CPDL_DTYPE_INT32, 2, B, S);
    check_all_ranks(&b, &p);
    cpdl_prep_plan_t *plan;
    assert_int_equal(cpdl_prep_plan_create(b.view, b.n, &p, &plan), 0);
    for (int i = 0; i < cpdl_prep_plan_nfields(plan); i++)
      assert_string_not_equal(cpdl_prep_plan_field(plan, i)->name, "loss_mask");
    assert_string_equal(cpdl_prep_plan_field(plan, 1)->name, "labels");
    assert_int_equal(cpdl_prep_plan_field(plan, 1)->dtype, CPDL_DTYPE_INT32);
    /* no padding info: _packed_seq_ids are all ones on real tokens, 0 on padding */
    const cpdl_prep_field_t *f = cpdl_prep_plan_field(plan, cpdl_prep_plan_nfields(plan) - 1);
    assert_string_equal(f->name, "_packed_seq_ids");
    assert_int_equal(f->dtype, CPDL_DTYPE_INT64);
    int64_t *blk = malloc(cpdl_prep_plan_rank_bytes(plan));
    int last = cps[c] - 1;
    assert_int_equal(cpdl_prep_execute(plan, b.view, b.n, &last, 1, (void *const *)&blk, NULL), 0);
    int64_t L = cpdl_prep_plan_padded_len(plan) / cps[c];
    const int64_t *ids = (const int64_t *)((unsigned char *)blk + f->offset);
    for (int64_t row = 0; row < B; row++)
      for (int64_t k = 0; k < L; k++)
        assert_int_equal(ids[row * L + k], last * L + k < S ? 1 : 0);
    free(blk);
    cpdl_prep_plan_destroy(plan);
    batch_free(&b);
    /* from a given int64 padding_mask (non-zero = padding) */
    add(&b, "input_ids", CPDL_DTYPE_INT64, 2, B, S);
    add(&b, "labels", CPDL_DTYPE_INT64, 2, B, S);
    int64_t *pm = add(&b, "padding_mask", CPDL_DTYPE_INT64, 2, B, S);
    for (int64_t k = 0; k < B * S; k++)
      pm[k] = (k % 4 == 3) ? 7 : 0;
    check_all_ranks(&b, &p);
    batch_free(&b);
    /* from a 2-D float32 attention mask with -0 (counts as zero: padding) */
    add(&b, "input_ids", CPDL_DTYPE_INT64, 2, B, S);
    add(&b, "labels", CPDL_DTYPE_INT64, 2, B, S);
    float *am = add(&b, "attention_mask", CPDL_DTYPE_FLOAT32, 2, B, S);
    for (int64_t k = 0; k < B * S; k++)
      am[k] = k % 5 == 0 ? -0.0f : k % 5 == 1 ? 0.0f : 1.0f;
    check_all_ranks(&b, &p);
    batch_free(&b);
    /* 2-D half masks: both zero bit patterns mean padding */
    for (int h = 0; h < 2; h++) {
      add(&b, "input_ids", CPDL_DTYPE_INT64, 2, B, S);
      add(&b, "labels", CPDL_DTYPE_INT64, 2, B, S);
      uint16_t *hm = add(&b, "attention_mask", h ? CPDL_DTYPE_BFLOAT16 : CPDL_DTYPE_FLOAT16, 2, B, S);
      for (int64_t k = 0; k < B * S; k++)
        hm[k] = k % 3 == 0 ? 0x8000 : k % 3 == 1 ? 0x0000 : (h ? 0x3F80 : 0x3C00);
      check_all_ranks(&b, &p);
      batch_free(&b);
    }
    /* 2-D masks of every dtype */
    for (int dt = 0; dt < CPDL_DTYPE_COUNT; dt++) {
      add(&b, "input_ids", CPDL_DTYPE_INT64, 2, B, S);
      add(&b, "labels", CPDL_DTYPE_INT64, 2, B, S);
      tail_mask(add(&b, "attention_mask", (cpdl_dtype_t)dt, 2, B, S), (cpdl_dtype_t)dt, B, S);
      check_all_ranks(&b, &p);
      batch_free(&b);
    }
  }
}

static void test_subset_of_ranks(void **state) {
  (void)state;
  for (int mode = 0; mode < 3; mode++) {
    int64_t B = 2, S = 29;
    batch_t b = {0};
    add(&b, "input_ids", CPDL_DTYPE_INT64, 2, B, S);
    add(&b, "labels", CPDL_DTYPE_INT64, 2, B, S);
    tail_mask(add(&b, "attention_mask", CPDL_DTYPE_UINT8, 2, B, S), CPDL_DTYPE_UINT8, B, S);
    add(&b, "image", CPDL_DTYPE_FLOAT32, 4, (int64_t)1, (int64_t)3, (int64_t)2, (int64_t)5);
    cpdl_prep_params_t p;
    cpdl_prep_params_init(&p);
    p.cp_size = 8;
    p.mode = (cpdl_mode_t)mode;
    int ranks[] = {7, 2, 5};
    check_ranks(&b, &p, ranks, 3);
    int one = 4;
    check_ranks(&b, &p, &one, 1);
    batch_free(&b);
  }
}

/* cpdl_prep_execute_part: the parts together write exactly what one
 * execute writes, each part alone writes only its share (the rest keeps a
 * poison byte), and every part does some work when items outnumber parts. */
static void test_execute_parts(void **state) {
  (void)state;
  int64_t B = 2, S = 37;
  batch_t b = {0};
  add(&b, "input_ids", CPDL_DTYPE_INT64, 2, B, S);
  add(&b, "labels", CPDL_DTYPE_INT64, 2, B, S);
  tail_mask(add(&b, "attention_mask", CPDL_DTYPE_UINT8, 2, B, S), CPDL_DTYPE_UINT8, B, S);
  add(&b, "image", CPDL_DTYPE_FLOAT32, 2, (int64_t)3, (int64_t)5);
  for (int mode = 0; mode < 3; mode++) {
    cpdl_prep_params_t p;
    cpdl_prep_params_init(&p);
    p.cp_size = 3;
    p.mode = (cpdl_mode_t)mode;
    cpdl_prep_plan_t *plan = NULL;
    assert_int_equal(cpdl_prep_plan_create(b.view, b.n, &p, &plan), 0);
    size_t rb = cpdl_prep_plan_rank_bytes(plan), sb = cpdl_prep_plan_shared_bytes(plan);
    size_t total = 3 * rb + sb;
    unsigned char *whole = malloc(total), *joined = malloc(total), *alone = malloc(total);
    assert_non_null(whole);
    assert_non_null(joined);
    assert_non_null(alone);
    int ranks[3] = {0, 1, 2};
    void *dst_whole[3], *dst_joined[3], *dst_alone[3];
    for (int r = 0; r < 3; r++) {
      dst_whole[r] = whole + r * rb;
      dst_joined[r] = joined + r * rb;
      dst_alone[r] = alone + r * rb;
    }
    memset(whole, 0xA5, total);
    memset(joined, 0xA5, total);
    assert_int_equal(cpdl_prep_execute(plan, b.view, b.n, ranks, 3, dst_whole, whole + 3 * rb), 0);
    for (int n_parts = 1; n_parts <= 5; n_parts++) {
      memset(joined, 0xA5, total);
      for (int part = n_parts - 1; part >= 0; part--) { /* any order */
        memset(alone, 0xA5, total);
        assert_int_equal(cpdl_prep_execute_part(plan, b.view, b.n, ranks, 3, dst_alone,
                                                alone + 3 * rb, part, n_parts), 0);
        size_t written = 0;
        for (size_t i = 0; i < total; i++) {
          if (alone[i] != 0xA5 || whole[i] != 0xA5) {
            if (alone[i] == whole[i] && (alone[i] != 0xA5))
              written++;
          }
        }
        /* 3 ranks x 3 fields + 1 shared = 10 items: every part has work */
        assert_true(written > 0);
        assert_int_equal(cpdl_prep_execute_part(plan, b.view, b.n, ranks, 3, dst_joined,
                                                joined + 3 * rb, part, n_parts), 0);
      }
      assert_memory_equal(joined, whole, total);
    }
    /* a part alone leaves other parts' items untouched */
    memset(alone, 0xA5, total);
    assert_int_equal(cpdl_prep_execute_part(plan, b.view, b.n, ranks, 3, dst_alone,
                                            alone + 3 * rb, 0, 2), 0);
    assert_memory_not_equal(alone, whole, total);
    assert_int_equal(cpdl_prep_execute_part(plan, b.view, b.n, ranks, 3, dst_alone,
                                            alone + 3 * rb, 2, 2), CPDL_EARG);
    assert_int_equal(cpdl_prep_execute_part(plan, b.view, b.n, ranks, 3, dst_alone,
                                            alone + 3 * rb, 0, 0), CPDL_EARG);
    free(whole);
    free(joined);
    free(alone);
    cpdl_prep_plan_destroy(plan);
  }
  batch_free(&b);
}

static void test_embeds_and_large(void **state) {
  (void)state;
  /* inputs_embeds [B,S,H] pads with 0; a larger S exercises long memcpy runs */
  int64_t B = 2, S = 1000, H = 3;
  batch_t b = {0};
  add(&b, "inputs_embeds", CPDL_DTYPE_FLOAT32, 3, B, S, H);
  add(&b, "labels", CPDL_DTYPE_INT64, 2, B, S);
  tail_mask(add(&b, "attention_mask", CPDL_DTYPE_BOOL, 2, B, S), CPDL_DTYPE_BOOL, B, S);
  for (int mode = 0; mode < 3; mode++)
    for (size_t c = 0; c < sizeof cps / sizeof cps[0]; c++) {
      cpdl_prep_params_t p;
      cpdl_prep_params_init(&p);
      p.cp_size = cps[c];
      p.tp_size = 4;
      p.mode = (cpdl_mode_t)mode;
      check_all_ranks(&b, &p);
    }
  batch_free(&b);
}

/* ---- errors --------------------------------------------------------------- */

static int plan_rc(batch_t *b, const cpdl_prep_params_t *p) {
  cpdl_prep_plan_t *plan = (cpdl_prep_plan_t *)(uintptr_t)1;
  int rc = cpdl_prep_plan_create(b->view, b->n, p, &plan);
  if (rc == 0)
    cpdl_prep_plan_destroy(plan);
  else
    assert_null(plan);
  return rc;
}

#define EXPECT_ERR(b, p, code, needle)                                                    \
  do {                                                                                   \
    assert_int_equal(plan_rc(b, p), code);                                               \
    if (!strstr(cpdl_last_error(), needle)) {                                            \
      fprintf(stderr, "message '%s' lacks '%s'\n", cpdl_last_error(), needle);           \
      fail();                                                                            \
    }                                                                                    \
  } while (0)

/* mode thd, literally: for each document [a, b) of cu_seqlens_padded rank r keeps chunk r,
 * then chunk 2cp-1-r (chunk = (b - a) / 2cp) — TransformerEngine's
 * thd_get_partitioned_indices. S = 16 with documents [0, 4) and [4, 16); input_ids[i] = i,
 * so each rank's view is the list of row indices it holds; position_ids are synthesized as
 * the position within the document; the cu_seqlens fields pass through, shared. */
static void test_thd_zigzag(void **state) {
  (void)state;
  static const int32_t bounds2[] = {0, 4, 16}, bounds4[] = {0, 8, 16};
  static const int64_t want2[2][8] = {{0, 3, 4, 5, 6, 13, 14, 15}, {1, 2, 7, 8, 9, 10, 11, 12}};
  static const int64_t want4[4][4] = {{0, 7, 8, 15}, {1, 6, 9, 14}, {2, 5, 10, 13},
                                      {3, 4, 11, 12}};
  for (int cp = 2; cp <= 4; cp += 2) {
    const int64_t S = 16, L = S / cp;
    const int32_t *bounds = cp == 2 ? bounds2 : bounds4;
    batch_t b = {0};
    int64_t *ids = add(&b, "input_ids", CPDL_DTYPE_INT64, 2, (int64_t)1, S);
    int64_t *lab = add(&b, "labels", CPDL_DTYPE_INT64, 2, (int64_t)1, S);
    for (int64_t i = 0; i < S; i++) {
      ids[i] = i;
      lab[i] = 100 + i;
    }
    int32_t *cup = add(&b, "cu_seqlens_padded", CPDL_DTYPE_INT32, 1, (int64_t)3);
    memcpy(cup, bounds, sizeof bounds2);
    cpdl_prep_params_t p;
    cpdl_prep_params_init(&p);
    p.cp_size = cp;
    p.mode = CPDL_MODE_THD;
    cpdl_prep_plan_t *plan = NULL;
    int rc = cpdl_prep_plan_create(b.view, b.n, &p, &plan);
    if (rc)
      fprintf(stderr, "thd plan: %s\n", cpdl_last_error());
    assert_int_equal(rc, 0);
    size_t rank_bytes = cpdl_prep_plan_rank_bytes(plan), shared_bytes = cpdl_prep_plan_shared_bytes(plan);
    for (int r = 0; r < cp; r++) {
      unsigned char *block = malloc(rank_bytes + 1), *shared = malloc(shared_bytes + 1);
      assert_non_null(block);
      assert_non_null(shared);
      int ranks[1] = {r};
      void *blocks[1] = {block};
      assert_int_equal(cpdl_prep_execute(plan, b.view, b.n, ranks, 1, blocks, shared), 0);
      const int64_t *want = cp == 2 ? want2[r] : want4[r];
      int seen = 0;
      for (int i = 0; i < cpdl_prep_plan_nfields(plan); i++) {
        const cpdl_prep_field_t *f = cpdl_prep_plan_field(plan, i);
        const unsigned char *base = (f->shared ? shared : block) + f->offset;
        if (strcmp(f->name, "cu_seqlens_padded") == 0) {
          assert_true(f->shared);
          assert_memory_equal(base, bounds, sizeof bounds2);
          seen++;
          continue;
        }
        assert_int_equal(f->shape[f->seq_dim], L);
        const int64_t *v = (const int64_t *)base;
        for (int64_t j = 0; j < L; j++) {
          int64_t at = want[j], doc_start = at < bounds[1] ? 0 : bounds[1];
          if (strcmp(f->name, "input_ids") == 0)
            assert_int_equal(v[j], at);
          else if (strcmp(f->name, "labels") == 0)
            assert_int_equal(v[j], 100 + at);
          else if (strcmp(f->name, "position_ids") == 0)
            assert_int_equal(v[j], at - doc_start);
          else
            fail_msg("unexpected field %s", f->name);
        }
        seen++;
      }
      assert_int_equal(seen, 4); /* input_ids, labels, position_ids, cu_seqlens_padded */
      free(block);
      free(shared);
    }
    cpdl_prep_plan_destroy(plan);
    batch_free(&b);
  }
}

static void test_errors(void **state) {
  (void)state;
  cpdl_prep_params_t p;
  cpdl_prep_params_init(&p);
  batch_t b = {0};

  add(&b, "labels", CPDL_DTYPE_INT64, 2, (int64_t)2, (int64_t)4);
  EXPECT_ERR(&b, &p, CPDL_EFIELD, "neither");
  add(&b, "input_ids", CPDL_DTYPE_INT64, 2, (int64_t)2, (int64_t)4);
  add(&b, "inputs_embeds", CPDL_DTYPE_FLOAT32, 3, (int64_t)2, (int64_t)4, (int64_t)8);
  EXPECT_ERR(&b, &p, CPDL_EFIELD, "both");
  batch_free(&b);

  add(&b, "input_ids", CPDL_DTYPE_INT64, 2, (int64_t)2, (int64_t)4);
  EXPECT_ERR(&b, &p, CPDL_EFIELD, "loss_mask");
  add(&b, "labels", CPDL_DTYPE_INT64, 2, (int64_t)2, (int64_t)5); /* S disagrees */
  EXPECT_ERR(&b, &p, CPDL_EFIELD, "labels");
  assert_non_null(strstr(cpdl_last_error(), "5"));
  b.view[1].shape[1] = 4;
  b.view[1].shape[0] = 3; /* B disagrees */
  EXPECT_ERR(&b, &p, CPDL_EFIELD, "labels");
  b.view[1].shape[0] = 2;
  assert_int_equal(plan_rc(&b, &p), 0);

  b.view[1].dtype = (cpdl_dtype_t)99;
  EXPECT_ERR(&b, &p, CPDL_EDTYPE, "labels");
  b.view[1].dtype = CPDL_DTYPE_INT64;
  b.view[1].ndim = 0;
  EXPECT_ERR(&b, &p, CPDL_EARG, "labels");
  b.view[1].ndim = 5;
  EXPECT_ERR(&b, &p, CPDL_EARG, "labels");
  b.view[1].ndim = 1;
  EXPECT_ERR(&b, &p, CPDL_EARG, "labels"); /* no seq dim 1 */
  b.view[1].ndim = 2;

  /* sizes that overflow */
  b.view[0].shape[0] = b.view[1].shape[0] = (int64_t)1 << 40;
  b.view[0].shape[1] = b.view[1].shape[1] = (int64_t)1 << 40;
  EXPECT_ERR(&b, &p, CPDL_EOVERFLOW, "input_ids");
  b.view[0].shape[0] = b.view[1].shape[0] = 2;
  b.view[0].shape[1] = b.view[1].shape[1] = 4;

  /* duplicated name */
  b.view[1].name = "input_ids";
  EXPECT_ERR(&b, &p, CPDL_EFIELD, "input_ids");
  b.view[1].name = "labels";

  /* cp_size < 1, uninitialized params */
  p.cp_size = 0;
  EXPECT_ERR(&b, &p, CPDL_EARG, "cp_size");
  p.cp_size = 1;
  p.struct_size = 0;
  assert_int_equal(plan_rc(&b, &p), CPDL_EARG);
  cpdl_prep_params_init(&p);

  /* metadata seq_dim out of range */
  add(&b, "meta", CPDL_DTYPE_INT64, 2, (int64_t)2, (int64_t)4);
  cpdl_metadata_field_t meta = {"meta", 2, 0};
  p.metadata = &meta;
  p.n_metadata = 1;
  EXPECT_ERR(&b, &p, CPDL_EARG, "meta");
  meta.seq_dim = 0; /* dim 0 has size 2, not S=4 */
  EXPECT_ERR(&b, &p, CPDL_EFIELD, "meta");
  meta.seq_dim = 1;
  assert_int_equal(plan_rc(&b, &p), 0);
  meta.name = "labels"; /* a standard name is not metadata */
  assert_int_equal(plan_rc(&b, &p), CPDL_EARG);
  p.n_metadata = 0;
  batch_free(&b);

  /* position_ids: mRoPE first dim must be 3; B must be B or 1 */
  add(&b, "input_ids", CPDL_DTYPE_INT64, 2, (int64_t)2, (int64_t)4);
  add(&b, "labels", CPDL_DTYPE_INT64, 2, (int64_t)2, (int64_t)4);
  add(&b, "position_ids", CPDL_DTYPE_INT64, 3, (int64_t)2, (int64_t)2, (int64_t)4);
  EXPECT_ERR(&b, &p, CPDL_EFIELD, "position_ids");
  b.view[2].shape[0] = 3;
  assert_int_equal(plan_rc(&b, &p), 0);
  b.view[2].ndim = 2;
  b.view[2].shape[0] = 3;
  b.view[2].shape[1] = 4;
  EXPECT_ERR(&b, &p, CPDL_EFIELD, "position_ids");
  b.view[2].dtype = CPDL_DTYPE_BOOL;
  b.view[2].shape[0] = 1;
  EXPECT_ERR(&b, &p, CPDL_EDTYPE, "position_ids");
  batch_free(&b);

  /* attention masks of the wrong rank or shape */
  add(&b, "input_ids", CPDL_DTYPE_INT64, 2, (int64_t)2, (int64_t)4);
  add(&b, "labels", CPDL_DTYPE_INT64, 2, (int64_t)2, (int64_t)4);
  add(&b, "attention_mask", CPDL_DTYPE_INT64, 3, (int64_t)2, (int64_t)4, (int64_t)4);
  EXPECT_ERR(&b, &p, CPDL_EARG, "attention_mask");
  b.view[2].ndim = 4;
  b.view[2].shape[1] = 2;
  b.view[2].shape[2] = b.view[2].shape[3] = 4;
  EXPECT_ERR(&b, &p, CPDL_EFIELD, "attention_mask");
  b.view[2].shape[1] = 1;
  b.view[2].shape[3] = 5;
  EXPECT_ERR(&b, &p, CPDL_EFIELD, "attention_mask");
  b.view[2].shape[3] = 4;
  assert_int_equal(plan_rc(&b, &p), 0);
  batch_free(&b);
}

static void test_execute_errors(void **state) {
  (void)state;
  batch_t b = {0};
  add(&b, "input_ids", CPDL_DTYPE_INT64, 2, (int64_t)2, (int64_t)4);
  add(&b, "labels", CPDL_DTYPE_INT64, 2, (int64_t)2, (int64_t)4);
  cpdl_prep_params_t p;
  cpdl_prep_params_init(&p);
  p.cp_size = 2;
  cpdl_prep_plan_t *plan;
  assert_int_equal(cpdl_prep_plan_create(b.view, b.n, &p, &plan), 0);
  void *blk = malloc(cpdl_prep_plan_rank_bytes(plan));
  void *const dst[] = {blk};
  int rank = 2;
  assert_int_equal(cpdl_prep_execute(plan, b.view, b.n, &rank, 1, dst, NULL), CPDL_EARG);
  assert_non_null(strstr(cpdl_last_error(), "2"));
  rank = 1;
  b.view[1].shape[1] = 5;
  assert_int_equal(cpdl_prep_execute(plan, b.view, b.n, &rank, 1, dst, NULL), CPDL_EFIELD);
  assert_non_null(strstr(cpdl_last_error(), "labels"));
  b.view[1].shape[1] = 4;
  assert_int_equal(cpdl_prep_execute(plan, b.view, 1, &rank, 1, dst, NULL), CPDL_EFIELD);
  /* inputs given in another order are matched by name */
  cpdl_tensor_t swapped[2] = {b.view[1], b.view[0]};
  assert_int_equal(cpdl_prep_execute(plan, swapped, 2, &rank, 1, dst, NULL), 0);
  assert_int_equal(cpdl_prep_execute(plan, b.view, b.n, &rank, 1, dst, NULL), 0);
  free(blk);
  cpdl_prep_plan_destroy(plan);
  batch_free(&b);
}

/* A block plan (cpdl__prep_plan_blocks, schedule=dynamic): the leading
 * per-rank inputs [cp, ...] become per-rank fields of their row's shape, the
 * rest shared; executing it copies each rank's row into its block (any
 * subset and order of ranks, any split into parts) and the shared inputs
 * whole; a per-rank input without the leading cp is refused. */
static void test_block_plan(void **state) {
  (void)state;
  enum { CP = 3, B = 8, K = 5 };
  static int64_t ids[CP][1][B];
  static int32_t cu[CP][K];
  static int32_t table[4][2];
  for (int r = 0; r < CP; r++) {
    for (int t = 0; t < B; t++)
      ids[r][0][t] = 100 * r + t;
    for (int k = 0; k < K; k++)
      cu[r][k] = 10 * r + k;
  }
  for (int g = 0; g < 4; g++)
    table[g][0] = g, table[g][1] = 2 * g;
  cpdl_tensor_t in[3] = {
      {"input_ids", CPDL_DTYPE_INT64, 3, {CP, 1, B}, ids},
      {"cu_seqlens", CPDL_DTYPE_INT32, 2, {CP, K}, cu},
      {"cp_groups", CPDL_DTYPE_INT32, 2, {4, 2}, table},
  };
  cpdl_prep_plan_t *plan = NULL;
  assert_int_equal(cpdl__prep_plan_blocks(in, 3, 2, CP, &plan), 0);
  assert_int_equal(cpdl_prep_plan_nfields(plan), 3);
  const cpdl_prep_field_t *f0 = cpdl_prep_plan_field(plan, 0), *f1 = cpdl_prep_plan_field(plan, 1),
                          *f2 = cpdl_prep_plan_field(plan, 2);
  assert_int_equal(f0->ndim, 2);
  assert_int_equal(f0->shape[0], 1);
  assert_int_equal(f0->shape[1], B);
  assert_int_equal(f0->shared, 0);
  assert_int_equal(f1->ndim, 1);
  assert_int_equal(f1->shape[0], K);
  assert_int_equal(f2->shared, 1);
  assert_int_equal(cpdl_prep_plan_seq_len(plan), CP * B);
  size_t rb = cpdl_prep_plan_rank_bytes(plan), sb = cpdl_prep_plan_shared_bytes(plan);
  unsigned char *blocks = calloc(2, rb), *shared = calloc(1, sb);
  int ranks[2] = {2, 0};
  void *dst[2] = {blocks, blocks + rb};
  for (int part = 0; part < 2; part++)
    assert_int_equal(cpdl_prep_execute_part(plan, in, 3, ranks, 2, dst, shared, part, 2), 0);
  for (int i = 0; i < 2; i++) {
    assert_memory_equal((unsigned char *)dst[i] + f0->offset, ids[ranks[i]], sizeof ids[0]);
    assert_memory_equal((unsigned char *)dst[i] + f1->offset, cu[ranks[i]], sizeof cu[0]);
  }
  assert_memory_equal(shared + f2->offset, table, sizeof table);
  free(blocks);
  free(shared);
  cpdl_prep_plan_destroy(plan);
  in[1].shape[0] = CP - 1;
  assert_int_equal(cpdl__prep_plan_blocks(in, 3, 2, CP, &plan), CPDL_EFIELD);
  assert_non_null(strstr(cpdl_last_error(), "leading dim of cp = 3"));
  assert_null(plan);
  assert_int_equal(cpdl__prep_plan_blocks(in, 3, 0, CP, &plan), CPDL_EARG);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_contract_all_modes),
      cmocka_unit_test(test_every_field_and_pad_value),
      cmocka_unit_test(test_half_pad_bits),
      cmocka_unit_test(test_half_conversion),
      cmocka_unit_test(test_4d_masks),
      cmocka_unit_test(test_position_ids),
      cmocka_unit_test(test_loss_mask_as_labels_and_packed_ids),
      cmocka_unit_test(test_subset_of_ranks),
      cmocka_unit_test(test_execute_parts),
      cmocka_unit_test(test_embeds_and_large),
      cmocka_unit_test(test_block_plan),
      cmocka_unit_test(test_thd_zigzag),
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_execute_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
