/* pin_plan.c — the pure placement plan: which CPUs each loader thread uses and
 * which NUMA node each local CP region lives on, from a loaded hwloc topology,
 * the node's ranks (bindings, groups, GPU requests) and a policy.
 * Invariants: nothing here binds, reads the environment or talks MPI, so the
 * plan is the same for the same inputs on any machine (tests use synthetic
 * and XML topologies). NUMA numbers are OS indices (as numactl prints them).
 */
#include "internal.h"

#include <ctype.h>
#include <errno.h>
#include <hwloc.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Every failure leaves a message (cpdl.h "Conventions"); hwloc's bitmap calls
 * fail only on allocation. */
static int no_memory(const char *what) {
  return cpdl__error(-ENOMEM, "pin plan: out of memory %s", what);
}

#define MAX_CPU_ID 65535 /* a cores:<list> entry above this is a typo, not a CPU */

static void add_note(cpdl__pin_plan_t *plan, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Append "; <text>" to the plan's note unless the same text is there. */
static void add_note(cpdl__pin_plan_t *plan, const char *fmt, ...) {
  char text[sizeof plan->note];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  if (strstr(plan->note, text))
    return;
  size_t used = strlen(plan->note);
  snprintf(plan->note + used, sizeof plan->note - used, "%s%s", used ? "; " : "", text);
}

/* "0-3,8,10-11": strict decimal ranges, ascending within a range. */
static int parse_cpu_list(const char *text, hwloc_bitmap_t cpus) {
  const char *p = text;
  if (!*p)
    return cpdl__error(CPDL_EARG, "pin=cores:<list>: the list is empty; give CPU numbers "
                                  "like cores:0-3,8");
  while (*p) {
    char *end;
    if (!isdigit((unsigned char)*p))
      return cpdl__error(CPDL_EARG, "pin=cores:%s: expected a CPU number at \"%s\" "
                                    "(format: cores:0-3,8)", text, p);
    errno = 0;
    unsigned long lo = strtoul(p, &end, 10), hi = lo;
    if (errno || lo > MAX_CPU_ID)
      return cpdl__error(CPDL_EARG, "pin=cores:%s: CPU number at \"%s\" is too large", text, p);
    p = end;
    if (*p == '-') {
      p++;
      if (!isdigit((unsigned char)*p))
        return cpdl__error(CPDL_EARG, "pin=cores:%s: range without an end at \"%s\"", text, p);
      hi = strtoul(p, &end, 10);
      if (errno || hi > MAX_CPU_ID || hi < lo)
        return cpdl__error(CPDL_EARG, "pin=cores:%s: bad range %lu-%s (end must be >= start)",
                           text, lo, p);
      p = end;
    }
    if (hwloc_bitmap_set_range(cpus, (unsigned)lo, (int)hi) < 0)
      return no_memory("setting a range of the cores list");
    if (*p == ',') {
      p++;
      if (!*p)
        return cpdl__error(CPDL_EARG, "pin=cores:%s: trailing comma", text);
    } else if (*p) {
      return cpdl__error(CPDL_EARG, "pin=cores:%s: unexpected \"%s\" (format: cores:0-3,8)",
                         text, p);
    }
  }
  return 0;
}

int cpdl__pin_policy_parse(const char *policy, cpdl__pin_policy_t *kind, hwloc_bitmap_t *cpus) {
  if (cpus)
    *cpus = NULL;
  if (!policy || !*policy || !strcmp(policy, "auto")) {
    *kind = CPDL__PIN_AUTO;
    return 0;
  }
  if (!strcmp(policy, "numa")) {
    *kind = CPDL__PIN_NUMA;
    return 0;
  }
  if (!strcmp(policy, "none")) {
    *kind = CPDL__PIN_NONE;
    return 0;
  }
  if (!strncmp(policy, "cores:", 6)) {
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    if (!set)
      return no_memory("allocating the cores list");
    int rc = parse_cpu_list(policy + 6, set);
    if (rc < 0 || !cpus)
      hwloc_bitmap_free(set);
    else
      *cpus = set;
    if (rc < 0)
      return rc;
    *kind = CPDL__PIN_CORES;
    return 0;
  }
  return cpdl__error(CPDL_EARG, "pin=%s: unknown policy; expected auto, numa, none or "
                                "cores:<list> (e.g. cores:0-3,8)", policy);
}

/* ---- GPUs: PCI devices found by hwloc's I/O discovery --------------------- */

/* Display controllers of GPU vendors, and 3D controllers of anyone. A BMC's
 * VGA (ASPEED, Matrox) or an Intel iGPU (class 0300) is not a training GPU. */
static bool is_gpu(hwloc_obj_t obj) {
  unsigned cls = obj->attr->pcidev.class_id, vendor = obj->attr->pcidev.vendor_id;
  if (cls == 0x0302)
    return true;
  if ((cls >> 8) != 0x03)
    return false;
  if (vendor == 0x10de || vendor == 0x1002)
    return true;
  return vendor == 0x8086 && cls == 0x0380; /* Intel data-center GPUs */
}

static int cmp_busid(const void *a, const void *b) {
  const struct hwloc_pcidev_attr_s *x = &(*(hwloc_obj_t const *)a)->attr->pcidev;
  const struct hwloc_pcidev_attr_s *y = &(*(hwloc_obj_t const *)b)->attr->pcidev;
  unsigned long kx = ((unsigned long)x->domain << 24) | (x->bus << 16) | (x->dev << 8) | x->func;
  unsigned long ky = ((unsigned long)y->domain << 24) | (y->bus << 16) | (y->dev << 8) | y->func;
  return (kx > ky) - (kx < ky);
}

/* The index-th GPU in PCI bus order (CUDA's order with
 * CUDA_DEVICE_ORDER=PCI_BUS_ID, and its default on nodes of identical GPUs). */
static hwloc_obj_t gpu_by_index(hwloc_topology_t topo, long index, int *n_gpus) {
  int n = 0;
  for (hwloc_obj_t o = hwloc_get_next_pcidev(topo, NULL); o; o = hwloc_get_next_pcidev(topo, o))
    n += is_gpu(o);
  *n_gpus = n;
  if (index < 0 || index >= n)
    return NULL;
  hwloc_obj_t *gpus = malloc((size_t)n * sizeof *gpus);
  if (!gpus)
    return NULL;
  n = 0;
  for (hwloc_obj_t o = hwloc_get_next_pcidev(topo, NULL); o; o = hwloc_get_next_pcidev(topo, o))
    if (is_gpu(o))
      gpus[n++] = o;
  qsort(gpus, (size_t)n, sizeof *gpus, cmp_busid);
  hwloc_obj_t found = gpus[index];
  free(gpus);
  return found;
}

/* "0000:41:00.0", "00000000:41:00.0" (CUDA's form) or "41:00.0". */
static bool parse_busid(const char *text, unsigned *domain, unsigned *bus, unsigned *dev,
                        unsigned *func) {
  char tail;
  if (sscanf(text, "%x:%x:%x.%x%c", domain, bus, dev, func, &tail) == 4)
    return *domain <= 0xffff && *bus <= 0xff && *dev <= 0x1f && *func <= 7;
  *domain = 0;
  if (sscanf(text, "%x:%x.%x%c", bus, dev, func, &tail) == 3)
    return *bus <= 0xff && *dev <= 0x1f && *func <= 7;
  return false;
}

static hwloc_obj_t resolve_gpu(hwloc_topology_t topo, const char *request, int world_rank,
                               cpdl__pin_plan_t *plan) {
  if (!request || !*request)
    return NULL;
  if (request[0] == '#' || request[0] == '@') {
    char *end;
    long index = strtol(request + 1, &end, 10);
    int n_gpus = 0;
    bool valid = !*end && end != request + 1 && index >= 0;
    hwloc_obj_t gpu = valid ? gpu_by_index(topo, index, &n_gpus) : NULL;
    if (!gpu && valid && request[0] == '@' && n_gpus > 0)
      /* The local rank, with more ranks than GPUs: they share, as trainers
       * do with local_rank % device_count(). */
      gpu = gpu_by_index(topo, index % n_gpus, &n_gpus);
    if (!gpu && n_gpus > 0)
      add_note(plan, "rank %d: GPU index %s not among the %d GPUs hwloc found", world_rank,
               request + 1, n_gpus);
    return gpu;
  }
  unsigned domain, bus, dev, func;
  if (!parse_busid(request, &domain, &bus, &dev, &func)) {
    add_note(plan, "rank %d: GPU \"%s\" is neither a PCI bus id nor an index", world_rank, request);
    return NULL;
  }
  hwloc_obj_t gpu = hwloc_get_pcidev_by_busid(topo, domain, bus, dev, func);
  if (!gpu)
    add_note(plan, "rank %d: no PCI device %s in the topology", world_rank, request);
  return gpu;
}

/* ---- locality ------------------------------------------------------------- */

/* The NUMA node (OS index) whose CPUs include all of `set`, or -1. */
static int numa_containing(hwloc_topology_t topo, hwloc_const_cpuset_t set) {
  if (!set || hwloc_bitmap_iszero(set))
    return -1;
  for (hwloc_obj_t n = hwloc_get_next_obj_by_type(topo, HWLOC_OBJ_NUMANODE, NULL); n;
       n = hwloc_get_next_obj_by_type(topo, HWLOC_OBJ_NUMANODE, n))
    if (!hwloc_bitmap_iszero(n->cpuset) && hwloc_bitmap_isincluded(set, n->cpuset))
      return (int)n->os_index;
  return -1;
}

static hwloc_obj_t numa_by_os(hwloc_topology_t topo, int os_index) {
  for (hwloc_obj_t n = hwloc_get_next_obj_by_type(topo, HWLOC_OBJ_NUMANODE, NULL); n;
       n = hwloc_get_next_obj_by_type(topo, HWLOC_OBJ_NUMANODE, n))
    if ((int)n->os_index == os_index)
      return n;
  return NULL;
}

/* A member's home: the CPUs local to its GPU; else the NUMA node that holds
 * most of its binding; else (unbound, unknown) every allowed CPU. */
static int member_home(hwloc_topology_t topo, const cpdl__pin_member_t *m, hwloc_cpuset_t home,
                       int *numa, char gpu_out[16], cpdl__pin_plan_t *plan) {
  hwloc_const_cpuset_t allowed = hwloc_topology_get_allowed_cpuset(topo);
  gpu_out[0] = '\0';
  hwloc_obj_t gpu = resolve_gpu(topo, m->gpu, m->world_rank, plan);
  if (gpu) {
    const struct hwloc_pcidev_attr_s *a = &gpu->attr->pcidev;
    snprintf(gpu_out, 16, "%04x:%02x:%02x.%x", (unsigned)a->domain, a->bus, a->dev, a->func);
    hwloc_obj_t anc = hwloc_get_non_io_ancestor_obj(topo, gpu);
    if (hwloc_bitmap_and(home, anc->cpuset, allowed) < 0)
      return no_memory("computing a GPU's home cpuset");
    if (!hwloc_bitmap_iszero(home)) {
      *numa = hwloc_bitmap_weight(anc->nodeset) == 1 ? hwloc_bitmap_first(anc->nodeset) : -1;
      return 0;
    }
  }
  *numa = -1;
  hwloc_bitmap_t bound = hwloc_bitmap_alloc();
  if (!bound)
    return no_memory("allocating a rank's binding");
  bool known = m->binding && *m->binding && hwloc_bitmap_list_sscanf(bound, m->binding) == 0 &&
               hwloc_bitmap_and(bound, bound, allowed) == 0 && !hwloc_bitmap_iszero(bound) &&
               !hwloc_bitmap_isincluded(allowed, bound);
  hwloc_obj_t best = NULL;
  int best_overlap = 0;
  for (hwloc_obj_t n = hwloc_get_next_obj_by_type(topo, HWLOC_OBJ_NUMANODE, NULL); known && n;
       n = hwloc_get_next_obj_by_type(topo, HWLOC_OBJ_NUMANODE, n)) {
    hwloc_bitmap_t both = hwloc_bitmap_alloc();
    if (!both) {
      hwloc_bitmap_free(bound);
      return no_memory("intersecting a rank's binding");
    }
    hwloc_bitmap_and(both, bound, n->cpuset);
    int overlap = hwloc_bitmap_weight(both);
    hwloc_bitmap_free(both);
    if (overlap > best_overlap) { /* ties keep the lower node */
      best = n;
      best_overlap = overlap;
    }
  }
  hwloc_bitmap_free(bound);
  if (best) {
    *numa = (int)best->os_index;
    return hwloc_bitmap_and(home, best->cpuset, allowed) < 0 ? no_memory("intersecting the best NUMA node with the allowed cpuset") : 0;
  }
  if (hwloc_bitmap_copy(home, allowed) < 0)
    return no_memory("copying the allowed cpuset");
  if (hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE) == 1)
    *numa = (int)hwloc_get_obj_by_type(topo, HWLOC_OBJ_NUMANODE, 0)->os_index;
  return 0;
}

