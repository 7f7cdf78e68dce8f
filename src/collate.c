/* collate.c — documents in, [batch, seq_len] int64 tensors out.
 *
 * pack: documents (the sampler's order) form one token stream. Row windows
 *   are seq_len + 1 tokens and consecutive windows overlap by ONE token (as
 *   llm.c): the next row — and the next step's first row — starts at the
 *   last token of the previous window, so every token of the stream is an
 *   input exactly once and a label exactly once (the stream's first token is
 *   never a label). input_ids = window[:-1], labels = window[1:].
 *   _packed_seq_ids[t] = 1-based ordinal, within the row, of the document
 *   that holds window token t (the row's first, possibly partial, document
 *   is 1). position_ids, mode 0 "restart": 0 at the row's start and at every
 *   document start inside the row (a document continued from the previous
 *   row restarts at 0, as Megatron's reset_position_ids); mode 1
 *   "continuous": 0..S-1. Empty documents are skipped; no separator tokens
 *   are inserted (sources carry their own EOT).
 * pad: one document per row, truncated to seq_len + 1 tokens; input_ids =
 *   doc[:-1] then padding_token_id, labels = doc[1:] then -100,
 *   attention_mask 1 on real tokens, 0 on padding. Documents of fewer than
 *   2 tokens (no input/label pair) are skipped.
 * pack with thd_multiple = m (mode thd, docs/thd.md): one row; each document
 *   gives its input/label pairs (input = doc[:-1], labels = doc[1:], as pad),
 *   padded to a multiple of m (padding_token_id, labels -100, loss_mask 0,
 *   position ids 0.. through the document and its padding). A document whose
 *   padded pairs no longer fit waits for the next row, and the row's tail
 *   becomes padding of its last document; a document longer than a whole row
 *   fills it and continues in the next. A row holds documents of one epoch:
 *   the epoch's last row ends with padding too, so an epoch is whole rows and
 *   every document is in it once. Adds loss_mask and, int32, cu_seqlens
 *   (real lengths) and cu_seqlens_padded, each of capacity S/m + 1 entries
 *   whose tail repeats the last boundary, and max_seqlen [1].
 * Both: loss_on_eot = 0 turns labels equal to the EOT token into -100.
 * Counting (cpdl__collate_count_*): the rows and steps these rules make of
 * documents known by their lengths alone, through the same decisions
 * (pad_usable, thd_fit, the pack window), so an epoch's step count is the
 * collate's own and nothing of the next epoch or beyond the count is read.
 * Invariant: the cursor (document at sampler (epoch, position), token offset
 * in it) is where the next row's window starts; it is all the state. The
 * current document's token view is kept across steps: valid because the
 * collate is its source's only reader and reads one document at a time
 * (generated sources keep a view until the next read).
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define IGNORE_INDEX (-100)

struct cpdl__collate {
  cpdl__collate_params_t params;
  cpdl__sampler_t *sampler;
  cpdl__collate_read_fn read;
  void *read_arg;
  /* The current document, when have_doc: the one the next window starts in. */
  bool have_doc;
  cpdl__sample_t doc;
  uint64_t doc_epoch;
  int64_t doc_position;
  int64_t doc_offset;
  /* Output buffers [B, S] and a window of S + 1 tokens, allocated once.
   * The four pointers name the set being written; with double_buffer the
   * two sets of `sets` take turns, so the previous step's set stays intact. */
  int64_t *input_ids, *labels, *aux0, *aux1; /* aux: position/seq ids or attention mask */
  int64_t *sets[2][4];
  int32_t *cu_seqlens, *cu_seqlens_padded, *max_seqlen; /* thd: the set being written */
  int32_t *thd_sets[2][3];
  int64_t thd_capacity;                                  /* entries of each cu_seqlens */
  int n_sets, current;
  int64_t *window;
};

int cpdl__collate_parse(const char *name, cpdl__collate_kind_t *out) {
  if (name && strcmp(name, "pack") == 0) {
    *out = CPDL__COLLATE_PACK;
    return 0;
  }
  if (name && strcmp(name, "pad") == 0) {
    *out = CPDL__COLLATE_PAD;
    return 0;
  }
  return cpdl__error(CPDL_EARG, "collate: unknown mode \"%s\"; expected pack or pad",
                     name ? name : "(null)");
}

