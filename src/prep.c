/* prep.c — the preparation plan: docs/design.md "Batch preparation — the contract", rules
 * 1-7, plus the round_robin and aux_only layouts. The plan is decided once per batch
 * structure, one function per rule, and holds no pointer to the caller's tensors; all its
 * sizes are overflow-checked here, so the executor (prep_exec.c) only does arithmetic known
 * to fit. */
#include "prep_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ALIGN 64 /* every field's offset in its block */
/* The name of vocabulary field CPDL_FIELD_<id> (cpdl/fields.h). */
#define FIELD(id) cpdl_field_name(CPDL_FIELD_##id)

void cpdl_prep_params_init(cpdl_prep_params_t *params) {
  if (!params) {
    (void)cpdl__error(CPDL_EARG, "cpdl_prep_params_init: params is NULL");
    return;
  }
  memset(params, 0, sizeof *params);
  params->struct_size = sizeof *params;
  params->cp_size = 1;
  params->tp_size = 1;
  params->mode = CPDL_MODE_CONTIGUOUS;
  params->padding_token_id = 0;
}

/* The contract's role of each field of the vocabulary (cpdl/fields.h); the
 * per-document fields and every unknown name pass through (ROLE_PASS). */
static const role_t contract_role[CPDL_FIELD_COUNT] = {
    [CPDL_FIELD_INPUT_IDS] = ROLE_INPUT_IDS,       [CPDL_FIELD_INPUTS_EMBEDS] = ROLE_INPUTS_EMBEDS,
    [CPDL_FIELD_MM_TOKEN_TYPE_IDS] = ROLE_MM_TYPES, [CPDL_FIELD_PACKED_SEQ_IDS] = ROLE_PACKED,
    [CPDL_FIELD_PER_LAYER_INPUTS] = ROLE_PER_LAYER, [CPDL_FIELD_PADDING_MASK] = ROLE_PADDING_MASK,
    [CPDL_FIELD_LABELS] = ROLE_LABELS,             [CPDL_FIELD_LOSS_MASK] = ROLE_LOSS_MASK,
    [CPDL_FIELD_POSITION_IDS] = ROLE_POSITION,     [CPDL_FIELD_ATTENTION_MASK] = ROLE_ATTENTION,
};

static role_t standard_role(const char *name) {
  for (int i = 0; i < CPDL_FIELD_COUNT; i++) /* a lookup that leaves no message */
    if (strcmp(name, cpdl_field_name((cpdl_field_id_t)i)) == 0)
      return contract_role[i];
  return ROLE_PASS;
}

