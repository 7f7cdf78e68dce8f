/* test_collate.c — pack and pad on an in-test source of known documents.
 * Hand-written expectations for small cases; for larger ones a reference
 * model built independently from the definition (one token stream in
 * global order, row g's window = stream[g*S, g*S + S]) checked token by
 * token, in every token width, both position modes, with EOT masking,
 * documents spanning rows and steps, empty documents, and resume. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define EOT 99

/* ---- the fake source ------------------------------------------------------ */
typedef struct fake {
  int n_docs;
  int64_t *lens;
  int64_t **docs;     /* int64 values; served in token_bytes width */
  int token_bytes;
  void *wide;         /* the last read, converted */
  int reads;
} fake_t;

static int fake_read(void *arg, int64_t index, cpdl__sample_t *out) {
  fake_t *f = arg;
  if (index < 0 || index >= f->n_docs)
    return cpdl__error(CPDL_ESOURCE, "fake: index %lld", (long long)index);
  int64_t n = f->lens[index];
  /* Like the synthetic plugin: a buffer valid until the next read. */
  free(f->wide);
  f->wide = malloc((size_t)(n ? n : 1) * (size_t)f->token_bytes);
  for (int64_t i = 0; i < n; i++) {
    int64_t v = f->docs[index][i];
    if (f->token_bytes == 2) {
      uint16_t w = (uint16_t)v;
      memcpy((char *)f->wide + 2 * i, &w, 2);
    } else if (f->token_bytes == 4) {
      uint32_t w = (uint32_t)v;
      memcpy((char *)f->wide + 4 * i, &w, 4);
    } else {
      memcpy((char *)f->wide + 8 * i, &v, 8);
    }
  }
  out->tokens = f->wide;
  out->n_tokens = n;
  out->token_bytes = f->token_bytes;
  f->reads++;
  return 0;
}

/* Documents with lengths from a little LCG (0 and 1 included); token j of
 * document d is 1000*d + j + 1 (never EOT), the last token is EOT. */
static fake_t *fake_make(int n_docs, int max_len, int token_bytes, unsigned seed) {
  fake_t *f = calloc(1, sizeof *f);
  f->n_docs = n_docs;
  f->token_bytes = token_bytes;
  f->lens = calloc(n_docs, sizeof *f->lens);
  f->docs = calloc(n_docs, sizeof *f->docs);
  uint64_t x = seed * 2654435761u + 1;
  for (int d = 0; d < n_docs; d++) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    int64_t len = (int64_t)((x >> 33) % (uint64_t)(max_len + 1));
    f->lens[d] = len;
    f->docs[d] = malloc((size_t)(len ? len : 1) * sizeof(int64_t));
    for (int64_t j = 0; j < len; j++)
      f->docs[d][j] = (j == len - 1) ? EOT : (1000 * d + j + 1) % 60000 + 100;
  }
  return f;
}

static fake_t *fake_literal(int n_docs, const int64_t *const *docs, const int64_t *lens) {
  fake_t *f = calloc(1, sizeof *f);
  f->n_docs = n_docs;
  f->token_bytes = 4;
  f->lens = calloc(n_docs, sizeof *f->lens);
  f->docs = calloc(n_docs, sizeof *f->docs);
  for (int d = 0; d < n_docs; d++) {
    f->lens[d] = lens[d];
    f->docs[d] = malloc((size_t)(lens[d] ? lens[d] : 1) * sizeof(int64_t));
    memcpy(f->docs[d], docs[d], (size_t)lens[d] * sizeof(int64_t));
  }
  return f;
}

/* A source of the one document doc[0 .. len). */
static fake_t *fake_one(const int64_t *doc, int64_t len) { return fake_literal(1, &doc, &len); }

static void fake_free(fake_t *f) {
  for (int d = 0; d < f->n_docs; d++)
    free(f->docs[d]);
  free(f->docs);
  free(f->lens);
  free(f->wide);
  free(f);
}

/* ---- helpers --------------------------------------------------------------- */
/* The document order the collate reads: the global order's permutation,
 * rolling into the next epoch at each epoch's end (position p of the
 * collate's epoch 0 is position p mod n of epoch p / n), so that a test may
 * take any number of steps. */
typedef struct order {
  fake_t *f;
  cpdl__perm_t *perm;
  bool bounded; /* one epoch only: CPDL_EEOF after its last position */
} order_t;

static int64_t order_doc(order_t *o, int64_t position) {
  int64_t n = o->f->n_docs;
  return cpdl__perm_at(o->perm, (uint64_t)(position / n), position % n);
}

static int order_read(void *arg, uint64_t epoch, int64_t position, cpdl__sample_t *out) {
  (void)epoch;
  order_t *o = arg;
  if (o->bounded && position >= o->f->n_docs)
    return CPDL_EEOF;
  return fake_read(o->f, order_doc(o, position), out);
}

