/* pin_bind.c — placement for real under mpirun: build the mesh, set up the
 * pin (collective), start the leader's loader threads, apply, and check with
 * sched_getaffinity and hwloc_get_thread_cpubind that every thread sits where
 * the plan says; bind a region and read its policy back; check the
 * --report-binding JSON on rank 0 and the collective error of a bad cores list.
 *
 *   mpi_pin_bind <cp> bind|nobind   bind: each rank first binds itself to one
 *                                   allowed CPU (rank mod count), as
 *                                   mpirun --bind-to core would
 *   mpi_pin_bind <cp> bindfirst     every rank bound to the first allowed CPU:
 *                                   auto/numa threads must stay off it
 *   mpi_pin_bind <cp> xml           HWLOC_XMLFILE names a topology with GPUs:
 *                                   check the report's GPU and NUMA per rank
 */
#include "mpi_test.h"
#include "ctl_test.h"

#include <hwloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

#define N_THREADS 3

/* bindfirst: the CPU every rank is bound to, which auto must keep its
 * threads off (-1: no such check). */
static int avoid_cpu = -1;

typedef struct worker {
  cpdl__pin_t *pin;
  hwloc_topology_t topo;
  int thread;
  int rc;
  char affinity[256];  /* sched_getaffinity of the thread, list string */
  char hwloc_set[256]; /* hwloc_get_thread_cpubind of the thread */
} worker_t;

static void affinity_list(cpu_set_t *mask, char *buf, size_t size) {
  hwloc_bitmap_t set = hwloc_bitmap_alloc();
  for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
    if (CPU_ISSET(cpu, mask))
      hwloc_bitmap_set(set, (unsigned)cpu);
  hwloc_bitmap_list_snprintf(buf, size, set);
  hwloc_bitmap_free(set);
}

static void *worker_main(void *arg) {
  worker_t *w = arg;
  w->rc = cpdl__pin_thread(w->pin, w->thread);
  cpu_set_t mask;
  CPU_ZERO(&mask);
  sched_getaffinity(0, sizeof mask, &mask); /* 0 = this thread */
  affinity_list(&mask, w->affinity, sizeof w->affinity);
  hwloc_bitmap_t set = hwloc_bitmap_alloc();
  if (hwloc_get_thread_cpubind(w->topo, pthread_self(), set, 0) == 0)
    hwloc_bitmap_list_snprintf(w->hwloc_set, sizeof w->hwloc_set, set);
  hwloc_bitmap_free(set);
  return NULL;
}

static int count(const char *text, const char *needle) {
  int n = 0;
  for (const char *p = text; (p = strstr(p, needle)); p += strlen(needle))
    n++;
  return n;
}

