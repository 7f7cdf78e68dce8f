/* schedule.c — who computes which part of which document in one global batch.
 *
 * Owns the three layouts of docs/schedule.md over the pieces of a global batch
 * (the documents static thd packs into dp*batch rows, in global order):
 * static (rows filled in order, as the thd collate does), balanced (pieces
 * moved between rows and replicas, longest first onto the least-loaded
 * replica with room) and dynamic (a CP size c per piece, short pieces whole on
 * one rank, long ones over an aligned group of c ranks with the 2c zigzag).
 * Invariants: pure and deterministic — every decision is a function of the
 * pieces and the params, ties broken by the lower index, no clock, no
 * randomness, IEEE doubles without contraction (-std=c11), so every node
 * computes the same schedule; every piece lands exactly once (static/balanced:
 * on the cp ranks of one replica; dynamic: on the c members of one group);
 * each rank's entries tile its block; a rank runs its entries in piece order
 * (row order for static/balanced), which makes group collectives deadlock-free.
 * No state across batches beyond reused buffers.
 */
#include "schedule.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Per-build scratch, grown on demand and kept across batches. */
typedef struct {
  int64_t cap;           /* pieces the per-piece arrays hold */
  int64_t *order;        /* piece indices, longest first (ties: lower index) */
  int64_t *tmp;          /* radix scratch */
  int32_t *row_of;       /* static/balanced: global row (replica*batch + b) of each piece */
  int32_t *srow_of;      /* static's rows, kept for the fallback */
  int32_t *c_of, *group_of;           /* dynamic: the pass being tried */
  int32_t *best_c, *best_group;       /* dynamic: the best pass so far */
  int64_t *merged;       /* dynamic: the placement order of one pass */
  int64_t *big, *scratch; /* dynamic: the spread pieces of a pass, merge-sort scratch */
  double *share;         /* dynamic: each piece's work per member in a pass */
  double *cost;          /* each piece's work, whole (computed once per build) */
  int64_t *padded;       /* each piece padded to pad_multiple (static/balanced) */
  int64_t *next;         /* [W] */
  int64_t *row_room;     /* [dp*batch] */
  double *load;          /* [max(dp, W)] */
  int64_t *used;         /* [W] */
  int32_t *heap, *heap_pos, *side; /* [max(dp, W)]; side: the parked ids */
  int64_t *park_key;     /* [max(dp, W)] */
  int32_t *fill_ids, *fill_scratch; /* [max(dp, W)]: ids by load for the water fill */
  int64_t *count;        /* [max(rows, W) + 1] */
} workspace_t;

int cpdl__schedule_parse(const char *name, cpdl__schedule_kind_t *out) {
  static const char *const names[] = {"static", "balanced", "dynamic"};
  for (int k = 0; k < 3; k++)
    if (name && strcmp(name, names[k]) == 0) {
      *out = (cpdl__schedule_kind_t)k;
      return 0;
    }
  return cpdl__error(CPDL_EARG, "schedule: unknown schedule \"%s\"; expected static, balanced or dynamic",
                     name ? name : "(null)");
}

const char *cpdl__schedule_name(cpdl__schedule_kind_t kind) {
  switch (kind) {
  case CPDL__SCHEDULE_STATIC: return "static";
  case CPDL__SCHEDULE_BALANCED: return "balanced";
  case CPDL__SCHEDULE_DYNAMIC: return "dynamic";
  }
  return "?";
}

int cpdl__schedule_cost_parse(const char *text, double *a, double *b) {
  char *end;
  if (!text)
    goto bad;
  errno = 0;
  double x = strtod(text, &end);
  if (end == text || *end != ',' || errno)
    goto bad;
  const char *second = end + 1;
  double y = strtod(second, &end);
  if (end == second || *end != '\0' || errno)
    goto bad;
  if (!(x >= 0 && y >= 0 && isfinite(x) && isfinite(y) && x + y > 0))
    goto bad;
  *a = x;
  *b = y;
  return 0;
bad:
  return cpdl__error(CPDL_EARG,
                     "schedule: cost \"%s\" is not a,b with two finite numbers >= 0, not both 0 "
                     "(work of a document of L tokens: a*L + b*L^2; default %.0f,%.0f)",
                     text ? text : "(null)", CPDL__SCHEDULE_COST_A, CPDL__SCHEDULE_COST_B);
}

int cpdl__schedule_check(const cpdl__schedule_params_t *p) {
  if (!p)
    return cpdl__error(CPDL_EARG, "schedule: params are NULL");
  if ((int)p->kind < 0 || (int)p->kind > 2)
    return cpdl__error(CPDL_EARG, "schedule: unknown kind %d", (int)p->kind);
  if (p->dp < 1 || p->cp < 1 || p->batch < 1 || p->dp > 65536 || p->cp > 65536 ||
      (int64_t)p->dp * p->cp > 65536)
    return cpdl__error(CPDL_EARG, "schedule: dp %d, cp %d, batch %d: each must be >= 1 and dp*cp <= 65536",
                       p->dp, p->cp, p->batch);
  if (p->pad_multiple < 2 * p->cp || p->pad_multiple % (2 * p->cp) != 0)
    return cpdl__error(CPDL_EARG, "schedule: pad_multiple %d must be a multiple of 2*cp = %d",
                       p->pad_multiple, 2 * p->cp);
  if (p->seq_len < 1 || p->seq_len >= INT32_MAX || p->seq_len % p->pad_multiple != 0)
    return cpdl__error(CPDL_EARG, "schedule: seq_len %lld must be a multiple of pad_multiple %d below 2^31",
                       (long long)p->seq_len, p->pad_multiple);
  if ((int64_t)p->batch * p->seq_len >= INT32_MAX || (int64_t)p->batch * p->seq_len * p->dp >= INT64_MAX / 4)
    return cpdl__error(CPDL_EARG, "schedule: batch %d x seq_len %lld must stay below 2^31 tokens per replica",
                       p->batch, (long long)p->seq_len);
  if (!(p->cost_a >= 0 && p->cost_b >= 0 && isfinite(p->cost_a) && isfinite(p->cost_b) &&
        p->cost_a + p->cost_b > 0))
    return cpdl__error(CPDL_EARG, "schedule: cost %g,%g must be two finite numbers >= 0, not both 0",
                       p->cost_a, p->cost_b);
  return 0;
}