static int order_length(void *arg, uint64_t epoch, int64_t position, int64_t *n) {
  (void)epoch;
  order_t *o = arg;
  if (o->bounded && position >= o->f->n_docs)
    return CPDL_EEOF;
  *n = o->f->lens[order_doc(o, position)];
  return 0;
}

typedef struct rig {
  order_t *order;
  cpdl__collate_t *collate;
} rig_t;

static cpdl__collate_params_t params(cpdl__collate_kind_t kind, int64_t S, int B) {
  cpdl__collate_params_t p = {.kind = kind, .seq_len = S, .batch = B, .padding_token_id = 7,
                              .position_ids = 0, .loss_on_eot = 1, .eot_token = EOT};
  return p;
}

static rig_t rig_open(fake_t *f, const cpdl__collate_params_t *p, uint64_t seed) {
  rig_t r = {0};
  r.order = calloc(1, sizeof *r.order);
  r.order->f = f;
  assert_int_equal(cpdl__perm_create(f->n_docs, seed, 0, &r.order->perm), 0);
  cpdl__doc_order_t order = {.read = order_read, .length = order_length, .arg = r.order};
  assert_int_equal(cpdl__collate_create(p, &order, &r.collate), 0);
  return r;
}

static void rig_close(rig_t *r) {
  cpdl__collate_destroy(r->collate);
  cpdl__perm_destroy(r->order->perm);
  free(r->order);
}

/* mode thd: the valid entries of the last step's cu_seqlens, as the collate
 * reports them (cpdl__collate_lengths): the same for both cu fields, every
 * other field full. */
static int64_t thd_entries(const cpdl__collate_t *collate, const cpdl_tensor_t *fields,
                           int n_fields) {
  int64_t rows[CPDL_MAX_FIELDS];
  cpdl__collate_lengths(collate, rows, n_fields);
  assert_int_equal(rows[4], rows[5]);
  for (int i = 0; i < n_fields; i++)
    if (i != 4 && i != 5)
      assert_int_equal(rows[i], fields[i].shape[0]);
  assert_true(rows[5] >= 2 && rows[5] <= fields[5].shape[0]);
  return rows[5];
}

/* mode thd's loss_mask: float32 [1, S], the one loss_mask dtype (cpdl/fields.h). */
static const float *loss_field(const cpdl_tensor_t *fields, int n, int64_t S) {
  for (int i = 0; i < n; i++)
    if (strcmp(fields[i].name, "loss_mask") == 0) {
      assert_int_equal(fields[i].dtype, CPDL_DTYPE_FLOAT32);
      assert_int_equal(fields[i].ndim, 2);
      assert_int_equal(fields[i].shape[0], 1);
      assert_int_equal(fields[i].shape[1], S);
      return fields[i].data;
    }
  fail_msg("field loss_mask missing");
  return NULL;
}

static const int64_t *field(const cpdl_tensor_t *fields, int n, const char *name, int64_t B, int64_t S) {
  for (int i = 0; i < n; i++) {
    if (strcmp(fields[i].name, name) == 0) {
      assert_int_equal(fields[i].dtype, CPDL_DTYPE_INT64);
      assert_int_equal(fields[i].ndim, 2);
      assert_int_equal(fields[i].shape[0], B);
      assert_int_equal(fields[i].shape[1], S);
      return fields[i].data;
    }
  }
  fail_msg("field %s missing", name);
  return NULL;
}

static void assert_row(const int64_t *got, const int64_t *want, int64_t S) {
  for (int64_t t = 0; t < S; t++) {
    if (got[t] != want[t])
      fail_msg("position %lld: got %lld, want %lld", (long long)t, (long long)got[t], (long long)want[t]);
  }
}

/* ---- hand-written cases ---------------------------------------------------- */

/* One document [10 11 12 13 EOT]: the order is trivially known, so every
 * value can be written out. Stream: 10 11 12 13 99 10 11 12 13 99 10 …
 * S = 4, B = 2, windows overlap by one token. */
