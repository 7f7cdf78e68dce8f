/* prep_exec.c — the executor of a preparation plan (prep.c): per rank and field it streams
 * once over the rows, copying the in-range part of the slice and filling the part past S
 * with the field's pad value, straight into the block. It never allocates and never
 * materializes the padded batch; every size it multiplies was overflow-checked by the plan,
 * so it only does arithmetic known to fit. */
#include "prep_internal.h"

#include <stdio.h>
#include <stdlib.h>

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

/* position_ids past S: continue from the row's last value (last+1, last+2, ...). */
HOT static void emit_continue(const field_spec_t *fs, const unsigned char *in_row, int64_t seq_len,
                              int64_t pad_start, int64_t n_pad, unsigned char *pad_out) {
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
}

/* The in-range part [p0, p0+n_real) of a derived mask field. */
HOT static void emit_mask(const field_spec_t *fs, const unsigned char *src, int64_t seq_len,
                          int64_t row, int64_t p0, int64_t n_real, unsigned char *out) {
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

/* Positions [p0, p0+n) of output row `row` from a field spec; out points at position p0. */
HOT static void emit_run(const field_spec_t *fs, const unsigned char *src, int64_t seq_len,
                         int64_t row, int64_t p0, int64_t n, unsigned char *out) {
  int64_t real_end = p0 + n < seq_len ? p0 + n : seq_len; /* in-range part: [p0, real_end) */
  int64_t n_real = real_end > p0 ? real_end - p0 : 0;
  int64_t n_pad = n - n_real;
  unsigned char *pad_out = out + (size_t)n_real * fs->pos_bytes;

  switch (fs->kind) {
  case SRC_COPY: {
    const unsigned char *in_row = src + (size_t)(row / fs->row_div) * (size_t)seq_len * fs->pos_bytes;
    if (n_real)
      memcpy(out, in_row + (size_t)p0 * fs->pos_bytes, (size_t)n_real * fs->pos_bytes);
    if (!n_pad)
      return;
    if (fs->pad_continue)
      emit_continue(fs, in_row, seq_len, p0 + n_real, n_pad, pad_out);
    else
      fill_pattern(pad_out, (size_t)n_pad * (fs->pos_bytes / fs->esize), fs);
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
    if (n_real)
      emit_mask(fs, src, seq_len, row, p0, n_real, out);
    fill_pattern(pad_out, (size_t)n_pad, fs);
    return;
  case SRC_WHOLE:
    return;
  }
}

/* ---- execute ------------------------------------------------------------- */

int cpdl_prep_execute(const cpdl_prep_plan_t *plan, const cpdl_tensor_t *inputs, int n_inputs,
                      const int *cp_ranks, int n_ranks, void *const *rank_dst, void *shared_dst) {
  return cpdl_prep_execute_part(plan, inputs, n_inputs, cp_ranks, n_ranks, rank_dst, shared_dst,
                                0, 1);
}

/* Match the batch to the plan's inputs by name; shapes and dtypes must be the same. */
static int bind_inputs(const cpdl_prep_plan_t *plan, const cpdl_tensor_t *inputs, int n_inputs,
                       const unsigned char **data) {
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
      cpdl__prep_shape_text(p, shp, sizeof shp);
      return cpdl__error(CPDL_EFIELD,
                         "cpdl_prep_execute: field '%s' differs from the plan's (%s %s); make a new plan",
                         p->name, cpdl_dtype_name(p->dtype), shp);
    }
    if (!t->data && p->nbytes)
      return cpdl__error(CPDL_EARG, "cpdl_prep_execute: field '%s' has no data", p->name);
    data[i] = t->data;
  }
  return 0;
}

/* One (rank, field) shard: every row, its runs of padded positions in order. */
static void emit_shard(const cpdl_prep_plan_t *plan, int f, const unsigned char *src,
                       const int64_t *run_start, const int64_t *run_len, int n_runs,
                       unsigned char *block) {
  const cpdl_prep_field_t *fd = &plan->fields[f];
  const field_spec_t *fs = &plan->spec[f];
  unsigned char *out = block + fd->offset;
  const size_t row_bytes = (size_t)plan->shard_len * fs->pos_bytes;
  for (int64_t row = 0; row < fs->rows; row++) {
    unsigned char *row_out = out + (size_t)row * row_bytes;
    for (int k = 0; k < n_runs; k++) {
      emit_run(fs, src, plan->seq_len, row, run_start[k], run_len[k], row_out);
      row_out += (size_t)run_len[k] * fs->pos_bytes;
    }
  }
}

/* The runs of padded positions [start, start+len) that make up CP rank cp_rank's shard. */
static int shard_runs(const cpdl_prep_plan_t *plan, int64_t cp_rank, int64_t *run_start, int64_t *run_len) {
  if (plan->mode == CPDL_MODE_ROUND_ROBIN) {
    const int64_t chunk = plan->padded_len / (2 * (int64_t)plan->cp_size);
    run_start[0] = cp_rank * chunk;
    run_start[1] = (2 * (int64_t)plan->cp_size - 1 - cp_rank) * chunk;
    run_len[0] = run_len[1] = chunk;
    return 2;
  }
  run_start[0] = cp_rank * plan->shard_len;
  run_len[0] = plan->shard_len;
  return 1;
}

/* ---- thd: per-document zigzag --------------------------------------------- */

/* Boundary k of cu_seqlens_padded. */
static int64_t thd_bound(const plan_input_t *t, const unsigned char *cu, int64_t k) {
  return load_int(t->dtype, cu + (size_t)k * cpdl_dtype_size(t->dtype));
}

