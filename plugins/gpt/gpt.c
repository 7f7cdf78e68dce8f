/* gpt.c — the `gpt:` data source: Megatron-LM's GPTDataset / BlendedDataset
 * sample order over Megatron indexed datasets (<prefix>.idx + .bin), exactly.
 *
 *   gpt:/data/a?num_samples=K&seq_len=S&seed=N
 *   (seq_len and seed default to the loader's parameters, plugin.h)
 *   gpt:0.3,/data/a,0.7,/data/b?num_samples=K&split=969,30,1&split_index=0
 *
 * The path is Megatron's --data-path list, comma-separated (weights and
 * prefixes paired, or prefixes alone: weights are then the datasets' lengths).
 * Sample i is global sample i of the split (Megatron's `text`: seq_len +
 * add_extra_token tokens, int64); read_row() gives the loader's row of it as
 * Megatron's GPTDataset.__getitem__ builds tokens, labels, loss_mask and
 * position_ids. Indices are built at open (gpt_index.c); files are mapped.
 * Invariant after open: every sample's window lies inside the document
 * index's token stream; each sequence a read touches is checked against its
 * .bin then (open reads only the .idx's lengths, as Megatron's build).
 */
#include "cpdl/plugin.h"

#include "gpt_index.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "Megatron .idx/.bin are little-endian"
#endif

#define MM_HEADER_BYTES 34
#define GPT_MAX_DATASETS 1024
#define LIST_MAX 8192

typedef struct gpt_low {
  char *prefix;
  cpdl_source_mapping_t idx_map, bin_map;
  const uint8_t *lengths, *pointers;
  int64_t n_seqs;
  int dtype_code, item_bytes;
  gpt_mid_t mid;
} gpt_low_t;

typedef struct gpt {
  const cpdl_source_host_t *host;
  int n;                    /* prefixes */
  gpt_low_t *low;
  int blended;              /* a BlendedDataset on top (weights given, or several prefixes) */
  gpt_blend_t blend;
  int64_t count;
  int64_t consumed;         /* consumed_samples=: where the loader starts */
  int64_t seq_len, eod, pad;
  int extra, reset_position_ids, eod_mask_loss;
  int64_t *window;          /* seq_len + extra tokens */
} gpt_t;

static int64_t rd_i64(const uint8_t *p) {
  int64_t v;
  memcpy(&v, p, 8);
  return v;
}

/* Map and check one prefix's .idx/.bin (sequences only: GPTDataset splits
 * and reads sequences, not Megatron's document groups). */
static int low_open(const cpdl_source_host_t *host, gpt_low_t *l, char *err, size_t errlen) {
  size_t len = strlen(l->prefix);
  char *path = malloc(len + 5);
  if (!path) {
    snprintf(err, errlen, "gpt: out of memory");
    return -ENOMEM;
  }
  snprintf(path, len + 5, "%s.idx", l->prefix);
  int rc = host->map_file(path, &l->idx_map, err, errlen);
  if (!rc) {
    snprintf(path, len + 5, "%s.bin", l->prefix);
    rc = host->map_file(path, &l->bin_map, err, errlen);
  }
  free(path);
  if (rc)
    return rc;
  const uint8_t *b = l->idx_map.addr;
  uint64_t size = l->idx_map.size;
  if (size < MM_HEADER_BYTES || memcmp(b, "MMIDIDX\0\0", 9) != 0 || rd_i64(b + 9) != 1) {
    snprintf(err, errlen, "gpt: %s.idx: offset 0: not a Megatron MMIDIDX version 1 index",
             l->prefix);
    return CPDL_SOURCE_ECORRUPT;
  }
  l->dtype_code = b[17];
  static const int bytes[9] = {0, 1, 1, 2, 4, 8, 0, 0, 2};
  if (l->dtype_code < 1 || l->dtype_code > 8 || !bytes[l->dtype_code]) {
    snprintf(err, errlen, "gpt: %s.idx: offset 17: dtype code %d is not an integer token type "
             "(1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 8 uint16)", l->prefix, l->dtype_code);
    return CPDL_SOURCE_EDTYPE;
  }
  l->item_bytes = bytes[l->dtype_code];
  uint64_t n = (uint64_t)rd_i64(b + 18), d = (uint64_t)rd_i64(b + 26);
  uint64_t avail = size - MM_HEADER_BYTES;
  if (n > avail / 12 || d > (avail - 12 * n) / 8 ||
      (size != MM_HEADER_BYTES + 12 * n + 8 * d && size != MM_HEADER_BYTES + 13 * n + 8 * d)) {
    snprintf(err, errlen, "gpt: %s.idx: offset 18: %" PRIu64 " sequences and %" PRIu64
             " document indices do not match the file's %" PRIu64 " bytes", l->prefix, n, d, size);
    return CPDL_SOURCE_ECORRUPT;
  }
  l->n_seqs = (int64_t)n;
  l->lengths = b + MM_HEADER_BYTES;
  l->pointers = l->lengths + 4 * n;
  /* Sequences are checked against the .bin when a sample reads them
   * (check_sequence), lengths when the split's index is built: opening
   * touches no more of the .idx than Megatron's build does. */
  return 0;
}

