/* cpdl/loader.h — the node-local shared-memory loader: configuration, the
 * collective open over a caller's out-of-band allgather, the per-step
 * zero-copy views and the resume state. Needs no <mpi.h>: the entry points
 * that name MPI types (cpdl_loader_open on an MPI_Comm, the host entry
 * table) are cpdl/loader_mpi.h, which this header includes at its end when
 * <mpi.h> can be found and CPDL_NO_MPI is not defined — so an MPI program
 * that includes cpdl.h or cpdl/loader.h compiles unchanged, and a C program
 * on its own control plane needs no MPI headers.
 */
#ifndef CPDL_LOADER_H
#define CPDL_LOADER_H

#include "cpdl/prep.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------- */
/* Configuration                                                              */
/* ------------------------------------------------------------------------- */

#define CPDL_SOURCE_MAX 512

/** One set of names everywhere: the CLI's option names with '_' for '-'
 *  ("seq_len"), the `key=value` string, and CPDL_<KEY> in the environment
 *  (CPDL_SEQ_LEN). */
typedef struct cpdl_config {
  size_t struct_size;        /* sizeof(cpdl_config_t); set by cpdl_config_init() */
  int cp;                    /* cp         CP ranks per replica (1) */
  int tp;                    /* tp         TP ranks per CP rank (1) */
  char order[16];            /* order      mesh order, slowest first ("dp,cp,tp") */
  int64_t seq_len;           /* seq_len    tokens per row before padding (4096) */
  int batch;                 /* batch      rows per step (1) */
  int64_t steps;             /* steps      steps to deliver, 0 = until `epochs` passes end (100) */
  int slots;                 /* slots      ring depth: 0 = sized by need and ring_bytes
                                           (docs/design.md#memory-sized-by-need), else
                                           exactly this many, >= 2 (0) */
  cpdl_mode_t mode;          /* mode       contiguous | round_robin | aux_only | thd (docs/thd.md) */
  uint64_t seed;             /* seed       the global order's and synthetic's seed (1234) */
  char source[CPDL_SOURCE_MAX]; /* source  data-source URI ("synthetic:") */
  char collate[16];          /* collate    pack | pad ("pack") */
  int64_t padding_token_id;  /* padding_token_id (0) */
  int position_ids;          /* position_ids 0 = restart per document, 1 = continuous */
  int loss_on_eot;           /* loss_on_eot 1 = EOT tokens count in the loss (1) */
  int drop_last;             /* drop_last  1 = an epoch ends at its last full global batch, 0 = wrap (1) */
  int threads;               /* threads    loader threads in the leader: with 2 or more, one collates
                                           step k+1 while the others prepare step k; steps under
                                           4 MiB are done by one thread (2) */
  char pin[64];              /* pin        auto | numa | cores:<list> | none ("auto") */
  int timeout_ms;            /* timeout_ms how long next() waits before CPDL_ETIMEDOUT (60000) */
  int64_t epochs;            /* epochs     end the run after this many passes over the data;
                                           0 = 1 when steps=0, else no bound (0). Every
                                           replica ends on the same step: an epoch of the
                                           global order (docs/design.md#the-global-order) of R
                                           rows gives R / (dp*batch) steps (drop_last=1) or
                                           the ceiling (drop_last=0: the last global batch
                                           wraps to the epoch's first rows), counted at open
                                           from lengths (and again after a restore). With
                                           steps > 0 too, the earlier end wins. Pre-collated
                                           (npy) sources: a row is a whole batch, so an epoch
                                           of n batches gives n / dp steps (or the ceiling) */
  char schedule[16];         /* schedule   static | balanced (mode thd, a token source): who gets
                                           which documents of a global batch, balancing the
                                           modeled work across replicas (docs/schedule.md);
                                           dynamic is designed, not yet fed ("static") */
  char cost[48];             /* cost       a,b: a document of L tokens costs a*L + b*L^2, the
                                           work model of schedule= ("57256,1": Llama-3-8B) */
  int64_t ring_bytes;        /* ring_bytes the ring's byte budget with slots=0: as many slots of
                                           one step as fit, 2 to 4 (suffix K/M/G; 0 = 64M);
                                           a budget given that holds fewer than 2 steps is
                                           an error at open (0) */
} cpdl_config_t;

/** Fill in defaults (see above). A NULL cfg does nothing but leave a message. */
CPDL_API void cpdl_config_init(cpdl_config_t *cfg);
/** Set one key from its text. \return 0 or CPDL_EARG (unknown key: the
 *  message lists the known keys; bad value: it says what was expected). */
