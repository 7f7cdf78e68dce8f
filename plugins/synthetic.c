/* synthetic.c — the `synthetic:` data source: deterministic documents made
 * from a seed, for tests and benchmarks without data files.
 * Invariant: document i depends only on (seed, i, query parameters) — its
 * length and every token come from counter-based hashing (splitmix64 of the
 * seed, index and position), so any sample can be read in any order, on any
 * node, and is always the same. The last token of a document is the EOT
 * token and no other token equals it. Tokens are uint32, generated into a
 * per-source buffer valid until the next read (the host serializes reads).
 */
#include "cpdl/plugin.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Largest document we agree to generate (tokens): bounds the buffer. */
#define MAX_DOC_TOKENS (INT64_C(1) << 28)

enum dist { DIST_FIXED, DIST_UNIFORM, DIST_EXP };

typedef struct synthetic {
  uint64_t seed;
  int64_t vocab, samples, eot, mean, min, max;
  enum dist dist;
  uint32_t *buf;
  int64_t buf_cap;
} synthetic_t;

/* splitmix64's finalizer: a bijective 64-bit mixer with full avalanche. */
static uint64_t mix64(uint64_t z) {
  z += UINT64_C(0x9e3779b97f4a7c15);
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  return z ^ (z >> 31);
}

/* Uniform in [0, range) from 64 random bits (multiply-high; bias < 2^-32). */
static uint64_t below(uint64_t bits, uint64_t range) {
  return (uint64_t)(((unsigned __int128)bits * range) >> 64);
}

static uint64_t doc_key(const synthetic_t *s, int64_t i) {
  return mix64(s->seed ^ mix64((uint64_t)i * UINT64_C(0xd1b54a32d192ed03)));
}

static int64_t doc_length(const synthetic_t *s, uint64_t key) {
  uint64_t bits = mix64(key ^ UINT64_C(0x6a09e667f3bcc909));
  int64_t len;
  switch (s->dist) {
  case DIST_FIXED:
    return s->mean;
  case DIST_UNIFORM:
    return s->min + (int64_t)below(bits, (uint64_t)(s->max - s->min + 1));
  case DIST_EXP:
  default: {
    /* u in (0, 1]: 53 random bits, never 0 so log() is finite */
    double u = ((double)(bits >> 11) + 1.0) / 9007199254740992.0;
    len = (int64_t)llround(-log(u) * (double)s->mean);
    break;
  }
  }
  if (len < s->min)
    len = s->min;
  if (len > s->max)
    len = s->max;
  return len;
}

/* Token j (< len-1) of the document with `key`: uniform over the vocabulary
 * without the EOT id. */
static uint32_t doc_token(const synthetic_t *s, uint64_t key, int64_t j, uint64_t content_range) {
  uint64_t t = below(mix64(key + (uint64_t)j * UINT64_C(0x9e3779b97f4a7c15)), content_range);
  if ((int64_t)t >= s->eot)
    t++; /* skip the EOT id (content_range excludes it when eot < vocab) */
  return (uint32_t)t;
}

