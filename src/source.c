/* source.c — the data-source plugin host: URI parsing (the query itself:
 * query.c), plugin discovery and loading (dlopen of cpdl-<scheme>.so), the
 * host service table and the loader's parameters lent to plugins at open,
 * and the cpdl__source_* / cpdl_source_* wrappers. The URI reaches the
 * plugin as given, never rewritten.
 * Invariants: a cpdl__source_t exists only with a checked descriptor (ABI
 * version, struct_size, required members) and an opened plugin state; the
 * plugin's dlopen handle outlives its state. Plugins without
 * CPDL_SOURCE_CONCURRENT_READS are called under the source's mutex.
 */
#include "internal.h"
#include "cpdl/plugin.h"
#include "query.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The plugin ABI repeats cpdl/prep.h's codes and dtypes so plugins need no cpdl.h. */
_Static_assert(CPDL_SOURCE_EARG == CPDL_EARG, "plugin.h EARG");
_Static_assert(CPDL_SOURCE_EDTYPE == CPDL_EDTYPE, "plugin.h EDTYPE");
_Static_assert(CPDL_SOURCE_EOVERFLOW == CPDL_EOVERFLOW, "plugin.h EOVERFLOW");
_Static_assert(CPDL_SOURCE_ECORRUPT == CPDL_ECORRUPT, "plugin.h ECORRUPT");
_Static_assert(CPDL_SOURCE_ESOURCE == CPDL_ESOURCE, "plugin.h ESOURCE");
_Static_assert(CPDL_SOURCE_DTYPE_BOOL == (int)CPDL_DTYPE_BOOL, "dtype");
_Static_assert(CPDL_SOURCE_DTYPE_UINT8 == (int)CPDL_DTYPE_UINT8, "dtype");
_Static_assert(CPDL_SOURCE_DTYPE_INT32 == (int)CPDL_DTYPE_INT32, "dtype");
_Static_assert(CPDL_SOURCE_DTYPE_INT64 == (int)CPDL_DTYPE_INT64, "dtype");
_Static_assert(CPDL_SOURCE_DTYPE_FLOAT16 == (int)CPDL_DTYPE_FLOAT16, "dtype");
_Static_assert(CPDL_SOURCE_DTYPE_BFLOAT16 == (int)CPDL_DTYPE_BFLOAT16, "dtype");
_Static_assert(CPDL_SOURCE_DTYPE_FLOAT32 == (int)CPDL_DTYPE_FLOAT32, "dtype");
_Static_assert(CPDL_SOURCE_DTYPE_FLOAT64 == (int)CPDL_DTYPE_FLOAT64, "dtype");
_Static_assert(CPDL_SOURCE_MAX_DIMS == CPDL_MAX_DIMS, "dims");
_Static_assert(CPDL_SOURCE_NAME_MAX == CPDL_NAME_MAX, "names");
_Static_assert(CPDL_SOURCE_MAX_FIELDS == CPDL_MAX_FIELDS, "fields");

#define SCHEME_MAX 64
#define PLUGIN_ERR_MAX 768
/* The descriptor must at least reach `close`, the last required member. */
#define PLUGIN_MIN_SIZE (offsetof(cpdl_source_plugin_t, close) + sizeof(void (*)(void *)))

struct cpdl__source {
  void *dl;                          /* dlopen handle */
  const cpdl_source_plugin_t *plugin;
  size_t plugin_size;                /* min(plugin->struct_size, ours) */
  void *state;
  bool serialize;                    /* plugin lacks CONCURRENT_READS */
  pthread_mutex_t lock;
  char scheme[SCHEME_MAX];
  char path[PATH_MAX];               /* where the .so was found */
  cpdl_source_tensor_t batch[CPDL_SOURCE_MAX_FIELDS]; /* read_batch scratch */
};

/* An optional member is usable only if the plugin's struct reaches it. */
#define HAS_MEMBER(src, member)                                                       \
  ((src)->plugin_size >= offsetof(cpdl_source_plugin_t, member) + sizeof(void *) &&   \
   (src)->plugin->member != NULL)

/* ---- host services lent to plugins ---------------------------------------- */

static void host_log(int level, const char *plugin, const char *msg) {
  if (level >= CPDL_SOURCE_LOG_WARN || getenv("CPDL_DEBUG"))
    fprintf(stderr, "cpdl[%s]: %s\n", plugin ? plugin : "?", msg);
}

