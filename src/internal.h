/* internal.h — cpdl__ prototypes shared between modules. Never installed.
 * The internals are split by layer, each header self-contained:
 *   base.h     the MPI-free bottom (errors, sizes, dtype conversion)
 *   ctl.h      the control plane: collectives, pid watch, MPI allgather,
 *              mesh, agreements
 *   segment.h  the shared-memory segment's bytes (header, records, offsets)
 *   feed.h     what batches come from: sources, feed, sampler, collate
 *   pin.h      placement (hwloc)
 * and this header the rest (hash, fault, config, shm, ring, dump, producer,
 * state, the loader's internals), including them all.
 *
 * One section per module (src/<module>.c). A section is owned by its module:
 * change a prototype here and in the .c together.
 */
#ifndef CPDL_INTERNAL_H
#define CPDL_INTERNAL_H

#include "base.h"
#include "cpdl.h"
#include "cpdl/loader_mpi.h" /* the MPI entry points, declared for loader.c and oob_mpi.c */
#include "ctl.h"
#include "feed.h"
#include "pin.h"
#include "segment.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- hash.c ---------------------------------------------------------------
 * FNV-1a 64: start from CPDL__FNV1A_BASIS, feed bytes in any number of calls. */
#define CPDL__FNV1A_BASIS UINT64_C(14695981039346656037)
#define CPDL__FNV1A_PRIME UINT64_C(1099511628211)
uint64_t cpdl__fnv1a(uint64_t hash, const void *data, size_t n);

/* ---- fault.c --------------------------------------------------------------
 * CPDL_FAULT=<point>:<rank>[:error] — at the named point on that world rank,
 * raise SIGKILL (default) or return CPDL_EFAULT. Points: after_create,
 * after_reserve, before_send_name, before_unlink, mid_fill, holding_slot,
 * waiting, start_threads, attach, restoring, closing. \return 0 when no fault fires here. */
int cpdl__fault(const char *point, int world_rank);

/* ---- config.c -------------------------------------------------------------
 * Hash of the canonical text (FNV-1a 64). */
uint64_t cpdl__config_hash(const cpdl_config_t *cfg);
/* The canonical text of the stream keys only (those that decide the batches;
 * the key table marks them): what a resume state records. Like snprintf. */
int cpdl__config_stream_format(const cpdl_config_t *cfg, char *buf, size_t size);
/* 0, or CPDL_ECONFIG naming the first stream key whose values differ:
 * "resume state was saved with seq_len=4096, this job has seq_len=8192". */
int cpdl__config_stream_compare(const cpdl_config_t *saved, const cpdl_config_t *now);
/* The key table, for tests, messages and the agreement: its size; key i's
 * name (NULL out of range) and whether it is a stream key; key i's value as
 * text (unescaped, at most CPDL__CONFIG_VALUE_MAX bytes with the NUL).
 * \return 0 or CPDL_EARG (i out of range). */
#define CPDL__CONFIG_VALUE_MAX (CPDL_SOURCE_MAX + 32)
int cpdl__config_key_count(void);
const char *cpdl__config_key(int i, bool *stream);
int cpdl__config_value(const cpdl_config_t *cfg, int i, char *buf, size_t size);
/* The passes over the data a run ends after: cfg->epochs, else 1 when
 * steps=0, else 0 (no bound: steps= ends the run). */
uint64_t cpdl__config_epochs(const cpdl_config_t *cfg);
/* cpdl_config_from_env without the keys named in skip (set on a command
 * line, which wins: their variables are not even parsed). */
int cpdl__config_from_env_except(cpdl_config_t *cfg, const char *const *skip, int n_skip);
/* The preparation parameters a configuration implies (cp, tp, mode,
 * padding_token_id; no metadata fields). */
void cpdl__config_prep_params(const cpdl_config_t *cfg, cpdl_prep_params_t *params);

/* ---- shm.c ----------------------------------------------------------------
 * POSIX shared-memory segments: creation with a random name, O_EXCL, 0600,
 * space reserved up front; attachment with owner/mode/size checks. */
#define CPDL__SHM_PREFIX "cpdl-"
#define CPDL__SHM_NAME_MAX 96
typedef struct cpdl__shm {
  char name[CPDL__SHM_NAME_MAX]; /* "/cpdl-<uid>-<pid>-<pidns>-<boot>-<random>" */
  int fd;                        /* -1 once closed */
  void *base;                    /* whole mapping */
  size_t size;
  size_t ctrl_bytes;             /* [0, ctrl_bytes) is mapped read-write for all */
  bool owner;                    /* created it (read-write everywhere) */
  bool unlinked;
} cpdl__shm_t;

