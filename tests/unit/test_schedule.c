/* test_schedule.c — the schedule of a global batch (src/schedule.c), checked
 * from its definition (docs/schedule.md), not from its code:
 * exact coverage (every pair of every piece in exactly one sub-sample, each
 * sub-sample on exactly the c members of its group, chunks 0..c-1 once each),
 * blocks tiled, rows (static/balanced) filled to seq_len, the modeled work
 * recomputed, no deadlock (an execution simulated: a sub-sample runs when it
 * is next on every member), determinism, the static cut against the thd
 * collate's rule, and the edges (a document longer than a row, one document,
 * an empty batch, a batch that does not fit, bad arguments). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "schedule.h"

static uint64_t rng_state;
static uint64_t rng(void) {
  rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
  return rng_state >> 33;
}
static double rng_unit(void) { return ((double)rng() + 0.5) / 2147483648.0; }

/* Long-tailed lengths: exp(normal(log median, sigma)) clipped to [1, max]. */
static int64_t rng_len(double median, double sigma, int64_t max) {
  double u1 = rng_unit(), u2 = rng_unit();
  double z = sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2);
  double v = median * exp(sigma * z);
  int64_t len = (int64_t)v;
  return len < 1 ? 1 : len > max ? max : len;
}

static cpdl__schedule_params_t params_of(cpdl__schedule_kind_t kind, int dp, int cp, int batch, int64_t S) {
  cpdl__schedule_params_t p = {kind, dp, cp, batch, S, 2 * cp, CPDL__SCHEDULE_COST_A, CPDL__SCHEDULE_COST_B};
  return p;
}

static int group_size(const cpdl__schedule_t *s, int32_t g) { return s->group_size[g]; }
static int member(const cpdl__schedule_t *s, int32_t g, int j) { return s->group_first[g] + j; }

/* ---- the checker ----------------------------------------------------------- */

