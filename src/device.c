/* device.c — a loader's steps copied to a CUDA device by a thread of cpdl's
 * own (include/cpdl/device.h says what the caller sees).
 *
 * Why a C thread: a Python worker that copies step k+1 while step k trains
 * holds the interpreter lock for its own Python (tensor objects, events,
 * streams) exactly when the training loop wants it back, and the loop's
 * next() pays for that on the critical path. Here the copy thread never
 * touches Python; next() is a dequeue.
 *
 * Invariants:
 *  - Between open and close only the copy thread calls cpdl_loader_next /
 *    cpdl_batch_release; it releases a slot only after cuEventSynchronize of
 *    the copy that read it.
 *  - At most `prefetch` steps are queued and not taken: the thread waits for a
 *    credit (one per step taken, prefetch at open) before it takes a step.
 *  - A buffer is on the free list only when no tensor of its step is alive;
 *    its free_ev then marks the consumer stream's position when the last one
 *    died, and the copy stream waits on it before writing the buffer again.
 *    Its step's DLManagedTensors live in it, so they are rewritten only then.
 *  - next() allocates nothing, takes the lock once and makes no system call
 *    when a step is queued: the credit is a count the thread polls (and a
 *    wake only when the consumer finds the queue empty and waits anyway).
 *  - The feed lives while its handle (open..close) or any exported tensor
 *    does (`live` counts them); whoever drops the last frees everything.
 *  - The loader's error (the thread's last message) travels with the end
 *    entry (end_message), so next() on the consumer's thread reports it with
 *    the loader's words.
 */
#include "internal.h"

#include "cpdl/device.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- the CUDA driver API, loaded at run time ------------------------------ */

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext;
typedef void *CUstream;
typedef void *CUevent;
typedef unsigned long long CUdeviceptr;

#define CU_STREAM_NON_BLOCKING 0x1
#define CU_MEMHOSTREGISTER_PORTABLE 0x1
#define CU_MEMHOSTREGISTER_READ_ONLY 0x8
#define CU_EVENT_DISABLE_TIMING 0x2

typedef struct cuda_api {
  void *handle;
  CUresult (*Init)(unsigned);
  CUresult (*DeviceGet)(CUdevice *, int);
  CUresult (*DevicePrimaryCtxRetain)(CUcontext *, CUdevice);
  CUresult (*DevicePrimaryCtxRelease)(CUdevice);
  CUresult (*CtxPushCurrent)(CUcontext);
  CUresult (*CtxPopCurrent)(CUcontext *);
  CUresult (*StreamCreate)(CUstream *, unsigned);
  CUresult (*StreamDestroy)(CUstream);
  CUresult (*StreamWaitEvent)(CUstream, CUevent, unsigned);
  CUresult (*EventCreate)(CUevent *, unsigned);
  CUresult (*EventDestroy)(CUevent);
  CUresult (*EventRecord)(CUevent, CUstream);
  CUresult (*EventSynchronize)(CUevent);
  CUresult (*MemAlloc)(CUdeviceptr *, size_t);
  CUresult (*MemFree)(CUdeviceptr);
  CUresult (*MemcpyHtoDAsync)(CUdeviceptr, const void *, size_t, CUstream);
  CUresult (*MemHostRegister)(void *, size_t, unsigned);
  CUresult (*MemHostUnregister)(void *);
  CUresult (*GetErrorString)(CUresult, const char **);
} cuda_api_t;