int cpdl__collate_create(const cpdl__collate_params_t *params, cpdl__sampler_t *sampler,
                         cpdl__collate_read_fn read, void *read_arg, cpdl__collate_t **out) {
  *out = NULL;
  if (params->kind != CPDL__COLLATE_PACK && params->kind != CPDL__COLLATE_PAD)
    return cpdl__error(CPDL_EARG, "collate: unknown kind %d", (int)params->kind);
  if (params->seq_len < 1 || params->batch < 1)
    return cpdl__error(CPDL_EARG, "collate: seq_len %lld and batch %d must both be >= 1",
                       (long long)params->seq_len, params->batch);
  if (params->position_ids != 0 && params->position_ids != 1)
    return cpdl__error(CPDL_EARG, "collate: position_ids is %d; expected 0 (restart) or 1 (continuous)",
                       params->position_ids);
  if (!sampler || !read)
    return cpdl__error(CPDL_EARG, "collate: a sampler and a read callback are required");
  if (params->thd_multiple < 0 ||
      (params->thd_multiple > 0 &&
       (params->kind != CPDL__COLLATE_PACK || params->batch != 1 ||
        params->seq_len % params->thd_multiple != 0 || params->seq_len >= INT32_MAX)))
    return cpdl__error(CPDL_EARG,
                       "collate: mode thd needs collate=pack, batch=1 and seq_len (%lld) a "
                       "multiple of 2*cp = %d below 2^31",
                       (long long)params->seq_len, params->thd_multiple);
  size_t elems, bytes, window_bytes;
  if ((uint64_t)params->seq_len >= SIZE_MAX / 8 ||
      !cpdl__mul_size((size_t)params->batch, (size_t)params->seq_len, &elems) ||
      !cpdl__mul_size(elems, sizeof(int64_t), &bytes) ||
      !cpdl__mul_size((size_t)params->seq_len + 1, sizeof(int64_t), &window_bytes))
    return cpdl__error(CPDL_EOVERFLOW, "collate: batch %d x seq_len %lld int64 does not fit in memory",
                       params->batch, (long long)params->seq_len);

  cpdl__collate_t *c = calloc(1, sizeof *c);
  if (!c)
    return cpdl__error(-ENOMEM, "collate: out of memory");
  c->params = *params;
  c->sampler = sampler;
  c->read = read;
  c->read_arg = read_arg;
  c->n_sets = params->double_buffer ? 2 : 1;
  bool ok = true;
  for (int set = 0; set < c->n_sets; set++) {
    for (int b = 0; b < 4; b++) {
      if (b == 3 && params->kind != CPDL__COLLATE_PACK)
        continue;
      c->sets[set][b] = malloc(bytes);
      ok = ok && c->sets[set][b];
    }
  }
  if (params->thd_multiple > 0) {
    c->thd_capacity = params->seq_len / params->thd_multiple + 1;
    for (int set = 0; set < c->n_sets; set++)
      for (int b = 0; b < 3; b++) {
        c->thd_sets[set][b] = malloc((size_t)(b == 2 ? 1 : c->thd_capacity) * sizeof(int32_t));
        ok = ok && c->thd_sets[set][b];
      }
  }
  c->current = c->n_sets - 1; /* the first call moves to set 0 */
  c->window = malloc(window_bytes);
  if (!ok || !c->window) {
    cpdl__collate_destroy(c);
    return cpdl__error(-ENOMEM, "collate: no memory for 4 buffers of %zu bytes (batch %d x seq_len %lld)",
                       bytes, params->batch, (long long)params->seq_len);
  }
  *out = c;
  return 0;
}

void cpdl__collate_destroy(cpdl__collate_t *c) {
  if (!c)
    return;
  for (int set = 0; set < 2; set++)
    for (int b = 0; b < 4; b++)
      free(c->sets[set][b]);
  for (int set = 0; set < 2; set++)
    for (int b = 0; b < 3; b++)
      free(c->thd_sets[set][b]);
  free(c->window);
  free(c);
}

/* Widen tokens [from, from + count) of doc into dst. memcpy per token: a
 * source's mapping gives no alignment promise, and gcc makes it one load. */