/* Everything the definition promises about s built from in[0..n). */
static void check_schedule(const cpdl__schedule_t *s, const cpdl__schedule_piece_t *in, int64_t n) {
  const cpdl__schedule_params_t *p = &s->params;
  const int W = s->n_ranks;
  const int64_t S = p->seq_len, C = s->block;
  assert_int_equal(W, p->dp * p->cp);
  assert_int_equal(C, (int64_t)p->batch * S / p->cp);

  /* The split pieces: in order, each <= S, together exactly the input. */
  int64_t k = 0;
  for (int64_t i = 0; i < n; i++) {
    int64_t covered = 0;
    while (covered < in[i].len) {
      assert_true(k < s->n_pieces);
      const cpdl__schedule_piece_t *pc = &s->pieces[k++];
      assert_int_equal(pc->doc_id, in[i].doc_id);
      assert_int_equal(pc->offset, in[i].offset + covered);
      assert_true(pc->len >= 1 && pc->len <= S);
      covered += pc->len;
    }
    assert_int_equal(covered, in[i].len);
  }
  assert_int_equal(k, s->n_pieces);

  /* Per piece: the members that hold it, chunks seen. */
  const int64_t np = s->n_pieces;
  int32_t *seen_group = malloc((size_t)(np ? np : 1) * sizeof *seen_group);
  int32_t *seen_count = calloc((size_t)(np ? np : 1), sizeof *seen_count);
  uint64_t *chunk_mask = calloc((size_t)(np ? np : 1), sizeof *chunk_mask);
  int64_t *seen_padded = malloc((size_t)(np ? np : 1) * sizeof *seen_padded);
  for (int64_t i = 0; i < np; i++)
    seen_group[i] = -1;
  double total = 0;
  for (int r = 0; r < W; r++) {
    int64_t at = 0;
    double work = 0;
    int64_t row_fill = 0;
    int32_t row = 0;
    for (int64_t e = s->rank_begin[r]; e < s->rank_begin[r + 1]; e++) {
      const cpdl__schedule_sub_t *sub = &s->subs[e];
      assert_true(sub->group >= 0 && sub->group < s->n_groups);
      const int c = group_size(s, sub->group);
      assert_true(sub->chunk >= 0 && sub->chunk < c);
      assert_int_equal(member(s, sub->group, sub->chunk), r); /* the rank is the member it says */
      assert_int_equal(sub->local_start, at);   /* shares tile the block */
      assert_int_equal(sub->padded % c, 0);
      at += sub->padded / c;
      if (p->kind == CPDL__SCHEDULE_DYNAMIC) {
        if (sub->doc_id >= 0)
          assert_int_equal(sub->padded, 2 * c * ((sub->len + 2 * c - 1) / (2 * c)));
      } else {
        assert_int_equal(c, p->cp);
        assert_int_equal(sub->group, cpdl__schedule_group_id(W, p->cp, r));
        assert_int_equal(sub->chunk, r % p->cp);
        assert_int_equal(sub->padded % p->pad_multiple, 0);
        if (sub->row != row) { /* rows in order, each filled to S */
          assert_int_equal(row_fill, S);
          assert_int_equal(sub->row, row + 1);
          row = sub->row, row_fill = 0;
        }
        assert_int_equal(sub->local_start, ((int64_t)row * S + row_fill) / p->cp);
        row_fill += sub->padded;
      }
      if (sub->doc_id < 0) {
        assert_int_equal(sub->len, 0);
        assert_int_equal(sub->piece, -1);
        continue;
      }
      assert_true(sub->piece >= 0 && sub->piece < np);
      const cpdl__schedule_piece_t *pc = &s->pieces[sub->piece];
      assert_int_equal(sub->doc_id, pc->doc_id);
      assert_int_equal(sub->offset, pc->offset);
      assert_int_equal(sub->len, pc->len);
      assert_true(sub->padded >= sub->len);
      if (seen_group[sub->piece] < 0) {
        seen_group[sub->piece] = sub->group;
        seen_padded[sub->piece] = sub->padded;
      }
      assert_int_equal(seen_group[sub->piece], sub->group); /* one group per piece */
      assert_int_equal(seen_padded[sub->piece], sub->padded);
      assert_false(chunk_mask[sub->piece] >> (sub->chunk % 64) & 1 && c <= 64);
      if (c <= 64)
        chunk_mask[sub->piece] |= 1ULL << sub->chunk;
      seen_count[sub->piece]++;
      work += cpdl__schedule_cost(p, sub->len) / c;
    }
    assert_int_equal(at, C);
    if (p->kind != CPDL__SCHEDULE_DYNAMIC) {
      assert_int_equal(row, p->batch - 1);
      assert_int_equal(row_fill, S);
    }
    assert_true(fabs(work - s->rank_work[r]) <= 1e-9 * (work + 1));
    total += work;
  }
  double want_total = 0;
  for (int64_t i = 0; i < np; i++) {
    assert_true(seen_group[i] >= 0); /* every piece somewhere */
    assert_int_equal(seen_count[i], group_size(s, seen_group[i])); /* on every member, once */
    want_total += cpdl__schedule_cost(p, s->pieces[i].len);
  }
  assert_true(fabs(total - want_total) <= 1e-9 * (want_total + 1));

  /* No deadlock: run every rank's list; an entry with c > 1 runs when it is
   * the head of every member's list (a collective over the group). */
  int64_t *head = malloc((size_t)W * sizeof *head);
  for (int r = 0; r < W; r++)
    head[r] = s->rank_begin[r];
  bool progress = true;
  while (progress) {
    progress = false;
    for (int r = 0; r < W; r++) {
      if (head[r] == s->rank_begin[r + 1])
        continue;
      const cpdl__schedule_sub_t *sub = &s->subs[head[r]];
      const int c = group_size(s, sub->group);
      bool ready = true;
      for (int j = 0; j < c && ready; j++) {
        int m = member(s, sub->group, j);
        ready = head[m] < s->rank_begin[m + 1] && s->subs[head[m]].group == sub->group &&
                s->subs[head[m]].piece == sub->piece;
      }
      if (!ready)
        continue;
      for (int j = 0; j < c; j++)
        head[member(s, sub->group, j)]++;
      progress = true;
    }
  }
  for (int r = 0; r < W; r++)
    assert_int_equal(head[r], s->rank_begin[r + 1]);
  free(head);
  free(seen_group), free(seen_count), free(chunk_mask), free(seen_padded);

  /* rank_cu agrees with the entries. */
  for (int r = 0; r < W; r++) {
    int64_t ne = s->rank_begin[r + 1] - s->rank_begin[r];
    int32_t *cu = malloc((size_t)(ne + 1) * sizeof *cu), *cup = malloc((size_t)(ne + 1) * sizeof *cup);
    int32_t *cul = malloc((size_t)(ne + 1) * sizeof *cul);
    assert_int_equal(cpdl__schedule_rank_cu(s, r, cu, cup, cul), ne);
    assert_int_equal(cul[ne], C);
    for (int64_t e = 0; e < ne; e++) {
      const cpdl__schedule_sub_t *sub = &s->subs[s->rank_begin[r] + e];
      assert_int_equal(cu[e + 1] - cu[e], sub->len);
      assert_int_equal(cup[e + 1] - cup[e], sub->padded);
      assert_int_equal(cul[e], sub->local_start);
      if (p->kind != CPDL__SCHEDULE_DYNAMIC)
        assert_int_equal(cul[e + 1], cup[e + 1] / p->cp);
    }
    free(cu), free(cup), free(cul);
  }
}