/* One policy: setup, threads, region, report. */
static void run_policy(const cpdl__mesh_t *mesh, hwloc_topology_t topo, const char *policy,
                       const char *main_binding, int n_leaders) {
  cpdl__pin_t *pin = NULL;
  int rc = cpdl__pin_setup(mesh, policy, N_THREADS, &pin);
  CHECK(rc == 0, "pin=%s: setup: %s", policy, cpdl_last_error());
  if (rc)
    return;
  if (mesh->is_leader) {
    worker_t w[N_THREADS];
    pthread_t tid[N_THREADS];
    for (int t = 0; t < N_THREADS; t++) {
      w[t] = (worker_t){.pin = pin, .topo = topo, .thread = t};
      CHECK(pthread_create(&tid[t], NULL, worker_main, &w[t]) == 0, "pthread_create %d", t);
    }
    for (int t = 0; t < N_THREADS; t++) {
      pthread_join(tid[t], NULL);
      char planned[256];
      cpdl__pin_thread_cpuset(pin, t, planned, sizeof planned);
      /* unbound threads keep the binding they inherited from main */
      const char *want = planned[0] ? planned : main_binding;
      CHECK(w[t].rc == 0, "pin=%s thread %d: %s", policy, t, cpdl_last_error());
      CHECK(!strcmp(w[t].affinity, want), "pin=%s thread %d: sched_getaffinity %s, plan %s",
            policy, t, w[t].affinity, want);
      CHECK(!strcmp(w[t].hwloc_set, want), "pin=%s thread %d: hwloc says %s, plan %s", policy,
            t, w[t].hwloc_set, want);
      if (!strcmp(policy, "none"))
        CHECK(planned[0] == '\0', "pin=none planned CPUs %s for thread %d", planned, t);
      if (avoid_cpu >= 0 && (!strcmp(policy, "auto") || !strcmp(policy, "numa"))) {
        hwloc_bitmap_t got = hwloc_bitmap_alloc();
        hwloc_bitmap_list_sscanf(got, w[t].affinity);
        CHECK(!hwloc_bitmap_isset(got, (unsigned)avoid_cpu) && !hwloc_bitmap_iszero(got),
              "pin=%s thread %d on %s, the ranks' CPU %d", policy, t, w[t].affinity, avoid_cpu);
        hwloc_bitmap_free(got);
      }
    }
  }
  /* The main thread was never moved. */
  cpu_set_t mask;
  sched_getaffinity(0, sizeof mask, &mask);
  char now[256];
  affinity_list(&mask, now, sizeof now);
  CHECK(!strcmp(now, main_binding), "pin=%s moved the main thread: %s -> %s", policy,
        main_binding, now);

  /* Region memory: bound before first touch, policy read back. */
  long page = sysconf(_SC_PAGESIZE);
  size_t len = 16 * (size_t)page;
  void *region = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  CHECK(region != MAP_FAILED, "mmap of %zu bytes", len);
  int numa = cpdl__pin_region_numa(pin, mesh->local_cp_index);
  CHECK(cpdl__pin_region(pin, mesh->local_cp_index, region, len) == 0, "pin=%s region", policy);
  memset(region, 1, len);
  const struct hwloc_topology_support *support = hwloc_topology_get_support(topo);
  if (numa >= 0 && support->membind->get_area_membind) {
    hwloc_bitmap_t nodes = hwloc_bitmap_alloc();
    hwloc_membind_policy_t mpol;
    CHECK(hwloc_get_area_membind(topo, region, len, nodes, &mpol, HWLOC_MEMBIND_BYNODESET) == 0,
          "hwloc_get_area_membind");
    CHECK(mpol == HWLOC_MEMBIND_BIND, "pin=%s region policy %d", policy, (int)mpol);
    CHECK(hwloc_bitmap_isset(nodes, (unsigned)numa) && hwloc_bitmap_weight(nodes) == 1,
          "pin=%s region not on NUMA %d", policy, numa);
    hwloc_bitmap_free(nodes);
  }
  if (!strcmp(policy, "none"))
    CHECK(numa == -1, "pin=none still binds memory to NUMA %d", numa);
  munmap(region, len);

  /* The report: one main entry per rank, N_THREADS per leader, on rank 0. */
  char *json = NULL;
  rc = cpdl__pin_report(pin, cpdl_test_world(), &json);
  CHECK(rc == 0, "report: %s", cpdl_last_error());
  if (mesh->me.world_rank == 0 && json) {
    printf("pin=%s report: %s\n", policy, json);
    size_t n = strlen(json);
    CHECK(n > 2 && json[0] == '[' && json[n - 1] == ']', "report is not an array: %s", json);
    CHECK(count(json, "\"thread\": \"main\"") == mesh->me.world_size, "report: %s", json);
    CHECK(count(json, "\"thread\": \"loader") == n_leaders * N_THREADS, "report: %s", json);
    CHECK(count(json, "{") == count(json, "}"), "report: %s", json);
    char want[400];
    for (int r = 0; r < mesh->me.world_size; r++) {
      snprintf(want, sizeof want, "{\"rank\": %d, \"thread\": \"main\"", r);
      CHECK(strstr(json, want) != NULL, "report lacks rank %d: %s", r, json);
    }
    snprintf(want, sizeof want, "\"main\", \"cpuset\": \"%s\"", main_binding);
    CHECK(strstr(json, want) != NULL, "report lacks rank 0's binding %s: %s", main_binding, json);
  } else {
    CHECK(json == NULL, "rank %d got a report", mesh->me.world_rank);
  }
  free(json);
  cpdl__pin_free(pin);
}

/* HWLOC_XMLFILE gives every rank the test topology with 3 GPUs; with
 * CUDA_VISIBLE_DEVICES=0,1,2 local rank r feeds GPU r (bus order 07, 87, c1). */
