/* loader_resume.c — exact resume through the library: run A delivers steps
 * 0..N-1 and saves the state after step K-1; run B restores it and must
 * deliver steps K..N-1 with views identical, byte for byte, to run A's (a
 * hash of every field per step and rank). With steps of >= 4 MiB and
 * threads=2 the leader is pipelined (step k+1 collated during step k), so
 * this also proves the cursor saved with each step is the one before the
 * look-ahead.
 *
 * usage: mpi_loader_resume "<key=value ...>"
 */
#include "internal.h"
#include "mpi_test.h"

#include <stdlib.h>
#include <string.h>

#define N_STEPS 12
#define K_RESUME 5

static uint64_t fnv(uint64_t h, const void *data, size_t n) {
  const unsigned char *p = data;
  for (size_t i = 0; i < n; i++)
    h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

/* Deliver steps until EOF; hashes[step] = hash of the rank's view. */
static void run(const cpdl_config_t *cfg, const cpdl_state_t *restore, cpdl_state_t *save_at_k,
                uint64_t *hashes, int *first_step) {
  cpdl_loader_t *loader = NULL;
  int rc = cpdl_loader_open(MPI_COMM_WORLD, cfg, &loader);
  CHECK(rc == 0, "open: %s", cpdl_last_error());
  if (rc)
    return;
  if (restore)
    CHECK(cpdl_loader_state_restore(loader, restore) == 0, "restore: %s", cpdl_last_error());
  *first_step = -1;
  cpdl_batch_t b;
  while ((rc = cpdl_loader_next(loader, &b)) == 0) {
    if (*first_step < 0)
      *first_step = (int)b.step;
    uint64_t h = 1469598103934665603ull;
    for (int f = 0; f < b.n_fields; f++) {
      h = fnv(h, b.fields[f].name, strlen(b.fields[f].name));
      h = fnv(h, b.fields[f].data, b.fields[f].nbytes);
    }
    if (b.step < N_STEPS)
      hashes[b.step] = h;
    CHECK(cpdl_batch_release(loader, &b) == 0, "release: %s", cpdl_last_error());
    if (save_at_k && b.step == K_RESUME - 1)
      CHECK(cpdl_loader_state_save(loader, save_at_k) == 0, "save: %s", cpdl_last_error());
  }
  CHECK(rc == CPDL_EEOF, "run ended with %s: %s", cpdl_err_name(rc), cpdl_last_error());
  CHECK(cpdl_loader_close(loader) == 0, "close: %s", cpdl_last_error());
}

int main(int argc, char **argv) {
  cpdl_test_init(&argc, &argv);
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  cpdl_config_t cfg;
  cpdl_config_init(&cfg);
  cfg.cp = size;
  cfg.steps = N_STEPS;
  if (argc > 1 && cpdl_config_parse(&cfg, argv[1]))
    CHECK(0, "config: %s", cpdl_last_error());
  uint64_t a[N_STEPS] = {0}, b[N_STEPS] = {0};
  cpdl_state_t state;
  memset(&state, 0, sizeof state);
  int first_a = -1, first_b = -1;
  run(&cfg, NULL, &state, a, &first_a);
  CHECK(state.words[0] == K_RESUME, "saved state is at step %llu, expected %d",
        (unsigned long long)state.words[0], K_RESUME);
  run(&cfg, &state, NULL, b, &first_b);
  CHECK(first_a == 0 && first_b == K_RESUME, "runs started at steps %d and %d", first_a, first_b);
  for (int s = K_RESUME; s < N_STEPS; s++)
    CHECK(a[s] == b[s] && a[s] != 0, "step %d differs after resume", s);
  int code = cpdl_test_finish();
  MPI_Finalize();
  return code;
}
