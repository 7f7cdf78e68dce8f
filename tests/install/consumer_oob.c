/* consumer_oob.c — a C program on its own control plane: includes <cpdl.h>
 * without MPI's include path (so the loader layer must not need <mpi.h>),
 * supplies a one-process out-of-band allgather, opens a loader on the
 * synthetic source, takes every step and closes. Built by cpdl's own tests
 * (unit.layer_loader_oob) against the build tree's libcpdl.so.
 */
#include <cpdl.h>

#include <stdio.h>
#include <string.h>

#ifdef CPDL_LOADER_MPI_H
#error "<cpdl.h> reached cpdl/loader_mpi.h (and <mpi.h>) without MPI's include path"
#endif

static int fail(const char *what) {
  fprintf(stderr, "consumer_oob: %s (%s)\n", what, cpdl_last_error());
  return 1;
}

/* One endpoint: gathering is copying. The request is done at once. */
static int allgather(const void *sbuf, void *rbuf, size_t msglen, void *coll_info, void **req) {
  (void)coll_info;
  memcpy(rbuf, sbuf, msglen);
  *req = rbuf;
  return CPDL_OOB_OK;
}
static int req_test(void *req) { return req ? CPDL_OOB_OK : -1; }
static int req_free(void *req) { (void)req; return CPDL_OOB_OK; }

int main(void) {
  cpdl_oob_t oob = {.struct_size = sizeof oob, .allgather = allgather, .req_test = req_test,
                    .req_free = req_free, .coll_info = NULL, .n_oob_eps = 1, .oob_ep = 0};
  cpdl_config_t cfg;
  cpdl_config_init(&cfg);
  if (cpdl_config_parse(&cfg, "source=synthetic:?seed=3 seq_len=64 batch=2 steps=3 pin=none"))
    return fail("config");
  cpdl_loader_t *loader = NULL;
  if (cpdl_loader_open_oob(&oob, NULL, &cfg, &loader))
    return fail("open over the caller's allgather");
  int steps = 0, rc;
  cpdl_batch_t batch;
  while ((rc = cpdl_loader_next(loader, &batch)) == 0) {
    const cpdl_view_field_t *ids = NULL;
    for (int i = 0; i < batch.n_fields; i++)
      if (strcmp(batch.fields[i].name, "input_ids") == 0)
        ids = &batch.fields[i];
    if (!ids || ids->ndim != 2 || ids->shape[0] != 2 || ids->shape[1] != 64 || !ids->data)
      return fail("step without a [2, 64] input_ids view");
    if (batch.step != (uint64_t)steps || cpdl_last_error()[0])
      return fail("wrong step, or a message left by a successful next()");
    if (cpdl_batch_release(loader, &batch))
      return fail("release");
    steps++;
  }
  if (rc != CPDL_EEOF || steps != 3)
    return fail("the run did not end with CPDL_EEOF after 3 steps");
  if (cpdl_loader_close(loader))
    return fail("close");
  printf("consumer_oob: ok (%d steps without <mpi.h>)\n", steps);
  return 0;
}
