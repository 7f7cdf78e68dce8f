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
 *   fills it and continues in the next. Adds loss_mask (float32, the one
 *   loss_mask dtype) and, int32, cu_seqlens (real lengths) and
 *   cu_seqlens_padded, each of capacity S/m + 1 entries whose tail repeats
 *   the last boundary (the row counts its n+1 valid ones: collate_lengths),
 *   and max_seqlen [1]. Names and dtypes: the vocabulary (cpdl/fields.h).
 * Both: loss_on_eot = 0 turns labels equal to the EOT token into -100.
 *   Which documents a thd row holds is decided by cpdl__thd_plan_row from
 *   lengths alone, the code that also counts an epoch's thd rows.
 * Invariant: the cursor (document at (epoch, position), token offset in it)
 * is where the next row's window starts; it is all the state, and a seek to
 * it is all a caller needs to produce any row. Each reader (readers[k]) keeps
 * the token view of the document it read last across rows: valid because a
 * reader is used by one thread at a time, and a generated source keeps a view
 * until that thread's next read. Pack and pad rows are filled from a given
 * start by any reader (cpdl__collate_row_at): rows of one step are written by
 * several threads at once, each with its own reader, into disjoint rows.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define IGNORE_INDEX (-100)

/* The build is -O2, where gcc 12 vectorizes only loops it is asked to: the
 * row loops below (widening, labels, ids) run at memory speed only when
 * vectorized (as prep_exec.c's). */
#if defined(__GNUC__) && !defined(__clang__)
#define HOT __attribute__((optimize("tree-vectorize", "vect-cost-model=dynamic")))
#else
#define HOT
#endif

/* A reader: the document it read last, when have_doc. */
typedef struct reader {
  bool have_doc;
  cpdl__sample_t doc;
  uint64_t doc_epoch;
  int64_t doc_position;
} reader_t;

struct cpdl__collate {
  cpdl__collate_params_t params;
  cpdl__doc_order_t order;
  /* The cursor: the next row starts at token `offset` of document
   * `position` of `epoch` (pack, thd); pad: the next document to consider. */
  uint64_t epoch;
  int64_t position, offset;
  /* The readers; [0] serves the cursor (collate_row, thd). */
  reader_t readers[CPDL__COLLATE_READERS];
  int64_t doc_offset; /* thd_place's read offset */
  /* Output buffers [B, S] and a window of S + 1 tokens, allocated once.
   * The four pointers name the set being written; with double_buffer the
   * two sets of `sets` take turns, so the previous step's set stays intact. */
  int64_t *input_ids, *labels, *aux0, *aux1; /* aux: position/seq ids or attention mask */
  float *loss_mask; /* thd: aux1's set holds loss_mask as float32 (the one loss_mask dtype) */
  int64_t *sets[2][4];
  int32_t *cu_seqlens, *cu_seqlens_padded, *max_seqlen; /* thd: the set being written */
  int32_t *thd_sets[2][3];
  int64_t *doc_ids, *doc_id_sets[2];                     /* thd_doc_ids */
  int64_t thd_capacity;                                  /* entries of each cu_seqlens */
  int64_t thd_entries[2]; /* per set: the entries n+1 of its cu_seqlens that are valid */
  int n_sets, current;
  int64_t *window; /* thd: a piece's S + 1 tokens, widened */
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
  if (params->thd_multiple > 0)
    ok = ok && (c->window = malloc(window_bytes));
  if (!ok) {
    cpdl__collate_destroy(c);
    return cpdl__error(-ENOMEM, "collate: no memory for 4 buffers of %zu bytes (batch %d x seq_len %lld)",
                       bytes, params->batch, (long long)params->seq_len);
  }
  *out = c;
  return 0;
}

void cpdl__collate_single_buffer(cpdl__collate_t *c) {
  if (c->n_sets < 2)
    return;
  for (int b = 0; b < 4; b++) {
    free(c->sets[1][b]);
    c->sets[1][b] = NULL;
  }
  for (int b = 0; b < 3; b++) {
    free(c->thd_sets[1][b]);
    c->thd_sets[1][b] = NULL;
  }
  free(c->doc_id_sets[1]);
  c->doc_id_sets[1] = NULL;
  c->n_sets = 1;
  c->current = 0; /* the first begin() stays on set 0 */
  c->params.double_buffer = false;
}

