/* state.c — the resume state's bytes: one versioned, self-describing blob
 * for the whole job (layout in include/cpdl/loader.h and docs/state.md). Pure: no
 * MPI, no loader; loader.c gathers the replicas' cursors and checks the blob
 * against its job. Invariant: a blob that decodes is internally consistent
 * (sizes, checksum, every cursor at the blob's step), so nothing downstream
 * re-checks its bytes.
 */
#include "internal.h"

#include <inttypes.h>
#include <string.h>

#define HEADER_WORDS 10
#define W_MAGIC 0
#define W_VERSION 1
#define W_BYTES 2
#define W_STEP 3
#define W_KIND 4
#define W_CONSUMED 5
#define W_DP 6
#define W_REPLICAS 7
#define W_CURSOR_WORDS 8
#define W_TEXT_BYTES 9
/* Bounds that keep every size computation far from overflow. */
#define MAX_REPLICAS (UINT64_C(1) << 24)
#define MAX_TEXT (UINT64_C(1) << 20)

static uint64_t word_at(const void *buf, size_t i) {
  uint64_t w;
  memcpy(&w, (const char *)buf + 8 * i, 8);
  return w;
}

static void put_word(void *buf, size_t i, uint64_t w) { memcpy((char *)buf + 8 * i, &w, 8); }

/* Bytes of a blob: header, cursors, text (NUL-padded to 8), checksum. */
static size_t blob_bytes(uint64_t n_replicas, uint64_t text_bytes) {
  return 8 * (HEADER_WORDS + (size_t)n_replicas * CPDL__CURSOR_WORDS) + (size_t)text_bytes + 8;
}

static uint64_t padded_text(size_t len) { return ((uint64_t)len + 1 + 7) & ~UINT64_C(7); }

size_t cpdl__state_bytes(uint64_t n_replicas, size_t stream_len) {
  return blob_bytes(n_replicas, padded_text(stream_len));
}

int cpdl__state_encode(const cpdl__state_t *st, void *buf, size_t size, size_t *used) {
  size_t len = strlen(st->stream);
  uint64_t text_bytes = padded_text(len);
  size_t need = blob_bytes(st->n_replicas, text_bytes);
  if (used)
    *used = need;
  if (size < need)
    return cpdl__error(CPDL_EOVERFLOW, "resume state needs %zu bytes, the buffer has %zu "
                       "(ask cpdl_loader_state_size)", need, size);
  memset(buf, 0, need);
  put_word(buf, W_MAGIC, CPDL__STATE_MAGIC);
  put_word(buf, W_VERSION, CPDL__STATE_VERSION);
  put_word(buf, W_BYTES, need);
  put_word(buf, W_STEP, st->step);
  put_word(buf, W_KIND, st->kind);
  put_word(buf, W_CONSUMED, st->consumed);
  put_word(buf, W_DP, st->dp_size);
  put_word(buf, W_REPLICAS, st->n_replicas);
  put_word(buf, W_CURSOR_WORDS, CPDL__CURSOR_WORDS);
  put_word(buf, W_TEXT_BYTES, text_bytes);
  size_t at = 8 * HEADER_WORDS;
  size_t cursor_bytes = 8 * (size_t)st->n_replicas * CPDL__CURSOR_WORDS;
  if (cursor_bytes) /* a global-order state carries no cursors (and may pass NULL) */
    memcpy((char *)buf + at, st->cursors, cursor_bytes);
  at += cursor_bytes;
  if (len)
    memcpy((char *)buf + at, st->stream, len);
  at += text_bytes;
  uint64_t sum = cpdl__fnv1a(CPDL__FNV1A_BASIS, buf, at);
  memcpy((char *)buf + at, &sum, 8);
  return 0;
}

