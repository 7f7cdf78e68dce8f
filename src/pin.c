/* pin.c — placement at run time: gathers the plan's inputs over the node's
 * communicator (bindings, groups, CP ranks, GPU requests), loads the topology,
 * keeps the plan (pin_plan.c), applies it (hwloc_set_thread_cpubind,
 * hwloc_set_area_membind) and reports it. Only an invalid explicit
 * cores:<list> fails; otherwise hwloc trouble degrades to "none" with one
 * warning. After setup the topology is read-only: threads apply concurrently.
 * Setup's collectives go through coll.c, so inside the loader's open a dead
 * rank of the host ends them with CPDL_EPEER instead of a hang.
 */
#include "internal.h"

#include <errno.h>
#include <hwloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GPU_REQ_MAX 64

struct cpdl__pin {
  hwloc_topology_t topo;   /* NULL when degraded */
  cpdl__pin_plan_t *plan;  /* NULL when degraded */
  cpdl__pin_policy_t policy;
  int n_threads;
  int world_rank;
  int member;              /* my index in the plan's members */
  bool is_leader;
  char *binding;           /* my main thread's binding at setup ("" unknown) */
};

static atomic_flag warned = ATOMIC_FLAG_INIT;

/* A placement choice worth knowing (a fallback), once per process. */
static void note_once(const char *note) {
  static atomic_flag noted = ATOMIC_FLAG_INIT;
  if (!atomic_flag_test_and_set(&noted))
    fprintf(stderr, "cpdl: pin: %s\n", note);
}