/* ---- choosing CPUs -------------------------------------------------------- */

typedef struct planner {
  hwloc_topology_t topo;
  hwloc_obj_type_t unit;      /* Core, or PU on topologies without cores */
  int n_units;
  int *uses;                  /* loader threads already placed on each unit */
  hwloc_bitmap_t busy;        /* CPUs the training ranks are bound to */
} planner_t;

/* The least-used unit inside `within` that no training rank is bound to
 * (with only_unused, one no loader thread has either); ties go to the lowest
 * logical index. NULL if there is none. */
static hwloc_obj_t pick_unit(planner_t *pl, hwloc_const_cpuset_t within, bool only_unused) {
  hwloc_const_cpuset_t allowed = hwloc_topology_get_allowed_cpuset(pl->topo);
  hwloc_obj_t best = NULL;
  for (int i = 0; i < pl->n_units; i++) {
    hwloc_obj_t u = hwloc_get_obj_by_type(pl->topo, pl->unit, (unsigned)i);
    if (!hwloc_bitmap_isincluded(u->cpuset, within) || !hwloc_bitmap_isincluded(u->cpuset, allowed) ||
        hwloc_bitmap_intersects(u->cpuset, pl->busy) || (only_unused && pl->uses[i]))
      continue;
    if (!best || pl->uses[i] < pl->uses[best->logical_index])
      best = u;
  }
  return best;
}

