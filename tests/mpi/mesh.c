/* mesh.c — MPI scenario: cpdl__mesh_build and cpdl__agree.
 *
 *   mpi_mesh <cp> <tp> [order [fake]]   (CPDL_RANKS_PER_NODE=k fakes nodes)
 *
 * Every rank recomputes the whole expected mesh from the definition (the
 * order's mixed-radix formula, nodes = real host or k consecutive ranks,
 * group = replica ∩ node, leader = lowest rank) and compares it with what
 * cpdl__mesh_build returned. A size not divisible by cp*tp must give
 * CPDL_EMESH on every rank.
 */
#include "internal.h"
#include "mpi_test.h"
#include "ctl_test.h"

#include <stdlib.h>
#include <string.h>

static int rank, size;

/* Expected (dp, cp, tp) of rank r, from the definition of the order. */
static void expected_coords(int r, int cp, int tp, const char *order, int c[3]) {
  int extent[3] = {size / (cp * tp), cp, tp}, axes[3];
  for (int i = 0; i < 3; i++)
    axes[i] = order[3 * i] == 'd' ? 0 : order[3 * i] == 'c' ? 1 : 2;
  int rest = r;
  for (int i = 2; i >= 0; i--) {
    c[axes[i]] = rest % extent[axes[i]];
    rest /= extent[axes[i]];
  }
}

static void check_agree(void) {
  /* The last rank fails; everyone gets its code and message. */
  int local = 0;
  if (rank == size - 1)
    local = cpdl__error(CPDL_ESHM, "leader could not create the segment (test)");
  else
    cpdl__error_clear();
  int rc = cpdl__agree(cpdl_test_world(), local);
  CHECK(rc == CPDL_ESHM, "agree returned %d", rc);
  char expect[128];
  snprintf(expect, sizeof expect, "rank %d: leader could not create", size - 1);
  CHECK(strstr(cpdl_last_error(), expect) != NULL, "message '%s'", cpdl_last_error());

  /* The lowest code wins; among equal codes the lowest rank's message. */
  local = 0;
  if (rank == 0 && size > 1)
    local = cpdl__error(CPDL_EARG, "bad argument on rank 0"); /* -4001 > -4009 */
  if (rank >= size / 2)
    local = cpdl__error(CPDL_EPEER, "peer died seen by rank %d", rank);
  rc = cpdl__agree(cpdl_test_world(), local);
  CHECK(rc == CPDL_EPEER, "agree returned %d", rc);
  snprintf(expect, sizeof expect, "rank %d: peer died seen by rank %d", size / 2, size / 2);
  CHECK(strcmp(cpdl_last_error(), expect) == 0, "message '%s', expected '%s'", cpdl_last_error(),
        expect);

  CHECK(cpdl__agree(cpdl_test_world(), 0) == 0, "all-zero agree must return 0");
}

/* Errors agreed on every rank: bad order, bad CPDL_RANKS_PER_NODE. */
static void check_argument_errors(int cp, int tp) {
  cpdl__mesh_t mesh;
  int rc = cpdl__mesh_build(cpdl_test_ctl(), NULL, cp, tp, "dp,cp", &mesh);
  CHECK(rc == CPDL_EMESH, "bad order gave %d", rc);
  CHECK(strstr(cpdl_last_error(), "permutation of dp,cp,tp") != NULL, "'%s'", cpdl_last_error());

  const char *saved = getenv("CPDL_RANKS_PER_NODE");
  char *copy = saved ? strdup(saved) : NULL;
  /* Only the last rank has the bad value: the error must still be everyone's. */
  if (rank == size - 1)
    setenv("CPDL_RANKS_PER_NODE", "0", 1);
  rc = cpdl__mesh_build(cpdl_test_ctl(), NULL, 1, 1, NULL, &mesh);
  CHECK(rc == CPDL_EARG, "CPDL_RANKS_PER_NODE=0 on one rank gave %d", rc);
  CHECK(strstr(cpdl_last_error(), "CPDL_RANKS_PER_NODE") != NULL, "'%s'", cpdl_last_error());
  if (copy)
    setenv("CPDL_RANKS_PER_NODE", copy, 1);
  else
    unsetenv("CPDL_RANKS_PER_NODE");
  free(copy);
}