static int host_map_file(const char *path, cpdl_source_mapping_t *out, char *err, size_t errlen) {
  out->addr = NULL;
  out->size = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    snprintf(err, errlen, "%s: cannot open: %s", path, strerror(e));
    return -e;
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    snprintf(err, errlen, "%s: fstat: %s", path, strerror(e));
    close(fd);
    return -e;
  }
  if (!S_ISREG(st.st_mode)) {
    snprintf(err, errlen, "%s: not a regular file", path);
    close(fd);
    return -EINVAL;
  }
  if (st.st_size > 0) {
    void *addr = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (addr == MAP_FAILED) {
      int e = errno;
      snprintf(err, errlen, "%s: mmap of %lld bytes: %s", path, (long long)st.st_size,
               strerror(e));
      close(fd);
      return -e;
    }
    out->addr = addr;
  }
  out->size = (uint64_t)st.st_size;
  close(fd); /* the mapping keeps the file */
  return 0;
}

static void host_unmap_file(cpdl_source_mapping_t *m) {
  if (m && m->addr)
    munmap((void *)m->addr, (size_t)m->size);
  if (m) {
    m->addr = NULL;
    m->size = 0;
  }
}

/* The query services are the one query parser's (query.h): the host's own
 * repeated-key check and a plugin's lookups read a query alike. */
static const cpdl_source_host_t host_table = {
  .abi_version = CPDL_SOURCE_ABI_VERSION,
  .struct_size = sizeof(cpdl_source_host_t),
  .log = host_log,
  .map_file = host_map_file,
  .unmap_file = host_unmap_file,
  .query_get = cpdl__query_get,
  .query_int = cpdl__query_int,
  .query_check = cpdl__query_check,
};

/* ---- discovery -------------------------------------------------------------- */

/* "<directory of the loaded libcpdl.so>/cpdl" into buf, or "" when unknown
 * (a static link: the tests). A relocated install (a Python wheel keeps
 * libcpdl.so and its cpdl/ plugin directory together) finds its plugins
 * there without CPDL_PLUGIN_PATH; for a normal install it is the install
 * dir itself. */
static void library_plugin_dir(char *buf, size_t size) {
  Dl_info info;
  buf[0] = '\0';
  if (!dladdr((void *)&library_plugin_dir, &info) || !info.dli_fname)
    return;
  const char *slash = strrchr(info.dli_fname, '/');
  if (!slash || strncmp(slash + 1, "libcpdl.so", 10) != 0)
    return; /* not the shared library (a test linking the static archive) */
  snprintf(buf, size, "%.*s/cpdl", (int)(slash - info.dli_fname), info.dli_fname);
}

/* The search path, in order: $CPDL_PLUGIN_PATH (colon-separated), the
 * directory beside libcpdl.so, the install dir, the build tree. Calls
 * fn(dir, arg) per dir until it returns non-zero. */
static int for_each_dir(int (*fn)(const char *dir, void *arg), void *arg) {
  const char *env = getenv("CPDL_PLUGIN_PATH");
  if (env && *env) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", env);
    char *save = NULL;
    for (char *dir = strtok_r(buf, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
      int rc = fn(dir, arg);
      if (rc)
        return rc;
    }
  }
  char beside[4096];
  library_plugin_dir(beside, sizeof beside);
  if (beside[0] && strcmp(beside, CPDL_PLUGIN_INSTALL_DIR) != 0) {
    int rc = fn(beside, arg);
    if (rc)
      return rc;
  }
  int rc = fn(CPDL_PLUGIN_INSTALL_DIR, arg);
  if (rc)
    return rc;
  return fn(CPDL_PLUGIN_BUILD_DIR, arg);
}

struct find_arg {
  const char *scheme;
  char path[PATH_MAX];
};

static int find_in_dir(const char *dir, void *arg) {
  struct find_arg *fa = arg;
  int n = snprintf(fa->path, sizeof fa->path, "%s/cpdl-%s.so", dir, fa->scheme);
  if (n < 0 || (size_t)n >= sizeof fa->path)
    return 0;
  return access(fa->path, F_OK) == 0;
}

struct list_arg {
  char *buf;
  size_t size, len;
  int count;
};