/* Each document's pairs covered exactly once by the pieces of its entries. */
static void check_documents(const cpdl__schedule_t *s, const int64_t *lens, int64_t n_docs, int64_t first_offset,
                            int64_t next_doc, int64_t next_offset) {
  for (int64_t d = 0; d < n_docs; d++) {
    int64_t from = d == 0 ? first_offset : 0;
    int64_t to = d < next_doc ? lens[d] : d == next_doc ? next_offset : 0;
    if (d > next_doc || to <= from)
      to = from;
    char *hit = calloc((size_t)(lens[d] + 1), 1);
    for (int64_t i = 0; i < s->n_pieces; i++) {
      const cpdl__schedule_piece_t *pc = &s->pieces[i];
      if (pc->doc_id != d)
        continue;
      for (int64_t t = pc->offset; t < pc->offset + pc->len; t++) {
        assert_true(t >= from && t < to);
        assert_int_equal(hit[t], 0);
        hit[t] = 1;
      }
    }
    for (int64_t t = from; t < to; t++)
      assert_int_equal(hit[t], 1);
    free(hit);
  }
}

/* ---- tests ------------------------------------------------------------------- */

static void test_parse(void **state) {
  (void)state;
  cpdl__schedule_kind_t k;
  assert_int_equal(cpdl__schedule_parse("balanced", &k), 0);
  assert_int_equal(k, CPDL__SCHEDULE_BALANCED);
  assert_int_equal(cpdl__schedule_parse("dynamic", &k), 0);
  assert_int_equal(k, CPDL__SCHEDULE_DYNAMIC);
  assert_int_equal(cpdl__schedule_parse("static", &k), 0);
  assert_int_equal(k, CPDL__SCHEDULE_STATIC);
  assert_int_equal(cpdl__schedule_parse("lpt", &k), CPDL_EARG);
  assert_non_null(strstr(cpdl_last_error(), "expected static, balanced or dynamic"));
  assert_int_equal(cpdl__schedule_parse(NULL, &k), CPDL_EARG);
  assert_string_equal(cpdl__schedule_name(CPDL__SCHEDULE_DYNAMIC), "dynamic");
  double a, b;
  assert_int_equal(cpdl__schedule_cost_parse("57257,1", &a, &b), 0);
  assert_true(a == 57257 && b == 1);
  assert_int_equal(cpdl__schedule_cost_parse("0,1e-3", &a, &b), 0);
  assert_true(a == 0 && b == 1e-3);
  const char *bad[] = {"", "1", "1,", ",1", "1,2,3", "-1,1", "0,0", "x,1", "1,inf", "nan,1", "1 ,2x"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_equal(cpdl__schedule_cost_parse(bad[i], &a, &b), CPDL_EARG);
    assert_non_null(strstr(cpdl_last_error(), "a*L + b*L^2"));
  }
  cpdl__schedule_params_t p = params_of(CPDL__SCHEDULE_BALANCED, 2, 2, 1, 64);
  assert_int_equal(cpdl__schedule_check(&p), 0);
  p.seq_len = 66; /* not a multiple of 2*cp = 4 */
  assert_int_equal(cpdl__schedule_check(&p), CPDL_EARG);
  assert_non_null(strstr(cpdl_last_error(), "seq_len 66"));
  p = params_of(CPDL__SCHEDULE_BALANCED, 2, 2, 1, 64);
  p.pad_multiple = 6;
  assert_int_equal(cpdl__schedule_check(&p), CPDL_EARG);
  p = params_of(CPDL__SCHEDULE_BALANCED, 0, 2, 1, 64);
  assert_int_equal(cpdl__schedule_check(&p), CPDL_EARG);
  p = params_of(CPDL__SCHEDULE_BALANCED, 2, 2, 1, 64);
  p.cost_a = p.cost_b = 0;
  assert_int_equal(cpdl__schedule_check(&p), CPDL_EARG);
  cpdl__schedule_t *s = (cpdl__schedule_t *)&p; /* overwritten: create clears it on failure */
  assert_int_equal(cpdl__schedule_create(&p, &s), CPDL_EARG);
  assert_null(s);
}