static void gpt_close(void *state) {
  gpt_t *g = state;
  if (!g)
    return;
  for (int k = 0; k < g->n; k++) {
    gpt_mid_free(&g->low[k].mid);
    g->host->unmap_file(&g->low[k].idx_map);
    g->host->unmap_file(&g->low[k].bin_map);
    free(g->low[k].prefix);
  }
  free(g->low);
  gpt_blend_free(&g->blend);
  free(g->window);
  free(g);
}

/* Python's float() for a weight: the whole item, finite. */
static int parse_float(const char *s, double *out) {
  char *end;
  while (*s == ' ')
    s++;
  if (!*s)
    return 0;
  *out = strtod(s, &end);
  while (*end == ' ')
    end++;
  return *end == '\0';
}

/* parse_and_normalize_split: the numbers in the string ("[.0-9]+"), padded
 * to 3 with zeros, normalized. */
static int parse_split(const char *text, double out[3], char *err, size_t errlen) {
  double v[3] = {0, 0, 0};
  int k = 0;
  const char *p = text;
  while (*p) {
    if (!strchr(".0123456789", *p)) {
      p++;
      continue;
    }
    size_t n = strspn(p, ".0123456789");
    char buf[64];
    if (n >= sizeof buf || k == 3) {
      snprintf(err, errlen, "gpt: split=\"%s\": expected at most 3 numbers, e.g. 969,30,1", text);
      return CPDL_SOURCE_EARG;
    }
    memcpy(buf, p, n);
    buf[n] = '\0';
    char *end;
    v[k] = strtod(buf, &end);
    if (*end || n == strspn(p, ".")) {
      snprintf(err, errlen, "gpt: split=\"%s\": \"%s\" is not a number", text, buf);
      return CPDL_SOURCE_EARG;
    }
    k++;
    p += n;
  }
  if (!(v[0] + v[1] + v[2] > 0)) {
    snprintf(err, errlen, "gpt: split=\"%s\": the weights sum to 0; e.g. split=969,30,1", text);
    return CPDL_SOURCE_EARG;
  }
  gpt_np_normalize(v, 3, out);
  return 0;
}

