/* prep.c — batch semantics: DESIGN.md "Batch preparation — the contract", rules 1-7, plus
 * the round_robin and aux_only layouts. The plan is decided once per batch structure and holds
 * no pointer to the caller's tensors; all its sizes are overflow-checked there, so execute only
 * does arithmetic known to fit. cpdl_prep_execute() never allocates and never materializes the
 * padded batch: per rank and field it streams once over the rows, copying the in-range part of
 * the slice and filling the part past S with the field's pad value, straight into the block. */
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ALIGN 64

/* What role an input plays. Sequence roles are sharded; PASS goes through whole. */
typedef enum {
  ROLE_PASS = 0,
  ROLE_INPUT_IDS,
  ROLE_INPUTS_EMBEDS,
  ROLE_MM_TYPES,
  ROLE_PACKED,
  ROLE_PER_LAYER,
  ROLE_PADDING_MASK,
  ROLE_LABELS,
  ROLE_LOSS_MASK,
  ROLE_POSITION,
  ROLE_ATTENTION,
  ROLE_METADATA
} role_t;

typedef enum {
  SRC_COPY,   /* slice of an input, padded */
  SRC_ARANGE, /* synthesized position_ids: the padded position itself */
  SRC_MASK,   /* derived from a padding predicate (padding_mask, _packed_seq_ids) */
  SRC_WHOLE   /* shared: the whole input, untouched */
} src_kind_t;

typedef enum {
  MASK_NONE, /* no padding information: every token is real */
  MASK_FLAG, /* [B,S] flags: 2-D attention_mask or a given padding_mask */
  MASK_DIAG  /* [B,1,S,S] attention mask: its diagonal */
} mask_kind_t;

/* How one output field is produced. Rows are the dims before the seq dim (flattened);
 * pos_bytes is the size of one sequence position (dims after the seq dim × element). */
typedef struct field_spec {
  src_kind_t kind;
  int input;             /* plan input index of the source or the mask; -1 if none */
  int64_t rows;          /* output rows */
  int64_t row_div;       /* input row = output row / row_div (1, or B when expanding [1,S]) */
  size_t pos_bytes;
  size_t esize;
  cpdl_dtype_t dtype;
  bool pad_continue;     /* position_ids: last+1, last+2, ... */
  bool pad_memset;       /* every byte of pad[] is the same */
  unsigned char pad[8];  /* one element of the pad value, in the field's dtype */
  /* SRC_MASK only */
  mask_kind_t mask_kind;
  cpdl_dtype_t mask_dtype;
  bool pad_when_zero;    /* padding where the mask value is zero (else where non-zero) */
  int64_t pad_v, real_v; /* output value for padding / real tokens */
} field_spec_t;

typedef struct plan_input {
  char name[CPDL_NAME_MAX];
  cpdl_dtype_t dtype;
  int ndim;
  int64_t shape[CPDL_MAX_DIMS];
  size_t nbytes;
} plan_input_t;

struct cpdl_prep_plan {
  int n_inputs;
  plan_input_t in[CPDL_MAX_FIELDS];
  int n_fields;
  cpdl_prep_field_t fields[CPDL_MAX_FIELDS];
  field_spec_t spec[CPDL_MAX_FIELDS];
  size_t rank_bytes, shared_bytes;
  int64_t batch, seq_len, padded_len, shard_len;
  int cp_size;
  cpdl_mode_t mode;
};

/* ---- element conversion --------------------------------------------------- */

static uint16_t f32_to_f16(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof x);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t exp = (x >> 23) & 0xffu;
  uint32_t man = x & 0x7fffffu;
  if (exp == 0xff)
    return (uint16_t)(sign | 0x7c00u | (man ? 0x200u : 0));
  int32_t e = (int32_t)exp - 127 + 15;
  if (e >= 31)
    return (uint16_t)(sign | 0x7c00u);
  if (e <= 0) { /* half subnormal (or zero): value = man24 >> (14 - e) units of 2^-24 */
    if (e < -10)
      return (uint16_t)sign;
    man |= 0x800000u;
    uint32_t shift = (uint32_t)(14 - e);
    uint32_t h = man >> shift, rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1)))
      h++;
    return (uint16_t)(sign | h);
  }
  uint32_t h = ((uint32_t)e << 10) | (man >> 13), rem = man & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1)))
    h++; /* a carry into the exponent is the correct rounding, up to infinity */
  return (uint16_t)(sign | h);
}

static float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, x;
  if (exp == 0) {
    float v = ldexpf((float)man, -24);
    return sign ? -v : v;
  }
  if (exp == 31)
    x = sign | 0x7f800000u | (man << 13);
  else
    x = sign | ((exp + 112) << 23) | (man << 13);
  float f;
  memcpy(&f, &x, sizeof f);
  return f;
}

static uint16_t f32_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof x);
  if ((x & 0x7fffffffu) > 0x7f800000u)
    return (uint16_t)((x >> 16) | 0x40u); /* keep NaN a (quiet) NaN */
  x += 0x7fffu + ((x >> 16) & 1u);        /* round to nearest even */
  return (uint16_t)(x >> 16);
}

static float bf16_to_f32(uint16_t h) {
  uint32_t x = (uint32_t)h << 16;
  float f;
  memcpy(&f, &x, sizeof f);
  return f;
}

/* Integers wrap to the type's width (two's complement), as numpy's astype does. */
static void store_int(cpdl_dtype_t dt, void *p, int64_t v) {
  switch (dt) {
  case CPDL_DTYPE_BOOL: { uint8_t b = v != 0; memcpy(p, &b, 1); break; }
  case CPDL_DTYPE_UINT8: { uint8_t b = (uint8_t)(uint64_t)v; memcpy(p, &b, 1); break; }
  case CPDL_DTYPE_INT32: { int32_t w = (int32_t)(uint32_t)(uint64_t)v; memcpy(p, &w, 4); break; }
  case CPDL_DTYPE_INT64: memcpy(p, &v, 8); break;
  case CPDL_DTYPE_FLOAT16: { uint16_t h = f32_to_f16((float)v); memcpy(p, &h, 2); break; }
  case CPDL_DTYPE_BFLOAT16: { uint16_t h = f32_to_bf16((float)v); memcpy(p, &h, 2); break; }
  case CPDL_DTYPE_FLOAT32: { float f = (float)v; memcpy(p, &f, 4); break; }
  case CPDL_DTYPE_FLOAT64: { double d = (double)v; memcpy(p, &d, 8); break; }
  default: break;
  }
}

