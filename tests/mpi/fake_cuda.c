/* fake_cuda.c — a stand-in for the CUDA driver API (the calls device.c
 * makes), for machines without a GPU. "Device memory" is host memory, and a
 * stream really is asynchronous in the way that matters for the feed's
 * promises: a cuMemcpyHtoDAsync only queues the copy; the copy reads its
 * source when an event recorded after it is synchronized, and then only after
 * FAKE_CUDA_DELAY_US microseconds (a slow DMA). So a feed that gave a slot
 * back before synchronizing its copy's event would copy data the leader has
 * already overwritten: the bytes differ, and the source's checksum taken at
 * enqueue time no longer matches (fake_cuda_violations() counts that).
 * Streams that are not this library's (the consumer's: 0 or any other value)
 * are complete at once: the test's consumer uses its data synchronously.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_OPS 64

typedef struct {
  void *dst;
  const void *src;
  size_t n;
  uint64_t sum;  /* of src at enqueue */
} op_t;

typedef struct {
  uint32_t magic;
  op_t ops[MAX_OPS];
  int n_ops, done;
} stream_t;

typedef struct {
  stream_t *stream;  /* NULL: complete */
  int upto;
} event_t;

#define STREAM_MAGIC 0x5354524du

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int violations, registered, unregistered, allocs, frees, copies;

static uint64_t checksum(const void *p, size_t n) {
  const unsigned char *b = p;
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++)
    h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

static stream_t *ours(void *s) {
  stream_t *st = s;
  return st && st->magic == STREAM_MAGIC ? st : NULL;
}

int fake_cuda_violations(void) { return violations; }
int fake_cuda_registered(void) { return registered - unregistered; }
int fake_cuda_allocs(void) { return allocs - frees; }
int fake_cuda_copies(void) { return copies; }
int fake_cuda_alloc_calls(void) { return allocs; } /* every cuMemAlloc so far */

int cuInit(unsigned flags) { (void)flags; return 0; }
int cuDeviceGet(int *dev, int ordinal) { *dev = ordinal; return 0; }
int cuDevicePrimaryCtxRetain(void **ctx, int dev) { (void)dev; *ctx = (void *)&lock; return 0; }
int cuDevicePrimaryCtxRelease_v2(int dev) { (void)dev; return 0; }
int cuCtxPushCurrent_v2(void *ctx) { (void)ctx; return 0; }
int cuCtxPopCurrent_v2(void **ctx) { if (ctx) *ctx = (void *)&lock; return 0; }

int cuStreamCreate(void **s, unsigned flags) {
  (void)flags;
  stream_t *st = calloc(1, sizeof *st);
  if (!st)
    return 2; /* CUDA_ERROR_OUT_OF_MEMORY */
  st->magic = STREAM_MAGIC;
  *s = st;
  return 0;
}
int cuStreamDestroy_v2(void *s) { free(ours(s)); return 0; }
int cuStreamWaitEvent(void *s, void *e, unsigned flags) { (void)s; (void)e; (void)flags; return 0; }

int cuEventCreate(void **e, unsigned flags) {
  (void)flags;
  *e = calloc(1, sizeof(event_t));
  return *e ? 0 : 2;
}
int cuEventDestroy_v2(void *e) { free(e); return 0; }

int cuEventRecord(void *e, void *s) {
  event_t *ev = e;
  stream_t *st = ours(s);
  pthread_mutex_lock(&lock);
  ev->stream = st;
  ev->upto = st ? st->n_ops : 0;
  pthread_mutex_unlock(&lock);
  return 0;
}

int cuEventSynchronize(void *e) {
  event_t *ev = e;
  if (!ev->stream)
    return 0;
  const char *delay = getenv("FAKE_CUDA_DELAY_US");
  if (delay && atoi(delay) > 0)
    usleep((unsigned)atoi(delay));
  pthread_mutex_lock(&lock);
  stream_t *st = ev->stream;
  for (; st->done < ev->upto; st->done++) {
    op_t *op = &st->ops[st->done % MAX_OPS];
    if (checksum(op->src, op->n) != op->sum)
      violations++; /* the source changed before the copy read it */
    memcpy(op->dst, op->src, op->n);
    copies++;
  }
  pthread_mutex_unlock(&lock);
  return 0;
}

int cuMemAlloc_v2(unsigned long long *p, size_t n) {
  void *m = NULL;
  if (posix_memalign(&m, 256, n ? n : 1))
    return 2;
  memset(m, 0xA5, n);
  pthread_mutex_lock(&lock);
  allocs++;
  pthread_mutex_unlock(&lock);
  *p = (unsigned long long)(uintptr_t)m;
  return 0;
}
int cuMemFree_v2(unsigned long long p) {
  free((void *)(uintptr_t)p);
  pthread_mutex_lock(&lock);
  frees++;
  pthread_mutex_unlock(&lock);
  return 0;
}

int cuMemcpyHtoDAsync_v2(unsigned long long dst, const void *src, size_t n, void *s) {
  stream_t *st = ours(s);
  if (!st) {
    memcpy((void *)(uintptr_t)dst, src, n);
    return 0;
  }
  pthread_mutex_lock(&lock);
  if (st->n_ops - st->done >= MAX_OPS) {
    pthread_mutex_unlock(&lock);
    return 1; /* CUDA_ERROR_INVALID_VALUE: the stand-in's queue is full */
  }
  st->ops[st->n_ops % MAX_OPS] = (op_t){(void *)(uintptr_t)dst, src, n, checksum(src, n)};
  st->n_ops++;
  pthread_mutex_unlock(&lock);
  return 0;
}

int cuMemHostRegister_v2(void *p, size_t n, unsigned flags) {
  (void)p; (void)n; (void)flags;
  pthread_mutex_lock(&lock);
  registered++;
  pthread_mutex_unlock(&lock);
  return 0;
}
int cuMemHostUnregister(void *p) {
  (void)p;
  pthread_mutex_lock(&lock);
  unregistered++;
  pthread_mutex_unlock(&lock);
  return 0;
}

int cuGetErrorString(int res, const char **text) {
  *text = res ? "fake CUDA error" : "no error";
  return 0;
}
