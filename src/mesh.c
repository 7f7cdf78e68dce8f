/* mesh.c — the (dp, cp, tp) arrangement of the control plane's world, its
 * node, group (replica ∩ node) and host teams (the agreements on an error
 * and on the configuration are agree.c's).
 *
 * Invariants: every collective here returns the same code on every rank
 * (local failures go through cpdl__agree before anyone acts on them), so no
 * rank proceeds to a collective that another rank skipped. The whole mesh
 * comes from one allgather of each rank's (host identity, coordinates):
 * every rank computes the same teams and the same grid verdict from the same
 * table. The group's leader is its lowest world rank. Nodes are told apart
 * by hostname + boot id, not by MPI, so any control plane can build them.
 */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* ---- building --------------------------------------------------------------- */

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

void cpdl__mesh_free(cpdl__mesh_t *mesh) {
  if (!mesh)
    return;
  cpdl__team_free(&mesh->node);
  cpdl__team_free(&mesh->group);
  cpdl__team_free(&mesh->host);
  free(mesh->world_at);
  mesh->world_at = NULL;
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

int cpdl__mesh_check_grid(const cpdl_layout_t *g, int n, int cp, int tp) {
  const cpdl_layout_t *g0 = &g[0];
  for (int r = 0; r < n; r++) {
    const cpdl_layout_t *l = &g[r];
    if (l->pp_size > 1)
      return cpdl__error(CPDL_EMESH, "layout: rank %d has pp_size=%d; pipeline parallelism is not "
                         "supported (open the loader on the stages that read data, with a world "
                         "of their own, and pp_size 1)", r, l->pp_size);
    if (l->dp_size != g0->dp_size || l->cp_size != g0->cp_size || l->tp_size != g0->tp_size)
      return cpdl__error(CPDL_EMESH, "layout: rank %d says dp_size=%d cp_size=%d tp_size=%d but "
                         "rank 0 says %d, %d, %d; every rank must give the same sizes", r,
                         l->dp_size, l->cp_size, l->tp_size, g0->dp_size, g0->cp_size,
                         g0->tp_size);
    if (l->dp_rank < 0 || l->dp_rank >= l->dp_size || l->cp_rank < 0 ||
        l->cp_rank >= l->cp_size || l->tp_rank < 0 || l->tp_rank >= l->tp_size)
      return cpdl__error(CPDL_EMESH, "layout: rank %d has (dp=%d, cp=%d, tp=%d) outside the grid "
                         "of sizes (%d, %d, %d)", r, l->dp_rank, l->cp_rank, l->tp_rank,
                         l->dp_size, l->cp_size, l->tp_size);
  }
  long long cells = (long long)g0->dp_size * g0->cp_size * g0->tp_size;
  if (g0->dp_size < 1 || g0->cp_size < 1 || g0->tp_size < 1 || cells != n)
    return cpdl__error(CPDL_EMESH, "layout: dp_size=%d × cp_size=%d × tp_size=%d = %lld cells "
                       "but the world has %d ranks; the sizes must multiply to the world size",
                       g0->dp_size, g0->cp_size, g0->tp_size, cells, n);
  if (g0->cp_size != cp || g0->tp_size != tp)
    return cpdl__error(CPDL_EMESH, "layout: cp_size=%d tp_size=%d but the configuration says "
                       "cp=%d tp=%d; set the configuration's cp and tp to the layout's",
                       g0->cp_size, g0->tp_size, cp, tp);
  /* Every cell exactly once: with n cells and n ranks, no duplicate. */
  int *owner = malloc((size_t)n * sizeof *owner);
  if (!owner)
    return cpdl__error(-ENOMEM, "layout: out of memory for %d cells", n);
  for (int i = 0; i < n; i++)
    owner[i] = -1;
  for (int r = 0; r < n; r++) {
    const cpdl_layout_t *l = &g[r];
    int cell = (l->dp_rank * l->cp_size + l->cp_rank) * l->tp_size + l->tp_rank;
    if (owner[cell] >= 0) {
      int other = owner[cell];
      free(owner);
      return cpdl__error(CPDL_EMESH, "layout: ranks %d and %d both have (dp=%d, cp=%d, tp=%d); "
                         "each coordinate triple must belong to exactly one rank", other, r,
                         l->dp_rank, l->cp_rank, l->tp_rank);
    }
    owner[cell] = r;
  }
  free(owner);
  return 0;
}

/* This host's identity: hostname and boot id (two containers of one host
 * share the boot id, and /dev/shm only if they share the hostname too). */
#define HOST_ID_MAX 112
static void host_identity(char *out, size_t size) {
  char host[64] = "", boot[48] = "";
  gethostname(host, sizeof host - 1);
  FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
  if (f) {
    if (!fgets(boot, sizeof boot, f))
      boot[0] = '\0';
    fclose(f);
  }
  boot[strcspn(boot, "\n")] = '\0';
  memset(out, 0, size);
  snprintf(out, size, "%s/%s", host, boot);
}

/* What each rank contributes to the one mesh allgather. */
typedef struct rank_record {
  char host[HOST_ID_MAX];
  cpdl_layout_t layout;
} rank_record_t;

/* The teams, coordinates and indices from everyone's record (pure, the same
 * on every rank). */
static int build_from(cpdl__mesh_t *out, const cpdl__ctl_t *ctl, const rank_record_t *rec,
                      int fake_k) {
  const int size = ctl->size, rank = ctl->rank;
  int *host_of = malloc((size_t)size * sizeof *host_of);
  int *node_of = malloc((size_t)size * sizeof *node_of);
  int *group_of = malloc((size_t)size * sizeof *group_of);
  int rc = 0;
  if (!host_of || !node_of || !group_of) {
    rc = cpdl__error(-ENOMEM, "mesh: out of memory for %d ranks", size);
    goto done;
  }
  /* A host, node or group is named by its lowest rank. */
  for (int r = 0; r < size; r++) {
    host_of[r] = r;
    for (int j = 0; j < r; j++)
      if (strncmp(rec[j].host, rec[r].host, HOST_ID_MAX) == 0) {
        host_of[r] = j;
        break;
      }
  }
  for (int r = 0; r < size; r++)
    node_of[r] = fake_k > 0 ? r / fake_k * fake_k : host_of[r];
  for (int r = 0; r < size; r++) {
    group_of[r] = r;
    for (int j = 0; j < r; j++)
      if (node_of[j] == node_of[r] && rec[j].layout.dp_rank == rec[r].layout.dp_rank) {
        group_of[r] = j;
        break;
      }
  }
  if ((rc = cpdl__team_select(ctl, node_of, &out->node)) < 0 ||
      (rc = cpdl__team_select(ctl, group_of, &out->group)) < 0 ||
      (rc = cpdl__team_select(ctl, host_of, &out->host)) < 0)
    goto done;
  cpdl_mesh_coords_t *me = &out->me;
  out->node_rank = out->node.rank;
  out->node_size = out->node.size;
  me->group_rank = out->group.rank;
  me->group_size = out->group.size;
  out->is_leader = me->group_rank == 0;
  me->node = index_of_first(node_of, size, node_of[rank], &out->n_nodes);
  me->group = index_of_first(group_of, size, group_of[rank], NULL);

  int cap = (int)(sizeof out->group_world_ranks / sizeof out->group_world_ranks[0]);
  if (me->group_size > cap) {
    rc = cpdl__error(CPDL_EMESH, "mesh: a group (replica of cp=%d × tp=%d on one node) has %d "
                     "ranks, more than the supported %d; use fewer ranks per node per replica",
                     me->cp_size, me->tp_size, me->group_size, cap);
    goto done;
  }
  /* Who is in my group: world ranks, and the distinct CP ranks ascending. */
  out->n_local_cp = 0;
  int cp_cap = (int)(sizeof out->local_cp / sizeof out->local_cp[0]);
  for (int i = 0; i < me->group_size; i++) {
    int world = out->group.ranks[i], cp_rank = rec[world].layout.cp_rank, at = 0;
    out->group_world_ranks[i] = world;
    while (at < out->n_local_cp && out->local_cp[at] < cp_rank)
      at++;
    if (at < out->n_local_cp && out->local_cp[at] == cp_rank)
      continue;
    if (out->n_local_cp == cp_cap) {
      rc = cpdl__error(CPDL_EMESH, "mesh: more than %d CP ranks of one replica on one node; "
                       "use fewer ranks per node or a larger tp", cp_cap);
      goto done;
    }
    memmove(&out->local_cp[at + 1], &out->local_cp[at],
            (size_t)(out->n_local_cp - at) * sizeof out->local_cp[0]);
    out->local_cp[at] = cp_rank;
    out->n_local_cp++;
  }
  for (int i = 0; i < out->n_local_cp; i++)
    if (out->local_cp[i] == me->cp_rank)
      out->local_cp_index = i;
  /* Every coordinate's world rank (the grid is whole: checked, or derived). */
  if (!(out->world_at = malloc((size_t)size * sizeof *out->world_at))) {
    rc = cpdl__error(-ENOMEM, "mesh: out of memory for %d ranks", size);
    goto done;
  }
  for (int r = 0; r < size; r++) {
    const cpdl_layout_t *l = &rec[r].layout;
    int64_t at = ((int64_t)l->tp_rank * l->dp_size + l->dp_rank) * l->cp_size + l->cp_rank;
    if (at >= 0 && at < size)
      out->world_at[at] = r;
  }
done:
  free(host_of);
  free(node_of);
  free(group_of);
  return rc;
}

int cpdl__mesh_build(const cpdl__ctl_t *ctl, const cpdl_layout_t *layout, int cp, int tp,
                     const char *order, cpdl__mesh_t *out) {
  if (!out || !ctl)
    return cpdl__error(CPDL_EARG, "cpdl__mesh_build: ctl or out is NULL");
  memset(out, 0, sizeof *out);
  cpdl__team_world(ctl, &out->world);
  cpdl_mesh_coords_t *me = &out->me;
  const int rank = ctl->rank, size = ctl->size;
  me->world_rank = rank;
  me->world_size = size;

  /* 1. This rank's coordinates: the caller's layout, or from the order. */
  int fake_k = 0;
  rank_record_t mine;
  memset(&mine, 0, sizeof mine);
  host_identity(mine.host, sizeof mine.host);
  int rc = 0;
  if (layout) {
    if (layout->struct_size < sizeof(cpdl_layout_t))
      rc = cpdl__error(CPDL_EARG, "cpdl_layout_t.struct_size is %zu, expected %zu (set it to "
                       "sizeof(cpdl_layout_t))", layout->struct_size, sizeof(cpdl_layout_t));
    else
      mine.layout = *layout;
  } else {
    mine.layout = (cpdl_layout_t){.struct_size = sizeof(cpdl_layout_t), .cp_size = cp,
                                  .tp_size = tp, .pp_size = 1};
    rc = cpdl__mesh_coords(rank, size, cp, tp, order, &mine.layout.dp_rank,
                           &mine.layout.cp_rank, &mine.layout.tp_rank);
    mine.layout.dp_size = rc == 0 ? size / (cp * tp) : 0;
  }
  if (rc == 0)
    rc = fake_node_size(&fake_k);
  if ((rc = cpdl__agree(&out->world, rc)) < 0)
    goto fail;

  /* 2. Everyone's record, one allgather; the grid checked from it. */
  rank_record_t *all = malloc((size_t)size * sizeof *all);
  cpdl_layout_t *grid = malloc((size_t)size * sizeof *grid);
  rc = cpdl__coll_allgather(&out->world, &mine, sizeof mine, all, "building the mesh");
  if (rc == CPDL_EPEER) {
    free(grid);
    goto fail;
  }
  if (rc == 0 && !grid)
    rc = cpdl__error(-ENOMEM, "mesh: out of memory for %d ranks", size);
  if (rc == 0 && layout) {
    for (int r = 0; r < size; r++)
      grid[r] = all[r].layout;
    rc = cpdl__mesh_check_grid(grid, size, cp, tp);
  }
  free(grid);
  if (rc == 0) {
    me->dp_rank = mine.layout.dp_rank;
    me->cp_rank = mine.layout.cp_rank;
    me->tp_rank = mine.layout.tp_rank;
    me->dp_size = mine.layout.dp_size;
    me->cp_size = mine.layout.cp_size;
    me->tp_size = mine.layout.tp_size;
    rc = build_from(out, ctl, all, fake_k);
  }
  free(all);
  if ((rc = cpdl__agree(&out->world, rc)) < 0)
    goto fail;
  return 0;

fail:
  cpdl__mesh_free(out);
  return rc;
}
