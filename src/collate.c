/* collate.c — documents in, [batch, seq_len] int64 tensors out.
 *
 * Documents come in the order of a cpdl__doc_order_t: document `position`
 * of epoch `epoch` of the global order (docs/design.md#the-global-order); an
 * epoch ends after its last position (the read returns CPDL_EEOF), and the
 * collate never reads past it.
 * pack: documents (in that order) form one token stream. Row windows
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
 *   fills it and continues in the next. Adds loss_mask and, int32, cu_seqlens
 *   (real lengths) and cu_seqlens_padded, each of capacity S/m + 1 entries
 *   whose tail repeats the last boundary, and max_seqlen [1].
 * Both: loss_on_eot = 0 turns labels equal to the EOT token into -100.
 *   Which documents a thd row holds is decided by cpdl__thd_plan_row from
 *   lengths alone, the code that also counts an epoch's thd rows.
 * Invariant: the cursor (document at (epoch, position), token offset in it)
 * is where the next row's window starts; it is all the state, and a seek to
 * it is all a caller needs to produce any row. The current document's token
 * view is kept across rows: valid because the collate is its source's only
 * reader and reads one document at a time (generated sources keep a view
 * until the next read).
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define IGNORE_INDEX (-100)

struct cpdl__collate {
  cpdl__collate_params_t params;
  cpdl__doc_order_t order;
  /* The cursor: the next row starts at token `offset` of document
   * `position` of `epoch` (pack, thd); pad: the next document to consider. */
  uint64_t epoch;
  int64_t position, offset;
  /* The document last read, when have_doc. */
  bool have_doc;
  cpdl__sample_t doc;
  uint64_t doc_epoch;
  int64_t doc_position;
  int64_t doc_offset; /* thd_place's read offset */
  /* Output buffers [B, S] and a window of S + 1 tokens, allocated once.
   * The four pointers name the set being written; with double_buffer the
   * two sets of `sets` take turns, so the previous step's set stays intact. */
  int64_t *input_ids, *labels, *aux0, *aux1; /* aux: position/seq ids or attention mask */
  int64_t *sets[2][4];
  int32_t *cu_seqlens, *cu_seqlens_padded, *max_seqlen; /* thd: the set being written */
  int32_t *thd_sets[2][3];
  int64_t *doc_ids, *doc_id_sets[2];                     /* thd_doc_ids */
  int64_t thd_capacity;                                  /* entries of each cu_seqlens */
  int64_t thd_entries[2]; /* per set: the entries n+1 of its cu_seqlens that are valid */
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

int cpdl__collate_create(const cpdl__collate_params_t *params, const cpdl__doc_order_t *order,
                         cpdl__collate_t **out) {
  *out = NULL;
  if (params->kind != CPDL__COLLATE_PACK && params->kind != CPDL__COLLATE_PAD)
    return cpdl__error(CPDL_EARG, "collate: unknown kind %d", (int)params->kind);
  if (params->seq_len < 1 || params->batch < 1)
    return cpdl__error(CPDL_EARG, "collate: seq_len %lld and batch %d must both be >= 1",
                       (long long)params->seq_len, params->batch);
  if (params->position_ids != 0 && params->position_ids != 1)
    return cpdl__error(CPDL_EARG, "collate: position_ids is %d; expected 0 (restart) or 1 (continuous)",
                       params->position_ids);
  if (!order || !order->read || !order->length)
    return cpdl__error(CPDL_EARG, "collate: a document order (read and length) is required");
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
  c->order = *order;
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
    if (params->thd_doc_ids)
      for (int set = 0; set < c->n_sets; set++) {
        c->doc_id_sets[set] = malloc((size_t)(c->thd_capacity - 1) * sizeof(int64_t));
        ok = ok && c->doc_id_sets[set];
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
  for (int set = 0; set < 2; set++)
    free(c->doc_id_sets[set]);
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
  default: /* 8, checked in load_doc */
    memcpy(dst, p, (size_t)count * 8);
    break;
  }
}