static void test_group_table(void **state) {
  (void)state;
  for (int W = 1; W <= 12; W++) {
    cpdl__schedule_params_t p = params_of(CPDL__SCHEDULE_DYNAMIC, W, 1, 1, 64);
    cpdl__schedule_t *s;
    assert_int_equal(cpdl__schedule_create(&p, &s), 0);
    int expect = 0;
    for (int c = 1; c <= W; c++)
      expect += W / c;
    assert_int_equal(s->n_groups, expect);
    for (int c = 1; c <= W; c++)
      for (int r = 0; r < W; r++) {
        int32_t g = cpdl__schedule_group_id(W, c, r);
        if (r >= W / c * c) {
          assert_int_equal(g, -1); /* past the last whole group of c */
          continue;
        }
        assert_true(g >= 0 && g < s->n_groups);
        assert_int_equal(group_size(s, g), c);
        for (int j = 0; j < c; j++)
          assert_int_equal(member(s, g, j), r / c * c + j); /* aligned, consecutive */
      }
    assert_int_equal(cpdl__schedule_group_id(W, 0, 0), -1);
    assert_int_equal(cpdl__schedule_group_id(W, W + 1, 0), -1);
    cpdl__schedule_destroy(s);
  }
  /* The largest world: the table is two ints per group, ~W ln W groups. */
  cpdl__schedule_params_t p = params_of(CPDL__SCHEDULE_DYNAMIC, 16384, 4, 1, 64);
  cpdl__schedule_t *s;
  assert_int_equal(cpdl__schedule_create(&p, &s), 0);
  int64_t expect = 0;
  for (int c = 1; c <= 65536; c++)
    expect += 65536 / c;
  assert_int_equal(s->n_groups, expect);
  int32_t g = cpdl__schedule_group_id(65536, 3, 65532);
  assert_int_equal(group_size(s, g), 3);
  assert_int_equal(member(s, g, 0), 65532 / 3 * 3);
  assert_int_equal(cpdl__schedule_group_id(65536, 3, 65535), -1);
  g = cpdl__schedule_group_id(65536, 65536, 65535);
  assert_int_equal(g, s->n_groups - 1);
  assert_int_equal(member(s, g, 0), 0);
  cpdl__schedule_destroy(s);
  p.dp = 16385; /* dp*cp past 65536 */
  assert_int_equal(cpdl__schedule_create(&p, &s), CPDL_EARG);
}

/* The cut is the thd collate's rule (docs/thd.md): literal cases. */
static void test_cut_literal(void **state) {
  (void)state;
  /* S = 16, m = 4 (cp 2), 2 rows: 5 pairs pad 8; 3 pad 4; 6 pad 8 does not
   * fit the 4 left: next row; 40 pairs fill row 2 from pair 0 ... stop. */
  cpdl__schedule_params_t p = params_of(CPDL__SCHEDULE_STATIC, 2, 2, 1, 16);
  int64_t lens[] = {5, 3, 0, 6, 40, 2};
  cpdl__schedule_piece_t out[16];
  int64_t n_out, next_doc, next_off;
  int64_t rows = cpdl__schedule_cut(&p, lens, 6, 100, 0, out, 16, &n_out, &next_doc, &next_off);
  assert_int_equal(rows, 2);
  assert_int_equal(n_out, 3); /* row 1: 5, 3; row 2: 6 (pad 8); 40 pad 40 does not fit 8 */
  assert_int_equal(out[0].doc_id, 100);
  assert_int_equal(out[1].doc_id, 101);
  assert_int_equal(out[2].doc_id, 103);
  assert_int_equal(out[2].len, 6);
  assert_int_equal(next_doc, 4);
  assert_int_equal(next_off, 0);
  /* The next batch: 40 pairs = row 16 + row 16 + 8 pairs. */
  rows = cpdl__schedule_cut(&p, lens + 4, 2, 104, 0, out, 16, &n_out, &next_doc, &next_off);
  assert_int_equal(rows, 2);
  assert_int_equal(n_out, 2);
  assert_int_equal(out[0].len, 16);
  assert_int_equal(out[1].offset, 16);
  assert_int_equal(out[1].len, 16);
  assert_int_equal(next_doc, 0);
  assert_int_equal(next_off, 32);
  rows = cpdl__schedule_cut(&p, lens + 4, 2, 104, 32, out, 16, &n_out, &next_doc, &next_off);
  assert_int_equal(rows, 1); /* the data ran out inside row 1 */
  assert_int_equal(n_out, 2);
  assert_int_equal(out[0].offset, 32);
  assert_int_equal(out[0].len, 8);
  assert_int_equal(out[1].doc_id, 105);
  assert_int_equal(next_doc, 2);
  /* Errors. */
  assert_int_equal(cpdl__schedule_cut(&p, lens, 6, 0, 5, out, 16, &n_out, &next_doc, &next_off), CPDL_EARG);
  assert_non_null(strstr(cpdl_last_error(), "first_offset 5"));
  assert_int_equal(cpdl__schedule_cut(&p, lens, 6, 0, 0, out, 1, &n_out, &next_doc, &next_off), CPDL_EARG);
  assert_int_equal(cpdl__schedule_cut(&p, lens, 0, 0, 0, out, 16, &n_out, &next_doc, &next_off), 0);
  assert_int_equal(n_out, 0);
}

