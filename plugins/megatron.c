/* megatron.c — the `megatron:` data source: Megatron-LM indexed datasets,
 * `<prefix>.idx` + headerless `<prefix>.bin`.
 * .idx layout (little-endian, arrays possibly unaligned — read with memcpy):
 *   "MMIDIDX\0\0" | u64 version=1 | u8 dtype | u64 N sequences | u64 D |
 *   i32 lengths[N] | i64 byte pointers[N] | i64 document_indices[D] | [i8 modes[N]]
 * document_indices has D = documents + 1 entries, starts at 0, ends at N.
 * Invariant after open: every sequence lies inside the .bin, is aligned to the
 * token size, and starts where the previous one ends (from byte 0 to the
 * .bin's end, as Megatron-LM writes them), so a document is one zero-copy
 * slice of the .bin mapping.
 */
#include "cpdl/plugin.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "Megatron .idx/.bin are little-endian; this plugin returns tokens zero-copy"
#endif

#define MM_MAGIC "MMIDIDX\0\0"
#define MM_MAGIC_BYTES 9
#define MM_HEADER_BYTES (MM_MAGIC_BYTES + 8 + 1 + 8 + 8) /* 34 */

typedef struct mm_index {
  int item_bytes;          /* token size: 2, 4 or 8 */
  int dtype_code;
  uint64_t n_seqs, n_docs; /* n_docs = D - 1 */
  const uint8_t *lengths;  /* int32[N], unaligned, inside the .idx mapping */
  const uint8_t *pointers; /* int64[N] */
  const uint8_t *doc_idx;  /* int64[D] */
} mm_index_t;

typedef struct megatron {
  const cpdl_source_host_t *host;
  char *idx_path, *bin_path;
  cpdl_source_mapping_t idx_map, bin_map;
  mm_index_t index;
  int by_sequence;         /* ?unit=sequence */
  int64_t eot;
} megatron_t;

static uint64_t rd_u64(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}
static int64_t rd_i64(const uint8_t *p) {
  int64_t v;
  memcpy(&v, p, 8);
  return v;
}
static int32_t rd_i32(const uint8_t *p) {
  int32_t v;
  memcpy(&v, p, 4);
  return v;
}

static int64_t seq_length(const mm_index_t *ix, uint64_t k) { return rd_i32(ix->lengths + 4 * k); }
static int64_t seq_pointer(const mm_index_t *ix, uint64_t k) {
  return rd_i64(ix->pointers + 8 * k);
}
static int64_t doc_first(const mm_index_t *ix, uint64_t j) { return rd_i64(ix->doc_idx + 8 * j); }

/* Parse and validate the .idx in buf against a .bin of bin_size bytes.
 * Pure (no I/O): the fuzzer calls it directly. by_document: the samples
 * are documents (unit=document), else sequences. */
