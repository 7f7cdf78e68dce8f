/* dump.c — writes tensors as .npy files (NPY format 1.0, little-endian,
 * C order) for `cpdl run --dump` and the group leader's --dump-collated, and
 * creates their directories (mkdir -p). Files are written to a temporary name
 * and renamed, so a reader never sees a half-written file. */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static const char *npy_descr(cpdl_dtype_t dtype) {
  switch (dtype) {
  case CPDL_DTYPE_BOOL: return "|b1";
  case CPDL_DTYPE_UINT8: return "|u1";
  case CPDL_DTYPE_INT32: return "<i4";
  case CPDL_DTYPE_INT64: return "<i8";
  case CPDL_DTYPE_FLOAT16: return "<f2";
  case CPDL_DTYPE_BFLOAT16: return "<u2"; /* numpy has no bfloat16: raw bits */
  case CPDL_DTYPE_FLOAT32: return "<f4";
  case CPDL_DTYPE_FLOAT64: return "<f8";
  default: return NULL;
  }
}

int cpdl__mkdirs(const char *path) {
  char buf[4096];
  if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
    return cpdl__error(CPDL_EARG, "path too long: %s", path);
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/')
      continue;
    *p = '\0';
    if (mkdir(buf, 0755) && errno != EEXIST)
      return cpdl__error(-errno, "cannot create directory %s: %s", buf, strerror(errno));
    *p = '/';
  }
  if (mkdir(buf, 0755) && errno != EEXIST)
    return cpdl__error(-errno, "cannot create directory %s: %s", buf, strerror(errno));
  return 0;
}

int cpdl__npy_write(const char *path, cpdl_dtype_t dtype, int ndim, const int64_t *shape,
                    const void *data) {
  const char *descr = npy_descr(dtype);
  if (!descr)
    return cpdl__error(CPDL_EDTYPE, "cannot write dtype %d as .npy", (int)dtype);
  char dims[256];
  size_t at = 0;
  size_t count = 1;
  for (int i = 0; i < ndim; i++) {
    at += (size_t)snprintf(dims + at, sizeof dims - at, "%lld,%s", (long long)shape[i],
                           (ndim > 1 && i < ndim - 1) ? " " : "");
    count *= (size_t)shape[i];
  }
  if (ndim > 1 && at > 0)
    dims[--at] = '\0'; /* numpy writes (2, 3) but (5,) */
  char header[512];
  int len = snprintf(header, sizeof header,
                     "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, dims);
  /* Magic (6) + version (2) + header length (2) + header, padded with
   * spaces and a final newline to a multiple of 64. */
  size_t total = 10 + (size_t)len + 1;
  size_t padded = CPDL__ALIGN_UP(total, 64);
  memset(header + len, ' ', padded - total);
  header[padded - 10 - 1] = '\n';
  uint16_t hlen = (uint16_t)(padded - 10);

  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "wb");
  if (!f)
    return cpdl__error(-errno, "cannot write %s: %s", tmp, strerror(errno));
  unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                           (unsigned char)(hlen & 0xff), (unsigned char)(hlen >> 8)};
  size_t bytes = count * cpdl_dtype_size(dtype);
  int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(header, 1, hlen, f) == hlen &&
           (bytes == 0 || fwrite(data, 1, bytes, f) == bytes);
  if (fclose(f) != 0)
    ok = 0;
  if (!ok || rename(tmp, path) != 0) {
    int err = errno;
    remove(tmp);
    return cpdl__error(-(err ? err : EIO), "cannot write %s: %s", path, strerror(err ? err : EIO));
  }
  return 0;
}
