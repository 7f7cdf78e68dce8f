/* pin.h — placement: the pure plan (pin_plan.c) and its
 * application and report over the control plane (pin.c). Never installed.
 */
#ifndef CPDL_PIN_H
#define CPDL_PIN_H

#include "ctl.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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

#endif /* CPDL_PIN_H */
