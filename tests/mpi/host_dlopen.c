/* host_dlopen.c — cpdl loaded as a data-loader plugin by a host that does
 * not link it: dlopen(libcpdl.so), dlsym the versioned entry symbol, check
 * the ABI version and struct size, then drive a whole run through the
 * function table. Built against MPI only (no -lcpdl); cpdl.h is included
 * just for the table's type, as a host would vendor it.
 * The library path comes from CPDL_LIBRARY (set by CTest). */
#include "cpdl.h"
#include "mpi_test.h"

#include <dlfcn.h>
#include <stdlib.h>

int main(int argc, char **argv) {
  cpdl_test_init(&argc, &argv);
  const char *path = getenv("CPDL_LIBRARY");
  CHECK(path != NULL, "CPDL_LIBRARY is not set");
  void *lib = path ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
  CHECK(lib != NULL, "dlopen(%s): %s", path ? path : "(null)", dlerror());
  const cpdl_host_api_t *(*entry)(void) = NULL;
  if (lib)
    *(void **)&entry = dlsym(lib, CPDL_HOST_ENTRY_SYMBOL);
  CHECK(entry != NULL, "no %s in %s", CPDL_HOST_ENTRY_SYMBOL, path);
  const cpdl_host_api_t *api = entry ? entry() : NULL;
  CHECK(api && api->abi_version == CPDL_HOST_ABI_VERSION, "ABI version %u, expected %d",
        api ? api->abi_version : 0, CPDL_HOST_ABI_VERSION);
  CHECK(api && api->struct_size >= sizeof(cpdl_host_api_t), "table too small");
  if (api && api->abi_version == CPDL_HOST_ABI_VERSION) {
    cpdl_config_t cfg;
    api->config_init(&cfg);
    int size = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    char text[128];
    snprintf(text, sizeof text, "cp=%d seq_len=3000 steps=5", size);
    CHECK(api->config_parse(&cfg, text) == 0, "parse: %s", api->last_error());
    cpdl_loader_t *loader = NULL;
    int rc = api->loader_open(MPI_COMM_WORLD, &cfg, &loader);
    CHECK(rc == 0, "open: %s", api->last_error());
    int steps = 0;
    while (rc == 0) {
      cpdl_batch_t b;
      rc = api->loader_next(loader, &b);
      if (rc)
        break;
      CHECK(b.n_fields >= 2 && b.fields[0].shape[1] * size >= 3000, "odd view");
      api->batch_release(loader, &b);
      steps++;
    }
    CHECK(rc == CPDL_EEOF, "run ended with %s: %s", api->strerror(rc), api->last_error());
    CHECK(steps == 5, "%d steps, expected 5", steps);
    CHECK(api->loader_close(loader) == 0, "close: %s", api->last_error());
  }
  int code = cpdl_test_finish();
  MPI_Finalize();
  return code;
}
