/* loader_binding.c — the loader's own threads are bound where the placement
 * plan says: after the first next() the leader finds its threads by name
 * (cpdl-loader<t> in /proc/self/task/<tid>/comm) and compares each one's
 * kernel affinity (Cpus_allowed_list) with the plan's cpuset for it.
 *
 * usage: mpi_loader_binding "<key=value ...>" [running threads]
 *   e.g. "threads=2 pin=auto seq_len=256K"; the optional count says how many
 *   loader threads must run (default: threads): steps under 4 MiB use one.
 */
#include "internal.h"
#include "mpi_test.h"

#include <dirent.h>
#include <hwloc.h>
#include <stdlib.h>
#include <string.h>

/* The affinity of thread `tid` as an hwloc bitmap. */
static hwloc_bitmap_t task_affinity(const char *tid) {
  char path[400], line[512];
  snprintf(path, sizeof path, "/proc/self/task/%s/status", tid);
  FILE *f = fopen(path, "r");
  hwloc_bitmap_t set = NULL;
  while (f && fgets(line, sizeof line, f)) {
    if (strncmp(line, "Cpus_allowed_list:", 18) == 0) {
      const char *list = line + 18;
      while (*list == ' ' || *list == '\t')
        list++;
      list = strndup(list, strcspn(list, "\n"));
      set = hwloc_bitmap_alloc();
      hwloc_bitmap_list_sscanf(set, list);
      free((void *)list);
    }
  }
  if (f)
    fclose(f);
  return set;
}

/* Find the thread named `name`; copy its tid. */
static int find_task(const char *name, char *tid, size_t size) {
  DIR *dir = opendir("/proc/self/task");
  struct dirent *e;
  int found = 0;
  while (dir && !found && (e = readdir(dir)) != NULL) {
    if (e->d_name[0] == '.')
      continue;
    char path[300], comm[64] = "";
    snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
    FILE *f = fopen(path, "r");
    if (f && fgets(comm, sizeof comm, f)) {
      comm[strcspn(comm, "\n")] = '\0';
      if (strcmp(comm, name) == 0) {
        snprintf(tid, size, "%s", e->d_name);
        found = 1;
      }
    }
    if (f)
      fclose(f);
  }
  if (dir)
    closedir(dir);
  return found;
}

int main(int argc, char **argv) {
  cpdl_test_init(&argc, &argv);
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  cpdl_config_t cfg;
  cpdl_config_init(&cfg);
  cfg.cp = size;
  cfg.seq_len = 4096; /* tests pass a larger seq_len: >= 4 MiB steps use all threads */
  cfg.steps = 1000; /* the loader threads stay alive (waiting for free slots) */
  if (argc > 1 && cpdl_config_parse(&cfg, argv[1]))
    CHECK(0, "config: %s", cpdl_last_error());
  int running = argc > 2 ? atoi(argv[2]) : cfg.threads;
  cpdl_loader_t *loader = NULL;
  int rc = cpdl_loader_open(MPI_COMM_WORLD, &cfg, &loader);
  CHECK(rc == 0, "open: %s", cpdl_last_error());
  if (rc)
    return cpdl_test_finish();
  cpdl_mesh_coords_t me;
  cpdl_loader_mesh(loader, &me);
  cpdl_batch_t batch;
  rc = cpdl_loader_next(loader, &batch); /* starts the leader's threads */
  CHECK(rc == 0, "next: %s", cpdl_last_error());
  if (me.group_rank == 0) {
    hwloc_bitmap_t process = hwloc_bitmap_alloc();
    hwloc_topology_t topo;
    hwloc_topology_init(&topo);
    hwloc_topology_load(topo);
    hwloc_get_cpubind(topo, process, HWLOC_CPUBIND_PROCESS);
    for (int t = running; t < cfg.threads; t++) {
      char name[32], tid[300];
      snprintf(name, sizeof name, "cpdl-loader%d", t);
      CHECK(!find_task(name, tid, sizeof tid), "%s runs, but only %d thread(s) should", name,
            running);
    }
    for (int t = 0; t < running; t++) {
      char name[32], tid[300], planned[256];
      snprintf(name, sizeof name, "cpdl-loader%d", t);
      CHECK(find_task(name, tid, sizeof tid), "no thread named %s in the leader", name);
      cpdl__pin_thread_cpuset(cpdl__loader_pin(loader), t, planned, sizeof planned);
      hwloc_bitmap_t want = hwloc_bitmap_alloc(), got = task_affinity(tid);
      if (planned[0])
        hwloc_bitmap_list_sscanf(want, planned);
      else
        hwloc_bitmap_copy(want, process); /* left unbound: the process's set */
      char got_text[256] = "?";
      if (got)
        hwloc_bitmap_list_snprintf(got_text, sizeof got_text, got);
      CHECK(got && hwloc_bitmap_isequal(want, got), "%s is bound to %s, the plan says '%s'",
            name, got_text, planned);
      printf("rank %d %s: plan '%s', kernel affinity %s\n", me.world_rank, name, planned,
             got_text);
      hwloc_bitmap_free(want);
      if (got)
        hwloc_bitmap_free(got);
    }
    hwloc_bitmap_free(process);
    hwloc_topology_destroy(topo);
  }
  if (rc == 0)
    cpdl_batch_release(loader, &batch);
  CHECK(cpdl_loader_close(loader) == 0, "close: %s", cpdl_last_error());
  int code = cpdl_test_finish();
  MPI_Finalize();
  return code;
}