/* Is `name` one of the entries of the list "a, b, c"? */
static bool list_has(const char *list, const char *name) {
  size_t n = strlen(name);
  for (const char *p = list; *p;) {
    const char *end = strstr(p, ", ");
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len == n && memcmp(p, name, n) == 0)
      return true;
    p = end ? end + 2 : p + len;
  }
  return false;
}

static int list_dir(const char *dir, void *arg) {
  struct list_arg *la = arg;
  DIR *d = opendir(dir);
  if (!d)
    return 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    size_t n = strlen(e->d_name);
    if (n <= 8 || strncmp(e->d_name, "cpdl-", 5) != 0 || strcmp(e->d_name + n - 3, ".so") != 0)
      continue;
    char name[SCHEME_MAX];
    snprintf(name, sizeof name, "%.*s", (int)(n - 8), e->d_name + 5);
    /* a scheme found in an earlier dir shadows later ones: list it once */
    if (list_has(la->buf, name))
      continue;
    if (la->len < la->size) {
      int w = snprintf(la->buf + la->len, la->size - la->len, "%s%s", la->count ? ", " : "", name);
      if (w > 0)
        la->len = la->len + (size_t)w < la->size ? la->len + (size_t)w : la->size - 1;
    }
    la->count++;
  }
  closedir(d);
  return 0;
}

static void list_dirs(char *buf, size_t size) {
  const char *env = getenv("CPDL_PLUGIN_PATH");
  char beside[4096];
  library_plugin_dir(beside, sizeof beside);
  snprintf(buf, size, "%s%s%.400s%s%s:%s", env && *env ? env : "", env && *env ? ":" : "",
           beside, beside[0] ? ":" : "", CPDL_PLUGIN_INSTALL_DIR, CPDL_PLUGIN_BUILD_DIR);
}

/* "a, b, c" of the schemes found on the search path. */
int cpdl__source_list(char *buf, size_t size) {
  struct list_arg la = {buf, size, 0, 0};
  if (size)
    buf[0] = '\0';
  for_each_dir(list_dir, &la);
  return la.count;
}

/* ---- open / close --------------------------------------------------------- */

static int parse_uri(const char *uri, char *scheme, const char **path_start, size_t *path_len,
                     const char **query) {
  if (!uri || !*uri)
    return cpdl__error(CPDL_EARG, "data source URI is empty (expected \"scheme:path?key=value\")");
  const char *colon = strchr(uri, ':');
  if (!colon || colon == uri)
    return cpdl__error(CPDL_EARG,
                       "data source URI '%s' has no scheme (expected \"scheme:path?key=value\", "
                       "e.g. \"megatron:/data/corpus_text_document\")", uri);
  size_t slen = (size_t)(colon - uri);
  if (slen >= SCHEME_MAX)
    return cpdl__error(CPDL_EARG, "data source URI '%s': scheme longer than %d bytes", uri,
                       SCHEME_MAX - 1);
  for (size_t k = 0; k < slen; k++) {
    char c = uri[k];
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
      return cpdl__error(CPDL_EARG,
                         "data source URI '%s': scheme may hold only [a-z0-9_-], found '%c'", uri, c);
  }
  memcpy(scheme, uri, slen);
  scheme[slen] = '\0';
  *path_start = colon + 1;
  const char *q = strchr(colon + 1, '?');
  *path_len = q ? (size_t)(q - (colon + 1)) : strlen(colon + 1);
  *query = q ? q + 1 : "";
  return 0;
}