static void store_double(cpdl_dtype_t dt, void *p, double v) {
  switch (dt) {
  case CPDL_DTYPE_FLOAT16: { uint16_t h = f32_to_f16((float)v); memcpy(p, &h, 2); break; }
  case CPDL_DTYPE_BFLOAT16: { uint16_t h = f32_to_bf16((float)v); memcpy(p, &h, 2); break; }
  case CPDL_DTYPE_FLOAT32: { float f = (float)v; memcpy(p, &f, 4); break; }
  case CPDL_DTYPE_FLOAT64: memcpy(p, &v, 8); break;
  default: {
    /* Out-of-range doubles must not reach a C conversion (undefined): clamp first. */
    int64_t i = isnan(v) ? 0 : v >= 0x1p63 ? INT64_MAX : v < -0x1p63 ? INT64_MIN : (int64_t)v;
    store_int(dt, p, i);
  }
  }
}

static int64_t load_int(cpdl_dtype_t dt, const void *p) {
  switch (dt) {
  case CPDL_DTYPE_BOOL:
  case CPDL_DTYPE_UINT8: { uint8_t b; memcpy(&b, p, 1); return b; }
  case CPDL_DTYPE_INT32: { int32_t w; memcpy(&w, p, 4); return w; }
  case CPDL_DTYPE_INT64: { int64_t v; memcpy(&v, p, 8); return v; }
  default: return 0;
  }
}

static double load_double(cpdl_dtype_t dt, const void *p) {
  switch (dt) {
  case CPDL_DTYPE_FLOAT16: { uint16_t h; memcpy(&h, p, 2); return f16_to_f32(h); }
  case CPDL_DTYPE_BFLOAT16: { uint16_t h; memcpy(&h, p, 2); return bf16_to_f32(h); }
  case CPDL_DTYPE_FLOAT32: { float f; memcpy(&f, p, 4); return f; }
  case CPDL_DTYPE_FLOAT64: { double d; memcpy(&d, p, 8); return d; }
  default: return (double)load_int(dt, p);
  }
}

static bool dtype_is_float(cpdl_dtype_t dt) {
  return dt == CPDL_DTYPE_FLOAT16 || dt == CPDL_DTYPE_BFLOAT16 || dt == CPDL_DTYPE_FLOAT32 ||
         dt == CPDL_DTYPE_FLOAT64;
}

/* Is the element zero? Float -0 counts as zero (for half types: both bit patterns). */
static bool elem_is_zero(cpdl_dtype_t dt, const unsigned char *p) {
  switch (dt) {
  case CPDL_DTYPE_FLOAT16:
  case CPDL_DTYPE_BFLOAT16: { uint16_t h; memcpy(&h, p, 2); return (h & 0x7fffu) == 0; }
  case CPDL_DTYPE_FLOAT32: { float f; memcpy(&f, p, 4); return f == 0.0f; }
  case CPDL_DTYPE_FLOAT64: { double d; memcpy(&d, p, 8); return d == 0.0; }
  default: return load_int(dt, p) == 0;
  }
}

/* ---- the hot loops ------------------------------------------------------- */

/* The build is -O2, where gcc 12 vectorizes only loops with a known trip count; the
 * element loops below (mask derivation, arange, fills) run at memory speed only when
 * vectorized, so they ask for it. */
#if defined(__GNUC__) && !defined(__clang__)
#define HOT __attribute__((optimize("tree-vectorize", "vect-cost-model=dynamic")))
#else
#define HOT
#endif

/* Fill n elements of esize bytes with one pattern element. */
HOT static void fill_pattern(unsigned char *out, size_t n, const field_spec_t *fs) {
  if (n == 0)
    return;
  if (fs->pad_memset) {
    memset(out, fs->pad[0], n * fs->esize);
    return;
  }
  switch (fs->esize) {
  case 2: { uint16_t v; memcpy(&v, fs->pad, 2); for (size_t k = 0; k < n; k++) memcpy(out + 2 * k, &v, 2); break; }
  case 4: { uint32_t v; memcpy(&v, fs->pad, 4); for (size_t k = 0; k < n; k++) memcpy(out + 4 * k, &v, 4); break; }
  case 8: { uint64_t v; memcpy(&v, fs->pad, 8); for (size_t k = 0; k < n; k++) memcpy(out + 8 * k, &v, 8); break; }
  default: for (size_t k = 0; k < n; k++) memcpy(out + k * fs->esize, fs->pad, fs->esize); break;
  }
}

/* out[k] = pad(src[k]) ? pad_v : real_v for a contiguous run of flags. Typed loops so the
 * compiler vectorizes the common int64/int32/uint8 masks into bool or int64 outputs. */
#define MASK_LOOP(LOAD_T, ZERO, OUT_T)                                                     \
  do {                                                                                     \
    const OUT_T pv = (OUT_T)fs->pad_v, rv = (OUT_T)fs->real_v;                             \
    for (size_t k = 0; k < n; k++) {                                                       \
      LOAD_T v;                                                                            \
      memcpy(&v, src + k * sizeof(LOAD_T), sizeof(LOAD_T));                                \
      OUT_T o = ((ZERO) == pwz) ? pv : rv;                                                 \
      memcpy(out + k * sizeof(OUT_T), &o, sizeof(OUT_T));                                  \
    }                                                                                      \
  } while (0)

