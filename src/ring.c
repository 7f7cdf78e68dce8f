/* ring.c — the segment's header and the slot protocol
 * (docs/design.md#the-ring-protocol; docs/reliability.md R6-R10, R12-R14, R19).
 *
 * Invariants: the publisher writes slot(step) only after every consumer's cursor
 * has passed step - n_slots; a step becomes visible only through a release
 * store of the slot's step word, after its data and state are complete.
 * Each consumer record is written only by its consumer. Shared values are
 * read once into locals and validated; geometry and fields come only from the
 * process-local handle. No locks: waits are bounded spins, then futex sleeps
 * in short ticks that re-check the abort word and the peers' liveness.
 * A consumer that leaves (closes) sets its `left` word; its cursor is final
 * from then on, so a step whose slot still waits on that cursor is known
 * never to come, and whoever waits for it is told who left (R19).
 */
#include "internal.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

_Static_assert(CPDL__RING_STATE_WORDS == CPDL__CURSOR_WORDS, "slot state = feed cursor");
/* The shared words must be lock-free (a lock inside shared memory would be
 * process-private and a dead holder would wedge everyone) and have the size
 * the futex syscall and the other process expect. */
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "32-bit atomics must be lock-free");
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free");
_Static_assert(sizeof(_Atomic uint32_t) == 4 && sizeof(_Atomic uint64_t) == 8,
               "atomic words have their plain size");
_Static_assert(sizeof(cpdl__ring_consumer_rec_t) == CPDL__CACHE_LINE, "one line per consumer");
_Static_assert(sizeof(cpdl__ring_slot_rec_t) % CPDL__CACHE_LINE == 0, "slot records own lines");

#define SPIN_ITERATIONS 100 /* bounded: with more ranks than cores we must sleep (R12) */
#define TICK_MS 20          /* futex sleep; alive() and abort are re-checked each tick */

struct cpdl__ring {
  unsigned char *base;
  size_t total, ctrl_bytes;
  cpdl__ring_hdr_t *hdr;
  cpdl__ring_slot_rec_t *slots;
  cpdl__ring_consumer_rec_t *consumers;
  unsigned char *lengths;    /* the slot lengths table (segment.h) */
  cpdl__ring_geometry_t geo; /* validated local copies from here on */
  uint64_t first_step;
  cpdl_prep_field_t fields[CPDL_MAX_FIELDS];
};

/* ---- layout ---------------------------------------------------------------- */

static size_t page_bytes(void) { return (size_t)sysconf(_SC_PAGESIZE); }

size_t cpdl__ring_fields_offset(void) {
  return CPDL__ALIGN_UP(sizeof(cpdl__ring_hdr_t), CPDL__CACHE_LINE);
}
/* n_fields <= CPDL_MAX_FIELDS and n_slots <= CPDL__RING_MAX_SLOTS keep these
 * far from overflow; callers check the bounds first. */
size_t cpdl__ring_slots_offset(uint32_t n_fields) {
  return CPDL__ALIGN_UP(cpdl__ring_fields_offset() + n_fields * sizeof(cpdl__ring_field_rec_t),
                        CPDL__CACHE_LINE);
}
size_t cpdl__ring_consumers_offset(uint32_t n_fields, uint32_t n_slots) {
  return cpdl__ring_slots_offset(n_fields) + n_slots * sizeof(cpdl__ring_slot_rec_t);
}

size_t cpdl__ring_lengths_offset(const cpdl__ring_geometry_t *geo) {
  return CPDL__ALIGN_UP(cpdl__ring_consumers_offset(geo->n_fields, geo->n_slots) +
                            geo->n_consumers * sizeof(cpdl__ring_consumer_rec_t),
                        CPDL__CACHE_LINE);
}
/* With the bounds of check_geometry (n_regions <= 64, n_fields <= 32, n_slots
 * <= 1024) the whole table stays below 17 MiB: no overflow. */
size_t cpdl__ring_lengths_row_bytes(const cpdl__ring_geometry_t *geo) {
  return CPDL__ALIGN_UP(((size_t)geo->n_regions + 1) * geo->n_fields * sizeof(_Atomic uint64_t),
                        CPDL__CACHE_LINE);
}

size_t cpdl__ring_block_offset(const cpdl__ring_geometry_t *geo, size_t ctrl_bytes,
                               uint32_t region, uint32_t slot) {
  size_t rank_data = (size_t)geo->n_regions * cpdl__ring_region_bytes(geo);
  if (region >= geo->n_regions)
    return ctrl_bytes + rank_data + slot * (size_t)geo->shared_slot_bytes;
  return ctrl_bytes + ((size_t)region * geo->n_slots + slot) * (size_t)geo->slot_bytes;
}

size_t cpdl__ring_region_bytes(const cpdl__ring_geometry_t *geo) {
  return (size_t)geo->n_slots * (size_t)geo->slot_bytes;
}

/* Bounds and overflow-checked sizes of a geometry. The message names the bad
 * value. */