/* Group ids: sizes in increasing order, then the group's index. */
static int32_t group_base(int n_ranks, int c) {
  int32_t base = 0;
  for (int k = 1; k < c; k++)
    base += n_ranks / k;
  return base;
}

int32_t cpdl__schedule_group_id(int n_ranks, int c, int s) {
  if (c < 1 || c > n_ranks || s < 0 || s / c >= n_ranks / c)
    return -1;
  return group_base(n_ranks, c) + s / c;
}

/* The group id of size c holding rank r, from the per-size bases (O(1)). */
static int32_t group_id_of(const cpdl__schedule_t *s, int c, int r) { return s->size_base[c] + r / c; }

static int64_t pad_to(int64_t len, int64_t m) { return (len + m - 1) / m * m; }

/* ---- the workspace ---------------------------------------------------------- */

static void ws_free(workspace_t *w) {
  if (!w)
    return;
  free(w->order), free(w->tmp), free(w->row_of), free(w->srow_of), free(w->c_of);
  free(w->group_of), free(w->best_c), free(w->best_group), free(w->merged);
  free(w->row_room), free(w->load), free(w->used), free(w->heap), free(w->heap_pos), free(w->park_key);
  free(w->fill_ids), free(w->fill_scratch);
  free(w->side), free(w->count), free(w->big), free(w->scratch), free(w->share), free(w->next), free(w->cost), free(w->padded);
  free(w);
}

static bool grow(void **p, int64_t n, size_t elem) {
  void *q = realloc(*p, (size_t)(n > 0 ? n : 1) * elem);
  if (!q)
    return false;
  *p = q;
  return true;
}

/* Per-piece arrays for n pieces. */
static int ws_reserve(cpdl__schedule_t *s, int64_t n) {
  workspace_t *w = s->work;
  if (w->cap > 0 && n <= w->cap) /* the first call allocates even for 0: no NULL arrays */
    return 0;
  int64_t cap = n < 64 ? 64 : n + n / 2;
  bool ok = grow((void **)&w->order, cap, sizeof(int64_t)) && grow((void **)&w->tmp, cap, sizeof(int64_t)) &&
            grow((void **)&w->row_of, cap, sizeof(int32_t)) && grow((void **)&w->srow_of, cap, sizeof(int32_t)) &&
            grow((void **)&w->c_of, cap, sizeof(int32_t)) && grow((void **)&w->group_of, cap, sizeof(int32_t)) &&
            grow((void **)&w->best_c, cap, sizeof(int32_t)) &&
            grow((void **)&w->best_group, cap, sizeof(int32_t)) &&
            grow((void **)&w->merged, cap, sizeof(int64_t)) && grow((void **)&w->big, cap, sizeof(int64_t)) &&
            grow((void **)&w->scratch, cap, sizeof(int64_t)) && grow((void **)&w->share, cap, sizeof(double)) &&
            grow((void **)&w->cost, cap, sizeof(double)) &&
            grow((void **)&w->padded, cap, sizeof(int64_t)) &&
            grow((void **)&s->pieces, cap, sizeof(cpdl__schedule_piece_t));
  if (!ok)
    return cpdl__error(-ENOMEM, "schedule: no memory for a batch of %lld pieces", (long long)n);
  w->cap = cap;
  s->cap_pieces = cap;
  return 0;
}

static int subs_reserve(cpdl__schedule_t *s, int64_t n) {
  if (n <= s->cap_subs)
    return 0;
  int64_t cap = n + n / 2;
  if (!grow((void **)&s->subs, cap, sizeof(cpdl__schedule_sub_t)))
    return cpdl__error(-ENOMEM, "schedule: no memory for %lld rank entries", (long long)n);
  s->cap_subs = cap;
  return 0;
}

int cpdl__schedule_create(const cpdl__schedule_params_t *params, cpdl__schedule_t **out) {
  *out = NULL;
  int rc = cpdl__schedule_check(params);
  if (rc)
    return rc;
  cpdl__schedule_t *s = calloc(1, sizeof *s);
  workspace_t *w = calloc(1, sizeof *w);
  if (!s || !w) {
    free(s);
    free(w);
    return cpdl__error(-ENOMEM, "schedule: out of memory");
  }
  s->params = *params;
  s->work = w;
  s->work_size = sizeof *w;
  const int W = params->dp * params->cp;
  s->n_ranks = W;
  s->block = (int64_t)params->batch * params->seq_len / params->cp;
  s->n_groups = group_base(W, W + 1);
  const int64_t rows = (int64_t)params->dp * params->batch, many = W > params->dp ? W : params->dp;
  bool ok = grow((void **)&s->rank_begin, W + 1, sizeof(int64_t)) &&
            grow((void **)&s->rank_work, W, sizeof(double)) &&
            grow((void **)&s->group_first, s->n_groups, sizeof(int32_t)) &&
            grow((void **)&s->size_base, W + 2, sizeof(int32_t)) &&
            grow((void **)&s->group_size, s->n_groups, sizeof(int32_t)) &&
            grow((void **)&w->row_room, rows, sizeof(int64_t)) && grow((void **)&w->load, many, sizeof(double)) &&
            grow((void **)&w->used, W, sizeof(int64_t)) && grow((void **)&w->next, W, sizeof(int64_t)) &&
            grow((void **)&w->heap, many, sizeof(int32_t)) &&
            grow((void **)&w->heap_pos, many, sizeof(int32_t)) && grow((void **)&w->side, many, sizeof(int32_t)) &&
            grow((void **)&w->park_key, many, sizeof(int64_t)) &&
            grow((void **)&w->fill_ids, many, sizeof(int32_t)) &&
            grow((void **)&w->fill_scratch, many, sizeof(int32_t)) &&
            grow((void **)&w->count, (rows > W ? rows : W) + 1, sizeof(int64_t));
  if (!ok) {
    cpdl__schedule_destroy(s);
    return cpdl__error(-ENOMEM, "schedule: no memory for dp %d x cp %d (%d groups)", params->dp,
                       params->cp, s->n_groups);
  }
  int32_t g = 0;
  for (int c = 1; c <= W; c++) {
    s->size_base[c] = g;
    for (int k = 0; k < W / c; k++) {
      s->group_first[g] = k * c;
      s->group_size[g++] = c;
    }
  }
  s->size_base[0] = 0, s->size_base[W + 1] = g;
  *out = s;
  return 0;
}

