/* internal.h — cpdl__ prototypes shared between modules. Never installed.
 * The MPI-free bottom (errors, sizes, dtype conversion) is base.h.
 *
 * One section per module (src/<module>.c). A section is owned by its module:
 * change a prototype here and in the .c together.
 */
#ifndef CPDL_INTERNAL_H
#define CPDL_INTERNAL_H

#include "base.h"
#include "cpdl.h"

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

typedef struct cpdl__team cpdl__team_t; /* coll.c */

/* ---- config.c -------------------------------------------------------------
 * Hash of the canonical text (FNV-1a 64). */
uint64_t cpdl__config_hash(const cpdl_config_t *cfg);
/* The canonical text of the stream keys only (those that decide the batches;
 * the key table marks them): what a resume state records. Like snprintf. */
int cpdl__config_stream_format(const cpdl_config_t *cfg, char *buf, size_t size);
/* 0, or CPDL_ECONFIG naming the first stream key whose values differ:
 * "resume state was saved with seq_len=4096, this job has seq_len=8192". */
int cpdl__config_stream_compare(const cpdl_config_t *saved, const cpdl_config_t *now);
/* The key table, for tests and messages: its size; key i's name (NULL out of
 * range) and whether it is a stream key. */
int cpdl__config_key_count(void);
const char *cpdl__config_key(int i, bool *stream);
/* Collective over a team: every rank gets 0, or CPDL_ECONFIG with a message
 * naming the first key (in canonical order) whose value differs between
 * ranks, the two values and a rank holding each. */
int cpdl__config_agree(const cpdl__team_t *team, const cpdl_config_t *cfg);
/* The preparation parameters a configuration implies (cp, tp, mode,
 * padding_token_id; no metadata fields). */
/* The passes over the data a run ends after: cfg->epochs, else 1 when
 * steps=0, else 0 (no bound: steps= ends the run). */
uint64_t cpdl__config_epochs(const cpdl_config_t *cfg);
/* cpdl_config_from_env without the keys named in skip (set on a command
 * line, which wins: their variables are not even parsed). */
int cpdl__config_from_env_except(cpdl_config_t *cfg, const char *const *skip, int n_skip);
void cpdl__config_prep_params(const cpdl_config_t *cfg, cpdl_prep_params_t *params);

/* ---- coll.c: the control plane (declared before the mesh, which holds it) ----
 * Collectives of open/restore/close, each built on the world allgather of a
 * cpdl_oob_t. A team is a subset of the world (node, group, host, or the
 * world itself); a team operation is called on every world rank, each with
 * its own team (it is one world allgather plus a local selection). With a
 * watch installed the wait polls this host's other ranks and returns
 * CPDL_EPEER "rank N (pid P) died during <what>" when one is dead (the
 * request is abandoned, its buffers leaked). Every operation first agrees
 * on a fixed-size header (call, step, count, length): ranks in different
 * calls or steps all get CPDL_EPEER naming the odd rank. Each operation
 * returns 0, CPDL_EPEER, CPDL_EMPI (the allgather failed; message naming
 * <what>), -ENOMEM. Ranks on other hosts are watched only through the
 * watch's remote liveness (live.c). */
#define CPDL__HOST_NAME_MAX 64
typedef struct cpdl__ctl {
  cpdl_oob_t oob;       /* the caller's, copied at open */
  int rank, size;       /* oob_ep, n_oob_eps */
  uint64_t seq;         /* operations so far (the same count on every rank) */
  /* size × CPDL__HOST_NAME_MAX bytes, each rank's hostname (not terminated
   * when it fills its entry), for messages; NULL until known. Not owned. */
  const char *hosts;
} cpdl__ctl_t;
/* The public call a collective belongs to, carried in every operation's
 * header so that ranks in different calls find out instead of matching. */
typedef enum {
  CPDL__OP_NONE = 0,
  CPDL__OP_OPEN,
  CPDL__OP_SAVE,
  CPDL__OP_RESTORE,
  CPDL__OP_CLOSE,
} cpdl__op_t;
/* Set this thread's current call; returns the previous one (restore it). */
cpdl__op_t cpdl__coll_op(cpdl__op_t op);
struct cpdl__team {
  const cpdl__ctl_t *ctl;
  int rank, size;       /* in the team; team rank order = world rank order */
  int *ranks;           /* world rank of each team rank; NULL: the world */
};
/* \return 0 or CPDL_EARG (NULL, incomplete or inconsistent oob). Local. */
int cpdl__ctl_init(const cpdl_oob_t *oob, cpdl__ctl_t *out);
void cpdl__team_world(const cpdl__ctl_t *ctl, cpdl__team_t *out);
/* Local: the team of world ranks r with key[r] == key[ctl->rank] (key has
 * ctl->size entries, the same on every rank). \return 0 or -ENOMEM. */