static int check_geometry(const cpdl__ring_geometry_t *geo, int code, size_t *ctrl_out,
                          size_t *total_out) {
  size_t page = page_bytes();
  if (geo->n_slots < 1 || geo->n_slots > CPDL__RING_MAX_SLOTS)
    return cpdl__error(code, "ring: n_slots %" PRIu32 " is outside 1..%u", geo->n_slots,
                       CPDL__RING_MAX_SLOTS);
  if (geo->n_regions < 1 || geo->n_regions > CPDL__RING_MAX_REGIONS)
    return cpdl__error(code, "ring: n_regions %" PRIu32 " is outside 1..%u", geo->n_regions,
                       CPDL__RING_MAX_REGIONS);
  if (geo->n_consumers < 1 || geo->n_consumers > CPDL__RING_MAX_CONSUMERS)
    return cpdl__error(code, "ring: n_consumers %" PRIu32 " is outside 1..%u", geo->n_consumers,
                       CPDL__RING_MAX_CONSUMERS);
  if (geo->n_fields > CPDL_MAX_FIELDS)
    return cpdl__error(code, "ring: n_fields %" PRIu32 " is above %d", geo->n_fields,
                       CPDL_MAX_FIELDS);
  if (geo->slot_bytes % page != 0 || geo->shared_slot_bytes % page != 0)
    return cpdl__error(code, "ring: slot_bytes %" PRIu64 " / shared_slot_bytes %" PRIu64
                       " are not multiples of the page size %zu", geo->slot_bytes,
                       geo->shared_slot_bytes, page);
  if (geo->slot_bytes > SIZE_MAX || geo->shared_slot_bytes > SIZE_MAX)
    return cpdl__error(CPDL_EOVERFLOW, "ring: slot size does not fit size_t");
  size_t ctrl = CPDL__ALIGN_UP(cpdl__ring_lengths_offset(geo) +
                                   geo->n_slots * cpdl__ring_lengths_row_bytes(geo),
                               page);
  size_t rank_slots, rank_data, shared_data, data, total;
  if (!cpdl__mul_size(geo->n_regions, geo->n_slots, &rank_slots) ||
      !cpdl__mul_size(rank_slots, (size_t)geo->slot_bytes, &rank_data) ||
      !cpdl__mul_size(geo->n_slots, (size_t)geo->shared_slot_bytes, &shared_data) ||
      !cpdl__add_size(rank_data, shared_data, &data) || !cpdl__add_size(ctrl, data, &total) ||
      total > (size_t)INT64_MAX)
    return cpdl__error(code == CPDL_ECORRUPT ? code : CPDL_EOVERFLOW,
                       "ring: segment size overflows (%" PRIu32 " regions x %" PRIu32
                       " slots x %" PRIu64 " bytes + %" PRIu64 " shared bytes per slot)",
                       geo->n_regions, geo->n_slots, geo->slot_bytes, geo->shared_slot_bytes);
  *ctrl_out = ctrl;
  *total_out = total;
  return 0;
}

int cpdl__ring_sizes(const cpdl__ring_geometry_t *geo, size_t *ctrl_bytes, size_t *total_bytes) {
  return check_geometry(geo, CPDL_EARG, ctrl_bytes, total_bytes);
}

/* Validate one field record (a local copy) and convert it. */
static int check_field(const cpdl__ring_field_rec_t *rec, uint32_t index,
                       const cpdl__ring_geometry_t *geo, int code, cpdl_prep_field_t *out) {
  if (!memchr(rec->name, '\0', sizeof rec->name))
    return cpdl__error(code, "ring: field %" PRIu32 ": name is not NUL-terminated within %d bytes",
                       index, CPDL_NAME_MAX);
  const char *name = rec->name;
  if (rec->dtype < 0 || rec->dtype >= CPDL_DTYPE_COUNT)
    return cpdl__error(code, "ring: field %" PRIu32 " '%s': dtype %" PRId32 " is not valid", index,
                       name, rec->dtype);
  if (rec->ndim < 1 || rec->ndim > CPDL_MAX_DIMS)
    return cpdl__error(code, "ring: field %" PRIu32 " '%s': ndim %" PRId32 " is outside 1..%d",
                       index, name, rec->ndim, CPDL_MAX_DIMS);
  if (rec->seq_dim < -1 || rec->seq_dim >= rec->ndim || (rec->shared != 0 && rec->shared != 1))
    return cpdl__error(code, "ring: field %" PRIu32 " '%s': seq_dim %" PRId32 " / shared %" PRId32
                       " are not valid", index, name, rec->seq_dim, rec->shared);
  size_t elems = 1;
  for (int32_t d = 0; d < rec->ndim; d++) {
    if (rec->shape[d] < 0 || !cpdl__mul_size(elems, (size_t)rec->shape[d], &elems))
      return cpdl__error(code, "ring: field %" PRIu32 " '%s': shape[%" PRId32 "] = %" PRId64
                         " is negative or overflows", index, name, d, rec->shape[d]);
  }
  size_t bytes, end;
  uint64_t block = rec->shared ? geo->shared_slot_bytes : geo->slot_bytes;
  if (!cpdl__mul_size(elems, cpdl_dtype_size((cpdl_dtype_t)rec->dtype), &bytes) ||
      bytes != rec->nbytes)
    return cpdl__error(code, "ring: field %" PRIu32 " '%s': nbytes %" PRIu64
                       " does not match its shape and dtype", index, name, rec->nbytes);
  if (rec->offset % 64 != 0 || rec->offset > SIZE_MAX ||
      !cpdl__add_size((size_t)rec->offset, bytes, &end) || end > block)
    return cpdl__error(code, "ring: field %" PRIu32 " '%s': [offset %" PRIu64 ", +%" PRIu64
                       ") is unaligned or beyond its %" PRIu64 "-byte %s block", index, name,
                       rec->offset, rec->nbytes, block, rec->shared ? "shared" : "rank");
  memset(out, 0, sizeof *out);
  memcpy(out->name, rec->name, sizeof out->name);
  out->dtype = (cpdl_dtype_t)rec->dtype;
  out->ndim = rec->ndim;
  for (int d = 0; d < CPDL_MAX_DIMS; d++)
    out->shape[d] = d < rec->ndim ? rec->shape[d] : 0;
  out->seq_dim = rec->seq_dim;
  out->shared = rec->shared;
  out->offset = (size_t)rec->offset;
  out->nbytes = (size_t)rec->nbytes;
  return 0;
}