void cpdl__schedule_destroy(cpdl__schedule_t *s) {
  if (!s)
    return;
  ws_free(s->work);
  free(s->pieces);
  free(s->rank_begin);
  free(s->subs);
  free(s->rank_work);
  free(s->group_first);
  free(s->group_size);
  free(s->size_base);
  free(s);
}

/* ---- the global batch (static thd's cut) ------------------------------------ */

int64_t cpdl__schedule_cut(const cpdl__schedule_params_t *p, const int64_t *lens, int64_t n,
                           int64_t first_doc_id, int64_t first_offset, cpdl__schedule_piece_t *out,
                           int64_t cap, int64_t *n_out, int64_t *next_doc, int64_t *next_offset) {
  int rc = cpdl__schedule_check(p);
  if (rc)
    return rc;
  if (n < 0 || (n > 0 && !lens) || !out || !n_out || !next_doc || !next_offset)
    return cpdl__error(CPDL_EARG, "schedule: cut needs lens, out and the three results");
  if (first_offset < 0 || (first_offset > 0 && (n == 0 || first_offset >= lens[0])))
    return cpdl__error(CPDL_EARG, "schedule: first_offset %lld is past document %lld's %lld pairs",
                       (long long)first_offset, (long long)first_doc_id, n ? (long long)lens[0] : 0LL);
  const int64_t S = p->seq_len, m = p->pad_multiple, R = (int64_t)p->dp * p->batch;
  int64_t rows = 0, at = 0, i = 0, off = first_offset, count = 0;
  while (i < n && rows < R) {
    int64_t rest = lens[i] - off;
    if (rest <= 0) { /* no pair (or a negative length): thd skips it */
      i++, off = 0;
      continue;
    }
    int64_t padded = pad_to(rest, m);
    if (at > 0 && padded > S - at) { /* waits for the next row; the tail pads this one */
      rows++, at = 0;
      continue;
    }
    int64_t take = rest;
    if (padded > S) /* longer than a row (at == 0 here): fills it, continues in the next */
      take = padded = S;
    if (count == cap)
      return cpdl__error(CPDL_EARG, "schedule: cut: more than cap = %lld pieces", (long long)cap);
    out[count++] = (cpdl__schedule_piece_t){first_doc_id + i, off, take};
    at += padded, off += take;
    if (off == lens[i])
      i++, off = 0;
    if (at == S)
      rows++, at = 0;
  }
  if (at > 0)
    rows++; /* the data ran out inside this row */
  *n_out = count;
  *next_doc = i;
  *next_offset = off;
  return rows;
}

/* ---- ordering ----------------------------------------------------------------- */

/* w->order = piece indices by length, longest first, ties by index: an LSD
 * radix sort (stable, O(n)) of words (2^31 - 1 - len) << 32 | index on the
 * key's 33 bits, reading the words in sequence (~10 us at 10K pieces). */
static void sort_longest_first(cpdl__schedule_t *s) {
  workspace_t *w = s->work;
  const int64_t n = s->n_pieces;
  uint64_t *src = (uint64_t *)w->order, *dst = (uint64_t *)w->tmp;
  for (int64_t i = 0; i < n; i++)
    src[i] = (uint64_t)(INT32_MAX - s->pieces[i].len) << 32 | (uint64_t)i;
  for (int shift = 32; shift < 65; shift += 11) {
    int64_t count[2049] = {0};
    for (int64_t i = 0; i < n; i++)
      count[(src[i] >> shift & 2047) + 1]++;
    for (int d = 0; d < 2048; d++)
      count[d + 1] += count[d];
    for (int64_t i = 0; i < n; i++)
      dst[count[src[i] >> shift & 2047]++] = src[i];
    uint64_t *t = src;
    src = dst, dst = t;
  }
  for (int64_t i = 0; i < n; i++)
    w->order[i] = (int64_t)(src[i] & 0xffffffffu);
}

/* ---- a min-heap of ids keyed by (load, id) -------------------------------------- */

typedef struct {
  int32_t *a, *pos;
  const double *load;
  int n;
} heap_t;

static bool heap_less(const heap_t *h, int32_t x, int32_t y) {
  return h->load[x] < h->load[y] || (h->load[x] == h->load[y] && x < y);
}

static void heap_swap(heap_t *h, int i, int j) {
  int32_t t = h->a[i];
  h->a[i] = h->a[j], h->a[j] = t;
  h->pos[h->a[i]] = i, h->pos[h->a[j]] = j;
}

static void heap_up(heap_t *h, int i) {
  while (i > 0 && heap_less(h, h->a[i], h->a[(i - 1) / 2]))
    heap_swap(h, i, (i - 1) / 2), i = (i - 1) / 2;
}

static void heap_down(heap_t *h, int i) {
  for (;;) {
    int l = 2 * i + 1, r = l + 1, m = i;
    if (l < h->n && heap_less(h, h->a[l], h->a[m]))
      m = l;
    if (r < h->n && heap_less(h, h->a[r], h->a[m]))
      m = r;
    if (m == i)
      return;
    heap_swap(h, i, m), i = m;
  }
}