static void test_pack_literal(void **state) {
  (void)state;
  const int64_t doc[] = {10, 11, 12, 13, EOT};
  for (int mode = 0; mode < 2; mode++) {
    fake_t *f = fake_one(doc, 5);
    cpdl__collate_params_t p = params(CPDL__COLLATE_PACK, 4, 2);
    p.position_ids = mode;
    rig_t r = rig_open(f, &p, 1);
    cpdl_tensor_t fl[8];
    int nf = 0;
    assert_int_equal(cpdl__collate_next(r.collate, fl, &nf), 0);
    assert_int_equal(nf, 4);
    const int64_t *in = field(fl, nf, "input_ids", 2, 4), *lab = field(fl, nf, "labels", 2, 4);
    const int64_t *pos = field(fl, nf, "position_ids", 2, 4), *seq = field(fl, nf, "_packed_seq_ids", 2, 4);
    /* row 0: window 10 11 12 13 99 */
    assert_row(in, (int64_t[]){10, 11, 12, 13}, 4);
    assert_row(lab, (int64_t[]){11, 12, 13, EOT}, 4);
    assert_row(seq, (int64_t[]){1, 1, 1, 1}, 4);
    assert_row(pos, (int64_t[]){0, 1, 2, 3}, 4);
    /* row 1: window 99 10 11 12 13 — the EOT closes document 1, then 2 */
    assert_row(in + 4, (int64_t[]){EOT, 10, 11, 12}, 4);
    assert_row(lab + 4, (int64_t[]){10, 11, 12, 13}, 4);
    assert_row(seq + 4, (int64_t[]){1, 2, 2, 2}, 4);
    assert_row(pos + 4, mode ? (int64_t[]){0, 1, 2, 3} : (int64_t[]){0, 0, 1, 2}, 4);
    /* the cursor sits on the window's last token: offset 3 of the document */
    uint64_t epoch;
    int64_t position, offset;
    cpdl__collate_cursor(r.collate, &epoch, &position, &offset);
    assert_int_equal(epoch, 0);
    assert_int_equal(position, 1); /* the one document's second pass (the test order rolls) */
    assert_int_equal(offset, 3);
    /* step 1 row 0: window 13 99 10 11 12 (continues across the step) */
    assert_int_equal(cpdl__collate_next(r.collate, fl, &nf), 0);
    assert_row(in, (int64_t[]){13, EOT, 10, 11}, 4);
    assert_row(lab, (int64_t[]){EOT, 10, 11, 12}, 4);
    assert_row(seq, (int64_t[]){1, 1, 2, 2}, 4);
    assert_row(pos, mode ? (int64_t[]){0, 1, 2, 3} : (int64_t[]){0, 1, 0, 1}, 4);
    rig_close(&r);
    fake_free(f);
  }
}

static void test_pack_eot_masking(void **state) {
  (void)state;
  const int64_t doc[] = {10, 11, 12, 13, EOT};
  fake_t *f = fake_one(doc, 5);
  cpdl__collate_params_t p = params(CPDL__COLLATE_PACK, 4, 2);
  p.loss_on_eot = 0;
  rig_t r = rig_open(f, &p, 1);
  cpdl_tensor_t fl[8];
  int nf = 0;
  assert_int_equal(cpdl__collate_next(r.collate, fl, &nf), 0);
  const int64_t *in = field(fl, nf, "input_ids", 2, 4), *lab = field(fl, nf, "labels", 2, 4);
  assert_row(lab, (int64_t[]){11, 12, 13, -100}, 4);
  assert_row(lab + 4, (int64_t[]){10, 11, 12, 13}, 4);
  assert_row(in + 4, (int64_t[]){EOT, 10, 11, 12}, 4); /* inputs keep their EOT */
  rig_close(&r);
  fake_free(f);
}

/* mode thd (thd_multiple 4, S 8): one document of 20 tokens = 19 input/label pairs. Rows 1
 * and 2 are 8 pairs each (longer than a row: it fills it and continues); row 3 holds the
 * last 3 pairs padded to 4, the next document (the same one, next epoch: 19 pairs, padded 20)
 * no longer fits and waits, so the tail pads the last document to the row's end. */