int cpdl__state_decode(const void *buf, size_t size, cpdl__state_view_t *out) {
  memset(out, 0, sizeof *out);
  if (!buf || size < 16)
    return cpdl__error(CPDL_ESTATE, "resume state of %zu bytes is too short to be one", size);
  uint64_t magic = word_at(buf, W_MAGIC), version = word_at(buf, W_VERSION);
  if (magic != CPDL__STATE_MAGIC)
    return cpdl__error(CPDL_ESTATE, "not a cpdl resume state (magic %016" PRIx64 ", expected "
                       "%016" PRIx64 ")", magic, CPDL__STATE_MAGIC);
  if (version != CPDL__STATE_VERSION)
    return cpdl__error(CPDL_ESTATE, "resume state has version %" PRIu64 ", this cpdl reads "
                       "version %d; save it again with this cpdl", version, CPDL__STATE_VERSION);
  if (size < 8 * HEADER_WORDS + 8)
    return cpdl__error(CPDL_ESTATE, "resume state of %zu bytes is shorter than its header", size);
  uint64_t total = word_at(buf, W_BYTES), replicas = word_at(buf, W_REPLICAS);
  uint64_t cursor_words = word_at(buf, W_CURSOR_WORDS), text_bytes = word_at(buf, W_TEXT_BYTES);
  uint64_t kind = word_at(buf, W_KIND), dp = word_at(buf, W_DP);
  if (total != size)
    return cpdl__error(CPDL_ESTATE, "resume state says it has %" PRIu64 " bytes, %zu were given "
                       "(truncated or padded file?)", total, size);
  if (cursor_words != CPDL__CURSOR_WORDS)
    return cpdl__error(CPDL_ESTATE, "resume state has %" PRIu64 " words per cursor, this cpdl "
                       "uses %d", cursor_words, CPDL__CURSOR_WORDS);
  if (replicas > MAX_REPLICAS || text_bytes > MAX_TEXT || text_bytes % 8 != 0 ||
      blob_bytes(replicas, text_bytes) != size)
    return cpdl__error(CPDL_ESTATE, "resume state sizes disagree: %" PRIu64 " replicas, %" PRIu64
                       " text bytes in %zu bytes", replicas, text_bytes, size);
  size_t body = size - 8;
  uint64_t sum = cpdl__fnv1a(CPDL__FNV1A_BASIS, buf, body), stored = word_at(buf, body / 8);
  if (sum != stored)
    return cpdl__error(CPDL_ESTATE, "resume state checksum %016" PRIx64 " does not match its "
                       "bytes (%016" PRIx64 "): the file was changed or damaged", stored, sum);
  /* From here the bytes are what a cpdl wrote: a disagreement is a bug or a
   * hand-made state, refused all the same. */
  if (kind == CPDL__ORDER_REPLICA ? (dp < 1 || replicas != dp)
                                  : kind != CPDL__ORDER_GLOBAL || dp < 1 || replicas != 0)
    return cpdl__error(CPDL_ESTATE, "resume state of order kind %" PRIu64 " has dp size %" PRIu64
                       " and %" PRIu64 " replica cursors", kind, dp, replicas);
  const char *text = (const char *)buf + 8 * (HEADER_WORDS + replicas * CPDL__CURSOR_WORDS);
  if (text_bytes == 0 || memchr(text, '\0', text_bytes) == NULL)
    return cpdl__error(CPDL_ESTATE, "resume state's configuration text is not terminated");
  out->step = word_at(buf, W_STEP);
  out->kind = (uint32_t)kind;
  out->consumed = word_at(buf, W_CONSUMED);
  out->dp_size = dp;
  out->n_replicas = replicas;
  out->stream = text;
  out->blob = buf;
  for (uint64_t r = 0; r < replicas; r++) {
    uint64_t cursor[CPDL__CURSOR_WORDS];
    cpdl__state_cursor(out, r, cursor);
    if (cursor[CPDL__CURSOR_STEP] != out->step)
      return cpdl__error(CPDL_ESTATE, "resume state is at step %" PRIu64 " but replica %" PRIu64
                         "'s cursor is at step %" PRIu64 ": the state is inconsistent",
                         out->step, r, cursor[CPDL__CURSOR_STEP]);
  }
  return 0;
}

void cpdl__state_cursor(const cpdl__state_view_t *st, uint64_t replica,
                        uint64_t cursor[CPDL__CURSOR_WORDS]) {
  for (int w = 0; w < CPDL__CURSOR_WORDS; w++)
    cursor[w] = word_at(st->blob, HEADER_WORDS + (size_t)replica * CPDL__CURSOR_WORDS + (size_t)w);
}
