/* cpdl/device.h — a loader's steps copied to a CUDA device ahead of use, by a
 * thread of cpdl's own.
 *
 * A device feed takes over a loader's next/release: its copy thread takes each
 * step's view, copies this rank's shard (one dense block) from the segment to
 * a device buffer on a stream of its own, waits for the copy, gives the slot
 * back, and queues the step, at most `prefetch` steps ahead of the consumer.
 * cpdl_device_feed_next() only dequeues: with a step queued it allocates
 * nothing and makes no system call (the thread polls its credits every 1 ms,
 * and is woken at once when next() finds nothing queued). Each field comes out as a DLPack
 * DLManagedTensor (dlpack.h v0.x layout) that the caller owns and hands to a
 * DLPack consumer (torch.from_dlpack) or deletes.
 *
 * Nothing links CUDA: the driver API (libcuda.so.1, or the library named by
 * CPDL_CUDA_LIBRARY) is loaded at run time when a feed is opened; without it
 * open fails with CPDL_EARG and a message, and the rest of cpdl works as ever.
 *
 * Stream semantics. The copy has completed before a step is queued, so the
 * consumer needs no event wait. A device buffer is written again only after
 * every tensor of the step it held has been deleted AND the consumer stream
 * has passed the point where the last of them was (an event recorded on the
 * step's consumer stream by the deleter, waited for by the copy stream): a
 * tensor is safe on its consumer stream and on streams ordered after it, as a
 * caching-allocator tensor is after record_stream. A step whose tensors are
 * kept costs its buffer, never its data: the feed allocates another buffer.
 *
 * Thread rules: between open and close only the feed calls the loader's
 * next/release; next and close are called from one thread at a time; the
 * tensors' deleters may run on any thread, also after close (buffers live
 * until their last tensor is deleted).
 */
#ifndef CPDL_DEVICE_H
#define CPDL_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "loader.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cpdl_device_feed cpdl_device_feed_t;

/** DLPack device types a feed can label its tensors with. */
#define CPDL_DL_CUDA 2
#define CPDL_DL_CPU 1 /* only with a stand-in library whose "device memory" is host memory */

typedef struct cpdl_device_params {
  size_t struct_size;  /* sizeof(cpdl_device_params_t) */
  int prefetch;        /* steps copied ahead of the one in use, >= 1 */
  int device;          /* CUDA device ordinal */
  int dl_device_type;  /* CPDL_DL_CUDA (0 means that too) */
} cpdl_device_params_t;

typedef struct cpdl_device_step {
  uint64_t step;
  int n_fields;
  const char *names[CPDL_MAX_FIELDS];  /* belong to the feed, valid until close (and
                                          while a tensor of the feed lives) */
  void *tensors[CPDL_MAX_FIELDS];      /* DLManagedTensor *, owned by the caller */
  cpdl_dtype_t dtypes[CPDL_MAX_FIELDS]; /* bool travels as DLPack uint8 (DLPack < 0.8
                                          consumers such as torch 1.13 refuse kDLBool) */
  cpdl_mesh_coords_t mesh;
  uint64_t layout;  /* 1, 2, …: equal for two steps of a feed iff their names and dtypes are
                       equal, field by field: a caller may cache what it derives from them */
} cpdl_device_step_t;

/** Start the copy thread on `loader` (which must hold no batch). The
 *  device's primary context is used (the one CUDA runtime users, torch among
 *  them, share). \return 0, CPDL_EARG (no CUDA driver, bad parameters). */
CPDL_API int cpdl_device_feed_open(cpdl_loader_t *loader, const cpdl_device_params_t *params,
                                   cpdl_device_feed_t **out);

/** The next step on the device, for use on `consumer_stream` (a CUstream /
 *  cudaStream_t; 0 is the legacy default stream). Blocks until the copy
 *  thread has one. \return 0, CPDL_EEOF, or the loader's error (CPDL_EPEER,
 *  CPDL_ETIMEDOUT, …) with its message; an error is returned again by every
 *  later call. */
CPDL_API int cpdl_device_feed_next(cpdl_device_feed_t *feed, uintptr_t consumer_stream,
                                   cpdl_device_step_t *out);

/** Stop the copy thread (it finishes the step it is copying), drop the steps
 *  queued and not taken, and give the loader back (holding no batch). Tensors
 *  already returned stay valid. NULL is a no-op. \return 0 or a CUDA error. */
CPDL_API int cpdl_device_feed_close(cpdl_device_feed_t *feed);

#ifdef __cplusplus
}
#endif

#endif /* CPDL_DEVICE_H */