static void test_thd_literal(void **state) {
  (void)state;
  int64_t doc[20];
  for (int j = 0; j < 20; j++)
    doc[j] = 100 + j;
  fake_t *f = fake_one(doc, 20);
  cpdl__collate_params_t p = params(CPDL__COLLATE_PACK, 8, 1);
  p.thd_multiple = 4;
  rig_t r = rig_open(f, &p, 1);
  cpdl_tensor_t fl[8];
  int nf = 0;
  for (int row = 0; row < 4; row++) {
    assert_int_equal(cpdl__collate_next(r.collate, fl, &nf), 0);
    assert_int_equal(nf, 7);
    const int64_t *in = field(fl, nf, "input_ids", 1, 8), *lab = field(fl, nf, "labels", 1, 8);
    const int64_t *pos = field(fl, nf, "position_ids", 1, 8);
    const float *loss = loss_field(fl, nf, 8);
    assert_string_equal(fl[4].name, "cu_seqlens");
    assert_string_equal(fl[5].name, "cu_seqlens_padded");
    assert_string_equal(fl[6].name, "max_seqlen");
    assert_int_equal(fl[4].dtype, CPDL_DTYPE_INT32);
    assert_int_equal(fl[4].shape[0], 3); /* capacity S/4 + 1 */
    assert_int_equal(fl[6].shape[0], 1);
    const int32_t *cu = fl[4].data, *cup = fl[5].data, *max_len = fl[6].data;
    assert_row(pos, (int64_t[]){0, 1, 2, 3, 4, 5, 6, 7}, 8);
    assert_int_equal(max_len[0], 8);
    assert_int_equal(thd_entries(r.collate, fl, nf), 2);
    if (row < 2 || row == 3) { /* 8 pairs of the document from offset 0, 8 or 0 again */
      int64_t off = row == 1 ? 8 : 0;
      for (int u = 0; u < 8; u++) {
        assert_int_equal(in[u], 100 + off + u);
        assert_int_equal(lab[u], 101 + off + u);
        assert_true(loss[u] == 1.0f);
      }
      assert_int_equal(cu[1], 8);
    } else {
      assert_row(in, (int64_t[]){116, 117, 118, 7, 7, 7, 7, 7}, 8);
      assert_row(lab, (int64_t[]){117, 118, 119, -100, -100, -100, -100, -100}, 8);
      for (int u = 0; u < 8; u++)
        assert_true(loss[u] == (u < 3 ? 1.0f : 0.0f));
      assert_int_equal(cu[1], 3);
      assert_int_equal(cu[2], 3); /* the capacity's tail repeats the last boundary */
    }
    assert_int_equal(cup[0], 0);
    assert_int_equal(cup[1], 8);
    assert_int_equal(cup[2], 8);
  }
  rig_close(&r);
  fake_free(f);
}

/* thd: several documents in one row, each padded to a multiple of 4 with positions restarting. */
static void test_thd_documents(void **state) {
  (void)state;
  const int64_t a[] = {10, 11, 12}, b[] = {20, 21}, c[] = {30, 31, 32, 33, 34, 35};
  const int64_t *docs[] = {a, b, c};
  const int64_t lens[] = {3, 2, 6};
  fake_t *f = fake_literal(3, docs, lens);
  cpdl__collate_params_t p = params(CPDL__COLLATE_PACK, 16, 1);
  p.thd_multiple = 4;
  rig_t r = rig_open(f, &p, 9);
  cpdl_tensor_t fl[8];
  int nf = 0;
  assert_int_equal(cpdl__collate_next(r.collate, fl, &nf), 0);
  const int64_t *in = field(fl, nf, "input_ids", 1, 16), *pos = field(fl, nf, "position_ids", 1, 16);
  const int32_t *cu = fl[4].data, *cup = fl[5].data;
  /* pairs: a 2, b 1, c 5 -> padded 4, 4, 8 = 16 in whatever order the permutation chose */
  int64_t n = thd_entries(r.collate, fl, nf) - 1;
  assert_int_equal(n, 3);
  assert_int_equal(cu[3], 8);
  for (int64_t k = 0; k < n; k++) {
    int64_t start = cup[k], len = cu[k + 1] - cu[k], padded = cup[k + 1] - cup[k];
    assert_int_equal(padded, len == 5 ? 8 : 4);
    int64_t first = in[start];
    const int64_t *d = first == 10 ? a : first == 20 ? b : c;
    for (int64_t u = 0; u < padded; u++) {
      assert_int_equal(pos[start + u], u);
      assert_int_equal(in[start + u], u < len ? d[u] : 7);
    }
  }
  assert_int_equal(((const int32_t *)fl[6].data)[0], 8);
  rig_close(&r);
  fake_free(f);
}

/* thd: documents whose pairs are already a multiple of 4 keep exactly their length (no
 * extra chunk), the others are padded up to the next multiple and no further: pairs 4, 8
 * and 2 are padded 4, 8 and 4, which fill S = 16 exactly in whatever order the permutation
 * chose, so the row holds all three and no tail. */
static void test_thd_exact_padding(void **state) {
  (void)state;
  const int64_t a[] = {10, 11, 12, 13, 14}, b[] = {20, 21, 22, 23, 24, 25, 26, 27, 28},
                c[] = {30, 31, 32};
  const int64_t *docs[] = {a, b, c};
  const int64_t lens[] = {5, 9, 3};
  fake_t *f = fake_literal(3, docs, lens);
  cpdl__collate_params_t p = params(CPDL__COLLATE_PACK, 16, 1);
  p.thd_multiple = 4;
  for (uint64_t seed = 1; seed <= 6; seed++) { /* several orders of the three */
    rig_t r = rig_open(f, &p, seed);
    cpdl_tensor_t fl[8];
    int nf = 0;
    assert_int_equal(cpdl__collate_next(r.collate, fl, &nf), 0);
    const int64_t *in = field(fl, nf, "input_ids", 1, 16);
    const int32_t *cu = fl[4].data, *cup = fl[5].data;
    assert_int_equal(thd_entries(r.collate, fl, nf), 4);
    for (int k = 0; k < 3; k++) {
      int32_t len = cu[k + 1] - cu[k], padded = cup[k + 1] - cup[k];
      int64_t first = in[cup[k]];
      assert_int_equal(len, first == 10 ? 4 : first == 20 ? 8 : 2);
      assert_int_equal(padded, len == 2 ? 4 : len);
    }
    assert_int_equal(((const int32_t *)fl[6].data)[0], 8);
    rig_close(&r);
  }
  fake_free(f);
}