#define MASK_BY_OUT(LOAD_T, ZERO)                                                          \
  do {                                                                                     \
    if (fs->esize == 1)                                                                    \
      MASK_LOOP(LOAD_T, ZERO, uint8_t);                                                    \
    else if (fs->esize == 4)                                                               \
      MASK_LOOP(LOAD_T, ZERO, int32_t);                                                    \
    else                                                                                   \
      MASK_LOOP(LOAD_T, ZERO, int64_t);                                                    \
  } while (0)

HOT static void mask_flags(const unsigned char *src, size_t n, unsigned char *out, const field_spec_t *fs) {
  const bool pwz = fs->pad_when_zero;
  switch (fs->mask_dtype) {
  case CPDL_DTYPE_BOOL:
  case CPDL_DTYPE_UINT8: MASK_BY_OUT(uint8_t, v == 0); break;
  case CPDL_DTYPE_INT32: MASK_BY_OUT(int32_t, v == 0); break;
  case CPDL_DTYPE_INT64: MASK_BY_OUT(int64_t, v == 0); break;
  case CPDL_DTYPE_FLOAT16:
  case CPDL_DTYPE_BFLOAT16: MASK_BY_OUT(uint16_t, (v & 0x7fffu) == 0); break;
  case CPDL_DTYPE_FLOAT32: MASK_BY_OUT(float, v == 0.0f); break;
  case CPDL_DTYPE_FLOAT64: MASK_BY_OUT(double, v == 0.0); break;
  default: break;
  }
}

/* Positions [p0, p0+n) of output row `row` from a field spec; out points at position p0. */
HOT static void emit_run(const field_spec_t *fs, const unsigned char *src, int64_t seq_len,
                     int64_t row, int64_t p0, int64_t n, unsigned char *out) {
  int64_t real_end = p0 + n < seq_len ? p0 + n : seq_len; /* in-range part: [p0, real_end) */
  int64_t n_real = real_end > p0 ? real_end - p0 : 0;
  int64_t pad_start = p0 + n_real;
  int64_t n_pad = n - n_real;
  unsigned char *pad_out = out + (size_t)n_real * fs->pos_bytes;

  switch (fs->kind) {
  case SRC_COPY: {
    const unsigned char *in_row = src + (size_t)(row / fs->row_div) * (size_t)seq_len * fs->pos_bytes;
    if (n_real)
      memcpy(out, in_row + (size_t)p0 * fs->pos_bytes, (size_t)n_real * fs->pos_bytes);
    if (!n_pad)
      return;
    if (!fs->pad_continue) {
      fill_pattern(pad_out, (size_t)n_pad * (fs->pos_bytes / fs->esize), fs);
      return;
    }
    /* position_ids: continue from the row's last value. */
    const unsigned char *last = in_row + (size_t)(seq_len - 1) * fs->esize;
    int64_t step0 = pad_start - seq_len + 1;
    if (dtype_is_float(fs->dtype)) {
      double base = load_double(fs->dtype, last);
      for (int64_t k = 0; k < n_pad; k++)
        store_double(fs->dtype, pad_out + (size_t)k * fs->esize, base + (double)(step0 + k));
    } else if (fs->dtype == CPDL_DTYPE_INT64) {
      int64_t base = load_int(fs->dtype, last);
      for (int64_t k = 0; k < n_pad; k++) {
        int64_t v = (int64_t)((uint64_t)base + (uint64_t)(step0 + k));
        memcpy(pad_out + (size_t)k * 8, &v, 8);
      }
    } else {
      int64_t base = load_int(fs->dtype, last);
      for (int64_t k = 0; k < n_pad; k++)
        store_int(fs->dtype, pad_out + (size_t)k * fs->esize,
                  (int64_t)((uint64_t)base + (uint64_t)(step0 + k)));
    }
    return;
  }
  case SRC_ARANGE:
    if (fs->dtype == CPDL_DTYPE_INT64) {
      for (int64_t k = 0; k < n; k++) {
        int64_t v = p0 + k;
        memcpy(out + (size_t)k * 8, &v, 8);
      }
    } else {
      for (int64_t k = 0; k < n; k++)
        store_int(fs->dtype, out + (size_t)k * fs->esize, p0 + k);
    }
    return;
  case SRC_MASK:
    if (n_real) {
      if (fs->mask_kind == MASK_NONE) {
        /* every token is real: a fill with real_v */
        field_spec_t real = *fs;
        store_int(fs->dtype, real.pad, fs->real_v);
        real.pad_memset = fs->esize == 1 || fs->real_v == 0 || fs->real_v == -1;
        fill_pattern(out, (size_t)n_real, &real);
      } else if (fs->mask_kind == MASK_FLAG) {
        size_t msize = cpdl_dtype_size(fs->mask_dtype);
        mask_flags(src + ((size_t)row * (size_t)seq_len + (size_t)p0) * msize, (size_t)n_real, out, fs);
      } else {
        /* diagonal [row, 0, i, i] of a [B,1,S,S] mask: a strided gather */
        size_t msize = cpdl_dtype_size(fs->mask_dtype);
        size_t s = (size_t)seq_len;
        const unsigned char *diag = src + (size_t)row * s * s * msize;
        for (int64_t k = 0; k < n_real; k++) {
          size_t i = (size_t)(p0 + k);
          bool pad = elem_is_zero(fs->mask_dtype, diag + (i * s + i) * msize) == fs->pad_when_zero;
          store_int(fs->dtype, out + (size_t)k * fs->esize, pad ? fs->pad_v : fs->real_v);
        }
      }
    }
    fill_pattern(pad_out, (size_t)n_pad, fs);
    return;
  case SRC_WHOLE:
    return;
  }
}

/* ---- plan ---------------------------------------------------------------- */

void cpdl_prep_params_init(cpdl_prep_params_t *params) {
  if (!params)
    return;
  memset(params, 0, sizeof *params);
  params->struct_size = sizeof *params;
  params->cp_size = 1;
  params->tp_size = 1;
  params->mode = CPDL_MODE_CONTIGUOUS;
  params->padding_token_id = 0;
}

