/* sampler.c — which sample a data-parallel replica reads next.
 *
 * Invariant: the sample at (epoch, position) is a pure function of
 * (n_samples, seed, epoch, dp_rank, dp_size, drop_last); every node of a
 * replica computes the same order without talking to the others, and the
 * whole state to resume is (epoch, position). The only cache is the current
 * epoch's permutation table, rebuilt when another epoch is asked for.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>

#define SAMPLER_TABLE_MAX_DEFAULT ((int64_t)1 << 26) /* 256 MiB of uint32 */
#define FEISTEL_ROUNDS 6

struct cpdl__sampler {
  cpdl__sampler_params_t params;
  int64_t per_epoch;
  /* state: the next sample is at (epoch, position) */
  uint64_t epoch;
  int64_t position;
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

static void build_epoch(cpdl__sampler_t *s, uint64_t epoch) {
  xoshiro_t g;
  epoch_stream(s->params.seed, epoch, &g);
  if (s->use_table) {
    uint32_t n = (uint32_t)s->params.n_samples;
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
static uint64_t feistel(const cpdl__sampler_t *s, uint64_t x) {
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

static uint64_t feistel_permute(const cpdl__sampler_t *s, uint64_t x) {
  const uint64_t n = (uint64_t)s->params.n_samples;
  do {
    x = feistel(s, x);
  } while (x >= n);
  return x;
}

int cpdl__sampler_create(const cpdl__sampler_params_t *params, cpdl__sampler_t **out) {
  *out = NULL;
  const int64_t n = params->n_samples;
  if (n < 1)
    return cpdl__error(CPDL_EARG, "sampler: the source has %lld samples; it needs at least one",
                       (long long)n);
  if (params->dp_size < 1 || params->dp_rank < 0 || params->dp_rank >= params->dp_size)
    return cpdl__error(CPDL_EARG, "sampler: dp_rank %d is not in [0, dp_size %d)",
                       params->dp_rank, params->dp_size);
  const int64_t dp = params->dp_size;
  /* n / dp and the ceiling cannot overflow: n <= INT64_MAX, dp >= 1. */
  int64_t per_epoch = params->drop_last ? n / dp : n / dp + (n % dp != 0);
  if (per_epoch == 0)
    return cpdl__error(CPDL_EARG,
                       "sampler: the source has %lld samples, fewer than dp_size %d, so with "
                       "drop_last=1 replica %d would get none; set drop_last=0 (wrap) or use "
                       "more data",
                       (long long)n, params->dp_size, params->dp_rank);

  cpdl__sampler_t *s = calloc(1, sizeof *s);
  if (!s)
    return cpdl__error(-ENOMEM, "sampler: out of memory");
  s->params = *params;
  s->per_epoch = per_epoch;
  int64_t table_max = params->table_max > 0 ? params->table_max : SAMPLER_TABLE_MAX_DEFAULT;
  if (table_max > (int64_t)UINT32_MAX)
    table_max = (int64_t)UINT32_MAX;
  s->use_table = n <= table_max;
  if (s->use_table) {
    s->table = malloc((size_t)n * sizeof *s->table);
    if (!s->table) {
      free(s);
      return cpdl__error(-ENOMEM, "sampler: no memory for the permutation of %lld samples (%zu bytes)",
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

void cpdl__sampler_destroy(cpdl__sampler_t *sampler) {
  if (!sampler)
    return;
  free(sampler->table);
  free(sampler);
}

int64_t cpdl__sampler_per_epoch(const cpdl__sampler_t *sampler) { return sampler->per_epoch; }

int cpdl__sampler_index(cpdl__sampler_t *s, uint64_t epoch, int64_t position, int64_t *index) {
  if (position < 0 || position >= s->per_epoch)
    return cpdl__error(CPDL_EARG, "sampler: position %lld is not in [0, %lld) samples per epoch",
                       (long long)position, (long long)s->per_epoch);
  if (!s->cached || s->cached_epoch != epoch)
    build_epoch(s, epoch);
  const uint64_t n = (uint64_t)s->params.n_samples;
  /* < n + dp_size <= 2^63 + 2^31: fits in uint64. With wrap the tail of the
   * epoch reads the permutation again from its start. */
  uint64_t global = (uint64_t)s->params.dp_rank + (uint64_t)position * (uint64_t)s->params.dp_size;
  if (global >= n)
    global %= n;
  *index = s->use_table ? (int64_t)s->table[global] : (int64_t)feistel_permute(s, global);
  return 0;
}

int cpdl__sampler_next(cpdl__sampler_t *s, int64_t *index) {
  int rc = cpdl__sampler_index(s, s->epoch, s->position, index);
  if (rc)
    return rc;
  if (++s->position == s->per_epoch) {
    s->position = 0;
    s->epoch++;
  }
  return 0;
}

void cpdl__sampler_tell(const cpdl__sampler_t *s, uint64_t *epoch, int64_t *position) {
  *epoch = s->epoch;
  *position = s->position;
}

int cpdl__sampler_seek(cpdl__sampler_t *s, uint64_t epoch, int64_t position) {
  if (position < 0 || position >= s->per_epoch)
    return cpdl__error(CPDL_EARG,
                       "sampler: cannot seek to position %lld: an epoch of this replica has "
                       "%lld samples (was the state saved with another source or dp_size?)",
                       (long long)position, (long long)s->per_epoch);
  s->epoch = epoch;
  s->position = position;
  return 0;
}