int cpdl__prep_shape_text(const plan_input_t *t, char *buf, size_t size) {
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
    cpdl__prep_shape_text(t, shp, sizeof shp);
    return cpdl__error(CPDL_EARG, "field '%s' of shape %s has no sequence dimension %d (it has %d dims)",
                       t->name, shp, seq_dim, t->ndim);
  }
  if (t->shape[seq_dim] != seq_len) {
    cpdl__prep_shape_text(t, shp, sizeof shp);
    return cpdl__error(CPDL_EFIELD,
                       "field '%s' of shape %s has sequence length %lld on dim %d, but the primary "
                       "field has S=%lld",
                       t->name, shp, (long long)t->shape[seq_dim], seq_dim, (long long)seq_len);
  }
  if (b_dim >= 0 && b_dim != seq_dim && t->shape[b_dim] != batch &&
      !(b_may_be_one && t->shape[b_dim] == 1)) {
    cpdl__prep_shape_text(t, shp, sizeof shp);
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


/* ---- plan_build: one function per rule ------------------------------------ */

/* What plan_build learns about the inputs and hands from rule to rule. */
typedef struct build {
  const cpdl_prep_params_t *params;
  role_t roles[CPDL_MAX_FIELDS];   /* role of each input */
  int by_role[ROLE_METADATA];      /* input index of each standard role, or -1 */
  int meta_in[CPDL_MAX_FIELDS];    /* input index of each named metadata field, or -1 */
  int primary;                     /* input index of input_ids or inputs_embeds */
  field_spec_t mask;               /* rule 1: where padding information comes from */
  int64_t bs_shape[CPDL_MAX_DIMS]; /* [B, S] of synthesized fields */
} build_t;

static int check_params(const cpdl_prep_params_t *params, int n_inputs, const cpdl_tensor_t *inputs) {
  if (!params || params->struct_size < sizeof(cpdl_prep_params_t))
    return cpdl__error(CPDL_EARG, "prep params missing or not initialized (call cpdl_prep_params_init)");
  if (params->cp_size < 1 || params->tp_size < 1)
    return cpdl__error(CPDL_EARG, "cp_size (%d) and tp_size (%d) must be >= 1", params->cp_size,
                       params->tp_size);
  if ((unsigned)params->mode > CPDL_MODE_THD)
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
  return 0;
}

/* Copy one input's description into the plan, checked. */
static int read_input(const cpdl_tensor_t *t, int i, plan_input_t *p) {
  if (!t->name || !*t->name || strlen(t->name) >= CPDL_NAME_MAX)
    return cpdl__error(CPDL_EARG, "input field %d has no name or a name longer than %d bytes",
                       i, CPDL_NAME_MAX - 1);
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
  return 0;
}

/* Inputs: copy their descriptions and classify them by name. */
static int read_inputs(cpdl_prep_plan_t *plan, build_t *b, const cpdl_tensor_t *inputs, int n_inputs) {
  for (int r = 0; r < ROLE_METADATA; r++)
    b->by_role[r] = -1;
  for (int m = 0; m < CPDL_MAX_FIELDS; m++)
    b->meta_in[m] = -1;
  plan->n_inputs = n_inputs;
  for (int i = 0; i < n_inputs; i++) {
    int rc = read_input(&inputs[i], i, &plan->in[i]);
    if (rc < 0)
      return rc;
    for (int k = 0; k < i; k++)
      if (strcmp(plan->in[k].name, plan->in[i].name) == 0)
        return cpdl__error(CPDL_EFIELD, "input field '%s' appears twice in the batch", plan->in[i].name);
    b->roles[i] = standard_role(plan->in[i].name);
    if (b->roles[i] != ROLE_PASS) {
      b->by_role[b->roles[i]] = i;
      continue;
    }
    for (int m = 0; m < b->params->n_metadata; m++)
      if (strcmp(b->params->metadata[m].name, plan->in[i].name) == 0) {
        b->roles[i] = ROLE_METADATA;
        b->meta_in[m] = i;
      }
  }
  return 0;
}

/* Rule 2 (exactly one primary), then rules 6/7: padded length and shard length. */
static int rule_sizes(cpdl_prep_plan_t *plan, build_t *b) {
  int ids = b->by_role[ROLE_INPUT_IDS], embeds = b->by_role[ROLE_INPUTS_EMBEDS];
  if ((ids < 0) == (embeds < 0))
    return cpdl__error(CPDL_EFIELD, ids < 0 ? "batch has neither 'input_ids' nor 'inputs_embeds'; exactly one is required"
                                            : "batch has both 'input_ids' and 'inputs_embeds'; exactly one is allowed");
  b->primary = ids >= 0 ? ids : embeds;
  const plan_input_t *pt = &plan->in[b->primary];
  if (pt->ndim < 2)
    return cpdl__error(CPDL_EARG, "primary field '%s' has %d dims; it must be [B,S,...]", pt->name, pt->ndim);
  const int64_t batch = pt->shape[0], seq_len = pt->shape[1];
  if (batch < 1 || seq_len < 1)
    return cpdl__error(CPDL_EFIELD, "primary field '%s' is empty (B=%lld, S=%lld)", pt->name,
                       (long long)batch, (long long)seq_len);
  int64_t multiple = 2 * (int64_t)b->params->cp_size, padded;
  if (b->params->mode == CPDL_MODE_THD && (batch != 1 || seq_len % multiple != 0))
    return cpdl__error(CPDL_EFIELD,
                       "mode thd takes one packed row whose documents are each padded to a "
                       "multiple of 2*cp = %lld, but '%s' is [B=%lld, S=%lld]; it needs B = 1 and "
                       "S a multiple of %lld",
                       (long long)multiple, pt->name, (long long)batch, (long long)seq_len,
                       (long long)multiple);
  if (__builtin_add_overflow(seq_len, multiple - 1, &padded))
    return cpdl__error(CPDL_EOVERFLOW, "S=%lld padded to a multiple of %lld does not fit",
                       (long long)seq_len, (long long)multiple);
  padded -= padded % multiple;
  plan->batch = batch;
  plan->seq_len = seq_len;
  plan->padded_len = padded;
  plan->shard_len = padded / b->params->cp_size;
  b->bs_shape[0] = batch;
  b->bs_shape[1] = seq_len;
  return 0;
}

/* position_ids: [B,S], [1,S] or [3,B,S] (mRoPE). */
static int check_position_input(const plan_input_t *t, int64_t batch, int64_t seq_len) {
  char shp[96];
  if (t->dtype == CPDL_DTYPE_BOOL)
    return cpdl__error(CPDL_EDTYPE, "field 'position_ids' has dtype bool; positions must be numeric");
  if (t->ndim == 3) {
    if (t->shape[0] != 3) {
      cpdl__prep_shape_text(t, shp, sizeof shp);
      return cpdl__error(CPDL_EFIELD, "3-D (mRoPE) 'position_ids' of shape %s must be [3,B,S]", shp);
    }
    return check_seq_sizes(t, 2, 1, true, batch, seq_len);
  }
  if (t->ndim == 2)
    return check_seq_sizes(t, 1, 0, true, batch, seq_len);
  cpdl__prep_shape_text(t, shp, sizeof shp);
  return cpdl__error(CPDL_EARG, "'position_ids' of shape %s must be [B,S], [1,S] or [3,B,S]", shp);
}

/* attention_mask: [B,S] or [B,1,S,S]. */
static int check_attention_input(const plan_input_t *t, int64_t batch, int64_t seq_len) {
  char shp[96];
  int rc;
  if (t->ndim == 2)
    return check_seq_sizes(t, 1, 0, false, batch, seq_len);
  if (t->ndim == 4) {
    if ((rc = check_seq_sizes(t, 2, 0, false, batch, seq_len)) < 0 ||
        (rc = check_seq_sizes(t, 3, 0, false, batch, seq_len)) < 0)
      return rc;
    if (t->shape[1] == 1)
      return 0;
    cpdl__prep_shape_text(t, shp, sizeof shp);
    return cpdl__error(CPDL_EFIELD, "4-D 'attention_mask' of shape %s must be [B,1,S,S]", shp);
  }
  cpdl__prep_shape_text(t, shp, sizeof shp);
  return cpdl__error(CPDL_EARG, "'attention_mask' of shape %s must be [B,S] or [B,1,S,S]", shp);
}

/* Every sequence input agrees with the primary on B and S. */
static int check_inputs(const cpdl_prep_plan_t *plan, const build_t *b) {
  const int64_t batch = plan->batch, seq_len = plan->seq_len;
  for (int i = 0; i < plan->n_inputs; i++) {
    const plan_input_t *t = &plan->in[i];
    int rc = 0;
    switch (b->roles[i]) {
    case ROLE_PASS:
      break;
    case ROLE_POSITION:
      rc = check_position_input(t, batch, seq_len);
      break;
    case ROLE_ATTENTION:
      if (b->by_role[ROLE_PADDING_MASK] < 0) /* else dropped unused */
        rc = check_attention_input(t, batch, seq_len);
      break;
    case ROLE_PADDING_MASK:
      if (t->ndim != 2) {
        char shp[96];
        cpdl__prep_shape_text(t, shp, sizeof shp);
        return cpdl__error(CPDL_EARG, "'padding_mask' of shape %s must be [B,S]", shp);
      }
      rc = check_seq_sizes(t, 1, 0, false, batch, seq_len);
      break;
    case ROLE_METADATA: {
      int sd = 0;
      for (int m = 0; m < b->params->n_metadata; m++)
        if (b->meta_in[m] == i)
          sd = b->params->metadata[m].seq_dim;
      rc = check_seq_sizes(t, sd, sd == 0 ? -1 : 0, false, batch, seq_len);
      break;
    }
    default:
      rc = check_seq_sizes(t, 1, 0, false, batch, seq_len);
      break;
    }
    if (rc < 0)
      return rc;
  }
  return 0;
}

/* Rule 1: where the padding information comes from. */
static void rule_mask_source(const cpdl_prep_plan_t *plan, build_t *b) {
  int pad_mask = b->by_role[ROLE_PADDING_MASK], attn = b->by_role[ROLE_ATTENTION];
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
  b->mask = mask;
}

/* The primary: sharded and padded with padding_token_id, or whole and shared (aux_only). */
static int rule_primary(cpdl_prep_plan_t *plan, const build_t *b) {
  const plan_input_t *pt = &plan->in[b->primary];
  unsigned char pad[8] = {0};
  if (b->primary == b->by_role[ROLE_INPUT_IDS])
    store_int(pt->dtype, pad, b->params->padding_token_id);
  if (b->params->mode == CPDL_MODE_AUX_ONLY) {
    field_spec_t whole = {.kind = SRC_WHOLE, .input = b->primary, .row_div = 1};
    return add_field(plan, pt->name, pt->dtype, pt->ndim, pt->shape, -1, 1, &whole);
  }
  return add_seq_copy(plan, pt->name, b->primary, 1, pad);
}

/* Rule 4: labels (or the loss mask standing in for them) padded with -100, then loss_mask. */
static int rule_labels(cpdl_prep_plan_t *plan, const build_t *b) {
  int labels = b->by_role[ROLE_LABELS], loss_mask = b->by_role[ROLE_LOSS_MASK], rc;
  if (labels < 0 && loss_mask < 0)
    return cpdl__error(CPDL_EFIELD, "batch has neither 'labels' nor 'loss_mask'; one of them is required");
  unsigned char pad[8] = {0};
  int labels_src = labels >= 0 ? labels : loss_mask;
  store_int(plan->in[labels_src].dtype, pad, -100);
  if ((rc = add_seq_copy(plan, FIELD(LABELS), labels_src, 1, pad)) < 0)
    return rc;
  if (labels >= 0 && loss_mask >= 0) {
    memset(pad, 0, sizeof pad);
    return add_seq_copy(plan, FIELD(LOSS_MASK), loss_mask, 1, pad);
  }
  return 0;
}

/* Rule 3: position_ids continue past S; synthesized (0..padded-1) for cp or tp > 1. */
static int rule_positions(cpdl_prep_plan_t *plan, const build_t *b) {
  int pos = b->by_role[ROLE_POSITION];
  if (pos >= 0) {
    const plan_input_t *t = &plan->in[pos];
    int sd = t->ndim - 1, bd = t->ndim - 2;
    int64_t shape[CPDL_MAX_DIMS];
    memcpy(shape, t->shape, sizeof shape);
    field_spec_t fs = {.kind = SRC_COPY, .input = pos, .pad_continue = true, .row_div = 1};
    if (t->shape[bd] != plan->batch) { /* [1,S] or [3,1,S] expanded to B rows */
      shape[bd] = plan->batch;
      fs.row_div = plan->batch;
    }
    return add_field(plan, FIELD(POSITION_IDS), t->dtype, t->ndim, shape, sd, 0, &fs);
  }
  if (b->params->cp_size > 1 || b->params->tp_size > 1) {
    field_spec_t fs = {.kind = SRC_ARANGE, .input = -1, .row_div = 1};
    return add_field(plan, FIELD(POSITION_IDS), CPDL_DTYPE_INT64, 2, b->bs_shape, 1, 0, &fs);
  }
  return 0;
}

/* padding_mask: given (copied, padded with true) or derived from an attention mask. */
static int rule_padding_mask(cpdl_prep_plan_t *plan, const build_t *b) {
  int pad_mask = b->by_role[ROLE_PADDING_MASK];
  if (pad_mask >= 0) {
    unsigned char pad[8] = {0};
    store_int(plan->in[pad_mask].dtype, pad, 1);
    return add_seq_copy(plan, FIELD(PADDING_MASK), pad_mask, 1, pad);
  }
  if (b->by_role[ROLE_ATTENTION] < 0)
    return 0;
  field_spec_t fs = b->mask;
  fs.pad_v = 1;
  fs.real_v = 0;
  set_pad_int(&fs, CPDL_DTYPE_BOOL, 1);
  return add_field(plan, FIELD(PADDING_MASK), CPDL_DTYPE_BOOL, 2, b->bs_shape, 1, 0, &fs);
}

/* Rule 5: _packed_seq_ids given (padded with 0) or derived: 1 on real tokens, 0 on padding
 * (not derived in thd mode, where cu_seqlens states the documents). */
static int rule_packed_seq_ids(cpdl_prep_plan_t *plan, const build_t *b) {
  int packed = b->by_role[ROLE_PACKED];
  unsigned char pad[8] = {0};
  if (packed >= 0)
    return add_seq_copy(plan, FIELD(PACKED_SEQ_IDS), packed, 1, pad);
  if (b->params->mode == CPDL_MODE_THD)
    return 0; /* cu_seqlens states the documents */
  field_spec_t fs = b->mask;
  fs.pad_v = 0;
  fs.real_v = 1;
  set_pad_int(&fs, CPDL_DTYPE_INT64, 0);
  return add_field(plan, FIELD(PACKED_SEQ_IDS), CPDL_DTYPE_INT64, 2, b->bs_shape, 1, 0, &fs);
}

/* Multimodal fields (padded with 0), then the metadata fields the caller named, in its order;
 * a named field absent from this batch is simply not produced (metadata is optional). */
static int rule_metadata(cpdl_prep_plan_t *plan, const build_t *b) {
  unsigned char pad[8] = {0};
  int rc;
  if (b->by_role[ROLE_MM_TYPES] >= 0 &&
      (rc = add_seq_copy(plan, FIELD(MM_TOKEN_TYPE_IDS), b->by_role[ROLE_MM_TYPES], 1, pad)) < 0)
    return rc;
  if (b->by_role[ROLE_PER_LAYER] >= 0 &&
      (rc = add_seq_copy(plan, FIELD(PER_LAYER_INPUTS), b->by_role[ROLE_PER_LAYER], 1, pad)) < 0)
    return rc;
  for (int m = 0; m < b->params->n_metadata; m++) {
    int in = b->meta_in[m];
    if (in < 0)
      continue;
    memset(pad, 0, sizeof pad);
    store_double(plan->in[in].dtype, pad, b->params->metadata[m].pad_value);
    if ((rc = add_seq_copy(plan, plan->in[in].name, in, b->params->metadata[m].seq_dim, pad)) < 0)
      return rc;
  }
  return 0;
}

/* thd: the document boundaries to partition by, cu_seqlens_padded (int32 or int64, [n+1]).
 * It also passes through whole, like cu_seqlens and max_seqlen. Its values are checked
 * per batch by the executor. */
static int rule_thd_bounds(cpdl_prep_plan_t *plan, const build_t *b) {
  plan->thd_bounds = -1;
  if (b->params->mode != CPDL_MODE_THD)
    return 0;
  for (int i = 0; i < plan->n_inputs; i++)
    if (strcmp(plan->in[i].name, FIELD(CU_SEQLENS_PADDED)) == 0)
      plan->thd_bounds = i;
  if (plan->thd_bounds < 0)
    return cpdl__error(CPDL_EFIELD, "mode thd partitions each document by 'cu_seqlens_padded', "
                       "which the batch lacks; add it (int32 [n+1], each document padded to a "
                       "multiple of 2*cp, ending at S)");
  const plan_input_t *t = &plan->in[plan->thd_bounds];
  if (t->ndim != 1 || t->shape[0] < 2 ||
      (t->dtype != CPDL_DTYPE_INT32 && t->dtype != CPDL_DTYPE_INT64)) {
    char shp[96];
    cpdl__prep_shape_text(t, shp, sizeof shp);
    return cpdl__error(CPDL_EFIELD, "'cu_seqlens_padded' is %s %s; mode thd needs int32 or int64 "
                       "of shape [n+1], n >= 1", cpdl_dtype_name(t->dtype), shp);
  }
  return 0;
}

/* Everything else passes through whole, in input order, into the shared block. */
static int rule_pass_through(cpdl_prep_plan_t *plan, const build_t *b) {
  for (int i = 0; i < plan->n_inputs; i++) {
    if (b->roles[i] != ROLE_PASS)
      continue;
    const plan_input_t *t = &plan->in[i];
    field_spec_t whole = {.kind = SRC_WHOLE, .input = i, .row_div = 1};
    int rc = add_field(plan, t->name, t->dtype, t->ndim, t->shape, -1, 1, &whole);
    if (rc < 0)
      return rc;
  }
  return 0;
}

static int plan_build(cpdl_prep_plan_t *plan, const cpdl_tensor_t *inputs, int n_inputs,
                      const cpdl_prep_params_t *params) {
  int rc = check_params(params, n_inputs, inputs);
  if (rc < 0)
    return rc;
  memset(plan, 0, sizeof *plan);
  plan->cp_size = params->cp_size;
  plan->mode = params->mode;
  build_t b = {.params = params};
  if ((rc = read_inputs(plan, &b, inputs, n_inputs)) < 0 || (rc = rule_sizes(plan, &b)) < 0 ||
      (rc = check_inputs(plan, &b)) < 0 || (rc = rule_thd_bounds(plan, &b)) < 0)
    return rc;
  rule_mask_source(plan, &b);
  /* Output fields, in the contract's order. */
  if ((rc = rule_primary(plan, &b)) < 0 || (rc = rule_labels(plan, &b)) < 0 ||
      (rc = rule_positions(plan, &b)) < 0 || (rc = rule_padding_mask(plan, &b)) < 0 ||
      (rc = rule_packed_seq_ids(plan, &b)) < 0 || (rc = rule_metadata(plan, &b)) < 0 ||
      (rc = rule_pass_through(plan, &b)) < 0)
    return rc;
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

int cpdl__prep_plan_blocks(const cpdl_tensor_t *inputs, int n_inputs, int n_rank_inputs,
                           int cp_size, cpdl_prep_plan_t **out) {
  if (!out)
    return cpdl__error(CPDL_EARG, "cpdl__prep_plan_blocks: out is NULL");
  *out = NULL;
  if (cp_size < 1 || n_inputs < 1 || n_inputs > CPDL_MAX_FIELDS || !inputs || n_rank_inputs < 1 ||
      n_rank_inputs > n_inputs)
    return cpdl__error(CPDL_EARG, "cpdl__prep_plan_blocks: %d inputs, %d of them per rank, cp %d",
                       n_inputs, n_rank_inputs, cp_size);
  cpdl_prep_plan_t *plan = calloc(1, sizeof *plan);
  if (!plan)
    return cpdl__error(-ENOMEM, "cpdl__prep_plan_blocks: out of memory");
  plan->cp_size = cp_size;
  plan->mode = CPDL_MODE_CONTIGUOUS; /* no sharding rule applies: rows are copied */
  plan->thd_bounds = -1;
  plan->rank_inputs = n_rank_inputs;
  plan->n_inputs = n_inputs;
  plan->batch = 1;
  int rc = 0;
  for (int i = 0; i < n_inputs && !rc; i++) {
    if ((rc = read_input(&inputs[i], i, &plan->in[i])) < 0)
      break;
    const plan_input_t *t = &plan->in[i];
    for (int k = 0; k < i && !rc; k++)
      if (strcmp(plan->in[k].name, t->name) == 0)
        rc = cpdl__error(CPDL_EFIELD, "input field '%s' appears twice in the batch", t->name);
    if (rc)
      break;
    if (i < n_rank_inputs) {
      if (t->ndim < 2 || t->shape[0] != cp_size) {
        char shp[96];
        cpdl__prep_shape_text(t, shp, sizeof shp);
        rc = cpdl__error(CPDL_EFIELD, "per-rank field '%s' is %s; it needs a leading dim of cp = %d",
                         t->name, shp, cp_size);
        break;
      }
      if (i == 0) { /* the first per-rank field's last dim is the block's length */
        plan->shard_len = plan->padded_len = t->shape[t->ndim - 1];
        plan->seq_len = plan->shard_len * cp_size;
      }
      int64_t row_shape[CPDL_MAX_DIMS] = {0};
      memcpy(row_shape, t->shape + 1, (size_t)(t->ndim - 1) * sizeof row_shape[0]);
      field_spec_t copy = {.kind = SRC_COPY, .input = i, .row_div = 1};
      rc = add_field(plan, t->name, t->dtype, t->ndim - 1, row_shape, -1, 0, &copy);
    } else {
      field_spec_t whole = {.kind = SRC_WHOLE, .input = i, .row_div = 1};
      rc = add_field(plan, t->name, t->dtype, t->ndim, t->shape, -1, 1, &whole);
    }
  }
  if (rc < 0) {
    free(plan);
    return rc;
  }
  *out = plan;
  return 0;
}

void cpdl_prep_plan_destroy(cpdl_prep_plan_t *plan) { free(plan); }

/* Counts and sizes are never error codes (cpdl.h "Conventions"): a NULL plan
 * counts 0 and leaves a message. */
static bool plan_given(const cpdl_prep_plan_t *plan, const char *fn) {
  if (!plan)
    (void)cpdl__error(CPDL_EARG, "%s: the plan is NULL", fn);
  return plan != NULL;
}

int cpdl_prep_plan_nfields(const cpdl_prep_plan_t *plan) {
  return plan_given(plan, "cpdl_prep_plan_nfields") ? plan->n_fields : 0;
}

const cpdl_prep_field_t *cpdl_prep_plan_field(const cpdl_prep_plan_t *plan, int i) {
  if (!plan_given(plan, "cpdl_prep_plan_field"))
    return NULL;
  if (i < 0 || i >= plan->n_fields) {
    (void)cpdl__error(CPDL_EARG, "cpdl_prep_plan_field: field %d is outside 0..%d", i,
                      plan->n_fields - 1);
    return NULL;
  }
  return &plan->fields[i];
}

size_t cpdl_prep_plan_rank_bytes(const cpdl_prep_plan_t *plan) {
  return plan_given(plan, "cpdl_prep_plan_rank_bytes") ? plan->rank_bytes : 0;
}
size_t cpdl_prep_plan_shared_bytes(const cpdl_prep_plan_t *plan) {
  return plan_given(plan, "cpdl_prep_plan_shared_bytes") ? plan->shared_bytes : 0;
}
int64_t cpdl_prep_plan_seq_len(const cpdl_prep_plan_t *plan) {
  return plan_given(plan, "cpdl_prep_plan_seq_len") ? plan->seq_len : 0;
}
int64_t cpdl_prep_plan_padded_len(const cpdl_prep_plan_t *plan) {
  return plan_given(plan, "cpdl_prep_plan_padded_len") ? plan->padded_len : 0;
}