static int mm_parse_index(const char *idx_name, const char *bin_name, const uint8_t *buf,
                          uint64_t size, uint64_t bin_size, int by_document, mm_index_t *ix,
                          char *err, size_t errlen) {
  memset(ix, 0, sizeof *ix);
  if (size < MM_HEADER_BYTES) {
    snprintf(err, errlen,
             "%s: offset 0: expected a %d-byte MMIDIDX header, the file has %" PRIu64 " bytes",
             idx_name, MM_HEADER_BYTES, size);
    return CPDL_SOURCE_ECORRUPT;
  }
  if (memcmp(buf, MM_MAGIC, MM_MAGIC_BYTES) != 0) {
    snprintf(err, errlen,
             "%s: offset 0: bad magic, expected \"MMIDIDX\\0\\0\": not a Megatron .idx file",
             idx_name);
    return CPDL_SOURCE_ECORRUPT;
  }
  uint64_t version = rd_u64(buf + 9);
  if (version != 1) {
    snprintf(err, errlen, "%s: offset 9: version %" PRIu64 ", expected 1", idx_name, version);
    return CPDL_SOURCE_ECORRUPT;
  }
  ix->dtype_code = buf[17];
  switch (ix->dtype_code) {
  case 3: /* int16 */
  case 8: /* uint16 */
    ix->item_bytes = 2;
    break;
  case 4: /* int32 */
    ix->item_bytes = 4;
    break;
  case 5: /* int64 */
    ix->item_bytes = 8;
    break;
  case 1: case 2: case 6: case 7:
    snprintf(err, errlen,
             "%s: offset 17: dtype code %d (%s) is not a 2-, 4- or 8-byte integer token type; "
             "supported: 3 int16, 4 int32, 5 int64, 8 uint16", idx_name, ix->dtype_code,
             ix->dtype_code == 1 ? "uint8" : ix->dtype_code == 2 ? "int8"
             : ix->dtype_code == 6 ? "float64" : "float32");
    return CPDL_SOURCE_EDTYPE;
  default:
    snprintf(err, errlen, "%s: offset 17: unknown dtype code %d, expected 1..8", idx_name,
             ix->dtype_code);
    return CPDL_SOURCE_ECORRUPT;
  }
  uint64_t n = rd_u64(buf + 18), d = rd_u64(buf + 26);
  /* Bound N and D by the file length before any multiplication: each
   * sequence needs 12 bytes and each document index 8. */
  uint64_t avail = size - MM_HEADER_BYTES;
  if (n > avail / 12 || d > (avail - 12 * n) / 8) {
    snprintf(err, errlen,
             "%s: offset 18: %" PRIu64 " sequences and %" PRIu64 " document indices need 12 "
             "bytes per sequence and 8 per index, but only %" PRIu64 " bytes follow the header "
             "(truncated or corrupt)", idx_name, n, d, avail);
    return CPDL_SOURCE_ECORRUPT;
  }
  uint64_t end = MM_HEADER_BYTES + 12 * n + 8 * d;
  if (size != end && size != end + n) {
    snprintf(err, errlen,
             "%s: offset %" PRIu64 ": expected the file to end here (or after %" PRIu64
             " more bytes of modes), it has %" PRIu64 " bytes", idx_name, end, n, size);
    return CPDL_SOURCE_ECORRUPT;
  }
  ix->n_seqs = n;
  ix->lengths = buf + MM_HEADER_BYTES;
  ix->pointers = ix->lengths + 4 * n;
  ix->doc_idx = ix->pointers + 8 * n;
  if (d < 1) {
    snprintf(err, errlen, "%s: offset 26: document index count 0, expected at least 1 (a 0)",
             idx_name);
    return CPDL_SOURCE_ECORRUPT;
  }
  ix->n_docs = d - 1;

  uint64_t off_len = MM_HEADER_BYTES, off_ptr = off_len + 4 * n, off_doc = off_ptr + 8 * n;
  for (uint64_t k = 0; k < n; k++) {
    int64_t len = seq_length(ix, k), ptr = seq_pointer(ix, k);
    if (len < 0) {
      snprintf(err, errlen, "%s: offset %" PRIu64 ": sequence %" PRIu64 " has length %" PRId64
               ", expected >= 0", idx_name, off_len + 4 * k, k, len);
      return CPDL_SOURCE_ECORRUPT;
    }
    uint64_t bytes = (uint64_t)len * (uint64_t)ix->item_bytes; /* < 2^34: no overflow */
    if (ptr < 0 || (uint64_t)ptr > bin_size || bytes > bin_size - (uint64_t)ptr) {
      snprintf(err, errlen,
               "%s: offset %" PRIu64 ": sequence %" PRIu64 " spans bytes [%" PRId64 ", %" PRId64
               " + %" PRIu64 ") of %s, which has %" PRIu64 " bytes", idx_name, off_ptr + 8 * k, k,
               ptr, ptr, bytes, bin_name, bin_size);
      return CPDL_SOURCE_ECORRUPT;
    }
    if ((uint64_t)ptr % (uint64_t)ix->item_bytes != 0) {
      snprintf(err, errlen, "%s: offset %" PRIu64 ": sequence %" PRIu64 " starts at byte %" PRId64
               ", not a multiple of the %d-byte token size", idx_name, off_ptr + 8 * k, k, ptr,
               ix->item_bytes);
      return CPDL_SOURCE_ECORRUPT;
    }
  }
  for (uint64_t j = 0; j < d; j++) {
    int64_t first = doc_first(ix, j);
    int64_t prev = j ? doc_first(ix, j - 1) : 0;
    int64_t want_last = (int64_t)n;
    if ((j == 0 && first != 0) || first < prev || first > want_last ||
        (j == d - 1 && first != want_last)) {
      snprintf(err, errlen,
               "%s: offset %" PRIu64 ": document index %" PRIu64 " is %" PRId64
               ", expected non-decreasing values from 0 to the sequence count %" PRIu64,
               idx_name, off_doc + 8 * j, j, first, n);
      return CPDL_SOURCE_ECORRUPT;
    }
  }
  /* Megatron-LM's writer (_IndexWriter._sequence_pointers) puts each sequence
   * right after the previous one from byte 0, and its own slice reads and
   * add_index rely on it: so the pointers are the running sum of the lengths,
   * and the last sequence ends where the .bin does. A length or pointer that
   * breaks this is a corrupt entry even when it still fits inside the .bin
   * (it would move tokens between samples silently). */
  uint64_t at = 0; /* where sequence k must start */
  for (uint64_t k = 0; k < n; k++) {
    int64_t ptr = seq_pointer(ix, k);
    if ((uint64_t)ptr != at) {
      if (k == 0)
        snprintf(err, errlen, "%s: offset %" PRIu64 ": sequence 0 starts at byte %" PRId64
                 " of %s, expected 0 (Megatron's writer starts at byte 0)", idx_name, off_ptr,
                 ptr, bin_name);
      else
        snprintf(err, errlen,
                 "%s: offset %" PRIu64 ": sequence %" PRIu64 " starts at byte %" PRId64 " of %s, "
                 "expected %" PRIu64 " (sequence %" PRIu64 " starts at byte %" PRId64
                 " and has %" PRId64 " tokens of %d bytes): a corrupt length or pointer; "
                 "Megatron's writer stores each sequence right after the previous one",
                 idx_name, off_ptr + 8 * k, k, ptr, bin_name, at, k - 1,
                 seq_pointer(ix, k - 1), seq_length(ix, k - 1), ix->item_bytes);
      return CPDL_SOURCE_ECORRUPT;
    }
    at += (uint64_t)seq_length(ix, k) * (uint64_t)ix->item_bytes; /* in the .bin: checked above */
  }
  if (n > 0 && at != bin_size) {
    snprintf(err, errlen,
             "%s: offset %" PRIu64 ": the last sequence (%" PRIu64 ", %" PRId64 " tokens) ends at "
             "byte %" PRIu64 ", but %s has %" PRIu64 " bytes: a corrupt length, or a .bin that "
             "is not this .idx's", idx_name, off_len + 4 * (n - 1), n - 1,
             seq_length(ix, n - 1), at, bin_name, bin_size);
    return CPDL_SOURCE_ECORRUPT;
  }
  uint64_t samples = by_document ? ix->n_docs : ix->n_seqs;
  if (samples == 0) {
    snprintf(err, errlen, "%s: offset %d: zero %s", idx_name, by_document ? 26 : 18,
             by_document ? "documents" : "sequences");
    return CPDL_SOURCE_ECORRUPT;
  }
  return 0;
}