int cpdl__source_open(const char *uri, const cpdl_source_params_t *params, cpdl__source_t **out) {
  *out = NULL;
  char scheme[SCHEME_MAX];
  const char *path_start = NULL, *query = "";
  size_t path_len = 0;
  int rc = parse_uri(uri, scheme, &path_start, &path_len, &query);
  if (rc)
    return rc;
  size_t dup_len = 0;
  const char *dup = cpdl__query_repeated(query, &dup_len);
  if (dup)
    return cpdl__error(CPDL_EARG, "data source URI '%s': query key '%.*s' is given more than "
                       "once; give it once", uri, (int)dup_len, dup);

  struct find_arg fa = {.scheme = scheme};
  if (!for_each_dir(find_in_dir, &fa)) {
    char known[512], dirs[1024];
    int n = cpdl__source_list(known, sizeof known);
    list_dirs(dirs, sizeof dirs);
    return cpdl__error(CPDL_EPLUGIN,
                       "unknown data source scheme '%s' in '%s': no cpdl-%s.so in %s; known "
                       "schemes: %s (set CPDL_PLUGIN_PATH to add a directory)",
                       scheme, uri, scheme, dirs, n ? known : "none found");
  }

  cpdl__source_t *src = calloc(1, sizeof *src);
  if (!src)
    return cpdl__error(-ENOMEM, "data source '%s': out of memory", uri);
  snprintf(src->scheme, sizeof src->scheme, "%s", scheme);
  snprintf(src->path, sizeof src->path, "%s", fa.path);
  char *path = strndup(path_start, path_len);
  if (!path) {
    rc = cpdl__error(-ENOMEM, "data source '%s': out of memory", uri);
    goto fail_free;
  }

  dlerror();
  src->dl = dlopen(fa.path, RTLD_NOW | RTLD_LOCAL);
  if (!src->dl) {
    const char *why = dlerror();
    rc = cpdl__error(CPDL_EPLUGIN, "data source plugin %s cannot be loaded: %s", fa.path,
                     why ? why : "unknown dlopen error");
    goto fail_path;
  }
  dlerror();
  void *sym = dlsym(src->dl, CPDL_SOURCE_ENTRY_SYMBOL);
  if (!sym) {
    const char *why = dlerror();
    rc = cpdl__error(CPDL_EPLUGIN,
                     "data source plugin %s has no entry symbol '%s' (%s): not a cpdl plugin or "
                     "built for another ABI", fa.path, CPDL_SOURCE_ENTRY_SYMBOL,
                     why ? why : "symbol is NULL");
    goto fail_dlclose;
  }
  cpdl_source_entry_fn entry;
  memcpy(&entry, &sym, sizeof entry); /* object pointer → function pointer, as POSIX allows */
  const cpdl_source_plugin_t *plugin = entry();
  if (!plugin) {
    rc = cpdl__error(CPDL_EPLUGIN, "data source plugin %s: entry symbol returned NULL", fa.path);
    goto fail_dlclose;
  }
  if (plugin->abi_version != CPDL_SOURCE_ABI_VERSION) {
    rc = cpdl__error(CPDL_EPLUGIN,
                     "data source plugin %s has ABI version %u, this cpdl speaks version %u: "
                     "rebuild the plugin against this cpdl's cpdl/plugin.h", fa.path,
                     (unsigned)plugin->abi_version, (unsigned)CPDL_SOURCE_ABI_VERSION);
    goto fail_dlclose;
  }
  if (plugin->struct_size < PLUGIN_MIN_SIZE) {
    rc = cpdl__error(CPDL_EPLUGIN,
                     "data source plugin %s: descriptor struct_size %u is smaller than the %zu "
                     "bytes ABI version 1 requires", fa.path, (unsigned)plugin->struct_size,
                     (size_t)PLUGIN_MIN_SIZE);
    goto fail_dlclose;
  }
  if (plugin->name && strcmp(plugin->name, scheme) != 0) {
    rc = cpdl__error(CPDL_EPLUGIN, "data source plugin %s names itself '%s', expected '%s'",
                     fa.path, plugin->name, scheme);
    goto fail_dlclose;
  }
  if (!plugin->open || !plugin->count || !plugin->read || !plugin->close || !plugin->name) {
    rc = cpdl__error(CPDL_EPLUGIN,
                     "data source plugin %s: descriptor lacks a required member (name, open, "
                     "count, read or close)", fa.path);
    goto fail_dlclose;
  }
  src->plugin = plugin;
  src->plugin_size = plugin->struct_size < sizeof *plugin ? plugin->struct_size : sizeof *plugin;
  src->serialize = !(plugin->flags & CPDL_SOURCE_CONCURRENT_READS);
  pthread_mutex_init(&src->lock, NULL);

  char err[PLUGIN_ERR_MAX] = "";
  /* The URI reaches the plugin as given; the loader's parameters beside it. */
  if (HAS_MEMBER(src, open_params))
    rc = plugin->open_params(&host_table, params, path, query, &src->state, err, sizeof err);
  else
    rc = plugin->open(&host_table, path, query, &src->state, err, sizeof err);
  if (rc) {
    if (rc > 0)
      rc = CPDL_ESOURCE;
    rc = cpdl__error(rc, "data source '%s': %s", uri, err[0] ? err : cpdl_strerror(rc));
    goto fail_mutex;
  }
  free(path);
  *out = src;
  return 0;

fail_mutex:
  pthread_mutex_destroy(&src->lock);
fail_dlclose:
  dlclose(src->dl);
fail_path:
  free(path);
fail_free:
  free(src);
  return rc;
}