static void heap_init(heap_t *h, int32_t *a, int32_t *pos, const double *load, int n) {
  h->a = a, h->pos = pos, h->load = load, h->n = n;
  for (int i = 0; i < n; i++)
    a[i] = i, pos[i] = i;
  for (int i = n / 2 - 1; i >= 0; i--)
    heap_down(h, i);
}

static void heap_push(heap_t *h, int32_t id) {
  h->a[h->n] = id, h->pos[id] = h->n;
  heap_up(h, h->n++);
}

static int32_t heap_pop(heap_t *h) {
  int32_t top = h->a[0];
  heap_swap(h, 0, --h->n);
  heap_down(h, 0);
  return top;
}

/* Ids that lacked room, parked in a max-heap by the room they had then
 * (their room only shrinks while parked, so the key is an upper bound). */
typedef struct {
  int32_t *a;
  int64_t *key; /* by id */
  int n;
} park_t;

static void park_push(park_t *p, int32_t id, int64_t room) {
  int i = p->n++;
  p->key[id] = room;
  p->a[i] = id;
  while (i > 0 && (p->key[p->a[(i - 1) / 2]] < p->key[p->a[i]] ||
                   (p->key[p->a[(i - 1) / 2]] == p->key[p->a[i]] && p->a[(i - 1) / 2] > p->a[i]))) {
    int32_t t = p->a[i];
    p->a[i] = p->a[(i - 1) / 2], p->a[(i - 1) / 2] = t;
    i = (i - 1) / 2;
  }
}

static int32_t park_pop(park_t *p) {
  int32_t top = p->a[0];
  p->a[0] = p->a[--p->n];
  for (int i = 0;;) {
    int l = 2 * i + 1, r = l + 1, m = i;
    if (l < p->n && (p->key[p->a[l]] > p->key[p->a[m]] || (p->key[p->a[l]] == p->key[p->a[m]] && p->a[l] < p->a[m])))
      m = l;
    if (r < p->n && (p->key[p->a[r]] > p->key[p->a[m]] || (p->key[p->a[r]] == p->key[p->a[m]] && p->a[r] < p->a[m])))
      m = r;
    if (m == i)
      break;
    int32_t t = p->a[i];
    p->a[i] = p->a[m], p->a[m] = t;
    i = m;
  }
  return top;
}

/* The least-loaded id whose room() >= need (ties: lower id), left in the
 * heap; -1 if none. Callers ask with non-increasing `need` (pieces longest
 * first), so an id without room is parked until the need drops to what it
 * had: each id is parked at most once per piece it receives, O(log n) per
 * call amortized. Ids below min_room can take nothing more: dropped. */
typedef int64_t (*room_fn)(const void *arg, int32_t id);
static int32_t heap_find(heap_t *h, park_t *park, room_fn room, const void *arg, int64_t need, int64_t min_room) {
  while (park->n > 0 && park->key[park->a[0]] >= need)
    heap_push(h, park_pop(park));
  while (h->n > 0) {
    int32_t top = h->a[0];
    int64_t have = room(arg, top);
    if (have >= need)
      return top;
    heap_pop(h);
    if (have >= min_room)
      park_push(park, top, have);
  }
  return -1;
}

/* ---- the water fill of the small pieces ------------------------------------------ */

/* Pieces whose work is below mean / SMALL_SHARE are "small": after the large
 * ones are placed longest-first with the heap (LPT), the small ones fill the
 * least-loaded ids up to a common level in one sweep — one sort of n ids
 * instead of a heap operation per piece — each id overshooting the level by
 * at most half a small piece, i.e. 1/128 of the mean. */
#define SMALL_SHARE 64.0

/* ids[0..n) = 0..n-1 by load ascending, ties by id (merge sort). */
static void sort_ids_by_load(int32_t *ids, int32_t *scratch, int n, const double *load) {
  for (int i = 0; i < n; i++)
    ids[i] = i;
  int32_t *src = ids, *dst = scratch;
  for (int width = 1; width < n; width *= 2) {
    for (int lo = 0; lo < n; lo += 2 * width) {
      int mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
      int i = lo, j = mid, k = lo;
      while (i < mid && j < hi)
        dst[k++] = load[src[j]] < load[src[i]] ? src[j++] : src[i++]; /* stable: ties keep the lower id */
      while (i < mid)
        dst[k++] = src[i++];
      while (j < hi)
        dst[k++] = src[j++];
    }
    int32_t *t = src;
    src = dst, dst = t;
  }
  if (src != ids)
    memcpy(ids, src, (size_t)n * sizeof *ids);
}

/* The level L that `work` more raises the least-loaded ids to: the smallest
 * k with (work + the k lowest loads) / k <= the (k+1)-th load. *n_below = k. */
static double water_level(const int32_t *ids, int n, const double *load, double work, int *n_below) {
  double sum = 0;
  for (int k = 1; k <= n; k++) {
    sum += load[ids[k - 1]];
    double level = (work + sum) / k;
    if (k == n || level <= load[ids[k]]) {
      *n_below = k;
      return level;
    }
  }
  *n_below = n;
  return work; /* n == 0: unreachable for callers (n >= 1) */
}

/* ---- static and balanced: pieces to rows ----------------------------------------- */

/* Static's rows (the cut's rule over the pieces, in order) into w->srow_of.
 * \return 0 or CPDL_EARG when they need more than dp*batch rows. */
