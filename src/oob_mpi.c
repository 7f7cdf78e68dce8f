/* oob_mpi.c — the default control plane: a cpdl_oob_t whose allgather is
 * MPI_Iallgather on a dup of the caller's communicator (mpirun, srun
 * --mpi=pmix). cpdl_loader_open builds one; tests and the CLI use it too.
 *
 * Invariants: the dup carries MPI_ERRORS_RETURN, so a failure is a return
 * code with MPI's message, never an abort. A request is a heap MPI_Request;
 * req_free frees it only after MPI_Test said done (an abandoned one leaks).
 */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

typedef struct mpi_info {
  MPI_Comm comm;
} mpi_info_t;

static int mpi_failed(const char *call, int mrc) {
  char text[MPI_MAX_ERROR_STRING] = "";
  int len = 0;
  MPI_Error_string(mrc, text, &len);
  return cpdl__error(CPDL_EMPI, "%s failed: %s", call, text);
}

static int mpi_allgather(const void *sbuf, void *rbuf, size_t msglen, void *coll_info,
                         void **req) {
  mpi_info_t *info = coll_info;
  *req = NULL;
  if (msglen > INT_MAX)
    return cpdl__error(CPDL_EOVERFLOW, "MPI_Iallgather of %zu bytes per rank is over INT_MAX",
                       msglen);
  MPI_Request *r = malloc(sizeof *r);
  if (!r)
    return cpdl__error(-ENOMEM, "out of memory for an MPI request");
  int mrc = MPI_Iallgather(sbuf, (int)msglen, MPI_BYTE, rbuf, (int)msglen, MPI_BYTE, info->comm, r);
  if (mrc != MPI_SUCCESS) {
    free(r);
    return mpi_failed("MPI_Iallgather", mrc);
  }
  *req = r;
  return CPDL_OOB_OK;
}

static int mpi_req_test(void *req) {
  int done = 0;
  int mrc = MPI_Test(req, &done, MPI_STATUS_IGNORE);
  if (mrc != MPI_SUCCESS)
    return mpi_failed("MPI_Test", mrc);
  return done ? CPDL_OOB_OK : CPDL_OOB_INPROGRESS;
}

static int mpi_req_free(void *req) {
  free(req);
  return CPDL_OOB_OK;
}

int cpdl__oob_mpi_create(MPI_Comm comm, cpdl_oob_t *out) {
  memset(out, 0, sizeof *out);
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized)
    return cpdl__error(CPDL_EMPI, "MPI is %s; call MPI_Init before cpdl_loader_open (or use "
                       "cpdl_loader_open_oob with another control plane)",
                       finalized ? "already finalized" : "not initialized");
  mpi_info_t *info = malloc(sizeof *info);
  if (!info)
    return cpdl__error(-ENOMEM, "out of memory for the MPI control plane");
  int mrc = MPI_Comm_dup(comm, &info->comm); /* collective: every rank joins */
  if (mrc != MPI_SUCCESS) {
    free(info);
    return mpi_failed("MPI_Comm_dup", mrc);
  }
  MPI_Comm_set_errhandler(info->comm, MPI_ERRORS_RETURN);
  int rank = 0, size = 0;
  MPI_Comm_rank(info->comm, &rank);
  MPI_Comm_size(info->comm, &size);
  *out = (cpdl_oob_t){.struct_size = sizeof(cpdl_oob_t), .allgather = mpi_allgather,
                      .req_test = mpi_req_test, .req_free = mpi_req_free, .coll_info = info,
                      .n_oob_eps = size, .oob_ep = rank};
  return 0;
}

/* Local: Open MPI's MPI_Comm_free sends nothing, so it is safe with a dead
 * member and an abandoned request. */
void cpdl__oob_mpi_free(cpdl_oob_t *oob) {
  if (!oob || oob->allgather != mpi_allgather || !oob->coll_info)
    return;
  mpi_info_t *info = oob->coll_info;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) /* nothing can be freed after MPI_Finalize */
    MPI_Comm_free(&info->comm);
  free(info);
  oob->coll_info = NULL;
}

MPI_Comm cpdl__oob_mpi_comm(const cpdl_oob_t *oob) {
  if (!oob || oob->allgather != mpi_allgather || !oob->coll_info)
    return MPI_COMM_NULL;
  return ((const mpi_info_t *)oob->coll_info)->comm;
}