static const struct {
  const char *name;
  role_t role;
} role_names[] = {
    {"input_ids", ROLE_INPUT_IDS},       {"inputs_embeds", ROLE_INPUTS_EMBEDS},
    {"mm_token_type_ids", ROLE_MM_TYPES}, {"_packed_seq_ids", ROLE_PACKED},
    {"per_layer_inputs", ROLE_PER_LAYER}, {"padding_mask", ROLE_PADDING_MASK},
    {"labels", ROLE_LABELS},             {"loss_mask", ROLE_LOSS_MASK},
    {"position_ids", ROLE_POSITION},     {"attention_mask", ROLE_ATTENTION},
};

static role_t standard_role(const char *name) {
  for (size_t i = 0; i < sizeof role_names / sizeof role_names[0]; i++)
    if (strcmp(name, role_names[i].name) == 0)
      return role_names[i].role;
  return ROLE_PASS;
}

static int shape_text(const plan_input_t *t, char *buf, size_t size) {
  int at = snprintf(buf, size, "[");
  for (int d = 0; d < t->ndim && at > 0 && (size_t)at < size; d++)
    at += snprintf(buf + at, size - (size_t)at, "%s%lld", d ? "," : "", (long long)t->shape[d]);
  if (at > 0 && (size_t)at < size)
    at += snprintf(buf + at, size - (size_t)at, "]");
  return at;
}

/* Product of shape[from..to) times esize, overflow-checked. */
static bool dims_bytes(const int64_t *shape, int from, int to, size_t esize, size_t *out) {
  size_t acc = esize;
  for (int d = from; d < to; d++)
    if (!cpdl__mul_size(acc, (size_t)shape[d], &acc))
      return false;
  *out = acc;
  return true;
}

static bool dims_count(const int64_t *shape, int from, int to, int64_t *out) {
  int64_t acc = 1;
  for (int d = from; d < to; d++)
    if (__builtin_mul_overflow(acc, shape[d], &acc))
      return false;
  *out = acc;
  return true;
}

/* Checks that a sequence input agrees with the primary on B (dim b_dim) and S (seq_dim). */
static int check_seq_sizes(const plan_input_t *t, int seq_dim, int b_dim, bool b_may_be_one,
                           int64_t batch, int64_t seq_len) {
  char shp[96];
  if (seq_dim < 0 || seq_dim >= t->ndim) {
    shape_text(t, shp, sizeof shp);
    return cpdl__error(CPDL_EARG, "field '%s' of shape %s has no sequence dimension %d (it has %d dims)",
                       t->name, shp, seq_dim, t->ndim);
  }
  if (t->shape[seq_dim] != seq_len) {
    shape_text(t, shp, sizeof shp);
    return cpdl__error(CPDL_EFIELD,
                       "field '%s' of shape %s has sequence length %lld on dim %d, but the primary "
                       "field has S=%lld",
                       t->name, shp, (long long)t->shape[seq_dim], seq_dim, (long long)seq_len);
  }
  if (b_dim >= 0 && b_dim != seq_dim && t->shape[b_dim] != batch &&
      !(b_may_be_one && t->shape[b_dim] == 1)) {
    shape_text(t, shp, sizeof shp);
    return cpdl__error(CPDL_EFIELD,
                       "field '%s' of shape %s has batch size %lld on dim %d, but the primary "
                       "field has B=%lld",
                       t->name, shp, (long long)t->shape[b_dim], b_dim, (long long)batch);
  }
  return 0;
}

/* Append one output field; computes its per-rank (or whole) shape and bytes. */
static int add_field(cpdl_prep_plan_t *plan, const char *name, cpdl_dtype_t dtype, int ndim,
                     const int64_t *shape, int seq_dim, int shared, const field_spec_t *spec) {
  if (plan->n_fields >= CPDL_MAX_FIELDS)
    return cpdl__error(CPDL_EARG, "batch has more than %d output fields (at '%s')", CPDL_MAX_FIELDS, name);
  cpdl_prep_field_t *f = &plan->fields[plan->n_fields];
  memset(f, 0, sizeof *f);
  snprintf(f->name, sizeof f->name, "%s", name);
  f->dtype = dtype;
  f->ndim = ndim;
  memcpy(f->shape, shape, sizeof f->shape);
  if (seq_dim >= 0)
    f->shape[seq_dim] = plan->shard_len;
  f->seq_dim = seq_dim;
  f->shared = shared;
  if (!dims_bytes(f->shape, 0, ndim, cpdl_dtype_size(dtype), &f->nbytes))
    return cpdl__error(CPDL_EOVERFLOW, "field '%s': its byte size does not fit in size_t", name);
  size_t *cursor = shared ? &plan->shared_bytes : &plan->rank_bytes;
  size_t end;
  f->offset = *cursor;
  if (!cpdl__add_size(f->offset, f->nbytes, &end) || end > SIZE_MAX - ALIGN)
    return cpdl__error(CPDL_EOVERFLOW, "field '%s': the %s block's size does not fit in size_t",
                       name, shared ? "shared" : "rank");
  *cursor = CPDL__ALIGN_UP(end, ALIGN);

  field_spec_t *fs = &plan->spec[plan->n_fields];
  *fs = *spec;
  fs->dtype = dtype;
  fs->esize = cpdl_dtype_size(dtype);
  if (seq_dim >= 0) {
    if (!dims_count(f->shape, 0, seq_dim, &fs->rows) ||
        !dims_bytes(f->shape, seq_dim + 1, ndim, fs->esize, &fs->pos_bytes))
      return cpdl__error(CPDL_EOVERFLOW, "field '%s': its size does not fit", name);
  }
  if (fs->row_div < 1)
    fs->row_div = 1;
  fs->pad_memset = true;
  for (size_t k = 1; k < fs->esize; k++)
    if (fs->pad[k] != fs->pad[0])
      fs->pad_memset = false;
  plan->n_fields++;
  return 0;
}

static void set_pad_int(field_spec_t *fs, cpdl_dtype_t dt, int64_t v) { store_int(dt, fs->pad, v); }