static void mm_close(void *state) {
  megatron_t *m = state;
  if (!m)
    return;
  if (m->host) {
    m->host->unmap_file(&m->idx_map);
    m->host->unmap_file(&m->bin_map);
  }
  free(m->idx_path);
  free(m->bin_path);
  free(m);
}

static char *with_suffix(const char *prefix, size_t len, const char *suffix) {
  size_t n = len + strlen(suffix) + 1;
  char *s = malloc(n);
  if (s)
    snprintf(s, n, "%.*s%s", (int)len, prefix, suffix);
  return s;
}

static int mm_open(const cpdl_source_host_t *host, const char *path, const char *query,
                   void **state, char *err, size_t errlen) {
  static const char *const known[] = {"unit", "eot", NULL};
  int rc = host->query_check(query, known, err, errlen);
  if (rc)
    return rc;
  if (!path || !*path) {
    snprintf(err, errlen, "megatron: no path prefix (use \"megatron:/data/corpus_text_document\")");
    return CPDL_SOURCE_EARG;
  }
  megatron_t *m = calloc(1, sizeof *m);
  if (!m) {
    snprintf(err, errlen, "megatron: out of memory");
    return -ENOMEM;
  }
  m->host = host;
  char unit[16] = "document";
  if (host->query_get(query, "unit", unit, sizeof unit) < 0 ||
      (strcmp(unit, "document") != 0 && strcmp(unit, "sequence") != 0)) {
    snprintf(err, errlen, "megatron: unit= must be document or sequence");
    rc = CPDL_SOURCE_EARG;
    goto fail;
  }
  m->by_sequence = strcmp(unit, "sequence") == 0;
  if ((rc = host->query_int(query, "eot", -1, -1, INT64_MAX, &m->eot, err, errlen)))
    goto fail;
  /* accept the prefix, or either file's name */
  size_t len = strlen(path);
  if (len > 4 && (strcmp(path + len - 4, ".idx") == 0 || strcmp(path + len - 4, ".bin") == 0))
    len -= 4;
  m->idx_path = with_suffix(path, len, ".idx");
  m->bin_path = with_suffix(path, len, ".bin");
  if (!m->idx_path || !m->bin_path) {
    snprintf(err, errlen, "megatron: out of memory");
    rc = -ENOMEM;
    goto fail;
  }
  if ((rc = host->map_file(m->idx_path, &m->idx_map, err, errlen)) ||
      (rc = host->map_file(m->bin_path, &m->bin_map, err, errlen)))
    goto fail;
  if ((rc = mm_parse_index(m->idx_path, m->bin_path, m->idx_map.addr, m->idx_map.size,
                           m->bin_map.size, !m->by_sequence, &m->index, err, errlen)))
    goto fail;
  *state = m;
  return 0;
fail:
  mm_close(m);
  return rc;
}

