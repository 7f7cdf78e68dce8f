/* config_mismatch.c — MPI scenario: cpdl__config_agree (RELIABILITY R17).
 *
 * Equal configurations agree; when ranks differ, every rank gets
 * CPDL_ECONFIG naming the first differing key in canonical order, two of its
 * values and a rank holding each.
 */
#include "internal.h"
#include "mpi_test.h"
#include "ctl_test.h"

#include <stdio.h>
#include <string.h>

static int rank, size;

/* Run agree on cfg; expect rc and, on error, every needle in the message. */
static void expect(const cpdl_config_t *cfg, int want, const char *case_name, const char *n1,
                   const char *n2, const char *n3) {
  cpdl__error_clear();
  int rc = cpdl__config_agree(cpdl_test_world(), cfg);
  CHECK(rc == want, "%s: got %s, want %s (%s)", case_name, cpdl_err_name(rc), cpdl_err_name(want),
        cpdl_last_error());
  const char *needles[] = {n1, n2, n3};
  for (int i = 0; i < 3; i++)
    if (needles[i])
      CHECK(strstr(cpdl_last_error(), needles[i]) != NULL, "%s: '%s' not in '%s'", case_name,
            needles[i], cpdl_last_error());
  /* The verdict is the same on every rank. */
  int lo = rc, hi = rc;
  MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  CHECK(lo == hi, "%s: ranks disagree (%d .. %d)", case_name, lo, hi);
}

int main(int argc, char **argv) {
  cpdl_test_init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  char want[96], want2[96];

  /* 1. Same configuration, spelled differently on some ranks. */
  cpdl_config_t cfg;
  cpdl_config_init(&cfg);
  CHECK(cpdl_config_parse(&cfg, rank % 2 ? "seq_len=8K cp=2" : "cp=2 seq_len=8192") == 0, "parse");
  expect(&cfg, 0, "equal", NULL, NULL, NULL);

  if (size >= 2) {
    /* 2. The last rank has another seq_len. */
    cpdl_config_init(&cfg);
    if (rank == size - 1)
      cpdl_config_set(&cfg, "seq_len", "8192");
    snprintf(want, sizeof want, "8192 on rank %d", size - 1);
    expect(&cfg, CPDL_ECONFIG, "seq_len", "key 'seq_len'", "4096 on rank 0", want);

    /* 3. Two keys differ on different ranks: the first in canonical order
     * (seq_len before slots) is named, whichever rank holds it. */
    cpdl_config_init(&cfg);
    if (rank == 1)
      cpdl_config_set(&cfg, "slots", "8");
    if (rank == size - 1)
      cpdl_config_set(&cfg, "seq_len", "2K");
    snprintf(want, sizeof want, "2048 on rank %d", size - 1);
    expect(&cfg, CPDL_ECONFIG, "two keys", "key 'seq_len'", want, NULL);

    /* 4. Rank 0 is the odd one out; the lowest other rank is named. */
    cpdl_config_init(&cfg);
    if (rank == 0)
      cpdl_config_set(&cfg, "mode", "round_robin");
    expect(&cfg, CPDL_ECONFIG, "rank 0 differs", "key 'mode'", "round_robin on rank 0",
           "contiguous on rank 1");

    /* 5. A key late in the order differs on a low rank, an early one on a
     * high rank: the early key wins. */
    cpdl_config_init(&cfg);
    if (rank == 1)
      cpdl_config_set(&cfg, "timeout_ms", "100");
    if (rank == size - 1)
      cpdl_config_set(&cfg, "tp", "2");
    snprintf(want2, sizeof want2, "2 on rank %d", size - 1);
    expect(&cfg, CPDL_ECONFIG, "late and early", "key 'tp'", "is 1 on rank 0", want2);
  }

  int code = cpdl_test_finish();
  MPI_Finalize();
  return code;
}
