/* device_feed.c — the device feed (src/device.c) on a stand-in CUDA driver
 * (fake_cuda.c, named by CPDL_CUDA_LIBRARY): every step it delivers equals
 * the plain loader's view of the same step, byte for byte; a slot is given
 * back only after its copy read it (the stand-in delays copies and counts a
 * source that changed under one); a step whose tensors are kept is never
 * overwritten by later steps; tensors outlive close; early close with steps
 * queued; the end is CPDL_EEOF, sticky; no buffer, registration or segment is
 * left. A missing driver is CPDL_EARG naming it.
 *   mpi_device_feed "<config>"
 */
#include "mpi_test.h"
#include "internal.h" /* cpdl__fnv1a: the library's one byte hash */

#include <dlfcn.h>

#define MAX_STEPS 64

typedef struct {
  void *data;
  struct { int32_t type, id; } device;
  int32_t ndim;
  struct { uint8_t code, bits; uint16_t lanes; } dtype;
  int64_t *shape, *strides;
  uint64_t byte_offset;
} dl_tensor_t;
typedef struct dl_managed {
  dl_tensor_t t;
  void *ctx;
  void (*deleter)(struct dl_managed *);
} dl_managed_t;

static uint64_t sum_bytes(const void *p, size_t n) {
  return cpdl__fnv1a(CPDL__FNV1A_BASIS, p, n);
}

typedef struct {
  int n_fields;
  char names[CPDL_MAX_FIELDS][CPDL_NAME_MAX];
  size_t nbytes[CPDL_MAX_FIELDS];
  uint64_t sums[CPDL_MAX_FIELDS];
} step_record_t;

static step_record_t expect[MAX_STEPS];
static int n_expect;

static int open_loader(const char *conf, cpdl_loader_t **out) {
  cpdl_config_t cfg;
  cpdl_config_init(&cfg);
  int rc = cpdl_config_parse(&cfg, conf);
  if (!rc)
    rc = cpdl_loader_open(MPI_COMM_WORLD, &cfg, out);
  return rc;
}

static size_t tensor_bytes(const dl_tensor_t *t) {
  size_t n = (size_t)t->dtype.bits / 8;
  for (int d = 0; d < t->ndim; d++)
    n *= (size_t)t->shape[d];
  return n;
}

/* One pass through the device feed: each step compared with `expect`; the
 * tensors of step `keep` are kept to the end (and after close) and checked
 * again; with `stop_after` > 0 the feed is closed early with steps queued. */
static void run_feed(const char *conf, int prefetch, int keep, int stop_after) {
  cpdl_loader_t *L;
  int rc = open_loader(conf, &L);
  CHECK(rc == 0, "open: %s", cpdl_last_error());
  if (rc)
    return;
  cpdl_device_params_t p = {.struct_size = sizeof p, .prefetch = prefetch, .device = 0,
                            .dl_device_type = CPDL_DL_CPU};
  cpdl_device_feed_t *feed;
  rc = cpdl_device_feed_open(L, &p, &feed);
  CHECK(rc == 0, "device feed open: %s", cpdl_last_error());
  if (rc) {
    cpdl_loader_close(L);
    return;
  }
  dl_managed_t *kept[CPDL_MAX_FIELDS] = {0};
  int n_kept = 0, steps = 0;
  for (;;) {
    if (stop_after > 0 && steps == stop_after)
      break;
    cpdl_device_step_t s;
    rc = cpdl_device_feed_next(feed, 0, &s);
    if (rc == CPDL_EEOF)
      break;
    CHECK(rc == 0, "feed next (step %d): %s", steps, cpdl_last_error());
    if (rc)
      break;
    CHECK(s.step == (uint64_t)steps, "step %llu, expected %d", (unsigned long long)s.step, steps);
    CHECK(steps < n_expect, "the feed gave step %d; the loader gave %d steps", steps, n_expect);
    const step_record_t *e = steps < n_expect ? &expect[steps] : NULL;
    CHECK(e && s.n_fields == e->n_fields, "step %d: %d fields", steps, s.n_fields);
    CHECK(s.layout == 1, "step %d: layout %llu (every step has the same fields: 1)", steps,
          (unsigned long long)s.layout);
    for (int i = 0; i < s.n_fields; i++) {
      dl_managed_t *m = s.tensors[i];
      if (e && i < e->n_fields) {
        CHECK(strcmp(s.names[i], e->names[i]) == 0, "step %d field %d: %s vs %s", steps, i,
              s.names[i], e->names[i]);
        CHECK(tensor_bytes(&m->t) == e->nbytes[i], "step %d %s: %zu bytes vs %zu", steps,
              e->names[i], tensor_bytes(&m->t), e->nbytes[i]);
        CHECK(sum_bytes(m->t.data, e->nbytes[i]) == e->sums[i],
              "step %d %s: bytes differ from the loader's view", steps, e->names[i]);
        CHECK(m->t.device.type == CPDL_DL_CPU, "device type %d", m->t.device.type);
      }
      if (steps == keep)
        kept[n_kept++] = m;
      else
        m->deleter(m); /* the consumer is done with it */
    }
    steps++;
  }
  if (stop_after <= 0) {
    CHECK(steps == n_expect, "prefetch %d: %d steps, the loader gave %d", prefetch, steps,
          n_expect);
    cpdl_device_step_t s;
    CHECK(cpdl_device_feed_next(feed, 0, &s) == CPDL_EEOF, "the end is not sticky");
  }
  CHECK(cpdl_device_feed_close(feed) == 0, "feed close: %s", cpdl_last_error());
  for (int i = 0; i < n_kept; i++) {
    const step_record_t *e = &expect[keep];
    CHECK(sum_bytes(kept[i]->t.data, e->nbytes[i]) == e->sums[i],
          "kept step %d %s was overwritten by a later step", keep, e->names[i]);
  }
  CHECK(cpdl_loader_close(L) == 0, "close: %s", cpdl_last_error());
  for (int i = 0; i < n_kept; i++)
    kept[i]->deleter(kept[i]); /* after close: the feed is freed with the last one */
}