CPDL_API int cpdl_config_set(cpdl_config_t *cfg, const char *key, const char *value);
/** Apply "key=value key=value ..." (whitespace or commas between pairs); a
 *  NULL text applies nothing (0). \return as cpdl_config_set. */
CPDL_API int cpdl_config_parse(cpdl_config_t *cfg, const char *text);
/** Apply every CPDL_<KEY> environment variable that names a known key. */
CPDL_API int cpdl_config_from_env(cpdl_config_t *cfg);
/** Canonical "key=value ..." text of every key, in a fixed order.
 *  \return the length it needs (like snprintf; buf may be NULL to ask), or
 *  CPDL_EARG for a NULL cfg. */
CPDL_API int cpdl_config_format(const cpdl_config_t *cfg, char *buf, size_t size);

/* ------------------------------------------------------------------------- */
/* The loader                                                                 */
/* ------------------------------------------------------------------------- */

typedef struct cpdl_loader cpdl_loader_t;

/** Where a rank sits. */
typedef struct cpdl_mesh_coords {
  int world_rank, world_size;  /* in the communicator given to open */
  int dp_rank, cp_rank, tp_rank;
  int dp_size, cp_size, tp_size;
  int node, group;             /* node index; group index (one segment each) */
  int group_rank, group_size;  /* 0 = the group's leader */
} cpdl_mesh_coords_t;

typedef struct cpdl_view_field {
  const char *name;            /* belongs to the loader */
  cpdl_dtype_t dtype;
  int ndim;
  int64_t shape[CPDL_MAX_DIMS];
  const void *data;            /* read-only, inside the shared segment */
  size_t nbytes;
} cpdl_view_field_t;

/** One rank's view of one step. Pointers stay valid until cpdl_batch_release(). */
typedef struct cpdl_batch {
  uint64_t step;
  int n_fields;
  cpdl_view_field_t fields[CPDL_MAX_FIELDS];
  cpdl_mesh_coords_t mesh;
  const void *region;          /* this rank's whole shard region (all slots) */
  size_t region_bytes;
  void *internal;              /* the loader's; do not touch */
} cpdl_batch_t;

/* ---- the control plane: an out-of-band allgather (after UCC's ucc_oob_coll_t) ----
 * Every collective cpdl runs at open, restore and close (mesh, configuration
 * and error agreement, the segment name, barriers, pin gathering, the pid
 * exchange) is built on one nonblocking allgather that the caller supplies.
 * cpdl_loader_open(MPI_Comm) supplies one over MPI_Iallgather; the Python
 * binding supplies one over torch.distributed (gloo). cpdl does no
 * networking of its own. The data path (next/release) never uses it. */

/** Status values of the callbacks (as UCC's: 0 done, 1 in progress, < 0 error). */
#define CPDL_OOB_OK 0
#define CPDL_OOB_INPROGRESS 1

/** An out-of-band allgather over n_oob_eps endpoints (processes).
 *  allgather: start gathering msglen bytes from every endpoint's sbuf into
 *    rbuf (endpoint i's bytes at rbuf + i * msglen); store a request handle
 *    in *req. cpdl keeps sbuf and rbuf alive and untouched until req_test has
 *    said done — or forever, if it abandons a request because a peer died.
 *    Every endpoint calls it the same number of times, in the same order,
 *    with the same msglen. Return CPDL_OOB_OK or < 0.
 *  req_test: CPDL_OOB_OK (done), CPDL_OOB_INPROGRESS, or < 0 (failed).
 *    Called from the thread that started the request, never concurrently.
 *  req_free: release a finished request. Not called for an abandoned one.
 *  The struct is copied at open; coll_info must stay valid until close.
 *  struct_size = sizeof(cpdl_oob_t) lets the struct grow. */
typedef struct cpdl_oob {
  size_t struct_size;
  int (*allgather)(const void *sbuf, void *rbuf, size_t msglen, void *coll_info, void **req);
  int (*req_test)(void *req);
  int (*req_free)(void *req);
  void *coll_info;
  int n_oob_eps;               /* number of processes (the world) */
  int oob_ep;                  /* this process, 0 .. n_oob_eps-1 */
} cpdl_oob_t;