static void run_xml(const cpdl__mesh_t *mesh) {
  cpdl__pin_t *pin = NULL;
  int rc = cpdl__pin_setup(mesh, "auto", N_THREADS, &pin);
  CHECK(rc == 0, "setup: %s", cpdl_last_error());
  char *json = NULL;
  rc = cpdl__pin_report(pin, cpdl_test_world(), &json);
  CHECK(rc == 0, "report: %s", cpdl_last_error());
  if (mesh->me.world_rank == 0 && json) {
    printf("xml report: %s\n", json);
    static const char *bus[] = {"0000:07:00.0", "0000:87:00.0", "0000:c1:00.0"};
    static const int numa[] = {1, -1, 0};
    char want[160];
    for (int r = 0; r < mesh->me.world_size && r < 3; r++) {
      snprintf(want, sizeof want, "{\"rank\": %d, \"thread\": \"main\", \"cpuset\": \"", r);
      const char *at = strstr(json, want);
      CHECK(at != NULL, "report lacks rank %d: %s", r, json);
      if (!at)
        continue;
      snprintf(want, sizeof want, "\"numa\": %d, \"gpu\": \"%s\"}", numa[r], bus[r]);
      const char *end = strchr(at, '}');
      CHECK(end && strstr(at, want) == end + 1 - strlen(want), "rank %d: want %s in %s", r,
            want, json);
    }
  }
  free(json);
  cpdl__pin_free(pin);
}

int main(int argc, char **argv) {
  cpdl_test_init(&argc, &argv);
  int cp = argc > 1 ? atoi(argv[1]) : 1;
  const char *mode = argc > 2 ? argv[2] : "nobind";

  /* What this process may use; with "bind", one CPU of it per rank. */
  cpu_set_t allowed;
  sched_getaffinity(0, sizeof allowed, &allowed);
  int world_rank = cpdl_test_world_rank();
  if (!strcmp(mode, "bindfirst") && CPU_COUNT(&allowed) > 1) {
    for (int cpu = 0; cpu < CPU_SETSIZE && avoid_cpu < 0; cpu++)
      if (CPU_ISSET(cpu, &allowed))
        avoid_cpu = cpu;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(avoid_cpu, &one);
    CHECK(sched_setaffinity(0, sizeof one, &one) == 0, "bind to CPU %d", avoid_cpu);
  }
  if (!strcmp(mode, "bind")) {
    int n = CPU_COUNT(&allowed), k = world_rank % n;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
      if (CPU_ISSET(cpu, &allowed) && k-- == 0) {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        CHECK(sched_setaffinity(0, sizeof one, &one) == 0, "bind to CPU %d", cpu);
        break;
      }
    }
  }
  cpu_set_t mine;
  sched_getaffinity(0, sizeof mine, &mine);
  char main_binding[256];
  affinity_list(&mine, main_binding, sizeof main_binding);

  cpdl__mesh_t mesh;
  int rc = cpdl__mesh_build(cpdl_test_ctl(), NULL, cp, 1, "dp,cp,tp", &mesh);
  CHECK(rc == 0, "mesh: %s", cpdl_last_error());
  if (rc == 0) {
    int leader = mesh.is_leader, n_leaders = 0;
    MPI_Allreduce(&leader, &n_leaders, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (!strcmp(mode, "xml")) {
      run_xml(&mesh);
    } else {
      hwloc_topology_t topo;
      hwloc_topology_init(&topo);
      hwloc_topology_load(topo);
      char last_cpu[32];
      int last = -1;
      for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
        if (CPU_ISSET(cpu, &allowed))
          last = cpu;
      snprintf(last_cpu, sizeof last_cpu, "cores:%d", last);
      const char *policies[] = {"auto", "numa", last_cpu, "none"};
      for (size_t i = 0; i < sizeof policies / sizeof *policies; i++)
        run_policy(&mesh, topo, policies[i], main_binding, n_leaders);

      /* A cores list naming a CPU that is not there fails on every rank. */
      cpdl__pin_t *pin = NULL;
      rc = cpdl__pin_setup(&mesh, "cores:0,4095", N_THREADS, &pin);
      CHECK(rc == CPDL_EARG, "cores:0,4095 gave %s: %s", cpdl_err_name(rc), cpdl_last_error());
      CHECK(pin == NULL, "a failed setup left a pin");
      CHECK(strstr(cpdl_last_error(), "4095") != NULL, "message: %s", cpdl_last_error());
      rc = cpdl__pin_setup(&mesh, "cores:", N_THREADS, &pin);
      CHECK(rc == CPDL_EARG, "cores: gave %s", cpdl_err_name(rc));
      hwloc_topology_destroy(topo);
    }
    cpdl__mesh_free(&mesh);
  }
  int code = cpdl_test_finish();
  MPI_Finalize();
  return code;
}
