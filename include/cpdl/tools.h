/* cpdl/tools.h — what cpdl's own tools need beyond the loader's contract.
 *
 * The cpdl command links libcpdl.so like any other client; the few things a
 * tool legitimately needs from inside are here, documented like the rest of
 * the API and kept small on purpose: the sweep of segments left by dead jobs,
 * the debugging dumps (.npy files of views and of collated batches), the
 * placement report, the data's shape, the environment with a command line's
 * keys left out, and a way for a tool to leave its own message. Not part of
 * the umbrella cpdl.h: include it explicitly. The error convention of cpdl.h
 * holds for every function here.
 */
#ifndef CPDL_TOOLS_H
#define CPDL_TOOLS_H

#include "cpdl.h"

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/** List, and with remove != 0 unlink, this user's cpdl segments in /dev/shm
 *  whose creator is provably gone: its pid absent in the PID namespace and
 *  boot that the segment's name records, which must be the caller's own
 *  (docs/reliability.md). A segment whose creator cannot be judged from here
 *  (another PID namespace or boot, an old name) is kept, reported with the
 *  reason and counted in *unknown (may be NULL). One line per segment goes to
 *  report (may be NULL). Local; never touches a live job's segment.
 *  \return the number found dead, or CPDL_ESHM (/dev/shm cannot be listed, or
 *  an unlink failed: the message names the segment). */
CPDL_API int cpdl_tools_sweep(int remove, FILE *report, int *unknown);

/** Before the first cpdl_loader_next(): every group leader writes each
 *  collated batch, before preparation, to
 *  dir/step<k>/group<g>/collated/<field>.npy (dir NULL stops it). Local.
 *  \return 0, CPDL_EARG (NULL loader), CPDL_ESTATE (after the first next()),
 *  -ENOMEM. */
CPDL_API int cpdl_tools_dump_collated(cpdl_loader_t *loader, const char *dir);

/** Collective over the loader's world: where each rank's main thread and
 *  each leader's loader threads were placed. On world rank 0 *json_out is a
 *  JSON array (malloc'd; the caller frees it), one object per thread:
 *  {"rank": 0, "thread": "main" | "loader<i>", "cpuset": "0-1", "numa": 0,
 *  "gpu": null}; elsewhere NULL. \return the same on every rank: 0,
 *  CPDL_EMPI, -ENOMEM; CPDL_EARG (NULL argument) is local. */
CPDL_API int cpdl_tools_binding_report(cpdl_loader_t *loader, char **json_out);

/** The data's rows per step and tokens per row as the group leader found
 *  them in the first batch (input_ids, else its first field of 2 or more
 *  dimensions): a pre-collated source's own, not the configuration's. Local;
 *  on a rank that does not lead a group *batch and *seq_len are left as they
 *  are. \return 0 or CPDL_EARG (NULL argument). */
CPDL_API int cpdl_tools_data_shape(const cpdl_loader_t *loader, int64_t *batch, int64_t *seq_len);

/** How the loader sized its memory, by need and bytes (docs/design.md,
 *  "Memory sized by need"). One step's place in the ring is
 *    slot_bytes = n_regions * rank_block_bytes + shared_block_bytes
 *  and, with slots=0 (the default),
 *    slots = clamp(budget_bytes / slot_bytes, slots_need, slots_max)
 *  where slots_need = 2 (one step held by the consumers: the view in use, or
 *  the step a device feed is copying — a rank holds at most one unreleased
 *  batch — plus the one the leader writes) and slots_max = 4 (three steps of
 *  lookahead, what a small step gets for free); slots=N sets it exactly.
 *  The leader's collate keeps a second output set (collating step k+1 while
 *  step k is prepared) only where its loader threads pipeline and the ring
 *  has room to run ahead (slots >= 3); else one set. Every member of a group
 *  reports its group's numbers (the leader sends them with the segment). */
typedef struct cpdl_tools_memory {
  size_t struct_size;          /* sizeof(cpdl_tools_memory_t), set by the caller */
  int slots;                   /* the ring's slots */
  int slots_given;             /* slots= of the configuration (0: sized by bytes) */
  int slots_need;              /* the least the protocol needs (2) */
  int slots_max;               /* the most a sized ring takes (4) */
  int n_regions;               /* CP shards whose blocks each slot holds (local CP ranks) */
  int collate_sets;            /* the leader's collate output sets: 1 or 2 */
  uint64_t budget_bytes;       /* ring_bytes=, or its default (64 MiB) */
  uint64_t rank_block_bytes;   /* one CP shard of one step, page-aligned */
  uint64_t shared_block_bytes; /* the step's shared fields, page-aligned (may be 0) */
  uint64_t slot_bytes;         /* one step: n_regions * rank_block_bytes + shared_block_bytes */
  uint64_t ring_bytes;         /* slots * slot_bytes */
  uint64_t ctrl_bytes;         /* the segment's control part (header, records) */
  uint64_t segment_bytes;      /* ctrl_bytes + ring_bytes: the shared-memory segment */
  uint64_t collate_set_bytes;  /* one collate output set (the step's collated fields) */
  uint64_t collate_bytes;      /* every collate buffer: collate_sets * collate_set_bytes
                                * plus the collate's scratch (its token window) */
  uint64_t group_bytes;        /* segment_bytes + collate_bytes: the group's batch memory */
} cpdl_tools_memory_t;

/** This rank's group's memory sizing (above). Local. \return 0, CPDL_EARG
 *  (NULL argument, or out->struct_size smaller than this header's). */
CPDL_API int cpdl_tools_memory(const cpdl_loader_t *loader, cpdl_tools_memory_t *out);

/** Collective over the loader's world: values[0..n) become the element-wise
 *  minimum over every rank, the waits watching this host's ranks as open's
 *  do (`cpdl run`'s agreement at the end of a run, where a plain MPI
 *  collective would wait for ever for a rank that died after its last step).
 *  \return the same on every rank: 0, CPDL_EPEER (a rank died: the message
 *  names it; make no other collective), CPDL_EMPI; CPDL_EARG is local. */
CPDL_API int cpdl_tools_agree_min(cpdl_loader_t *loader, int64_t *values, int n,
                                  const char *what);

/** Write one C-contiguous array as a .npy file (format 1.0, little-endian).
 *  \return 0, CPDL_EARG (NULL path, shape or data; ndim outside
 *  1..CPDL_MAX_DIMS), CPDL_EDTYPE, -errno (the message names the file). */
CPDL_API int cpdl_tools_npy_write(const char *path, cpdl_dtype_t dtype, int ndim,
                                  const int64_t *shape, const void *data);
/** mkdir -p (mode 0755, less the umask). \return 0, CPDL_EARG (NULL), -errno. */
CPDL_API int cpdl_tools_mkdirs(const char *path);

/** cpdl_config_from_env without the keys named in skip[0..n_skip) (those a
 *  command line sets: it wins, and their variables are not even parsed).
 *  \return as cpdl_config_from_env. */
CPDL_API int cpdl_tools_config_from_env_except(cpdl_config_t *cfg, const char *const *skip,
                                               int n_skip);

/** Leave a tool's own message (printf-style) for cpdl_last_error() on this
 *  thread and return code, so that a tool reports its failures through the
 *  same channel as the library's. */
CPDL_API int cpdl_tools_error(int code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#ifdef __cplusplus
}
#endif
#endif /* CPDL_TOOLS_H */