/* auto, in order: a core of the home that neither a rank nor another loader
 * thread has; such a core elsewhere in the home's package (a NUMA hop inside
 * one package costs less than two compute threads on one core); a core of
 * the home or package shared only with loader threads; at last the whole
 * home, shared with the ranks (locality beats isolation across packages). */
static int place_auto(planner_t *pl, hwloc_const_cpuset_t home, hwloc_cpuset_t out,
                      cpdl__pin_plan_t *plan, int group, bool keep) {
  hwloc_const_cpuset_t pkg_set = NULL;
  if (!hwloc_bitmap_iszero(home)) {
    hwloc_obj_t pu = hwloc_get_pu_obj_by_os_index(pl->topo, (unsigned)hwloc_bitmap_first(home));
    hwloc_obj_t pkg = pu ? hwloc_get_ancestor_obj_by_type(pl->topo, HWLOC_OBJ_PACKAGE, pu) : NULL;
    if (pkg && !hwloc_bitmap_isincluded(pkg->cpuset, home))
      pkg_set = pkg->cpuset;
  }
  hwloc_obj_t u = pick_unit(pl, home, true);
  bool in_package = false;
  if (!u && pkg_set && (u = pick_unit(pl, pkg_set, true)))
    in_package = true;
  if (!u)
    u = pick_unit(pl, home, false);
  if (!u && pkg_set && (u = pick_unit(pl, pkg_set, false)))
    in_package = true;
  if (u) {
    if (in_package && keep)
      add_note(plan, "group %d: loader thread(s) on a free core of their consumer's package, "
                     "its NUMA node has none", group);
    pl->uses[u->logical_index]++;
    return hwloc_bitmap_copy(out, u->cpuset) < 0 ? no_memory("copying a core's cpuset") : 0;
  }
  if (keep)
    add_note(plan, "group %d: loader thread(s) share cores with training ranks: every core "
                   "near their consumer is bound to one", group);
  return hwloc_bitmap_copy(out, home) < 0 ? no_memory("copying a home cpuset") : 0;
}