/** A rank's coordinates in the trainer's own layout, given at open instead
 *  of deriving them from the config's order key. Sizes must be equal on every
 *  rank, each (dp, cp, tp) must be held by exactly one rank and
 *  dp_size * cp_size * tp_size must be the world size; cp_size and tp_size
 *  must equal the config's cp and tp. Pipeline parallelism is not supported:
 *  pp_size must be 0 or 1 (give each pipeline stage that reads data its own
 *  world, or open on the first stage only). */
typedef struct cpdl_layout {
  size_t struct_size;          /* sizeof(cpdl_layout_t) */
  int dp_rank, dp_size;
  int cp_rank, cp_size;
  int tp_rank, tp_size;
  int pp_rank, pp_size;        /* 0 or 1: refused otherwise */
} cpdl_layout_t;

/** Collective over the out-of-band world oob describes (every endpoint calls
 *  it). As cpdl_loader_open, with the control plane supplied by the caller
 *  and, when layout is not NULL, the trainer's coordinates for this rank
 *  (checked by allgather: a grid that is not consistent is CPDL_EMESH on
 *  every rank naming the ranks that disagree). world_rank in the mesh is
 *  oob_ep. While a collective is pending the pids of this host's other ranks
 *  are watched: a death is CPDL_EPEER naming the rank. Nodes are told apart
 *  by hostname and boot id (CPDL_RANKS_PER_NODE=k fakes nodes of k
 *  consecutive ranks). \return as cpdl_loader_open; CPDL_EARG for a NULL or
 *  incomplete oob (on this rank only: nothing can be agreed without it). */
CPDL_API int cpdl_loader_open_oob(const cpdl_oob_t *oob, const cpdl_layout_t *layout,
                                  const cpdl_config_t *cfg, cpdl_loader_t **out);

/** As cpdl_loader_open on MPI_COMM_WORLD (for bindings that cannot name it;
 *  needs no <mpi.h> to declare). */
CPDL_API int cpdl_loader_open_world(const cpdl_config_t *cfg, cpdl_loader_t **out);

/** Acquire this rank's view of the next step. Blocks until the leader has
 *  published it or cfg.timeout_ms passes. The previous batch must have been
 *  released. \return 0, CPDL_EEOF (no more steps), CPDL_ETIMEDOUT,
 *  CPDL_EPEER (a rank of the group died; the message says which), CPDL_ESTATE.
 *  The view's pointers belong to the loader and stay valid until
 *  cpdl_batch_release(). A successful call clears cpdl_last_error(), so a
 *  retry after CPDL_ETIMEDOUT leaves no stale message. */
CPDL_API int cpdl_loader_next(cpdl_loader_t *loader, cpdl_batch_t *out);

/** Give the batch's slot back to the leader. After the call the batch's
 *  pointers must not be used. \return 0 or CPDL_ESTATE (not the current batch). */
CPDL_API int cpdl_batch_release(cpdl_loader_t *loader, cpdl_batch_t *batch);

/** This rank's coordinates. */
CPDL_API int cpdl_loader_mesh(const cpdl_loader_t *loader, cpdl_mesh_coords_t *out);

/** Bytes of the group's segment; 0 for a NULL loader (with a message). */
CPDL_API size_t cpdl_loader_segment_bytes(const cpdl_loader_t *loader);

/* Resume state: one versioned, self-describing byte blob for the whole job.
 * Every source has one global order of training rows, the same for every
 * layout (row b of replica r at step k of an epoch is global row
 * (k*dp + r)*batch + b; docs/design.md#the-global-order), so the state is
 * the position in that order — the same on every rank — and the bytes that
 * ANY rank returns restore a job of ANY dp, cp, tp and node count (a
 * trainer's rank 0 may write it and every rank load it). Layout
 * (docs/state.md), 64-bit little-endian words:
 *   [0] magic "CPDLSTAT"   [1] version (CPDL_STATE_VERSION)   [2] total bytes
 *   [3] step of the next batch   [4] dp size of the saving job (information)
 *   [5] w = cursor words (5)   [6] t = bytes of the configuration text
 *   (NUL-padded to 8), then the cursor: epoch, rows of that epoch consumed,
 *   (thd) the document position and pair offset where the next row starts,
 *   steps (= word 3); then the text: the canonical "key=value ..." of the
 *   keys that decide the stream (seq_len, batch, mode, seed, source, collate,
 *   padding_token_id, position_ids, loss_on_eot, drop_last), then an FNV-1a
 *   64 checksum of every byte before it.
 * Not in the state (they may change on resume): the layout (cp, tp, order,
 * the rank count), steps, slots, threads, pin, timeout_ms. Version 2 (one
 * cursor per replica) is refused as the old format. */