/* Make document `position` of `epoch` the loaded one (read unless it is
 * already). \return 0, CPDL_EEOF (past the epoch's last document), a read error. */
static int load_doc(cpdl__collate_t *c, uint64_t epoch, int64_t position) {
  if (c->have_doc && c->doc_epoch == epoch && c->doc_position == position)
    return 0;
  c->have_doc = false;
  cpdl__sample_t doc;
  int rc = c->order.read(c->order.arg, epoch, position, &doc);
  if (rc == CPDL_EEOF)
    return rc;
  if (rc)
    return cpdl__error_prefix(rc, "collate: reading the document at epoch %llu position %lld",
                              (unsigned long long)epoch, (long long)position);
  if (doc.n_tokens < 0 || (doc.n_tokens > 0 && !doc.tokens) ||
      (doc.token_bytes != 2 && doc.token_bytes != 4 && doc.token_bytes != 8))
    return cpdl__error(CPDL_ESOURCE,
                       "collate: the document at position %lld came back with %lld tokens of %d "
                       "bytes at %p; expected >= 0 tokens of 2, 4 or 8 bytes",
                       (long long)position, (long long)doc.n_tokens, doc.token_bytes, doc.tokens);
  c->doc = doc;
  c->doc_epoch = epoch;
  c->doc_position = position;
  c->have_doc = true;
  return 0;
}

/* A row that the feed's index says exists ran past the epoch's end: the
 * source changed under the index (or the index is wrong). */
static int ended_inside(const cpdl__collate_t *c, const char *what) {
  return cpdl__error(CPDL_ESOURCE, "collate: epoch %llu ended inside a %s row (the source's "
                     "documents changed while it was open?)", (unsigned long long)c->epoch, what);
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
  int64_t t = 0, ordinal = 0;
  while (t < S + 1) {
    int rc = load_doc(c, c->epoch, c->position);
    if (rc)
      return rc == CPDL_EEOF ? ended_inside(c, "pack") : rc;
    if (c->offset >= c->doc.n_tokens) {
      c->position++;
      c->offset = 0;
      continue;
    }
    int64_t take = c->doc.n_tokens - c->offset;
    if (take > S + 1 - t)
      take = S + 1 - t;
    copy_tokens(win + t, &c->doc, c->offset, take);
    ordinal++;
    int64_t end = t + take < S ? t + take : S; /* input positions of this segment */
    for (int64_t u = t; u < end; u++) {
      seq_ids[u] = ordinal;
      position_ids[u] = c->params.position_ids ? u : u - t;
    }
    t += take;
    c->offset += take;
  }
  /* The window's last token starts the next window: step back onto it. It
   * lies in the current document (the last segment took >= 1 token). */
  c->offset -= 1;

  int64_t *input_ids = c->input_ids + row * S, *labels = c->labels + row * S;
  memcpy(input_ids, win, (size_t)S * sizeof *win);
  for (int64_t u = 0; u < S; u++)
    labels[u] = label_of(c, win[u + 1]);
  return 0;
}

