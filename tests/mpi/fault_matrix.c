/* fault_matrix.c — one cell of the fault-injection matrix (docs/reliability.md
 * R3, R5, R6, R7, R8): CPDL_FAULT=<point>:<victim>[:error] is set here, then
 * every rank opens a loader and takes steps until something fails.
 *
 *  kill:  the victim dies by SIGKILL at <point>. Under mpirun --enable-recovery
 *         every survivor must get CPDL_EPEER naming the victim within 10 s,
 *         from open (points inside it: the watched collectives), restore
 *         (point "restoring"), close (point "closing") or next. Under plain
 *         mpirun, mpirun may end the job first. What is left in /dev/shm of
 *         a dead creator is checked by tests/reliability/fault_matrix.sh.
 *  Points "restoring" and "closing" make every rank call restore (with the
 *  state saved right after open) or close (after 3 steps).
 *  error: the victim returns CPDL_EFAULT at <point>; every rank must get the
 *         same error (naming the point and the victim), then close normally.
 *
 * Every rank prints "fault matrix: rank R pid P" first and its own verdict
 * "fault matrix: rank R PASS|FAIL ..." last (no collective completes after a
 * death). Only segments named after this job's pids are checked, so jobs of
 * other users of /dev/shm do not disturb the verdict.
 *
 * usage: mpi_fault_matrix <point> <victim world rank> kill|error
 *        ["[CPDL_RANKS_PER_NODE=<k>] k=v ..."]
 */
#include "internal.h"
#include "mpi_test.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_STEPS 200
#define BOUND_S 10.0

/* /dev/shm entries created by any process of this job. */
static int job_segments(const int32_t *pids, int n) {
  int count = 0;
  for (int i = 0; i < n; i++) {
    char prefix[64];
    snprintf(prefix, sizeof prefix, "cpdl-%u-%d-", (unsigned)geteuid(), (int)pids[i]);
    DIR *dir = opendir("/dev/shm");
    if (!dir)
      return 0;
    struct dirent *ent;
    while ((ent = readdir(dir)) != NULL)
      if (strncmp(ent->d_name, prefix, strlen(prefix)) == 0) {
        fprintf(stderr, "[rank %d] leftover /dev/shm/%s\n", cpdl_test_world_rank(), ent->d_name);
        count++;
      }
    closedir(dir);
  }
  return count;
}