#define CPDL_STATE_VERSION 3

/** Bytes cpdl_loader_state_save needs for this job (the same for every
 *  layout). Local. \return 0 or CPDL_EARG (NULL argument). */
CPDL_API int cpdl_loader_state_size(const cpdl_loader_t *loader, size_t *bytes);

/** Collective over the loader's ranks: every rank calls it at the same
 *  point (after the same number of steps; a held step counts as consumed).
 *  Writes the whole job's state into buf[0, size) and its length to *used
 *  (may be NULL; set to the size needed also when size is too small): the
 *  state that makes the next next() of every rank of every replica return
 *  the step after the last one acquired.
 *  \return the same on every rank: 0; CPDL_EOVERFLOW (buf NULL or smaller
 *          than *used on some rank); CPDL_ESTATE (ranks at different steps,
 *          the message names them); CPDL_EPEER; CPDL_EMPI; -ENOMEM.
 *          CPDL_EARG (NULL loader) is local. */
CPDL_API int cpdl_loader_state_save(cpdl_loader_t *loader, void *buf, size_t size, size_t *used);

/** Collective. Set the start state of every rank from a saved state; every
 *  rank must pass the same bytes (any rank's save, from a job of any
 *  layout). Valid only right after open, before the first next(). The
 *  buffer may be freed after the call.
 *  \return the same on every rank: 0; CPDL_ESTATE (after next(); not a
 *          state: wrong magic, the old version, size or checksum, or words
 *          that disagree — the message says which); CPDL_ECONFIG (a state of
 *          another stream — the message names the key and both values, e.g.
 *          "saved with seq_len=4096, this job has seq_len=8192" —, or ranks
 *          given different states); CPDL_EARG (a step beyond steps=, or a
 *          position this data cannot hold); CPDL_EPEER; CPDL_EMPI.
 *          CPDL_EARG (NULL) is local. */
CPDL_API int cpdl_loader_state_restore(cpdl_loader_t *loader, const void *buf, size_t size);

/** Collective. Stops the loader threads, unmaps and frees. If a rank of the
 *  group has died (an earlier CPDL_EPEER) it cleans up locally without
 *  collectives. Closing out of turn (an exception, an early exit) tells the
 *  group first: a rank still in next() then fails at once with CPDL_EPEER
 *  naming this rank as the one that left, and this close returns CPDL_EPEER
 *  once the group knows. \return 0 or the first error seen on any rank.
 *  *loader is freed either way (a retained mapping stays; see below). A NULL
 *  loader is accepted (0).
 *  Fork: a loader belongs to the process that opened it. In a child after
 *  fork(), cpdl_loader_next, cpdl_batch_release, the state calls and
 *  cpdl_loader_mapping_retain return CPDL_ESTATE naming both pids, and
 *  cpdl_loader_close only unmaps the child's copy and returns 0: no
 *  collective, no departure announced, the parent's job is untouched. */
CPDL_API int cpdl_loader_close(cpdl_loader_t *loader);

/** The read-only mapping behind every batch view of a loader, kept alive by
 *  reference for bindings whose zero-copy views have their own lifetime
 *  (Python's numpy arrays and torch tensors). While a reference is held the
 *  views' addresses stay mapped, even after cpdl_loader_close(): read there
 *  after close they hold the segment's last contents, still read-only, and
 *  the group's memory stays allocated until the last reference goes.
 *  \return a reference, or NULL (loader NULL or closed, out of memory:
 *  message set). Drop each with cpdl_mapping_release(); thread-safe. */
typedef struct cpdl_mapping cpdl_mapping_t;
CPDL_API cpdl_mapping_t *cpdl_loader_mapping_retain(cpdl_loader_t *loader);
/** Drop one reference; the last one (the loader holds one until close)
 *  unmaps. NULL does nothing. */
CPDL_API void cpdl_mapping_release(cpdl_mapping_t *mapping);


#ifdef __cplusplus
}
#endif

/* The MPI entry points, where <mpi.h> is there to declare them. */
#ifndef CPDL_NO_MPI
#if defined(__has_include)
#if __has_include(<mpi.h>)
#include "cpdl/loader_mpi.h"
#endif
#else
#include "cpdl/loader_mpi.h"
#endif
#endif

#endif /* CPDL_LOADER_H */