static void copy_tokens(int64_t *dst, const cpdl__sample_t *doc, int64_t from, int64_t count) {
  const unsigned char *p = (const unsigned char *)doc->tokens + (size_t)from * (size_t)doc->token_bytes;
  switch (doc->token_bytes) {
  case 2:
    for (int64_t i = 0; i < count; i++) {
      uint16_t v;
      memcpy(&v, p + 2 * i, 2);
      dst[i] = v;
    }
    break;
  case 4:
    for (int64_t i = 0; i < count; i++) {
      uint32_t v;
      memcpy(&v, p + 4 * i, 4);
      dst[i] = v;
    }
    break;
  default: /* 8, checked in load_next_doc */
    memcpy(dst, p, (size_t)count * 8);
    break;
  }
}

/* Make the sampler's next document the current one, offset 0. */
static int load_next_doc(cpdl__collate_t *c) {
  uint64_t epoch;
  int64_t position, index;
  cpdl__sampler_tell(c->sampler, &epoch, &position);
  int rc = cpdl__sampler_next(c->sampler, &index);
  if (rc)
    return rc;
  cpdl__sample_t doc;
  rc = c->read(c->read_arg, index, &doc);
  if (rc)
    return cpdl__error_prefix(rc, "collate: reading sample %lld (epoch %llu, position %lld)",
                              (long long)index, (unsigned long long)epoch, (long long)position);
  if (doc.n_tokens < 0 || (doc.n_tokens > 0 && !doc.tokens) ||
      (doc.token_bytes != 2 && doc.token_bytes != 4 && doc.token_bytes != 8))
    return cpdl__error(CPDL_ESOURCE,
                       "collate: sample %lld came back with %lld tokens of %d bytes at %p; expected "
                       ">= 0 tokens of 2, 4 or 8 bytes",
                       (long long)index, (long long)doc.n_tokens, doc.token_bytes, doc.tokens);
  c->doc = doc;
  c->doc_epoch = epoch;
  c->doc_position = position;
  c->doc_offset = 0;
  c->have_doc = true;
  return 0;
}

/* A source whose documents are all unusable would loop forever. Two epochs
 * of this replica in a row with nothing usable is taken as that verdict (a
 * replica's epoch is a random subset under drop_last, hence not just one). */
static int check_skipped(const cpdl__collate_t *c, int64_t skipped, const char *what) {
  if ((skipped - 64) / 2 <= cpdl__sampler_per_epoch(c->sampler)) /* no overflow for huge epochs */
    return 0;
  return cpdl__error(CPDL_ESOURCE,
                     "collate: %lld consecutive samples (over two epochs of this replica) have %s; "
                     "the source has no usable data",
                     (long long)skipped, what);
}

/* Leave the current document for the sampler's next one. `unused` says the
 * document being left gave the row nothing: it counts in *skipped (the
 * caller's run of such documents) toward check_skipped's verdict, `what`
 * saying what such a document has. */
static int next_doc(cpdl__collate_t *c, bool unused, int64_t *skipped, const char *what) {
  if (unused) {
    int rc = check_skipped(c, ++*skipped, what);
    if (rc)
      return rc;
  }
  return load_next_doc(c);
}

static inline int64_t label_of(const cpdl__collate_t *c, int64_t token) {
  if (!c->params.loss_on_eot && c->params.eot_token >= 0 && token == c->params.eot_token)
    return IGNORE_INDEX;
  return token;
}

static int pack_row(cpdl__collate_t *c, int64_t row) {
  const int64_t S = c->params.seq_len;
  int64_t *win = c->window;
  int64_t *position_ids = c->aux0 + row * S, *seq_ids = c->aux1 + row * S;
  int64_t t = 0, ordinal = 0, skipped = 0;
  while (t < S + 1) {
    if (!c->have_doc || c->doc_offset >= c->doc.n_tokens) {
      int rc = next_doc(c, c->have_doc, &skipped, "no tokens");
      if (rc)
        return rc;
      continue;
    }
    int64_t take = c->doc.n_tokens - c->doc_offset;
    if (take > S + 1 - t)
      take = S + 1 - t;
    copy_tokens(win + t, &c->doc, c->doc_offset, take);
    ordinal++;
    skipped = 0;
    int64_t end = t + take < S ? t + take : S; /* input positions of this segment */
    for (int64_t u = t; u < end; u++) {
      seq_ids[u] = ordinal;
      position_ids[u] = c->params.position_ids ? u : u - t;
    }
    t += take;
    c->doc_offset += take;
  }
  /* The window's last token starts the next window: step back onto it. It
   * lies in the current document (the last segment took >= 1 token). */
  c->doc_offset -= 1;

  int64_t *input_ids = c->input_ids + row * S, *labels = c->labels + row * S;
  memcpy(input_ids, win, (size_t)S * sizeof *win);
  for (int64_t u = 0; u < S; u++)
    labels[u] = label_of(c, win[u + 1]);
  return 0;
}