/* Create a segment of `size` bytes: random name, retried on EEXIST, space
 * reserved with posix_fallocate (return value checked), mapped read-write.
 * A full /dev/shm is CPDL_ENOSPACE with path, bytes needed, bytes available
 * and the fix; nothing is left behind on any failure. */
int cpdl__shm_create(size_t size, cpdl__shm_t *out);
/* Attach an existing segment. Refuses (CPDL_ESHM) an owner other than our
 * uid, group/other permission bits, a size different from `size` (fstat).
 * Maps [0, ctrl_bytes) read-write and the rest read-only when data_readonly. */
int cpdl__shm_attach(const char *name, size_t size, size_t ctrl_bytes, bool data_readonly,
                     cpdl__shm_t *out);
int cpdl__shm_unlink(cpdl__shm_t *shm);
void cpdl__shm_close(cpdl__shm_t *shm);
/* List (and with remove, unlink) leftover segments: cpdl's prefix, the
 * caller's uid and a creator provably gone — its pid absent in the PID
 * namespace and boot its name records, which must be the caller's. A
 * segment whose creator cannot be judged from here (another PID namespace
 * or boot, or a name without them) is kept: it counts in *unknown (may be
 * NULL) and its report line says why. Writes one line per segment to
 * `report` (may be NULL). \return number of dead creators' segments, or < 0. */
int cpdl__shm_sweep(bool remove, void *report_FILE, int *unknown);
/* "<pidns hex>-<boot id, 12 hex>" of this process, as segment names record
 * it (0 for what /proc does not say). \return snprintf's. */
int cpdl__shm_identity(char *buf, size_t size);
/* Tests only: the next cpdl__shm_create() tries `name` ("/cpdl-...") first
 * (then random names as usual). NULL clears it. Not thread-safe. */
void cpdl__shm_test_force_name(const char *name);

/* ---- ring.c ---------------------------------------------------------------
 * The slot protocol over the segment whose bytes segment.h lays out
 * (docs/design.md#the-ring-protocol). */
typedef struct cpdl__ring cpdl__ring_t; /* process-local handle */

/* Bytes needed for the control part (header..cursors), page-aligned, and the
 * whole segment. \return 0 or CPDL_EOVERFLOW. */
int cpdl__ring_sizes(const cpdl__ring_geometry_t *geo, size_t *ctrl_bytes, size_t *total_bytes);
/* Leader: write the header into a fresh read-write mapping; fields describe
 * one rank block's layout (cpdl_prep_field_t, as from the plan). */
int cpdl__ring_init(void *base, size_t total, const cpdl__ring_geometry_t *geo,
                    const cpdl_prep_field_t *fields, uint64_t nonce, uint64_t config_hash,
                    int32_t leader_pid, uint64_t first_step, cpdl__ring_t **out);
/* Consumer: validate the header (magic, version, nonce, total == size that
 * MPI carried and fstat gave, overflow-safe geometry) reading each shared
 * value once; then only local copies are used. \return 0 or CPDL_ECORRUPT. */
int cpdl__ring_attach(void *base, size_t total, uint64_t nonce, uint64_t config_hash,
                      cpdl__ring_t **out);
void cpdl__ring_free(cpdl__ring_t *ring);
const cpdl__ring_geometry_t *cpdl__ring_geometry(const cpdl__ring_t *ring);
const cpdl_prep_field_t *cpdl__ring_fields(const cpdl__ring_t *ring); /* validated local copy */
/* Pointers into the data part. */
void *cpdl__ring_rank_block(const cpdl__ring_t *ring, uint32_t region, uint32_t slot);
void *cpdl__ring_shared_block(const cpdl__ring_t *ring, uint32_t slot);
void *cpdl__ring_region(const cpdl__ring_t *ring, uint32_t region, size_t *bytes);
/* Consumer `consumer` (its group rank) registers its pid and world rank
 * (both only name it in messages). */
void cpdl__ring_register(cpdl__ring_t *ring, uint32_t consumer, int32_t pid, int32_t world_rank);
/* Consumer `consumer` leaves (its loader closes, in turn or not): its cursor
 * is final. Steps whose slot waits on that cursor can never come, so a
 * consumer waiting for one gets CPDL_EPEER naming the rank that left (a
 * normal, collective close waits for no such step). Wakes every waiter. */
void cpdl__ring_leave(cpdl__ring_t *ring, uint32_t consumer);

/* Liveness callback: return 0 while all peers are alive, else an error
 * (CPDL_EPEER with a message naming the dead rank). Called on every wake. */
typedef int (*cpdl__ring_alive_fn)(void *arg);

/* Leader: wait until every consumer has released step `step - n_slots` (the
 * slot for `step` is free). Spins briefly, then futex-waits in short ticks,
 * re-checking the abort word and alive() on every wake; a stalled but live
 * consumer is waited for (no deadline). \return 0, alive()'s error
 * (CPDL_EPEER), or the error posted to the group (its code and message). */