static void bind_tables(cpdl__ring_t *ring, void *base, size_t total, size_t ctrl) {
  ring->base = base;
  ring->total = total;
  ring->ctrl_bytes = ctrl;
  ring->hdr = base;
  ring->slots = (cpdl__ring_slot_rec_t *)(ring->base + cpdl__ring_slots_offset(ring->geo.n_fields));
  ring->consumers = (cpdl__ring_consumer_rec_t *)(ring->base + cpdl__ring_consumers_offset(
                                                                   ring->geo.n_fields,
                                                                   ring->geo.n_slots));
  ring->lengths = ring->base + cpdl__ring_lengths_offset(&ring->geo);
}

/* The lengths word of (slot, block, field). */
static _Atomic uint64_t *length_word(const cpdl__ring_t *ring, uint32_t slot, uint32_t block,
                                     uint32_t field) {
  _Atomic uint64_t *row =
      (_Atomic uint64_t *)(ring->lengths + slot * cpdl__ring_lengths_row_bytes(&ring->geo));
  return &row[(size_t)block * ring->geo.n_fields + field];
}

/* ---- init / attach -------------------------------------------------------- */

int cpdl__ring_init(void *base, size_t total, const cpdl__ring_geometry_t *geo,
                    const cpdl_prep_field_t *fields, uint64_t nonce, uint64_t config_hash,
                    int32_t leader_pid, uint64_t first_step, cpdl__ring_t **out) {
  *out = NULL;
  size_t ctrl, need;
  int rc = check_geometry(geo, CPDL_EARG, &ctrl, &need);
  if (rc)
    return rc;
  if (total != need)
    return cpdl__error(CPDL_EARG, "ring: mapping has %zu bytes, geometry needs %zu", total, need);
  if ((uintptr_t)base % page_bytes() != 0)
    return cpdl__error(CPDL_EARG, "ring: segment base %p is not page-aligned", base);
  cpdl__ring_t *ring = calloc(1, sizeof *ring);
  if (!ring)
    return cpdl__error(-ENOMEM, "ring: out of memory for the handle");
  ring->geo = *geo;
  ring->first_step = first_step;

  /* Build and check the field records with the same code consumers run. */
  cpdl__ring_field_rec_t recs[CPDL_MAX_FIELDS];
  memset(recs, 0, sizeof recs);
  for (uint32_t i = 0; i < geo->n_fields; i++) {
    cpdl__ring_field_rec_t *rec = &recs[i];
    size_t name_len = strnlen(fields[i].name, sizeof fields[i].name);
    if (name_len >= sizeof rec->name) {
      free(ring);
      return cpdl__error(CPDL_EARG, "ring: field %" PRIu32 ": name is not NUL-terminated", i);
    }
    memcpy(rec->name, fields[i].name, name_len);
    rec->dtype = (int32_t)fields[i].dtype;
    rec->ndim = fields[i].ndim;
    for (int d = 0; d < CPDL_MAX_DIMS; d++)
      rec->shape[d] = d < fields[i].ndim ? fields[i].shape[d] : 0;
    rec->seq_dim = fields[i].seq_dim;
    rec->shared = fields[i].shared;
    rec->offset = fields[i].offset;
    rec->nbytes = fields[i].nbytes;
    rc = check_field(rec, i, geo, CPDL_EARG, &ring->fields[i]);
    if (rc) {
      free(ring);
      return rc;
    }
  }

  /* The mapping is fresh and not yet known to anyone (its name is sent over
   * MPI only after this returns), so plain stores suffice; MPI's message is
   * the happens-before edge to every consumer. */
  memset(base, 0, ctrl);
  bind_tables(ring, base, total, ctrl);
  cpdl__ring_hdr_t *hdr = ring->hdr;
  hdr->magic = CPDL__RING_MAGIC;
  hdr->version = CPDL__RING_VERSION;
  hdr->page_bytes = (uint32_t)page_bytes();
  hdr->total_bytes = total;
  hdr->header_bytes = ctrl;
  hdr->nonce = nonce;
  hdr->config_hash = config_hash;
  hdr->first_step = first_step;
  hdr->n_slots = geo->n_slots;
  hdr->n_regions = geo->n_regions;
  hdr->n_consumers = geo->n_consumers;
  hdr->n_fields = geo->n_fields;
  hdr->slot_bytes = geo->slot_bytes;
  hdr->shared_slot_bytes = geo->shared_slot_bytes;
  atomic_init(&hdr->leader_pid, leader_pid);
  atomic_init(&hdr->abort_state, 0);
  atomic_init(&hdr->error_code, 0);
  atomic_init(&hdr->eof_set, 0);
  atomic_init(&hdr->eof_step, 0);
  atomic_init(&hdr->heartbeat, 0);
  memcpy((unsigned char *)base + cpdl__ring_fields_offset(), recs,
         geo->n_fields * sizeof(cpdl__ring_field_rec_t));
  for (uint32_t s = 0; s < geo->n_slots; s++) {
    /* Each slot starts out holding "the step before" the first one it will
     * carry, which no consumer ever waits for. */
    atomic_init(&ring->slots[s].seq, 0);
    atomic_init(&ring->slots[s].step, first_step + s - geo->n_slots);
    for (int w = 0; w < CPDL__RING_STATE_WORDS; w++)
      atomic_init(&ring->slots[s].state[w], 0);
    for (uint32_t b = 0; b <= geo->n_regions; b++)
      for (uint32_t f = 0; f < geo->n_fields; f++)
        atomic_init(length_word(ring, s, b, f), (uint64_t)ring->fields[f].shape[0]);
  }
  for (uint32_t c = 0; c < geo->n_consumers; c++) {
    /* cursor = first_step: nothing released, every slot free for the first
     * n_slots steps (cursor >= step - n_slots + 1 holds for them). */
    atomic_init(&ring->consumers[c].cursor, first_step);
    atomic_init(&ring->consumers[c].pid, 0);
    atomic_init(&ring->consumers[c].futex, 0);
    atomic_init(&ring->consumers[c].world_rank, -1);
    atomic_init(&ring->consumers[c].left, 0);
  }
  *out = ring;
  return 0;
}

