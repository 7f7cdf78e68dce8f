/* mesh.c — the (dp, cp, tp) arrangement of a communicator, its node and
 * group (replica ∩ node) communicators, and error agreement over MPI.
 *
 * Invariants: every collective here returns the same code on every rank
 * (local failures go through cpdl__agree before anyone acts on them), so no
 * rank proceeds to a collective that another rank skipped. The group's
 * leader is its lowest rank in the user's communicator (split key = rank).
 * All MPI calls run on our own dup with MPI_ERRORS_RETURN.
 * cpdl__mesh_build's own collectives are blocking: no pid is known before
 * it returns, so a death inside it is MPI's (mpirun's) to handle. After it,
 * cpdl__agree runs through coll.c and is watched when a watch is installed.
 */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { AXIS_DP, AXIS_CP, AXIS_TP, N_AXES };
static const char *const axis_names[N_AXES] = {"dp", "cp", "tp"};

/* order "a,b,c" (slowest first) → axes[0..2]; NULL means "dp,cp,tp". */
static int parse_order(const char *order, int axes[N_AXES]) {
  if (!order)
    order = "dp,cp,tp";
  const char *p = order;
  int seen = 0;
  for (int i = 0; i < N_AXES; i++) {
    int axis = -1;
    for (int a = 0; a < N_AXES; a++)
      if (strncmp(p, axis_names[a], 2) == 0)
        axis = a;
    if (axis < 0 || (seen & (1 << axis)))
      goto bad;
    seen |= 1 << axis;
    axes[i] = axis;
    p += 2;
    if (i < N_AXES - 1 && *p++ != ',')
      goto bad;
  }
  if (*p == '\0')
    return 0;
bad:
  return cpdl__error(CPDL_EMESH, "mesh order '%s' is not a permutation of dp,cp,tp (slowest "
                     "first, e.g. dp,cp,tp)", order);
}

int cpdl__mesh_coords(int rank, int size, int cp, int tp, const char *order, int *dp_rank,
                      int *cp_rank, int *tp_rank) {
  int axes[N_AXES];
  int rc = parse_order(order, axes);
  if (rc < 0)
    return rc;
  if (cp < 1 || tp < 1)
    return cpdl__error(CPDL_EMESH, "mesh: cp=%d and tp=%d must both be at least 1", cp, tp);
  int replica;
  if (__builtin_mul_overflow(cp, tp, &replica) || size < 1 || size % replica != 0)
    return cpdl__error(CPDL_EMESH, "communicator of %d ranks does not split into cp=%d × tp=%d "
                       "replicas; use a size that is a multiple of %lld", size, cp, tp,
                       (long long)cp * tp);
  if (rank < 0 || rank >= size)
    return cpdl__error(CPDL_EMESH, "mesh: rank %d is outside a communicator of %d ranks", rank,
                       size);
  int extent[N_AXES] = {[AXIS_DP] = size / replica, [AXIS_CP] = cp, [AXIS_TP] = tp};
  int coord[N_AXES];
  /* rank = (c0 * e1 + c1) * e2 + c2 with axes[0] slowest. */
  int rest = rank;
  for (int i = N_AXES - 1; i >= 0; i--) {
    coord[axes[i]] = rest % extent[axes[i]];
    rest /= extent[axes[i]];
  }
  if (dp_rank) *dp_rank = coord[AXIS_DP];
  if (cp_rank) *cp_rank = coord[AXIS_CP];
  if (tp_rank) *tp_rank = coord[AXIS_TP];
  return 0;
}

/* ---- agreement ------------------------------------------------------------- */

#define AGREE_MSG_MAX 1024

int cpdl__agree(MPI_Comm comm, int local_rc) {
  int rank = 0;
  if (MPI_Comm_rank(comm, &rank) != MPI_SUCCESS)
    return cpdl__error(CPDL_EMPI, "error agreement: MPI_Comm_rank failed");
  /* MINLOC: the lowest code, and among ranks with it the lowest rank. */
  struct { int code; int rank; } mine = {local_rc, rank}, worst;
  int rc = cpdl__coll_allreduce(&mine, &worst, 1, MPI_2INT, MPI_MINLOC, comm, "error agreement");
  if (rc == CPDL_EPEER)
    return rc;
  if (rc)
    return cpdl__error_prefix(rc, "on rank %d (local result %d)", rank, local_rc);
  if (worst.code == 0)
    return 0;
  char msg[AGREE_MSG_MAX];
  snprintf(msg, sizeof msg, "%s", rank == worst.rank ? cpdl_last_error() : "");
  rc = cpdl__coll_bcast(msg, (int)sizeof msg, MPI_CHAR, worst.rank, comm, "error agreement");
  if (rc == CPDL_EPEER)
    return rc;
  if (rc)
    return cpdl__error_prefix(rc, "broadcasting rank %d's message (its code: %s)", worst.rank,
                              cpdl_err_name(worst.code));
  msg[sizeof msg - 1] = '\0';
  if (msg[0])
    return cpdl__error(worst.code, "rank %d: %s", worst.rank, msg);
  return cpdl__error(worst.code, "rank %d: %s", worst.rank, cpdl_strerror(worst.code));
}