/* cu_seqlens_padded must start at 0, never decrease, end at S (a tail that repeats S is a
 * list of empty documents: the loader's fixed-capacity field), and every document's padded
 * length must split into 2*cp equal chunks. */
static int thd_check(const cpdl_prep_plan_t *plan, const unsigned char *cu) {
  const plan_input_t *t = &plan->in[plan->thd_bounds];
  const int64_t n = t->shape[0], multiple = 2 * (int64_t)plan->cp_size;
  int64_t prev = thd_bound(t, cu, 0);
  if (prev != 0)
    return cpdl__error(CPDL_EFIELD, "cu_seqlens_padded[0] is %lld; it must be 0", (long long)prev);
  for (int64_t k = 1; k < n; k++) {
    int64_t at = thd_bound(t, cu, k);
    if (at < prev || at > plan->seq_len || (at - prev) % multiple != 0)
      return cpdl__error(CPDL_EFIELD,
                         "cu_seqlens_padded[%lld..%lld] = %lld, %lld: each document's padded "
                         "length must be >= 0, a multiple of 2*cp = %lld, and end within S = %lld",
                         (long long)(k - 1), (long long)k, (long long)prev, (long long)at,
                         (long long)multiple, (long long)plan->seq_len);
    prev = at;
  }
  if (prev != plan->seq_len)
    return cpdl__error(CPDL_EFIELD, "cu_seqlens_padded ends at %lld; it must end at S = %lld "
                       "(pad the last document to the row's end)", (long long)prev,
                       (long long)plan->seq_len);
  return 0;
}

/* One (rank, field) shard in thd mode: for every document [a, b) of cu_seqlens_padded, in
 * order, its chunk cp_rank then its chunk 2cp-1-cp_rank (chunk = (b - a) / 2cp) — the
 * layout of TransformerEngine's thd_get_partitioned_indices. Synthesized positions count
 * from the document's start. */
static void emit_thd_shard(const cpdl_prep_plan_t *plan, int f, const unsigned char *src,
                           const unsigned char *cu, int64_t cp_rank, unsigned char *block) {
  const plan_input_t *bt = &plan->in[plan->thd_bounds];
  const cpdl_prep_field_t *fd = &plan->fields[f];
  const field_spec_t *fs = &plan->spec[f];
  const int64_t n = bt->shape[0], two_cp = 2 * (int64_t)plan->cp_size;
  const int64_t part[2] = {cp_rank, two_cp - 1 - cp_rank};
  const size_t row_bytes = (size_t)plan->shard_len * fs->pos_bytes;
  for (int64_t row = 0; row < fs->rows; row++) {
    unsigned char *out = block + fd->offset + (size_t)row * row_bytes;
    int64_t a = thd_bound(bt, cu, 0);
    for (int64_t k = 1; k < n; k++) {
      const int64_t b = thd_bound(bt, cu, k), chunk = (b - a) / two_cp;
      for (int h = 0; h < 2 && chunk > 0; h++) {
        const int64_t p0 = a + part[h] * chunk;
        if (fs->kind == SRC_ARANGE)
          for (int64_t j = 0; j < chunk; j++)
            store_int(fs->dtype, out + (size_t)j * fs->esize, p0 - a + j);
        else
          emit_run(fs, src, plan->seq_len, row, p0, chunk, out);
        out += (size_t)chunk * fs->pos_bytes;
      }
      a = b;
    }
  }
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
  const unsigned char *data[CPDL_MAX_FIELDS];
  int rc = bind_inputs(plan, inputs, n_inputs, data);
  if (rc < 0)
    return rc;
  for (int r = 0; r < n_ranks; r++) {
    if (cp_ranks[r] < 0 || cp_ranks[r] >= plan->cp_size)
      return cpdl__error(CPDL_EARG, "cpdl_prep_execute: CP rank %d is outside [0, %d)", cp_ranks[r],
                         plan->cp_size);
    if (!rank_dst[r] && plan->rank_bytes)
      return cpdl__error(CPDL_EARG, "cpdl_prep_execute: no destination for CP rank %d", cp_ranks[r]);
  }

  const unsigned char *thd_cu = NULL;
  if (plan->mode == CPDL_MODE_THD && (rc = thd_check(plan, thd_cu = data[plan->thd_bounds])) < 0)
    return rc;

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

  /* Rank blocks. A shard is one or two runs of padded positions. */
  for (int r = 0; r < n_ranks; r++) {
    int64_t run_start[2], run_len[2];
    int n_runs = shard_runs(plan, cp_ranks[r], run_start, run_len);
    for (int f = 0; f < plan->n_fields; f++) {
      if (plan->fields[f].shared)
        continue;
      if (item++ % n_parts != part)
        continue;
      const int in = plan->spec[f].input;
      if (plan->rank_inputs) /* a block plan: the rank's row of its per-rank input */
        memcpy((unsigned char *)rank_dst[r] + plan->fields[f].offset,
               data[in] + (size_t)cp_ranks[r] * plan->fields[f].nbytes, plan->fields[f].nbytes);
      else if (thd_cu)
        emit_thd_shard(plan, f, in >= 0 ? data[in] : NULL, thd_cu, cp_ranks[r], rank_dst[r]);
      else
        emit_shard(plan, f, in >= 0 ? data[in] : NULL, run_start, run_len, n_runs, rank_dst[r]);
    }
  }
  return 0;
}