int cpdl__ring_attach(void *base, size_t total, uint64_t nonce, uint64_t config_hash,
                      cpdl__ring_t **out) {
  *out = NULL;
  if (total < sizeof(cpdl__ring_hdr_t))
    return cpdl__error(CPDL_ECORRUPT, "ring: segment of %zu bytes cannot hold a header", total);
  /* R10: one read of the static header into a local; only the local is used.
   * The leader wrote it before sending the name over MPI, which orders it. */
  cpdl__ring_hdr_t hdr;
  memcpy(&hdr, base, offsetof(cpdl__ring_hdr_t, leader_pid));
  if (hdr.magic != CPDL__RING_MAGIC)
    return cpdl__error(CPDL_ECORRUPT, "ring: bad magic 0x%016" PRIx64 " (expected 0x%016" PRIx64
                       ")", hdr.magic, CPDL__RING_MAGIC);
  if (hdr.version != CPDL__RING_VERSION)
    return cpdl__error(CPDL_ECORRUPT, "ring: layout version %" PRIu32 ", this library reads %u "
                       "(mixed cpdl versions on one node?)", hdr.version, CPDL__RING_VERSION);
  if (hdr.nonce != nonce)
    return cpdl__error(CPDL_ECORRUPT, "ring: nonce 0x%016" PRIx64 " differs from the one the "
                       "leader sent (0x%016" PRIx64 ")", hdr.nonce, nonce);
  if (hdr.config_hash != config_hash)
    return cpdl__error(CPDL_ECORRUPT, "ring: config hash 0x%016" PRIx64 " differs from ours "
                       "(0x%016" PRIx64 ")", hdr.config_hash, config_hash);
  if (hdr.total_bytes != (uint64_t)total)
    return cpdl__error(CPDL_ECORRUPT, "ring: total size %" PRIu64 " differs from the segment "
                       "size %zu", hdr.total_bytes, total);
  if (hdr.page_bytes != page_bytes())
    return cpdl__error(CPDL_ECORRUPT, "ring: page size %" PRIu32 " differs from ours (%zu)",
                       hdr.page_bytes, page_bytes());
  cpdl__ring_geometry_t geo = {
      .n_slots = hdr.n_slots, .n_regions = hdr.n_regions, .n_consumers = hdr.n_consumers,
      .n_fields = hdr.n_fields, .slot_bytes = hdr.slot_bytes,
      .shared_slot_bytes = hdr.shared_slot_bytes};
  size_t ctrl, need;
  int rc = check_geometry(&geo, CPDL_ECORRUPT, &ctrl, &need);
  if (rc)
    return rc;
  if (hdr.header_bytes != ctrl)
    return cpdl__error(CPDL_ECORRUPT, "ring: header_bytes %" PRIu64 " differs from the %zu its "
                       "geometry gives", hdr.header_bytes, ctrl);
  if (need != total)
    return cpdl__error(CPDL_ECORRUPT, "ring: geometry gives %zu bytes, the segment has %zu", need,
                       total);
  cpdl__ring_t *ring = calloc(1, sizeof *ring);
  if (!ring)
    return cpdl__error(-ENOMEM, "ring: out of memory for the handle");
  ring->geo = geo;
  ring->first_step = hdr.first_step;
  for (uint32_t i = 0; i < geo.n_fields; i++) {
    cpdl__ring_field_rec_t rec;
    memcpy(&rec,
           (unsigned char *)base + cpdl__ring_fields_offset() + i * sizeof(cpdl__ring_field_rec_t),
           sizeof rec);
    rc = check_field(&rec, i, &geo, CPDL_ECORRUPT, &ring->fields[i]);
    if (rc) {
      free(ring);
      return rc;
    }
  }
  bind_tables(ring, base, total, ctrl);
  *out = ring;
  return 0;
}

