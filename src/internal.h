/* internal.h — cpdl__ prototypes shared between modules. Never installed.
 *
 * One section per module (src/<module>.c). A section is owned by its module:
 * change a prototype here and in the .c together.
 */
#ifndef CPDL_INTERNAL_H
#define CPDL_INTERNAL_H

#include "cpdl.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define CPDL__ALIGN_UP(x, a) (((x) + ((a) - 1)) & ~((size_t)(a) - 1))
#define CPDL__CACHE_LINE 64

/* ---- error.c --------------------------------------------------------------
 * Thread-local last-error message. cpdl__error() formats the message and
 * returns `code`, so call sites read `return cpdl__error(CPDL_EFIELD, ...)`. */
int cpdl__error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefix the current message with "<prefix>: " and return code. */
int cpdl__error_prefix(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void cpdl__error_clear(void);
/* Overflow-checked size arithmetic: return false on overflow. */
bool cpdl__mul_size(size_t a, size_t b, size_t *out);
bool cpdl__add_size(size_t a, size_t b, size_t *out);

/* ---- fault.c --------------------------------------------------------------
 * CPDL_FAULT=<point>:<rank>[:error] — at the named point on that world rank,
 * raise SIGKILL (default) or return CPDL_EFAULT. Points: after_create,
 * after_reserve, before_send_name, before_unlink, mid_fill, holding_slot,
 * waiting. \return 0 when no fault fires here. */
int cpdl__fault(const char *point, int world_rank);

/* ---- config.c -------------------------------------------------------------
 * Hash of the canonical text (FNV-1a 64). */
uint64_t cpdl__config_hash(const cpdl_config_t *cfg);
/* Collective over comm: every rank gets 0, or CPDL_ECONFIG with a message
 * naming the first key (in canonical order) whose value differs between
 * ranks, the two values and a rank holding each. */
int cpdl__config_agree(MPI_Comm comm, const cpdl_config_t *cfg);

/* ---- mesh.c ---------------------------------------------------------------
 * The (dp, cp, tp) arrangement of a communicator, its node and group
 * communicators. CPDL_RANKS_PER_NODE=k fakes nodes of k consecutive ranks. */
typedef struct cpdl__mesh {
  MPI_Comm comm;        /* dup of the user's communicator */
  MPI_Comm node_comm;   /* ranks of this node (real or faked) */
  MPI_Comm group_comm;  /* replica ∩ node; rank 0 of it is the leader */
  cpdl_mesh_coords_t me;
  int node_rank, node_size, n_nodes;
  bool is_leader;
  /* The distinct CP ranks present in this group, ascending; the group's
   * segment has one region per entry. */
  int n_local_cp;
  int local_cp[64];
  int local_cp_index;   /* index of me.cp_rank in local_cp */
  /* world ranks (in comm) of the group's members, by group rank */
  int group_world_ranks[512];
} cpdl__mesh_t;

/* Collective over comm. \return the same on every rank: 0, CPDL_EMESH (size
 * not divisible by cp*tp, bad order string), CPDL_EMPI. */
int cpdl__mesh_build(MPI_Comm comm, int cp, int tp, const char *order, cpdl__mesh_t *out);
/* Pure: coordinates of `rank` in a mesh of (dp, cp, tp) with `order`
 * ("dp,cp,tp" = tp fastest). \return 0 or CPDL_EMESH. */
int cpdl__mesh_coords(int rank, int size, int cp, int tp, const char *order,
                      int *dp_rank, int *cp_rank, int *tp_rank);
void cpdl__mesh_free(cpdl__mesh_t *mesh);
/* Reduce a local result over comm: every rank returns the lowest (most
 * negative) code; the message of the first rank that has it is carried to
 * all ranks, prefixed "rank <r>: ". Never hangs on a live communicator. */
int cpdl__agree(MPI_Comm comm, int local_rc);

/* ---- shm.c ----------------------------------------------------------------
 * POSIX shared-memory segments: creation with a random name, O_EXCL, 0600,
 * space reserved up front; attachment with owner/mode/size checks. */
#define CPDL__SHM_PREFIX "cpdl-"
#define CPDL__SHM_NAME_MAX 64
typedef struct cpdl__shm {
  char name[CPDL__SHM_NAME_MAX]; /* "/cpdl-<uid>-<pid>-<random>" */
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
 * caller's uid and a creator pid that no longer exists. Writes one line per
 * segment to `report` (may be NULL). \return number found, or < 0. */
int cpdl__shm_sweep(bool remove, void *report_FILE);

/* ---- ring.c ---------------------------------------------------------------
 * The segment's header and the slot protocol (DESIGN.md "Ring protocol").
 * Layout: [header + field table + slot table + consumer cursors][data]
 * data: [region for local CP shard 0: slot 0 .. slot n-1][region 1]...[shared: slot 0..n-1]
 * Every region and every slot within it is page-aligned. */
typedef struct cpdl__ring_geometry {
  uint32_t n_slots;
  uint32_t n_regions;      /* local CP shards */
  uint32_t n_consumers;    /* group size */
  uint32_t n_fields;
  uint64_t slot_bytes;     /* one rank block, page-aligned */
  uint64_t shared_slot_bytes; /* one shared block, page-aligned (may be 0) */
} cpdl__ring_geometry_t;

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
/* Consumer `consumer` (its group rank) registers its pid. */
void cpdl__ring_register(cpdl__ring_t *ring, uint32_t consumer, int32_t pid);

/* Liveness callback: return 0 while all peers are alive, else an error
 * (CPDL_EPEER with a message naming the dead rank). Called on every wake. */
typedef int (*cpdl__ring_alive_fn)(void *arg);

/* Leader: wait until every consumer has released step `step - n_slots` (the
 * slot for `step` is free). Spins briefly, then futex-waits in short ticks,
 * re-checking the abort word and alive() on every wake; a stalled but live
 * consumer is waited for. \return 0, CPDL_EPEER, CPDL_ESTATE (aborted). */
int cpdl__ring_wait_free(cpdl__ring_t *ring, uint64_t step, cpdl__ring_alive_fn alive, void *arg);
/* Leader: publish `step` in its slot (release store) and wake waiters. */
void cpdl__ring_publish(cpdl__ring_t *ring, uint64_t step);
/* Leader: no step >= `step` will come (end of data). */
void cpdl__ring_publish_eof(cpdl__ring_t *ring, uint64_t step);
/* Consumer: wait until `step` is published in its slot (acquire), until
 * deadline_ms passes, or until EOF/abort. \return 0, CPDL_EEOF,
 * CPDL_ETIMEDOUT, CPDL_EPEER, or the error the leader posted. */
int cpdl__ring_wait_step(cpdl__ring_t *ring, uint64_t step, int timeout_ms,
                         cpdl__ring_alive_fn alive, void *arg);
/* Consumer: done with `step` (its cursor becomes step+1; release store). */
void cpdl__ring_release(cpdl__ring_t *ring, uint32_t consumer, uint64_t step);
/* Post an error to the group (abort word + message) and wake everyone. */
void cpdl__ring_post_error(cpdl__ring_t *ring, int code, const char *msg);
/* Heartbeat, pids. */
void cpdl__ring_heartbeat(cpdl__ring_t *ring);
int32_t cpdl__ring_pid(const cpdl__ring_t *ring, uint32_t consumer);



/* ---- source.c (plugin host; ABI in include/cpdl/plugin.h) -----------------
 * A data source opened from a URI "scheme:path?key=value&...". Token samples
 * are zero-copy views (mmap) where the format allows. */
typedef struct cpdl__source cpdl__source_t;
typedef struct cpdl__sample {
  const void *tokens;      /* belongs to the source; valid until the source closes */
  int64_t n_tokens;
  int token_bytes;         /* 2, 4 or 8 (unsigned 16/32 bit, or int64) */
} cpdl__sample_t;
/* \return 0, CPDL_EPLUGIN (unknown scheme: lists known ones; ABI mismatch:
 *         both versions; missing symbol; dlerror() text), CPDL_ESOURCE,
 *         CPDL_ECORRUPT (file, offset, what was expected). */
int cpdl__source_open(const char *uri, cpdl__source_t **out);
const char *cpdl__source_name(const cpdl__source_t *src);  /* plugin name */
int64_t cpdl__source_count(const cpdl__source_t *src);      /* samples */
int cpdl__source_read(cpdl__source_t *src, int64_t index, cpdl__sample_t *out);
int64_t cpdl__source_eot(const cpdl__source_t *src);        /* EOT token id, or -1 */
/* Pre-collated sources (npy): batches instead of samples. has_batches is
 * true for them; read_batch fills tensors owned by the source, valid until
 * the next call. */
bool cpdl__source_has_batches(const cpdl__source_t *src);
int64_t cpdl__source_batch_count(const cpdl__source_t *src);
int cpdl__source_read_batch(cpdl__source_t *src, int64_t step, cpdl_tensor_t *fields, int *n_fields);
void cpdl__source_close(cpdl__source_t *src);

/* ---- feed.c, sampler.c, collate.c --------------------------------
 * What the leader's loader threads pull batches from: sampler → source
 * plugin → collate. Deterministic from (config, dp_rank, dp_size): every node
 * of a replica produces the same collated batch for the same step without
 * communication. The cursor (a few integers) says where the next step
 * starts; setting it reproduces the stream exactly from there. */
#define CPDL__CURSOR_WORDS 4
typedef struct cpdl__feed cpdl__feed_t;
/* \return 0, CPDL_EPLUGIN (unknown scheme, ABI mismatch, dlerror text),
 *         CPDL_ESOURCE, CPDL_ECORRUPT (file named with offset), CPDL_EARG. */
int cpdl__feed_open(const cpdl_config_t *cfg, int dp_rank, int dp_size, cpdl__feed_t **out);
/* Collate the next step. On return fields[0..*n_fields) describe tensors of
 * shape [batch, seq_len] (or the npy plugin's arrays) owned by the feed, valid
 * until the next call. A field named "loss_mask", if present, is the loss
 * mask. Shapes and dtypes are the same for every step of a feed.
 * \return 0, CPDL_EEOF, or an error. */
int cpdl__feed_next(cpdl__feed_t *feed, cpdl_tensor_t *fields, int *n_fields);
void cpdl__feed_cursor(const cpdl__feed_t *feed, uint64_t words[CPDL__CURSOR_WORDS]);
int cpdl__feed_seek(cpdl__feed_t *feed, const uint64_t words[CPDL__CURSOR_WORDS]);
void cpdl__feed_close(cpdl__feed_t *feed);

/* ---- pin.c ----------------------------------------------------------------
 * hwloc placement (issue 5). A pure plan and a small apply; see pin.c. The
 * loader uses only these: */
typedef struct cpdl__pin cpdl__pin_t;
/* Collective over the group communicator: gathers bindings, loads the
 * topology, plans. policy: "auto" | "numa" | "cores:<list>" | "none". */
int cpdl__pin_setup(const cpdl__mesh_t *mesh, const char *policy, int n_threads, cpdl__pin_t **out);
/* Called by loader thread `thread` on itself. */
int cpdl__pin_thread(cpdl__pin_t *pin, int thread);
/* Bind a local CP region's memory near its consumer before first touch. */
int cpdl__pin_region(cpdl__pin_t *pin, int region, void *addr, size_t len);
void cpdl__pin_free(cpdl__pin_t *pin);

#endif /* CPDL_INTERNAL_H */