static int cuda_load(cuda_api_t *cu) {
  const char *name = getenv("CPDL_CUDA_LIBRARY");
  if (!name || !*name)
    name = "libcuda.so.1";
  memset(cu, 0, sizeof *cu);
  cu->handle = dlopen(name, RTLD_NOW | RTLD_LOCAL);
  if (!cu->handle)
    return cpdl__error(CPDL_EARG, "device feed: cannot load the CUDA driver (%s): %s; "
                       "device=\"cuda\" needs an NVIDIA driver (or set CPDL_CUDA_LIBRARY)",
                       name, dlerror());
  struct { void **slot; const char *sym; } syms[] = {
      {(void **)&cu->Init, "cuInit"},
      {(void **)&cu->DeviceGet, "cuDeviceGet"},
      {(void **)&cu->DevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain"},
      {(void **)&cu->DevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2"},
      {(void **)&cu->CtxPushCurrent, "cuCtxPushCurrent_v2"},
      {(void **)&cu->CtxPopCurrent, "cuCtxPopCurrent_v2"},
      {(void **)&cu->StreamCreate, "cuStreamCreate"},
      {(void **)&cu->StreamDestroy, "cuStreamDestroy_v2"},
      {(void **)&cu->StreamWaitEvent, "cuStreamWaitEvent"},
      {(void **)&cu->EventCreate, "cuEventCreate"},
      {(void **)&cu->EventDestroy, "cuEventDestroy_v2"},
      {(void **)&cu->EventRecord, "cuEventRecord"},
      {(void **)&cu->EventSynchronize, "cuEventSynchronize"},
      {(void **)&cu->MemAlloc, "cuMemAlloc_v2"},
      {(void **)&cu->MemFree, "cuMemFree_v2"},
      {(void **)&cu->MemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2"},
      {(void **)&cu->MemHostRegister, "cuMemHostRegister_v2"},
      {(void **)&cu->MemHostUnregister, "cuMemHostUnregister"},
      {(void **)&cu->GetErrorString, "cuGetErrorString"},
  };
  for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
    *syms[i].slot = dlsym(cu->handle, syms[i].sym);
    if (!*syms[i].slot) {
      int rc = cpdl__error(CPDL_EARG, "device feed: the CUDA driver %s has no %s", name,
                           syms[i].sym);
      dlclose(cu->handle);
      cu->handle = NULL;
      return rc;
    }
  }
  return 0;
}

/* CPDL_EDEVICE naming the call and the driver's words for `res`. */
static int cuda_error(const cuda_api_t *cu, CUresult res, const char *call) {
  const char *text = NULL;
  if (cu->GetErrorString)
    cu->GetErrorString(res, &text);
  return cpdl__error(CPDL_EDEVICE, "device feed: %s failed: CUDA error %d (%s)", call, res,
                     text ? text : "unknown");
}

#define CU_TRY(cu, call)                                          \
  do {                                                            \
    CUresult res_ = (cu)->call;                                   \
    if (res_ != 0)                                                \
      return cuda_error((cu), res_, #call);                       \
  } while (0)

/* ---- DLPack (dlpack.h v0.x, the layout torch 1.13 and later read) -------- */

typedef struct {
  int32_t device_type, device_id;
} dl_device_t;
typedef struct {
  uint8_t code, bits;
  uint16_t lanes;
} dl_dtype_t;
typedef struct {
  void *data;
  dl_device_t device;
  int32_t ndim;
  dl_dtype_t dtype;
  int64_t *shape, *strides;
  uint64_t byte_offset;
} dl_tensor_t;
typedef struct dl_managed {
  dl_tensor_t dl_tensor;
  void *manager_ctx;
  void (*deleter)(struct dl_managed *);
} dl_managed_t;

enum { DL_INT = 0, DL_UINT = 1, DL_FLOAT = 2, DL_BFLOAT = 4 };

static dl_dtype_t dl_dtype(cpdl_dtype_t t) {
  switch (t) {
  case CPDL_DTYPE_BOOL: return (dl_dtype_t){DL_UINT, 8, 1}; /* see cpdl_device_step_t */
  case CPDL_DTYPE_UINT8: return (dl_dtype_t){DL_UINT, 8, 1};
  case CPDL_DTYPE_INT32: return (dl_dtype_t){DL_INT, 32, 1};
  case CPDL_DTYPE_INT64: return (dl_dtype_t){DL_INT, 64, 1};
  case CPDL_DTYPE_FLOAT16: return (dl_dtype_t){DL_FLOAT, 16, 1};
  case CPDL_DTYPE_BFLOAT16: return (dl_dtype_t){DL_BFLOAT, 16, 1};
  case CPDL_DTYPE_FLOAT32: return (dl_dtype_t){DL_FLOAT, 32, 1};
  case CPDL_DTYPE_FLOAT64: return (dl_dtype_t){DL_FLOAT, 64, 1};
  case CPDL_DTYPE_COUNT: break;
  }
  return (dl_dtype_t){DL_UINT, 8, 1};
}

/* ---- the feed ------------------------------------------------------------- */

typedef struct buffer buffer_t;

typedef struct exported {
  dl_managed_t managed;  /* first: the deleter gets this pointer */
  int64_t shape[CPDL_MAX_DIMS], strides[CPDL_MAX_DIMS];
  struct cpdl_device_feed *feed;
  buffer_t *buffer;
} exported_t;

/* The names and dtypes of a step's fields, in order. Kept (never changed)
 * from the step that first had them until the feed is freed, so a step's
 * names stay valid and a consumer may cache by `id`. */
typedef struct layout {
  uint64_t id;           /* 1, 2, …: one per distinct layout */
  int n_fields;
  char names[CPDL_MAX_FIELDS][CPDL_NAME_MAX];
  cpdl_dtype_t dtypes[CPDL_MAX_FIELDS];
  struct layout *next;
} layout_t;

/* A device buffer holds one step at a time; its tensors' DLManagedTensors
 * live in it (a step's are written only while no tensor of the buffer's
 * previous step is alive), so handing a step over allocates nothing. */
struct buffer {
  CUdeviceptr ptr;
  size_t bytes;
  CUevent free_ev;       /* consumer stream position when its last tensor died */
  bool free_ev_recorded;
  uintptr_t consumer;    /* the stream its current step is used on */
  int refs;              /* tensors of its current step still alive */
  struct buffer *next;   /* free list / all-buffers list */
  struct buffer *next_all;
  exported_t fields[CPDL_MAX_FIELDS];
};

typedef struct entry {
  int rc;                /* 0: a step; else the error that ended the stream */
  uint64_t step;
  const layout_t *layout;
  cpdl_mesh_coords_t mesh;
  buffer_t *buffer;
} entry_t;

struct cpdl_device_feed {
  cuda_api_t cu;
  CUdevice dev;
  CUcontext ctx;
  CUstream copy_stream;
  CUevent copy_ev;
  cpdl_loader_t *loader;
  void *pinned;          /* this rank's region, page-locked at the first step */
  bool pin_tried;
  int prefetch, dl_device_type, device;
  layout_t *layouts;     /* newest first; the copy thread adds, feed_destroy frees */

  pthread_t thread;
  bool thread_started;
  _Atomic bool stop;
  /* Credits: steps the thread may take (prefetch at open, one per step
   * taken). next() only adds to the count, without a system call; the thread
   * looks every CREDIT_POLL_NS while it has none, and `wake` rouses it at
   * once when the consumer is about to wait for a step, or at close. */
  _Atomic int credits;
  sem_t wake, ready;

  pthread_mutex_t lock;  /* guards everything below */
  entry_t *queue;        /* prefetch + 1 entries, a ring */
  int head, count;
  buffer_t *free_list, *all;
  int live;              /* the handle + exported tensors not yet deleted */
  char end_message[512]; /* the copy thread's last words (with the entry whose rc != 0) */
  int sticky_rc;         /* next() after the end or an error */
  char sticky_message[512];
};

static void feed_destroy(cpdl_device_feed_t *f) {
  if (f->cu.handle && f->ctx) {
    f->cu.CtxPushCurrent(f->ctx);
    for (buffer_t *b = f->all, *n; b; b = n) {
      n = b->next_all;
      if (b->ptr)
        f->cu.MemFree(b->ptr);
      if (b->free_ev)
        f->cu.EventDestroy(b->free_ev);
      free(b);
    }
    if (f->copy_ev)
      f->cu.EventDestroy(f->copy_ev);
    if (f->copy_stream)
      f->cu.StreamDestroy(f->copy_stream);
    CUcontext popped;
    f->cu.CtxPopCurrent(&popped);
    f->cu.DevicePrimaryCtxRelease(f->dev);
  }
  for (layout_t *l = f->layouts, *n; l; l = n) {
    n = l->next;
    free(l);
  }
  /* The library stays loaded: a late deleter may still be running its code. */
  sem_destroy(&f->wake);
  sem_destroy(&f->ready);
  pthread_mutex_destroy(&f->lock);
  free(f->queue);
  free(f);
}

/* Drop one reference (handle or tensor); the last frees the feed. Called with
 * the lock held; returns true if the caller must feed_destroy after unlocking. */
static bool unref_locked(cpdl_device_feed_t *f) {
  return --f->live == 0;
}

/* A tensor's storage died (torch calls this from whatever thread freed it). */
static void tensor_deleter(dl_managed_t *m) {
  exported_t *e = (exported_t *)m;
  cpdl_device_feed_t *f = e->feed;
  buffer_t *b = e->buffer;
  pthread_mutex_lock(&f->lock);
  if (--b->refs == 0) {
    /* Every use of the buffer was enqueued on its consumer stream before
     * now: the copy stream waits for this point before writing it again. */
    CUcontext popped;
    b->free_ev_recorded = f->cu.CtxPushCurrent(f->ctx) == 0 &&
                          f->cu.EventRecord(b->free_ev, (CUstream)b->consumer) == 0;
    f->cu.CtxPopCurrent(&popped);
    if (!b->free_ev_recorded) {
      /* Cannot order the reuse after the consumer: never reuse it. */
      b->next = NULL;
    } else {
      b->next = f->free_list;
      f->free_list = b;
    }
  }
  bool last = unref_locked(f);
  pthread_mutex_unlock(&f->lock);
  if (last)
    feed_destroy(f);
}

/* A buffer of at least `bytes` for the copy thread: a free one, else a new one. */
static int take_buffer(cpdl_device_feed_t *f, size_t bytes, buffer_t **out) {
  pthread_mutex_lock(&f->lock);
  buffer_t **link = &f->free_list;
  while (*link && (*link)->bytes < bytes)
    link = &(*link)->next;
  buffer_t *b = *link;
  if (b)
    *link = b->next;
  pthread_mutex_unlock(&f->lock);
  if (!b) {
    if (!(b = calloc(1, sizeof *b)))
      return cpdl__error(-ENOMEM, "device feed: out of memory");
    /* 2 MiB granules: steps whose shapes vary a little reuse buffers. */
    b->bytes = CPDL__ALIGN_UP(bytes ? bytes : 1, (size_t)2 << 20);
    CUresult res = f->cu.MemAlloc(&b->ptr, b->bytes);
    if (res == 0)
      res = f->cu.EventCreate(&b->free_ev, CU_EVENT_DISABLE_TIMING);
    if (res != 0) {
      if (b->ptr)
        f->cu.MemFree(b->ptr);
      free(b);
      return cuda_error(&f->cu, res, "cuMemAlloc/cuEventCreate of a step buffer");
    }
    pthread_mutex_lock(&f->lock);
    b->next_all = f->all;
    f->all = b;
    pthread_mutex_unlock(&f->lock);
  }
  *out = b;
  return 0;
}

static bool layout_matches(const layout_t *l, const cpdl_batch_t *batch) {
  if (l->n_fields != batch->n_fields)
    return false;
  for (int i = 0; i < batch->n_fields; i++)
    if (l->dtypes[i] != batch->fields[i].dtype ||
        strncmp(l->names[i], batch->fields[i].name, CPDL_NAME_MAX) != 0)
      return false;
  return true;
}

/* The layout of `batch`'s fields: a known one (the newest first: every step
 * of a loader usually has the same fields), else a new one, so the list holds
 * each distinct layout once. Only the copy thread calls this. */
static int find_layout(cpdl_device_feed_t *f, const cpdl_batch_t *batch, const layout_t **out) {
  for (const layout_t *l = f->layouts; l; l = l->next)
    if (layout_matches(l, batch)) {
      *out = l;
      return 0;
    }
  layout_t *n = calloc(1, sizeof *n);
  if (!n)
    return cpdl__error(-ENOMEM, "device feed: out of memory");
  n->id = f->layouts ? f->layouts->id + 1 : 1;
  n->n_fields = batch->n_fields;
  for (int i = 0; i < batch->n_fields; i++) {
    snprintf(n->names[i], sizeof n->names[i], "%s", batch->fields[i].name);
    n->dtypes[i] = batch->fields[i].dtype;
  }
  n->next = f->layouts;
  f->layouts = n;
  *out = n;
  return 0;
}

/* Copy the held batch into a buffer and describe it in `e`. */
static int copy_step(cpdl_device_feed_t *f, const cpdl_batch_t *batch, entry_t *e) {
  const char *lo = NULL, *hi = NULL;
  for (int i = 0; i < batch->n_fields; i++) {
    const char *d = batch->fields[i].data;
    if (!batch->fields[i].nbytes)
      continue;
    if (!lo || d < lo)
      lo = d;
    if (!hi || d + batch->fields[i].nbytes > hi)
      hi = d + batch->fields[i].nbytes;
  }
  size_t span = lo ? (size_t)(hi - lo) : 0;
  int rc = find_layout(f, batch, &e->layout);
  buffer_t *b = NULL;
  if (!rc)
    rc = take_buffer(f, span, &b);
  if (rc)
    return rc;
  if (span) {
    if (b->free_ev_recorded)
      CU_TRY(&f->cu, StreamWaitEvent(f->copy_stream, b->free_ev, 0));
    CU_TRY(&f->cu, MemcpyHtoDAsync(b->ptr, lo, span, f->copy_stream));
    CU_TRY(&f->cu, EventRecord(f->copy_ev, f->copy_stream));
    CU_TRY(&f->cu, EventSynchronize(f->copy_ev)); /* the copy has read the slot */
  }
  b->refs = batch->n_fields;
  e->buffer = b;
  e->step = batch->step;
  e->mesh = batch->mesh;
  for (int i = 0; i < batch->n_fields; i++) {
    const cpdl_view_field_t *v = &batch->fields[i];
    exported_t *x = &b->fields[i];
    x->feed = f;
    x->buffer = b;
    int64_t stride = 1;
    for (int d = v->ndim - 1; d >= 0; d--) {
      x->shape[d] = v->shape[d];
      x->strides[d] = stride;
      stride *= v->shape[d] > 0 ? v->shape[d] : 1;
    }
    dl_tensor_t *t = &x->managed.dl_tensor;
    t->data = (void *)(uintptr_t)(b->ptr + (v->nbytes ? (size_t)((const char *)v->data - lo) : 0));
    t->device = (dl_device_t){f->dl_device_type, f->device};
    t->ndim = v->ndim;
    t->dtype = dl_dtype(v->dtype);
    t->shape = x->shape;
    t->strides = x->strides;
    t->byte_offset = 0;
    x->managed.manager_ctx = x;
    x->managed.deleter = tensor_deleter;
  }
  return 0;
}

/* Page-lock this rank's whole region (every slot of its shard) once, so each
 * copy is a DMA straight from shared memory. The consumers' mapping is
 * read-only: that needs the read-only flag (CUDA >= 11.1). Without a lock the
 * copies still work, staged by the driver. */
static void pin_region(cpdl_device_feed_t *f, const cpdl_batch_t *batch) {
  f->pin_tried = true;
  void *region = (void *)(uintptr_t)batch->region;
  if (!region || !batch->region_bytes)
    return;
  if (f->cu.MemHostRegister(region, batch->region_bytes,
                            CU_MEMHOSTREGISTER_PORTABLE | CU_MEMHOSTREGISTER_READ_ONLY) == 0 ||
      f->cu.MemHostRegister(region, batch->region_bytes, CU_MEMHOSTREGISTER_PORTABLE) == 0)
    f->pinned = region;
}

static void push_entry(cpdl_device_feed_t *f, const entry_t *e, const char *end_message) {
  pthread_mutex_lock(&f->lock);
  int tail = (f->head + f->count) % (f->prefetch + 1);
  f->queue[tail] = *e;
  if (end_message)
    snprintf(f->end_message, sizeof f->end_message, "%s", end_message);
  f->count++;
  pthread_mutex_unlock(&f->lock);
  sem_post(&f->ready);
}

/* How often the copy thread, holding no credit, looks for one: the most a
 * step's copy can start late after the next() that made room for it (the
 * consumer's own wait for an empty queue wakes it at once). */
#define CREDIT_POLL_NS 1000000L

/* Wait for a credit and take it; false once the feed is stopping. The
 * acquire pairs with next()'s release add: the entry it dequeued (and the
 * buffer bookkeeping before it) is done before the thread reuses the slot. */
static bool take_credit(cpdl_device_feed_t *f) {
  for (;;) {
    if (f->stop)
      return false;
    int have = atomic_load_explicit(&f->credits, memory_order_acquire);
    if (have > 0) {
      if (atomic_compare_exchange_weak_explicit(&f->credits, &have, have - 1,
                                                memory_order_acquire, memory_order_relaxed))
        return true;
      continue;
    }
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += CREDIT_POLL_NS;
    if (until.tv_nsec >= 1000000000L) {
      until.tv_sec++;
      until.tv_nsec -= 1000000000L;
    }
    sem_timedwait(&f->wake, &until); /* a wake, a timeout or EINTR: look again */
  }
}

static void *copy_thread(void *arg) {
  cpdl_device_feed_t *f = arg;
  entry_t e;
  /* A batch thread is never let preempt a running one on wake-up (Linux's
   * fair scheduler leaves that to the tick): waking to look for a credit,
   * or roused by next(), this thread does not take the CPU from the
   * consumer. Best effort: without it (another OS) it may, nothing else. */
#ifdef SCHED_BATCH
  struct sched_param batch_param = {.sched_priority = 0};
  pthread_setschedparam(pthread_self(), SCHED_BATCH, &batch_param);
#endif
  int rc = f->cu.CtxPushCurrent(f->ctx) == 0 ? 0 : CPDL_EDEVICE;
  if (rc)
    cpdl__error(rc, "device feed: cannot make the device's context current in the copy thread");
  while (!rc) {
    if (!take_credit(f))
      break;
    cpdl_batch_t batch;
    rc = cpdl_loader_next(f->loader, &batch);
    if (rc)
      break;
    if (!f->pin_tried)
      pin_region(f, &batch);
    memset(&e, 0, sizeof e);
    rc = copy_step(f, &batch, &e);
    int rc2 = cpdl_batch_release(f->loader, &batch);
    if (!rc)
      rc = rc2;
    if (rc) {
      if (e.buffer) { /* copied (or not) but never handed out: back to the free list */
        pthread_mutex_lock(&f->lock);
        e.buffer->refs = 0;
        e.buffer->next = f->free_list;
        f->free_list = e.buffer;
        pthread_mutex_unlock(&f->lock);
      }
      break;
    }
    push_entry(f, &e, NULL);
  }
  if (!f->stop || rc) {
    memset(&e, 0, sizeof e);
    e.rc = rc ? rc : CPDL_EEOF;
    push_entry(f, &e, cpdl_last_error());
  }
  CUcontext popped;
  f->cu.CtxPopCurrent(&popped);
  return NULL;
}

static int feed_start(cpdl_device_feed_t *f) {
  CU_TRY(&f->cu, Init(0));
  CU_TRY(&f->cu, DeviceGet(&f->dev, f->device));
  CU_TRY(&f->cu, DevicePrimaryCtxRetain(&f->ctx, f->dev));
  CU_TRY(&f->cu, CtxPushCurrent(f->ctx));
  CUresult res = f->cu.StreamCreate(&f->copy_stream, CU_STREAM_NON_BLOCKING);
  if (res == 0)
    res = f->cu.EventCreate(&f->copy_ev, CU_EVENT_DISABLE_TIMING);
  CUcontext popped;
  f->cu.CtxPopCurrent(&popped);
  if (res != 0)
    return cuda_error(&f->cu, res, "cuStreamCreate/cuEventCreate of the copy stream");
  int err = pthread_create(&f->thread, NULL, copy_thread, f);
  if (err)
    return cpdl__error(-err, "device feed: cannot start the copy thread: %s", strerror(err));
  f->thread_started = true;
  return 0;
}

int cpdl_device_feed_open(cpdl_loader_t *loader, const cpdl_device_params_t *params,
                          cpdl_device_feed_t **out) {
  if (out)
    *out = NULL;
  if (!loader || !params || !out)
    return cpdl__error(CPDL_EARG, "cpdl_device_feed_open: NULL loader, params or out");
  if (params->struct_size < sizeof *params)
    return cpdl__error(CPDL_EARG, "cpdl_device_feed_open: params.struct_size %zu < %zu (set it "
                       "to sizeof(cpdl_device_params_t))", params->struct_size, sizeof *params);
  if (params->prefetch < 1 || params->prefetch > 64 || params->device < 0)
    return cpdl__error(CPDL_EARG, "cpdl_device_feed_open: prefetch %d (1..64) or device %d (>= 0)"
                       " out of range", params->prefetch, params->device);
  int dl_type = params->dl_device_type ? params->dl_device_type : CPDL_DL_CUDA;
  if (dl_type != CPDL_DL_CUDA && dl_type != CPDL_DL_CPU)
    return cpdl__error(CPDL_EARG, "cpdl_device_feed_open: dl_device_type %d is neither "
                       "CPDL_DL_CUDA nor CPDL_DL_CPU", dl_type);
  cpdl_device_feed_t *f = calloc(1, sizeof *f);
  if (!f)
    return cpdl__error(-ENOMEM, "device feed: out of memory");
  f->loader = loader;
  f->prefetch = params->prefetch;
  f->device = params->device;
  f->dl_device_type = dl_type;
  f->live = 1;
  pthread_mutex_init(&f->lock, NULL);
  f->credits = params->prefetch;
  sem_init(&f->wake, 0, 0);
  sem_init(&f->ready, 0, 0);
  int rc = 0;
  if (!(f->queue = calloc((size_t)params->prefetch + 1, sizeof *f->queue)))
    rc = cpdl__error(-ENOMEM, "device feed: out of memory");
  if (!rc)
    rc = cuda_load(&f->cu);
  if (!rc)
    rc = feed_start(f);
  if (rc) {
    if (f->thread_started) { /* not reached: the thread starts last */
      f->stop = true;
      sem_post(&f->wake);
      pthread_join(f->thread, NULL);
    }
    feed_destroy(f);
    return rc;
  }
  *out = f;
  return 0;
}

/* Delete an entry's exported tensors that nobody took (close). */
static void drop_entry(entry_t *e) {
  for (int i = 0; i < e->layout->n_fields; i++)
    e->buffer->fields[i].managed.deleter(&e->buffer->fields[i].managed);
}

/* The consumer's critical path: one lock for the dequeue and the hand-over
 * bookkeeping, nothing allocated, the credit posted last. */
int cpdl_device_feed_next(cpdl_device_feed_t *f, uintptr_t consumer_stream,
                          cpdl_device_step_t *out) {
  if (!f || !out)
    return cpdl__error(CPDL_EARG, "cpdl_device_feed_next: NULL feed or out");
  if (f->sticky_rc)
    return cpdl__error(f->sticky_rc, "%s", f->sticky_message);
  if (sem_trywait(&f->ready) != 0) {
    /* Nothing queued: the thread may be between two looks at its credits;
     * this wait is the caller's anyway, so rouse it now. */
    sem_post(&f->wake);
    while (sem_wait(&f->ready) != 0 && errno == EINTR) {
    }
  }
  pthread_mutex_lock(&f->lock);
  entry_t e = f->queue[f->head];
  f->head = (f->head + 1) % (f->prefetch + 1);
  f->count--;
  if (e.rc) {
    f->sticky_rc = e.rc;
    snprintf(f->sticky_message, sizeof f->sticky_message, "%s", f->end_message);
    pthread_mutex_unlock(&f->lock);
    return cpdl__error(e.rc, "%s", f->sticky_message);
  }
  const layout_t *l = e.layout;
  buffer_t *b = e.buffer;
  b->consumer = consumer_stream; /* before any of its tensors can die */
  f->live += l->n_fields;
  if (l->n_fields == 0) { /* nothing will ever delete it */
    b->next = f->free_list;
    f->free_list = b;
  }
  pthread_mutex_unlock(&f->lock);
  out->step = e.step;
  out->n_fields = l->n_fields;
  out->mesh = e.mesh;
  out->layout = l->id;
  for (int i = 0; i < l->n_fields; i++) {
    out->names[i] = l->names[i];
    out->tensors[i] = &b->fields[i].managed;
    out->dtypes[i] = l->dtypes[i];
  }
  /* The copy thread may take one more step: a count it polls, so the
   * caller makes no system call here (a futex wake of a sleeping thread,
   * an inter-processor interrupt, cost it tens of µs on a loaded host). */
  atomic_fetch_add_explicit(&f->credits, 1, memory_order_release);
  cpdl__error_clear();
  return 0;
}

int cpdl_device_feed_close(cpdl_device_feed_t *f) {
  if (!f)
    return 0;
  f->stop = true;
  sem_post(&f->wake);
  pthread_join(f->thread, NULL);
  if (f->pinned) { /* no copy reads the region any more */
    CUcontext popped;
    if (f->cu.CtxPushCurrent(f->ctx) == 0) {
      f->cu.MemHostUnregister(f->pinned);
      f->cu.CtxPopCurrent(&popped);
    }
    f->pinned = NULL;
  }
  /* Steps queued and never taken: their tensors die here. Their buffers hold
   * no consumer work: the event goes on the legacy stream 0, which is harmless. */
  pthread_mutex_lock(&f->lock);
  int n = f->count, head = f->head;
  f->count = 0;
  pthread_mutex_unlock(&f->lock);
  for (int i = 0; i < n; i++) {
    entry_t *e = &f->queue[(head + i) % (f->prefetch + 1)];
    if (e->rc)
      continue;
    pthread_mutex_lock(&f->lock);
    f->live += e->layout->n_fields; /* each deleter drops one */
    e->buffer->consumer = 0;        /* no stream ever used it */
    pthread_mutex_unlock(&f->lock);
    drop_entry(e);
  }
  pthread_mutex_lock(&f->lock);
  bool last = unref_locked(f);
  pthread_mutex_unlock(&f->lock);
  if (last)
    feed_destroy(f);
  return 0;
}