static int pad_row(cpdl__collate_t *c, int64_t row) {
  const int64_t S = c->params.seq_len;
  for (;;) {
    int rc = load_doc(c, c->epoch, c->position);
    if (rc)
      return rc == CPDL_EEOF ? ended_inside(c, "pad") : rc;
    c->position++; /* consumed whole: the next row takes the next document */
    if (c->doc.n_tokens >= 2)
      break;
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

int cpdl__thd_plan_row(int64_t seq_len, int64_t multiple, const cpdl__doc_order_t *order,
                       uint64_t epoch, int64_t *position, int64_t *offset,
                       cpdl__thd_place_fn place, void *place_arg) {
  const int64_t S = seq_len, m = multiple;
  int64_t at = 0, n = 0, pos = *position, off = *offset, len_doc = -1, len_pos = -1;
  while (at < S) {
    if (len_pos != pos) {
      int rc = order->length(order->arg, epoch, pos, &len_doc);
      if (rc == CPDL_EEOF)
        break; /* the epoch's last row may be short: its tail is padding */
      if (rc)
        return rc;
      len_pos = pos;
    }
    if (off + 1 >= len_doc) { /* no input/label pair left in this document */
      pos++;
      off = 0;
      continue;
    }
    int64_t len = len_doc - 1 - off;
    int64_t padded = len + (m - len % m) % m;
    if (padded > S - at) {
      if (n > 0)
        break; /* carried to the next row */
      len = padded = S; /* longer than a row: it fills this one and continues */
    }
    if (place) {
      int rc = place(place_arg, pos, off, len, padded, at);
      if (rc)
        return rc;
    }
    n++;
    off += len;
    at += padded;
  }
  /* Normalize: the next row starts at a document with a pair left (or at the
   * epoch's end), so that equal positions compare equal. */
  for (;;) {
    if (len_pos != pos) {
      int rc = order->length(order->arg, epoch, pos, &len_doc);
      if (rc == CPDL_EEOF)
        break;
      if (rc)
        return rc;
      len_pos = pos;
    }
    if (off + 1 < len_doc)
      break;
    pos++;
    off = 0;
  }
  *position = pos;
  *offset = off;
  return n > 0;
}

typedef struct thd_fill {
  cpdl__collate_t *c;
  int64_t n;
} thd_fill_t;

static int thd_put(void *arg, int64_t position, int64_t offset, int64_t len, int64_t padded,
                   int64_t at) {
  thd_fill_t *f = arg;
  cpdl__collate_t *c = f->c;
  int rc = load_doc(c, c->epoch, position);
  if (rc)
    return rc == CPDL_EEOF ? ended_inside(c, "thd") : rc;
  if (offset + len + 1 > c->doc.n_tokens)
    return ended_inside(c, "thd");
  c->doc_offset = offset;
  thd_place(c, at, len, padded);
  f->n++;
  c->cu_seqlens[f->n] = (int32_t)(c->cu_seqlens[f->n - 1] + len);
  c->cu_seqlens_padded[f->n] = (int32_t)(at + padded);
  return 0;
}

/* The one row of mode thd (see the file's top): documents padded to a
 * multiple of m. \return 0, CPDL_EEOF (the epoch holds no more pairs), an error. */
static int thd_row(cpdl__collate_t *c) {
  const int64_t S = c->params.seq_len;
  int32_t *cu = c->cu_seqlens, *cu_padded = c->cu_seqlens_padded;
  cu[0] = cu_padded[0] = 0;
  thd_fill_t fill = {.c = c, .n = 0};
  int64_t pos = c->position, off = c->offset;
  int rc = cpdl__thd_plan_row(S, c->params.thd_multiple, &c->order, c->epoch, &pos, &off, thd_put,
                              &fill);
  if (rc < 0)
    return rc;
  if (rc == 0)
    return CPDL_EEOF;
  c->position = pos;
  c->offset = off;
  int64_t n = fill.n, at = cu_padded[n], max_len = 0;
  c->thd_entries[c->current] = n + 1;
  if (c->doc_ids) /* filled by cpdl__collate_thd_pieces; rows planned here name none */
    for (int64_t k = 0; k < c->thd_capacity - 1; k++)
      c->doc_ids[k] = -1;
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

int cpdl__collate_thd_pieces(cpdl__collate_t *c, const cpdl__thd_piece_t *pieces, int64_t n) {
  const int64_t S = c->params.seq_len;
  int32_t *cu = c->cu_seqlens, *cu_padded = c->cu_seqlens_padded;
  if (c->params.thd_multiple <= 0 || n < 1 || n >= c->thd_capacity)
    return cpdl__error(CPDL_EARG, "collate: a thd row of %lld pieces (capacity %lld) in mode %s",
                       (long long)n, (long long)c->thd_capacity,
                       c->params.thd_multiple > 0 ? "thd" : "other than thd");
  cu[0] = cu_padded[0] = 0;
  thd_fill_t fill = {.c = c, .n = 0};
  int64_t at = 0, max_len = 0;
  for (int64_t k = 0; k < n; k++) {
    const cpdl__thd_piece_t *pc = &pieces[k];
    if (pc->padded < pc->len || pc->padded % c->params.thd_multiple || at + pc->padded > S)
      return cpdl__error(CPDL_EARG, "collate: thd piece %lld (%lld pairs padded to %lld at %lld) "
                         "does not fit a row of %lld in multiples of %d", (long long)k,
                         (long long)pc->len, (long long)pc->padded, (long long)at, (long long)S,
                         c->params.thd_multiple);
    if (pc->position < 0) { /* padding: a row with no document, or a block's rest */
      for (int64_t u = 0; u < pc->padded; u++) {
        c->input_ids[at + u] = c->params.padding_token_id;
        c->labels[at + u] = IGNORE_INDEX;
        c->aux1[at + u] = 0;
        c->aux0[at + u] = u;
      }
      fill.n++;
      cu[fill.n] = cu[fill.n - 1];
      cu_padded[fill.n] = (int32_t)(at + pc->padded);
    } else {
      int rc = thd_put(&fill, pc->position, pc->offset, pc->len, pc->padded, at);
      if (rc)
        return rc;
    }
    at += pc->padded;
    if (pc->padded > max_len)
      max_len = pc->padded;
  }
  if (at != S)
    return cpdl__error(CPDL_EARG, "collate: thd pieces cover %lld of the row's %lld positions",
                       (long long)at, (long long)S);
  c->thd_entries[c->current] = n + 1;
  for (int64_t k = n + 1; k < c->thd_capacity; k++) {
    cu[k] = cu[n];
    cu_padded[k] = (int32_t)S;
  }
  c->max_seqlen[0] = (int32_t)max_len;
  if (c->doc_ids) {
    for (int64_t k = 0; k < n; k++)
      c->doc_ids[k] = pieces[k].position < 0 ? -1 : pieces[k].doc_id;
    for (int64_t k = n; k < c->thd_capacity - 1; k++)
      c->doc_ids[k] = -1;
  }
  return 0;
}

void cpdl__collate_lengths(const cpdl__collate_t *c, int64_t *rows, int n_fields) {
  cpdl_tensor_t spec[CPDL_MAX_FIELDS];
  int n = CPDL_MAX_FIELDS;
  cpdl__collate_spec(&c->params, spec, &n);
  for (int i = 0; i < n_fields; i++)
    rows[i] = i < n ? spec[i].shape[0] : 0;
  /* thd: fields 4 and 5 are cu_seqlens and cu_seqlens_padded (collate_spec),
   * whose valid entries the row that filled them counted. */
  if (c->params.thd_multiple > 0 && n_fields > 5)
    rows[4] = rows[5] = c->thd_entries[c->current];
}

static void set_thd_field(cpdl_tensor_t *f, const char *name, int64_t len, const int32_t *data) {
  memset(f, 0, sizeof *f);
  f->name = name;
  f->dtype = CPDL_DTYPE_INT32;
  f->ndim = 1;
  f->shape[0] = len;
  f->data = data;
}

void cpdl__collate_begin(cpdl__collate_t *c) {
  c->current = (c->current + 1) % c->n_sets;
  c->input_ids = c->sets[c->current][0];
  c->labels = c->sets[c->current][1];
  c->aux0 = c->sets[c->current][2];
  c->aux1 = c->sets[c->current][3];
  if (c->params.thd_multiple > 0) {
    c->cu_seqlens = c->thd_sets[c->current][0];
    c->cu_seqlens_padded = c->thd_sets[c->current][1];
    c->max_seqlen = c->thd_sets[c->current][2];
    c->doc_ids = c->doc_id_sets[c->current];
  }
}

int cpdl__collate_row(cpdl__collate_t *c, int64_t row) {
  if (row < 0 || row >= c->params.batch)
    return cpdl__error(CPDL_EARG, "collate: row %lld is not in [0, batch %d)", (long long)row,
                       c->params.batch);
  if (c->params.thd_multiple > 0)
    return thd_row(c);
  return c->params.kind == CPDL__COLLATE_PACK ? pack_row(c, row) : pad_row(c, row);
}

int cpdl__collate_spec(const cpdl__collate_params_t *p, cpdl_tensor_t *fields, int *n_fields) {
  static const char *const pack[] = {"input_ids", "labels", "position_ids", "_packed_seq_ids"};
  static const char *const pad[] = {"input_ids", "labels", "attention_mask"};
  static const char *const thd[] = {"input_ids", "labels", "position_ids", "loss_mask"};
  const char *const *names = p->thd_multiple > 0 ? thd : p->kind == CPDL__COLLATE_PACK ? pack : pad;
  int n2 = p->thd_multiple > 0 || p->kind == CPDL__COLLATE_PACK ? 4 : 3;
  for (int i = 0; i < n2; i++) {
    memset(&fields[i], 0, sizeof fields[i]);
    fields[i].name = names[i];
    fields[i].dtype = CPDL_DTYPE_INT64;
    fields[i].ndim = 2;
    fields[i].shape[0] = p->batch;
    fields[i].shape[1] = p->seq_len;
  }
  *n_fields = n2;
  if (p->thd_multiple > 0) {
    int64_t capacity = p->seq_len / p->thd_multiple + 1;
    set_thd_field(&fields[4], "cu_seqlens", capacity, NULL);
    set_thd_field(&fields[5], "cu_seqlens_padded", capacity, NULL);
    set_thd_field(&fields[6], "max_seqlen", 1, NULL);
    *n_fields = 7;
    if (p->thd_doc_ids) {
      set_thd_field(&fields[7], "doc_ids", capacity - 1, NULL);
      fields[7].dtype = CPDL_DTYPE_INT64;
      *n_fields = 8;
    }
  }
  return 0;
}

void cpdl__collate_fields(const cpdl__collate_t *c, cpdl_tensor_t *fields, int *n_fields) {
  cpdl__collate_spec(&c->params, fields, n_fields);
  /* aux0: position_ids (pack, thd) or attention_mask (pad); aux1:
   * _packed_seq_ids (pack) or loss_mask (thd) */
  const void *data[8] = {c->input_ids, c->labels, c->aux0, c->aux1,
                         c->cu_seqlens, c->cu_seqlens_padded, c->max_seqlen, c->doc_ids};
  for (int i = 0; i < *n_fields; i++)
    fields[i].data = data[i];
}

int cpdl__collate_next(cpdl__collate_t *c, cpdl_tensor_t *fields, int *n_fields) {
  cpdl__collate_begin(c);
  for (int64_t row = 0; row < c->params.batch; row++) {
    int rc = cpdl__collate_row(c, row);
    if (rc)
      return rc;
  }
  cpdl__collate_fields(c, fields, n_fields);
  return 0;
}

void cpdl__collate_cursor(const cpdl__collate_t *c, uint64_t *epoch, int64_t *position, int64_t *offset) {
  *epoch = c->epoch;
  *position = c->position;
  *offset = c->offset;
}

int cpdl__collate_seek(cpdl__collate_t *c, uint64_t epoch, int64_t position, int64_t offset) {
  if (position < 0 || offset < 0 || (offset > 0 && c->params.kind == CPDL__COLLATE_PAD))
    return cpdl__error(CPDL_EARG, "collate: cursor position %lld offset %lld is invalid for %s "
                       "(expected offset %s)", (long long)position, (long long)offset,
                       c->params.kind == CPDL__COLLATE_PAD ? "pad" : "pack",
                       c->params.kind == CPDL__COLLATE_PAD ? "0" : ">= 0");
  c->epoch = epoch;
  c->position = position;
  c->offset = offset;
  return 0;
}