void cpdl__ring_free(cpdl__ring_t *ring) { free(ring); }

const cpdl__ring_geometry_t *cpdl__ring_geometry(const cpdl__ring_t *ring) { return &ring->geo; }
const cpdl_prep_field_t *cpdl__ring_fields(const cpdl__ring_t *ring) { return ring->fields; }

void *cpdl__ring_rank_block(const cpdl__ring_t *ring, uint32_t region, uint32_t slot) {
  if (region >= ring->geo.n_regions || slot >= ring->geo.n_slots)
    return NULL;
  /* Cannot overflow: check_geometry bounded the product by total. */
  return ring->base + cpdl__ring_block_offset(&ring->geo, ring->ctrl_bytes, region, slot);
}

void *cpdl__ring_shared_block(const cpdl__ring_t *ring, uint32_t slot) {
  if (slot >= ring->geo.n_slots || ring->geo.shared_slot_bytes == 0)
    return NULL;
  return ring->base + cpdl__ring_block_offset(&ring->geo, ring->ctrl_bytes, ring->geo.n_regions,
                                             slot);
}

void *cpdl__ring_region(const cpdl__ring_t *ring, uint32_t region, size_t *bytes) {
  if (region >= ring->geo.n_regions) {
    if (bytes)
      *bytes = 0;
    return NULL;
  }
  if (bytes)
    *bytes = cpdl__ring_region_bytes(&ring->geo);
  return cpdl__ring_rank_block(ring, region, 0);
}

uint32_t cpdl__ring_slot_of(const cpdl__ring_t *ring, uint64_t step) {
  /* Unsigned subtraction is modular: correct across the 2^64 wrap (R14). */
  return (uint32_t)((step - ring->first_step) % ring->geo.n_slots);
}

/* ---- live words ------------------------------------------------------------- */

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