/* thd, schedule=balanced: a row made of given pieces (cpdl__collate_thd_pieces) in the
 * given order — part of a document, a padding entry, whole ones — with doc_ids. */
static void test_thd_pieces(void **state) {
  (void)state;
  const int64_t a[] = {10, 11, 12}, b[] = {20, 21}, c[] = {30, 31, 32, 33, 34, 35};
  const int64_t *docs[] = {a, b, c};
  const int64_t lens[] = {3, 2, 6};
  fake_t *f = fake_literal(3, docs, lens);
  cpdl__collate_params_t p = params(CPDL__COLLATE_PACK, 16, 1);
  p.thd_multiple = 4;
  p.thd_doc_ids = true;
  rig_t r = rig_open(f, &p, 9);
  int64_t at[3]; /* the position of each document in the order */
  for (int64_t q = 0; q < 3; q++)
    at[order_doc(r.order, q)] = q;
  cpdl__thd_piece_t pieces[] = {
      {at[2], 1, 4, 4, 102}, /* c's pairs 1..4: inputs 31..34, labels 32..35 */
      {at[0], 0, 2, 4, 100},
      {-1, 0, 0, 4, 555},    /* padding: doc_ids -1 whatever the piece says */
      {at[1], 0, 1, 4, 101},
  };
  cpdl__collate_begin(r.collate);
  assert_int_equal(cpdl__collate_thd_pieces(r.collate, pieces, 4), 0);
  cpdl_tensor_t fl[8];
  int nf = 0;
  cpdl__collate_fields(r.collate, fl, &nf);
  assert_int_equal(nf, 8);
  assert_string_equal(fl[7].name, "doc_ids");
  assert_int_equal(fl[7].dtype, CPDL_DTYPE_INT64);
  assert_int_equal(fl[7].shape[0], 4); /* S / m */
  const int64_t *in = field(fl, nf, "input_ids", 1, 16), *lab = field(fl, nf, "labels", 1, 16);
  const int64_t *pos = field(fl, nf, "position_ids", 1, 16);
  const float *loss = loss_field(fl, nf, 16);
  const int64_t want_in[16] = {31, 32, 33, 34, 10, 11, 7, 7, 7, 7, 7, 7, 20, 7, 7, 7};
  const int64_t want_lab[16] = {32, 33, 34, 35, 11, 12, -100, -100, -100, -100, -100, -100, 21,
                                -100, -100, -100};
  for (int u = 0; u < 16; u++) {
    assert_int_equal(in[u], want_in[u]);
    assert_int_equal(lab[u], want_lab[u]);
    assert_true(loss[u] == (want_lab[u] != -100 ? 1.0f : 0.0f));
    assert_int_equal(pos[u], u % 4);
  }
  const int32_t *cu = fl[4].data, *cup = fl[5].data;
  const int32_t want_cu[] = {0, 4, 6, 6, 7}, want_cup[] = {0, 4, 8, 12, 16};
  for (int k = 0; k < 5; k++) {
    assert_int_equal(cu[k], want_cu[k]);
    assert_int_equal(cup[k], want_cup[k]);
  }
  assert_int_equal(((const int32_t *)fl[6].data)[0], 4);
  const int64_t *ids = fl[7].data;
  assert_int_equal(ids[0], 102);
  assert_int_equal(ids[1], 100);
  assert_int_equal(ids[2], -1);
  assert_int_equal(ids[3], 101);
  /* Pieces that do not tile the row, or break the multiple, are refused. */
  assert_int_equal(cpdl__collate_thd_pieces(r.collate, pieces, 3), CPDL_EARG);
  assert_non_null(strstr(cpdl_last_error(), "cover 12 of the row's 16"));
  cpdl__thd_piece_t odd[] = {{at[2], 0, 5, 6, 2}, {-1, 0, 0, 10, -1}};
  assert_int_equal(cpdl__collate_thd_pieces(r.collate, odd, 2), CPDL_EARG);
  cpdl__thd_piece_t past[] = {{at[2], 3, 4, 16, 2}}; /* pairs 3..6 of a 6-token document */
  assert_true(cpdl__collate_thd_pieces(r.collate, past, 1) < 0);
  rig_close(&r);
  fake_free(f);
}

