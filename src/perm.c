/* perm.c — the one document order: a permutation of [0, n) per epoch.
 *
 * Invariant: the document at (epoch, position) is a pure function of
 * (n, seed, epoch) — never of the job's layout — so every group leader of
 * every replica computes the same global order without talking to the
 * others (docs/design.md#the-global-order). The only cache is the current
 * epoch's permutation table, rebuilt when another epoch is asked for.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>

#define PERM_TABLE_MAX_DEFAULT ((int64_t)1 << 26) /* 256 MiB of uint32 */
#define FEISTEL_ROUNDS 6

struct cpdl__perm {
  int64_t n;
  uint64_t seed;
  /* permutation of the cached epoch */
  bool use_table;
  bool cached;
  uint64_t cached_epoch;
  uint32_t *table;            /* n entries when use_table */
  unsigned half_bits;         /* Feistel: domain is 2^(2*half_bits) >= n */
  uint64_t round_keys[FEISTEL_ROUNDS];
};

/* splitmix64's finalizer: a bijective 64-bit mix with full avalanche. */
static uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

/* splitmix64 generator step: used only to seed xoshiro from one word. */
static uint64_t splitmix64_next(uint64_t *state) {
  *state += 0x9e3779b97f4a7c15ULL;
  return mix64(*state);
}

/* xoshiro256** (Blackman & Vigna): the stream for one epoch's shuffle. */
typedef struct { uint64_t s[4]; } xoshiro_t;

static uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(xoshiro_t *g) {
  uint64_t result = rotl64(g->s[1] * 5, 7) * 9;
  uint64_t t = g->s[1] << 17;
  g->s[2] ^= g->s[0];
  g->s[3] ^= g->s[1];
  g->s[1] ^= g->s[2];
  g->s[0] ^= g->s[3];
  g->s[2] ^= t;
  g->s[3] = rotl64(g->s[3], 45);
  return result;
}

/* The epoch's stream is keyed by nested hashing of (seed, epoch), so that no
 * two (seed, epoch) pairs share a stream by simple arithmetic (seed+1,
 * epoch-1 and the like). */
static void epoch_stream(uint64_t seed, uint64_t epoch, xoshiro_t *g) {
  uint64_t key = mix64(mix64(seed ^ 0x63706466656564ULL /* "cpdfeed" */) ^ epoch);
  for (int i = 0; i < 4; i++)
    g->s[i] = splitmix64_next(&key);
}

/* Uniform in [0, bound) by Lemire's multiply-and-reject (no modulo bias). */
static uint64_t uniform_below(xoshiro_t *g, uint64_t bound) {
  __uint128_t m = (__uint128_t)xoshiro_next(g) * bound;
  uint64_t low = (uint64_t)m;
  if (low < bound) {
    uint64_t threshold = -bound % bound;
    while (low < threshold) {
      m = (__uint128_t)xoshiro_next(g) * bound;
      low = (uint64_t)m;
    }
  }
  return (uint64_t)(m >> 64);
}

static void build_epoch(cpdl__perm_t *s, uint64_t epoch) {
  xoshiro_t g;
  epoch_stream(s->seed, epoch, &g);
  if (s->use_table) {
    uint32_t n = (uint32_t)s->n;
    for (uint32_t i = 0; i < n; i++)
      s->table[i] = i;
    for (uint32_t i = n - 1; i > 0; i--) { /* Fisher–Yates, from the top */
      uint32_t j = (uint32_t)uniform_below(&g, (uint64_t)i + 1);
      uint32_t t = s->table[i];
      s->table[i] = s->table[j];
      s->table[j] = t;
    }
  } else {
    for (int r = 0; r < FEISTEL_ROUNDS; r++)
      s->round_keys[r] = xoshiro_next(&g);
  }
  s->cached = true;
  s->cached_epoch = epoch;
}

/* A balanced Feistel network on 2*half_bits bits is a bijection for any round
 * function; cycle walking (re-applying it until the value falls below n)
 * restricts it to a bijection of [0, n). The domain is < 4n, so the expected
 * number of walks is below 4. */
static uint64_t feistel(const cpdl__perm_t *s, uint64_t x) {
  const unsigned h = s->half_bits;
  const uint64_t mask = (h >= 64) ? ~0ULL : ((1ULL << h) - 1);
  uint64_t left = x >> h, right = x & mask;
  for (int r = 0; r < FEISTEL_ROUNDS; r++) {
    uint64_t next = left ^ (mix64(right ^ s->round_keys[r]) & mask);
    left = right;
    right = next;
  }
  return (left << h) | right;
}

static uint64_t feistel_permute(const cpdl__perm_t *s, uint64_t x) {
  const uint64_t n = (uint64_t)s->n;
  do {
    x = feistel(s, x);
  } while (x >= n);
  return x;
}

int cpdl__perm_create(int64_t n, uint64_t seed, int64_t table_max, cpdl__perm_t **out) {
  *out = NULL;
  if (n < 1)
    return cpdl__error(CPDL_EARG, "perm: the source has %lld samples; it needs at least one",
                       (long long)n);
  cpdl__perm_t *s = calloc(1, sizeof *s);
  if (!s)
    return cpdl__error(-ENOMEM, "perm: out of memory");
  s->n = n;
  s->seed = seed;
  if (table_max <= 0)
    table_max = PERM_TABLE_MAX_DEFAULT;
  if (table_max > (int64_t)UINT32_MAX)
    table_max = (int64_t)UINT32_MAX;
  s->use_table = n <= table_max;
  if (s->use_table) {
    s->table = malloc((size_t)n * sizeof *s->table);
    if (!s->table) {
      free(s);
      return cpdl__error(-ENOMEM, "perm: no memory for the permutation of %lld samples (%zu bytes)",
                         (long long)n, (size_t)n * sizeof(uint32_t));
    }
  } else {
    unsigned bits = 2;
    while (bits < 63 && ((uint64_t)1 << bits) < (uint64_t)n)
      bits++;
    s->half_bits = (bits + 1) / 2;
  }
  *out = s;
  return 0;
}

void cpdl__perm_destroy(cpdl__perm_t *perm) {
  if (!perm)
    return;
  free(perm->table);
  free(perm);
}

int64_t cpdl__perm_size(const cpdl__perm_t *perm) { return perm->n; }

int64_t cpdl__perm_at(cpdl__perm_t *s, uint64_t epoch, int64_t position) {
  if (!s->cached || s->cached_epoch != epoch)
    build_epoch(s, epoch);
  return s->use_table ? (int64_t)s->table[position] : (int64_t)feistel_permute(s, (uint64_t)position);
}