static int static_rows(cpdl__schedule_t *s) {
  workspace_t *w = s->work;
  const int64_t S = s->params.seq_len, R = (int64_t)s->params.dp * s->params.batch;
  int64_t row = 0, at = 0;
  for (int64_t i = 0; i < s->n_pieces; i++) {
    int64_t padded = w->padded[i];
    if (at > 0 && padded > S - at)
      row++, at = 0;
    w->srow_of[i] = (int32_t)row;
    at += padded;
    if (at == S)
      row++, at = 0;
  }
  int64_t need = row + (at > 0);
  if (need > R)
    return cpdl__error(CPDL_EARG,
                       "schedule: the batch's %lld pieces need %lld rows of seq_len %lld in static order; "
                       "dp*batch is %lld (a global batch is what cpdl__schedule_cut returns)",
                       (long long)s->n_pieces, (long long)need, (long long)S, (long long)R);
  return 0;
}

typedef struct {
  const int64_t *row_room;
  int batch;
} replica_fit_t;

static int64_t replica_room(const void *arg, int32_t r) {
  const replica_fit_t *f = arg;
  int64_t most = 0;
  for (int b = 0; b < f->batch; b++)
    if (f->row_room[(int64_t)r * f->batch + b] > most)
      most = f->row_room[(int64_t)r * f->batch + b];
  return most;
}

/* Put piece i on replica r: its best-fitting row (the least room that suffices). */
static void balanced_place(cpdl__schedule_t *s, int32_t r, int64_t i, int64_t padded, double work) {
  workspace_t *w = s->work;
  int64_t best = -1;
  for (int b = 0; b < s->params.batch; b++) {
    int64_t q = (int64_t)r * s->params.batch + b;
    if (w->row_room[q] >= padded && (best < 0 || w->row_room[q] < w->row_room[best]))
      best = q;
  }
  w->row_of[i] = (int32_t)best;
  w->row_room[best] -= padded;
  w->load[r] += work;
}

/* Longest first onto the least-loaded replica that has a row with room (LPT),
 * the small pieces by the water fill. \return false when a piece fits nowhere. */
static bool balanced_rows(cpdl__schedule_t *s) {
  workspace_t *w = s->work;
  const cpdl__schedule_params_t *p = &s->params;
  const int64_t S = p->seq_len, m = p->pad_multiple, R = (int64_t)p->dp * p->batch, n = s->n_pieces;
  for (int64_t q = 0; q < R; q++)
    w->row_room[q] = S;
  double total = 0;
  for (int r = 0; r < p->dp; r++)
    w->load[r] = 0;
  for (int64_t i = 0; i < n; i++)
    total += w->cost[i];
  const double small = total / p->dp / SMALL_SHARE;
  heap_t h;
  heap_init(&h, w->heap, w->heap_pos, w->load, p->dp);
  replica_fit_t fit = {w->row_room, p->batch};
  park_t park = {w->side, w->park_key, 0};
  int64_t k = 0;
  for (; k < n; k++) { /* the large pieces */
    int64_t i = w->order[k], padded = w->padded[i];
    double work = w->cost[i];
    if (work < small)
      break;
    int32_t r = heap_find(&h, &park, replica_room, &fit, padded, m);
    if (r < 0)
      return false;
    balanced_place(s, r, i, padded, work);
    heap_down(&h, h.pos[r]);
  }
  double rest = 0;
  for (int64_t j = k; j < n; j++)
    rest += w->cost[w->order[j]];
  int n_below, cur = 0;
  int64_t n_left = 0;
  sort_ids_by_load(w->fill_ids, w->fill_scratch, p->dp, w->load);
  const double level = water_level(w->fill_ids, p->dp, w->load, rest, &n_below);
  for (; k < n; k++) { /* the small ones, still longest first */
    int64_t i = w->order[k], padded = w->padded[i];
    double work = w->cost[i];
    while (cur < n_below && (w->load[w->fill_ids[cur]] + work / 2 > level ||
                             replica_room(&fit, w->fill_ids[cur]) < padded))
      cur++;
    if (cur == n_below) {
      w->big[n_left++] = i; /* rounding's leftovers: by the heap below */
      continue;
    }
    balanced_place(s, w->fill_ids[cur], i, padded, work);
  }
  if (n_left > 0) {
    heap_init(&h, w->heap, w->heap_pos, w->load, p->dp);
    park.n = 0;
    for (int64_t j = 0; j < n_left; j++) {
      int64_t i = w->big[j], padded = w->padded[i];
      int32_t r = heap_find(&h, &park, replica_room, &fit, padded, m);
      if (r < 0)
        return false;
      balanced_place(s, r, i, padded, w->cost[i]);
      heap_down(&h, h.pos[r]);
    }
  }
  return true;
}

/* Rank entries of a row layout (row_of: each piece's global row). In each row
 * the pieces keep their order and the last one's padding takes the row's
 * tail, as the thd collate's; an empty row is one padding entry. */
static int emit_rows(cpdl__schedule_t *s, const int32_t *row_of) {
  workspace_t *w = s->work;
  const cpdl__schedule_params_t *p = &s->params;
  const int64_t S = p->seq_len, R = (int64_t)p->dp * p->batch, n = s->n_pieces;
  const int cp = p->cp;
  /* Pieces grouped by row, in piece order within each (counting sort). */
  int64_t *start = w->count, *by_row = w->tmp;
  memset(start, 0, (size_t)(R + 1) * sizeof *start);
  for (int64_t i = 0; i < n; i++)
    start[row_of[i] + 1]++;
  for (int64_t q = 0; q < R; q++)
    start[q + 1] += start[q];
  for (int64_t i = 0; i < n; i++)
    by_row[start[row_of[i]]++] = i;
  for (int64_t q = R; q > 0; q--)
    start[q] = start[q - 1];
  start[0] = 0;
  int64_t total = 0;
  for (int r = 0; r < p->dp; r++) {
    int64_t e = 0;
    for (int b = 0; b < p->batch; b++) {
      int64_t q = (int64_t)r * p->batch + b, k = start[q + 1] - start[q];
      e += k ? k : 1;
    }
    total += e * cp;
  }
  int rc = subs_reserve(s, total);
  if (rc)
    return rc;
  int64_t at_sub = 0;
  for (int r = 0; r < p->dp; r++) {
    const int32_t group = group_id_of(s, cp, r * cp);
    for (int j = 0; j < cp; j++) {
      const int rank = r * cp + j;
      s->rank_begin[rank] = at_sub;
      double work = 0;
      for (int b = 0; b < p->batch; b++) {
        int64_t q = (int64_t)r * p->batch + b, off = 0;
        if (start[q + 1] == start[q]) {
          s->subs[at_sub++] = (cpdl__schedule_sub_t){-1, 0, 0, S, (int64_t)b * S / cp, group, j, b, -1};
          continue;
        }
        for (int64_t k = start[q]; k < start[q + 1]; k++) {
          int64_t i = by_row[k];
          const cpdl__schedule_piece_t *pc = &s->pieces[i];
          int64_t padded = k + 1 == start[q + 1] ? S - off : w->padded[i];
          s->subs[at_sub++] = (cpdl__schedule_sub_t){pc->doc_id, pc->offset, pc->len, padded,
                                                     ((int64_t)b * S + off) / cp, group, j, b, (int32_t)i};
          work += w->cost[i] / cp;
          off += padded;
        }
      }
      s->rank_work[rank] = work;
    }
  }
  s->rank_begin[s->n_ranks] = at_sub;
  return 0;
}