/* The data-path list: "p" | "p1,p2,..." | "w1,p1,w2,p2,...". */
static int parse_list(gpt_t *g, const char *path, double **weights, char *err, size_t errlen) {
  *weights = NULL;
  if (!path || !*path) {
    snprintf(err, errlen, "gpt: no data path (use \"gpt:/data/corpus_text_document\" or "
             "\"gpt:0.3,/data/a,0.7,/data/b\")");
    return CPDL_SOURCE_EARG;
  }
  char *items[GPT_MAX_DATASETS * 2];
  int n = 0;
  char *copy = strdup(path);
  if (!copy) {
    snprintf(err, errlen, "gpt: out of memory");
    return -ENOMEM;
  }
  for (char *save = NULL, *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    if (n == GPT_MAX_DATASETS * 2) {
      free(copy);
      snprintf(err, errlen, "gpt: more than %d datasets in the data path", GPT_MAX_DATASETS);
      return CPDL_SOURCE_EARG;
    }
    items[n++] = t;
  }
  int rc = 0;
  double w;
  int numbers = 0;
  for (int k = 0; k < n; k += 2)
    numbers += parse_float(items[k], &w);
  int paired = n % 2 == 0 && numbers == n / 2;
  if (!paired && parse_float(items[0], &w)) {
    snprintf(err, errlen, "gpt: data path \"%.200s\": expected weight,prefix pairs "
             "(e.g. 0.3,/data/a,0.7,/data/b) or prefixes alone; a weight does not parse or "
             "lacks its prefix", path);
    rc = CPDL_SOURCE_EARG;
    goto out;
  }
  g->n = paired ? n / 2 : n;
  g->low = calloc((size_t)g->n, sizeof *g->low);
  if (paired)
    *weights = malloc((size_t)g->n * sizeof(double));
  if (!g->low || (paired && !*weights)) {
    snprintf(err, errlen, "gpt: out of memory");
    rc = -ENOMEM;
    goto out;
  }
  for (int k = 0; k < g->n; k++) {
    const char *prefix = paired ? items[2 * k + 1] : items[k];
    while (*prefix == ' ')
      prefix++;
    g->low[k].prefix = strdup(prefix);
    size_t len = g->low[k].prefix ? strlen(g->low[k].prefix) : 0;
    while (len && g->low[k].prefix[len - 1] == ' ')
      g->low[k].prefix[--len] = '\0';
    if (!g->low[k].prefix) {
      snprintf(err, errlen, "gpt: out of memory");
      rc = -ENOMEM;
      goto out;
    }
    if (paired) {
      parse_float(items[2 * k], &(*weights)[k]);
      double x = (*weights)[k];
      if (!(x >= 0) || isinf(x)) {
        snprintf(err, errlen, "gpt: weight \"%s\" of %s must be a finite number >= 0",
                 items[2 * k], prefix);
        rc = CPDL_SOURCE_EARG;
        goto out;
      }
    }
  }
  if (paired) {
    double s = gpt_np_sum(*weights, g->n);
    if (!(s > 0)) {
      snprintf(err, errlen, "gpt: the weights of \"%.200s\" sum to 0", path);
      rc = CPDL_SOURCE_EARG;
    }
  }
out:
  free(copy);
  return rc;
}

/* consumed_samples=C (decimal, >= 0; 0 when absent) into *out. */
static int parse_consumed(const cpdl_source_host_t *host, const char *query, uint64_t *out,
                          char *err, size_t errlen) {
  char text[128];
  *out = 0;
  int found = host->query_get(query, "consumed_samples", text, sizeof text);
  if (found == 0)
    return 0;
  char *end = text;
  errno = 0;
  unsigned long long v = found > 0 && text[0] != '-' ? strtoull(text, &end, 10) : 0;
  if (found < 0 || errno || end == text || *end) {
    snprintf(err, errlen, "gpt: consumed_samples=%.64s is not a non-negative integer (Megatron's "
             "consumed_samples, the samples a run has consumed)", found < 0 ? "..." : text);
    return CPDL_SOURCE_EARG;
  }
  *out = v;
  return 0;
}

/* seq_len and seed: the URI's keys, else the loader's parameters (the key
 * wins: plugin.h), else seed's default; seq_len has none. */
static int loader_keys(const cpdl_source_host_t *host, const cpdl_source_params_t *params,
                       const char *query, int64_t *seq_len, int64_t *seed, char *err,
                       size_t errlen) {
  int rc;
  if ((rc = host->query_int(query, "seq_len", -1, 1, INT32_MAX - 1, seq_len, err, errlen)) ||
      (rc = host->query_int(query, "seed", -1, 0, UINT32_MAX, seed, err, errlen)))
    return rc;
  if (*seq_len < 0 && CPDL_SOURCE_HAS_PARAM(params, seq_len)) {
    if (params->seq_len < 1 || params->seq_len > INT32_MAX - 1) {
      snprintf(err, errlen, "gpt: the loader's seq_len=%" PRId64 " is outside [1, %d], the "
               "sample lengths Megatron's index holds", params->seq_len, INT32_MAX - 1);
      return CPDL_SOURCE_EARG;
    }
    *seq_len = params->seq_len;
  }
  if (*seq_len < 1) {
    snprintf(err, errlen, "gpt: seq_len=S is required (Megatron's --seq-length; the loader "
             "passes its own)");
    return CPDL_SOURCE_EARG;
  }
  if (*seed < 0 && CPDL_SOURCE_HAS_PARAM(params, seed)) {
    if (params->seed > UINT32_MAX) {
      snprintf(err, errlen, "gpt: the loader's seed=%" PRIu64 " is outside [0, %u]: Megatron's "
               "seed is numpy's 32-bit RandomState seed; set a smaller seed, or seed= in the "
               "URI", params->seed, (unsigned)UINT32_MAX);
      return CPDL_SOURCE_EARG;
    }
    *seed = (int64_t)params->seed;
  }
  if (*seed < 0)
    *seed = 1234; /* Megatron's --seed default */
  return 0;
}

