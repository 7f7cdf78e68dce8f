/* reliability.c — MPI scenarios of the reliability suite that end with every
 * rank alive (docs/reliability.md R1, R9, R15, R17); the fault matrix is
 * fault_matrix.c. Each rank CHECKs its own view; cpdl_test_finish() combines.
 *
 *  cycles N ["k=v ..."]  N open/next/release/close cycles; this process's
 *                        descriptors, mappings and segments stay flat (R15);
 *                        CPDL_TEST_CYCLES=M runs min(N, M)
 *  stall SECS ["k=v"]    rank 1 stops itself (SIGSTOP) while holding a slot; a
 *                        helper child sends SIGCONT after SECS; no false death
 *                        verdict, every rank completes every step (R9)
 *  stall_named SECS ["k=v"] the same with timeout_ms=3000 < SECS: the others'
 *                        next() times out naming rank 1 as stalled (never
 *                        "leader stalled?"), and retrying then completes
 *                        every step
 *  open ERR WORD... ["k=v"] every rank's open must fail with ERR (an error
 *                        name, or OK) and a message holding each WORD; each
 *                        rank prints "reliability: rank R open: NAME: msg"
 *                        (used by the tests/reliability scripts for R1 and R17)
 */
#include "internal.h"
#include "mpi_test.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int count_lines(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f)
    return -1;
  int n = 0, c;
  while ((c = fgetc(f)) != EOF)
    n += c == '\n';
  fclose(f);
  return n;
}

static int count_fds(void) {
  DIR *dir = opendir("/proc/self/fd");
  if (!dir)
    return -1;
  int n = 0;
  while (readdir(dir) != NULL)
    n++;
  closedir(dir);
  return n;
}

/* Segments named after this process (any rank may be a leader). */
static int own_segments(void) {
  char prefix[64];
  snprintf(prefix, sizeof prefix, "cpdl-%u-%ld-", (unsigned)geteuid(), (long)getpid());
  DIR *dir = opendir("/dev/shm");
  if (!dir)
    return 0;
  int n = 0;
  struct dirent *ent;
  while ((ent = readdir(dir)) != NULL)
    n += strncmp(ent->d_name, prefix, strlen(prefix)) == 0;
  closedir(dir);
  return n;
}

static void base_config(cpdl_config_t *cfg, int size, const char *text) {
  cpdl_config_init(cfg);
  cfg->cp = size;
  cfg->seq_len = 256;
  cfg->steps = 4;
  CHECK(cpdl_config_from_env(cfg) == 0, "environment: %s", cpdl_last_error());
  if (text && text[0] && cpdl_config_parse(cfg, text))
    CHECK(0, "config '%s': %s", text, cpdl_last_error());
}

/* One open, every step, close. Returns the number of steps taken. */
static int one_run(const cpdl_config_t *cfg) {
  cpdl_loader_t *loader = NULL;
  int rc = cpdl_loader_open(MPI_COMM_WORLD, cfg, &loader);
  CHECK(rc == 0, "open: %s", cpdl_last_error());
  if (rc)
    return 0;
  int steps = 0;
  cpdl_batch_t batch;
  while ((rc = cpdl_loader_next(loader, &batch)) == 0) {
    steps++;
    CHECK(cpdl_batch_release(loader, &batch) == 0, "release: %s", cpdl_last_error());
  }
  CHECK(rc == CPDL_EEOF, "next: %s", cpdl_last_error());
  CHECK(cpdl_loader_close(loader) == 0, "close: %s", cpdl_last_error());
  return steps;
}

/* Mappings of cpdl segments: /proc/self/maps lines naming /dev/shm/cpdl-. */
static int count_segment_maps(void) {
  FILE *f = fopen("/proc/self/maps", "r");
  if (!f)
    return -1;
  char line[1024];
  int n = 0;
  while (fgets(line, sizeof line, f))
    n += strstr(line, "/dev/shm/cpdl-") != NULL;
  fclose(f);
  return n;
}

#if defined(__SANITIZE_ADDRESS__)
/* ASan's allocator maps its own regions (quarantine, size classes) as the
 * test allocates: the process's total grows by itself, so only cpdl's own
 * segment mappings must stay exactly flat. */