int main(int argc, char **argv) {
  if (argc < 4 || (strcmp(argv[3], "kill") != 0 && strcmp(argv[3], "error") != 0)) {
    fprintf(stderr, "usage: mpi_fault_matrix <point> <victim> kill|error [config]\n");
    return 2;
  }
  const char *point = argv[1];
  int victim = atoi(argv[2]);
  bool as_error = strcmp(argv[3], "error") == 0;
  char spec[128];
  snprintf(spec, sizeof spec, "%s:%d%s", point, victim, as_error ? ":error" : "");
  setenv("CPDL_FAULT", spec, 1); /* read once, at the first cpdl__fault() */

  cpdl_test_init(&argc, &argv);
  int rank = cpdl_test_world_rank(), size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int32_t pid = (int32_t)getpid(), *pids = calloc((size_t)size, sizeof *pids);
  MPI_Allgather(&pid, 1, MPI_INT32_T, pids, 1, MPI_INT32_T, MPI_COMM_WORLD);
  printf("fault matrix: rank %d pid %d\n", rank, (int)pid);
  fflush(stdout);

  cpdl_config_t cfg;
  cpdl_config_init(&cfg);
  cfg.steps = 1000000;
  cfg.seq_len = 4096;
  cfg.cp = size;
  cfg.timeout_ms = 30000; /* a hang shows up as a timeout error, not a stuck test */
  /* "CPDL_RANKS_PER_NODE=<k> <config>": fake nodes (read by the mesh at open). */
  const char *config = argc > 4 ? argv[4] : "";
  if (strncmp(config, "CPDL_RANKS_PER_NODE=", 20) == 0) {
    char k[16];
    snprintf(k, sizeof k, "%.*s", (int)strcspn(config + 20, " "), config + 20);
    setenv("CPDL_RANKS_PER_NODE", k, 1);
    config += 20 + strlen(k);
  }
  if (cpdl_config_parse(&cfg, config))
    CHECK(0, "config: %s", cpdl_last_error());

  char victim_text[32];
  snprintf(victim_text, sizeof victim_text, "rank %d", victim);
  MPI_Barrier(MPI_COMM_WORLD);
  double t0 = cpdl_test_now_s();
  cpdl_loader_t *loader = NULL;
  int rc = cpdl_loader_open(MPI_COMM_WORLD, &cfg, &loader);
  const char *where = "open";
  int steps = 0;
  if (rc == 0 && strcmp(point, "restoring") == 0) {
    where = "restore";
    char state[4096];
    size_t used = 0;
    rc = cpdl_loader_state_save(loader, state, sizeof state, &used);
    CHECK(rc == 0, "save: %s", cpdl_last_error());
    rc = cpdl_loader_state_restore(loader, state, used);
  } else if (rc == 0 && strcmp(point, "closing") == 0) {
    where = "close";
    for (; steps < 3 && rc == 0; steps++) {
      cpdl_batch_t batch;
      rc = cpdl_loader_next(loader, &batch);
      if (rc == 0)
        rc = cpdl_batch_release(loader, &batch);
    }
    CHECK(rc == 0, "steps before close: %s", cpdl_last_error());
    rc = cpdl_loader_close(loader);
    loader = NULL;
  } else if (rc == 0) {
    where = "next";
    for (; steps < MAX_STEPS; steps++) {
      cpdl_batch_t batch;
      rc = cpdl_loader_next(loader, &batch);
      if (rc)
        break;
      rc = cpdl_batch_release(loader, &batch);
      CHECK(rc == 0, "release: %s", cpdl_last_error());
    }
  }
  double waited = cpdl_test_now_s() - t0;
  char why[1024];
  snprintf(why, sizeof why, "%s", rc ? cpdl_last_error() : "no error");

  CHECK(rc != 0, "the fault at '%s' never fired (%d steps)", point, steps);
  CHECK(waited < BOUND_S, "the error took %.1f s (bound %.0f s)", waited, BOUND_S);
  if (as_error) {
    /* R3 and friends: the same error on every rank, naming point and rank. */
    CHECK(rc == CPDL_EFAULT, "expected CPDL_EFAULT, got %s: %s", cpdl_err_name(rc), why);
    CHECK(strstr(why, point) != NULL, "message does not name the point '%s': %s", point, why);
    CHECK(strstr(why, victim_text) != NULL, "message does not name %s: %s", victim_text, why);
    if (loader) {
      int close_rc = cpdl_loader_close(loader);
      CHECK(close_rc == 0, "close after an injected error: %s", cpdl_last_error());
    }
    MPI_Barrier(MPI_COMM_WORLD); /* every segment closed before looking */
    CHECK(job_segments(pids, size) == 0, "segments left in /dev/shm");
    printf("fault matrix: rank %d %s in %s after %.2f s: %s\n", rank,
           cpdl_test_failures ? "FAIL" : "PASS", where, waited, why);
    fflush(stdout);
    int code = cpdl_test_finish();
    free(pids);
    MPI_Finalize();
    return code;
  }

  /* kill: only survivors get here; no collective can complete any more. */
  CHECK(rc == CPDL_EPEER, "expected CPDL_EPEER, got %s: %s", cpdl_err_name(rc), why);
  strcat(victim_text, " ");
  CHECK(strstr(why, victim_text) != NULL, "message does not name %s: %s", victim_text, why);
  if (loader) {
    cpdl_batch_t again;
    CHECK(cpdl_loader_next(loader, &again) == CPDL_EPEER, "next after a death must fail again");
    CHECK(cpdl_loader_close(loader) == CPDL_EPEER, "close after a death: %s", cpdl_last_error());
  }
  /* This survivor created nothing that remains (a living leader unlinked
   * its segment, in open or in its failed open's cleanup). A dead
   * creator's segment, and the job as a whole, the script checks once every
   * rank has ended. */
  CHECK(job_segments(&pid, 1) == 0, "segments left in /dev/shm");
  printf("fault matrix: rank %d %s in %s after %.2f s (%d steps): %s\n", rank,
         cpdl_test_failures ? "FAIL" : "PASS", where, waited, steps, why);
  fflush(stdout);
  free(pids);
  _exit(cpdl_test_failures ? 1 : 0); /* MPI_Finalize could wait for the dead rank */
}
