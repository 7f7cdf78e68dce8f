/* fault.c — deterministic fault injection for the reliability and chaos tests.
 *
 * CPDL_FAULT="<point>:<rank>[:error|:stop|:eof][@<pass>]" (rank may be "*")
 * makes cpdl__fault() raise SIGKILL — return CPDL_EFAULT with ":error", raise
 * SIGSTOP with ":stop" (the process stops in place until someone sends
 * SIGCONT), return CPDL_EEOF with ":eof" (at `waiting`, next() ends this
 * rank's data early, which no real end does; elsewhere it fails like :error)
 * — when the named point is reached on that world rank, the first time or,
 * with "@<pass>", the pass-th time (1-based, counted per process).
 * The variable is parsed once per process (pthread_once), so the check on hot
 * paths is a string compare at most; passes are counted atomically (the
 * mid_fill point is reached from a loader thread). Before firing it prints
 * one line to stderr with the wall-clock time, so a harness can measure how
 * long the survivors take to name it.
 */
#include "internal.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum fault_action { FAULT_KILL, FAULT_ERROR, FAULT_STOP, FAULT_EOF };

static struct {
  bool armed;
  bool any_rank;
  enum fault_action action;
  int rank;
  long pass; /* fire on this pass (1 = the first) */
  atomic_long passes;
  char point[64];
} fault;
static pthread_once_t fault_once = PTHREAD_ONCE_INIT;

static void fault_parse(void) {
  const char *spec = getenv("CPDL_FAULT");
  if (!spec || !spec[0])
    return;
  char buf[128];
  if (strlen(spec) >= sizeof buf)
    goto malformed;
  strcpy(buf, spec);
  fault.pass = 1;
  char *pass_text = strchr(buf, '@');
  if (pass_text) {
    *pass_text++ = '\0';
    char *end;
    long pass = strtol(pass_text, &end, 10);
    if (end == pass_text || *end || pass < 1 || pass > 1L << 40)
      goto malformed;
    fault.pass = pass;
  }
  char *rank_text = strchr(buf, ':');
  if (!rank_text || rank_text == buf || (size_t)(rank_text - buf) >= sizeof fault.point)
    goto malformed;
  *rank_text++ = '\0';
  char *mode = strchr(rank_text, ':');
  fault.action = FAULT_KILL;
  if (mode) {
    *mode++ = '\0';
    if (strcmp(mode, "error") == 0)
      fault.action = FAULT_ERROR;
    else if (strcmp(mode, "stop") == 0)
      fault.action = FAULT_STOP;
    else if (strcmp(mode, "eof") == 0)
      fault.action = FAULT_EOF;
    else
      goto malformed;
  }
  if (strcmp(rank_text, "*") == 0) {
    fault.any_rank = true;
  } else {
    char *end;
    long rank = strtol(rank_text, &end, 10);
    if (end == rank_text || *end || rank < 0 || rank > 1 << 30)
      goto malformed;
    fault.rank = (int)rank;
  }
  strcpy(fault.point, buf);
  fault.armed = true;
  return;
malformed:
  /* A test-only knob: say it once rather than silently testing nothing. */
  fprintf(stderr, "cpdl: ignoring malformed CPDL_FAULT='%s' (expected "
          "<point>:<rank>[:error|:stop|:eof][@<pass>])\n", spec);
}

int cpdl__fault(const char *point, int world_rank) {
  pthread_once(&fault_once, fault_parse);
  if (!fault.armed || strcmp(point, fault.point) != 0 ||
      (!fault.any_rank && world_rank != fault.rank))
    return 0;
  if (atomic_fetch_add(&fault.passes, 1) + 1 != fault.pass)
    return 0;
  static const char *const action_names[] = {"SIGKILL", "error", "SIGSTOP", "eof"};
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  fprintf(stderr, "cpdl: CPDL_FAULT fires: %s at point '%s' pass %ld on rank %d, time %lld.%06ld\n",
          action_names[fault.action], point, fault.pass, world_rank, (long long)now.tv_sec,
          now.tv_nsec / 1000);
  fflush(stderr);
  switch (fault.action) {
  case FAULT_ERROR:
    return cpdl__error(CPDL_EFAULT, "injected fault at point '%s' on rank %d (CPDL_FAULT)", point,
                       world_rank);
  case FAULT_EOF:
    return cpdl__error(CPDL_EEOF, "injected end of data at point '%s' on rank %d (CPDL_FAULT)",
                       point, world_rank);
  case FAULT_STOP:
    raise(SIGSTOP);
    return 0; /* continued: carry on as if nothing happened */
  case FAULT_KILL:
    break;
  }
  raise(SIGKILL);
  return CPDL_EFAULT; /* not reached */
}
