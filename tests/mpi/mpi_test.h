/* mpi_test.h — shared helpers for the MPI scenarios in tests/mpi/.
 *
 * A failed CHECK() prints its message and aborts the whole job at once
 * (MPI_Abort), so a failure never waits in a collective until ctest's timeout;
 * cpdl_test_finish() combines the verdicts of all ranks with MPI_Allreduce
 * and rank 0 prints the single "mpi test: PASS/FAIL" line.
 * Header-only: every scenario is one translation unit.
 *
 * Usage:
 *   cpdl_test_init(&argc, &argv);          // MPI_Init + rank bookkeeping
 *   CHECK(rc == 0, "open: %s", cpdl_last_error());
 *   CHECK(cpdl_test_shm_residue("after close") == 0, "segments left behind");
 *   int code = cpdl_test_finish();          // collective
 *   MPI_Finalize();
 *   return code;
 */
#ifndef CPDL_MPI_TEST_H
#define CPDL_MPI_TEST_H

#include <mpi.h>

#include "cpdl.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int cpdl_test_failures;   /* failed CHECKs on this rank */
static int cpdl_test_rank = -1;  /* rank in MPI_COMM_WORLD, -1 before init */
static int *cpdl_test_pids;      /* every rank's pid (cpdl_test_init), NULL before */
static int cpdl_test_npids;

static inline int cpdl_test_world_rank(void) {
  if (cpdl_test_rank < 0) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (initialized)
      MPI_Comm_rank(MPI_COMM_WORLD, &cpdl_test_rank);
  }
  return cpdl_test_rank;
}

/* MPI_Init and remember the rank. Returns MPI_Init's result. */
static inline int cpdl_test_init(int *argc, char ***argv) {
  int rc = MPI_Init(argc, argv);
  cpdl_test_rank = -1;
  cpdl_test_world_rank();
  /* The job's pids, while every rank is alive: segment names carry their
   * creator's pid, so the residue check can look at this job's only. */
  int size = 0, pid = (int)getpid();
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  free(cpdl_test_pids);
  cpdl_test_pids = calloc((size_t)(size > 0 ? size : 1), sizeof *cpdl_test_pids);
  if (cpdl_test_pids && MPI_Allgather(&pid, 1, MPI_INT, cpdl_test_pids, 1, MPI_INT,
                                      MPI_COMM_WORLD) == MPI_SUCCESS)
    cpdl_test_npids = size;
  return rc;
}

static inline void cpdl_test_check(int ok, const char *expr, const char *file, int line,
                                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static inline void cpdl_test_check(int ok, const char *expr, const char *file, int line,
                                   const char *fmt, ...) {
  if (ok)
    return;
  char msg[1024] = "";
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  cpdl_test_failures++;
  fprintf(stderr, "[rank %d] %s:%d: CHECK(%s) failed%s%s\n", cpdl_test_world_rank(), file, line,
          expr, msg[0] ? ": " : "", msg);
  fflush(stderr);
  /* End the test now: a rank that goes on after a failed check can wait in
   * a collective its peers never reach, and the test would then end only at
   * ctest's timeout, without saying why. */
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  fprintf(stderr, "[rank %d] mpi test: FAIL (a failed check ends the test: aborting the job)\n",
          cpdl_test_world_rank());
  fflush(stderr);
  if (initialized && !finalized)
    MPI_Abort(MPI_COMM_WORLD, 1);
  _exit(1);
}

/* CHECK(cond) or CHECK(cond, "printf format", args...): on failure prints the
 * check and its message and aborts the whole job (MPI_Abort), so a failed
 * check never turns into a rank waiting in a collective until ctest's
 * timeout (also after a rank died: mpirun ends the survivors, and the
 * message says which check failed). */
#define CHECK(cond, ...) \
  cpdl_test_check(!!(cond), #cond, __FILE__, __LINE__, "" __VA_ARGS__)

/* Seconds on CLOCK_MONOTONIC: one clock for every process of the host, so
 * ranks can compare their readings. */
static inline double cpdl_test_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The loader of a failure scenario (kill_rank, leave_rank) on MPI_COMM_WORLD:
 * steps far past what the test takes, seq_len 4096, `timeout_ms` (a
 * regression shows as that timeout, not a hang), then the "key=value ..."
 * string `spec` (NULL or "": none). CHECKs each step; NULL when the
 * configuration or the open failed. */
static inline cpdl_loader_t *cpdl_test_open_long_run(int timeout_ms, const char *spec) {
  cpdl_config_t cfg;
  cpdl_config_init(&cfg);
  cfg.steps = 1000000;
  cfg.seq_len = 4096;
  cfg.timeout_ms = timeout_ms;
  if (spec && spec[0] && cpdl_config_parse(&cfg, spec)) {
    CHECK(0, "config '%s': %s", spec, cpdl_last_error());
    return NULL;
  }
  cpdl_loader_t *loader = NULL;
  int rc = cpdl_loader_open(MPI_COMM_WORLD, &cfg, &loader);
  CHECK(rc == 0, "open: %s", cpdl_last_error());
  return rc ? NULL : loader;
}

/* Whether /dev/shm entry `name` is a segment created by a process of this
 * job: "cpdl-<uid>-<pid>-<random>" with one of the job's pids (all of them
 * once cpdl_test_init ran, else this process's). Other jobs' segments — a
 * concurrent test run, a crashed earlier one — are none of this job's
 * business. */
static inline int cpdl_test_segment_is_ours(const char *name) {
  unsigned uid;
  int pid, used = 0;
  if (sscanf(name, "cpdl-%u-%d-%n", &uid, &pid, &used) != 2 || used == 0 ||
      uid != (unsigned)geteuid())
    return 0;
  if (cpdl_test_npids == 0)
    return pid == (int)getpid();
  for (int i = 0; i < cpdl_test_npids; i++)
    if (cpdl_test_pids[i] == pid)
      return 1;
  return 0;
}

/* List this job's segments left in /dev/shm on stderr (tagged with `tag`
 * and the rank) and return how many there are. */
static inline int cpdl_test_shm_residue(const char *tag) {
  DIR *dir = opendir("/dev/shm");
  if (!dir)
    return 0;
  int count = 0;
  struct dirent *entry;
  while ((entry = readdir(dir)) != NULL) {
    if (!cpdl_test_segment_is_ours(entry->d_name))
      continue;
    count++;
    fprintf(stderr, "[rank %d] %s: leftover /dev/shm/%s\n", cpdl_test_world_rank(),
            tag ? tag : "", entry->d_name);
  }
  closedir(dir);
  return count;
}

/* Collective over MPI_COMM_WORLD: combine every rank's verdict, print
 * "mpi test: PASS" or "mpi test: FAIL (n failed checks)" on rank 0 and return
 * the process exit code (0 or 1). Call before MPI_Finalize(). */
static inline int cpdl_test_finish(void) {
  int total = 0;
  if (MPI_Allreduce(&cpdl_test_failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD) !=
      MPI_SUCCESS)
    total = cpdl_test_failures > 0 ? cpdl_test_failures : 1;
  if (cpdl_test_world_rank() == 0) {
    if (total == 0)
      printf("mpi test: PASS\n");
    else
      printf("mpi test: FAIL (%d failed checks)\n", total);
    fflush(stdout);
  }
  return total == 0 ? 0 : 1;
}

#endif /* CPDL_MPI_TEST_H */