/* ---- dynamic: a CP size per piece ------------------------------------------------ */

typedef struct {
  const int64_t *used;
  int64_t block;
} rank_fit_t;

static int64_t rank_room(const void *arg, int32_t r) {
  const rank_fit_t *f = arg;
  return f->block - f->used[r];
}

/* The share of each of c ranks: two zigzag chunks of ceil(len / 2c). */
static int64_t share_of(int64_t len, int c) { return 2 * ((len + 2 * c - 1) / (2 * (int64_t)c)); }

/* Sort a[0..n) by share descending, ties by lower index: bottom-up merge
 * sort (stable, O(n log n), no global state: schedules may run in threads). */
static void sort_by_share(int64_t *a, int64_t *scratch, int64_t n, const double *share) {
  int64_t *src = a, *dst = scratch;
  for (int64_t width = 1; width < n; width *= 2) {
    for (int64_t lo = 0; lo < n; lo += 2 * width) {
      int64_t mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
      int64_t i = lo, j = mid, k = lo;
      while (i < mid && j < hi) {
        int64_t x = src[i], y = src[j];
        bool left = share[x] > share[y] || (share[x] == share[y] && x < y);
        dst[k++] = left ? src[i++] : src[j++];
      }
      while (i < mid)
        dst[k++] = src[i++];
      while (j < hi)
        dst[k++] = src[j++];
    }
    int64_t *t = src;
    src = dst, dst = t;
  }
  if (src != a)
    memcpy(a, src, (size_t)n * sizeof *a);
}

/* Place piece i at its c_of (or more, when no group of c has room): whole on
 * the least-loaded rank with room, or over the aligned group of c whose
 * busiest member is the least loaded. Updates c_of, group_of, loads, heap.
 * \return false when no c fits it. */
static bool dynamic_place(cpdl__schedule_t *s, heap_t *h, park_t *park, int64_t i) {
  workspace_t *w = s->work;
  const int W = s->n_ranks;
  const int64_t C = s->block, len = s->pieces[i].len;
  const double work = w->cost[i];
  rank_fit_t fit = {w->used, C};
  for (int c = w->c_of[i]; c <= W; c++) {
    const int64_t t = share_of(len, c);
    if (t > C)
      continue;
    if (c == 1) {
      int32_t r = heap_find(h, park, rank_room, &fit, t, 2);
      if (r < 0)
        continue;
      w->used[r] += t;
      w->load[r] += work;
      heap_down(h, h->pos[r]);
      w->c_of[i] = 1;
      w->group_of[i] = group_id_of(s, 1, r);
      return true;
    }
    double best = 0;
    int best_k = -1;
    for (int g = 0; g < W / c; g++) {
      double busiest = 0;
      bool room = true;
      for (int j = 0; j < c && room; j++) {
        int r = g * c + j;
        room = w->used[r] + t <= C;
        if (w->load[r] > busiest)
          busiest = w->load[r];
      }
      if (room && (best_k < 0 || busiest < best))
        best = busiest, best_k = g;
    }
    if (best_k < 0)
      continue;
    for (int j = 0; j < c; j++) {
      int r = best_k * c + j;
      w->used[r] += t;
      w->load[r] += work / c;
      /* A parked or dropped member is out of the heap: it re-enters with its load. */
      if (h->pos[r] < h->n && h->a[h->pos[r]] == r)
        heap_down(h, h->pos[r]);
    }
    w->c_of[i] = c;
    w->group_of[i] = group_id_of(s, c, best_k * c);
    return true;
  }
  return false;
}

/* One pass: pieces whose work exceeds theta * (mean rank work) are spread over
 * c = ceil(work / (theta * mean)) ranks (at least what the block's capacity
 * needs), placed first by per-rank share onto the aligned group of c with the
 * least-loaded busiest member; the rest whole on the least-loaded rank with
 * room (LPT). A piece that fits nowhere at its c tries c + 1, ... n_ranks.
 * \return the largest rank work, or -1 when some piece fits nowhere. */