/* numa: the home's NUMA node, less the ranks' CPUs when that leaves some. */
static int place_numa(planner_t *pl, hwloc_const_cpuset_t home, int home_numa, hwloc_cpuset_t out) {
  hwloc_obj_t node = home_numa >= 0 ? numa_by_os(pl->topo, home_numa) : NULL;
  if (hwloc_bitmap_copy(out, node && !hwloc_bitmap_iszero(node->cpuset) ? node->cpuset : home) < 0)
    return no_memory("copying a NUMA node's cpuset");
  hwloc_bitmap_and(out, out, hwloc_topology_get_allowed_cpuset(pl->topo));
  hwloc_bitmap_t free_cpus = hwloc_bitmap_alloc();
  if (!free_cpus)
    return no_memory("allocating the free-CPU set");
  hwloc_bitmap_andnot(free_cpus, out, pl->busy);
  if (!hwloc_bitmap_iszero(free_cpus))
    hwloc_bitmap_copy(out, free_cpus);
  hwloc_bitmap_free(free_cpus);
  return 0;
}

/* ---- the plan ------------------------------------------------------------- */

void cpdl__pin_plan_free(cpdl__pin_plan_t *plan) {
  if (!plan)
    return;
  for (int t = 0; plan->thread_cpuset && t < plan->n_threads; t++)
    hwloc_bitmap_free(plan->thread_cpuset[t]);
  free(plan->thread_cpuset);
  free(plan->thread_numa);
  free(plan->thread_member);
  free(plan->region_numa);
  free(plan->member_numa);
  free(plan->member_gpu);
  free(plan);
}