static int gpt_open_params(const cpdl_source_host_t *host, const cpdl_source_params_t *params,
                           const char *path, const char *query, void **state, char *err,
                           size_t errlen) {
  static const char *const known[] = {"num_samples", "split", "split_index", "eod", "pad",
                                      "mid_level_dataset_surplus", "reset_position_ids",
                                      "eod_mask_loss", "add_extra_token", "seq_len", "seed",
                                      "consumed_samples", NULL};
  int rc = host->query_check(query, known, err, errlen);
  if (rc)
    return rc;
  gpt_t *g = calloc(1, sizeof *g);
  if (!g) {
    snprintf(err, errlen, "gpt: out of memory");
    return -ENOMEM;
  }
  g->host = host;
  double *weights = NULL;
  int64_t num_samples, split_index, seed, v;
  uint64_t consumed;
  char split_text[256] = "969,30,1", surplus_text[64] = "0.005";
  double split[3], surplus;
  if ((rc = host->query_int(query, "num_samples", -1, -1, INT64_MAX / 2, &num_samples, err, errlen)))
    goto fail;
  if (num_samples < 1) {
    snprintf(err, errlen, "gpt: num_samples=K is required (Megatron's number of samples of the "
             "split, e.g. train_iters x global_batch_size) and must be >= 1");
    rc = CPDL_SOURCE_EARG;
    goto fail;
  }
  if ((rc = loader_keys(host, params, query, &g->seq_len, &seed, err, errlen)) ||
      (rc = parse_consumed(host, query, &consumed, err, errlen)) ||
      (rc = host->query_int(query, "split_index", 0, 0, 2, &split_index, err, errlen)) ||
      (rc = host->query_int(query, "eod", -1, -1, INT64_MAX, &g->eod, err, errlen)) ||
      (rc = host->query_int(query, "pad", -1, INT64_MIN, INT64_MAX, &g->pad, err, errlen)) ||
      (rc = host->query_int(query, "add_extra_token", 1, 0, 1, &v, err, errlen)))
    goto fail;
  g->extra = (int)v;
  if ((rc = host->query_int(query, "reset_position_ids", 0, 0, 1, &v, err, errlen)))
    goto fail;
  g->reset_position_ids = (int)v;
  if ((rc = host->query_int(query, "eod_mask_loss", 0, 0, 1, &v, err, errlen)))
    goto fail;
  g->eod_mask_loss = (int)v;
  if ((g->reset_position_ids || g->eod_mask_loss) && g->eod < 0) {
    snprintf(err, errlen, "gpt: reset_position_ids and eod_mask_loss need eod=ID (the "
             "tokenizer's end-of-document id)");
    rc = CPDL_SOURCE_EARG;
    goto fail;
  }
  if (host->query_get(query, "split", split_text, sizeof split_text) < 0 ||
      host->query_get(query, "mid_level_dataset_surplus", surplus_text, sizeof surplus_text) < 0) {
    snprintf(err, errlen, "gpt: split= or mid_level_dataset_surplus= is too long");
    rc = CPDL_SOURCE_EARG;
    goto fail;
  }
  if ((rc = parse_split(split_text, split, err, errlen)))
    goto fail;
  if (!parse_float(surplus_text, &surplus) || !(surplus >= 0) || isinf(surplus)) {
    snprintf(err, errlen, "gpt: mid_level_dataset_surplus=\"%s\" must be a number >= 0 "
             "(Megatron's default 0.005)", surplus_text);
    rc = CPDL_SOURCE_EARG;
    goto fail;
  }
  if ((rc = parse_list(g, path, &weights, err, errlen)))
    goto fail;
  for (int k = 0; k < g->n; k++)
    if ((rc = low_open(host, &g->low[k], err, errlen)))
      goto fail;

  static const char *const split_names[3] = {"train", "valid", "test"};
  g->blended = weights != NULL || g->n > 1;
  double *normalized = NULL;
  if (weights) {
    normalized = malloc((size_t)g->n * sizeof(double));
    if (!normalized) {
      rc = -ENOMEM;
      snprintf(err, errlen, "gpt: out of memory");
      goto fail;
    }
    gpt_np_normalize(weights, g->n, normalized);
  }
  int64_t size = 0;
  for (int k = 0; k < g->n && !rc; k++) {
    gpt_low_t *l = &g->low[k];
    int64_t beg, end;
    if (!gpt_split_range(split, (int)split_index, l->n_seqs, &beg, &end)) {
      snprintf(err, errlen, "gpt: split_index=%" PRId64 " (%s) has weight 0 in split=%s",
               split_index, split_names[split_index], split_text);
      rc = CPDL_SOURCE_EARG;
      break;
    }
    int64_t want = num_samples;
    if (normalized) {
      /* _get_size_per_split_per_dataset: the target, and the buffer built. */
      double target = ceil((double)num_samples * normalized[k]);
      size += (int64_t)target;
      want = (int64_t)ceil(target * (1.0 + surplus));
    } else if (g->blended) {
      want = -1; /* weights from the datasets' one-epoch lengths */
    }
    char why[512];
    rc = gpt_mid_build(&l->mid, l->lengths, beg, end, want, g->seq_len, g->extra,
                       (uint32_t)seed, why, sizeof why);
    if (rc) {
      snprintf(err, errlen, "gpt: %s, %s split (split=%s): %s", l->prefix,
               split_names[split_index], split_text, why);
      if (rc == -1)
        rc = CPDL_SOURCE_EARG;
    }
  }
  if (!rc && g->blended) {
    double *bw = normalized;
    if (!weights) {
      bw = malloc((size_t)g->n * sizeof(double));
      if (!bw) {
        rc = -ENOMEM;
        snprintf(err, errlen, "gpt: out of memory");
      } else {
        size = 0;
        for (int k = 0; k < g->n; k++) {
          bw[k] = (double)g->low[k].mid.n_samples;
          size += g->low[k].mid.n_samples;
        }
        if (size > num_samples)
          size = num_samples;
      }
    }
    if (!rc && size < 1) {
      snprintf(err, errlen, "gpt: the datasets of the blend hold no sample of seq_len=%" PRId64
               " in their %s split", g->seq_len, split_names[split_index]);
      rc = CPDL_SOURCE_EARG;
    }
    if (!rc)
      rc = gpt_blend_build(&g->blend, bw, g->n, size, err, errlen);
    if (bw != normalized)
      free(bw);
    for (int k = 0; k < g->n && !rc; k++)
      if (g->blend.totals[k] > g->low[k].mid.n_samples) {
        snprintf(err, errlen, "gpt: the blend draws %" PRId64 " samples from %s, which has %"
                 PRId64 "; raise mid_level_dataset_surplus", g->blend.totals[k],
                 g->low[k].prefix, g->low[k].mid.n_samples);
        rc = CPDL_SOURCE_EARG;
      }
    g->count = size;
  } else if (!rc) {
    g->count = g->low[0].mid.n_samples;
  }
  free(normalized);
  free(weights);
  weights = NULL;
  if (rc)
    goto fail;
  if (consumed > (uint64_t)g->count) {
    snprintf(err, errlen, "gpt: consumed_samples=%" PRIu64 " is past the source's %" PRId64
             " samples", consumed, g->count);
    rc = CPDL_SOURCE_EARG;
    goto fail;
  }
  g->consumed = (int64_t)consumed;
  g->window = malloc((size_t)(g->seq_len + g->extra) * sizeof(int64_t));
  if (!g->window) {
    snprintf(err, errlen, "gpt: out of memory");
    rc = -ENOMEM;
    goto fail;
  }
  *state = g;
  return 0;
fail:
  free(weights);
  gpt_close(g);
  return rc;
}