int cpdl__ring_wait_free(cpdl__ring_t *ring, uint64_t step, cpdl__ring_alive_fn alive, void *arg);
/* Leader: publish `step` in its slot (release store) and wake waiters. */
void cpdl__ring_publish(cpdl__ring_t *ring, uint64_t step);
/* Leader: no step >= `step` will come (end of data). Needs no free slot;
 * wakes every waiter; steps below `step` stay readable. */
void cpdl__ring_publish_eof(cpdl__ring_t *ring, uint64_t step);
/* Consumer: wait until `step` is published in its slot (acquire), until
 * timeout_ms passes (< 0: no timeout, alive() still checked every tick), or
 * until EOF/abort. \return 0, CPDL_EEOF, CPDL_ETIMEDOUT (naming the consumer
 * that holds the slot back, if one does, else the leader), alive()'s error
 * (CPDL_EPEER), CPDL_EPEER naming a consumer that left while the step still
 * needed its slot, the error posted to the group, or CPDL_ESTATE (the slot
 * already holds a later step: this consumer released out of order). */
int cpdl__ring_wait_step(cpdl__ring_t *ring, uint64_t step, int timeout_ms,
                         cpdl__ring_alive_fn alive, void *arg);
/* Consumer: done with `step` (its cursor becomes step+1; release store). */
void cpdl__ring_release(cpdl__ring_t *ring, uint32_t consumer, uint64_t step);
/* Post an error to the group (abort word + message) and wake everyone. The
 * first poster wins; later posts only wake. Every later wait returns it. */
void cpdl__ring_post_error(cpdl__ring_t *ring, int code, const char *msg);
/* Heartbeat, pids. */
void cpdl__ring_heartbeat(cpdl__ring_t *ring);
int32_t cpdl__ring_pid(const cpdl__ring_t *ring, uint32_t consumer);
/* Needed by loader.c (lead): */
/* Wake every waiter (futex words of slots and consumers) so it re-checks. */
void cpdl__ring_wake_all(cpdl__ring_t *ring);
/* Leader, before any step was published or consumed: restart the ring's
 * bookkeeping at `first_step` (slot steps cleared, consumer cursors set to
 * first_step), keeping geometry, fields and registered pids. */
void cpdl__ring_reset(cpdl__ring_t *ring, uint64_t first_step);
/* Consumer, at the same point: its handle's slot numbering starts at
 * first_step too (local only). */
void cpdl__ring_rebase(cpdl__ring_t *ring, uint64_t first_step);

/* The slot that holds `step`: (step - first_step) mod n_slots, so that
 * consecutive steps use consecutive slots even across the 2^64 wrap for any
 * n_slots (plain step % n_slots breaks there unless n_slots is a power of 2).
 * Use this, never step % n_slots, to index cpdl__ring_rank_block(). */
uint32_t cpdl__ring_slot_of(const cpdl__ring_t *ring, uint64_t step);
/* Leader: the feed cursor after `step`, stored in the step's slot before
 * cpdl__ring_publish() (which orders it). */
void cpdl__ring_set_slot_state(cpdl__ring_t *ring, uint64_t step,
                               const uint64_t *words /* [CPDL__CURSOR_WORDS] */);
/* Consumer, between wait_step(step) and release(step): read it back.
 * \return 0, or CPDL_ESTATE if the slot no longer holds `step`. */
int cpdl__ring_slot_state(const cpdl__ring_t *ring, uint64_t step,
                          uint64_t *words /* [CPDL__CURSOR_WORDS] */);
/* Publisher, before cpdl__ring_publish(step): the valid entries along dim 0
 * of each field (rows[n_fields], each at most the field's shape[0]) in block
 * `block` of step's slot: a local CP region (< n_regions) or the shared
 * block (== n_regions); segment.h, "The slot lengths table". Every block the
 * step's consumers read must be set for every step (a slot keeps the lengths
 * of the step it held before). */
void cpdl__ring_set_slot_lengths(cpdl__ring_t *ring, uint64_t step, uint32_t block,
                                 const int64_t *rows);
/* Consumer, between wait_step(step) and release(step): read them back.
 * \return 0, CPDL_ECORRUPT (a length beyond its field's capacity: names the
 *         field), CPDL_ESTATE (the slot no longer holds `step`), CPDL_EARG. */
int cpdl__ring_slot_lengths(const cpdl__ring_t *ring, uint64_t step, uint32_t block,
                            int64_t *rows);
/* The error posted to the group (0 if none); its message goes to
 * cpdl_last_error() of this thread. */
int cpdl__ring_posted_error(const cpdl__ring_t *ring);



/* ---- dump.c ---------------------------------------------------------------
 * .npy writer for --dump / --dump-collated; mkdir -p. */