/* A model of the thd collate's rows, independent of cut: one token at a time. */
static void test_cut_matches_collate_rule(void **state) {
  (void)state;
  rng_state = 7;
  for (int trial = 0; trial < 50; trial++) {
    int cp = 1 << (rng() % 3), dp = 1 + (int)(rng() % 3);
    int64_t S = 2 * cp * (int64_t)(1 + rng() % 40);
    cpdl__schedule_params_t p = params_of(CPDL__SCHEDULE_STATIC, dp, cp, 1, S);
    int64_t lens[64];
    for (int i = 0; i < 64; i++)
      lens[i] = rng() % 5 == 0 ? (int64_t)(rng() % (3 * S)) : (int64_t)(rng() % 12);
    cpdl__schedule_piece_t out[1024];
    int64_t n_out, nd, no;
    int64_t rows = cpdl__schedule_cut(&p, lens, 64, 0, 0, out, 1024, &n_out, &nd, &no);
    assert_true(rows >= 0);
    /* Model: walk documents; rows of S; a piece's padded length fits or waits. */
    int64_t m = 2 * cp, row = 0, at = 0, k = 0;
    for (int64_t d = 0, off = 0; d < 64 && row < dp;) {
      int64_t rest = lens[d] - off;
      if (rest <= 0) {
        d++, off = 0;
        continue;
      }
      int64_t padded = (rest + m - 1) / m * m;
      if (at && padded > S - at) {
        row++, at = 0;
        continue;
      }
      int64_t take = padded > S ? S : rest;
      padded = padded > S ? S : padded;
      assert_true(k < n_out);
      assert_int_equal(out[k].doc_id, d);
      assert_int_equal(out[k].offset, off);
      assert_int_equal(out[k].len, take);
      k++;
      at += padded, off += take;
      if (off == lens[d])
        d++, off = 0;
      if (at == S)
        row++, at = 0;
    }
    assert_int_equal(k, n_out);
    assert_int_equal(rows, row + (at > 0));
  }
}

/* Coverage, tiling, work and no deadlock for every kind at dp, cp in {1,2,4},
 * batch 1 and 2, over consecutive global batches of long-tailed documents. */
