/* mpi_test.h — shared helpers for the MPI scenarios in tests/mpi/.
 *
 * Each rank records its own failures with CHECK(); cpdl_test_finish() combines
 * the verdicts of all ranks with MPI_Allreduce so that one failing rank fails
 * the whole test, and rank 0 prints the single "mpi test: PASS/FAIL" line.
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

#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int cpdl_test_failures;   /* failed CHECKs on this rank */
static int cpdl_test_rank = -1;  /* rank in MPI_COMM_WORLD, -1 before init */

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
}

/* CHECK(cond) or CHECK(cond, "printf format", args...): records a failure on
 * this rank (never stops the test, so that every rank reaches the collective
 * calls that follow). */
#define CHECK(cond, ...) \
  cpdl_test_check(!!(cond), #cond, __FILE__, __LINE__, "" __VA_ARGS__)

/* List /dev/shm entries whose name starts with "cpdl-" on stderr (tagged with
 * `tag` and the rank) and return how many there are. */
static inline int cpdl_test_shm_residue(const char *tag) {
  DIR *dir = opendir("/dev/shm");
  if (!dir)
    return 0;
  int count = 0;
  struct dirent *entry;
  while ((entry = readdir(dir)) != NULL) {
    if (strncmp(entry->d_name, "cpdl-", 5) != 0)
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