#define CPDL_TEST_MAPS_SLACK 128
#else
#define CPDL_TEST_MAPS_SLACK 0
#endif

/* The number of cycles to run: `given`, or fewer where CPDL_TEST_CYCLES=N
 * says so (a loaded machine; N >= 1). A leak of a descriptor, a mapping or a
 * segment in every cycle shows after one; the default count is there for the
 * leaks that are rarer than that. */
static int cycles_to_run(int given) {
  const char *env = getenv("CPDL_TEST_CYCLES");
  if (!env || !env[0])
    return given;
  char *end;
  long n = strtol(env, &end, 10);
  if (*end != '\0' || n < 1) {
    CHECK(0, "CPDL_TEST_CYCLES='%s' is not a whole number >= 1; set one, or unset it to run "
          "the %d cycles given", env, given);
    return 0;
  }
  return n < given ? (int)n : given;
}

static void scenario_cycles(int cycles, const char *text, int size) {
  cycles = cycles_to_run(cycles);
  cpdl_config_t cfg;
  base_config(&cfg, size, text);
  cfg.steps = 2;
  /* Warm up: lazily created MPI, allocator and thread-stack state. */
  for (int i = 0; i < 3; i++)
    one_run(&cfg);
  int fds = count_fds(), maps = count_lines("/proc/self/maps"), segs = own_segments();
  int seg_maps = count_segment_maps();
  double t0 = cpdl_test_now_s();
  for (int i = 0; i < cycles && cpdl_test_failures == 0; i++)
    CHECK(one_run(&cfg) == 2, "cycle %d did not deliver both steps", i);
  int fds_after = count_fds(), maps_after = count_lines("/proc/self/maps");
  int segs_after = own_segments();
  CHECK(fds_after == fds, "file descriptors went from %d to %d over %d cycles", fds, fds_after,
        cycles);
  CHECK(maps_after <= maps + CPDL_TEST_MAPS_SLACK, "mappings went from %d to %d over %d cycles",
        maps, maps_after, cycles);
  CHECK(count_segment_maps() == seg_maps, "segment mappings went from %d to %d over %d cycles",
        seg_maps, count_segment_maps(), cycles);
  CHECK(segs_after == segs, "own /dev/shm segments went from %d to %d", segs, segs_after);
  if (cpdl_test_world_rank() == 0)
    printf("reliability: %d cycles in %.2f s; fds %d -> %d, maps %d -> %d, segments %d -> %d\n",
           cycles, cpdl_test_now_s() - t0, fds, fds_after, maps, maps_after, segs, segs_after);
}