static double dynamic_pass(cpdl__schedule_t *s, double theta, double mean) {
  workspace_t *w = s->work;
  double *share = w->share;
  int64_t *big = w->big;
  const int W = s->n_ranks;
  const int64_t n = s->n_pieces, C = s->block;
  int64_t n_big = 0;
  for (int64_t k = 0; k < n; k++) {
    int64_t i = w->order[k], len = s->pieces[i].len;
    double work = w->cost[i];
    int c = 1;
    if (theta > 0 && mean > 0 && work > theta * mean) {
      double want = ceil(work / (theta * mean));
      c = want >= W ? W : (int)want;
    }
    while (c < W && share_of(len, c) > C)
      c++;
    w->c_of[i] = c;
    share[i] = work / c;
    if (c > 1)
      big[n_big++] = i;
  }
  sort_by_share(big, w->scratch, n_big, share);
  /* Merge big (by share) and the singles (longest first = largest share first). */
  int64_t nb = 0, ns = 0, nm = 0;
  while (nm < n) {
    while (ns < n && w->c_of[w->order[ns]] > 1)
      ns++;
    bool take_big = nb < n_big && (ns >= n || share[big[nb]] > share[w->order[ns]] ||
                                   (share[big[nb]] == share[w->order[ns]] && big[nb] < w->order[ns]));
    w->merged[nm++] = take_big ? big[nb++] : w->order[ns++];
  }
  for (int r = 0; r < W; r++)
    w->load[r] = 0, w->used[r] = 0;
  heap_t h;
  heap_init(&h, w->heap, w->heap_pos, w->load, W);
  park_t park = {w->side, w->park_key, 0};
  const double small = mean / SMALL_SHARE;
  int64_t k = 0;
  for (; k < n; k++) { /* the large pieces, spread ones first (their share is >= theta*mean/2) */
    int64_t i = w->merged[k];
    if (w->c_of[i] == 1 && share[i] < small)
      break;
    if (!dynamic_place(s, &h, &park, i))
      return -1;
  }
  /* The small ones (all whole: c = 1), longest first, by the water fill. */
  double rest = 0;
  for (int64_t j = k; j < n; j++)
    rest += share[w->merged[j]];
  int n_below, cur = 0;
  int64_t n_left = 0;
  sort_ids_by_load(w->fill_ids, w->fill_scratch, W, w->load);
  const double level = water_level(w->fill_ids, W, w->load, rest, &n_below);
  for (; k < n; k++) {
    int64_t i = w->merged[k], t = share_of(s->pieces[i].len, 1);
    while (cur < n_below && (w->load[w->fill_ids[cur]] + share[i] / 2 > level ||
                             w->used[w->fill_ids[cur]] + t > C))
      cur++;
    if (cur == n_below) {
      big[n_left++] = i; /* rounding's leftovers: by the heap below (big is free now) */
      continue;
    }
    const int32_t r = w->fill_ids[cur];
    w->used[r] += t;
    w->load[r] += share[i];
    w->group_of[i] = group_id_of(s, 1, r);
  }
  if (n_left > 0) {
    heap_init(&h, w->heap, w->heap_pos, w->load, W);
    park.n = 0;
    for (int64_t j = 0; j < n_left; j++)
      if (!dynamic_place(s, &h, &park, big[j]))
        return -1;
  }
  double max = 0;
  for (int r = 0; r < W; r++)
    if (w->load[r] > max)
      max = w->load[r];
  return max;
}

/* Rank entries of a dynamic layout: each rank's pieces in piece order, its
 * share after the previous ones, then one padding entry for the block's rest. */
static int emit_dynamic(cpdl__schedule_t *s, const int32_t *c_of, const int32_t *group_of) {
  workspace_t *w = s->work;
  const int W = s->n_ranks;
  const int64_t n = s->n_pieces, C = s->block;
  int64_t *count = w->count;
  memset(count, 0, (size_t)(W + 1) * sizeof *count);
  for (int64_t i = 0; i < n; i++) {
    const int32_t first = s->group_first[group_of[i]];
    for (int j = 0; j < c_of[i]; j++)
      count[first + j + 1]++;
  }
  for (int r = 0; r < W; r++)
    count[r + 1] += count[r] + 1; /* + the padding entry (dropped when the block is full) */
  int rc = subs_reserve(s, count[W]);
  if (rc)
    return rc;
  for (int r = 0; r < W; r++)
    w->used[r] = 0, s->rank_work[r] = 0;
  /* count[r] is now rank r's next free entry (entries placed from count[r]). */
  int64_t *next = w->next;
  for (int r = 0; r < W; r++)
    next[r] = count[r];
  for (int64_t i = 0; i < n; i++) {
    const int32_t first = s->group_first[group_of[i]];
    const cpdl__schedule_piece_t *pc = &s->pieces[i];
    const int c = c_of[i];
    const int64_t t = share_of(pc->len, c);
    const double work = w->cost[i] / c;
    for (int j = 0; j < c; j++) {
      int r = first + j;
      s->subs[next[r]++] = (cpdl__schedule_sub_t){pc->doc_id, pc->offset, pc->len, t * c, w->used[r],
                                                  group_of[i], j, 0, (int32_t)i};
      w->used[r] += t;
      s->rank_work[r] += work;
    }
  }
  /* Compact: padding entries where a block is not full, ranks back to back. */
  int64_t at = 0;
  for (int r = 0; r < W; r++) {
    int64_t from = count[r], to = next[r];
    s->rank_begin[r] = at;
    memmove(s->subs + at, s->subs + from, (size_t)(to - from) * sizeof *s->subs);
    at += to - from;
    if (w->used[r] < C)
      s->subs[at++] = (cpdl__schedule_sub_t){-1, 0, 0, C - w->used[r], w->used[r],
                                             group_id_of(s, 1, r), 0, 0, -1};
  }
  s->rank_begin[W] = at;
  return 0;
}

/* A row layout (static's or balanced's) as dynamic groups: each replica's
 * pieces on its cp group. */
static void rows_as_groups(cpdl__schedule_t *s, const int32_t *row_of) {
  workspace_t *w = s->work;
  for (int64_t i = 0; i < s->n_pieces; i++) {
    int r = row_of[i] / s->params.batch;
    w->best_c[i] = s->params.cp;
    w->best_group[i] = group_id_of(s, s->params.cp, r * s->params.cp);
  }
}

/* ---- build ------------------------------------------------------------------------ */

