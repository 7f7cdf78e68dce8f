/* cpdl/loader_mpi.h — the loader's entry points that name MPI types: the
 * collective open on an MPI communicator and the host entry table (whose
 * open takes one). cpdl/loader.h includes this header when <mpi.h> can be
 * found (define CPDL_NO_MPI to leave it out); include it directly to get a
 * clear "mpi.h: No such file" where MPI is required.
 */
#ifndef CPDL_LOADER_MPI_H
#define CPDL_LOADER_MPI_H

#include "cpdl/loader.h"

#include <mpi.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Collective over comm. Builds the mesh, agrees on the configuration (a
 *  mismatch names the first differing key on every rank), creates and maps
 *  the group's shared segment and starts the leader's loader threads.
 *  \return the same result on every rank: 0, CPDL_EMESH, CPDL_ECONFIG,
 *          CPDL_ENOSPACE, CPDL_ESHM, CPDL_EPLUGIN, CPDL_EPEER, CPDL_EMPI, ...
 *  MPI must be initialized (MPI_THREAD_SERIALIZED or more is not required:
 *  loader threads never call MPI). The control plane is cpdl_loader_open_oob's
 *  over an MPI_Iallgather on a dup of comm. */
CPDL_API int cpdl_loader_open(MPI_Comm comm, const cpdl_config_t *cfg, cpdl_loader_t **out);
/** As cpdl_loader_open, with the trainer's layout (may be NULL), checked as
 *  in cpdl_loader_open_oob. */
CPDL_API int cpdl_loader_open_mpi(MPI_Comm comm, const cpdl_layout_t *layout,
                                  const cpdl_config_t *cfg, cpdl_loader_t **out);

/* ------------------------------------------------------------------------- */
/* Host entry point: cpdl as a data-loader plugin of a trainer or launcher    */
/* ------------------------------------------------------------------------- */

#define CPDL_HOST_ABI_VERSION 1
#define CPDL_HOST_ENTRY_SYMBOL "cpdl_host_entry_v1"

/** Function table for hosts that dlopen libcpdl.so without its headers. */
typedef struct cpdl_host_api {
  uint32_t abi_version;   /* CPDL_HOST_ABI_VERSION */
  uint32_t struct_size;   /* sizeof(cpdl_host_api_t) */
  const char *version;    /* CPDL_VERSION_STRING of the library */
  void (*config_init)(cpdl_config_t *cfg);
  int (*config_parse)(cpdl_config_t *cfg, const char *text);
  int (*loader_open)(MPI_Comm comm, const cpdl_config_t *cfg, cpdl_loader_t **out);
  int (*loader_next)(cpdl_loader_t *loader, cpdl_batch_t *out);
  int (*batch_release)(cpdl_loader_t *loader, cpdl_batch_t *batch);
  int (*loader_close)(cpdl_loader_t *loader);
  const char *(*strerror)(int err);
  const char *(*last_error)(void);
} cpdl_host_api_t;

/** The versioned entry symbol. Static table; never NULL. */
CPDL_API const cpdl_host_api_t *cpdl_host_entry_v1(void);

#ifdef __cplusplus
}
#endif
#endif /* CPDL_LOADER_MPI_H */