static void test_coverage_matrix(void **state) {
  (void)state;
  const int sizes[] = {1, 2, 4};
  for (int kind = 0; kind < 3; kind++)
    for (int a = 0; a < 3; a++)
      for (int b = 0; b < 3; b++)
        for (int batch = 1; batch <= 2; batch++) {
          const int dp = sizes[a], cp = sizes[b];
          const int64_t S = 4096;
          rng_state = 1000 + 97 * (uint64_t)(kind * 100 + a * 10 + b) + (uint64_t)batch;
          cpdl__schedule_params_t p = params_of((cpdl__schedule_kind_t)kind, dp, cp, batch, S);
          cpdl__schedule_t *s;
          assert_int_equal(cpdl__schedule_create(&p, &s), 0);
          enum { N = 600 };
          int64_t lens[N];
          for (int i = 0; i < N; i++)
            lens[i] = rng() % 50 == 0 ? 0 : rng_len(300, 1.3, 3 * S); /* tail past a row */
          int64_t cap = (int64_t)dp * batch * S / p.pad_multiple;
          cpdl__schedule_piece_t *pieces = malloc((size_t)cap * sizeof *pieces);
          int64_t doc = 0, off = 0;
          for (int step = 0; step < 6 && doc < N; step++) {
            int64_t n, nd, no;
            int64_t rows = cpdl__schedule_cut(&p, lens + doc, N - doc, doc, off, pieces, cap, &n, &nd, &no);
            assert_true(rows >= 1);
            assert_int_equal(cpdl__schedule_build(s, pieces, n), 0);
            check_schedule(s, pieces, n);
            /* document ids are absolute; check coverage relative to this batch */
            int64_t span = nd + (no > 0) + 1;
            int64_t *rel = malloc((size_t)span * sizeof *rel);
            for (int64_t d = 0; d < span; d++)
              rel[d] = doc + d < N ? lens[doc + d] : 0;
            for (int64_t i = 0; i < s->n_pieces; i++)
              s->pieces[i].doc_id -= doc;
            check_documents(s, rel, span, off, nd, no);
            for (int64_t i = 0; i < s->n_pieces; i++)
              s->pieces[i].doc_id += doc;
            free(rel);
            doc += nd, off = no;
          }
          free(pieces);
          cpdl__schedule_destroy(s);
        }
}

static bool same_schedule(const cpdl__schedule_t *x, const cpdl__schedule_t *y) {
  if (x->n_pieces != y->n_pieces || x->fell_back != y->fell_back)
    return false;
  for (int r = 0; r <= x->n_ranks; r++)
    if (x->rank_begin[r] != y->rank_begin[r])
      return false;
  for (int64_t e = 0; e < x->rank_begin[x->n_ranks]; e++) {
    const cpdl__schedule_sub_t *a = &x->subs[e], *b = &y->subs[e];
    if (a->doc_id != b->doc_id || a->offset != b->offset || a->len != b->len || a->padded != b->padded ||
        a->local_start != b->local_start || a->group != b->group || a->chunk != b->chunk || a->row != b->row ||
        a->piece != b->piece)
      return false;
  }
  for (int r = 0; r < x->n_ranks; r++)
    if (x->rank_work[r] != y->rank_work[r])
      return false;
  return true;
}

/* Same pieces, same params: the same schedule, from a fresh object and from
 * one that scheduled other batches before (buffers reused). */
static void test_determinism(void **state) {
  (void)state;
  for (int kind = 0; kind < 3; kind++) {
    cpdl__schedule_params_t p = params_of((cpdl__schedule_kind_t)kind, 4, 2, 1, 8192);
    cpdl__schedule_t *a, *b;
    assert_int_equal(cpdl__schedule_create(&p, &a), 0);
    assert_int_equal(cpdl__schedule_create(&p, &b), 0);
    rng_state = 42;
    enum { N = 400 };
    int64_t lens[N];
    for (int i = 0; i < N; i++)
      lens[i] = rng_len(400, 1.5, 20000);
    cpdl__schedule_piece_t pieces[4 * 8192 / 4], other[4 * 8192 / 4];
    int64_t n, nd, no, n2, nd2, no2;
    cpdl__schedule_cut(&p, lens, N, 0, 0, pieces, 8192, &n, &nd, &no);
    cpdl__schedule_cut(&p, lens + nd, N - nd, nd, no, other, 8192, &n2, &nd2, &no2);
    assert_int_equal(cpdl__schedule_build(b, other, n2), 0); /* b busy with another batch first */
    assert_int_equal(cpdl__schedule_build(a, pieces, n), 0);
    assert_int_equal(cpdl__schedule_build(b, pieces, n), 0);
    assert_true(same_schedule(a, b));
    assert_int_equal(cpdl__schedule_build(a, pieces, n), 0); /* again on the same object */
    assert_true(same_schedule(a, b));
    cpdl__schedule_destroy(a);
    cpdl__schedule_destroy(b);
  }
}

