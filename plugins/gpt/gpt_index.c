/* gpt_index.c — Megatron-LM GPTDataset / BlendedDataset indices in C; the
 * rules are stated in gpt_index.h and checked against a numpy statement of
 * them (tests/python/megatron_reference.py) by python.gpt_source. */
#include "gpt_index.h"

#include "gpt_rng.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int32_t gpt_mid_length(const gpt_mid_t *m, int64_t sequence) {
  int32_t v;
  memcpy(&v, m->lengths + 4 * sequence, 4);
  return v;
}

int gpt_split_range(const double split[3], int which, int64_t n, int64_t *beg, int64_t *end) {
  /* convert_split_vector_to_split_matrix: running sums from 0, left to right. */
  double bounds[4] = {0.0, split[0], 0, 0};
  bounds[2] = bounds[1] + split[1];
  bounds[3] = bounds[2] + split[2];
  if (bounds[which + 1] <= bounds[which])
    return 0;
  /* int(round(x * float(n))): Python rounds half to even, as rint does. */
  *beg = (int64_t)rint(bounds[which] * (double)n);
  *end = (int64_t)rint(bounds[which + 1] * (double)n);
  return 1;
}

/* numpy's pairwise_sum for float64 (n < 8: a plain loop from 0; up to 128: 8
 * accumulators; beyond: halves at a multiple of 8). */
double gpt_np_sum(const double *a, int64_t n) {
  if (n < 8) {
    double res = 0.0;
    for (int64_t i = 0; i < n; i++)
      res += a[i];
    return res;
  }
  if (n <= 128) {
    double r[8];
    for (int k = 0; k < 8; k++)
      r[k] = a[k];
    int64_t i;
    for (i = 8; i < n - (n % 8); i += 8)
      for (int k = 0; k < 8; k++)
        r[k] += a[i + k];
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; i++)
      res += a[i];
    return res;
  }
  int64_t n2 = n / 2;
  n2 -= n2 % 8;
  return gpt_np_sum(a, n2) + gpt_np_sum(a + n2, n - n2);
}

void gpt_np_normalize(const double *in, int64_t n, double *out) {
  double s = gpt_np_sum(in, n);
  for (int64_t i = 0; i < n; i++)
    out[i] = in[i] / s;
}

void gpt_mid_free(gpt_mid_t *m) {
  free(m->doc_index);
  free(m->ckpt);
  free(m->shuffle32);
  free(m->shuffle64);
  memset(m, 0, sizeof *m);
}

/* One epoch-major run of the split's sequence ids into d[0 .. epochs*n). */
static void fill_epochs(int32_t *d, int64_t epochs, int64_t beg, int64_t end) {
  int64_t n = end - beg;
  for (int64_t e = 0; e < epochs; e++)
    for (int64_t k = 0; k < n; k++)
      d[e * n + k] = (int32_t)(beg + k);
}