/* Regions of a group: its distinct CP ranks, ascending; the consumer of each
 * is the first member (in node order) with that CP rank. */
static int group_regions(const cpdl__pin_plan_in_t *in, int group, int *consumer) {
  int n = 0;
  for (;;) {
    int next = -1, who = -1;
    int floor_cp = n ? in->members[consumer[n - 1]].cp_rank : INT_MIN;
    for (int i = 0; i < in->n_members; i++) {
      const cpdl__pin_member_t *m = &in->members[i];
      if (m->group == group && m->cp_rank > floor_cp && (next < 0 || m->cp_rank < next)) {
        next = m->cp_rank;
        who = i;
      }
    }
    if (who < 0)
      return n;
    consumer[n++] = who;
  }
}

static int group_leader(const cpdl__pin_plan_in_t *in, int group) {
  int first = -1;
  for (int i = 0; i < in->n_members; i++) {
    if (in->members[i].group != group)
      continue;
    if (in->members[i].is_leader)
      return i;
    if (first < 0)
      first = i;
  }
  return first;
}

static int plan_alloc(const cpdl__pin_plan_in_t *in, cpdl__pin_plan_t **out) {
  cpdl__pin_plan_t *plan = calloc(1, sizeof *plan);
  if (!plan)
    return no_memory("allocating the plan");
  size_t nt = (size_t)in->n_threads, nm = (size_t)in->n_members;
  plan->n_threads = in->n_threads;
  plan->n_members = in->n_members;
  plan->thread_cpuset = calloc(nt ? nt : 1, sizeof *plan->thread_cpuset);
  plan->thread_numa = calloc(nt ? nt : 1, sizeof *plan->thread_numa);
  plan->thread_member = calloc(nt ? nt : 1, sizeof *plan->thread_member);
  plan->region_numa = calloc(nm ? nm : 1, sizeof *plan->region_numa);
  plan->member_numa = calloc(nm ? nm : 1, sizeof *plan->member_numa);
  plan->member_gpu = calloc(nm ? nm : 1, sizeof *plan->member_gpu);
  if (!plan->thread_cpuset || !plan->thread_numa || !plan->thread_member || !plan->region_numa ||
      !plan->member_numa || !plan->member_gpu) {
    cpdl__pin_plan_free(plan);
    return no_memory("allocating the plan's tables");
  }
  for (size_t t = 0; t < nt; t++)
    plan->thread_numa[t] = -1;
  *out = plan;
  return 0;
}