static int64_t mm_count(void *state) {
  megatron_t *m = state;
  return (int64_t)(m->by_sequence ? m->index.n_seqs : m->index.n_docs);
}

/* Sample i's byte range in the .bin: a sequence, or a document's contiguous
 * sequences (validated at open). */
static void mm_extent(const mm_index_t *ix, int by_sequence, uint64_t i, uint64_t *start,
                      uint64_t *n_tokens) {
  uint64_t first = i, last = i + 1; /* sequences [first, last) */
  if (!by_sequence) {
    first = (uint64_t)doc_first(ix, i);
    last = (uint64_t)doc_first(ix, i + 1);
  }
  if (first == last) {
    *start = 0;
    *n_tokens = 0;
    return;
  }
  *start = (uint64_t)seq_pointer(ix, first);
  uint64_t end = (uint64_t)seq_pointer(ix, last - 1) +
                 (uint64_t)seq_length(ix, last - 1) * (uint64_t)ix->item_bytes;
  *n_tokens = (end - *start) / (uint64_t)ix->item_bytes;
}

static int mm_read(void *state, int64_t i, const void **tokens, int64_t *n, int *token_bytes,
                   char *err, size_t errlen) {
  megatron_t *m = state;
  (void)err;
  (void)errlen;
  uint64_t start, count;
  mm_extent(&m->index, m->by_sequence, (uint64_t)i, &start, &count);
  *tokens = count ? (const uint8_t *)m->bin_map.addr + start : m->bin_map.addr;
  *n = (int64_t)count;
  *token_bytes = m->index.item_bytes;
  return 0;
}

static int64_t mm_eot(void *state) { return ((megatron_t *)state)->eot; }

static int64_t mm_document_count(void *state) {
  return (int64_t)((megatron_t *)state)->index.n_docs;
}

static int mm_document(void *state, int64_t j, int64_t *first, int64_t *n_samples) {
  megatron_t *m = state;
  int64_t a = doc_first(&m->index, (uint64_t)j), b = doc_first(&m->index, (uint64_t)j + 1);
  if (m->by_sequence) {
    *first = a;
    *n_samples = b - a;
  } else {
    *first = j;
    *n_samples = 1;
  }
  return 0;
}

static const cpdl_source_plugin_t descriptor = {
  .abi_version = CPDL_SOURCE_ABI_VERSION,
  .struct_size = sizeof(cpdl_source_plugin_t),
  .name = "megatron",
  .description = "Megatron-LM MMIDIDX .idx + .bin (unit=document|sequence, eot)",
  .flags = CPDL_SOURCE_STABLE_TOKENS | CPDL_SOURCE_CONCURRENT_READS,
  .open = mm_open,
  .count = mm_count,
  .read = mm_read,
  .close = mm_close,
  .eot = mm_eot,
  .document_count = mm_document_count,
  .document = mm_document,
};

CPDL_SOURCE_PLUGIN_EXPORT const cpdl_source_plugin_t *cpdl_source_plugin_v1(void) {
  return &descriptor;
}

#ifdef CPDL_FUZZ_BUILD
/* Fuzzing entry: parse buf as an .idx against a .bin of bin_size bytes, in
 * both units, then compute every sample's extent and check it lies inside. */
int cpdl_megatron_fuzz_parse(const uint8_t *buf, size_t size, uint64_t bin_size);
int cpdl_megatron_fuzz_parse(const uint8_t *buf, size_t size, uint64_t bin_size) {
  char err[512];
  int worst = 0;
  for (int by_seq = 0; by_seq < 2; by_seq++) {
    mm_index_t ix;
    int rc = mm_parse_index("fuzz.idx", "fuzz.bin", buf, size, bin_size, !by_seq, &ix, err,
                            sizeof err);
    if (rc) {
      worst = rc;
      continue;
    }
    uint64_t count = by_seq ? ix.n_seqs : ix.n_docs;
    for (uint64_t i = 0; i < count; i++) {
      uint64_t start, n;
      mm_extent(&ix, by_seq, i, &start, &n);
      if (n && (start > bin_size || n * (uint64_t)ix.item_bytes > bin_size - start))
        __builtin_trap(); /* the validation missed an out-of-file sample */
    }
  }
  return worst;
}
#endif