static void test_edges(void **state) {
  (void)state;
  for (int kind = 0; kind < 3; kind++) {
    const int64_t S = 64;
    cpdl__schedule_params_t p = params_of((cpdl__schedule_kind_t)kind, 2, 2, 1, S);
    cpdl__schedule_t *s;
    assert_int_equal(cpdl__schedule_create(&p, &s), 0);
    /* Empty: every rank one padding entry filling its block. */
    assert_int_equal(cpdl__schedule_build(s, NULL, 0), 0);
    check_schedule(s, NULL, 0);
    for (int r = 0; r < 4; r++) {
      assert_int_equal(s->rank_begin[r + 1] - s->rank_begin[r], 1);
      assert_int_equal(s->subs[s->rank_begin[r]].doc_id, -1);
      assert_true(s->rank_work[r] == 0);
    }
    /* One document of one pair. */
    cpdl__schedule_piece_t one = {7, 0, 1};
    assert_int_equal(cpdl__schedule_build(s, &one, 1), 0);
    check_schedule(s, &one, 1);
    /* One document longer than a row: two rows' worth, split into S and S. */
    cpdl__schedule_piece_t longer = {3, 5, 2 * S};
    assert_int_equal(cpdl__schedule_build(s, &longer, 1), 0);
    check_schedule(s, &longer, 1);
    assert_int_equal(s->n_pieces, 2);
    assert_int_equal(s->pieces[1].offset, 5 + S);
    /* Longer than the batch: refused, naming the rows needed. */
    cpdl__schedule_piece_t huge = {3, 0, 2 * S + 1};
    assert_int_equal(cpdl__schedule_build(s, &huge, 1), CPDL_EARG);
    assert_non_null(strstr(cpdl_last_error(), "need 3 rows"));
    /* Bad pieces. */
    cpdl__schedule_piece_t zero = {1, 0, 0};
    assert_int_equal(cpdl__schedule_build(s, &zero, 1), CPDL_EARG);
    assert_non_null(strstr(cpdl_last_error(), "len >= 1"));
    assert_int_equal(cpdl__schedule_build(s, NULL, 1), CPDL_EARG);
    assert_int_equal(cpdl__schedule_rank_cu(s, 4, NULL, NULL, NULL), CPDL_EARG);
    cpdl__schedule_destroy(s);
  }
}

/* The point of the exercise, on a batch built for it: one row-long document
 * and many short ones. Static leaves the long one's replica far busier;
 * balanced moves short ones away from it; dynamic spreads the long one. */
static void test_balance(void **state) {
  (void)state;
  const int64_t S = 16384;
  cpdl__schedule_params_t p = params_of(CPDL__SCHEDULE_STATIC, 4, 1, 2, S);
  p.cost_a = 1000; /* attention-heavy: L^2 matters from ~1K */
  cpdl__schedule_piece_t pieces[200];
  int64_t n = 0;
  pieces[n++] = (cpdl__schedule_piece_t){0, 0, 12000};
  for (int i = 1; i < 60; i++)
    pieces[n++] = (cpdl__schedule_piece_t){i, 0, 800};
  double max[3];
  for (int kind = 0; kind < 3; kind++) {
    p.kind = (cpdl__schedule_kind_t)kind;
    cpdl__schedule_t *s;
    assert_int_equal(cpdl__schedule_create(&p, &s), 0);
    assert_int_equal(cpdl__schedule_build(s, pieces, n), 0);
    check_schedule(s, pieces, n);
    assert_int_equal(s->fell_back, 0);
    max[kind] = 0;
    for (int r = 0; r < s->n_ranks; r++)
      max[kind] = fmax(max[kind], s->rank_work[r]);
    double mean = s->total_work / s->n_ranks;
    if (kind == CPDL__SCHEDULE_STATIC)
      assert_true(max[kind] > 1.3 * mean);
    if (kind == CPDL__SCHEDULE_DYNAMIC) {
      assert_true(max[kind] <= 1.05 * mean);
      /* the long document is spread, the short ones are whole */
      for (int64_t e = 0; e < s->rank_begin[s->n_ranks]; e++) {
        const cpdl__schedule_sub_t *sub = &s->subs[e];
        if (sub->doc_id < 0)
          continue;
        int c = group_size(s, sub->group);
        assert_true(sub->doc_id == 0 ? c > 1 : c == 1);
      }
    }
    cpdl__schedule_destroy(s);
  }
  assert_true(max[CPDL__SCHEDULE_BALANCED] < max[CPDL__SCHEDULE_STATIC]);
  assert_true(max[CPDL__SCHEDULE_DYNAMIC] < max[CPDL__SCHEDULE_BALANCED]);
}

