/* tools.c — cpdl/tools.h: what cpdl's own tools need beyond the loader's
 * contract, over the internals that own each thing (shm.c's sweep, dump.c's
 * .npy writer, pin.c's report, the loader's dump, data shape and watched
 * agreement, config.c's
 * environment). Argument checks here, the work there.
 */
#include "internal.h"
#include "cpdl/tools.h"

#include <stdarg.h>
#include <stdio.h>

CPDL_API int cpdl_tools_sweep(int remove, FILE *report, int *unknown) {
  int kept = 0;
  int n = cpdl__shm_sweep(remove != 0, report, &kept);
  if (unknown)
    *unknown = kept;
  return n;
}

CPDL_API int cpdl_tools_dump_collated(cpdl_loader_t *loader, const char *dir) {
  if (!loader)
    return cpdl__error(CPDL_EARG, "cpdl_tools_dump_collated: NULL loader");
  return cpdl__loader_dump_collated(loader, dir);
}

CPDL_API int cpdl_tools_binding_report(cpdl_loader_t *loader, char **json_out) {
  if (json_out)
    *json_out = NULL;
  if (!loader || !json_out)
    return cpdl__error(CPDL_EARG, "cpdl_tools_binding_report: NULL argument");
  return cpdl__pin_report(cpdl__loader_pin(loader), cpdl__loader_world(loader), json_out);
}

CPDL_API int cpdl_tools_data_shape(const cpdl_loader_t *loader, int64_t *batch,
                                   int64_t *seq_len) {
  if (!loader || !batch || !seq_len)
    return cpdl__error(CPDL_EARG, "cpdl_tools_data_shape: NULL argument");
  cpdl__loader_data_shape(loader, batch, seq_len);
  return 0;
}

CPDL_API int cpdl_tools_memory(const cpdl_loader_t *loader, cpdl_tools_memory_t *out) {
  if (!loader || !out)
    return cpdl__error(CPDL_EARG, "cpdl_tools_memory: NULL argument");
  if (out->struct_size < sizeof *out)
    return cpdl__error(CPDL_EARG, "cpdl_tools_memory: out->struct_size %zu is smaller than %zu: set "
                       "it to sizeof(cpdl_tools_memory_t)", out->struct_size, sizeof *out);
  cpdl__loader_memory(loader, out);
  return 0;
}

CPDL_API int cpdl_tools_agree_min(cpdl_loader_t *loader, int64_t *values, int n,
                                  const char *what) {
  if (!loader || !values || n < 1 || !what)
    return cpdl__error(CPDL_EARG, "cpdl_tools_agree_min: NULL or empty argument");
  return cpdl__loader_agree_min(loader, values, n, what);
}

CPDL_API int cpdl_tools_npy_write(const char *path, cpdl_dtype_t dtype, int ndim,
                                  const int64_t *shape, const void *data) {
  if (!path || !shape || !data)
    return cpdl__error(CPDL_EARG, "cpdl_tools_npy_write: NULL argument");
  if (ndim < 1 || ndim > CPDL_MAX_DIMS)
    return cpdl__error(CPDL_EARG, "cpdl_tools_npy_write: %s: ndim %d is outside 1..%d", path,
                       ndim, CPDL_MAX_DIMS);
  return cpdl__npy_write(path, dtype, ndim, shape, data);
}

CPDL_API int cpdl_tools_mkdirs(const char *path) {
  if (!path)
    return cpdl__error(CPDL_EARG, "cpdl_tools_mkdirs: NULL path");
  return cpdl__mkdirs(path);
}

CPDL_API int cpdl_tools_config_from_env_except(cpdl_config_t *cfg, const char *const *skip,
                                               int n_skip) {
  if (n_skip < 0 || (n_skip > 0 && !skip))
    return cpdl__error(CPDL_EARG, "cpdl_tools_config_from_env_except: %d keys to skip without "
                       "a list", n_skip);
  return cpdl__config_from_env_except(cfg, skip, n_skip);
}

CPDL_API int cpdl_tools_error(int code, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt ? fmt : "", ap);
  va_end(ap);
  return cpdl__error(code, "%s", msg);
}