/* Opened without the loader (cpdl_source_open, inspect): the URI alone. */
static int gpt_open(const cpdl_source_host_t *host, const char *path, const char *query,
                    void **state, char *err, size_t errlen) {
  return gpt_open_params(host, NULL, path, query, state, err, errlen);
}

static int64_t gpt_count(void *state) { return ((gpt_t *)state)->count; }

static int64_t gpt_consumed(void *state) { return ((gpt_t *)state)->consumed; }

static int64_t token_at(const gpt_low_t *l, const uint8_t *p) {
  switch (l->dtype_code) {
  case 1: return *p;
  case 2: return (int8_t)*p;
  case 3: { int16_t v; memcpy(&v, p, 2); return v; }
  case 4: { int32_t v; memcpy(&v, p, 4); return v; }
  case 5: { int64_t v; memcpy(&v, p, 8); return v; }
  default: { uint16_t v; memcpy(&v, p, 2); return v; }
  }
}

/* Sequence seq of l lies inside its .bin, aligned to the token size. */
static int check_sequence(const gpt_low_t *l, int64_t seq, int64_t len, int64_t ptr, char *err,
                          size_t errlen) {
  uint64_t bin = l->bin_map.size, nb = (uint64_t)len * (uint64_t)l->item_bytes;
  if (ptr < 0 || (uint64_t)ptr > bin || nb > bin - (uint64_t)ptr ||
      (uint64_t)ptr % (uint64_t)l->item_bytes) {
    snprintf(err, errlen, "gpt: %s.idx: sequence %" PRId64 " (length %" PRId64 " at byte %" PRId64
             ") does not lie inside %s.bin (%" PRIu64 " bytes) aligned to %d-byte tokens",
             l->prefix, seq, len, ptr, l->prefix, bin, l->item_bytes);
    return CPDL_SOURCE_ECORRUPT;
  }
  return 0;
}

