/* llmc.c — the `llmc:` data source: llm.c token shards (.bin).
 * A shard is a 1024-byte header of 256 little-endian int32 (magic 20240520
 * + version 1 → uint16 tokens, or magic 20240801 + version 7 → uint32
 * tokens; header[2] = token count) followed by exactly that many tokens.
 * Several shards (a glob or a comma-separated list, sorted by path) form one
 * dataset, all of one token width. Documents: llm.c writes EOT *before* each
 * document, so document i spans from its EOT token (inclusive) up to the next
 * EOT (exclusive) or the shard's end; tokens before a shard's first EOT form
 * a document of their own. Documents never span shards. The index (one
 * uint64 start per document) is built by one streaming pass at open; reads
 * are zero-copy pointers into the read-only mappings.
 */
#include "cpdl/plugin.h"

#include <errno.h>
#include <glob.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "llmc shards are little-endian; this plugin returns tokens zero-copy"
#endif

#define LLMC_HEADER_BYTES 1024
#define LLMC_MAGIC_U16 20240520
#define LLMC_MAGIC_U32 20240801

typedef struct llmc_shard {
  char *path;
  cpdl_source_mapping_t map;
  const uint8_t *tokens;  /* map.addr + 1024 */
  uint64_t n_tokens;
  uint64_t first_doc;     /* index of its first document in the dataset */
} llmc_shard_t;

typedef struct llmc {
  const cpdl_source_host_t *host;
  llmc_shard_t *shards;
  size_t n_shards;
  int token_bytes;
  int64_t eot;
  uint64_t *doc_start;    /* token offset of each document within its shard */
  uint64_t n_docs, cap_docs;
} llmc_t;

static int32_t le32(const uint8_t *p) {
  int32_t v;
  memcpy(&v, p, 4);
  return v;
}

/* Validate a shard's header against its length. \return 0 or ECORRUPT. */
static int llmc_parse_header(const char *name, const uint8_t *base, uint64_t size,
                             int *token_bytes, uint64_t *n_tokens, char *err, size_t errlen) {
  if (size < LLMC_HEADER_BYTES) {
    snprintf(err, errlen,
             "%s: offset 0: expected a %d-byte llm.c header (256 int32), the file has %" PRIu64
             " bytes", name, LLMC_HEADER_BYTES, size);
    return CPDL_SOURCE_ECORRUPT;
  }
  int32_t magic = le32(base), version = le32(base + 4), count = le32(base + 8);
  if (magic == LLMC_MAGIC_U16 || magic == LLMC_MAGIC_U32) {
    int want = magic == LLMC_MAGIC_U16 ? 1 : 7;
    if (version != want) {
      snprintf(err, errlen,
               "%s: offset 4: version %" PRId32 " with magic %" PRId32 ", expected version %d",
               name, version, magic, want);
      return CPDL_SOURCE_ECORRUPT;
    }
    *token_bytes = magic == LLMC_MAGIC_U16 ? 2 : 4;
  } else {
    snprintf(err, errlen,
             "%s: offset 0: bad magic %" PRId32 ", expected %d (uint16 tokens) or %d (uint32 "
             "tokens): not an llm.c .bin shard", name, magic, LLMC_MAGIC_U16, LLMC_MAGIC_U32);
    return CPDL_SOURCE_ECORRUPT;
  }
  if (count < 0) {
    snprintf(err, errlen, "%s: offset 8: negative token count %" PRId32, name, count);
    return CPDL_SOURCE_ECORRUPT;
  }
  /* count < 2^31 and token_bytes <= 4: no overflow in 64 bits */
  uint64_t need = LLMC_HEADER_BYTES + (uint64_t)count * (uint64_t)*token_bytes;
  if (size != need) {
    snprintf(err, errlen,
             "%s: offset %" PRIu64 ": header says %" PRId32 " tokens of %d bytes, so the file "
             "should have %" PRIu64 " bytes; it has %" PRIu64 " (%s)", name,
             size < need ? size : need, count, *token_bytes, need, size,
             size < need ? "truncated" : "trailing bytes");
    return CPDL_SOURCE_ECORRUPT;
  }
  *n_tokens = (uint64_t)count;
  return 0;
}

static int push_doc(llmc_t *l, uint64_t start, char *err, size_t errlen) {
  if (l->n_docs == l->cap_docs) {
    uint64_t cap = l->cap_docs ? l->cap_docs * 2 : 4096;
    uint64_t *grown = realloc(l->doc_start, cap * sizeof *grown);
    if (!grown) {
      snprintf(err, errlen, "llmc: out of memory for the document index (%" PRIu64 " documents)",
               cap);
      return -ENOMEM;
    }
    l->doc_start = grown;
    l->cap_docs = cap;
  }
  l->doc_start[l->n_docs++] = start;
  return 0;
}

/* One streaming pass over a shard's tokens: a document starts at offset 0
 * and at every EOT after it. */