int gpt_mid_build(gpt_mid_t *m, const uint8_t *lengths, int64_t beg, int64_t end,
                  int64_t num_samples, int64_t seq_len, int extra, uint32_t seed,
                  char *err, size_t errlen) {
  memset(m, 0, sizeof *m);
  m->lengths = lengths;
  m->beg = beg;
  m->end = end;
  m->num_samples = num_samples;
  m->seq_len = seq_len;
  m->extra = extra;
  int64_t n = end - beg;
  if (n <= 0) {
    snprintf(err, errlen, "the split holds 0 sequences (sequences [%" PRId64 ", %" PRId64
             ")); Megatron would loop forever here: give the split more weight or use a larger "
             "dataset", beg, end);
    return -1;
  }
  if (end > INT32_MAX) {
    snprintf(err, errlen, "%" PRId64 " sequences: Megatron's document index is int32", end);
    return -1;
  }
  int64_t tpe = 0;
  for (int64_t k = beg; k < end; k++) {
    int32_t len = gpt_mid_length(m, k);
    if (len < 0) {
      snprintf(err, errlen, "sequence %" PRId64 " has length %d in the .idx (offset %" PRId64
               "), expected >= 0", k, (int)len, 34 + 4 * k);
      return -1;
    }
    tpe += len;
  }
  if (tpe < 1) {
    snprintf(err, errlen, "the split's %" PRId64 " sequences hold 0 tokens; Megatron would loop "
             "forever here", n);
    return -1;
  }
  m->tokens_per_epoch = tpe;
  /* _get_num_epochs: the fewest epochs >= 1 whose tokens reach
   * num_samples * seq_len + extra. */
  int64_t epochs = 1;
  if (num_samples >= 0) {
    if (num_samples > (INT64_MAX - extra) / seq_len) {
      snprintf(err, errlen, "num_samples %" PRId64 " x seq_len %" PRId64 " overflows",
               num_samples, seq_len);
      return -1;
    }
    int64_t want = num_samples * seq_len + extra;
    epochs = want <= tpe ? 1 : (want + tpe - 1) / tpe;
  }
  m->epochs = epochs;
  if (epochs > 1) {
    int64_t sans = ((epochs - 1) * tpe - extra) / seq_len;
    int64_t from_final = num_samples - sans;
    int64_t per_epoch = (tpe - extra) / seq_len;
    m->samples_sans_final = sans;
    m->separate_final_epoch = from_final < (int64_t)(0.80 * (double)per_epoch);
  }
  if (epochs > INT64_MAX / n || epochs * n > (int64_t)(SIZE_MAX / 8)) {
    snprintf(err, errlen, "%" PRId64 " epochs of %" PRId64 " sequences do not fit in memory",
             epochs, n);
    return -1;
  }
  m->n_doc = epochs * n;
  m->n_samples = (epochs * tpe - extra) / seq_len;
  m->doc_index = malloc((size_t)m->n_doc * sizeof(int32_t));
  m->ckpt = malloc(((size_t)(m->n_doc / GPT_CKPT) + 2) * sizeof(int64_t));
  int wide = m->n_samples >= (int64_t)UINT32_MAX - 1;
  if (wide)
    m->shuffle64 = malloc((size_t)m->n_samples * sizeof(int64_t) + 1);
  else
    m->shuffle32 = malloc((size_t)m->n_samples * sizeof(uint32_t) + 1);
  if (!m->doc_index || !m->ckpt || (!m->shuffle32 && !m->shuffle64)) {
    gpt_mid_free(m);
    snprintf(err, errlen, "out of memory for the indices of %" PRId64 " documents and %" PRId64
             " samples", n * epochs, (epochs * tpe - extra) / seq_len);
    return -ENOMEM;
  }

  gpt_mt_t mt;
  gpt_mt_seed(&mt, seed);
  /* _build_document_index */
  if (!m->separate_final_epoch) {
    fill_epochs(m->doc_index, epochs, beg, end);
    gpt_mt_shuffle_i32(&mt, m->doc_index, m->n_doc);
  } else {
    fill_epochs(m->doc_index, epochs - 1, beg, end);
    gpt_mt_shuffle_i32(&mt, m->doc_index, (epochs - 1) * n);
    fill_epochs(m->doc_index + (epochs - 1) * n, 1, beg, end);
    gpt_mt_shuffle_i32(&mt, m->doc_index + (epochs - 1) * n, n);
  }
  /* The token stream's checkpoints (stands in for build_sample_idx). */
  int64_t tokens = 0;
  for (int64_t k = 0; k < m->n_doc; k++) {
    if (k % GPT_CKPT == 0)
      m->ckpt[k / GPT_CKPT] = tokens;
    if (k + 16 < m->n_doc)
      __builtin_prefetch(lengths + 4 * (int64_t)m->doc_index[k + 16]);
    tokens += gpt_mid_length(m, m->doc_index[k]);
  }
  m->ckpt[(m->n_doc - 1) / GPT_CKPT + 1] = tokens;
  /* _build_shuffle_index */
  int64_t first = m->separate_final_epoch ? m->samples_sans_final : m->n_samples;
  if (wide) {
    for (int64_t k = 0; k < m->n_samples; k++)
      m->shuffle64[k] = k;
    gpt_mt_shuffle_i64(&mt, m->shuffle64, first);
    gpt_mt_shuffle_i64(&mt, m->shuffle64 + first, m->n_samples - first);
  } else {
    for (int64_t k = 0; k < m->n_samples; k++)
      m->shuffle32[k] = (uint32_t)k;
    gpt_mt_shuffle_u32(&mt, m->shuffle32, first);
    gpt_mt_shuffle_u32(&mt, m->shuffle32 + first, m->n_samples - first);
  }
  return 0;
}