static void warn_once(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void warn_once(const char *fmt, ...) {
  if (atomic_flag_test_and_set(&warned))
    return;
  va_list ap;
  va_start(ap, fmt);
  fputs("cpdl: warning: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputs(" (placement continues without it; further placement warnings are not shown)\n", stderr);
  va_end(ap);
}

/* This machine's topology with PCI devices (GPU discovery), or NULL. hwloc's
 * own HWLOC_XMLFILE / HWLOC_SYNTHETIC variables are honoured by the load. */
static hwloc_topology_t load_topology(void) {
  hwloc_topology_t topo;
  if (hwloc_topology_init(&topo) < 0) {
    warn_once("hwloc_topology_init failed: %s", strerror(errno));
    return NULL;
  }
  hwloc_topology_set_io_types_filter(topo, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
  if (hwloc_topology_load(topo) < 0) {
    warn_once("hwloc could not load this machine's topology: %s", strerror(errno));
    hwloc_topology_destroy(topo);
    return NULL;
  }
  return topo;
}

/* The GPU this rank feeds. LOCAL_RANK (torchrun) or Open MPI's local rank
 * name the real node-local rank; faked nodes keep their own numbering. */
static void my_gpu_request(const cpdl__mesh_t *mesh, char *out, size_t size) {
  int local_rank = mesh->node_rank;
  const char *env = getenv("LOCAL_RANK");
  if (!env)
    env = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
  if (env && *env) {
    char *end;
    long v = strtol(env, &end, 10);
    if (!*end && v >= 0 && v < 1 << 20)
      local_rank = (int)v;
  }
  cpdl__pin_gpu_request(getenv("CPDL_GPU"), getenv("CUDA_VISIBLE_DEVICES"), local_rank, out, size);
}

/* The calling thread's CPU binding as a list string ("0-3,8"), through
 * hwloc when it loaded, else straight from the kernel (pin=none, degraded). */
static char *my_binding(hwloc_topology_t topo) {
  char *text = NULL;
  hwloc_bitmap_t set = hwloc_bitmap_alloc();
  if (!set)
    return NULL;
  if (topo) {
    if (hwloc_get_cpubind(topo, set, HWLOC_CPUBIND_THREAD) < 0)
      hwloc_bitmap_zero(set);
  } else {
    cpu_set_t mask;
    CPU_ZERO(&mask);
    if (sched_getaffinity(0, sizeof mask, &mask) == 0)
      for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
        if (CPU_ISSET(cpu, &mask))
          hwloc_bitmap_set(set, (unsigned)cpu);
  }
  if (!hwloc_bitmap_iszero(set))
    hwloc_bitmap_list_asprintf(&text, set);
  hwloc_bitmap_free(set);
  return text;
}

/* Per member: world rank, group, CP rank, leader flag, string bytes. */
enum { F_WORLD, F_GROUP, F_CP, F_LEADER, F_BYTES, N_FIELDS };

int cpdl__pin_setup(const cpdl__mesh_t *mesh, const char *policy, int n_threads,
                    cpdl__pin_t **out) {
  *out = NULL;
  if (!mesh || n_threads < 0)
    return cpdl__error(CPDL_EARG, "pin: needs a mesh and n_threads >= 0 (got %d)", n_threads);
  const cpdl__team_t *team = &mesh->node;
  const int size = team->size;

  int rc = 0;
  cpdl__pin_t *pin = calloc(1, sizeof *pin);
  if (!pin)
    rc = -ENOMEM;
  else {
    pin->n_threads = n_threads;
    pin->world_rank = mesh->me.world_rank;
    pin->is_leader = mesh->is_leader;
    rc = cpdl__pin_policy_parse(policy, &pin->policy, NULL);
    if (rc == 0 && pin->policy != CPDL__PIN_NONE)
      pin->topo = load_topology();
    else if (rc == 0)
      pin->topo = NULL; /* none: nothing to plan */
  }

  /* What this rank contributes: "<binding>\0<gpu request>\0". */
  char gpu[GPU_REQ_MAX] = "";
  char *binding = NULL;
  if (pin) {
    binding = my_binding(pin->topo);
    if (pin->topo)
      my_gpu_request(mesh, gpu, sizeof gpu);
  }
  size_t blen = binding ? strlen(binding) : 0, glen = strlen(gpu);
  int mine[N_FIELDS] = {mesh->me.world_rank, mesh->me.group, mesh->me.cp_rank, mesh->is_leader,
                        (int)(blen + glen + 2)};
  char *local = malloc(blen + glen + 2);
  if (!local && rc == 0)
    rc = -ENOMEM;
  if (local) {
    memcpy(local, binding ? binding : "", blen + 1);
    memcpy(local + blen + 1, gpu, glen + 1);
  } else {
    mine[F_BYTES] = 0;
  }
  if (pin)
    pin->binding = binding ? binding : strdup("");
  else
    free(binding);

  /* The gathers run on every rank, errors or not, so nobody waits alone. */
  int *fields = malloc((size_t)size * N_FIELDS * sizeof *fields);
  size_t *offsets = malloc((size_t)(size + 1) * sizeof *offsets);
  char *all = NULL;
  cpdl__pin_member_t *members = calloc((size_t)size, sizeof *members);
  int64_t all_ok = fields && offsets && members;
  int mrc = cpdl__coll_min_i64(team, &all_ok, 1, "pin setup");
  if (mrc) {
    rc = mrc;
    goto done;
  }
  if (!all_ok) {
    rc = cpdl__agree(team, rc ? rc : (fields && offsets && members ? 0 : -ENOMEM));
    rc = rc ? rc : cpdl__error(-ENOMEM, "pin: out of memory on a rank of the node");
    goto done;
  }
  if ((mrc = cpdl__coll_allgather(team, mine, sizeof mine, fields, "pin setup")) != 0) {
    rc = mrc;
    goto done;
  }
  if ((mrc = cpdl__coll_allgatherv(team, local, (size_t)mine[F_BYTES], &all, offsets,
                                   "pin setup")) != 0) {
    rc = mrc;
    goto done;
  }

  if (rc == 0 && pin->topo) {
    for (int i = 0; i < size; i++) {
      const int *f = &fields[i * N_FIELDS];
      members[i].world_rank = f[F_WORLD];
      members[i].group = f[F_GROUP];
      members[i].cp_rank = f[F_CP];
      members[i].is_leader = f[F_LEADER];
      if (offsets[i + 1] - offsets[i] >= 2) {
        members[i].binding = all + offsets[i];
        members[i].gpu = members[i].binding + strlen(members[i].binding) + 1;
      }
      if (f[F_WORLD] == mesh->me.world_rank)
        pin->member = i;
    }
    cpdl__pin_plan_in_t in = {.policy = policy, .n_threads = n_threads, .members = members,
                              .n_members = size, .group = mesh->me.group};
    rc = cpdl__pin_plan_make(pin->topo, &in, &pin->plan);
    if (rc == 0 && pin->plan->note[0] && mesh->is_leader)
      note_once(pin->plan->note);
    const struct hwloc_topology_support *support = hwloc_topology_get_support(pin->topo);
    if (rc == 0 && n_threads > 0 && mesh->is_leader && !support->cpubind->set_thread_cpubind)
      warn_once("hwloc cannot bind threads on this machine; loader threads stay unbound");
  } else if (rc == 0 && pin->policy != CPDL__PIN_NONE && !pin->topo) {
    /* Degraded: only an explicit cores list must still be well-formed, and
     * cpdl__pin_policy_parse already checked its syntax. */
    pin->policy = CPDL__PIN_NONE;
  }
  rc = cpdl__agree(team, rc);

done:
  free(local);
  free(fields);
  free(offsets);
  free(all);
  free(members);
  if (rc < 0) {
    cpdl__pin_free(pin);
    return rc;
  }
  *out = pin;
  return 0;
}

void cpdl__pin_free(cpdl__pin_t *pin) {
  if (!pin)
    return;
  cpdl__pin_plan_free(pin->plan);
  if (pin->topo)
    hwloc_topology_destroy(pin->topo);
  free(pin->binding);
  free(pin);
}

static hwloc_const_cpuset_t thread_set(const cpdl__pin_t *pin, int thread) {
  if (!pin || !pin->plan || thread < 0 || thread >= pin->plan->n_threads)
    return NULL;
  return pin->plan->thread_cpuset[thread];
}

int cpdl__pin_thread(cpdl__pin_t *pin, int thread) {
  hwloc_const_cpuset_t set = thread_set(pin, thread);
  if (!set)
    return 0;
  if (hwloc_set_thread_cpubind(pin->topo, pthread_self(), set, 0) == 0)
    return 0;
  int err = errno;
  char *text = NULL;
  hwloc_bitmap_list_asprintf(&text, set);
  if (pin->policy == CPDL__PIN_CORES) {
    int rc = cpdl__error(CPDL_EPIN, "pin: binding loader thread %d to CPUs %s (from pin=cores:) "
                         "failed: %s; check that those CPUs are in this job's allowed set",
                         thread, text ? text : "?", strerror(err));
    free(text);
    return rc;
  }
  warn_once("binding loader thread %d to CPUs %s failed: %s", thread, text ? text : "?",
            strerror(err));
  free(text);
  return 0;
}

int cpdl__pin_region(cpdl__pin_t *pin, int region, void *addr, size_t len) {
  if (!pin || !pin->plan || region < 0 || region >= pin->plan->n_regions || !len)
    return 0;
  int numa = pin->plan->region_numa[region];
  if (numa < 0)
    return 0;
  hwloc_bitmap_t nodes = hwloc_bitmap_alloc();
  if (!nodes)
    return 0; /* placement is advice; never fail the open for it */
  hwloc_bitmap_only(nodes, (unsigned)numa);
  /* MIGRATE: tmpfs allocates a segment's pages at posix_fallocate time,
   * before the region can be bound; migration moves them where they belong. */
  if (hwloc_set_area_membind(pin->topo, addr, len, nodes, HWLOC_MEMBIND_BIND,
                             HWLOC_MEMBIND_BYNODESET | HWLOC_MEMBIND_MIGRATE) < 0)
    warn_once("binding region %d (%zu bytes) to NUMA node %d failed: %s", region, len, numa,
              strerror(errno));
  hwloc_bitmap_free(nodes);
  return 0;
}

int cpdl__pin_thread_cpuset(const cpdl__pin_t *pin, int thread, char *buf, size_t size) {
  hwloc_const_cpuset_t set = thread_set(pin, thread);
  if (!size)
    return 0;
  buf[0] = '\0';
  if (!set)
    return 0;
  return hwloc_bitmap_list_snprintf(buf, size, set) < 0 ? -ENOMEM : 0;
}

int cpdl__pin_region_numa(const cpdl__pin_t *pin, int region) {
  if (!pin || !pin->plan || region < 0 || region >= pin->plan->n_regions)
    return -1;
  return pin->plan->region_numa[region];
}

/* ---- report ---------------------------------------------------------------- */

static int append(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int append(char **buf, size_t *len, size_t *cap, const char *fmt, ...) {
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(*buf ? *buf + *len : NULL, *buf ? *cap - *len : 0, fmt, ap);
    va_end(ap);
    if (n < 0)
      return cpdl__error(-EINVAL, "pin report: cannot format an entry (vsnprintf failed)");
    if (*buf && *len + (size_t)n < *cap) {
      *len += (size_t)n;
      return 0;
    }
    size_t want = (*cap ? *cap * 2 : 512) + (size_t)n;
    char *grown = realloc(*buf, want);
    if (!grown)
      return cpdl__error(-ENOMEM, "pin report: out of memory growing the report to %zu bytes",
                         want);
    *buf = grown;
    *cap = want;
  }
}

static int entry(char **buf, size_t *len, size_t *cap, int rank, const char *thread,
                 const char *cpuset, int numa, const char *gpu) {
  return append(buf, len, cap, "%s{\"rank\": %d, \"thread\": \"%s\", \"cpuset\": \"%s\", "
                "\"numa\": %d, \"gpu\": %s%s%s}", *len ? ", " : "", rank, thread, cpuset, numa,
                gpu && *gpu ? "\"" : "", gpu && *gpu ? gpu : "null", gpu && *gpu ? "\"" : "");
}

/* This rank's entries, comma-separated, without brackets. */
static int local_entries(const cpdl__pin_t *pin, int comm_rank, char **buf, size_t *len) {
  size_t cap = 0;
  const cpdl__pin_plan_t *plan = pin ? pin->plan : NULL;
  int rank = pin ? pin->world_rank : comm_rank;
  const char *binding = pin && pin->binding ? pin->binding : "";
  int numa = plan ? plan->member_numa[pin->member] : -1;
  const char *gpu = plan ? plan->member_gpu[pin->member] : NULL;
  int rc = entry(buf, len, &cap, rank, "main", binding, numa, gpu);
  for (int t = 0; rc == 0 && pin && pin->is_leader && t < pin->n_threads; t++) {
    char name[32], *set = NULL;
    snprintf(name, sizeof name, "loader%d", t);
    hwloc_const_cpuset_t cpus = thread_set(pin, t);
    if (cpus) {
      if (hwloc_bitmap_list_asprintf(&set, cpus) < 0)
        return cpdl__error(-ENOMEM, "pin report: out of memory printing loader thread %d's "
                           "cpuset", t);
      rc = entry(buf, len, &cap, rank, name, set, plan->thread_numa[t],
                 plan->member_gpu[plan->thread_member[t]]);
      free(set);
    } else { /* unbound threads inherit the main thread's binding */
      rc = entry(buf, len, &cap, rank, name, binding, numa, NULL);
    }
  }
  return rc;
}

int cpdl__pin_report(const cpdl__pin_t *pin, const cpdl__team_t *team, char **json_out) {
  *json_out = NULL;
  const int rank = team->rank, size = team->size;
  char *mine = NULL;
  size_t len = 0;
  int rc = local_entries(pin, cpdl__team_world_rank(team, rank), &mine, &len);
  size_t *offsets = malloc((size_t)(size + 1) * sizeof *offsets);
  char *pieces = NULL, *all = NULL;
  if (!offsets && rc == 0)
    rc = cpdl__error(-ENOMEM, "pin report: out of memory");
  int64_t all_ok = rc == 0;
  int crc = cpdl__coll_min_i64(team, &all_ok, 1, "the pin report");
  if (crc) {
    rc = crc;
    goto done;
  }
  if (!all_ok) {
    rc = rc ? rc : cpdl__error(-ENOMEM, "pin report: out of memory on another rank");
    goto done;
  }
  if ((crc = cpdl__coll_allgatherv(team, mine, len, &pieces, offsets, "the pin report")) != 0) {
    rc = crc;
    goto done;
  }
  if (rank == 0) {
    all = malloc(offsets[size] + 2 * (size_t)size + 3);
    if (!all) {
      rc = cpdl__error(-ENOMEM, "pin report: out of memory");
      goto done;
    }
    size_t at = 0;
    all[at++] = '[';
    for (int i = 0; i < size; i++) {
      size_t n = offsets[i + 1] - offsets[i];
      if (!n)
        continue;
      if (at > 1) {
        all[at++] = ',';
        all[at++] = ' ';
      }
      memcpy(all + at, pieces + offsets[i], n);
      at += n;
    }
    all[at++] = ']';
    all[at] = '\0';
  }
done:
  if (rc != CPDL_EPEER)
    rc = cpdl__agree(team, rc);
  free(mine);
  free(offsets);
  free(pieces);
  if (rc == 0 && rank == 0) {
    *json_out = all;
    all = NULL;
  }
  free(all);
  return rc;
}