/* pad: a document gives a row when it has an input/label pair. */
static inline bool pad_usable(int64_t n_tokens) { return n_tokens >= 2; }

static int pad_row(cpdl__collate_t *c, int64_t row) {
  const int64_t S = c->params.seq_len;
  int64_t skipped = 0;
  for (;;) {
    int rc = load_next_doc(c);
    if (rc)
      return rc;
    c->have_doc = false; /* consumed whole: the next row takes the next document */
    if (pad_usable(c->doc.n_tokens))
      break;
    rc = check_skipped(c, ++skipped, "fewer than 2 tokens");
    if (rc)
      return rc;
  }
  int64_t len = c->doc.n_tokens < S + 1 ? c->doc.n_tokens : S + 1;
  int64_t real = len - 1;
  copy_tokens(c->window, &c->doc, 0, len);
  int64_t *input_ids = c->input_ids + row * S, *labels = c->labels + row * S;
  int64_t *attention_mask = c->aux0 + row * S;
  for (int64_t u = 0; u < real; u++) {
    input_ids[u] = c->window[u];
    labels[u] = label_of(c, c->window[u + 1]);
    attention_mask[u] = 1;
  }
  for (int64_t u = real; u < S; u++) {
    input_ids[u] = c->params.padding_token_id;
    labels[u] = IGNORE_INDEX;
    attention_mask[u] = 0;
  }
  return 0;
}

/* Input/label pairs [at, at + len) of the current document, from its offset, then padding
 * to at + padded: pad token, -100, loss 0, positions continuing 0, 1, ... */
static void thd_place(cpdl__collate_t *c, int64_t at, int64_t len, int64_t padded) {
  int64_t *input_ids = c->input_ids + at, *labels = c->labels + at;
  int64_t *position_ids = c->aux0 + at, *loss_mask = c->aux1 + at;
  copy_tokens(c->window, &c->doc, c->doc_offset, len + 1);
  for (int64_t u = 0; u < len; u++) {
    input_ids[u] = c->window[u];
    labels[u] = label_of(c, c->window[u + 1]);
    loss_mask[u] = labels[u] != IGNORE_INDEX;
  }
  for (int64_t u = 0; u < padded; u++)
    position_ids[u] = u;
  for (int64_t u = len; u < padded; u++) {
    input_ids[u] = c->params.padding_token_id;
    labels[u] = IGNORE_INDEX;
    loss_mask[u] = 0;
  }
  c->doc_offset += len;
}

/* Mode thd's packing decision, the one rule thd_row and the step count follow: a
 * document with `pairs` input/label pairs left, in a row of S filled up to `at`: false if
 * it waits for the next row (it no longer fits beside the row's documents); else *len of
 * its pairs go here, padded to *padded (a document longer than a whole row fills it). */
static bool thd_fit(int64_t S, int64_t m, int64_t at, int64_t pairs, int64_t *len,
                    int64_t *padded) {
  int64_t p = pairs + (m - pairs % m) % m;
  if (p <= S - at) {
    *len = pairs;
    *padded = p;
    return true;
  }
  if (at > 0)
    return false;
  *len = *padded = S; /* pairs > S: this row is all of it, the rest continues */
  return true;
}