int main(int argc, char **argv) {
  cpdl_test_init(&argc, &argv);
  const char *conf = argc > 1 ? argv[1] : "cp=2 seq_len=4096 steps=12 slots=2";
  const char *lib = getenv("CPDL_CUDA_LIBRARY");
  void *fake = lib ? dlopen(lib, RTLD_NOW) : NULL;
  CHECK(fake != NULL, "CPDL_CUDA_LIBRARY=%s does not load: %s", lib ? lib : "(unset)",
        dlerror());
  int (*violations)(void) = fake ? (int (*)(void))dlsym(fake, "fake_cuda_violations") : NULL;
  int (*registered)(void) = fake ? (int (*)(void))dlsym(fake, "fake_cuda_registered") : NULL;
  int (*allocs)(void) = fake ? (int (*)(void))dlsym(fake, "fake_cuda_allocs") : NULL;
  int (*copies)(void) = fake ? (int (*)(void))dlsym(fake, "fake_cuda_copies") : NULL;
  if (!violations || !registered || !allocs || !copies) {
    CHECK(0, "the stand-in driver lacks its counters");
    int code = cpdl_test_finish();
    MPI_Finalize();
    return code;
  }

  /* The reference: the loader's own views. */
  cpdl_loader_t *L;
  int rc = open_loader(conf, &L);
  CHECK(rc == 0, "open: %s", cpdl_last_error());
  cpdl_batch_t b;
  while (!rc && n_expect < MAX_STEPS && (rc = cpdl_loader_next(L, &b)) == 0) {
    step_record_t *e = &expect[n_expect++];
    e->n_fields = b.n_fields;
    for (int i = 0; i < b.n_fields; i++) {
      snprintf(e->names[i], sizeof e->names[i], "%s", b.fields[i].name);
      e->nbytes[i] = b.fields[i].nbytes;
      e->sums[i] = sum_bytes(b.fields[i].data, b.fields[i].nbytes);
    }
    cpdl_batch_release(L, &b);
  }
  CHECK(rc == CPDL_EEOF, "reference run: %s", cpdl_last_error());
  CHECK(n_expect >= 4, "reference run gave %d steps", n_expect);
  cpdl_loader_close(L);

  run_feed(conf, 1, 1, 0);
  run_feed(conf, 2, 0, 0);
  run_feed(conf, 3, 2, 3); /* closed early, steps queued */
  CHECK(violations() == 0, "%d copies read a slot after it was given back", violations());
  CHECK(copies() >= 2 * n_expect, "only %d copies were made", copies());
  CHECK(allocs() == 0, "%d device buffers left allocated", allocs());
  CHECK(registered() == 0, "%d host registrations left", registered());

  /* No driver: a clear error, nothing else breaks. */
  setenv("CPDL_CUDA_LIBRARY", "/nonexistent/libcuda.so.1", 1);
  rc = open_loader(conf, &L);
  CHECK(rc == 0, "open: %s", cpdl_last_error());
  if (!rc) {
    cpdl_device_params_t p = {.struct_size = sizeof p, .prefetch = 1};
    cpdl_device_feed_t *feed = (cpdl_device_feed_t *)&p;
    CHECK(cpdl_device_feed_open(L, &p, &feed) == CPDL_EARG && feed == NULL,
          "open without a driver did not fail with CPDL_EARG");
    CHECK(strstr(cpdl_last_error(), "CUDA driver") != NULL, "message: %s", cpdl_last_error());
    CHECK(cpdl_loader_next(L, &b) == 0, "the loader still works: %s", cpdl_last_error());
    cpdl_batch_release(L, &b);
    CHECK(cpdl_loader_close(L) == 0, "close: %s", cpdl_last_error());
  }
  CHECK(cpdl_test_shm_residue("after close") == 0, "segments left behind");
  int code = cpdl_test_finish();
  MPI_Finalize();
  return code;
}
