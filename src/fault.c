/* fault.c — deterministic fault injection for the reliability tests.
 *
 * CPDL_FAULT="<point>:<rank>[:error|:stop]" (rank may be "*") makes
 * cpdl__fault() raise SIGKILL — or return CPDL_EFAULT with ":error", or stop
 * the process (SIGSTOP: alive, waiting for a SIGCONT) and carry on with
 * ":stop" — when the named point is reached on that world rank. The variable is parsed once per process
 * (pthread_once), so the check on hot paths is a string compare at most.
 */
#include "internal.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct {
  bool armed;
  bool any_rank;
  bool as_error, as_stop;
  int rank;
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
  char *rank_text = strchr(buf, ':');
  if (!rank_text || rank_text == buf || (size_t)(rank_text - buf) >= sizeof fault.point)
    goto malformed;
  *rank_text++ = '\0';
  char *mode = strchr(rank_text, ':');
  if (mode) {
    *mode++ = '\0';
    if (strcmp(mode, "error") == 0)
      fault.as_error = true;
    else if (strcmp(mode, "stop") == 0)
      fault.as_stop = true;
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
  fprintf(stderr, "cpdl: ignoring malformed CPDL_FAULT='%s' (expected <point>:<rank>[:error|:stop])\n",
          spec);
}

int cpdl__fault(const char *point, int world_rank) {
  pthread_once(&fault_once, fault_parse);
  if (!fault.armed || strcmp(point, fault.point) != 0 ||
      (!fault.any_rank && world_rank != fault.rank))
    return 0;
  if (fault.as_error)
    return cpdl__error(CPDL_EFAULT, "injected fault at point '%s' on rank %d (CPDL_FAULT)", point,
                       world_rank);
  if (fault.as_stop) {
    raise(SIGSTOP);
    return 0; /* continued */
  }
  raise(SIGKILL);
  return CPDL_EFAULT; /* not reached */
}
