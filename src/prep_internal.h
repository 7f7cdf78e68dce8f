/* prep_internal.h — what the preparation plan (prep.c) hands its executor (prep_exec.c):
 * the plan's structure, one field_spec_t per output field, and the element loads and stores
 * both use. Private to prep*.c; inline so the executor's loops keep them in registers. */
#ifndef CPDL_PREP_INTERNAL_H
#define CPDL_PREP_INTERNAL_H

#include "base.h"

#include <math.h>
#include <string.h>

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
  SRC_ARANGE, /* synthesized position_ids: the padded position (thd: within its document) */
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
  int thd_bounds; /* thd: input index of cu_seqlens_padded, the boundaries to partition by */
  int rank_inputs; /* a block plan (cpdl__prep_plan_blocks): its leading per-rank inputs; else 0 */
};

/* "[a,b,c]" for messages; returns the length written. */
int cpdl__prep_shape_text(const plan_input_t *t, char *buf, size_t size);

/* ---- element loads and stores (half types: dtype.c) ------------------------ */

/* Integers wrap to the type's width (two's complement), as numpy's astype does. */
static inline void store_int(cpdl_dtype_t dt, void *p, int64_t v) {
  switch (dt) {
  case CPDL_DTYPE_BOOL: { uint8_t b = v != 0; memcpy(p, &b, 1); break; }
  case CPDL_DTYPE_UINT8: { uint8_t b = (uint8_t)(uint64_t)v; memcpy(p, &b, 1); break; }
  case CPDL_DTYPE_INT32: { int32_t w = (int32_t)(uint32_t)(uint64_t)v; memcpy(p, &w, 4); break; }
  case CPDL_DTYPE_INT64: memcpy(p, &v, 8); break;
  case CPDL_DTYPE_FLOAT16: { uint16_t h = cpdl__dtype_f32_to_f16((float)v); memcpy(p, &h, 2); break; }
  case CPDL_DTYPE_BFLOAT16: { uint16_t h = cpdl__dtype_f32_to_bf16((float)v); memcpy(p, &h, 2); break; }
  case CPDL_DTYPE_FLOAT32: { float f = (float)v; memcpy(p, &f, 4); break; }
  case CPDL_DTYPE_FLOAT64: { double d = (double)v; memcpy(p, &d, 8); break; }
  default: break;
  }
}

static inline void store_double(cpdl_dtype_t dt, void *p, double v) {
  switch (dt) {
  case CPDL_DTYPE_FLOAT16: { uint16_t h = cpdl__dtype_f32_to_f16((float)v); memcpy(p, &h, 2); break; }
  case CPDL_DTYPE_BFLOAT16: { uint16_t h = cpdl__dtype_f32_to_bf16((float)v); memcpy(p, &h, 2); break; }
  case CPDL_DTYPE_FLOAT32: { float f = (float)v; memcpy(p, &f, 4); break; }
  case CPDL_DTYPE_FLOAT64: memcpy(p, &v, 8); break;
  default: {
    /* Out-of-range doubles must not reach a C conversion (undefined): clamp first. */
    int64_t i = isnan(v) ? 0 : v >= 0x1p63 ? INT64_MAX : v < -0x1p63 ? INT64_MIN : (int64_t)v;
    store_int(dt, p, i);
  }
  }
}

static inline int64_t load_int(cpdl_dtype_t dt, const void *p) {
  switch (dt) {
  case CPDL_DTYPE_BOOL:
  case CPDL_DTYPE_UINT8: { uint8_t b; memcpy(&b, p, 1); return b; }
  case CPDL_DTYPE_INT32: { int32_t w; memcpy(&w, p, 4); return w; }
  case CPDL_DTYPE_INT64: { int64_t v; memcpy(&v, p, 8); return v; }
  default: return 0;
  }
}

static inline double load_double(cpdl_dtype_t dt, const void *p) {
  switch (dt) {
  case CPDL_DTYPE_FLOAT16: { uint16_t h; memcpy(&h, p, 2); return cpdl__dtype_f16_to_f32(h); }
  case CPDL_DTYPE_BFLOAT16: { uint16_t h; memcpy(&h, p, 2); return cpdl__dtype_bf16_to_f32(h); }
  case CPDL_DTYPE_FLOAT32: { float f; memcpy(&f, p, 4); return f; }
  case CPDL_DTYPE_FLOAT64: { double d; memcpy(&d, p, 8); return d; }
  default: return (double)load_int(dt, p);
  }
}

static inline bool dtype_is_float(cpdl_dtype_t dt) {
  return dt == CPDL_DTYPE_FLOAT16 || dt == CPDL_DTYPE_BFLOAT16 || dt == CPDL_DTYPE_FLOAT32 ||
         dt == CPDL_DTYPE_FLOAT64;
}

/* Is the element zero? Float -0 counts as zero (for half types: both bit patterns). */
static inline bool elem_is_zero(cpdl_dtype_t dt, const unsigned char *p) {
  switch (dt) {
  case CPDL_DTYPE_FLOAT16:
  case CPDL_DTYPE_BFLOAT16: { uint16_t h; memcpy(&h, p, 2); return (h & 0x7fffu) == 0; }
  case CPDL_DTYPE_FLOAT32: { float f; memcpy(&f, p, 4); return f == 0.0f; }
  case CPDL_DTYPE_FLOAT64: { double d; memcpy(&d, p, 8); return d == 0.0; }
  default: return load_int(dt, p) == 0;
  }
}

#endif