/* The one row of mode thd (see the file's top): documents padded to a multiple of m. */
static int thd_row(cpdl__collate_t *c) {
  const int64_t S = c->params.seq_len, m = c->params.thd_multiple;
  int32_t *cu = c->cu_seqlens, *cu_padded = c->cu_seqlens_padded;
  int64_t at = 0, n = 0, skipped = 0, max_len = 0;
  cu[0] = cu_padded[0] = 0;
  while (at < S) {
    if (!c->have_doc || c->doc_offset + 1 >= c->doc.n_tokens) { /* no pair left */
      uint64_t next_epoch;
      int64_t next_position;
      cpdl__sampler_tell(c->sampler, &next_epoch, &next_position);
      if (n > 0 && next_epoch != c->doc_epoch)
        break; /* the epoch's last row: the next epoch starts a row of its own */
      int rc = next_doc(c, c->have_doc && c->doc_offset == 0, &skipped, "fewer than 2 tokens");
      if (rc)
        return rc;
      continue;
    }
    int64_t len, padded;
    if (!thd_fit(S, m, at, c->doc.n_tokens - 1 - c->doc_offset, &len, &padded))
      break; /* carried to the next row */
    thd_place(c, at, len, padded);
    skipped = 0;
    n++;
    cu[n] = (int32_t)(cu[n - 1] + len);
    cu_padded[n] = (int32_t)(at + padded);
    at += padded;
  }
  for (int64_t u = at; u < S; u++) { /* the tail: padding of the last document */
    c->input_ids[u] = c->params.padding_token_id;
    c->labels[u] = IGNORE_INDEX;
    c->aux1[u] = 0;
    c->aux0[u] = c->aux0[u - 1] + 1;
  }
  cu_padded[n] = (int32_t)S;
  for (int64_t k = 1; k <= n; k++)
    if (cu_padded[k] - cu_padded[k - 1] > max_len)
      max_len = cu_padded[k] - cu_padded[k - 1];
  for (int64_t k = n + 1; k < c->thd_capacity; k++) {
    cu[k] = cu[n];
    cu_padded[k] = (int32_t)S;
  }
  c->max_seqlen[0] = (int32_t)max_len;
  return 0;
}

void cpdl__collate_count_init(cpdl__collate_count_t *count, const cpdl__collate_t *c) {
  memset(count, 0, sizeof *count);
  count->kind = c->params.kind;
  count->seq_len = c->params.seq_len;
  count->batch = c->params.batch;
  count->thd_multiple = c->params.thd_multiple;
}

void cpdl__collate_count_doc(cpdl__collate_count_t *count, uint64_t epoch, int64_t n_tokens) {
  const int64_t S = count->seq_len;
  if (count->thd_multiple > 0) {
    if (n_tokens < 2)
      return; /* no pair: skipped, as thd_row skips it */
    if (count->at > 0 && epoch != count->epoch) {
      count->rows++; /* the previous epoch's last row */
      count->at = 0;
    }
    count->epoch = epoch;
    for (int64_t pairs = n_tokens - 1; pairs > 0;) {
      int64_t len, padded;
      if (!thd_fit(S, count->thd_multiple, count->at, pairs, &len, &padded)) {
        count->rows++;
        count->at = 0;
        continue;
      }
      pairs -= len;
      if ((count->at += padded) == S) {
        count->rows++;
        count->at = 0;
      }
    }
  } else if (count->kind == CPDL__COLLATE_PACK) {
    count->tokens += (uint64_t)n_tokens;
    /* windows of S + 1 tokens sharing one: the stream's first token is no label */
    count->rows = count->tokens > 0 ? (count->tokens - 1) / (uint64_t)S : 0;
  } else {
    count->rows += pad_usable(n_tokens);
  }
}

uint64_t cpdl__collate_count_steps(const cpdl__collate_count_t *count) {
  /* thd: a row still open is the last epoch's last row, ended with padding */
  unsigned __int128 rows = count->rows + (count->thd_multiple > 0 && count->at > 0);
  unsigned __int128 steps = rows / (unsigned)count->batch;
  return steps > UINT64_MAX ? UINT64_MAX : (uint64_t)steps;
}

