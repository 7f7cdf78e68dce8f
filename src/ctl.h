/* ctl.h — the control plane's internals: the collectives of
 * open/save/restore/close over the caller's out-of-band allgather (coll.c),
 * the pid watch, the remote liveness of a job across hosts (live.c), the MPI
 * allgather (oob_mpi.c), the mesh and its teams
 * (mesh.c) and the agreements (agree.c). Never installed; the data path
 * (ring, producer) never uses it.
 */
#ifndef CPDL_CTL_H
#define CPDL_CTL_H

#include "base.h"
#include "cpdl.h"
#include "cpdl/loader_mpi.h" /* oob_mpi.c: MPI_Comm */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct cpdl__team cpdl__team_t;

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
  /* The world rank at every coordinate: world_at[tp_rank * dp*cp + dp_rank * cp
   * + cp_rank] ("schedule rank" s = dp_rank * cp + cp_rank, docs/schedule.md);
   * dp_size * cp_size * tp_size entries, the same on every rank. */
  int *world_at;
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
/* agree.c. Reduce a local result over a team: every rank returns the lowest (most
 * negative) code; the message of the first rank that has it is carried to
 * all ranks, prefixed "rank <world rank>: ". Never hangs on a live world.
 * A caller holding a CPDL_EPEER from a watched collective must not agree it:
 * it returns it as is (another collective would only wait on the dead). */
int cpdl__agree(const cpdl__team_t *team, int local_rc);

/* agree.c. Collective over a team: every rank gets 0, or CPDL_ECONFIG with a
 * message naming the first key (in canonical order) whose value differs
 * between ranks, the two values and a rank holding each. */
int cpdl__config_agree(const cpdl__team_t *team, const cpdl_config_t *cfg);

#endif /* CPDL_CTL_H */