int cpdl__pin_plan_make(hwloc_topology_t topo, const cpdl__pin_plan_in_t *in,
                        cpdl__pin_plan_t **out) {
  *out = NULL;
  if (!topo || !in || in->n_threads < 0 || in->n_members < 1 || !in->members)
    return cpdl__error(CPDL_EARG, "pin plan: needs a topology, >= 1 member and >= 0 threads");
  cpdl__pin_policy_t kind;
  hwloc_bitmap_t list = NULL;
  int rc = cpdl__pin_policy_parse(in->policy, &kind, &list);
  if (rc < 0)
    return rc;
  if (kind == CPDL__PIN_CORES) {
    hwloc_const_cpuset_t allowed = hwloc_topology_get_allowed_cpuset(topo);
    if (!hwloc_bitmap_isincluded(list, allowed)) {
      hwloc_bitmap_t bad = hwloc_bitmap_alloc();
      char *allowed_text = NULL;
      if (bad)
        hwloc_bitmap_andnot(bad, list, allowed);
      hwloc_bitmap_list_asprintf(&allowed_text, allowed);
      rc = cpdl__error(CPDL_EARG, "pin=%s: CPU %d does not exist or is not allowed here; "
                                  "allowed CPUs are %s", in->policy,
                       bad ? hwloc_bitmap_first(bad) : -1, allowed_text ? allowed_text : "?");
      free(allowed_text);
      hwloc_bitmap_free(bad);
      hwloc_bitmap_free(list);
      return rc;
    }
  }

  cpdl__pin_plan_t *plan = NULL;
  planner_t pl = {.topo = topo};
  hwloc_bitmap_t *homes = NULL;
  int *consumer = NULL;
  if ((rc = plan_alloc(in, &plan)) < 0)
    goto fail;
  plan->policy = kind;
  pl.unit = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE) > 0 ? HWLOC_OBJ_CORE : HWLOC_OBJ_PU;
  pl.n_units = hwloc_get_nbobjs_by_type(topo, pl.unit);
  pl.uses = calloc((size_t)pl.n_units + 1, sizeof *pl.uses);
  pl.busy = hwloc_bitmap_alloc();
  homes = calloc((size_t)in->n_members, sizeof *homes);
  consumer = calloc((size_t)in->n_members, sizeof *consumer);
  rc = 0;
  if (!pl.uses || !pl.busy || !homes || !consumer) {
    rc = no_memory("allocating the planner's tables");
    goto fail;
  }

  /* Every member's home, and the CPUs the training ranks occupy. An unbound
   * rank (its binding covers every allowed CPU) occupies nothing in
   * particular, so it does not make every core busy. */
  hwloc_const_cpuset_t allowed = hwloc_topology_get_allowed_cpuset(topo);
  for (int i = 0; i < in->n_members; i++) {
    if (!(homes[i] = hwloc_bitmap_alloc())) {
      rc = no_memory("allocating a member's home cpuset");
      goto fail;
    }
    if ((rc = member_home(topo, &in->members[i], homes[i], &plan->member_numa[i],
                          plan->member_gpu[i], plan)) < 0)
      goto fail;
    hwloc_bitmap_t bound = hwloc_bitmap_alloc();
    if (!bound) {
      rc = no_memory("allocating a member's binding");
      goto fail;
    }
    const char *b = in->members[i].binding;
    if (b && *b && hwloc_bitmap_list_sscanf(bound, b) == 0) {
      hwloc_bitmap_and(bound, bound, allowed);
      if (!hwloc_bitmap_isincluded(allowed, bound))
        hwloc_bitmap_or(pl.busy, pl.busy, bound);
    }
    hwloc_bitmap_free(bound);
  }

  /* Threads of every group, in group order, so leaders never collide. */
  int next_group = INT_MIN;
  for (;;) {
    int g = INT_MAX;
    bool any = false;
    for (int i = 0; i < in->n_members; i++)
      if (in->members[i].group >= next_group && in->members[i].group <= g) {
        g = in->members[i].group;
        any = true;
      }
    if (!any)
      break;
    next_group = g == INT_MAX ? g : g + 1;
    bool keep = g == in->group;
    int leader = group_leader(in, g);
    int n_regions = group_regions(in, g, consumer);
    if (keep) {
      plan->n_regions = n_regions;
      for (int r = 0; r < n_regions; r++)
        plan->region_numa[r] = kind == CPDL__PIN_NONE ? -1 : plan->member_numa[consumer[r]];
    }
    for (int t = 0; t < in->n_threads; t++) {
      /* thread 0 (ring/publisher) near the leader; workers round-robin over
       * the regions' consumers, whose shards they write */
      int who = (t == 0 || n_regions == 0) ? leader : consumer[(t - 1) % n_regions];
      hwloc_bitmap_t set = NULL;
      if (kind != CPDL__PIN_NONE && !(set = hwloc_bitmap_alloc())) {
        rc = no_memory("allocating a loader thread's cpuset");
        goto fail;
      }
      rc = 0;
      if (kind == CPDL__PIN_AUTO)
        rc = place_auto(&pl, homes[who], set, plan, g, keep);
      else if (kind == CPDL__PIN_NUMA)
        rc = place_numa(&pl, homes[who], plan->member_numa[who], set);
      else if (kind == CPDL__PIN_CORES) {
        unsigned cpu = (unsigned)hwloc_bitmap_first(list);
        for (int k = 0; k < t % hwloc_bitmap_weight(list); k++)
          cpu = (unsigned)hwloc_bitmap_next(list, (int)cpu);
        hwloc_bitmap_only(set, cpu);
      }
      if (rc < 0 || !keep) {
        hwloc_bitmap_free(set);
        if (rc < 0)
          goto fail;
        continue;
      }
      plan->thread_cpuset[t] = set;
      plan->thread_numa[t] = numa_containing(topo, set);
      plan->thread_member[t] = who;
    }
    if (g == INT_MAX)
      break;
  }
  rc = 0;
  *out = plan;
  plan = NULL;