static void check_mesh(int cp, int tp, const char *order) {
  const char *fake = getenv("CPDL_RANKS_PER_NODE");
  int k = fake ? atoi(fake) : 0;

  cpdl__mesh_t mesh;
  int rc = cpdl__mesh_build(cpdl_test_ctl(), NULL, cp, tp, order, &mesh);
  if (size % (cp * tp) != 0) {
    CHECK(rc == CPDL_EMESH, "size %d, cp %d, tp %d: expected CPDL_EMESH, got %d", size, cp, tp, rc);
    char expect[160];
    snprintf(expect, sizeof expect, "communicator of %d ranks does not split into cp=%d", size, cp);
    CHECK(strstr(cpdl_last_error(), expect) != NULL, "message '%s'", cpdl_last_error());
    return;
  }
  CHECK(rc == 0, "mesh_build: %d %s", rc, cpdl_last_error());
  if (rc != 0)
    return;

  /* Real nodes: all ranks of a test run on one host. */
  int n_nodes = k > 0 ? (size + k - 1) / k : 1;
  int *node_of = malloc(sizeof(int) * (size_t)size);
  int (*coords)[3] = malloc(sizeof(int[3]) * (size_t)size);
  for (int r = 0; r < size; r++) {
    node_of[r] = k > 0 ? r / k : 0;
    expected_coords(r, cp, tp, order, coords[r]);
  }
  const cpdl_mesh_coords_t *me = &mesh.me;
  CHECK(me->world_rank == rank && me->world_size == size, "world %d/%d", me->world_rank,
        me->world_size);
  CHECK(me->dp_size == size / (cp * tp) && me->cp_size == cp && me->tp_size == tp,
        "sizes dp %d cp %d tp %d", me->dp_size, me->cp_size, me->tp_size);
  CHECK(me->dp_rank == coords[rank][0] && me->cp_rank == coords[rank][1] &&
            me->tp_rank == coords[rank][2],
        "coords (%d,%d,%d), expected (%d,%d,%d)", me->dp_rank, me->cp_rank, me->tp_rank,
        coords[rank][0], coords[rank][1], coords[rank][2]);
  if (strcmp(order, "dp,cp,tp") == 0)
    CHECK(rank == (me->dp_rank * cp + me->cp_rank) * tp + me->tp_rank, "default order formula");
  CHECK(mesh.n_nodes == n_nodes, "n_nodes %d, expected %d", mesh.n_nodes, n_nodes);
  CHECK(me->node == node_of[rank], "node %d, expected %d", me->node, node_of[rank]);
  int node_size = 0, node_rank = 0;
  for (int r = 0; r < size; r++)
    if (node_of[r] == node_of[rank]) {
      node_rank += r < rank;
      node_size++;
    }
  CHECK(mesh.node_rank == node_rank && mesh.node_size == node_size, "node rank %d/%d, expected %d/%d",
        mesh.node_rank, mesh.node_size, node_rank, node_size);

  /* Group = same node and same dp rank, ordered by world rank. */
  int members[512], n_members = 0, my_index = -1;
  int local_cp[64], n_local_cp = 0;
  for (int r = 0; r < size; r++) {
    if (node_of[r] != node_of[rank] || coords[r][0] != coords[rank][0])
      continue;
    if (r == rank)
      my_index = n_members;
    members[n_members++] = r;
    int c = coords[r][1], seen = 0;
    for (int i = 0; i < n_local_cp; i++)
      seen |= local_cp[i] == c;
    if (!seen)
      local_cp[n_local_cp++] = c;
  }
  for (int i = 1; i < n_local_cp; i++) /* insertion sort, tiny */
    for (int j = i; j > 0 && local_cp[j - 1] > local_cp[j]; j--) {
      int t = local_cp[j];
      local_cp[j] = local_cp[j - 1];
      local_cp[j - 1] = t;
    }
  CHECK(me->group_size == n_members, "group size %d, expected %d", me->group_size, n_members);
  CHECK(me->group_rank == my_index, "group rank %d, expected %d", me->group_rank, my_index);
  CHECK(mesh.is_leader == (rank == members[0]), "is_leader %d, leader should be %d",
        mesh.is_leader, members[0]);
  for (int i = 0; i < n_members && i < me->group_size; i++)
    CHECK(mesh.group_world_ranks[i] == members[i], "group member %d is %d, expected %d", i,
          mesh.group_world_ranks[i], members[i]);
  CHECK(mesh.n_local_cp == n_local_cp, "n_local_cp %d, expected %d", mesh.n_local_cp, n_local_cp);
  for (int i = 0; i < n_local_cp && i < mesh.n_local_cp; i++)
    CHECK(mesh.local_cp[i] == local_cp[i], "local_cp[%d] = %d, expected %d", i, mesh.local_cp[i],
          local_cp[i]);
  CHECK(mesh.local_cp[mesh.local_cp_index] == me->cp_rank, "local_cp_index %d", mesh.local_cp_index);

  /* The teams match the numbers. */
  CHECK(mesh.group.size == me->group_size && mesh.group.rank == me->group_rank,
        "group team %d/%d", mesh.group.rank, mesh.group.size);
  CHECK(mesh.node.size == mesh.node_size, "node team size %d", mesh.node.size);
  for (int i = 0; i < mesh.group.size; i++)
    CHECK(mesh.group.ranks[i] == mesh.group_world_ranks[i], "group team member %d", i);

  /* Every rank of a group names the same leader (a team allgather). */
  int leader = mesh.group_world_ranks[0], *leaders = malloc(sizeof(int) * (size_t)me->group_size);
  CHECK(cpdl__coll_allgather(&mesh.group, &leader, sizeof leader, leaders, "test") == 0,
        "group allgather: %s", cpdl_last_error());
  for (int i = 0; i < me->group_size; i++)
    CHECK(leaders[i] == leader, "group rank %d names leader %d, I name %d", i, leaders[i], leader);
  free(leaders);

  /* Global group index: same index ⇔ same leader; indices are 0..G-1 in
   * the order of the leaders' ranks; a replica has one group per node it
   * spans. */
  int mine[3] = {me->group, leader, me->dp_rank}, *all = malloc(sizeof(int[3]) * (size_t)size);
  MPI_Allgather(mine, 3, MPI_INT, all, 3, MPI_INT, MPI_COMM_WORLD);
  int n_groups = 0;
  for (int r = 0; r < size; r++) {
    CHECK((all[3 * r] == me->group) == (all[3 * r + 1] == leader),
          "rank %d: group %d leader %d vs mine group %d leader %d", r, all[3 * r], all[3 * r + 1],
          me->group, leader);
    if (all[3 * r + 1] == r) {
      n_groups++;
      CHECK(all[3 * r] == n_groups - 1, "leader %d has group index %d, expected %d", r, all[3 * r],
            n_groups - 1);
    }
  }
  int my_replica_groups = 0, my_replica_nodes = 0, seen_node[512] = {0};
  for (int r = 0; r < size; r++) {
    if (all[3 * r + 2] != me->dp_rank)
      continue;
    if (all[3 * r + 1] == r)
      my_replica_groups++;
    if (node_of[r] < 512 && !seen_node[node_of[r]]) {
      seen_node[node_of[r]] = 1;
      my_replica_nodes++;
    }
  }
  CHECK(my_replica_groups == my_replica_nodes, "replica %d: %d groups on %d nodes", me->dp_rank,
        my_replica_groups, my_replica_nodes);
  free(all);
  free(node_of);
  free(coords);
  cpdl__mesh_free(&mesh);
  CHECK(mesh.node.ranks == NULL && mesh.group.ranks == NULL && mesh.host.ranks == NULL,
        "mesh_free left teams");
}

int main(int argc, char **argv) {
  cpdl_test_init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int cp = argc > 1 ? atoi(argv[1]) : 1;
  int tp = argc > 2 ? atoi(argv[2]) : 1;
  const char *order = argc > 3 ? argv[3] : "dp,cp,tp";
  /* "fake": the scenario must run with faked nodes (guards against an
   * environment that did not reach the ranks, which would pass vacuously). */
  if (argc > 4 && strcmp(argv[4], "fake") == 0)
    CHECK(getenv("CPDL_RANKS_PER_NODE") != NULL, "CPDL_RANKS_PER_NODE did not reach rank %d", rank);

  check_mesh(cp, tp, order);
  /* Build twice: communicators are freed and rebuilt cleanly. */
  check_mesh(cp, tp, order);
  check_argument_errors(cp, tp);
  check_agree();

  int code = cpdl_test_finish();
  MPI_Finalize();
  return code;
}