int cpdl__team_select(const cpdl__ctl_t *ctl, const int *key, cpdl__team_t *out);
void cpdl__team_free(cpdl__team_t *team);
static inline int cpdl__team_world_rank(const cpdl__team_t *team, int team_rank) {
  return team->ranks ? team->ranks[team_rank] : team_rank;
}
/* recv: len bytes from each team rank, in team order. */
int cpdl__coll_allgather(const cpdl__team_t *team, const void *send, size_t len, void *recv,
                         const char *what);
/* data (len bytes, the same len everywhere) becomes team rank root's. */
int cpdl__coll_bcast(const cpdl__team_t *team, void *data, size_t len, int root,
                     const char *what);
int cpdl__coll_barrier(const cpdl__team_t *team, const char *what);
/* values[k] = min over the team of values[k] (n the same everywhere). */
int cpdl__coll_min_i64(const cpdl__team_t *team, int64_t *values, int n, const char *what);
/* The lowest value, and the lowest team rank holding it. */
int cpdl__coll_minloc(const cpdl__team_t *team, int value, int *min_value, int *min_rank,
                      const char *what);
/* Each rank's len bytes (lengths may differ): *out (malloc'd, the caller
 * frees) holds team rank i's bytes at [offsets[i], offsets[i+1]); offsets
 * has team->size + 1 entries. */
int cpdl__coll_allgatherv(const cpdl__team_t *team, const void *send, size_t len, char **out,
                          size_t *offsets, const char *what);

typedef struct cpdl__peer {
  int rank;       /* world rank */
  int32_t pid;
  int pidfd;      /* -1: no pidfds here, kill(pid, 0) decides */
} cpdl__peer_t;
typedef struct cpdl__live cpdl__live_t; /* live.c */
typedef struct cpdl__watch {
  int n;
  cpdl__peer_t *peers;  /* this rank excluded */
  /* The remote liveness (ranks on other hosts), or NULL: a verdict there ends
   * the wait as a local death does. */
  const cpdl__live_t *live;
  /* Optional, polled with the peers: nonzero ends the wait with that error
   * (the request is abandoned as after a death). NULL: none. */
  int (*check)(void *arg);
  void *check_arg;
} cpdl__watch_t;
/* pidfd_open(2), or -1 with errno (ENOSYS where the kernel lacks it). */
int cpdl__pidfd_open(pid_t pid);
/* Whether the process exited (a zombie counts as dead). */
bool cpdl__pid_dead(int32_t pid, int pidfd);
/* Collective (a team operation over host, this host's ranks): every host
 * rank's pid. \return 0, CPDL_EMPI, CPDL_EPEER, -ENOMEM; *out is valid
 * (maybe empty) either way and freed with cpdl__watch_free (local). */
int cpdl__watch_build(const cpdl__team_t *host, cpdl__watch_t *out);
const cpdl__peer_t *cpdl__watch_find(const cpdl__watch_t *watch, int rank); /* NULL: not here */
void cpdl__watch_free(cpdl__watch_t *watch);
/* Install (NULL: remove) this thread's watch; returns the previous one. */
const cpdl__watch_t *cpdl__watch_install(const cpdl__watch_t *watch);

/* ---- live.c: remote liveness (a thread on its own dup of comm) -------------
 * Started only for a job that spans hosts, on the MPI control plane, with
 * MPI_THREAD_MULTIPLE on every rank (the caller agrees on that first).
 * cpdl__live_start is collective (MPI_Comm_dup); hosts (size ×
 * CPDL__HOST_NAME_MAX) and watch must outlive the liveness. \return 0,
 * CPDL_EMPI, -ENOMEM, -errno. */
int cpdl__live_start(MPI_Comm comm, int rank, int size, const cpdl__watch_t *watch,
                     const char *hosts, cpdl__live_t **out);
/* Local, any thread: CPDL_EPEER (with the message naming the rank and its
 * host) once a rank died or failed anywhere, or — when waiting for `step`
 * (UINT64_MAX: in a collective, departures do not count) — a rank left
 * before taking that step; else 0. NULL: 0. */
int cpdl__live_check(const cpdl__live_t *live, uint64_t step);
/* Tell every rank this one closes and takes no step from `step` on. */
void cpdl__live_announce_leave(cpdl__live_t *live, uint64_t step);
/* Tell every rank this one failed (why: its message), unless the failure
 * came from them. */