static int split_pieces(cpdl__schedule_t *s, const cpdl__schedule_piece_t *in, int64_t n) {
  const int64_t S = s->params.seq_len;
  int64_t total = 0;
  for (int64_t i = 0; i < n; i++) {
    if (in[i].len < 1 || in[i].offset < 0 || in[i].doc_id < 0)
      return cpdl__error(CPDL_EARG,
                         "schedule: piece %lld (document %lld, offset %lld, len %lld) needs len >= 1, "
                         "offset >= 0 and doc_id >= 0",
                         (long long)i, (long long)in[i].doc_id, (long long)in[i].offset, (long long)in[i].len);
    total += (in[i].len + S - 1) / S;
    if (total >= INT32_MAX)
      return cpdl__error(CPDL_EARG, "schedule: more than 2^31 pieces in one batch");
  }
  int rc = ws_reserve(s, total);
  if (rc)
    return rc;
  int64_t k = 0;
  for (int64_t i = 0; i < n; i++)
    for (int64_t off = 0; off < in[i].len; off += S)
      s->pieces[k++] = (cpdl__schedule_piece_t){in[i].doc_id, in[i].offset + off,
                                                in[i].len - off < S ? in[i].len - off : S};
  s->n_pieces = k;
  workspace_t *w = s->work;
  for (int64_t i = 0; i < k; i++) {
    w->cost[i] = cpdl__schedule_cost(&s->params, s->pieces[i].len);
    w->padded[i] = pad_to(s->pieces[i].len, s->params.pad_multiple);
  }
  return 0;
}

int cpdl__schedule_build(cpdl__schedule_t *s, const cpdl__schedule_piece_t *pieces, int64_t n) {
  if (!s || n < 0 || (n > 0 && !pieces))
    return cpdl__error(CPDL_EARG, "schedule: build needs a schedule and n >= 0 pieces");
  int rc = split_pieces(s, pieces, n);
  if (rc)
    return rc;
  workspace_t *w = s->work;
  rc = static_rows(s);
  if (rc)
    return rc;
  s->fell_back = 0;
  const cpdl__schedule_params_t *p = &s->params;
  if (p->kind == CPDL__SCHEDULE_STATIC)
    rc = emit_rows(s, w->srow_of);
  else if (p->kind == CPDL__SCHEDULE_BALANCED) {
    sort_longest_first(s);
    if (balanced_rows(s))
      rc = emit_rows(s, w->row_of);
    else {
      s->fell_back = 1;
      rc = emit_rows(s, w->srow_of);
    }
  } else {
    sort_longest_first(s);
    double total = 0;
    for (int64_t i = 0; i < s->n_pieces; i++)
      total += w->cost[i];
    const double mean = total / s->n_ranks;
    /* Passes from less splitting to more; a later pass must beat the best by
     * 0.5% to win, so near-ties keep the fewer, smaller groups. */
    static const double thetas[] = {1.0, 0.5, 0.25};
    double best = -1;
    for (size_t t = 0; t < sizeof thetas / sizeof thetas[0]; t++) {
      double max = dynamic_pass(s, thetas[t], mean);
      if (max >= 0 && (best < 0 || max < best * 0.995)) {
        best = max;
        memcpy(w->best_c, w->c_of, (size_t)s->n_pieces * sizeof *w->c_of);
        memcpy(w->best_group, w->group_of, (size_t)s->n_pieces * sizeof *w->group_of);
      }
      if (best >= 0 && best <= mean * 1.01)
        break; /* within 1% of the mean, a lower bound: more splitting buys nothing */
    }
    /* Balanced's layout is a dynamic layout too (every piece on its
     * replica's group of cp): where capacity leaves the passes little room,
     * it can be better; then it wins — by any margin, not the passes' 0.5%
     * — so dynamic is never worse than it. */
    if (!(best >= 0 && best <= mean * 1.01) && balanced_rows(s)) {
      double max = 0;
      for (int r = 0; r < p->dp; r++)
        max = fmax(max, w->load[r] / p->cp);
      if (best < 0 || max < best) {
        best = max;
        rows_as_groups(s, w->row_of);
      }
    }
    if (best < 0) {
      s->fell_back = 1;
      rows_as_groups(s, w->srow_of);
    }
    rc = emit_dynamic(s, w->best_c, w->best_group);
  }
  if (rc)
    return rc;
  s->total_work = 0;
  for (int r = 0; r < s->n_ranks; r++)
    s->total_work += s->rank_work[r];
  return 0;
}

int64_t cpdl__schedule_rank_cu(const cpdl__schedule_t *s, int r, int32_t *cu_seqlens, int32_t *cu_padded,
                               int32_t *cu_local) {
  if (!s || r < 0 || r >= s->n_ranks)
    return cpdl__error(CPDL_EARG, "schedule: rank %d is outside 0 .. %d", r, s ? s->n_ranks - 1 : -1);
  const int64_t begin = s->rank_begin[r], n = s->rank_begin[r + 1] - begin;
  int64_t real = 0, padded = 0;
  if (cu_seqlens)
    cu_seqlens[0] = 0;
  if (cu_padded)
    cu_padded[0] = 0;
  if (cu_local)
    cu_local[0] = 0;
  for (int64_t k = 0; k < n; k++) {
    const cpdl__schedule_sub_t *e = &s->subs[begin + k];
    const int32_t c = s->group_size[e->group];
    real += e->len;
    padded += e->padded;
    if (padded > INT32_MAX) /* dynamic: whole lengths of many spread pieces */
      return cpdl__error(CPDL_EOVERFLOW, "schedule: rank %d's cu_seqlens_padded passes 2^31 at entry %lld",
                         r, (long long)k);
    if (cu_seqlens)
      cu_seqlens[k + 1] = (int32_t)real;
    if (cu_padded)
      cu_padded[k + 1] = (int32_t)padded;
    if (cu_local)
      cu_local[k + 1] = (int32_t)(e->local_start + e->padded / c);
  }
  return n;
}