static void scenario_stall(int secs, const char *text, int size, bool named) {
  cpdl_config_t cfg;
  base_config(&cfg, size, text);
  cfg.steps = 12;
  cfg.slots = 2;
  cfg.timeout_ms = (secs + 60) * 1000; /* the stall is no timeout either */
  if (named)
    cfg.timeout_ms = 3000;
  int timeouts = 0;
  char first_timeout[1024] = "";
  int rank = cpdl_test_world_rank();
  const int stopper = 1, stop_step = 3;
  cpdl_loader_t *loader = NULL;
  int rc = cpdl_loader_open(MPI_COMM_WORLD, &cfg, &loader);
  CHECK(rc == 0, "open: %s", cpdl_last_error());
  if (rc)
    return;
  double longest = 0, stopped = 0;
  int steps = 0;
  cpdl_batch_t batch;
  for (;;) {
    double t0 = cpdl_test_now_s();
    rc = cpdl_loader_next(loader, &batch);
    double took = cpdl_test_now_s() - t0;
    if (named && rc == CPDL_ETIMEDOUT) {
      if (!timeouts++)
        snprintf(first_timeout, sizeof first_timeout, "%s", cpdl_last_error());
      continue; /* a timeout is no failure of the loader: try again */
    }
    if (rc)
      break;
    if (took > longest)
      longest = took;
    if (rank == stopper && steps == stop_step) {
      fflush(NULL);
      pid_t parent = getpid(), helper = fork();
      if (helper == 0) {
        sleep((unsigned)secs);
        kill(parent, SIGCONT);
        _exit(0);
      }
      CHECK(helper > 0, "fork failed");
      double s0 = cpdl_test_now_s();
      if (helper > 0) {
        raise(SIGSTOP); /* stalled but alive, holding this slot */
        waitpid(helper, NULL, 0);
      }
      stopped = cpdl_test_now_s() - s0;
    }
    steps++;
    CHECK(cpdl_batch_release(loader, &batch) == 0, "release: %s", cpdl_last_error());
  }
  CHECK(rc == CPDL_EEOF, "a stalled rank was taken for dead or timed out: %s: %s",
        cpdl_err_name(rc), cpdl_last_error());
  CHECK(steps == 12, "delivered %d of 12 steps", steps);
  if (named && rank != stopper && size > 1) {
    CHECK(timeouts > 0, "no CPDL_ETIMEDOUT while rank %d was stopped", stopper);
    CHECK(strstr(first_timeout, "rank 1 ") && strstr(first_timeout, "stalled") &&
          !strstr(first_timeout, "leader stalled"),
          "the timeout does not name rank 1 as the stalled one: %s", first_timeout);
    printf("reliability: rank %d: %s\n", rank, first_timeout);
  }
  if (named)
    ; /* the others' waits were cut short by their timeouts */
  else if (rank == stopper)
    CHECK(stopped >= secs - 1, "the stop lasted %.1f s, not %d s", stopped, secs);
  else if (size > 1)
    /* Proves the others really waited on the stalled rank (slots=2). */
    CHECK(longest >= secs - 3, "longest wait %.1f s: the stall was not felt", longest);
  printf("reliability: rank %d stall: %d steps, longest next() %.1f s, stopped %.1f s\n", rank,
         steps, longest, stopped);
  CHECK(cpdl_loader_close(loader) == 0, "close: %s", cpdl_last_error());
}

static void scenario_open(const char *expect, char **words, int n_words, const char *text,
                          int size) {
  cpdl_config_t cfg;
  base_config(&cfg, size, text);
  cpdl_loader_t *loader = NULL;
  int rc = cpdl_loader_open(MPI_COMM_WORLD, &cfg, &loader);
  const char *name = rc ? cpdl_err_name(rc) : "OK";
  char msg[2048];
  snprintf(msg, sizeof msg, "%s", rc ? cpdl_last_error() : "");
  printf("reliability: rank %d open: %s: %s\n", cpdl_test_world_rank(), name, msg);
  fflush(stdout);
  CHECK(strcmp(name, expect) == 0 || (strncmp(name, "CPDL_", 5) == 0 &&
                                      strcmp(name + 5, expect) == 0),
        "expected %s, got %s", expect, name);
  for (int i = 0; i < n_words; i++)
    CHECK(strstr(msg, words[i]) != NULL, "message lacks '%s': %s", words[i], msg);
  if (loader)
    CHECK(cpdl_loader_close(loader) == 0, "close: %s", cpdl_last_error());
}

int main(int argc, char **argv) {
  cpdl_test_init(&argc, &argv);
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const char *mode = argc > 1 ? argv[1] : "";
  if (strcmp(mode, "cycles") == 0 && argc > 2) {
    scenario_cycles(atoi(argv[2]), argc > 3 ? argv[3] : "", size);
  } else if (strcmp(mode, "stall") == 0 && argc > 2) {
    scenario_stall(atoi(argv[2]), argc > 3 ? argv[3] : "", size, false);
  } else if (strcmp(mode, "stall_named") == 0 && argc > 2) {
    scenario_stall(atoi(argv[2]), argc > 3 ? argv[3] : "", size, true);
  } else if (strcmp(mode, "open") == 0 && argc > 2) {
    /* Words end at an argument holding '=' (the configuration), if any. */
    int n = argc - 3;
    const char *text = "";
    if (n > 0 && strchr(argv[argc - 1], '=')) {
      text = argv[argc - 1];
      n--;
    }
    scenario_open(argv[2], argv + 3, n, text, size);
  } else {
    CHECK(0, "usage: mpi_reliability cycles N | stall SECS | stall_named SECS | open ERR WORD... [config]");
  }
  int code = cpdl_test_finish();
  MPI_Finalize();
  return code;
}
