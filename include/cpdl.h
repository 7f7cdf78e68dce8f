/* cpdl — node-local shared-memory data loading for context-parallel training.
 *
 * The umbrella header. The layers below it, each usable on its own:
 *   cpdl/prep.h    errors, dtypes, the batch contract (cpdl_prep_*): no MPI;
 *                  libcpdl_prep.so serves this layer alone
 *   cpdl/source.h  data sources (cpdl_source_*): no MPI
 *   cpdl/loader.h  configuration and the loader (cpdl_config_*, cpdl_loader_*):
 *                  collective over MPI or a caller's out-of-band allgather
 *   cpdl/device.h  a loader's steps copied to a CUDA device by a thread of
 *                  cpdl's own (cpdl_device_feed_*; CUDA loaded at run time)
 *   cpdl/plugin.h  the data-source plugin ABI (plugins include only this)
 * Programs link libcpdl.so (all layers) or, for prep.h alone, libcpdl_prep.so
 * — one of the two, never both into one link.
 *
 * Conventions (the one error convention; every function keeps it):
 *  - Functions that can fail return int: 0, or a negative code — POSIX errors
 *    as -errno, cpdl's own codes below -4000 (CPDL_ERRNO_MAP below).
 *  - Every failure leaves a message, readable with cpdl_last_error() on the
 *    same thread, that names the thing at fault (file, field, key, rank, bytes
 *    needed and available) and, where there is one, the fix.
 *  - Counts and sizes (int64_t, size_t) are never error codes: an invalid
 *    handle counts 0 and leaves a message.
 *  - Arguments are checked before use: a NULL where an object is required is
 *    CPDL_EARG, and out-parameters are written only after that check.
 *  - Collective calls say so and return the same result on every rank.
 *  - Pointers returned by the library belong to the library unless said
 *    otherwise. The library never calls exit() or abort().
 */
#ifndef CPDL_H
#define CPDL_H

#include "cpdl/prep.h"
#include "cpdl/source.h"
#include "cpdl/loader.h"
#include "cpdl/device.h"

#endif /* CPDL_H */