/* ---- building --------------------------------------------------------------- */

static int mpi_failed(const char *what, int mpi_rc) {
  char text[MPI_MAX_ERROR_STRING] = "";
  int len = 0;
  MPI_Error_string(mpi_rc, text, &len);
  return cpdl__error(CPDL_EMPI, "mesh: %s failed: %s", what, text);
}

/* CPDL_RANKS_PER_NODE: 0 if unset, k >= 1, or CPDL_EARG. */
static int fake_node_size(int *out) {
  *out = 0;
  const char *text = getenv("CPDL_RANKS_PER_NODE");
  if (!text || !*text)
    return 0;
  char *end = NULL;
  errno = 0;
  long k = strtol(text, &end, 10);
  if (end == text || *end || errno == ERANGE || k < 1 || k > INT_MAX)
    return cpdl__error(CPDL_EARG, "CPDL_RANKS_PER_NODE='%s' is not valid (expected an integer "
                       ">= 1: ranks per faked node)", text);
  *out = (int)k;
  return 0;
}

static void free_comm(MPI_Comm *comm) {
  if (*comm != MPI_COMM_NULL)
    MPI_Comm_free(comm);
  *comm = MPI_COMM_NULL;
}

void cpdl__mesh_free(cpdl__mesh_t *mesh) {
  if (!mesh)
    return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) /* nothing can be freed after MPI_Finalize */
    return;
  free_comm(&mesh->group_comm);
  if (mesh->host_comm != mesh->node_comm)
    free_comm(&mesh->host_comm);
  mesh->host_comm = MPI_COMM_NULL;
  free_comm(&mesh->node_comm);
  free_comm(&mesh->comm);
}

/* Count the distinct "first ranks" (value[j] == j) below `mine`: the index of
 * the set whose lowest rank is `mine` among all such sets. */
static int index_of_first(const int *first_of, int size, int mine, int *n_sets) {
  int index = 0, count = 0;
  for (int j = 0; j < size; j++) {
    if (first_of[j] != j)
      continue;
    count++;
    if (j < mine)
      index++;
  }
  if (n_sets)
    *n_sets = count;
  return index;
}