static void test_pad_literal(void **state) {
  (void)state;
  const int64_t doc[] = {10, 11, 12, 13, EOT};
  fake_t *f = fake_one(doc, 5);
  /* S = 6: padded */
  cpdl__collate_params_t p = params(CPDL__COLLATE_PAD, 6, 2);
  p.loss_on_eot = 0;
  rig_t r = rig_open(f, &p, 1);
  cpdl_tensor_t fl[8];
  int nf = 0;
  assert_int_equal(cpdl__collate_next(r.collate, fl, &nf), 0);
  assert_int_equal(nf, 3);
  const int64_t *in = field(fl, nf, "input_ids", 2, 6), *lab = field(fl, nf, "labels", 2, 6);
  const int64_t *am = field(fl, nf, "attention_mask", 2, 6);
  for (int row = 0; row < 2; row++) {
    assert_row(in + 6 * row, (int64_t[]){10, 11, 12, 13, 7, 7}, 6);
    assert_row(lab + 6 * row, (int64_t[]){11, 12, 13, -100, -100, -100}, 6);
    assert_row(am + 6 * row, (int64_t[]){1, 1, 1, 1, 0, 0}, 6);
  }
  rig_close(&r);
  /* S = 3: truncated to S + 1 tokens */
  p = params(CPDL__COLLATE_PAD, 3, 1);
  r = rig_open(f, &p, 1);
  assert_int_equal(cpdl__collate_next(r.collate, fl, &nf), 0);
  assert_row(field(fl, nf, "input_ids", 1, 3), (int64_t[]){10, 11, 12}, 3);
  assert_row(field(fl, nf, "labels", 1, 3), (int64_t[]){11, 12, 13}, 3);
  assert_row(field(fl, nf, "attention_mask", 1, 3), (int64_t[]){1, 1, 1}, 3);
  rig_close(&r);
  fake_free(f);
}

/* ---- the reference model --------------------------------------------------- */
typedef struct stream {
  int64_t n;
  int64_t *token, *doc_ord, *doc_off; /* per stream token: value, non-empty doc ordinal, offset */
} stream_t;

/* Concatenate documents in the global order (epochs rolling) until `need`
 * tokens. Independent of collate.c: no windows, no cursors. */
static stream_t stream_build(fake_t *f, uint64_t seed, int64_t need) {
  stream_t s = {0};
  s.token = malloc(need * sizeof(int64_t));
  s.doc_ord = malloc(need * sizeof(int64_t));
  s.doc_off = malloc(need * sizeof(int64_t));
  order_t o = {.f = f};
  assert_int_equal(cpdl__perm_create(f->n_docs, seed, 0, &o.perm), 0);
  int64_t ord = 0;
  for (int64_t position = 0; s.n < need; position++) {
    int64_t d = order_doc(&o, position);
    if (f->lens[d])
      ord++;
    for (int64_t j = 0; j < f->lens[d] && s.n < need; j++, s.n++) {
      s.token[s.n] = f->docs[d][j];
      s.doc_ord[s.n] = ord;
      s.doc_off[s.n] = j;
    }
  }
  cpdl__perm_destroy(o.perm);
  return s;
}

static void stream_free(stream_t *s) {
  free(s->token);
  free(s->doc_ord);
  free(s->doc_off);
}

static void check_pack(int token_bytes, int mode, int loss_on_eot, int64_t S, int B, int max_len) {
  fake_t *f = fake_make(37, max_len, token_bytes, (unsigned)(S * 31 + B));
  cpdl__collate_params_t p = params(CPDL__COLLATE_PACK, S, B);
  p.position_ids = mode;
  p.loss_on_eot = loss_on_eot;
  const int steps = 12;
  rig_t r = rig_open(f, &p, 77);
  stream_t s = stream_build(f, 77, (int64_t)steps * B * S + 1);
  int64_t *want = malloc(S * sizeof *want);
  int spanning_rows = 0;
  for (int k = 0; k < steps; k++) {
    cpdl_tensor_t fl[8];
    int nf = 0;
    assert_int_equal(cpdl__collate_next(r.collate, fl, &nf), 0);
    const int64_t *in = field(fl, nf, "input_ids", B, S), *lab = field(fl, nf, "labels", B, S);
    const int64_t *pos = field(fl, nf, "position_ids", B, S), *seq = field(fl, nf, "_packed_seq_ids", B, S);
    for (int b = 0; b < B; b++) {
      int64_t g = ((int64_t)k * B + b) * S; /* the window's first stream token */
      spanning_rows += s.doc_off[g] != 0;
      for (int64_t t = 0; t < S; t++)
        want[t] = s.token[g + t];
      assert_row(in + b * S, want, S);
      for (int64_t t = 0; t < S; t++)
        want[t] = (!loss_on_eot && s.token[g + t + 1] == EOT) ? -100 : s.token[g + t + 1];
      assert_row(lab + b * S, want, S);
      for (int64_t t = 0; t < S; t++)
        want[t] = s.doc_ord[g + t] - s.doc_ord[g] + 1;
      assert_row(seq + b * S, want, S);
      for (int64_t t = 0; t < S; t++)
        want[t] = mode ? t : (s.doc_ord[g + t] == s.doc_ord[g] ? t : s.doc_off[g + t]);
      assert_row(pos + b * S, want, S);
    }
  }
  assert_true(spanning_rows > 0); /* documents did continue across rows */
  free(want);
  stream_free(&s);
  rig_close(&r);
  fake_free(f);
}