void cpdl__live_announce_failure(cpdl__live_t *live, const char *why);
/* Local: stop the thread (saying BYE to the rank that watches this one) and
 * free. NULL: no-op. */
void cpdl__live_stop(cpdl__live_t *live);

/* ---- oob_mpi.c --------------------------------------------------------------
 * The default control plane: MPI_Iallgather on a dup of comm (collective:
 * MPI_Comm_dup). \return 0 or CPDL_EMPI (MPI not initialized, dup failed). */
int cpdl__oob_mpi_create(MPI_Comm comm, cpdl_oob_t *out);
void cpdl__oob_mpi_free(cpdl_oob_t *oob); /* local; not one of ours: no-op */
MPI_Comm cpdl__oob_mpi_comm(const cpdl_oob_t *oob); /* the dup, or MPI_COMM_NULL */

/* ---- mesh.c ---------------------------------------------------------------
 * The (dp, cp, tp) arrangement of the control plane's world, its node, group
 * and host teams. CPDL_RANKS_PER_NODE=k fakes nodes of k consecutive ranks. */
typedef struct cpdl__mesh {
  cpdl__team_t world;
  cpdl__team_t node;    /* ranks of this node (real or faked) */
  cpdl__team_t group;   /* replica ∩ node; team rank 0 is the leader */
  /* The real host (hostname + boot id): the node itself unless
   * CPDL_RANKS_PER_NODE fakes nodes; the pid watch covers it. */
  cpdl__team_t host;
  cpdl_mesh_coords_t me;
  int node_rank, node_size, n_nodes;
  bool is_leader;
  /* The distinct CP ranks present in this group, ascending; the group's
   * segment has one region per entry. */
  int n_local_cp;
  int local_cp[64];
  int local_cp_index;   /* index of me.cp_rank in local_cp */
  /* world ranks of the group's members, by group rank */
  int group_world_ranks[512];
} cpdl__mesh_t;

/* Collective over ctl's world (ctl must outlive the mesh). layout NULL:
 * coordinates from cp, tp and order; else the caller's, checked to form one
 * consistent grid. \return the same on every rank: 0, CPDL_EMESH (size not
 * divisible by cp*tp, bad order string, an inconsistent layout naming the
 * ranks, pp > 1, group over capacity), CPDL_EARG (bad CPDL_RANKS_PER_NODE),
 * CPDL_EMPI, -ENOMEM. */
int cpdl__mesh_build(const cpdl__ctl_t *ctl, const cpdl_layout_t *layout, int cp, int tp,
                     const char *order, cpdl__mesh_t *out);
/* Pure: coordinates of `rank` in a mesh of (dp, cp, tp) with `order`
 * ("dp,cp,tp" = tp fastest). \return 0 or CPDL_EMESH. */
int cpdl__mesh_coords(int rank, int size, int cp, int tp, const char *order,
                      int *dp_rank, int *cp_rank, int *tp_rank);
/* Pure: check a grid of n ranks' layouts (layouts[r] is world rank r's).
 * \return 0 or CPDL_EMESH naming the ranks that disagree. */
int cpdl__mesh_check_grid(const cpdl_layout_t *layouts, int n, int cp, int tp);
void cpdl__mesh_free(cpdl__mesh_t *mesh);
/* Reduce a local result over a team: every rank returns the lowest (most
 * negative) code; the message of the first rank that has it is carried to
 * all ranks, prefixed "rank <world rank>: ". Never hangs on a live world.
 * A caller holding a CPDL_EPEER from a watched collective must not agree it:
 * it returns it as is (another collective would only wait on the dead). */
int cpdl__agree(const cpdl__team_t *team, int local_rc);

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
/* Tests only: the next cpdl__shm_create() tries `name` ("/cpdl-...") first
 * (then random names as usual). NULL clears it. Not thread-safe. */
void cpdl__shm_test_force_name(const char *name);

/* ---- ring.c ---------------------------------------------------------------
 * The segment's header and the slot protocol (docs/design.md#the-ring-protocol).
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

/* The segment's control part as it lies in shared memory (its ABI; tests
 * corrupt it on purpose). Offsets and sizes only, never pointers. Layout:
 * [hdr][field records][slot records][consumer records], each table 64-byte
 * aligned, the whole control part page-aligned. */