/* seed= when given, else the loader's seed (plugin.h: the key wins), else 1234. */
static int syn_open_params(const cpdl_source_host_t *host, const cpdl_source_params_t *params,
                           const char *path, const char *query, void **state, char *err,
                           size_t errlen) {
  static const char *const known[] = {"seed", "vocab", "samples", "dist", "mean",
                                      "min",  "max",   "eot",     NULL};
  if (path && *path) {
    snprintf(err, errlen, "synthetic: takes no path, got '%s' (use \"synthetic:?seed=1&...\")",
             path);
    return CPDL_SOURCE_EARG;
  }
  int rc = host->query_check(query, known, err, errlen);
  if (rc)
    return rc;
  synthetic_t *s = calloc(1, sizeof *s);
  if (!s) {
    snprintf(err, errlen, "synthetic: out of memory");
    return -ENOMEM;
  }
  int64_t seed;
  char dist[16] = "exp";
  /* As signed: a seed's 64 bits, whichever side gives them. */
  const int64_t default_seed = (int64_t)CPDL_SOURCE_PARAM(params, seed, UINT64_C(1234));
  if ((rc = host->query_int(query, "seed", default_seed, INT64_MIN, INT64_MAX, &seed, err,
                            errlen)) ||
      (rc = host->query_int(query, "vocab", 50257, 2, INT64_C(1) << 32, &s->vocab, err, errlen)) ||
      (rc = host->query_int(query, "samples", 1000000, 0, INT64_C(1) << 62, &s->samples, err,
                            errlen)) ||
      (rc = host->query_int(query, "eot", 50256, 0, UINT32_MAX, &s->eot, err, errlen)) ||
      (rc = host->query_int(query, "min", 1, 1, MAX_DOC_TOKENS, &s->min, err, errlen)) ||
      (rc = host->query_int(query, "max", 8192, 1, MAX_DOC_TOKENS, &s->max, err, errlen)) ||
      (rc = host->query_int(query, "mean", 1024, 1, MAX_DOC_TOKENS, &s->mean, err, errlen)))
    goto fail;
  s->seed = (uint64_t)seed;
  if (host->query_get(query, "dist", dist, sizeof dist) < 0) {
    snprintf(err, errlen, "synthetic: dist= must be fixed, uniform or exp");
    rc = CPDL_SOURCE_EARG;
    goto fail;
  }
  if (strcmp(dist, "fixed") == 0)
    s->dist = DIST_FIXED;
  else if (strcmp(dist, "uniform") == 0)
    s->dist = DIST_UNIFORM;
  else if (strcmp(dist, "exp") == 0)
    s->dist = DIST_EXP;
  else {
    snprintf(err, errlen, "synthetic: dist=%s: expected fixed, uniform or exp", dist);
    rc = CPDL_SOURCE_EARG;
    goto fail;
  }
  char given[32];
  int mean_given = host->query_get(query, "mean", given, sizeof given) == 1;
  if (s->dist == DIST_FIXED) {
    s->min = s->max = s->mean; /* every document has exactly mean tokens */
  } else if (s->min > s->max) {
    snprintf(err, errlen, "synthetic: need min <= max, got min=%lld max=%lld", (long long)s->min,
             (long long)s->max);
    rc = CPDL_SOURCE_EARG;
    goto fail;
  } else if (s->dist == DIST_UNIFORM) {
    s->mean = (s->min + s->max) / 2; /* implied by the bounds; a given mean is ignored */
  } else if (!mean_given && (s->mean < s->min || s->mean > s->max)) {
    s->mean = s->mean < s->min ? s->min : s->max; /* default mean, clamped into the bounds */
  } else if (s->mean < s->min || s->mean > s->max) {
    snprintf(err, errlen,
             "synthetic: need min <= mean <= max, got min=%lld mean=%lld max=%lld",
             (long long)s->min, (long long)s->mean, (long long)s->max);
    rc = CPDL_SOURCE_EARG;
    goto fail;
  }
  if (s->vocab > (INT64_C(1) << 32)) {
    snprintf(err, errlen, "synthetic: vocab=%lld does not fit uint32 tokens", (long long)s->vocab);
    rc = CPDL_SOURCE_EARG;
    goto fail;
  }
  *state = s;
  return 0;
fail:
  free(s);
  return rc;
}

static int syn_open(const cpdl_source_host_t *host, const char *path, const char *query,
                    void **state, char *err, size_t errlen) {
  return syn_open_params(host, NULL, path, query, state, err, errlen);
}

static int64_t syn_count(void *state) { return ((synthetic_t *)state)->samples; }

static int syn_read(void *state, int64_t i, const void **tokens, int64_t *n, int *token_bytes,
                    char *err, size_t errlen) {
  synthetic_t *s = state;
  uint64_t key = doc_key(s, i);
  int64_t len = doc_length(s, key);
  if (len > s->buf_cap) {
    int64_t cap = s->buf_cap ? s->buf_cap : 1024;
    while (cap < len)
      cap *= 2;
    uint32_t *grown = realloc(s->buf, (size_t)cap * sizeof *grown);
    if (!grown) {
      snprintf(err, errlen, "synthetic: out of memory for a %lld-token document", (long long)len);
      return -ENOMEM;
    }
    s->buf = grown;
    s->buf_cap = cap;
  }
  uint64_t content_range = s->eot < s->vocab ? (uint64_t)s->vocab - 1 : (uint64_t)s->vocab;
  for (int64_t j = 0; j + 1 < len; j++)
    s->buf[j] = doc_token(s, key, j, content_range);
  s->buf[len - 1] = (uint32_t)s->eot;
  *tokens = s->buf;
  *n = len;
  *token_bytes = 4;
  return 0;
}

static void syn_close(void *state) {
  synthetic_t *s = state;
  if (s) {
    free(s->buf);
    free(s);
  }
}

static int64_t syn_eot(void *state) { return ((synthetic_t *)state)->eot; }

static int64_t syn_length(void *state, int64_t i) {
  synthetic_t *s = state;
  return doc_length(s, doc_key(s, i));
}

static const cpdl_source_plugin_t descriptor = {
  .abi_version = CPDL_SOURCE_ABI_VERSION,
  .struct_size = sizeof(cpdl_source_plugin_t),
  .name = "synthetic",
  .description = "deterministic documents from a seed (seed, vocab, samples, dist, mean, min, "
                 "max, eot)",
  .flags = 0,
  .open = syn_open,
  .count = syn_count,
  .read = syn_read,
  .close = syn_close,
  .eot = syn_eot,
  .length = syn_length,
  .open_params = syn_open_params,
};

CPDL_SOURCE_PLUGIN_EXPORT const cpdl_source_plugin_t *cpdl_source_plugin_v1(void) {
  return &descriptor;
}