/* A sequence field copied from input `in` with seq dim `seq_dim`, padded with `pad`. */
static int add_seq_copy(cpdl_prep_plan_t *plan, const char *out_name, int in, int seq_dim,
                        const unsigned char pad[8]) {
  const plan_input_t *t = &plan->in[in];
  field_spec_t fs = {.kind = SRC_COPY, .input = in, .row_div = 1};
  memcpy(fs.pad, pad, sizeof fs.pad);
  return add_field(plan, out_name, t->dtype, t->ndim, t->shape, seq_dim, 0, &fs);
}

static int plan_build(cpdl_prep_plan_t *plan, const cpdl_tensor_t *inputs, int n_inputs,
                      const cpdl_prep_params_t *params) {
  if (!params || params->struct_size < sizeof(cpdl_prep_params_t))
    return cpdl__error(CPDL_EARG, "prep params missing or not initialized (call cpdl_prep_params_init)");
  if (params->cp_size < 1 || params->tp_size < 1)
    return cpdl__error(CPDL_EARG, "cp_size (%d) and tp_size (%d) must be >= 1", params->cp_size,
                       params->tp_size);
  if ((unsigned)params->mode > CPDL_MODE_AUX_ONLY)
    return cpdl__error(CPDL_EARG, "unknown preparation mode %d", (int)params->mode);
  if (n_inputs < 0 || n_inputs > CPDL_MAX_FIELDS || (n_inputs > 0 && !inputs))
    return cpdl__error(CPDL_EARG, "batch has %d input fields (expected 1..%d)", n_inputs, CPDL_MAX_FIELDS);
  if (params->n_metadata < 0 || params->n_metadata > CPDL_MAX_FIELDS ||
      (params->n_metadata > 0 && !params->metadata))
    return cpdl__error(CPDL_EARG, "n_metadata is %d (expected 0..%d with a metadata array)",
                       params->n_metadata, CPDL_MAX_FIELDS);
  for (int m = 0; m < params->n_metadata; m++) {
    const char *mn = params->metadata[m].name;
    if (!mn || !*mn || strlen(mn) >= CPDL_NAME_MAX)
      return cpdl__error(CPDL_EARG, "metadata field %d has no name or a name longer than %d bytes",
                         m, CPDL_NAME_MAX - 1);
    if (standard_role(mn) != ROLE_PASS)
      return cpdl__error(CPDL_EARG, "metadata field '%s' has the name of a standard field; "
                         "standard fields need not be named", mn);
    for (int k = 0; k < m; k++)
      if (strcmp(params->metadata[k].name, mn) == 0)
        return cpdl__error(CPDL_EARG, "metadata field '%s' is named twice", mn);
  }

  memset(plan, 0, sizeof *plan);
  plan->cp_size = params->cp_size;
  plan->mode = params->mode;

  /* Inputs: copy their descriptions, classify them. */
  int by_role[ROLE_METADATA] = {0};
  for (int r = 0; r < ROLE_METADATA; r++)
    by_role[r] = -1;
  int meta_in[CPDL_MAX_FIELDS];
  for (int m = 0; m < CPDL_MAX_FIELDS; m++)
    meta_in[m] = -1;
  role_t roles[CPDL_MAX_FIELDS];

  plan->n_inputs = n_inputs;
  for (int i = 0; i < n_inputs; i++) {
    const cpdl_tensor_t *t = &inputs[i];
    plan_input_t *p = &plan->in[i];
    if (!t->name || !*t->name || strlen(t->name) >= CPDL_NAME_MAX)
      return cpdl__error(CPDL_EARG, "input field %d has no name or a name longer than %d bytes",
                         i, CPDL_NAME_MAX - 1);
    for (int k = 0; k < i; k++)
      if (strcmp(plan->in[k].name, t->name) == 0)
        return cpdl__error(CPDL_EFIELD, "input field '%s' appears twice in the batch", t->name);
    snprintf(p->name, sizeof p->name, "%s", t->name);
    if ((unsigned)t->dtype >= CPDL_DTYPE_COUNT)
      return cpdl__error(CPDL_EDTYPE, "field '%s' has unsupported dtype %d", t->name, (int)t->dtype);
    if (t->ndim < 1 || t->ndim > CPDL_MAX_DIMS)
      return cpdl__error(CPDL_EARG, "field '%s' has %d dims (supported: 1..%d)", t->name, t->ndim,
                         CPDL_MAX_DIMS);
    p->dtype = t->dtype;
    p->ndim = t->ndim;
    for (int d = 0; d < t->ndim; d++) {
      if (t->shape[d] < 0)
        return cpdl__error(CPDL_EARG, "field '%s' has a negative size %lld on dim %d", t->name,
                           (long long)t->shape[d], d);
      p->shape[d] = t->shape[d];
    }
    if (!dims_bytes(p->shape, 0, p->ndim, cpdl_dtype_size(p->dtype), &p->nbytes))
      return cpdl__error(CPDL_EOVERFLOW, "field '%s': its byte size does not fit in size_t", t->name);

    roles[i] = standard_role(t->name);
    if (roles[i] != ROLE_PASS) {
      by_role[roles[i]] = i;
      continue;
    }
    for (int m = 0; m < params->n_metadata; m++)
      if (strcmp(params->metadata[m].name, t->name) == 0) {
        roles[i] = ROLE_METADATA;
        meta_in[m] = i;
      }
  }

  /* Rule 2: exactly one primary. */
  int ids = by_role[ROLE_INPUT_IDS], embeds = by_role[ROLE_INPUTS_EMBEDS];
  if ((ids < 0) == (embeds < 0))
    return cpdl__error(CPDL_EFIELD, ids < 0 ? "batch has neither 'input_ids' nor 'inputs_embeds'; exactly one is required"
                                            : "batch has both 'input_ids' and 'inputs_embeds'; exactly one is allowed");
  int primary = ids >= 0 ? ids : embeds;
  const plan_input_t *pt = &plan->in[primary];
  if (pt->ndim < 2)
    return cpdl__error(CPDL_EARG, "primary field '%s' has %d dims; it must be [B,S,...]", pt->name, pt->ndim);
  const int64_t batch = pt->shape[0], seq_len = pt->shape[1];
  if (batch < 1 || seq_len < 1)
    return cpdl__error(CPDL_EFIELD, "primary field '%s' is empty (B=%lld, S=%lld)", pt->name,
                       (long long)batch, (long long)seq_len);

  /* Rule 6/7: padded length and shard length. */
  int64_t multiple = 2 * (int64_t)params->cp_size, padded;
  if (__builtin_add_overflow(seq_len, multiple - 1, &padded))
    return cpdl__error(CPDL_EOVERFLOW, "S=%lld padded to a multiple of %lld does not fit",
                       (long long)seq_len, (long long)multiple);
  padded -= padded % multiple;
  plan->batch = batch;
  plan->seq_len = seq_len;
  plan->padded_len = padded;
  plan->shard_len = padded / params->cp_size;

  /* Every sequence field agrees with the primary on B and S. */
  int rc;
  for (int i = 0; i < n_inputs; i++) {
    const plan_input_t *t = &plan->in[i];
    char shp[96];
    switch (roles[i]) {
    case ROLE_PASS:
      break;
    case ROLE_POSITION:
      if (t->dtype == CPDL_DTYPE_BOOL)
        return cpdl__error(CPDL_EDTYPE, "field 'position_ids' has dtype bool; positions must be numeric");
      if (t->ndim == 3) {
        if (t->shape[0] != 3) {
          shape_text(t, shp, sizeof shp);
          return cpdl__error(CPDL_EFIELD, "3-D (mRoPE) 'position_ids' of shape %s must be [3,B,S]", shp);
        }
        if ((rc = check_seq_sizes(t, 2, 1, true, batch, seq_len)) < 0)
          return rc;
      } else if (t->ndim == 2) {
        if ((rc = check_seq_sizes(t, 1, 0, true, batch, seq_len)) < 0)
          return rc;
      } else {
        shape_text(t, shp, sizeof shp);
        return cpdl__error(CPDL_EARG, "'position_ids' of shape %s must be [B,S], [1,S] or [3,B,S]", shp);
      }
      break;
    case ROLE_ATTENTION:
      if (by_role[ROLE_PADDING_MASK] >= 0)
        break; /* dropped unused */
      if (t->ndim == 2) {
        if ((rc = check_seq_sizes(t, 1, 0, false, batch, seq_len)) < 0)
          return rc;
      } else if (t->ndim == 4) {
        if ((rc = check_seq_sizes(t, 2, 0, false, batch, seq_len)) < 0 ||
            (rc = check_seq_sizes(t, 3, 0, false, batch, seq_len)) < 0)
          return rc;
        if (t->shape[1] != 1) {
          shape_text(t, shp, sizeof shp);
          return cpdl__error(CPDL_EFIELD, "4-D 'attention_mask' of shape %s must be [B,1,S,S]", shp);
        }
      } else {
        shape_text(t, shp, sizeof shp);
        return cpdl__error(CPDL_EARG, "'attention_mask' of shape %s must be [B,S] or [B,1,S,S]", shp);
      }
      break;
    case ROLE_PADDING_MASK:
      if (t->ndim != 2) {
        shape_text(t, shp, sizeof shp);
        return cpdl__error(CPDL_EARG, "'padding_mask' of shape %s must be [B,S]", shp);
      }
      if ((rc = check_seq_sizes(t, 1, 0, false, batch, seq_len)) < 0)
        return rc;
      break;
    case ROLE_METADATA: {
      int sd = 0;
      for (int m = 0; m < params->n_metadata; m++)
        if (meta_in[m] == i)
          sd = params->metadata[m].seq_dim;
      if ((rc = check_seq_sizes(t, sd, sd == 0 ? -1 : 0, false, batch, seq_len)) < 0)
        return rc;
      break;
    }
    default:
      if ((rc = check_seq_sizes(t, 1, 0, false, batch, seq_len)) < 0)
        return rc;
      break;
    }
  }

  /* Rule 4: labels, or the loss mask standing in for them. */
  int labels = by_role[ROLE_LABELS], loss_mask = by_role[ROLE_LOSS_MASK];
  if (labels < 0 && loss_mask < 0)
    return cpdl__error(CPDL_EFIELD, "batch has neither 'labels' nor 'loss_mask'; one of them is required");

  /* Rule 1: where the padding information comes from. */
  int pad_mask = by_role[ROLE_PADDING_MASK], attn = by_role[ROLE_ATTENTION];
  field_spec_t mask = {.kind = SRC_MASK, .input = -1, .mask_kind = MASK_NONE, .row_div = 1};
  if (pad_mask >= 0) {
    mask.input = pad_mask;
    mask.mask_kind = MASK_FLAG;
    mask.pad_when_zero = false;
  } else if (attn >= 0) {
    mask.input = attn;
    mask.mask_kind = plan->in[attn].ndim == 2 ? MASK_FLAG : MASK_DIAG;
    /* 2-D: padding where attention is 0. 4-D bool: padding where the diagonal is false;
     * any other 4-D dtype is additive: padding where the diagonal is non-zero. */
    mask.pad_when_zero = plan->in[attn].ndim == 2 || plan->in[attn].dtype == CPDL_DTYPE_BOOL;
  }
  if (mask.input >= 0)
    mask.mask_dtype = plan->in[mask.input].dtype;

  unsigned char pad[8];
  const bool aux = params->mode == CPDL_MODE_AUX_ONLY;
  int64_t bs_shape[CPDL_MAX_DIMS] = {batch, seq_len, 0, 0};

  /* primary */
  memset(pad, 0, sizeof pad);
  if (ids >= 0)
    store_int(pt->dtype, pad, params->padding_token_id);
  if (aux) {
    field_spec_t whole = {.kind = SRC_WHOLE, .input = primary, .row_div = 1};
    rc = add_field(plan, pt->name, pt->dtype, pt->ndim, pt->shape, -1, 1, &whole);
  } else {
    rc = add_seq_copy(plan, pt->name, primary, 1, pad);
  }
  if (rc < 0)
    return rc;

  /* labels (or loss_mask as labels), then loss_mask */
  memset(pad, 0, sizeof pad);
  int labels_src = labels >= 0 ? labels : loss_mask;
  store_int(plan->in[labels_src].dtype, pad, -100);
  if ((rc = add_seq_copy(plan, "labels", labels_src, 1, pad)) < 0)
    return rc;
  if (labels >= 0 && loss_mask >= 0) {
    memset(pad, 0, sizeof pad);
    if ((rc = add_seq_copy(plan, "loss_mask", loss_mask, 1, pad)) < 0)
      return rc;
  }

  /* Rule 3: position_ids */
  int pos = by_role[ROLE_POSITION];
  if (pos >= 0) {
    const plan_input_t *t = &plan->in[pos];
    int sd = t->ndim - 1, bd = t->ndim - 2;
    int64_t shape[CPDL_MAX_DIMS];
    memcpy(shape, t->shape, sizeof shape);
    field_spec_t fs = {.kind = SRC_COPY, .input = pos, .pad_continue = true, .row_div = 1};
    if (t->shape[bd] != batch) { /* [1,S] or [3,1,S] expanded to B rows */
      shape[bd] = batch;
      fs.row_div = batch;
    }
    if ((rc = add_field(plan, "position_ids", t->dtype, t->ndim, shape, sd, 0, &fs)) < 0)
      return rc;
  } else if (params->cp_size > 1 || params->tp_size > 1) {
    field_spec_t fs = {.kind = SRC_ARANGE, .input = -1, .row_div = 1};
    if ((rc = add_field(plan, "position_ids", CPDL_DTYPE_INT64, 2, bs_shape, 1, 0, &fs)) < 0)
      return rc;
  }

  /* padding_mask: given (copied, padded with true) or derived */
  if (pad_mask >= 0) {
    memset(pad, 0, sizeof pad);
    store_int(plan->in[pad_mask].dtype, pad, 1);
    if ((rc = add_seq_copy(plan, "padding_mask", pad_mask, 1, pad)) < 0)
      return rc;
  } else if (attn >= 0) {
    field_spec_t fs = mask;
    fs.pad_v = 1;
    fs.real_v = 0;
    set_pad_int(&fs, CPDL_DTYPE_BOOL, 1);
    if ((rc = add_field(plan, "padding_mask", CPDL_DTYPE_BOOL, 2, bs_shape, 1, 0, &fs)) < 0)
      return rc;
  }

  /* Rule 5: _packed_seq_ids */
  int packed = by_role[ROLE_PACKED];
  memset(pad, 0, sizeof pad);
  if (packed >= 0) {
    rc = add_seq_copy(plan, "_packed_seq_ids", packed, 1, pad);
  } else {
    field_spec_t fs = mask;
    fs.pad_v = 0;
    fs.real_v = 1;
    set_pad_int(&fs, CPDL_DTYPE_INT64, 0);
    rc = add_field(plan, "_packed_seq_ids", CPDL_DTYPE_INT64, 2, bs_shape, 1, 0, &fs);
  }
  if (rc < 0)
    return rc;

  memset(pad, 0, sizeof pad);
  if (by_role[ROLE_MM_TYPES] >= 0 &&
      (rc = add_seq_copy(plan, "mm_token_type_ids", by_role[ROLE_MM_TYPES], 1, pad)) < 0)
    return rc;
  if (by_role[ROLE_PER_LAYER] >= 0 &&
      (rc = add_seq_copy(plan, "per_layer_inputs", by_role[ROLE_PER_LAYER], 1, pad)) < 0)
    return rc;

  /* Metadata fields the caller named, in its order; a named field absent from this batch is
   * simply not produced (metadata is optional per batch). */
  for (int m = 0; m < params->n_metadata; m++) {
    if (meta_in[m] < 0)
      continue;
    memset(pad, 0, sizeof pad);
    store_double(plan->in[meta_in[m]].dtype, pad, params->metadata[m].pad_value);
    if ((rc = add_seq_copy(plan, plan->in[meta_in[m]].name, meta_in[m], params->metadata[m].seq_dim, pad)) < 0)
      return rc;
  }

  /* Everything else passes through whole, in input order. */
  for (int i = 0; i < n_inputs; i++) {
    if (roles[i] != ROLE_PASS)
      continue;
    const plan_input_t *t = &plan->in[i];
    field_spec_t whole = {.kind = SRC_WHOLE, .input = i, .row_div = 1};
    if ((rc = add_field(plan, t->name, t->dtype, t->ndim, t->shape, -1, 1, &whole)) < 0)
      return rc;
  }
  return 0;
}