int cpdl__mesh_build(MPI_Comm comm, int cp, int tp, const char *order, cpdl__mesh_t *out) {
  if (!out)
    return cpdl__error(CPDL_EARG, "cpdl__mesh_build: out is NULL");
  memset(out, 0, sizeof *out);
  out->comm = out->node_comm = out->group_comm = out->host_comm = MPI_COMM_NULL;
  int mrc, rc;
  if ((mrc = MPI_Comm_dup(comm, &out->comm)) != MPI_SUCCESS)
    return mpi_failed("MPI_Comm_dup", mrc);
  /* Failures become return codes that we agree on, not aborts. */
  MPI_Comm_set_errhandler(out->comm, MPI_ERRORS_RETURN);

  cpdl_mesh_coords_t *me = &out->me;
  MPI_Comm_rank(out->comm, &me->world_rank);
  MPI_Comm_size(out->comm, &me->world_size);
  const int rank = me->world_rank, size = me->world_size;

  /* 1. Shape: local checks, agreed so that all ranks fail together. */
  int fake_k = 0;
  rc = cpdl__mesh_coords(rank, size, cp, tp, order, &me->dp_rank, &me->cp_rank, &me->tp_rank);
  if (rc == 0)
    rc = fake_node_size(&fake_k);
  if ((rc = cpdl__agree(out->comm, rc)) < 0)
    goto fail;
  me->cp_size = cp;
  me->tp_size = tp;
  me->dp_size = size / (cp * tp);

  /* 2. Node: real shared-memory domain, or k consecutive ranks when faked. */
  if (fake_k > 0)
    mrc = MPI_Comm_split(out->comm, rank / fake_k, rank, &out->node_comm);
  else
    mrc = MPI_Comm_split_type(out->comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL,
                              &out->node_comm);
  rc = mrc == MPI_SUCCESS ? 0 : mpi_failed("node communicator split", mrc);
  if ((rc = cpdl__agree(out->comm, rc)) < 0)
    goto fail;
  MPI_Comm_set_errhandler(out->node_comm, MPI_ERRORS_RETURN);
  MPI_Comm_rank(out->node_comm, &out->node_rank);
  MPI_Comm_size(out->node_comm, &out->node_size);
  /* The real host too when nodes are faked: one more split, only then. The
   * loader watches the pids of the host's ranks (coll.c), and every rank of
   * the host is a process it can see. */
  if (fake_k > 0) {
    mrc = MPI_Comm_split_type(out->comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL,
                              &out->host_comm);
    rc = mrc == MPI_SUCCESS ? 0 : mpi_failed("host communicator split", mrc);
    if ((rc = cpdl__agree(out->comm, rc)) < 0)
      goto fail;
    MPI_Comm_set_errhandler(out->host_comm, MPI_ERRORS_RETURN);
  } else {
    out->host_comm = out->node_comm;
  }

  /* 3. Group = replica ∩ node; key = rank makes group rank 0 the lowest. */
  mrc = MPI_Comm_split(out->node_comm, me->dp_rank, rank, &out->group_comm);
  rc = mrc == MPI_SUCCESS ? 0 : mpi_failed("group communicator split", mrc);
  if (rc == 0) {
    MPI_Comm_set_errhandler(out->group_comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(out->group_comm, &me->group_rank);
    MPI_Comm_size(out->group_comm, &me->group_size);
    int cap = (int)(sizeof out->group_world_ranks / sizeof out->group_world_ranks[0]);
    if (me->group_size > cap)
      rc = cpdl__error(CPDL_EMESH, "mesh: a group (replica of cp=%d × tp=%d on one node) has %d "
                       "ranks, more than the supported %d; use fewer ranks per node per replica",
                       cp, tp, me->group_size, cap);
  }
  if ((rc = cpdl__agree(out->comm, rc)) < 0)
    goto fail;
  out->is_leader = me->group_rank == 0;

  /* 4. Who is in my group: world ranks and CP ranks. */
  int *members = calloc((size_t)me->group_size * 2, sizeof *members);
  rc = members ? 0 : cpdl__error(-ENOMEM, "mesh: out of memory for %d group members",
                                 me->group_size);
  if ((rc = cpdl__agree(out->comm, rc)) < 0) {
    free(members);
    goto fail;
  }
  int mine[2] = {rank, me->cp_rank};
  mrc = MPI_Allgather(mine, 2, MPI_INT, members, 2, MPI_INT, out->group_comm);
  rc = mrc == MPI_SUCCESS ? 0 : mpi_failed("group MPI_Allgather", mrc);
  if (rc == 0) {
    out->n_local_cp = 0;
    for (int i = 0; i < me->group_size; i++)
      out->group_world_ranks[i] = members[2 * i];
    /* Distinct CP ranks, ascending (insertion into a small sorted list). */
    int cap = (int)(sizeof out->local_cp / sizeof out->local_cp[0]);
    for (int i = 0; i < me->group_size && rc == 0; i++) {
      int cp_rank = members[2 * i + 1], at = 0;
      while (at < out->n_local_cp && out->local_cp[at] < cp_rank)
        at++;
      if (at < out->n_local_cp && out->local_cp[at] == cp_rank)
        continue;
      if (out->n_local_cp == cap) {
        rc = cpdl__error(CPDL_EMESH, "mesh: more than %d CP ranks of one replica on one node; "
                         "use fewer ranks per node or a larger tp", cap);
        break;
      }
      memmove(&out->local_cp[at + 1], &out->local_cp[at],
              (size_t)(out->n_local_cp - at) * sizeof out->local_cp[0]);
      out->local_cp[at] = cp_rank;
      out->n_local_cp++;
    }
    for (int i = 0; i < out->n_local_cp; i++)
      if (out->local_cp[i] == me->cp_rank)
        out->local_cp_index = i;
  }
  free(members);
  if ((rc = cpdl__agree(out->comm, rc)) < 0)
    goto fail;

  /* 5. Global indices: a node is named by its lowest rank, a group by its
   * leader's; the index is the order among those lowest ranks. */
  int node_first = rank, group_first = out->group_world_ranks[0];
  mrc = MPI_Allreduce(&rank, &node_first, 1, MPI_INT, MPI_MIN, out->node_comm);
  rc = mrc == MPI_SUCCESS ? 0 : mpi_failed("node MPI_Allreduce", mrc);
  if ((rc = cpdl__agree(out->comm, rc)) < 0)
    goto fail;
  int *firsts = malloc((size_t)size * 2 * sizeof *firsts);
  int *node_of = malloc((size_t)size * sizeof *node_of);
  int *group_of = malloc((size_t)size * sizeof *group_of);
  rc = firsts && node_of && group_of ? 0 : cpdl__error(-ENOMEM, "mesh: out of memory for %d ranks",
                                                       size);
  if ((rc = cpdl__agree(out->comm, rc)) < 0)
    goto fail_free;
  int pair[2] = {node_first, group_first};
  mrc = MPI_Allgather(pair, 2, MPI_INT, firsts, 2, MPI_INT, out->comm);
  rc = mrc == MPI_SUCCESS ? 0 : mpi_failed("MPI_Allgather of node and group leaders", mrc);
  if ((rc = cpdl__agree(out->comm, rc)) < 0)
    goto fail_free;
  for (int j = 0; j < size; j++) {
    node_of[j] = firsts[2 * j];
    group_of[j] = firsts[2 * j + 1];
  }
  me->node = index_of_first(node_of, size, node_first, &out->n_nodes);
  me->group = index_of_first(group_of, size, group_first, NULL);
  free(firsts);
  free(node_of);
  free(group_of);
  return 0;

fail_free:
  free(firsts);
  free(node_of);
  free(group_of);
fail:
  cpdl__mesh_free(out);
  return rc;
}