/* A batch the balancing cannot place within capacity falls back to static.
 * S = 20, cp = 1, static rows [6, 6, 8] [10, 10]. Longest first onto the
 * least-loaded replica with room (pure L^2): 10 -> r0, 10 -> r1, 8 -> r0
 * (tie: lower index; room 2 left), 6 -> r1 (room 4 left), 6 fits nowhere. */
static void test_fallback(void **state) {
  (void)state;
  cpdl__schedule_params_t p = params_of(CPDL__SCHEDULE_BALANCED, 2, 1, 1, 20);
  p.cost_a = 0;
  cpdl__schedule_piece_t tight[] = {{0, 0, 6}, {1, 0, 6}, {2, 0, 8}, {3, 0, 10}, {4, 0, 10}};
  for (int kind = 1; kind < 3; kind++) {
    p.kind = (cpdl__schedule_kind_t)kind;
    cpdl__schedule_t *s;
    assert_int_equal(cpdl__schedule_create(&p, &s), 0);
    assert_int_equal(cpdl__schedule_build(s, tight, 5), 0);
    check_schedule(s, tight, 5);
    if (kind == CPDL__SCHEDULE_BALANCED) {
      assert_int_equal(s->fell_back, 1);
      assert_int_equal(s->subs[0].doc_id, 0); /* the static rows */
      assert_int_equal(s->subs[3].doc_id, 3);
    }
    cpdl__schedule_destroy(s);
  }
}

static double max_work(const cpdl__schedule_t *s) {
  double max = 0;
  for (int r = 0; r < s->n_ranks; r++)
    max = fmax(max, s->rank_work[r]);
  return max;
}

/* Balanced's layout is one of dynamic's, so dynamic is never worse than it
 * (balanced's layout wins by any margin; python.schedule_dynamic found a
 * step 0.48% worse when it had to win by 0.5%) unless it is within 1% of the
 * mean already, nor does
 * it fall back when balanced does not: tight blocks, odd sizes, L^2 costs. */
static void test_dynamic_not_worse(void **state) {
  (void)state;
  rng_state = 99;
  for (int trial = 0; trial < 60; trial++) {
    int dp = 1 + (int)(rng() % 7), cp = 1 + (int)(rng() % 4), batch = 1 + (int)(rng() % 3);
    int64_t S = 2 * cp * (int64_t)(64 + rng() % 512);
    cpdl__schedule_params_t p = params_of(CPDL__SCHEDULE_BALANCED, dp, cp, batch, S);
    if (trial % 2)
      p.cost_a = 0;
    enum { N = 400 };
    int64_t lens[N];
    for (int i = 0; i < N; i++)
      lens[i] = rng_len((double)S / 6, 1.2, 2 * S);
    int64_t cap = (int64_t)dp * batch * S / p.pad_multiple, n, nd, no;
    cpdl__schedule_piece_t *pieces = malloc((size_t)cap * sizeof *pieces);
    assert_int_equal(cpdl__schedule_cut(&p, lens, N, 0, 0, pieces, cap, &n, &nd, &no), (int64_t)dp * batch);
    cpdl__schedule_t *bal, *dyn;
    assert_int_equal(cpdl__schedule_create(&p, &bal), 0);
    p.kind = CPDL__SCHEDULE_DYNAMIC;
    assert_int_equal(cpdl__schedule_create(&p, &dyn), 0);
    assert_int_equal(cpdl__schedule_build(bal, pieces, n), 0);
    assert_int_equal(cpdl__schedule_build(dyn, pieces, n), 0);
    check_schedule(bal, pieces, n);
    check_schedule(dyn, pieces, n);
    if (!bal->fell_back)
      assert_int_equal(dyn->fell_back, 0);
    /* within 1% of the mean (the lower bound) the passes stop looking */
    assert_true(max_work(dyn) <= max_work(bal) * (1 + 1e-12) ||
                max_work(dyn) <= dyn->total_work / dyn->n_ranks * 1.01 * (1 + 1e-12));
    cpdl__schedule_destroy(bal);
    cpdl__schedule_destroy(dyn);
    free(pieces);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parse),
      cmocka_unit_test(test_group_table),
      cmocka_unit_test(test_cut_literal),
      cmocka_unit_test(test_cut_matches_collate_rule),
      cmocka_unit_test(test_coverage_matrix),
      cmocka_unit_test(test_determinism),
      cmocka_unit_test(test_edges),
      cmocka_unit_test(test_balance),
      cmocka_unit_test(test_fallback),
      cmocka_unit_test(test_dynamic_not_worse),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