int cpdl_prep_plan_create(const cpdl_tensor_t *inputs, int n_inputs, const cpdl_prep_params_t *params,
                          cpdl_prep_plan_t **out) {
  if (!out)
    return cpdl__error(CPDL_EARG, "cpdl_prep_plan_create: out is NULL");
  *out = NULL;
  cpdl_prep_plan_t *plan = malloc(sizeof *plan);
  if (!plan)
    return cpdl__error(-ENOMEM, "cpdl_prep_plan_create: out of memory for a %zu-byte plan", sizeof *plan);
  int rc = plan_build(plan, inputs, n_inputs, params);
  if (rc < 0) {
    free(plan);
    return rc;
  }
  *out = plan;
  return 0;
}

void cpdl_prep_plan_destroy(cpdl_prep_plan_t *plan) { free(plan); }

int cpdl_prep_plan_nfields(const cpdl_prep_plan_t *plan) { return plan ? plan->n_fields : 0; }

const cpdl_prep_field_t *cpdl_prep_plan_field(const cpdl_prep_plan_t *plan, int i) {
  return plan && i >= 0 && i < plan->n_fields ? &plan->fields[i] : NULL;
}

size_t cpdl_prep_plan_rank_bytes(const cpdl_prep_plan_t *plan) { return plan ? plan->rank_bytes : 0; }
size_t cpdl_prep_plan_shared_bytes(const cpdl_prep_plan_t *plan) { return plan ? plan->shared_bytes : 0; }
int64_t cpdl_prep_plan_seq_len(const cpdl_prep_plan_t *plan) { return plan ? plan->seq_len : 0; }
int64_t cpdl_prep_plan_padded_len(const cpdl_prep_plan_t *plan) { return plan ? plan->padded_len : 0; }