static int llmc_index_shard(llmc_t *l, const uint8_t *tokens, uint64_t n, char *err,
                            size_t errlen) {
  if (n == 0)
    return 0;
  int rc = push_doc(l, 0, err, errlen);
  if (rc)
    return rc;
  if (l->token_bytes == 2) {
    if (l->eot > UINT16_MAX)
      return 0; /* an EOT id above uint16 never occurs: one document */
    uint16_t eot = (uint16_t)l->eot;
    for (uint64_t k = 1; k < n; k++) {
      uint16_t t;
      memcpy(&t, tokens + 2 * k, 2);
      if (t == eot && (rc = push_doc(l, k, err, errlen)))
        return rc;
    }
  } else {
    if (l->eot > UINT32_MAX)
      return 0;
    uint32_t eot = (uint32_t)l->eot;
    for (uint64_t k = 1; k < n; k++) {
      uint32_t t;
      memcpy(&t, tokens + 4 * k, 4);
      if (t == eot && (rc = push_doc(l, k, err, errlen)))
        return rc;
    }
  }
  return 0;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Expand "a.bin,b_*.bin" into a sorted, de-duplicated list of paths. */
static int expand_paths(const char *spec, char ***out, size_t *n_out, char *err, size_t errlen) {
  char *copy = strdup(spec);
  char **paths = NULL;
  size_t n = 0, cap = 0;
  int rc = 0;
  if (!copy)
    return -ENOMEM;
  char *save = NULL;
  for (char *piece = strtok_r(copy, ",", &save); piece; piece = strtok_r(NULL, ",", &save)) {
    glob_t g;
    int grc = glob(piece, GLOB_NOCHECK, NULL, &g); /* no match: keep the literal, open says why */
    if (grc != 0) {
      snprintf(err, errlen, "llmc: cannot expand '%s'", piece);
      rc = CPDL_SOURCE_EARG;
      goto fail;
    }
    for (size_t k = 0; k < g.gl_pathc; k++) {
      if (n == cap) {
        cap = cap ? cap * 2 : 16;
        char **grown = realloc(paths, cap * sizeof *grown);
        if (!grown) {
          globfree(&g);
          rc = -ENOMEM;
          goto fail;
        }
        paths = grown;
      }
      if (!(paths[n] = strdup(g.gl_pathv[k]))) {
        globfree(&g);
        rc = -ENOMEM;
        goto fail;
      }
      n++;
    }
    globfree(&g);
  }
  if (n == 0) {
    snprintf(err, errlen, "llmc: no shard path given (use \"llmc:/data/train_*.bin\")");
    rc = CPDL_SOURCE_EARG;
    goto fail;
  }
  qsort(paths, n, sizeof *paths, cmp_str);
  size_t w = 1;
  for (size_t k = 1; k < n; k++) {
    if (strcmp(paths[k], paths[w - 1]) == 0)
      free(paths[k]);
    else
      paths[w++] = paths[k];
  }
  free(copy);
  *out = paths;
  *n_out = w;
  return 0;
fail:
  for (size_t k = 0; k < n; k++)
    free(paths[k]);
  free(paths);
  free(copy);
  if (rc == -ENOMEM)
    snprintf(err, errlen, "llmc: out of memory expanding '%s'", spec);
  return rc;
}

static void llmc_close(void *state) {
  llmc_t *l = state;
  if (!l)
    return;
  for (size_t s = 0; s < l->n_shards; s++) {
    if (l->host)
      l->host->unmap_file(&l->shards[s].map);
    free(l->shards[s].path);
  }
  free(l->shards);
  free(l->doc_start);
  free(l);
}

static int llmc_open(const cpdl_source_host_t *host, const char *path, const char *query,
                     void **state, char *err, size_t errlen) {
  static const char *const known[] = {"eot", NULL};
  int rc = host->query_check(query, known, err, errlen);
  if (rc)
    return rc;
  llmc_t *l = calloc(1, sizeof *l);
  if (!l) {
    snprintf(err, errlen, "llmc: out of memory");
    return -ENOMEM;
  }
  l->host = host;
  char **paths = NULL;
  size_t n_paths = 0;
  if ((rc = expand_paths(path, &paths, &n_paths, err, errlen)))
    goto fail;
  l->shards = calloc(n_paths, sizeof *l->shards);
  if (!l->shards) {
    rc = -ENOMEM;
    snprintf(err, errlen, "llmc: out of memory");
    goto fail;
  }
  /* take ownership of the path strings shard by shard */
  for (size_t s = 0; s < n_paths; s++) {
    l->shards[s].path = paths[s];
    paths[s] = NULL;
  }
  l->n_shards = n_paths;

  int64_t eot_query = -1;
  char buf[32];
  int has_eot = host->query_get(query, "eot", buf, sizeof buf);
  if (has_eot && (rc = host->query_int(query, "eot", 0, 0, UINT32_MAX, &eot_query, err, errlen)))
    goto fail;

  for (size_t s = 0; s < l->n_shards; s++) {
    llmc_shard_t *sh = &l->shards[s];
    if ((rc = host->map_file(sh->path, &sh->map, err, errlen)))
      goto fail;
    int tb;
    if ((rc = llmc_parse_header(sh->path, sh->map.addr, sh->map.size, &tb, &sh->n_tokens, err,
                                errlen)))
      goto fail;
    if (s == 0) {
      l->token_bytes = tb;
      l->eot = has_eot ? eot_query : (tb == 2 ? 50256 : 128000);
      if (tb == 2 && l->eot > UINT16_MAX) {
        snprintf(err, errlen,
                 "%s: eot=%lld cannot occur in uint16 tokens (0 .. 65535): the shard would be "
                 "one document; give the tokenizer's EOT id", sh->path, (long long)l->eot);
        rc = CPDL_SOURCE_EARG;
        goto fail;
      }
    } else if (tb != l->token_bytes) {
      snprintf(err, errlen,
               "%s: offset 0: uint%d tokens, but %s has uint%d tokens; all shards of a dataset "
               "must have one token width", sh->path, 8 * tb, l->shards[0].path,
               8 * l->token_bytes);
      rc = CPDL_SOURCE_ECORRUPT;
      goto fail;
    }
    sh->tokens = (const uint8_t *)sh->map.addr + LLMC_HEADER_BYTES;
    sh->first_doc = l->n_docs;
    if ((rc = llmc_index_shard(l, sh->tokens, sh->n_tokens, err, errlen)))
      goto fail;
  }
  if (l->n_docs == 0) {
    snprintf(err, errlen, "%s%s: offset 8: zero tokens, so zero documents", l->shards[0].path,
             l->n_shards > 1 ? " (and every other shard)" : "");
    rc = CPDL_SOURCE_ECORRUPT;
    goto fail;
  }
  free(paths);
  *state = l;
  return 0;
fail:
  for (size_t s = 0; paths && s < n_paths; s++)
    free(paths[s]);
  free(paths);
  llmc_close(l);
  return rc;
}

static int64_t llmc_count(void *state) { return (int64_t)((llmc_t *)state)->n_docs; }

/* The shard holding document d: the last shard whose first_doc <= d. */
static size_t shard_of(const llmc_t *l, uint64_t d) {
  size_t lo = 0, hi = l->n_shards; /* invariant: first_doc[lo] <= d < first_doc[hi] */
  while (hi - lo > 1) {
    size_t mid = lo + (hi - lo) / 2;
    if (l->shards[mid].first_doc <= d)
      lo = mid;
    else
      hi = mid;
  }
  /* skip empty shards that share first_doc with the one holding d */
  while (lo + 1 < l->n_shards && l->shards[lo + 1].first_doc <= d)
    lo++;
  return lo;
}

static int llmc_read(void *state, int64_t i, const void **tokens, int64_t *n, int *token_bytes,
                     char *err, size_t errlen) {
  llmc_t *l = state;
  (void)err;
  (void)errlen;
  uint64_t d = (uint64_t)i;
  size_t s = shard_of(l, d);
  const llmc_shard_t *sh = &l->shards[s];
  uint64_t start = l->doc_start[d];
  uint64_t end = d + 1 < l->n_docs && (s + 1 == l->n_shards || d + 1 < l->shards[s + 1].first_doc)
                     ? l->doc_start[d + 1]
                     : sh->n_tokens;
  *tokens = sh->tokens + start * (uint64_t)l->token_bytes;
  *n = (int64_t)(end - start);
  *token_bytes = l->token_bytes;
  return 0;
}

static int64_t llmc_eot(void *state) { return ((llmc_t *)state)->eot; }

static const cpdl_source_plugin_t descriptor = {
  .abi_version = CPDL_SOURCE_ABI_VERSION,
  .struct_size = sizeof(cpdl_source_plugin_t),
  .name = "llmc",
  .description = "llm.c .bin token shards (glob or comma list; documents start at EOT)",
  .flags = CPDL_SOURCE_STABLE_TOKENS | CPDL_SOURCE_CONCURRENT_READS,
  .open = llmc_open,
  .count = llmc_count,
  .read = llmc_read,
  .close = llmc_close,
  .eot = llmc_eot,
};

CPDL_SOURCE_PLUGIN_EXPORT const cpdl_source_plugin_t *cpdl_source_plugin_v1(void) {
  return &descriptor;
}

#ifdef CPDL_FUZZ_BUILD
/* Fuzzing entry: the whole parser (header + document index) on a buffer. */
int cpdl_llmc_fuzz_parse(const uint8_t *data, size_t size);
int cpdl_llmc_fuzz_parse(const uint8_t *data, size_t size) {
  char err[512];
  int tb;
  uint64_t n;
  int rc = llmc_parse_header("fuzz.bin", data, size, &tb, &n, err, sizeof err);
  if (rc)
    return rc;
  llmc_t l = {.token_bytes = tb, .eot = tb == 2 ? 50256 : 128000};
  rc = llmc_index_shard(&l, data + LLMC_HEADER_BYTES, n, err, sizeof err);
  uint64_t total = 0;
  for (uint64_t d = 0; d < l.n_docs; d++)
    total += (d + 1 < l.n_docs ? l.doc_start[d + 1] : n) - l.doc_start[d];
  free(l.doc_start);
  return rc ? rc : (total == n ? 0 : -1);
}
#endif