#define CPDL__RING_MAGIC UINT64_C(0x474e49524c445043) /* "CPDLRING" little-endian */
#define CPDL__RING_VERSION 3u /* 2: consumer records carry world_rank and left; 3: 5 state words */
#define CPDL__RING_MAX_SLOTS 1024u
#define CPDL__RING_MAX_REGIONS 64u
#define CPDL__RING_MAX_CONSUMERS 512u
#define CPDL__RING_STATE_WORDS 5 /* == CPDL__CURSOR_WORDS (checked in ring.c) */
#define CPDL__RING_MSG_MAX 512
typedef struct cpdl__ring_hdr {
  /* written once by the leader before the name is sent; read once by each
   * consumer into a local copy */
  uint64_t magic, total_bytes, header_bytes, nonce, config_hash, first_step;
  uint32_t version, page_bytes;
  uint32_t n_slots, n_regions, n_consumers, n_fields;
  uint64_t slot_bytes, shared_slot_bytes;
  /* live words */
  _Alignas(CPDL__CACHE_LINE) _Atomic int32_t leader_pid;
  _Atomic uint32_t abort_state;   /* 0 none, 1 being posted, 2 posted */
  _Atomic int32_t error_code;     /* valid once abort_state == 2 */
  _Atomic uint32_t eof_set;       /* 1: eof_step is valid */
  _Atomic uint64_t eof_step;      /* no step >= this will be published */
  _Atomic uint64_t heartbeat;
  char error_msg[CPDL__RING_MSG_MAX];
} cpdl__ring_hdr_t;
typedef struct cpdl__ring_field_rec {
  char name[CPDL_NAME_MAX];
  int32_t dtype, ndim, seq_dim, shared;
  int64_t shape[CPDL_MAX_DIMS];
  uint64_t offset, nbytes;        /* within its (rank or shared) block */
} cpdl__ring_field_rec_t;
typedef struct cpdl__ring_slot_rec {
  _Alignas(CPDL__CACHE_LINE) _Atomic uint32_t seq; /* futex word, bumped per publish */
  uint32_t reserved;
  _Atomic uint64_t step;          /* step last published in this slot */
  _Atomic uint64_t state[CPDL__RING_STATE_WORDS]; /* feed cursor after that step */
} cpdl__ring_slot_rec_t;
typedef struct cpdl__ring_consumer_rec { /* one cache line, written by its consumer */
  _Alignas(CPDL__CACHE_LINE) _Atomic uint64_t cursor; /* last released step + 1 */
  _Atomic int32_t pid;
  _Atomic uint32_t futex;         /* bumped per release (and on leave); the leader sleeps on it */
  _Atomic int32_t world_rank;     /* for messages that name this consumer */
  _Atomic uint32_t left;          /* 1: this consumer closed its loader; its cursor is final */
} cpdl__ring_consumer_rec_t;
/* Offsets of the tables in the control part (pure function of n_fields,
 * n_slots). */
size_t cpdl__ring_fields_offset(void);
size_t cpdl__ring_slots_offset(uint32_t n_fields);
size_t cpdl__ring_consumers_offset(uint32_t n_fields, uint32_t n_slots);

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
/* The error posted to the group (0 if none); its message goes to
 * cpdl_last_error() of this thread. */
int cpdl__ring_posted_error(const cpdl__ring_t *ring);



/* ---- source.c (plugin host; ABI in include/cpdl/plugin.h) -----------------
 * A data source opened from a URI "scheme:path?key=value&...". Token samples
 * are zero-copy views (mmap) where the format allows. */