void cpdl__source_close(cpdl__source_t *src) {
  if (!src)
    return;
  src->plugin->close(src->state);
  pthread_mutex_destroy(&src->lock);
  dlclose(src->dl);
  free(src);
}

/* ---- queries ---------------------------------------------------------------- */

const char *cpdl__source_name(const cpdl__source_t *src) { return src->plugin->name; }

const char *cpdl__source_description(const cpdl__source_t *src) {
  return src->plugin->description ? src->plugin->description : "";
}

const char *cpdl__source_plugin_path(const cpdl__source_t *src) { return src->path; }

bool cpdl__source_stable(const cpdl__source_t *src) {
  return (src->plugin->flags & CPDL_SOURCE_STABLE_TOKENS) != 0;
}

int64_t cpdl__source_count(const cpdl__source_t *src) { return src->plugin->count(src->state); }


int64_t cpdl__source_eot(const cpdl__source_t *src) {
  return HAS_MEMBER(src, eot) ? src->plugin->eot(src->state) : -1;
}

static void lock(cpdl__source_t *src) {
  if (src->serialize)
    pthread_mutex_lock(&src->lock);
}
static void unlock(cpdl__source_t *src) {
  if (src->serialize)
    pthread_mutex_unlock(&src->lock);
}

int cpdl__source_read(cpdl__source_t *src, int64_t index, cpdl__sample_t *out) {
  int64_t count = cpdl__source_count(src);
  if (index < 0 || index >= count)
    return cpdl__error(CPDL_EARG, "data source %s: sample %" PRId64 " out of range [0, %" PRId64 ")",
                       src->scheme, index, count);
  char err[PLUGIN_ERR_MAX] = "";
  const void *tokens = NULL;
  int64_t n = 0;
  int token_bytes = 0;
  lock(src);
  int rc = src->plugin->read(src->state, index, &tokens, &n, &token_bytes, err, sizeof err);
  unlock(src);
  if (rc)
    return cpdl__error(rc > 0 ? CPDL_ESOURCE : rc, "data source %s, sample %" PRId64 ": %s",
                       src->scheme, index, err[0] ? err : cpdl_strerror(rc));
  if (n < 0 || (n > 0 && !tokens) || (token_bytes != 2 && token_bytes != 4 && token_bytes != 8))
    return cpdl__error(CPDL_EPLUGIN,
                       "data source plugin %s returned an invalid sample %" PRId64
                       " (n=%" PRId64 ", token_bytes=%d)", src->path, index, n, token_bytes);
  out->tokens = tokens;
  out->n_tokens = n;
  out->token_bytes = token_bytes;
  return 0;
}

int cpdl__source_length(cpdl__source_t *src, int64_t index, int64_t *n_tokens) {
  if (!HAS_MEMBER(src, length)) {
    cpdl__sample_t sample;
    int rc = cpdl__source_read(src, index, &sample);
    *n_tokens = rc ? 0 : sample.n_tokens;
    return rc;
  }
  int64_t count = cpdl__source_count(src);
  if (index < 0 || index >= count)
    return cpdl__error(CPDL_EARG, "data source %s: sample %" PRId64 " out of range [0, %" PRId64 ")",
                       src->scheme, index, count);
  lock(src);
  int64_t n = src->plugin->length(src->state, index);
  unlock(src);
  if (n < 0)
    return cpdl__error(CPDL_ESOURCE, "data source %s: the length of sample %" PRId64
                       " failed (%s)", src->scheme, index, cpdl_strerror((int)n));
  *n_tokens = n;
  return 0;
}

bool cpdl__source_global_order(const cpdl__source_t *src) {
  return (src->plugin->flags & CPDL_SOURCE_GLOBAL_ORDER) != 0 && HAS_MEMBER(src, read_row);
}

