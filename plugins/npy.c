/* npy.c — the `npy:` data source: pre-collated batches from a directory with
 * one sub-directory per step holding <field>.npy files.
 * Step order: by the decimal integer that ends each sub-directory's name
 * ("step2" before "step10", as `cpdl run --dump` names them; leading zeros
 * and the text before the digits do not matter). A name that does not end
 * in a digit, or two names with the same number ("step1" and "step01"), is
 * an error naming the directory; gaps in the numbers are allowed.
 * NPY v1/v2/v3, little-endian, C order; dtypes |b1 |u1 <i4 <i8 <f2 <f4 <f8.
 * Invariant: the field set, dtypes and shapes are fixed by the first step at
 * open; every later step is checked against them when read (a missing or
 * an extra .npy file is an error naming it). Token-id fields (input_ids,
 * labels, position_ids) must have an integer dtype. Tensors point
 * into read-only mappings of the current step's files, valid until the next
 * read_batch() on the source (the host serializes calls).
 */
#include "cpdl/plugin.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "this plugin serves little-endian .npy data zero-copy"
#endif

#define NPY_MAGIC "\x93NUMPY"
#define NPY_HEADER_MAX 65536 /* numpy writes a few hundred bytes; bound the parse */

typedef struct npy_array {
  int dtype;          /* CPDL_SOURCE_DTYPE_* */
  int ndim;
  int64_t shape[CPDL_SOURCE_MAX_DIMS];
  uint64_t data_offset;
  uint64_t nbytes;
} npy_array_t;

typedef struct npy_source {
  const cpdl_source_host_t *host;
  char *dir;
  char **steps;
  int64_t n_steps;
  int n_fields;
  char names[CPDL_SOURCE_MAX_FIELDS][CPDL_SOURCE_NAME_MAX];
  npy_array_t layout[CPDL_SOURCE_MAX_FIELDS];        /* from the first step */
  cpdl_source_mapping_t maps[CPDL_SOURCE_MAX_FIELDS]; /* the current step's files */
} npy_source_t;

static const struct {
  const char *descr;
  int dtype;
  int bytes;
} npy_dtypes[] = {
  {"|b1", CPDL_SOURCE_DTYPE_BOOL, 1},    {"|u1", CPDL_SOURCE_DTYPE_UINT8, 1},
  {"<i4", CPDL_SOURCE_DTYPE_INT32, 4},   {"<i8", CPDL_SOURCE_DTYPE_INT64, 8},
  {"<f2", CPDL_SOURCE_DTYPE_FLOAT16, 2}, {"<f4", CPDL_SOURCE_DTYPE_FLOAT32, 4},
  {"<f8", CPDL_SOURCE_DTYPE_FLOAT64, 8},
};

/* Position just after "'key':" (or "\"key\":") in the header text, or NULL. */
static const char *dict_value(const char *text, const char *key) {
  char quoted[32];
  for (int q = 0; q < 2; q++) {
    snprintf(quoted, sizeof quoted, q ? "\"%s\"" : "'%s'", key);
    const char *p = strstr(text, quoted);
    if (!p)
      continue;
    p += strlen(quoted);
    while (*p == ' ')
      p++;
    if (*p != ':')
      return NULL;
    p++;
    while (*p == ' ')
      p++;
    return p;
  }
  return NULL;
}

/* Parse the header of an .npy held in buf[0, size). Pure: the fuzzer and
 * the tests call it on buffers. */