void gpt_mid_locate(const gpt_mid_t *m, int64_t i, int64_t *doc_pos, int64_t *offset) {
  int64_t j = m->shuffle32 ? (int64_t)m->shuffle32[i] : m->shuffle64[i];
  int64_t p = j * m->seq_len;
  /* the last checkpoint at or before p */
  int64_t lo = 0, hi = (m->n_doc - 1) / GPT_CKPT; /* ckpt[lo] <= p */
  while (lo < hi) {
    int64_t mid = lo + (hi - lo + 1) / 2;
    if (m->ckpt[mid] <= p)
      lo = mid;
    else
      hi = mid - 1;
  }
  int64_t pos = lo * GPT_CKPT, before = m->ckpt[lo];
  /* the document holding token p (empty documents hold none) */
  for (;;) {
    int64_t len = gpt_mid_length(m, m->doc_index[pos]);
    if (p < before + len)
      break;
    before += len;
    pos++;
  }
  *doc_pos = pos;
  *offset = p - before;
}

void gpt_blend_free(gpt_blend_t *b) {
  free(b->weights);
  free(b->dataset_index);
  free(b->ckpt);
  free(b->totals);
  memset(b, 0, sizeof *b);
}

int gpt_blend_build(gpt_blend_t *b, const double *weights, int n, int64_t size, char *err,
                    size_t errlen) {
  memset(b, 0, sizeof *b);
  b->n = n;
  b->size = size;
  int64_t n_ckpt = size / GPT_BLEND_CKPT + 1;
  b->weights = malloc((size_t)n * sizeof(double));
  b->dataset_index = malloc((size_t)size * sizeof(uint16_t) + 1);
  b->ckpt = calloc((size_t)n_ckpt * (size_t)n, sizeof(int64_t));
  b->totals = calloc((size_t)n, sizeof(int64_t));
  if (!b->weights || !b->dataset_index || !b->ckpt || !b->totals) {
    gpt_blend_free(b);
    snprintf(err, errlen, "out of memory for a blend of %" PRId64 " samples", size);
    return -ENOMEM;
  }
  /* BlendedDataset normalizes again ("for bitwise identical comparison"). */
  gpt_np_normalize(weights, n, b->weights);
  int64_t *count = b->totals;
  for (int64_t i = 0; i < size; i++) {
    if (i % GPT_BLEND_CKPT == 0)
      memcpy(b->ckpt + (i / GPT_BLEND_CKPT) * n, count, (size_t)n * sizeof(int64_t));
    double x = (double)i > 1.0 ? (double)i : 1.0;
    int best = 0;
    double best_err = b->weights[0] * x - (double)count[0];
    for (int d = 1; d < n; d++) {
      double e = b->weights[d] * x - (double)count[d];
      if (e > best_err) {
        best_err = e;
        best = d;
      }
    }
    b->dataset_index[i] = (uint16_t)best;
    count[best]++;
  }
  return 0;
}

void gpt_blend_lookup(const gpt_blend_t *b, int64_t i, int *dataset, int64_t *sample) {
  int d = b->dataset_index[i];
  int64_t k = i / GPT_BLEND_CKPT;
  int64_t c = b->ckpt[k * b->n + d];
  for (int64_t t = k * GPT_BLEND_CKPT; t < i; t++)
    c += b->dataset_index[t] == d;
  *dataset = d;
  *sample = c;
}