int64_t cpdl__collate_thd_len(const int32_t *cu_padded, int64_t capacity, int64_t seq_len) {
  int64_t lo = 0, hi = capacity - 1; /* the first k in [lo, hi] with cu_padded[k] >= S */
  while (lo < hi) {
    int64_t mid = lo + (hi - lo) / 2;
    if ((int64_t)cu_padded[mid] >= seq_len)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo + 1;
}

static void set_thd_field(cpdl_tensor_t *f, const char *name, int64_t len, const int32_t *data) {
  memset(f, 0, sizeof *f);
  f->name = name;
  f->dtype = CPDL_DTYPE_INT32;
  f->ndim = 1;
  f->shape[0] = len;
  f->data = data;
}

static void set_field(cpdl_tensor_t *f, const char *name, const cpdl__collate_t *c, const int64_t *data) {
  f->name = name;
  f->dtype = CPDL_DTYPE_INT64;
  f->ndim = 2;
  f->shape[0] = c->params.batch;
  f->shape[1] = c->params.seq_len;
  f->shape[2] = f->shape[3] = 0;
  f->data = data;
}

int cpdl__collate_next(cpdl__collate_t *c, cpdl_tensor_t *fields, int *n_fields) {
  c->current = (c->current + 1) % c->n_sets;
  c->input_ids = c->sets[c->current][0];
  c->labels = c->sets[c->current][1];
  c->aux0 = c->sets[c->current][2];
  c->aux1 = c->sets[c->current][3];
  if (c->params.thd_multiple > 0) {
    c->cu_seqlens = c->thd_sets[c->current][0];
    c->cu_seqlens_padded = c->thd_sets[c->current][1];
    c->max_seqlen = c->thd_sets[c->current][2];
    int rc = thd_row(c);
    if (rc)
      return rc;
    set_field(&fields[0], "input_ids", c, c->input_ids);
    set_field(&fields[1], "labels", c, c->labels);
    set_field(&fields[2], "position_ids", c, c->aux0);
    set_field(&fields[3], "loss_mask", c, c->aux1);
    set_thd_field(&fields[4], "cu_seqlens", c->thd_capacity, c->cu_seqlens);
    set_thd_field(&fields[5], "cu_seqlens_padded", c->thd_capacity, c->cu_seqlens_padded);
    set_thd_field(&fields[6], "max_seqlen", 1, c->max_seqlen);
    *n_fields = 7;
    return 0;
  }
  for (int64_t row = 0; row < c->params.batch; row++) {
    int rc = c->params.kind == CPDL__COLLATE_PACK ? pack_row(c, row) : pad_row(c, row);
    if (rc)
      return rc;
  }
  set_field(&fields[0], "input_ids", c, c->input_ids);
  set_field(&fields[1], "labels", c, c->labels);
  if (c->params.kind == CPDL__COLLATE_PACK) {
    set_field(&fields[2], "position_ids", c, c->aux0);
    set_field(&fields[3], "_packed_seq_ids", c, c->aux1);
    *n_fields = 4;
  } else {
    set_field(&fields[2], "attention_mask", c, c->aux0);
    *n_fields = 3;
  }
  return 0;
}

void cpdl__collate_cursor(const cpdl__collate_t *c, uint64_t *epoch, int64_t *position, int64_t *offset) {
  if (c->have_doc) {
    *epoch = c->doc_epoch;
    *position = c->doc_position;
    *offset = c->doc_offset;
  } else {
    cpdl__sampler_tell(c->sampler, epoch, position);
    *offset = 0;
  }
}

int cpdl__collate_seek(cpdl__collate_t *c, uint64_t epoch, int64_t position, int64_t offset) {
  if (offset < 0 || (offset > 0 && c->params.kind == CPDL__COLLATE_PAD))
    return cpdl__error(CPDL_EARG, "collate: cursor offset %lld is invalid for %s (expected %s)",
                       (long long)offset, c->params.kind == CPDL__COLLATE_PAD ? "pad" : "pack",
                       c->params.kind == CPDL__COLLATE_PAD ? "0" : ">= 0");
  int rc = cpdl__sampler_seek(c->sampler, epoch, position);
  if (rc)
    return rc;
  c->have_doc = false;
  if (offset == 0)
    return 0; /* the next row starts at the document's beginning: load it lazily */
  rc = load_next_doc(c);
  if (rc)
    return rc;
  if (offset >= c->doc.n_tokens) {
    c->have_doc = false;
    (void)cpdl__sampler_seek(c->sampler, epoch, position);
    return cpdl__error(CPDL_EARG,
                       "collate: cursor offset %lld is past the end of the document at epoch %llu "
                       "position %lld (%lld tokens); was the state saved with another source?",
                       (long long)offset, (unsigned long long)epoch, (long long)position,
                       (long long)c->doc.n_tokens);
  }
  c->doc_offset = offset;
  return 0;
}