static int npy_parse_header(const char *name, const uint8_t *buf, uint64_t size, npy_array_t *out,
                            char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  if (size < 10 || memcmp(buf, NPY_MAGIC, 6) != 0) {
    snprintf(err, errlen, "%s: offset 0: expected the NPY magic \"\\x93NUMPY\" (%s)", name,
             size < 10 ? "file shorter than 10 bytes" : "bad magic");
    return CPDL_SOURCE_ECORRUPT;
  }
  int major = buf[6];
  uint64_t hlen, hstart;
  if (major == 1) {
    hlen = (uint64_t)buf[8] | (uint64_t)buf[9] << 8;
    hstart = 10;
  } else if (major == 2 || major == 3) {
    if (size < 12) {
      snprintf(err, errlen, "%s: offset 8: expected a 4-byte header length, the file has %" PRIu64
               " bytes", name, size);
      return CPDL_SOURCE_ECORRUPT;
    }
    hlen = (uint64_t)buf[8] | (uint64_t)buf[9] << 8 | (uint64_t)buf[10] << 16 |
           (uint64_t)buf[11] << 24;
    hstart = 12;
  } else {
    snprintf(err, errlen, "%s: offset 6: NPY format version %d, expected 1, 2 or 3", name, major);
    return CPDL_SOURCE_ECORRUPT;
  }
  if (hlen > NPY_HEADER_MAX || hlen > size - hstart) {
    snprintf(err, errlen, "%s: offset 8: header length %" PRIu64 " runs past the file (%" PRIu64
             " bytes) or the %d-byte limit", name, hlen, size, NPY_HEADER_MAX);
    return CPDL_SOURCE_ECORRUPT;
  }
  char text[NPY_HEADER_MAX + 1];
  memcpy(text, buf + hstart, (size_t)hlen);
  text[hlen] = '\0';
  if (strlen(text) != hlen) {
    snprintf(err, errlen, "%s: offset %" PRIu64 ": NUL byte inside the header", name, hstart);
    return CPDL_SOURCE_ECORRUPT;
  }

  const char *v = dict_value(text, "descr");
  int bytes = 0;
  if (!v || (*v != '\'' && *v != '"')) {
    snprintf(err, errlen, "%s: offset %" PRIu64 ": header has no 'descr' string", name, hstart);
    return CPDL_SOURCE_ECORRUPT;
  }
  char quote = *v++;
  const char *close = strchr(v, quote);
  size_t dlen = close ? (size_t)(close - v) : 0;
  out->dtype = -1;
  for (size_t k = 0; close && k < sizeof npy_dtypes / sizeof npy_dtypes[0]; k++)
    if (strlen(npy_dtypes[k].descr) == dlen && memcmp(npy_dtypes[k].descr, v, dlen) == 0) {
      out->dtype = npy_dtypes[k].dtype;
      bytes = npy_dtypes[k].bytes;
    }
  if (out->dtype < 0) {
    snprintf(err, errlen,
             "%s: offset %" PRIu64 ": dtype '%.*s' not supported; expected one of |b1 |u1 <i4 "
             "<i8 <f2 <f4 <f8 (little-endian)", name, hstart, close ? (int)(dlen > 16 ? 16 : dlen) : 0,
             v);
    return CPDL_SOURCE_EDTYPE;
  }
  v = dict_value(text, "fortran_order");
  if (!v || strncmp(v, "False", 5) != 0) {
    snprintf(err, errlen, "%s: offset %" PRIu64 ": expected 'fortran_order': False (C order)",
             name, hstart);
    return CPDL_SOURCE_ECORRUPT;
  }
  v = dict_value(text, "shape");
  if (!v || *v != '(') {
    snprintf(err, errlen, "%s: offset %" PRIu64 ": header has no 'shape' tuple", name, hstart);
    return CPDL_SOURCE_ECORRUPT;
  }
  v++;
  uint64_t elems = 1;
  for (;;) {
    while (*v == ' ' || *v == ',')
      v++;
    if (*v == ')')
      break;
    if (*v < '0' || *v > '9' || out->ndim == CPDL_SOURCE_MAX_DIMS) {
      snprintf(err, errlen,
               "%s: offset %" PRIu64 ": bad 'shape' (expected 1 to %d non-negative integers)",
               name, hstart, CPDL_SOURCE_MAX_DIMS);
      return CPDL_SOURCE_ECORRUPT;
    }
    char *end;
    errno = 0;
    unsigned long long dim = strtoull(v, &end, 10);
    if (errno || dim > (uint64_t)INT64_MAX || (dim && elems > UINT64_MAX / dim)) {
      snprintf(err, errlen, "%s: offset %" PRIu64 ": 'shape' overflows", name, hstart);
      return CPDL_SOURCE_EOVERFLOW;
    }
    elems *= dim;
    out->shape[out->ndim++] = (int64_t)dim;
    v = end;
    while (*v == 'L')
      v++; /* Python 2 long suffix */
  }
  if (out->ndim == 0) {
    snprintf(err, errlen, "%s: offset %" PRIu64 ": 0-d arrays are not batch fields", name, hstart);
    return CPDL_SOURCE_ECORRUPT;
  }
  out->data_offset = hstart + hlen;
  if (elems > UINT64_MAX / (uint64_t)bytes) {
    snprintf(err, errlen, "%s: offset %" PRIu64 ": 'shape' overflows", name, hstart);
    return CPDL_SOURCE_EOVERFLOW;
  }
  out->nbytes = elems * (uint64_t)bytes;
  if (size - out->data_offset != out->nbytes) {
    snprintf(err, errlen,
             "%s: offset %" PRIu64 ": shape and dtype need %" PRIu64 " data bytes, the file has %"
             PRIu64 " (%s)", name, out->data_offset, out->nbytes, size - out->data_offset,
             size - out->data_offset < out->nbytes ? "truncated" : "trailing bytes");
    return CPDL_SOURCE_ECORRUPT;
  }
  return 0;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The trailing decimal digits of name without leading zeros ("0" for all
 * zeros), as (*digits, *len); *len is 0 when the name does not end in a digit. */
static void step_number(const char *name, const char **digits, size_t *len) {
  size_t end = strlen(name), start = end;
  while (start > 0 && name[start - 1] >= '0' && name[start - 1] <= '9')
    start--;
  while (start + 1 < end && name[start] == '0')
    start++;
  *digits = name + start;
  *len = end - start;
}

/* By step number: any length, no overflow (shorter is smaller, then text). */
static int cmp_step(const void *a, const void *b) {
  const char *da, *db;
  size_t la, lb;
  step_number(*(char *const *)a, &da, &la);
  step_number(*(char *const *)b, &db, &lb);
  if (la != lb)
    return la < lb ? -1 : 1;
  int c = memcmp(da, db, la);
  return c ? c : strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sort step directories by their number; a name without one, or two names
 * with the same one, is an error. */
static int order_steps(const char *dir, char **names, int64_t n, char *err, size_t errlen) {
  for (int64_t k = 0; k < n; k++) {
    const char *d;
    size_t len;
    step_number(names[k], &d, &len);
    if (len == 0) {
      snprintf(err, errlen,
               "npy: %s/%s: a step directory's name must end in its step number (e.g. step0, "
               "step1, ..., step10); rename or move it", dir, names[k]);
      return CPDL_SOURCE_EARG;
    }
  }
  qsort(names, (size_t)n, sizeof *names, cmp_step);
  for (int64_t k = 1; k < n; k++) {
    const char *da, *db;
    size_t la, lb;
    step_number(names[k - 1], &da, &la);
    step_number(names[k], &db, &lb);
    if (la == lb && memcmp(da, db, la) == 0) {
      snprintf(err, errlen,
               "npy: %s: step directories %s and %s have the same step number %.*s; keep one",
               dir, names[k - 1], names[k], (int)la, da);
      return CPDL_SOURCE_EARG;
    }
  }
  return 0;
}

static void free_names(char **names, int64_t n) {
  for (int64_t k = 0; k < n; k++)
    free(names[k]);
  free(names);
}

/* Names in `dir`: sub-directories (want_dirs, in step order) or *.npy files
 * (sorted by name). */
static int list_names(const char *dir, int want_dirs, char ***out, int64_t *n_out, char *err,
                      size_t errlen) {
  DIR *d = opendir(dir);
  if (!d) {
    int e = errno;
    snprintf(err, errlen, "npy: cannot open directory %s: %s", dir, strerror(e));
    return -e;
  }
  char **names = NULL;
  int64_t n = 0, cap = 0;
  struct dirent *e;
  int rc = 0;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.')
      continue;
    size_t len = strlen(e->d_name);
    if (want_dirs) {
      char full[4096];
      struct stat st;
      snprintf(full, sizeof full, "%s/%s", dir, e->d_name);
      if (stat(full, &st) != 0 || !S_ISDIR(st.st_mode))
        continue;
    } else if (len <= 4 || strcmp(e->d_name + len - 4, ".npy") != 0) {
      continue;
    }
    if (n == cap) {
      cap = cap ? cap * 2 : 64;
      char **grown = realloc(names, (size_t)cap * sizeof *grown);
      if (!grown) {
        rc = -ENOMEM;
        break;
      }
      names = grown;
    }
    if (!(names[n] = strdup(e->d_name))) {
      rc = -ENOMEM;
      break;
    }
    n++;
  }
  closedir(d);
  if (rc) {
    for (int64_t k = 0; k < n; k++)
      free(names[k]);
    free(names);
    snprintf(err, errlen, "npy: out of memory listing %s", dir);
    return rc;
  }
  if (n && want_dirs && (rc = order_steps(dir, names, n, err, errlen))) {
    free_names(names, n);
    return rc;
  }
  if (n && !want_dirs)
    qsort(names, (size_t)n, sizeof *names, cmp_str);
  *out = names;
  *n_out = n;
  return 0;
}

static void unmap_step(npy_source_t *s) {
  for (int f = 0; f < s->n_fields; f++)
    s->host->unmap_file(&s->maps[f]);
}

/* A later step's files must be the first step's fields, no more: an extra
 * file would be silently dropped otherwise. Names are sorted (list_names). */
static int check_field_set(npy_source_t *s, int64_t step, char *err, size_t errlen) {
  char dir[4096];
  snprintf(dir, sizeof dir, "%s/%s", s->dir, s->steps[step]);
  char **files = NULL;
  int64_t n = 0;
  int rc = list_names(dir, 0, &files, &n, err, errlen);
  if (rc)
    return rc;
  for (int64_t k = 0; k < n && !rc; k++) {
    size_t len = strlen(files[k]) - 4;
    int known = 0;
    for (int f = 0; f < s->n_fields && !known; f++)
      known = strlen(s->names[f]) == len && strncmp(s->names[f], files[k], len) == 0;
    if (!known) {
      snprintf(err, errlen, "%s/%s: offset 0: a field that step %s does not have (every step "
               "must hold the same .npy files; remove it or add it to every step)", dir,
               files[k], s->steps[0]);
      rc = CPDL_SOURCE_ECORRUPT;
    }
  }
  free_names(files, n);
  return rc;
}

/* Map every field of step `step` and check it against the layout (or, when
 * set_layout, record the layout). */
static int map_step(npy_source_t *s, int64_t step, int set_layout, char *err, size_t errlen) {
  unmap_step(s);
  for (int f = 0; f < s->n_fields; f++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/%s.npy", s->dir, s->steps[step], s->names[f]);
    int rc = s->host->map_file(path, &s->maps[f], err, errlen);
    if (rc)
      goto fail;
    npy_array_t a;
    rc = npy_parse_header(path, s->maps[f].addr, s->maps[f].size, &a, err, errlen);
    if (rc)
      goto fail;
    if (set_layout) {
      s->layout[f] = a;
      continue;
    }
    const npy_array_t *want = &s->layout[f];
    int same = a.dtype == want->dtype && a.ndim == want->ndim;
    for (int d = 0; same && d < a.ndim; d++)
      same = a.shape[d] == want->shape[d];
    if (!same) {
      snprintf(err, errlen,
               "%s: offset 0: dtype/shape differ from step %s (every step must have the same "
               "fields, dtypes and shapes)", path, s->steps[0]);
      rc = CPDL_SOURCE_ECORRUPT;
      goto fail;
    }
    s->layout[f].data_offset = a.data_offset;
    continue;
  fail:
    unmap_step(s);
    return rc;
  }
  /* every field is there (a missing one failed above, named); no more */
  int rc = set_layout ? 0 : check_field_set(s, step, err, errlen);
  if (rc)
    unmap_step(s);
  return rc;
}

static void npy_close(void *state) {
  npy_source_t *s = state;
  if (!s)
    return;
  unmap_step(s);
  free_names(s->steps, s->n_steps);
  free(s->dir);
  free(s);
}

static int npy_open(const cpdl_source_host_t *host, const char *path, const char *query,
                    void **state, char *err, size_t errlen) {
  static const char *const known[] = {NULL};
  int rc = host->query_check(query, known, err, errlen);
  if (rc)
    return rc;
  npy_source_t *s = calloc(1, sizeof *s);
  if (!s || !(s->dir = strdup(path))) {
    free(s);
    snprintf(err, errlen, "npy: out of memory");
    return -ENOMEM;
  }
  s->host = host;
  if (!*path) {
    snprintf(err, errlen, "npy: no directory given (expected npy:/path/to/dir holding one "
             "sub-directory per step, e.g. npy:/data/batches)");
    rc = CPDL_SOURCE_EARG;
    goto fail;
  }
  if ((rc = list_names(path, 1, &s->steps, &s->n_steps, err, errlen)))
    goto fail;
  if (s->n_steps == 0) {
    snprintf(err, errlen, "npy: %s holds no step directories (expected step0/, step1/, ... each with <field>.npy files)", path);
    rc = CPDL_SOURCE_ECORRUPT;
    goto fail;
  }
  char first[4096];
  snprintf(first, sizeof first, "%s/%s", path, s->steps[0]);
  char **files = NULL;
  int64_t n_files = 0;
  if ((rc = list_names(first, 0, &files, &n_files, err, errlen)))
    goto fail;
  if (n_files == 0 || n_files > CPDL_SOURCE_MAX_FIELDS) {
    snprintf(err, errlen, "npy: %s holds %" PRId64 " .npy files, expected 1 to %d fields", first,
             n_files, CPDL_SOURCE_MAX_FIELDS);
    free_names(files, n_files);
    rc = CPDL_SOURCE_ECORRUPT;
    goto fail;
  }
  for (int64_t f = 0; f < n_files; f++) {
    size_t len = strlen(files[f]) - 4;
    if (len >= CPDL_SOURCE_NAME_MAX) {
      snprintf(err, errlen, "npy: %s/%s: field name longer than %d bytes", first, files[f],
               CPDL_SOURCE_NAME_MAX - 1);
      free_names(files, n_files);
      rc = CPDL_SOURCE_EARG;
      goto fail;
    }
    snprintf(s->names[f], CPDL_SOURCE_NAME_MAX, "%.*s", (int)len, files[f]);
  }
  s->n_fields = (int)n_files;
  free_names(files, n_files);
  if ((rc = map_step(s, 0, 1, err, errlen)))
    goto fail;
  static const char *const token_fields[] = {"input_ids", "labels", "position_ids"};
  for (int f = 0; f < s->n_fields; f++) {
    int dt = s->layout[f].dtype;
    for (size_t k = 0; k < sizeof token_fields / sizeof *token_fields; k++)
      if (strcmp(s->names[f], token_fields[k]) == 0 && dt != CPDL_SOURCE_DTYPE_INT32 &&
          dt != CPDL_SOURCE_DTYPE_INT64 && dt != CPDL_SOURCE_DTYPE_UINT8) {
        snprintf(err, errlen, "%s/%s.npy: offset 0: %s holds token ids and must be an integer "
                 "array (int64, int32 or uint8), not %s; write it with .astype(np.int64)", first,
                 s->names[f], s->names[f], dt == CPDL_SOURCE_DTYPE_BOOL ? "bool" : "floating point");
        rc = CPDL_SOURCE_ECORRUPT;
        goto fail;
      }
  }
  *state = s;
  return 0;
fail:
  npy_close(s);
  return rc;
}

static int64_t npy_count(void *state) { return ((npy_source_t *)state)->n_steps; }

static int npy_read(void *state, int64_t i, const void **tokens, int64_t *n, int *token_bytes,
                    char *err, size_t errlen) {
  (void)state;
  (void)i;
  (void)tokens;
  (void)n;
  (void)token_bytes;
  snprintf(err, errlen, "npy: holds pre-collated batches, not token samples (read batches)");
  return CPDL_SOURCE_ESOURCE;
}

static int npy_read_batch(void *state, int64_t step, cpdl_source_tensor_t *fields, int *n_fields,
                          char *err, size_t errlen) {
  npy_source_t *s = state;
  int rc = map_step(s, step, 0, err, errlen);
  if (rc)
    return rc;
  for (int f = 0; f < s->n_fields; f++) {
    cpdl_source_tensor_t *t = &fields[f];
    memset(t, 0, sizeof *t);
    memcpy(t->name, s->names[f], sizeof t->name);
    t->dtype = s->layout[f].dtype;
    t->ndim = s->layout[f].ndim;
    memcpy(t->shape, s->layout[f].shape, sizeof t->shape);
    t->data = (const uint8_t *)s->maps[f].addr + s->layout[f].data_offset;
    t->nbytes = s->layout[f].nbytes;
  }
  *n_fields = s->n_fields;
  return 0;
}

static int64_t npy_batch_count(void *state) { return ((npy_source_t *)state)->n_steps; }

static const cpdl_source_plugin_t descriptor = {
  .abi_version = CPDL_SOURCE_ABI_VERSION,
  .struct_size = sizeof(cpdl_source_plugin_t),
  .name = "npy",
  .description = "pre-collated batches: <dir>/<step>/<field>.npy",
  .flags = 0,
  .open = npy_open,
  .count = npy_count,
  .read = npy_read,
  .close = npy_close,
  .batch_count = npy_batch_count,
  .read_batch = npy_read_batch,
};

CPDL_SOURCE_PLUGIN_EXPORT const cpdl_source_plugin_t *cpdl_source_plugin_v1(void) {
  return &descriptor;
}

#ifdef CPDL_FUZZ_BUILD
int cpdl_npy_fuzz_parse(const uint8_t *buf, size_t size);
int cpdl_npy_fuzz_parse(const uint8_t *buf, size_t size) {
  char err[512];
  npy_array_t a;
  return npy_parse_header("fuzz.npy", buf, size, &a, err, sizeof err);
}
#endif