int cpdl__mkdirs(const char *path);
int cpdl__npy_write(const char *path, cpdl_dtype_t dtype, int ndim, const int64_t *shape,
                    const void *data);


/* ---- producer.c -------------------------------------------------------------
 * The leader's loader threads (collate, prepare into slots, publish). */
#define CPDL__MAX_THREADS 16
typedef struct cpdl__producer cpdl__producer_t;
typedef struct cpdl__producer_args {
  cpdl__ring_t *ring;            /* the writer's handle */
  cpdl__feed_t *feed;            /* positioned at first_step */
  const cpdl_prep_plan_t *plan;
  cpdl__pin_t *pin;              /* may be NULL */
  const int *local_cp;           /* CP rank of each of the ring's regions */
  int world_rank, group;         /* for messages, fault points and dump paths */
  uint64_t first_step, end_step; /* end_step UINT64_MAX: until the feed ends */
  int n_threads;                 /* 1..16; steps under 4 MiB use one */
  const char *dump_collated;     /* directory for the collated batches, or NULL */
  cpdl__ring_alive_fn alive;     /* checked while waiting for a free slot */
  void *alive_arg;
} cpdl__producer_args_t;
/* Start the threads; they keep the ring `slots` steps ahead until end_step,
 * EOF or an error (posted to the ring). Pointers in args must outlive it.
 * \return 0, -ENOMEM, -errno of pthread_create, CPDL_EFAULT (start_threads). */
int cpdl__producer_start(const cpdl__producer_args_t *args, cpdl__producer_t **out);
/* Stop, join and free (NULL is a no-op). */
void cpdl__producer_stop(cpdl__producer_t *producer);

/* ---- state.c --------------------------------------------------------------
 * The resume state's bytes (layout: include/cpdl/loader.h, docs/state.md). Pure. */
#define CPDL__STATE_MAGIC UINT64_C(0x544154534c445043) /* the bytes "CPDLSTAT" (little-endian) */
#define CPDL__STATE_VERSION CPDL_STATE_VERSION /* include/cpdl/loader.h */
typedef struct cpdl__state {
  uint64_t step;            /* the step of the next batch */
  uint64_t dp_size;         /* of the job that saved it (information: any layout resumes) */
  const uint64_t *cursor;   /* CPDL__CURSOR_WORDS: the global order's cursor at step */
  const char *stream;       /* cpdl__config_stream_format() text */
} cpdl__state_t;
/* A decoded blob. */
typedef struct cpdl__state_view {
  uint64_t step, dp_size;
  uint64_t cursor[CPDL__CURSOR_WORDS];
  const char *stream;       /* inside the blob, NUL-terminated */
} cpdl__state_view_t;
/* Bytes of the blob with a stream text of stream_len (the same for every layout). */
size_t cpdl__state_bytes(size_t stream_len);
/* \return 0 or CPDL_EOVERFLOW (buffer too small; *used says how much). */
int cpdl__state_encode(const cpdl__state_t *st, void *buf, size_t size, size_t *used);
/* Check and view a blob (any alignment). \return 0 or CPDL_ESTATE naming
 * what is wrong: magic, version (the old per-replica format named as such),
 * size, cursor width, checksum, a cursor whose step word differs from the
 * state's step. */
int cpdl__state_decode(const void *buf, size_t size, cpdl__state_view_t *out);

/* ---- loader.c (internals behind cpdl/tools.h, the benchmarks and tests) ---- */
const cpdl__pin_t *cpdl__loader_pin(const cpdl_loader_t *loader);
const cpdl__team_t *cpdl__loader_world(const cpdl_loader_t *loader);
/* Collective over the loader's world: the element-wise minimum of n values,
 * its waits watching this host's ranks as open's do (a death is CPDL_EPEER
 * naming the rank). For the CLI's agreement at the end of a run. */
int cpdl__loader_agree_min(cpdl_loader_t *loader, int64_t *values, int n, const char *what);
/* Leader of each group: before preparing step k, write the collated batch to
 * dir/step<k>/group<g>/collated/<field>.npy. Set before the first next(). */
int cpdl__loader_dump_collated(cpdl_loader_t *loader, const char *dir);
/* Leader: rows per step and tokens per row of the data's first batch
 * (input_ids, else its first field of >= 2 dims); others: left unchanged. */
void cpdl__loader_data_shape(const cpdl_loader_t *L, int64_t *batch, int64_t *seq_len);
/* Wait (futex, no polling) until the next next() would return at once;
 * benchmarks time next() "when the data is ready". Starts the loader threads
 * if not yet started. \return 0 or the error next() would return. */
int cpdl__loader_wait_ready(cpdl_loader_t *loader);

#endif /* CPDL_INTERNAL_H */