/* ---- execute ------------------------------------------------------------- */

int cpdl_prep_execute(const cpdl_prep_plan_t *plan, const cpdl_tensor_t *inputs, int n_inputs,
                      const int *cp_ranks, int n_ranks, void *const *rank_dst, void *shared_dst) {
  return cpdl_prep_execute_part(plan, inputs, n_inputs, cp_ranks, n_ranks, rank_dst, shared_dst,
                                0, 1);
}

/* Work items, in a fixed order: each shared field, then (rank, field) for
 * every rank and unshared field. Part p of n does the items i with
 * i % n == p, so n threads share a step whatever its ranks and fields. */
int cpdl_prep_execute_part(const cpdl_prep_plan_t *plan, const cpdl_tensor_t *inputs,
                           int n_inputs, const int *cp_ranks, int n_ranks, void *const *rank_dst,
                           void *shared_dst, int part, int n_parts) {
  if (n_parts < 1 || part < 0 || part >= n_parts)
    return cpdl__error(CPDL_EARG, "cpdl_prep_execute_part: part %d of %d", part, n_parts);
  if (!plan)
    return cpdl__error(CPDL_EARG, "cpdl_prep_execute: plan is NULL");
  if (n_inputs != plan->n_inputs || (n_inputs > 0 && !inputs))
    return cpdl__error(CPDL_EFIELD, "cpdl_prep_execute: batch has %d fields, the plan was made for %d",
                       n_inputs, plan->n_inputs);
  if (n_ranks < 0 || (n_ranks > 0 && (!cp_ranks || !rank_dst)))
    return cpdl__error(CPDL_EARG, "cpdl_prep_execute: %d ranks without rank or destination arrays", n_ranks);

  /* Match the batch to the plan's inputs by name; shapes and dtypes must be the same. */
  const unsigned char *data[CPDL_MAX_FIELDS];
  for (int i = 0; i < plan->n_inputs; i++) {
    const plan_input_t *p = &plan->in[i];
    const cpdl_tensor_t *t = NULL;
    for (int k = 0; k < n_inputs && !t; k++)
      if (inputs[k].name && strcmp(inputs[k].name, p->name) == 0)
        t = &inputs[k];
    if (!t)
      return cpdl__error(CPDL_EFIELD, "cpdl_prep_execute: field '%s' of the plan is not in the batch", p->name);
    bool same = t->dtype == p->dtype && t->ndim == p->ndim;
    for (int d = 0; same && d < p->ndim; d++)
      same = t->shape[d] == p->shape[d];
    if (!same) {
      char shp[96];
      shape_text(p, shp, sizeof shp);
      return cpdl__error(CPDL_EFIELD,
                         "cpdl_prep_execute: field '%s' differs from the plan's (%s %s); make a new plan",
                         p->name, cpdl_dtype_name(p->dtype), shp);
    }
    if (!t->data && p->nbytes)
      return cpdl__error(CPDL_EARG, "cpdl_prep_execute: field '%s' has no data", p->name);
    data[i] = t->data;
  }
  for (int r = 0; r < n_ranks; r++) {
    if (cp_ranks[r] < 0 || cp_ranks[r] >= plan->cp_size)
      return cpdl__error(CPDL_EARG, "cpdl_prep_execute: CP rank %d is outside [0, %d)", cp_ranks[r],
                         plan->cp_size);
    if (!rank_dst[r] && plan->rank_bytes)
      return cpdl__error(CPDL_EARG, "cpdl_prep_execute: no destination for CP rank %d", cp_ranks[r]);
  }

  /* Shared block: the aux_only primary and pass-through fields, whole. */
  int item = 0;
  for (int f = 0; f < plan->n_fields; f++) {
    const cpdl_prep_field_t *fd = &plan->fields[f];
    if (!fd->shared)
      continue;
    if (shared_dst && fd->nbytes && item % n_parts == part)
      memcpy((unsigned char *)shared_dst + fd->offset, data[plan->spec[f].input], fd->nbytes);
    item++;
  }

  /* Rank blocks. A shard is one or two runs of padded positions [start, start+len). */
  const int64_t L = plan->shard_len;
  for (int r = 0; r < n_ranks; r++) {
    const int64_t cp_rank = cp_ranks[r];
    int64_t run_start[2], run_len[2];
    int n_runs;
    if (plan->mode == CPDL_MODE_ROUND_ROBIN) {
      const int64_t chunk = plan->padded_len / (2 * (int64_t)plan->cp_size);
      run_start[0] = cp_rank * chunk;
      run_start[1] = (2 * (int64_t)plan->cp_size - 1 - cp_rank) * chunk;
      run_len[0] = run_len[1] = chunk;
      n_runs = 2;
    } else {
      run_start[0] = cp_rank * L;
      run_len[0] = L;
      n_runs = 1;
    }
    unsigned char *block = rank_dst[r];
    for (int f = 0; f < plan->n_fields; f++) {
      const cpdl_prep_field_t *fd = &plan->fields[f];
      const field_spec_t *fs = &plan->spec[f];
      if (fd->shared)
        continue;
      if (item++ % n_parts != part)
        continue;
      const unsigned char *src = fs->input >= 0 ? data[fs->input] : NULL;
      unsigned char *out = block + fd->offset;
      const size_t row_bytes = (size_t)L * fs->pos_bytes;
      for (int64_t row = 0; row < fs->rows; row++) {
        unsigned char *row_out = out + (size_t)row * row_bytes;
        for (int k = 0; k < n_runs; k++) {
          emit_run(fs, src, plan->seq_len, row, run_start[k], run_len[k], row_out);
          row_out += (size_t)run_len[k] * fs->pos_bytes;
        }
      }
    }
  }
  return 0;
}