fail:
  for (int i = 0; homes && i < in->n_members; i++)
    hwloc_bitmap_free(homes[i]);
  free(homes);
  free(consumer);
  free(pl.uses);
  hwloc_bitmap_free(pl.busy);
  hwloc_bitmap_free(list);
  cpdl__pin_plan_free(plan);
  return rc;
}

/* ---- GPU request from the environment's values ---------------------------- */

void cpdl__pin_gpu_request(const char *cpdl_gpu, const char *cuda_visible, int local_rank,
                           char *out, size_t size) {
  if (!size)
    return;
  out[0] = '\0';
  if (cpdl_gpu && *cpdl_gpu) {
    bool index = true;
    for (const char *p = cpdl_gpu; *p; p++)
      index = index && isdigit((unsigned char)*p);
    snprintf(out, size, index ? "#%s" : "%s", cpdl_gpu);
    return;
  }
  if (cuda_visible) {
    /* CUDA_VISIBLE_DEVICES="" hides every GPU: no request. A single entry
     * means the launcher gave this rank its own GPU; several mean the rank
     * picks its local rank's entry. */
    int n = 0;
    for (const char *p = cuda_visible; *p; p++)
      n += *p == ',';
    if (!*cuda_visible)
      return;
    n++;
    int want = n == 1 ? 0 : local_rank % n;
    const char *p = cuda_visible;
    for (int k = 0; k < want; k++)
      p = strchr(p, ',') + 1;
    size_t len = strcspn(p, ",");
    bool index = len > 0;
    for (size_t k = 0; k < len; k++)
      index = index && isdigit((unsigned char)p[k]);
    if (index && len + 2 <= size) /* UUIDs (GPU-..., MIG-...) need NVML: none */
      snprintf(out, size, "#%.*s", (int)len, p);
    return;
  }
  snprintf(out, size, "@%d", local_rank); /* the local rank: wraps over the GPUs */
}