int cpdl__source_read_row(cpdl__source_t *src, int64_t index, int64_t width, int64_t *input_ids,
                          int64_t *labels, float *loss_mask, int64_t *position_ids) {
  int64_t count = cpdl__source_count(src);
  if (!cpdl__source_global_order(src))
    return cpdl__error(CPDL_ESOURCE, "data source %s has no global sample order", src->scheme);
  if (index < 0 || index >= count)
    return cpdl__error(CPDL_EEOF, "data source %s: sample %" PRId64 " out of range [0, %" PRId64 ")",
                       src->scheme, index, count);
  char err[PLUGIN_ERR_MAX] = "";
  lock(src);
  int rc = src->plugin->read_row(src->state, index, width, input_ids, labels, loss_mask,
                                 position_ids, err, sizeof err);
  unlock(src);
  if (rc)
    return cpdl__error(rc > 0 ? CPDL_ESOURCE : rc, "data source %s, sample %" PRId64 ": %s",
                       src->scheme, index, err[0] ? err : cpdl_strerror(rc));
  return 0;
}

int cpdl__source_consumed(const cpdl__source_t *src, int64_t *consumed) {
  *consumed = 0;
  if (!cpdl__source_global_order(src) || !HAS_MEMBER(src, consumed))
    return 0;
  int64_t c = src->plugin->consumed(src->state), n = cpdl__source_count(src);
  if (c < 0 || c > n)
    return cpdl__error(CPDL_EPLUGIN, "data source plugin %s says %" PRId64 " samples are consumed "
                       "before the stream, outside [0, %" PRId64 "]", src->path, c, n);
  *consumed = c;
  return 0;
}

int64_t cpdl__source_document_count(const cpdl__source_t *src) {
  return HAS_MEMBER(src, document_count) && HAS_MEMBER(src, document)
             ? src->plugin->document_count(src->state)
             : cpdl__source_count(src);
}

int cpdl__source_document(const cpdl__source_t *src, int64_t doc, int64_t *first,
                          int64_t *n_samples) {
  int64_t n_docs = cpdl__source_document_count(src);
  if (doc < 0 || doc >= n_docs)
    return cpdl__error(CPDL_EARG, "data source %s: document %" PRId64 " out of range [0, %" PRId64 ")",
                       src->scheme, doc, n_docs);
  if (!(HAS_MEMBER(src, document_count) && HAS_MEMBER(src, document))) {
    *first = doc;
    *n_samples = 1;
    return 0;
  }
  int rc = src->plugin->document(src->state, doc, first, n_samples);
  if (rc)
    return cpdl__error(rc > 0 ? CPDL_ESOURCE : rc, "data source %s: document %" PRId64 " failed",
                       src->scheme, doc);
  return 0;
}

bool cpdl__source_has_batches(const cpdl__source_t *src) {
  return HAS_MEMBER(src, batch_count) && HAS_MEMBER(src, read_batch);
}

int64_t cpdl__source_batch_count(const cpdl__source_t *src) {
  return cpdl__source_has_batches(src) ? src->plugin->batch_count(src->state) : 0;
}

int cpdl__source_read_batch(cpdl__source_t *src, int64_t step, cpdl_tensor_t *fields,
                            int *n_fields) {
  *n_fields = 0;
  if (!cpdl__source_has_batches(src))
    return cpdl__error(CPDL_ESOURCE,
                       "data source %s yields token samples, not pre-collated batches", src->scheme);
  int64_t count = cpdl__source_batch_count(src);
  if (step < 0 || step >= count)
    return cpdl__error(CPDL_EEOF, "data source %s: batch %" PRId64 " out of range [0, %" PRId64 ")",
                       src->scheme, step, count);
  char err[PLUGIN_ERR_MAX] = "";
  int n = 0;
  lock(src);
  int rc = src->plugin->read_batch(src->state, step, src->batch, &n, err, sizeof err);
  unlock(src);
  if (rc)
    return cpdl__error(rc > 0 ? CPDL_ESOURCE : rc, "data source %s, batch %" PRId64 ": %s",
                       src->scheme, step, err[0] ? err : cpdl_strerror(rc));
  if (n < 1 || n > CPDL_SOURCE_MAX_FIELDS)
    return cpdl__error(CPDL_EPLUGIN, "data source plugin %s returned %d fields (1..%d allowed)",
                       src->path, n, CPDL_SOURCE_MAX_FIELDS);
  for (int f = 0; f < n; f++) {
    const cpdl_source_tensor_t *t = &src->batch[f];
    if (t->ndim < 1 || t->ndim > CPDL_MAX_DIMS || t->dtype < 0 || t->dtype >= CPDL_DTYPE_COUNT ||
        memchr(t->name, '\0', sizeof t->name) == NULL)
      return cpdl__error(CPDL_EPLUGIN, "data source plugin %s returned an invalid field %d",
                         src->path, f);
    fields[f].name = t->name;
    fields[f].dtype = (cpdl_dtype_t)t->dtype;
    fields[f].ndim = t->ndim;
    for (int d = 0; d < CPDL_MAX_DIMS; d++)
      fields[f].shape[d] = d < t->ndim ? t->shape[d] : 0;
    fields[f].data = t->data;
  }
  *n_fields = n;
  return 0;
}