typedef struct cpdl__source cpdl__source_t;
typedef struct cpdl__sample {
  /* Belongs to the source. Valid until the source closes when
   * cpdl__source_stable() (mmap-backed: llmc, megatron); for generated
   * sources (synthetic) only until the next read on the same source.
   * Reads on one source are serialized by the host when the plugin does not
   * declare concurrent reads. */
  const void *tokens;
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
/* Tokens of sample `index` without producing them (the plugin's length(), or
 * a read when it has none). */
int cpdl__source_length(cpdl__source_t *src, int64_t index, int64_t *n_tokens);
/* Pre-collated sources (npy): batches instead of samples. has_batches is
 * true for them; read_batch fills tensors owned by the source, valid until
 * the next call. */
bool cpdl__source_has_batches(const cpdl__source_t *src);
int64_t cpdl__source_batch_count(const cpdl__source_t *src);
int cpdl__source_read_batch(cpdl__source_t *src, int64_t step, cpdl_tensor_t *fields, int *n_fields);
void cpdl__source_close(cpdl__source_t *src);
/* Extras (for inspect, the binding and tests). */
const char *cpdl__source_description(const cpdl__source_t *src);
const char *cpdl__source_plugin_path(const cpdl__source_t *src); /* the .so loaded */
bool cpdl__source_stable(const cpdl__source_t *src); /* tokens valid until close */
/* Sources with one global sample order (CPDL_SOURCE_GLOBAL_ORDER: gpt): sample
 * `index` as one training row of `width` positions (plugin.h, read_row). */
bool cpdl__source_global_order(const cpdl__source_t *src);
int cpdl__source_read_row(cpdl__source_t *src, int64_t index, int64_t width, int64_t *input_ids,
                          int64_t *labels, float *loss_mask, int64_t *position_ids);
/* Documents: sample i is document i unless the plugin says otherwise
 * (megatron ?unit=sequence): document j = samples [*first, *first+*n). */
int64_t cpdl__source_document_count(const cpdl__source_t *src);
int cpdl__source_document(const cpdl__source_t *src, int64_t doc, int64_t *first,
                          int64_t *n_samples);
/* "a, b, c" of the schemes found on the plugin search path; 
eturn count. */
int cpdl__source_list(char *buf, size_t size);

/* ---- feed.c (+ feed_tokens.c, feed_rows.c, feed_batches.c), perm.c, collate.c
 * What the leader's loader threads pull batches from: one global order of
 * training rows (docs/design.md#the-global-order), a function of the data and
 * of seed, seq_len, batch, collate, mode and the padding multiple — never of
 * dp, cp, tp or the node count: row b of replica r at the k-th step of an
 * epoch is row consumed0 + (k*dp + r)*unit + b of that epoch. Every node of
 * a replica produces the same collated batch for the same step without
 * communication, and the cursor (a few integers, the same on every replica)
 * says where the next step starts: setting it reproduces the stream from
 * there, under any layout. */
#define CPDL__CURSOR_WORDS 5
#define CPDL__CURSOR_EPOCH 0    /* the epoch of the next step */
#define CPDL__CURSOR_CONSUMED 1 /* rows of that epoch consumed (gpt: samples, npy: batches) */
#define CPDL__CURSOR_POSITION 2 /* thd: the document position where row CONSUMED starts */
#define CPDL__CURSOR_OFFSET 3   /* thd: the pair offset in that document */
#define CPDL__CURSOR_STEP 4     /* the word counting the steps produced (== the loader's step) */
typedef struct cpdl__feed cpdl__feed_t;
/* \return 0, CPDL_EPLUGIN (unknown scheme, ABI mismatch, dlerror text),
 *         CPDL_ESOURCE, CPDL_ECORRUPT (file named with offset), CPDL_EARG.
 * The first epoch's index is built here (one pass over the lengths). */
int cpdl__feed_open(const cpdl_config_t *cfg, int dp_rank, int dp_size, cpdl__feed_t **out);
/* The fields a step has — names, dtypes, shapes; data NULL — producing
 * nothing (npy reads its first batch's headers). \return 0 or a source error. */
int cpdl__feed_spec(cpdl__feed_t *feed, cpdl_tensor_t *fields, int *n_fields);
/* Collate the next step. On return fields[0..*n_fields) describe tensors of
 * shape [batch, seq_len] (or the npy plugin's arrays) owned by the feed, valid
 * until the next call. A field named "loss_mask", if present, is the loss
 * mask. Shapes and dtypes are the spec's for every step.
 * \return 0, CPDL_EEOF (gpt: its last full global batch is behind), or an error. */
int cpdl__feed_next(cpdl__feed_t *feed, cpdl_tensor_t *fields, int *n_fields);
/* Steps from the cursor to the end of epoch `epochs` - 1, at most cap
 * (counting stops there): pack, pad and npy in O(1), thd by running its
 * packing over each epoch's lengths. The same on every replica. */
int cpdl__feed_steps(cpdl__feed_t *feed, uint64_t epochs, uint64_t cap, uint64_t *out);
/* The cursor after the last step (thd: may run the packing ahead to the
 * next global batch's first row). \return 0 or a source error. */
int cpdl__feed_cursor(cpdl__feed_t *feed, uint64_t words[CPDL__CURSOR_WORDS]);
/* Position the feed at a cursor of any replica of a job of any layout (the
 * same data and stream keys). \return 0, CPDL_EARG (a cursor this data
 * cannot hold), a source error. */
int cpdl__feed_seek(cpdl__feed_t *feed, const uint64_t words[CPDL__CURSOR_WORDS]);
void cpdl__feed_close(cpdl__feed_t *feed);
/* True when a step's tensors stay valid until the call after the next one
 * (the collate is double-buffered: cfg->threads > 1 and not pre-collated). */
bool cpdl__feed_double_buffered(const cpdl__feed_t *feed);
/* "tokens", "rows" or "batches" (feed_kind.h). */
const char *cpdl__feed_kind(const cpdl__feed_t *feed);

/* ---- perm.c ---------------------------------------------------------------
 * The document at (epoch, position): a permutation of [0, n) per epoch, a
 * pure function of (n, seed, epoch). Fisher–Yates (materialized, n <=
 * table_max) or a keyed Feistel permutation with cycle walking (no memory,
 * larger n). */
typedef struct cpdl__perm cpdl__perm_t;
/* table_max: largest n shuffled with a table; 0 = default (1 << 26).
 * \return 0, CPDL_EARG (n < 1), -ENOMEM. */
int cpdl__perm_create(int64_t n, uint64_t seed, int64_t table_max, cpdl__perm_t **out);
void cpdl__perm_destroy(cpdl__perm_t *perm);
int64_t cpdl__perm_size(const cpdl__perm_t *perm);
/* perm_epoch[position], 0 <= position < n. Not const: it may rebuild the
 * cached epoch's table. */
int64_t cpdl__perm_at(cpdl__perm_t *perm, uint64_t epoch, int64_t position);

/* ---- collate.c ------------------------------------------------------------
 * Turns documents into [batch, seq_len] int64 tensors
 * (docs/design.md#the-data-path); see collate.c for the exact window and
 * position rules. Documents come through a cpdl__doc_order_t, so tests need
 * no plugin; an epoch's last position is followed by CPDL_EEOF. */
typedef enum { CPDL__COLLATE_PACK = 0, CPDL__COLLATE_PAD = 1 } cpdl__collate_kind_t;
typedef struct cpdl__doc_order {
  /* Document `position` of `epoch`: its tokens, or only its length. Both
   * return CPDL_EEOF past the epoch's last document. */
  int (*read)(void *arg, uint64_t epoch, int64_t position, cpdl__sample_t *out);
  int (*length)(void *arg, uint64_t epoch, int64_t position, int64_t *n_tokens);
  void *arg;
} cpdl__doc_order_t;
typedef struct cpdl__collate_params {
  cpdl__collate_kind_t kind;
  int64_t seq_len;          /* S >= 1 */
  int batch;                /* B >= 1 */
  int64_t padding_token_id; /* pad: input_ids filler */
  int position_ids;         /* pack: 0 = restart per document, 1 = continuous */
  int loss_on_eot;          /* 0: labels equal to eot_token become -100 */
  int64_t eot_token;        /* -1: none */
  bool double_buffer;       /* two output sets, used in turn (see collate_begin) */
  int thd_multiple;         /* pack, batch 1: > 0 pads each document to a multiple of this
                             * (2*cp, mode thd) and adds loss_mask and the cu_seqlens fields */
  bool thd_doc_ids;         /* thd: also doc_ids, int64 [S/thd_multiple]: each row entry's
                             * document (its source sample), -1 past them or for padding
                             * (schedule=balanced: cpdl__collate_thd_pieces fills it) */
} cpdl__collate_params_t;
typedef struct cpdl__collate cpdl__collate_t;
/* "pack" | "pad". \return 0 or CPDL_EARG. */
int cpdl__collate_parse(const char *name, cpdl__collate_kind_t *out);
/* \return 0, CPDL_EARG (bad kind, sizes, position_ids), CPDL_EOVERFLOW, -ENOMEM. */
int cpdl__collate_create(const cpdl__collate_params_t *params, const cpdl__doc_order_t *order,
                         cpdl__collate_t **out);
void cpdl__collate_destroy(cpdl__collate_t *collate);
/* A step: begin() moves to the next output set (with double_buffer the
 * previous step's set stays intact, so one thread may prepare step k while
 * another collates k+1); row(b) fills row b from the cursor and moves the
 * cursor past it; fields() describes the set (4 fields for pack, 7 for thd,
 * 3 for pad), valid until the next begin() — or the one after it.
 * row \return 0, a read error, CPDL_ESOURCE (the epoch ended inside a pack or
 * pad row), CPDL_EEOF (thd: the epoch holds no more pairs). */
void cpdl__collate_begin(cpdl__collate_t *collate);
int cpdl__collate_row(cpdl__collate_t *collate, int64_t row);
void cpdl__collate_fields(const cpdl__collate_t *collate, cpdl_tensor_t *fields, int *n_fields);
/* begin, rows 0..batch-1, fields. */
int cpdl__collate_next(cpdl__collate_t *collate, cpdl_tensor_t *fields, int *n_fields);
/* The fields of a step of these parameters, data NULL. */
int cpdl__collate_spec(const cpdl__collate_params_t *params, cpdl_tensor_t *fields, int *n_fields);
/* Mode thd: entries n+1 of this step's cu_seqlens / cu_seqlens_padded, whose fields hold
 * `capacity` entries with the tail repeating S: one more than the index of the first entry of
 * cu_padded that reaches seq_len (a binary search reading each probe once; at most capacity). */
int64_t cpdl__collate_thd_len(const int32_t *cu_padded, int64_t capacity, int64_t seq_len);
/* Mode thd: the documents of one row, from lengths alone — the one packing
 * rule, used to make rows (collate) and to count and index them (feed).
 * From (*position, *offset) of `epoch`: whole documents' input/label pairs,
 * each padded to a multiple of `multiple`, while they fit seq_len; a document
 * longer than a row fills it and continues. place (may be NULL) is called
 * for each piece: pairs [offset, offset + len) of the document at position,
 * at row index `at`, taking `padded` positions. On return the cursor is the
 * next row's start (normalized: a document with a pair left, or the epoch's
 * end). \return 1 (a row), 0 (the epoch holds no more pairs), an error. */
typedef int (*cpdl__thd_place_fn)(void *arg, int64_t position, int64_t offset, int64_t len,
                                  int64_t padded, int64_t at);
int cpdl__thd_plan_row(int64_t seq_len, int64_t multiple, const cpdl__doc_order_t *order,
                       uint64_t epoch, int64_t *position, int64_t *offset,
                       cpdl__thd_place_fn place, void *place_arg);
/* Mode thd, a scheduled row (schedule=balanced, docs/schedule.md): the
 * current set's row made of pieces[0..n) in that order, pairs [offset, offset
 * + len) of the document at `position` of the cursor's epoch, each taking
 * `padded` positions (a multiple of thd_multiple; together exactly seq_len);
 * position -1 is padding (len 0). The cursor does not move.
 * \return 0, CPDL_EARG (pieces that do not tile the row), a read error. */
typedef struct {
  int64_t position, offset, len, padded;
  int64_t doc_id; /* written to doc_ids (thd_doc_ids): the source's sample, -1 padding */
} cpdl__thd_piece_t;
int cpdl__collate_thd_pieces(cpdl__collate_t *collate, const cpdl__thd_piece_t *pieces, int64_t n);
/* Where the next row starts: document `position` of `epoch`, token (thd:
 * pair) offset in it. */
void cpdl__collate_cursor(const cpdl__collate_t *collate, uint64_t *epoch, int64_t *position,
                          int64_t *offset);
/* \return 0 or CPDL_EARG (negative position or offset, offset in pad mode). */
int cpdl__collate_seek(cpdl__collate_t *collate, uint64_t epoch, int64_t position, int64_t offset);

/* ---- pin.c, pin_plan.c ---------------------------------------------------
 * hwloc placement. pin_plan.c is the pure plan (topology + gathered
 * bindings + GPU requests -> per-thread cpusets and per-region NUMA nodes);
 * pin.c gathers the inputs over MPI, applies the plan and reports it.
 * The loader uses only these four: */
typedef struct cpdl__pin cpdl__pin_t;
/* Collective over mesh->node (a team operation): gathers every
 * member's binding and GPU request, loads the topology, plans for this group.
 * policy: "auto" | "numa" | "cores:<list>" | "none" (NULL = "auto").
 * n_threads: the leader's loader threads (thread 0 = ring/publisher).
 * Where hwloc fails the pin degrades to "none" with one warning on stderr.
 * \return the same on every rank: 0, CPDL_EARG (bad policy or a cores list
 *         naming a CPU that does not exist or is not allowed), CPDL_EMPI,
 *         -ENOMEM. *out belongs to the caller: cpdl__pin_free(). */
int cpdl__pin_setup(const cpdl__mesh_t *mesh, const char *policy, int n_threads, cpdl__pin_t **out);
/* Called by loader thread `thread` (0 .. n_threads-1) on itself. Binding
 * failures are a warning (return 0) except for an explicit cores:<list>,
 * where they are CPDL_EPIN. A NULL pin is a no-op. */
int cpdl__pin_thread(cpdl__pin_t *pin, int thread);
/* Bind a local CP region's memory near its consumer before first touch
 * (hwloc_set_area_membind, BIND to one NUMA node). tmpfs allocates pages at
 * posix_fallocate time, so call it on the mapping before reserving the
 * space. Failure is a warning (return 0). A NULL pin is a no-op. */
int cpdl__pin_region(cpdl__pin_t *pin, int region, void *addr, size_t len);
void cpdl__pin_free(cpdl__pin_t *pin);
/* Collective over a team (e.g. the loader's world): on team rank 0
 * *json_out is a malloc'd JSON array, one entry per rank's main thread and
 * per leader loader thread, ordered by rank:
 *   [{"rank": 0, "thread": "main", "cpuset": "0-1", "numa": 0, "gpu": null},
 *    {"rank": 0, "thread": "loader0", ...}, ...]
 * elsewhere NULL. A NULL pin reports the rank unbound. \return 0,
 * CPDL_EMPI, -ENOMEM (the same on every rank). */
int cpdl__pin_report(const cpdl__pin_t *pin, const cpdl__team_t *team, char **json_out);
/* Read access for tests and the CLI: the planned cpuset of a loader thread as
 * a list string ("4-5"; "" = left unbound), the NUMA node of a region (-1 =
 * left alone). */
int cpdl__pin_thread_cpuset(const cpdl__pin_t *pin, int thread, char *buf, size_t size);
int cpdl__pin_region_numa(const cpdl__pin_t *pin, int region);

/* The pure plan (pin_plan.c). hwloc types are named by their struct tags so
 * that this header does not pull in hwloc.h. */
struct hwloc_topology;
struct hwloc_bitmap_s;
typedef enum {
  CPDL__PIN_NONE = 0, /* no binding at all */
  CPDL__PIN_AUTO,     /* one free core per thread near its consumer */
  CPDL__PIN_NUMA,     /* the consumer's NUMA node (less the ranks' cores) */
  CPDL__PIN_CORES     /* thread t on the t-th CPU of the list (wrapping) */
} cpdl__pin_policy_t;
/* One rank of the node, as gathered. */
typedef struct cpdl__pin_member {
  int world_rank;
  int group;          /* members with the same group share a segment */
  int cp_rank;
  bool is_leader;     /* runs its group's loader threads */
  const char *binding; /* hwloc list string of its CPU binding; NULL/"" unknown */
  const char *gpu;     /* GPU request: PCI bus id "0000:41:00.0", "#<index>"
                          (index in PCI bus order), or NULL */
} cpdl__pin_member_t;
typedef struct cpdl__pin_plan_in {
  const char *policy;
  int n_threads;                     /* loader threads per group leader */
  const cpdl__pin_member_t *members; /* the node's ranks */
  int n_members;
  int group;                         /* the group whose threads/regions are wanted;
                                        its regions are its distinct CP ranks,
                                        ascending (as mesh->local_cp) */
} cpdl__pin_plan_in_t;
typedef struct cpdl__pin_plan {
  cpdl__pin_policy_t policy;
  int n_threads;
  struct hwloc_bitmap_s **thread_cpuset; /* [n_threads]; NULL = leave unbound */
  int *thread_numa;                      /* [n_threads]; -1 unknown */
  int *thread_member;                    /* [n_threads]; member it serves */
  int n_regions;
  int *region_numa;                      /* [n_regions]; -1 = leave alone */
  int n_members;
  int *member_numa;                      /* [n_members]; -1 unknown */
  char (*member_gpu)[16];                /* [n_members]; "" = none */
  char note[256];                        /* why a fallback was taken ("" if none) */
} cpdl__pin_plan_t;
/* Parse a policy; for cores:<list> fill *cpus (a new bitmap, caller frees
 * with hwloc_bitmap_free) unless cpus is NULL. Syntax only.
 * \return 0 or CPDL_EARG naming the bad text. */
int cpdl__pin_policy_parse(const char *policy, cpdl__pin_policy_t *kind, struct hwloc_bitmap_s **cpus);
/* Plan from a loaded topology (synthetic, XML or this machine). Pure: binds
 * nothing. Threads of every group on the node are planned (in group order)
 * so that two leaders never pick the same core; only `group`'s are kept.
 * A GPU request that is malformed or names no GPU is a note, not an error.
 * \return 0, CPDL_EARG (bad policy; cores naming CPUs the topology does
 * not have or does not allow), -ENOMEM.
 * *out: cpdl__pin_plan_free(). */
int cpdl__pin_plan_make(struct hwloc_topology *topo, const cpdl__pin_plan_in_t *in, cpdl__pin_plan_t **out);
void cpdl__pin_plan_free(cpdl__pin_plan_t *plan);
/* The GPU request of a rank from its environment: CPDL_GPU (bus id or
 * index) wins, else the local_rank-th entry of CUDA_VISIBLE_DEVICES (its
 * only entry if it has one; UUIDs cannot be resolved: no request), else
 * "#<local_rank>". Writes "" for no request. Pure (values passed in). */
void cpdl__pin_gpu_request(const char *cpdl_gpu, const char *cuda_visible, int local_rank,
                           char *out, size_t size);


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

/* ---- loader.c (internals for the CLI and tests) ---------------------------- */
const cpdl__pin_t *cpdl__loader_pin(const cpdl_loader_t *loader);
const cpdl__team_t *cpdl__loader_world(const cpdl_loader_t *loader);
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