uint64_t cpdl__collate_buffer_bytes(const cpdl__collate_t *c, uint64_t *set_bytes) {
  /* Mirrors cpdl__collate_create's allocations (sizes it checked there). */
  uint64_t elems = (uint64_t)c->params.batch * (uint64_t)c->params.seq_len;
  uint64_t set = (c->params.kind == CPDL__COLLATE_PACK ? 4u : 3u) * elems * sizeof(int64_t);
  if (c->params.thd_multiple > 0) {
    set += (2 * (uint64_t)c->thd_capacity + 1) * sizeof(int32_t);
    if (c->params.thd_doc_ids)
      set += (uint64_t)(c->thd_capacity - 1) * sizeof(int64_t);
  }
  if (set_bytes)
    *set_bytes = set;
  return (uint64_t)c->n_sets * set + ((uint64_t)c->params.seq_len + 1) * sizeof(int64_t);
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
HOT static void copy_tokens(int64_t *dst, const cpdl__sample_t *doc, int64_t from, int64_t count) {
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
static int load_doc(cpdl__collate_t *c, reader_t *rd, uint64_t epoch, int64_t position) {
  if (rd->have_doc && rd->doc_epoch == epoch && rd->doc_position == position)
    return 0;
  rd->have_doc = false;
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
  rd->doc = doc;
  rd->doc_epoch = epoch;
  rd->doc_position = position;
  rd->have_doc = true;
  return 0;
}

/* Token i of doc, widened. */
static int64_t token_at(const cpdl__sample_t *doc, int64_t i) {
  int64_t v;
  copy_tokens(&v, doc, i, 1);
  return v;
}

/* A row that the feed's index says exists ran past the epoch's end: the
 * source changed under the index (or the index is wrong). */
static int ended_inside(uint64_t epoch, const char *what) {
  return cpdl__error(CPDL_ESOURCE, "collate: epoch %llu ended inside a %s row (the source's "
                     "documents changed while it was open?)", (unsigned long long)epoch, what);
}

static inline int64_t label_of(const cpdl__collate_t *c, int64_t token) {
  if (!c->params.loss_on_eot && c->params.eot_token >= 0 && token == c->params.eot_token)
    return IGNORE_INDEX;
  return token;
}

/* labels[u] = label_of(next[u]) for u < n, the test hoisted out of the loop. */
HOT static void put_labels(const cpdl__collate_t *c, int64_t *labels, const int64_t *next,
                           int64_t n) {
  if (c->params.loss_on_eot || c->params.eot_token < 0) {
    memcpy(labels, next, (size_t)n * sizeof *labels);
    return;
  }
  const int64_t eot = c->params.eot_token;
  for (int64_t u = 0; u < n; u++)
    labels[u] = next[u] == eot ? IGNORE_INDEX : next[u];
}

/* A pack segment's ids: positions [t, end) hold document `ordinal` of the row. */
HOT static void put_segment_ids(int64_t *seq_ids, int64_t *position_ids, int64_t t, int64_t end,
                                int64_t ordinal, bool continuous) {
  for (int64_t u = t; u < end; u++)
    seq_ids[u] = ordinal;
  if (continuous)
    for (int64_t u = t; u < end; u++)
      position_ids[u] = u;
  else
    for (int64_t u = t; u < end; u++)
      position_ids[u] = u - t;
}

HOT static void fill_value(int64_t *out, int64_t n, int64_t value) {
  for (int64_t u = 0; u < n; u++)
    out[u] = value;
}

/* Row `row` from the cursor (epoch, *position, *offset), which moves past it.
 * The window of S + 1 tokens goes straight into input_ids (its first S) and
 * labels (its last S, shifted by one): labels[u] is the label of input_ids[u
 * + 1], and labels[S-1] that of the window's last token. */
static int pack_row(cpdl__collate_t *c, reader_t *rd, int64_t row, uint64_t epoch,
                    int64_t *position, int64_t *offset) {
  const int64_t S = c->params.seq_len;
  int64_t *input_ids = c->input_ids + row * S, *labels = c->labels + row * S;
  int64_t *position_ids = c->aux0 + row * S, *seq_ids = c->aux1 + row * S;
  int64_t t = 0, ordinal = 0, pos = *position, off = *offset, last = 0;
  while (t < S + 1) {
    int rc = load_doc(c, rd, epoch, pos);
    if (rc)
      return rc == CPDL_EEOF ? ended_inside(epoch, "pack") : rc;
    if (off >= rd->doc.n_tokens) {
      pos++;
      off = 0;
      continue;
    }
    int64_t take = rd->doc.n_tokens - off;
    if (take > S + 1 - t)
      take = S + 1 - t;
    int64_t end = t + take < S ? t + take : S; /* input positions of this segment */
    copy_tokens(input_ids + t, &rd->doc, off, end - t);
    last = token_at(&rd->doc, off + take - 1);
    put_segment_ids(seq_ids, position_ids, t, end, ++ordinal, c->params.position_ids != 0);
    t += take;
    off += take;
  }
  /* The window's last token starts the next window: step back onto it. It
   * lies in the current document (the last segment took >= 1 token). */
  *position = pos;
  *offset = off - 1;
  put_labels(c, labels, input_ids + 1, S - 1);
  labels[S - 1] = label_of(c, last);
  return 0;
}

/* Row `row` from document *position on (the first of >= 2 tokens), which
 * moves past it. */
static int pad_row(cpdl__collate_t *c, reader_t *rd, int64_t row, uint64_t epoch,
                   int64_t *position) {
  const int64_t S = c->params.seq_len;
  for (;;) {
    int rc = load_doc(c, rd, epoch, *position);
    if (rc)
      return rc == CPDL_EEOF ? ended_inside(epoch, "pad") : rc;
    ++*position; /* consumed whole: the next row takes the next document */
    if (rd->doc.n_tokens >= 2)
      break;
  }
  int64_t len = rd->doc.n_tokens < S + 1 ? rd->doc.n_tokens : S + 1;
  int64_t real = len - 1;
  int64_t *input_ids = c->input_ids + row * S, *labels = c->labels + row * S;
  int64_t *attention_mask = c->aux0 + row * S;
  copy_tokens(input_ids, &rd->doc, 0, real);
  put_labels(c, labels, input_ids + 1, real - 1);
  labels[real - 1] = label_of(c, token_at(&rd->doc, real));
  fill_value(attention_mask, real, 1);
  fill_value(input_ids + real, S - real, c->params.padding_token_id);
  fill_value(labels + real, S - real, IGNORE_INDEX);
  fill_value(attention_mask + real, S - real, 0);
  return 0;
}

/* Input/label pairs [at, at + len) of the current document, from its offset, then padding
 * to at + padded: pad token, -100, loss 0, positions continuing 0, 1, ... */
static void thd_place(cpdl__collate_t *c, int64_t at, int64_t len, int64_t padded) {
  int64_t *input_ids = c->input_ids + at, *labels = c->labels + at;
  int64_t *position_ids = c->aux0 + at;
  float *loss_mask = c->loss_mask + at;
  copy_tokens(c->window, &c->readers[0].doc, c->doc_offset, len + 1);
  for (int64_t u = 0; u < len; u++) {
    input_ids[u] = c->window[u];
    labels[u] = label_of(c, c->window[u + 1]);
    loss_mask[u] = labels[u] != IGNORE_INDEX ? 1.0f : 0.0f;
  }
  for (int64_t u = 0; u < padded; u++)
    position_ids[u] = u;
  for (int64_t u = len; u < padded; u++) {
    input_ids[u] = c->params.padding_token_id;
    labels[u] = IGNORE_INDEX;
    loss_mask[u] = 0.0f;
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
  int rc = load_doc(c, &c->readers[0], c->epoch, position);
  if (rc)
    return rc == CPDL_EEOF ? ended_inside(c->epoch, "thd") : rc;
  if (offset + len + 1 > c->readers[0].doc.n_tokens)
    return ended_inside(c->epoch, "thd");
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
    c->loss_mask[u] = 0.0f;
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
        c->loss_mask[at + u] = 0.0f;
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

/* Field `id` of the vocabulary (cpdl/fields.h): its name and dtype. */
static void set_field(cpdl_tensor_t *f, cpdl_field_id_t id, int ndim, int64_t dim0, int64_t dim1) {
  memset(f, 0, sizeof *f);
  f->name = cpdl_field_name(id);
  f->dtype = cpdl_field_info(id)->dtype;
  f->ndim = ndim;
  f->shape[0] = dim0;
  f->shape[1] = ndim > 1 ? dim1 : 0;
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
    c->loss_mask = (float *)c->aux1; /* B*S floats fit the int64 buffer */
    c->doc_ids = c->doc_id_sets[c->current];
  }
}

int cpdl__collate_row(cpdl__collate_t *c, int64_t row) {
  if (row < 0 || row >= c->params.batch)
    return cpdl__error(CPDL_EARG, "collate: row %lld is not in [0, batch %d)", (long long)row,
                       c->params.batch);
  if (c->params.thd_multiple > 0)
    return thd_row(c);
  if (c->params.kind == CPDL__COLLATE_PACK)
    return pack_row(c, &c->readers[0], row, c->epoch, &c->position, &c->offset);
  return pad_row(c, &c->readers[0], row, c->epoch, &c->position);
}

int cpdl__collate_row_at(cpdl__collate_t *c, int reader, int64_t row, uint64_t epoch,
                         int64_t position, int64_t offset) {
  if (row < 0 || row >= c->params.batch || reader < 0 || reader >= CPDL__COLLATE_READERS ||
      c->params.thd_multiple > 0 || position < 0 || offset < 0 ||
      (offset > 0 && c->params.kind == CPDL__COLLATE_PAD))
    return cpdl__error(CPDL_EARG, "collate: row %lld (batch %d) by reader %d from position %lld "
                       "offset %lld%s", (long long)row, c->params.batch, reader,
                       (long long)position, (long long)offset,
                       c->params.thd_multiple > 0 ? " in mode thd (rows are planned in order)" : "");
  reader_t *rd = &c->readers[reader];
  if (c->params.kind == CPDL__COLLATE_PACK)
    return pack_row(c, rd, row, epoch, &position, &offset);
  return pad_row(c, rd, row, epoch, &position);
}

void cpdl__collate_forget(cpdl__collate_t *c, int reader) {
  if (reader >= 0 && reader < CPDL__COLLATE_READERS)
    c->readers[reader].have_doc = false;
}

int cpdl__collate_spec(const cpdl__collate_params_t *p, cpdl_tensor_t *fields, int *n_fields) {
  static const cpdl_field_id_t pack[] = {CPDL_FIELD_INPUT_IDS, CPDL_FIELD_LABELS,
                                         CPDL_FIELD_POSITION_IDS, CPDL_FIELD_PACKED_SEQ_IDS};
  static const cpdl_field_id_t pad[] = {CPDL_FIELD_INPUT_IDS, CPDL_FIELD_LABELS,
                                        CPDL_FIELD_ATTENTION_MASK};
  static const cpdl_field_id_t thd[] = {CPDL_FIELD_INPUT_IDS, CPDL_FIELD_LABELS,
                                        CPDL_FIELD_POSITION_IDS, CPDL_FIELD_LOSS_MASK};
  const cpdl_field_id_t *ids =
      p->thd_multiple > 0 ? thd : p->kind == CPDL__COLLATE_PACK ? pack : pad;
  int n2 = p->thd_multiple > 0 || p->kind == CPDL__COLLATE_PACK ? 4 : 3;
  for (int i = 0; i < n2; i++) /* [batch, seq_len], each in the vocabulary's dtype */
    set_field(&fields[i], ids[i], 2, p->batch, p->seq_len);
  *n_fields = n2;
  if (p->thd_multiple > 0) {
    int64_t capacity = p->seq_len / p->thd_multiple + 1;
    set_field(&fields[4], CPDL_FIELD_CU_SEQLENS, 1, capacity, 0);
    set_field(&fields[5], CPDL_FIELD_CU_SEQLENS_PADDED, 1, capacity, 0);
    set_field(&fields[6], CPDL_FIELD_MAX_SEQLEN, 1, 1, 0);
    *n_fields = 7;
    if (p->thd_doc_ids) {
      set_field(&fields[7], CPDL_FIELD_DOC_IDS, 1, capacity - 1, 0);
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