/* Global sample i's window into g->window. */
static int fill_window(gpt_t *g, int64_t i, char *err, size_t errlen) {
  int d = 0;
  int64_t s = i;
  if (g->blended)
    gpt_blend_lookup(&g->blend, i, &d, &s);
  const gpt_low_t *l = &g->low[d];
  int64_t pos, off;
  gpt_mid_locate(&l->mid, s, &pos, &off);
  int64_t need = g->seq_len + g->extra, got = 0;
  const uint8_t *bin = l->bin_map.addr;
  while (got < need) {
    int64_t seq = l->mid.doc_index[pos++];
    int64_t len = gpt_mid_length(&l->mid, seq), ptr = rd_i64(l->pointers + 8 * seq);
    int rc = check_sequence(l, seq, len, ptr, err, errlen);
    if (rc)
      return rc;
    const uint8_t *p = bin + ptr + off * l->item_bytes;
    for (int64_t t = off; t < len && got < need; t++, p += l->item_bytes)
      g->window[got++] = token_at(l, p);
    off = 0;
  }
  return 0;
}

static int gpt_read(void *state, int64_t i, const void **tokens, int64_t *n, int *token_bytes,
                    char *err, size_t errlen) {
  gpt_t *g = state;
  int rc = fill_window(g, i, err, errlen);
  if (rc)
    return rc;
  *tokens = g->window;
  *n = g->seq_len + g->extra;
  *token_bytes = 8;
  return 0;
}

/* GPTDataset.__getitem__ + _get_ltor_masks_and_position_ids, for one row. */
static int gpt_read_row(void *state, int64_t i, int64_t width, int64_t *ids, int64_t *labels,
                        float *loss_mask, int64_t *position_ids, char *err, size_t errlen) {
  gpt_t *g = state;
  if (width != g->seq_len) {
    snprintf(err, errlen, "gpt: a row of %" PRId64 " tokens was asked of a source opened with "
             "seq_len=%" PRId64, width, g->seq_len);
    return CPDL_SOURCE_EARG;
  }
  int rc = fill_window(g, i, err, errlen);
  if (rc)
    return rc;
  int64_t S = g->seq_len, *w = g->window;
  for (int64_t t = 0; t < S; t++) {
    ids[t] = w[t];
    labels[t] = g->extra || t + 1 < S ? w[t + 1] : g->pad;
  }
  int64_t start = 0;
  for (int64_t t = 0; t < S; t++) {
    loss_mask[t] = g->eod_mask_loss && ids[t] == g->eod ? 0.0f : 1.0f;
    position_ids[t] = g->reset_position_ids ? t - start : t;
    if (g->reset_position_ids && ids[t] == g->eod)
      start = t + 1;
  }
  for (int64_t t = 0; t < S; t++) {
    if (labels[t] == g->pad) {
      loss_mask[t] = 0.0f;
      labels[t] = 0;
    }
    if (ids[t] == g->pad)
      ids[t] = 0;
  }
  return 0;
}

static const cpdl_source_plugin_t descriptor = {
  .abi_version = CPDL_SOURCE_ABI_VERSION,
  .struct_size = sizeof(cpdl_source_plugin_t),
  .name = "gpt",
  .description = "Megatron-LM GPTDataset/BlendedDataset sample order over .idx/.bin "
                 "(num_samples, split, split_index, eod, ...)",
  .flags = CPDL_SOURCE_GLOBAL_ORDER,
  .open = gpt_open,
  .count = gpt_count,
  .read = gpt_read,
  .close = gpt_close,
  .read_row = gpt_read_row,
  .open_params = gpt_open_params,
  .consumed = gpt_consumed,
};

CPDL_SOURCE_PLUGIN_EXPORT const cpdl_source_plugin_t *cpdl_source_plugin_v1(void) {
  return &descriptor;
}