/* ---- public API (cpdl/source.h) ------------------------------------------ */

CPDL_API int cpdl_source_open(const char *uri, cpdl_source_t **out) {
  if (!out)
    return cpdl__error(CPDL_EARG, "cpdl_source_open: out is NULL");
  return cpdl__source_open(uri, NULL, (cpdl__source_t **)out);
}

/* Counts are never error codes (cpdl.h "Conventions"): a NULL source counts 0
 * and leaves a message. */
static int64_t null_count(const char *fn) {
  (void)cpdl__error(CPDL_EARG, "%s: the source is NULL", fn);
  return 0;
}

CPDL_API int64_t cpdl_source_count(const cpdl_source_t *src) {
  return src ? cpdl__source_count((const cpdl__source_t *)src) : null_count("cpdl_source_count");
}

CPDL_API int64_t cpdl_source_eot(const cpdl_source_t *src) {
  if (!src) {
    (void)null_count("cpdl_source_eot");
    return -1;
  }
  return cpdl__source_eot((const cpdl__source_t *)src);
}

CPDL_API int cpdl_source_read(cpdl_source_t *src, int64_t index, const void **tokens,
                              int64_t *n_tokens, int *token_bytes) {
  if (!src || !tokens || !n_tokens || !token_bytes)
    return cpdl__error(CPDL_EARG, "cpdl_source_read: NULL argument");
  cpdl__sample_t s;
  int rc = cpdl__source_read((cpdl__source_t *)src, index, &s);
  if (rc)
    return rc;
  *tokens = s.tokens;
  *n_tokens = s.n_tokens;
  *token_bytes = s.token_bytes;
  return 0;
}

/* Strings are never NULL: a NULL source names nothing and leaves a message. */
static const char *null_text(const char *fn, const char *text) {
  (void)cpdl__error(CPDL_EARG, "%s: the source is NULL", fn);
  return text;
}

CPDL_API const char *cpdl_source_name(const cpdl_source_t *src) {
  return src ? cpdl__source_name((const cpdl__source_t *)src) : null_text("cpdl_source_name", "?");
}

CPDL_API const char *cpdl_source_description(const cpdl_source_t *src) {
  return src ? cpdl__source_description((const cpdl__source_t *)src)
             : null_text("cpdl_source_description", "");
}

CPDL_API const char *cpdl_source_plugin_path(const cpdl_source_t *src) {
  return src ? cpdl__source_plugin_path((const cpdl__source_t *)src)
             : null_text("cpdl_source_plugin_path", "");
}

CPDL_API int64_t cpdl_source_document_count(const cpdl_source_t *src) {
  return src ? cpdl__source_document_count((const cpdl__source_t *)src)
             : null_count("cpdl_source_document_count");
}

CPDL_API int64_t cpdl_source_batch_count(const cpdl_source_t *src) {
  return src ? cpdl__source_batch_count((const cpdl__source_t *)src)
             : null_count("cpdl_source_batch_count");
}

CPDL_API int cpdl_source_read_batch(cpdl_source_t *src, int64_t step, cpdl_tensor_t *fields,
                                    int *n_fields) {
  if (!src || !fields || !n_fields)
    return cpdl__error(CPDL_EARG, "cpdl_source_read_batch: NULL argument");
  return cpdl__source_read_batch((cpdl__source_t *)src, step, fields, n_fields);
}

CPDL_API void cpdl_source_close(cpdl_source_t *src) { cpdl__source_close((cpdl__source_t *)src); }