static void futex_wait(_Atomic uint32_t *word, uint32_t expected, int timeout_ms) {
  struct timespec ts = {.tv_sec = timeout_ms / 1000, .tv_nsec = (long)(timeout_ms % 1000) * 1000000L};
  /* Not FUTEX_PRIVATE_FLAG: the word is shared between processes. Returns on
   * wake, timeout, EAGAIN (value changed), EINTR or spuriously; every caller
   * loops and re-checks its condition (R13), so the result is not needed. */
  (void)syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, expected, &ts, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *word) {
  (void)syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void cpdl__ring_register(cpdl__ring_t *ring, uint32_t consumer, int32_t pid, int32_t world_rank) {
  if (consumer >= ring->geo.n_consumers)
    return;
  /* Relaxed: pid and rank only name the consumer in messages; the group
   * learns about registration through MPI, not through these words. */
  atomic_store_explicit(&ring->consumers[consumer].pid, pid, memory_order_relaxed);
  atomic_store_explicit(&ring->consumers[consumer].world_rank, world_rank, memory_order_relaxed);
}

int32_t cpdl__ring_pid(const cpdl__ring_t *ring, uint32_t consumer) {
  if (consumer >= ring->geo.n_consumers)
    return 0;
  return atomic_load_explicit(&ring->consumers[consumer].pid, memory_order_relaxed);
}

void cpdl__ring_heartbeat(cpdl__ring_t *ring) {
  /* Relaxed: a progress counter, orders nothing. */
  atomic_fetch_add_explicit(&ring->hdr->heartbeat, 1, memory_order_relaxed);
}

/* Wake every sleeper of every word: bumping a futex word makes a waiter that
 * is about to sleep on the old value return at once (no lost wake-up). */
static void wake_everyone(cpdl__ring_t *ring) {
  for (uint32_t s = 0; s < ring->geo.n_slots; s++) {
    atomic_fetch_add_explicit(&ring->slots[s].seq, 1, memory_order_release);
    futex_wake_all(&ring->slots[s].seq);
  }
  for (uint32_t c = 0; c < ring->geo.n_consumers; c++) {
    atomic_fetch_add_explicit(&ring->consumers[c].futex, 1, memory_order_release);
    futex_wake_all(&ring->consumers[c].futex);
  }
}

void cpdl__ring_post_error(cpdl__ring_t *ring, int code, const char *msg) {
  cpdl__ring_hdr_t *hdr = ring->hdr;
  uint32_t none = 0;
  /* The first poster wins (0 -> 1); acq_rel so that a loser cannot overtake
   * it. The message is plain memory written only by the winner, published by
   * the release store of 2 below and read after an acquire load of 2. */
  if (atomic_compare_exchange_strong_explicit(&hdr->abort_state, &none, 1, memory_order_acq_rel,
                                              memory_order_acquire)) {
    snprintf(hdr->error_msg, sizeof hdr->error_msg, "%s", msg ? msg : "");
    atomic_store_explicit(&hdr->error_code, code < 0 ? code : CPDL_EPEER, memory_order_relaxed);
    atomic_store_explicit(&hdr->abort_state, 2, memory_order_release);
  }
  wake_everyone(ring);
}

int cpdl__ring_posted_error(const cpdl__ring_t *ring) {
  cpdl__ring_hdr_t *hdr = ring->hdr;
  /* Acquire pairs with the release store of 2 in post_error: code and
   * message are complete once we see 2. State 1 (being posted) reads as "not
   * yet"; the poster's wake-up after storing 2 makes us look again. */
  if (atomic_load_explicit(&hdr->abort_state, memory_order_acquire) != 2)
    return 0;
  int code = atomic_load_explicit(&hdr->error_code, memory_order_relaxed);
  char msg[CPDL__RING_MSG_MAX];
  memcpy(msg, hdr->error_msg, sizeof msg); /* one read; may come from a hostile peer */
  msg[sizeof msg - 1] = '\0';
  if (code >= 0 || code < CPDL_ERRNO_LAST) /* -errno or cpdl's own, else no code */
    code = CPDL_EPEER;
  return cpdl__error(code, "%s", msg[0] ? msg : "a rank of the group aborted");
}

void cpdl__ring_publish(cpdl__ring_t *ring, uint64_t step) {
  cpdl__ring_slot_rec_t *slot = &ring->slots[cpdl__ring_slot_of(ring, step)];
  /* Release: the slot's data and state words, written before this, are
   * visible to any consumer whose acquire load reads `step` (R7: a step is
   * seen only complete). */
  atomic_store_explicit(&slot->step, step, memory_order_release);
  /* Release: a consumer that reads the new seq (acquire) then reads the new
   * step; one that read the old seq sleeps on it and the kernel's compare
   * fails or our wake reaches it — no lost wake-up. */
  atomic_fetch_add_explicit(&slot->seq, 1, memory_order_release);
  futex_wake_all(&slot->seq);
}

void cpdl__ring_publish_eof(cpdl__ring_t *ring, uint64_t step) {
  cpdl__ring_hdr_t *hdr = ring->hdr;
  /* The EOF step is plain-ordered before the flag by the release store;
   * readers load the flag with acquire before the step. Set once. */
  atomic_store_explicit(&hdr->eof_step, step, memory_order_relaxed);
  atomic_store_explicit(&hdr->eof_set, 1, memory_order_release);
  for (uint32_t s = 0; s < ring->geo.n_slots; s++) {
    atomic_fetch_add_explicit(&ring->slots[s].seq, 1, memory_order_release);
    futex_wake_all(&ring->slots[s].seq);
  }
}

static bool eof_covers(const cpdl__ring_t *ring, uint64_t step) {
  if (atomic_load_explicit(&ring->hdr->eof_set, memory_order_acquire) == 0)
    return false;
  uint64_t eof = atomic_load_explicit(&ring->hdr->eof_step, memory_order_relaxed);
  return (int64_t)(step - eof) >= 0;
}

void cpdl__ring_set_slot_state(cpdl__ring_t *ring, uint64_t step, const uint64_t *words) {
  cpdl__ring_slot_rec_t *slot = &ring->slots[cpdl__ring_slot_of(ring, step)];
  /* Relaxed: ordered before the consumer's reads by publish()'s release. */
  for (int w = 0; w < CPDL__RING_STATE_WORDS; w++)
    atomic_store_explicit(&slot->state[w], words[w], memory_order_relaxed);
}

int cpdl__ring_slot_state(const cpdl__ring_t *ring, uint64_t step, uint64_t *words) {
  cpdl__ring_slot_rec_t *slot = &ring->slots[cpdl__ring_slot_of(ring, step)];
  /* Acquire re-check: the slot must still hold `step` (it does while we have
   * not released it); the relaxed loads are ordered after wait_step's
   * acquire of the same step. */
  if (atomic_load_explicit(&slot->step, memory_order_acquire) != step)
    return cpdl__error(CPDL_ESTATE, "ring: slot %" PRIu32 " no longer holds step %" PRIu64,
                       cpdl__ring_slot_of(ring, step), step);
  for (int w = 0; w < CPDL__RING_STATE_WORDS; w++)
    words[w] = atomic_load_explicit(&slot->state[w], memory_order_relaxed);
  return 0;
}

void cpdl__ring_set_slot_lengths(cpdl__ring_t *ring, uint64_t step, uint32_t block,
                                 const int64_t *rows) {
  if (block > ring->geo.n_regions)
    return;
  uint32_t slot = cpdl__ring_slot_of(ring, step);
  /* Relaxed: ordered before the consumer's reads by publish()'s release. */
  for (uint32_t f = 0; f < ring->geo.n_fields; f++)
    atomic_store_explicit(length_word(ring, slot, block, f), (uint64_t)rows[f],
                          memory_order_relaxed);
}

int cpdl__ring_slot_lengths(const cpdl__ring_t *ring, uint64_t step, uint32_t block,
                            int64_t *rows) {
  uint32_t slot = cpdl__ring_slot_of(ring, step);
  if (block > ring->geo.n_regions)
    return cpdl__error(CPDL_EARG, "ring: block %" PRIu32 " is not one of the %" PRIu32
                       " regions or the shared block", block, ring->geo.n_regions);
  /* Relaxed loads after wait_step's acquire of `step` (see slot_state); the
   * re-check below says they were still that step's. Each value is read once
   * and bounded by the field's capacity from the local copy: a hostile or
   * torn word is refused, never used to size a view. */
  for (uint32_t f = 0; f < ring->geo.n_fields; f++) {
    uint64_t v = atomic_load_explicit(length_word(ring, slot, block, f), memory_order_relaxed);
    if (v > (uint64_t)ring->fields[f].shape[0])
      return cpdl__error(CPDL_ECORRUPT, "ring: step %" PRIu64 " says field '%s' has %" PRIu64
                         " entries, beyond its capacity of %" PRId64 " in the segment (a "
                         "corrupt segment or mixed cpdl versions)", step, ring->fields[f].name,
                         v, ring->fields[f].shape[0]);
    rows[f] = (int64_t)v;
  }
  if (atomic_load_explicit(&ring->slots[slot].step, memory_order_acquire) != step)
    return cpdl__error(CPDL_ESTATE, "ring: slot %" PRIu32 " no longer holds step %" PRIu64,
                       slot, step);
  return 0;
}

/* The first consumer whose cursor has not reached `need` (it still holds or
 * has not yet taken step need - 1), preferring one that left; n_consumers if
 * none. Acquire on `left` pairs with leave()'s release store: a consumer
 * seen as left has its final cursor visible to us. */
static uint32_t holder_of(const cpdl__ring_t *ring, uint64_t need, bool *left) {
  uint32_t first = ring->geo.n_consumers;
  *left = false;
  for (uint32_t c = 0; c < ring->geo.n_consumers; c++) {
    cpdl__ring_consumer_rec_t *rec = &ring->consumers[c];
    bool gone = atomic_load_explicit(&rec->left, memory_order_acquire) != 0;
    uint64_t cursor = atomic_load_explicit(&rec->cursor, memory_order_acquire);
    if ((int64_t)(cursor - need) >= 0)
      continue;
    if (gone) {
      *left = true;
      return c;
    }
    if (first == ring->geo.n_consumers)
      first = c;
  }
  return first;
}

static int left_error(const cpdl__ring_t *ring, uint32_t c, uint64_t step) {
  cpdl__ring_consumer_rec_t *rec = &ring->consumers[c];
  return cpdl__error(CPDL_EPEER, "rank %" PRId32 " (group rank %" PRIu32 ", pid %" PRId32 ") left "
                     "the job at step %" PRIu64 " (its loader was closed or its process is "
                     "exiting), so step %" PRIu64 " can never come; see that rank's log",
                     atomic_load_explicit(&rec->world_rank, memory_order_relaxed), c,
                     atomic_load_explicit(&rec->pid, memory_order_relaxed),
                     atomic_load_explicit(&rec->cursor, memory_order_relaxed), step);
}

void cpdl__ring_leave(cpdl__ring_t *ring, uint32_t consumer) {
  if (consumer >= ring->geo.n_consumers)
    return;
  /* Release: our final cursor store is ordered before the flag, so whoever
   * sees left == 1 (acquire, holder_of) also sees the cursor we leave at. */
  atomic_store_explicit(&ring->consumers[consumer].left, 1, memory_order_release);
  /* Waiters sleep on slot seq words (consumers) and consumer futex words
   * (the leader): bump and wake them all so they look at `left` now. */
  wake_everyone(ring);
}

int cpdl__ring_wait_step(cpdl__ring_t *ring, uint64_t step, int timeout_ms,
                         cpdl__ring_alive_fn alive, void *arg) {
  uint32_t slot_index = cpdl__ring_slot_of(ring, step);
  cpdl__ring_slot_rec_t *slot = &ring->slots[slot_index];
  int64_t deadline = timeout_ms >= 0 ? now_ms() + timeout_ms : 0;
  for (int spins = 0;; spins++) {
    /* seq first (acquire, pairs with publish's release increment), then the
     * step (acquire, pairs with publish's release store: our later reads of
     * the slot's data see the complete batch). */
    uint32_t seq = atomic_load_explicit(&slot->seq, memory_order_acquire);
    uint64_t published = atomic_load_explicit(&slot->step, memory_order_acquire);
    if (published == step)
      return 0;
    int rc = cpdl__ring_posted_error(ring);
    if (rc)
      return rc;
    if (eof_covers(ring, step))
      return cpdl__error(CPDL_EEOF, "ring: no more data (end at step %" PRIu64 ")",
                         atomic_load_explicit(&ring->hdr->eof_step, memory_order_relaxed));
    if ((int64_t)(published - step) > 0)
      return cpdl__error(CPDL_ESTATE, "ring: slot %" PRIu32 " already holds step %" PRIu64
                         ", past the awaited step %" PRIu64 " (released out of order?)",
                         slot_index, published, step);
    if (spins < SPIN_ITERATIONS) {
      cpu_relax();
      continue;
    }
    if (alive && (rc = alive(arg)) != 0)
      return rc;
    /* Who holds the slot back: a consumer that left never releases it. */
    bool gone;
    uint64_t need = step - ring->geo.n_slots + 1;
    uint32_t holder = holder_of(ring, need, &gone);
    if (gone)
      return left_error(ring, holder, step);
    int tick = TICK_MS;
    if (timeout_ms >= 0) {
      int64_t left = deadline - now_ms();
      if (left <= 0 && holder < ring->geo.n_consumers) {
        cpdl__ring_consumer_rec_t *rec = &ring->consumers[holder];
        return cpdl__error(CPDL_ETIMEDOUT, "ring: step %" PRIu64 " was not published within "
                           "%d ms: rank %" PRId32 " (group rank %" PRIu32 ", pid %" PRId32 ") has "
                           "not released step %" PRIu64 " for %.1f s, and the leader needs its "
                           "slot: that rank is stalled; raise timeout_ms if that is expected",
                           step, timeout_ms,
                           atomic_load_explicit(&rec->world_rank, memory_order_relaxed), holder,
                           atomic_load_explicit(&rec->pid, memory_order_relaxed),
                           atomic_load_explicit(&rec->cursor, memory_order_relaxed),
                           timeout_ms / 1000.0);
      }
      if (left <= 0) /* group rank 0 is the leader */
        return cpdl__error(CPDL_ETIMEDOUT, "ring: step %" PRIu64 " was not published within "
                           "%d ms (slot %" PRIu32 " holds step %" PRIu64 ", every consumer has "
                           "released it: the leader is stalled or slow (rank %" PRId32 ", pid "
                           "%" PRId32 "); raise timeout_ms if that is expected)", step,
                           timeout_ms, slot_index, published,
                           atomic_load_explicit(&ring->consumers[0].world_rank,
                                                memory_order_relaxed),
                           atomic_load_explicit(&ring->hdr->leader_pid, memory_order_relaxed));
      if (left < tick)
        tick = (int)left;
    }
    futex_wait(&slot->seq, seq, tick);
  }
}

int cpdl__ring_wait_free(cpdl__ring_t *ring, uint64_t step, cpdl__ring_alive_fn alive, void *arg) {
  /* Slot(step) last held step - n_slots; it is free once every cursor (last
   * released + 1) has reached step - n_slots + 1. Modular compare (R14). */
  uint64_t need = step - ring->geo.n_slots + 1;
  int spins = 0;
  for (uint32_t c = 0; c < ring->geo.n_consumers;) {
    cpdl__ring_consumer_rec_t *consumer = &ring->consumers[c];
    /* futex word first, then the cursor, both acquire: pairs with release()'s
     * release store of the cursor (the consumer's reads of the old slot
     * happen before our writes into it) and release increment of the word. */
    uint32_t seen = atomic_load_explicit(&consumer->futex, memory_order_acquire);
    uint64_t cursor = atomic_load_explicit(&consumer->cursor, memory_order_acquire);
    if ((int64_t)(cursor - need) >= 0) {
      c++;
      continue;
    }
    int rc = cpdl__ring_posted_error(ring);
    if (rc)
      return rc;
    if (spins < SPIN_ITERATIONS) {
      spins++;
      cpu_relax();
      continue;
    }
    /* No deadline: a stalled but live consumer is waited for (R9); a dead
     * one is reported by alive() within a tick (R8). */
    if (alive && (rc = alive(arg)) != 0)
      return rc;
    futex_wait(&consumer->futex, seen, TICK_MS);
  }
  return 0;
}

void cpdl__ring_release(cpdl__ring_t *ring, uint32_t consumer, uint64_t step) {
  if (consumer >= ring->geo.n_consumers)
    return;
  cpdl__ring_consumer_rec_t *rec = &ring->consumers[consumer];
  /* Release: all our reads of slot(step) happen before the leader, after its
   * acquire load of this cursor, overwrites the slot. */
  atomic_store_explicit(&rec->cursor, step + 1, memory_order_release);
  /* Release increment, then wake: the leader either sees the new value when
   * the kernel compares it, or is asleep and gets the wake. */
  atomic_fetch_add_explicit(&rec->futex, 1, memory_order_release);
  futex_wake_all(&rec->futex);
}

/* ---- restart and wake (used by loader.c) ---------------------------------- */

void cpdl__ring_wake_all(cpdl__ring_t *ring) { wake_everyone(ring); }

void cpdl__ring_reset(cpdl__ring_t *ring, uint64_t first_step) {
  /* Called only while no loader thread runs and no consumer has waited for
   * or released anything (state restore right after open, between two MPI
   * barriers): the barriers order these stores before every later access. */
  ring->first_step = first_step;
  ring->hdr->first_step = first_step; /* so a later attach numbers slots alike */
  atomic_store_explicit(&ring->hdr->eof_set, 0, memory_order_relaxed);
  for (uint32_t s = 0; s < ring->geo.n_slots; s++)
    atomic_store_explicit(&ring->slots[s].step, first_step + s - ring->geo.n_slots,
                          memory_order_relaxed);
  for (uint32_t c = 0; c < ring->geo.n_consumers; c++)
    atomic_store_explicit(&ring->consumers[c].cursor, first_step, memory_order_relaxed);
}

void cpdl__ring_rebase(cpdl__ring_t *ring, uint64_t first_step) { ring->first_step = first_step; }