static void test_pack_reference(void **state) {
  (void)state;
  const int widths[] = {2, 4, 8};
  for (int w = 0; w < 3; w++) {
    for (int mode = 0; mode < 2; mode++) {
      check_pack(widths[w], mode, 1, 16, 3, 12);  /* many short docs per row, some empty */
      check_pack(widths[w], mode, 0, 8, 2, 40);   /* docs span rows and steps */
    }
  }
  check_pack(4, 0, 0, 1, 1, 3); /* S = 1 */
}

static void check_pad(int token_bytes, int loss_on_eot, int64_t S, int B, int max_len) {
  fake_t *f = fake_make(29, max_len, token_bytes, (unsigned)(S + 5));
  cpdl__collate_params_t p = params(CPDL__COLLATE_PAD, S, B);
  p.loss_on_eot = loss_on_eot;
  rig_t r = rig_open(f, &p, 5);
  order_t order = {.f = f};
  assert_int_equal(cpdl__perm_create(f->n_docs, 5, 0, &order.perm), 0);
  int64_t position = 0;
  int truncated = 0, padded = 0;
  for (int k = 0; k < 10; k++) {
    cpdl_tensor_t fl[8];
    int nf = 0;
    assert_int_equal(cpdl__collate_next(r.collate, fl, &nf), 0);
    const int64_t *in = field(fl, nf, "input_ids", B, S), *lab = field(fl, nf, "labels", B, S);
    const int64_t *am = field(fl, nf, "attention_mask", B, S);
    for (int b = 0; b < B; b++) {
      int64_t d;
      do /* documents without an input/label pair are skipped */
        d = order_doc(&order, position++);
      while (f->lens[d] < 2);
      int64_t real = f->lens[d] - 1 < S ? f->lens[d] - 1 : S;
      truncated += f->lens[d] - 1 > S;
      padded += real < S;
      for (int64_t t = 0; t < S; t++) {
        int64_t want_in = t < real ? f->docs[d][t] : 7;
        int64_t want_lab = t < real ? f->docs[d][t + 1] : -100;
        if (!loss_on_eot && want_lab == EOT)
          want_lab = -100;
        assert_int_equal(in[b * S + t], want_in);
        assert_int_equal(lab[b * S + t], want_lab);
        assert_int_equal(am[b * S + t], t < real);
      }
    }
  }
  assert_true(truncated > 0 && padded > 0);
  cpdl__perm_destroy(order.perm);
  rig_close(&r);
  fake_free(f);
}

static void test_pad_reference(void **state) {
  (void)state;
  check_pad(2, 1, 10, 3, 25);
  check_pad(4, 0, 10, 3, 25);
  check_pad(8, 0, 6, 2, 15);
}

/* Seek to the cursor saved after step k reproduces the rest exactly. */
static void check_resume(cpdl__collate_kind_t kind) {
  fake_t *f = fake_make(23, 30, 2, 3);
  cpdl__collate_params_t p = params(kind, 9, 3);
  const int64_t step_elems = 3 * 9;
  int64_t (*steps)[4][27] = malloc(14 * sizeof *steps);
  rig_t a = rig_open(f, &p, 9);
  uint64_t epoch = 0;
  int64_t position = 0, offset = 0;
  int nf = 0;
  for (int k = 0; k < 14; k++) {
    cpdl_tensor_t fl[8];
    assert_int_equal(cpdl__collate_next(a.collate, fl, &nf), 0);
    for (int i = 0; i < nf; i++)
      memcpy(steps[k][i], fl[i].data, step_elems * sizeof(int64_t));
    if (k == 5)
      cpdl__collate_cursor(a.collate, &epoch, &position, &offset);
  }
  if (kind == CPDL__COLLATE_PAD)
    assert_int_equal(offset, 0);
  rig_t b = rig_open(f, &p, 9);
  assert_int_equal(cpdl__collate_seek(b.collate, epoch, position, offset), 0);
  for (int k = 6; k < 14; k++) {
    cpdl_tensor_t fl[8];
    assert_int_equal(cpdl__collate_next(b.collate, fl, &nf), 0);
    for (int i = 0; i < nf; i++)
      assert_memory_equal(steps[k][i], fl[i].data, step_elems * sizeof(int64_t));
  }
  rig_close(&a);
  rig_close(&b);
  free(steps);
  fake_free(f);
}

