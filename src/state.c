/* state.c — the resume state's bytes: one versioned, self-describing blob
 * for the whole job (layout in include/cpdl/loader.h and docs/state.md). Pure:
 * no MPI, no loader; loader.c gathers the ranks' cursors and checks the blob
 * against its job. The state is the global order's cursor — epoch, rows of
 * it consumed, (thd) the document position of the next row, steps — which
 * is the same on every replica, so it restores a job of any layout.
 * Invariant: a blob that decodes is internally consistent (sizes, checksum,
 * the cursor at the blob's step), so nothing downstream re-checks its bytes.
 */
#include "internal.h"

#include <inttypes.h>
#include <string.h>

#define HEADER_WORDS 7
#define W_MAGIC 0
#define W_VERSION 1
#define W_BYTES 2
#define W_STEP 3
#define W_DP 4
#define W_CURSOR_WORDS 5
#define W_TEXT_BYTES 6
/* Bounds that keep every size computation far from overflow. */
#define MAX_TEXT (UINT64_C(1) << 20)

static uint64_t word_at(const void *buf, size_t i) {
  uint64_t w;
  memcpy(&w, (const char *)buf + 8 * i, 8);
  return w;
}

static void put_word(void *buf, size_t i, uint64_t w) { memcpy((char *)buf + 8 * i, &w, 8); }

/* Bytes of a blob: header, cursor, text (NUL-padded to 8), checksum. */
static size_t blob_bytes(uint64_t text_bytes) {
  return 8 * (HEADER_WORDS + CPDL__CURSOR_WORDS) + (size_t)text_bytes + 8;
}

static uint64_t padded_text(size_t len) { return ((uint64_t)len + 1 + 7) & ~UINT64_C(7); }

size_t cpdl__state_bytes(size_t stream_len) { return blob_bytes(padded_text(stream_len)); }

int cpdl__state_encode(const cpdl__state_t *st, void *buf, size_t size, size_t *used) {
  size_t len = strlen(st->stream);
  uint64_t text_bytes = padded_text(len);
  size_t need = blob_bytes(text_bytes);
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
  put_word(buf, W_DP, st->dp_size);
  put_word(buf, W_CURSOR_WORDS, CPDL__CURSOR_WORDS);
  put_word(buf, W_TEXT_BYTES, text_bytes);
  for (int w = 0; w < CPDL__CURSOR_WORDS; w++)
    put_word(buf, HEADER_WORDS + (size_t)w, st->cursor[w]);
  size_t at = 8 * (HEADER_WORDS + CPDL__CURSOR_WORDS);
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
  if (version < CPDL__STATE_VERSION)
    return cpdl__error(CPDL_ESTATE, "resume state has the old format version %" PRIu64 " (one "
                       "cursor per replica, tied to the dp size); this cpdl reads version %d, "
                       "one global order for every layout, and cannot continue it exactly: "
                       "resume with the cpdl that saved it, or start the run again", version,
                       CPDL__STATE_VERSION);
  if (version != CPDL__STATE_VERSION)
    return cpdl__error(CPDL_ESTATE, "resume state has version %" PRIu64 ", this cpdl reads "
                       "version %d; resume with the cpdl that saved it", version,
                       CPDL__STATE_VERSION);
  if (size < 8 * (HEADER_WORDS + CPDL__CURSOR_WORDS) + 8)
    return cpdl__error(CPDL_ESTATE, "resume state of %zu bytes is shorter than its header "
                       "(truncated file?)", size);
  uint64_t total = word_at(buf, W_BYTES), cursor_words = word_at(buf, W_CURSOR_WORDS);
  uint64_t text_bytes = word_at(buf, W_TEXT_BYTES);
  if (total != size)
    return cpdl__error(CPDL_ESTATE, "resume state says it has %" PRIu64 " bytes, %zu were given "
                       "(truncated or padded file?)", total, size);
  if (cursor_words != CPDL__CURSOR_WORDS)
    return cpdl__error(CPDL_ESTATE, "resume state has %" PRIu64 " cursor words, this cpdl "
                       "uses %d", cursor_words, CPDL__CURSOR_WORDS);
  if (text_bytes > MAX_TEXT || text_bytes % 8 != 0 || blob_bytes(text_bytes) != size)
    return cpdl__error(CPDL_ESTATE, "resume state sizes disagree: %" PRIu64 " text bytes in %zu "
                       "bytes", text_bytes, size);
  size_t body = size - 8;
  uint64_t sum = cpdl__fnv1a(CPDL__FNV1A_BASIS, buf, body), stored = word_at(buf, body / 8);
  if (sum != stored)
    return cpdl__error(CPDL_ESTATE, "resume state checksum %016" PRIx64 " does not match its "
                       "bytes (%016" PRIx64 "): the file was changed or damaged", stored, sum);
  /* From here the bytes are what a cpdl wrote: a disagreement is a bug or a
   * hand-made state, refused all the same. */
  const char *text = (const char *)buf + 8 * (HEADER_WORDS + CPDL__CURSOR_WORDS);
  if (text_bytes == 0 || memchr(text, '\0', text_bytes) == NULL)
    return cpdl__error(CPDL_ESTATE, "resume state's configuration text is not terminated");
  out->step = word_at(buf, W_STEP);
  out->dp_size = word_at(buf, W_DP);
  for (int w = 0; w < CPDL__CURSOR_WORDS; w++)
    out->cursor[w] = word_at(buf, HEADER_WORDS + (size_t)w);
  out->stream = text;
  if (out->cursor[CPDL__CURSOR_STEP] != out->step)
    return cpdl__error(CPDL_ESTATE, "resume state is at step %" PRIu64 " but its cursor is at "
                       "step %" PRIu64 ": the state disagrees with itself", out->step,
                       out->cursor[CPDL__CURSOR_STEP]);
  if (out->dp_size < 1)
    return cpdl__error(CPDL_ESTATE, "resume state records dp size %" PRIu64 ": the state is "
                       "inconsistent", out->dp_size);
  return 0;
}