static void test_resume(void **state) {
  (void)state;
  check_resume(CPDL__COLLATE_PACK);
  check_resume(CPDL__COLLATE_PAD);
}

static void test_errors(void **state) {
  (void)state;
  /* an epoch ending inside a row (every document empty): an error naming
   * it, not a hang; thd: no row (CPDL_EEOF) */
  const int64_t empty[1] = {0};
  const int64_t *docs[] = {empty, empty, empty};
  const int64_t zero[] = {0, 0, 0};
  fake_t *f = fake_literal(3, docs, zero);
  cpdl__collate_params_t p = params(CPDL__COLLATE_PACK, 4, 1);
  rig_t r = rig_open(f, &p, 1);
  r.order->bounded = true;
  cpdl_tensor_t fl[8];
  int nf;
  assert_int_equal(cpdl__collate_next(r.collate, fl, &nf), CPDL_ESOURCE);
  assert_non_null(strstr(cpdl_last_error(), "ended inside a pack row"));
  rig_close(&r);
  p.thd_multiple = 2;
  r = rig_open(f, &p, 1);
  r.order->bounded = true;
  assert_int_equal(cpdl__collate_next(r.collate, fl, &nf), CPDL_EEOF);
  rig_close(&r);
  p.thd_multiple = 0;
  p.kind = CPDL__COLLATE_PAD;
  r = rig_open(f, &p, 1);
  r.order->bounded = true;
  assert_int_equal(cpdl__collate_next(r.collate, fl, &nf), CPDL_ESOURCE);
  /* pad cursors carry no offset */
  assert_int_equal(cpdl__collate_seek(r.collate, 0, 0, 1), CPDL_EARG);
  rig_close(&r);
  fake_free(f);

  const int64_t doc[] = {10, 11, EOT};
  f = fake_one(doc, 3);
  p = params(CPDL__COLLATE_PACK, 4, 1);
  r = rig_open(f, &p, 1);
  assert_int_equal(cpdl__collate_seek(r.collate, 0, -1, 0), CPDL_EARG);
  assert_int_equal(cpdl__collate_seek(r.collate, 4, 0, 2), 0);
  assert_int_equal(cpdl__collate_next(r.collate, fl, &nf), 0);
  assert_row(fl[0].data, (int64_t[]){EOT, 10, 11, EOT}, 4);
  rig_close(&r);

  cpdl__collate_kind_t kind;
  assert_int_equal(cpdl__collate_parse("pad", &kind), 0);
  assert_int_equal(kind, CPDL__COLLATE_PAD);
  assert_int_equal(cpdl__collate_parse("packed", &kind), CPDL_EARG);
  cpdl__collate_t *c = NULL;
  order_t o = {.f = f};
  assert_int_equal(cpdl__perm_create(1, 0, 0, &o.perm), 0);
  cpdl__doc_order_t order = {.read = order_read, .length = order_length, .arg = &o};
  p = params(CPDL__COLLATE_PACK, 0, 1);
  assert_int_equal(cpdl__collate_create(&p, &order, &c), CPDL_EARG);
  p = params(CPDL__COLLATE_PACK, 4, 1);
  p.position_ids = 2;
  assert_int_equal(cpdl__collate_create(&p, &order, &c), CPDL_EARG);
  p = params(CPDL__COLLATE_PACK, INT64_MAX / 4, 1 << 20);
  assert_int_equal(cpdl__collate_create(&p, &order, &c), CPDL_EOVERFLOW);
  p = params(CPDL__COLLATE_PACK, 4, 1);
  assert_int_equal(cpdl__collate_create(&p, NULL, &c), CPDL_EARG);
  assert_null(c);
  cpdl__perm_destroy(o.perm);
  fake_free(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pack_literal),
      cmocka_unit_test(test_pack_eot_masking),
      cmocka_unit_test(test_pad_literal),
      cmocka_unit_test(test_thd_literal),
      cmocka_unit_test(test_thd_documents),
      cmocka_unit_test(test_thd_exact_padding),
      cmocka_unit_test(test_thd_pieces),
      cmocka_unit_test(test_pack_reference),
      cmocka_unit_test(test_pad_reference),
      cmocka_unit_test(test_resume),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
