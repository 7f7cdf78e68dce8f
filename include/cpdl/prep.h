/* cpdl/prep.h — errors, dtypes and the batch contract: cpdl's bottom layer.
 *
 * Pure functions, no MPI, no shared memory, no threads: what a process needs
 * to turn one batch into the CP ranks' shards (docs/design.md, "The batch
 * contract"). Served by libcpdl.so and, for programs that must not load
 * MPI (Python's cpdl.shard_batch), by libcpdl_prep.so alone. The error
 * convention every cpdl function keeps is stated in cpdl.h.
 */
#ifndef CPDL_PREP_H
#define CPDL_PREP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(CPDL_BUILDING)
#define CPDL_API __attribute__((visibility("default")))
#else
#define CPDL_API
#endif

/* CPDL_VERSION_MAJOR, _MINOR, _PATCH and CPDL_VERSION_STRING ("0.1.0"):
 * generated from CMake's project(VERSION), the one place it is written. */
#include "cpdl/version.h"

/** The library's version, CPDL_VERSION_STRING of the build that made it (a
 *  program may have been compiled against another). Static; never NULL. */
CPDL_API const char *cpdl_version(void);

/* ------------------------------------------------------------------------- */
/* Errors                                                                     */
/* ------------------------------------------------------------------------- */

/* The one range of error codes: POSIX errors are -errno, above CPDL_ERRNO_FIRST;
 * cpdl's own codes lie in [CPDL_ERRNO_LAST, CPDL_ERRNO_FIRST] (every entry of
 * CPDL_ERRNO_MAP does: error.c checks it at compile time). A value below
 * CPDL_ERRNO_LAST, or 0 and above, is no cpdl error code. */
#define CPDL_ERRNO_FIRST (-4001)
#define CPDL_ERRNO_LAST (-4099)
/** Whether err is one of cpdl's own codes (else -errno, 0 or no code at all). */
#define CPDL_ERRNO_IS_OWN(err) ((err) <= CPDL_ERRNO_FIRST && (err) >= CPDL_ERRNO_LAST)

/* X(name, value, description). One table feeds the enum, cpdl_strerror() and
 * cpdl_err_name(). */
#define CPDL_ERRNO_MAP(X)                                                        \
  X(EARG,      -4001, "invalid argument or option")                               \
  X(EFIELD,    -4002, "batch field missing, duplicated or inconsistent")         \
  X(EDTYPE,    -4003, "unsupported dtype")                                        \
  X(EOVERFLOW, -4004, "size does not fit")                                        \
  X(EMESH,     -4005, "mesh shape does not fit the communicator")                \
  X(ECONFIG,   -4006, "configuration differs between ranks")                     \
  X(ESHM,      -4007, "shared-memory segment error")                             \
  X(ENOSPACE,  -4008, "not enough space for the shared-memory segment")          \
  X(EPEER,     -4009, "a rank of the group died or failed")                      \
  X(ETIMEDOUT, -4010, "timed out")                                                \
  X(EEOF,      -4011, "no more data")                                            \
  X(ECORRUPT,  -4012, "corrupt or hostile data, file or header")                 \
  X(EPLUGIN,   -4013, "data-source plugin could not be loaded or used")          \
  X(ESTATE,    -4014, "call not valid in the object's current state")           \
  X(EFAULT,    -4015, "injected fault (CPDL_FAULT)")                             \
  X(EMPI,      -4016, "an MPI call or the control plane's allgather failed")        \
  X(EPIN,      -4017, "thread or memory placement failed")                       \
  X(ESOURCE,   -4018, "data source error")                                       \
  X(EDEVICE,   -4019, "CUDA driver or device error")

typedef enum {
  CPDL_OK = 0,
#define CPDL__ERR_ENUM(name, value, text) CPDL_##name = (value),
  CPDL_ERRNO_MAP(CPDL__ERR_ENUM)
#undef CPDL__ERR_ENUM
} cpdl_errno_t;

/** Description of an error code (cpdl's own or -errno). Never NULL; static. */
CPDL_API const char *cpdl_strerror(int err);
/** Symbolic name of an error code, e.g. "CPDL_EPEER" or "ENOMEM". Static. */
CPDL_API const char *cpdl_err_name(int err);
/** The message left by the last failing cpdl call on this thread ("" if none).
 *  Thread-local; valid until the next failing call on this thread. */
CPDL_API const char *cpdl_last_error(void);

/* ------------------------------------------------------------------------- */
/* Dtypes and tensors                                                         */
/* ------------------------------------------------------------------------- */

typedef enum {
  CPDL_DTYPE_BOOL = 0, /* 1 byte, 0 or 1 */
  CPDL_DTYPE_UINT8,
  CPDL_DTYPE_INT32,
  CPDL_DTYPE_INT64,
  CPDL_DTYPE_FLOAT16,  /* raw 2 bytes; only 0 and copies are ever produced */
  CPDL_DTYPE_BFLOAT16, /* raw 2 bytes */
  CPDL_DTYPE_FLOAT32,
  CPDL_DTYPE_FLOAT64,
  CPDL_DTYPE_COUNT
} cpdl_dtype_t;

/** Size in bytes of one element, or 0 for an unknown dtype. */
CPDL_API size_t cpdl_dtype_size(cpdl_dtype_t dtype);
/** numpy-style name ("bool", "int64", "bfloat16", ...); "?" if unknown. */
CPDL_API const char *cpdl_dtype_name(cpdl_dtype_t dtype);
/** Parse a dtype name as printed by cpdl_dtype_name().
 *  \return 0, CPDL_EDTYPE (unknown or NULL name), CPDL_EARG (out NULL). */
CPDL_API int cpdl_dtype_parse(const char *name, cpdl_dtype_t *out);

#define CPDL_MAX_DIMS 4
#define CPDL_MAX_FIELDS 32
#define CPDL_NAME_MAX 48 /* field names, including the terminating NUL */

/** A named, C-contiguous tensor (row-major, no strides). The caller owns data. */
typedef struct cpdl_tensor {
  const char *name;
  cpdl_dtype_t dtype;
  int ndim;                       /* 1 .. CPDL_MAX_DIMS */
  int64_t shape[CPDL_MAX_DIMS];
  const void *data;
} cpdl_tensor_t;

/* ------------------------------------------------------------------------- */
/* Batch preparation (docs/design.md, "The batch contract")                  */
/* ------------------------------------------------------------------------- */

typedef enum {
  CPDL_MODE_CONTIGUOUS = 0, /* rank r keeps [r*L, (r+1)*L) — the contract */
  CPDL_MODE_ROUND_ROBIN,    /* rank r keeps chunks r and 2cp-1-r of 2cp chunks */
  CPDL_MODE_AUX_ONLY,       /* primary full length, unpadded, shared; rest contiguous */
  CPDL_MODE_THD             /* packed documents (B = 1): rank r keeps, per document of
                             * cu_seqlens_padded, its chunks r and 2cp-1-r (docs/thd.md) */
} cpdl_mode_t;

/** "contiguous", "round_robin", "aux_only", "thd"; "?" if unknown. Static. */
CPDL_API const char *cpdl_mode_name(cpdl_mode_t mode);
/** Parse a mode name as printed by cpdl_mode_name().
 *  \return 0 or CPDL_EARG (unknown or NULL name, out NULL). */
CPDL_API int cpdl_mode_parse(const char *name, cpdl_mode_t *out);

/** An extra per-token metadata field the caller names: it is padded with
 *  pad_value on its own seq_dim and sliced like every sequence field. */
typedef struct cpdl_metadata_field {
  const char *name;
  int seq_dim;
  double pad_value; /* converted to the field's dtype */
} cpdl_metadata_field_t;

typedef struct cpdl_prep_params {
  size_t struct_size;        /* sizeof(cpdl_prep_params_t); set by cpdl_prep_params_init() */
  int cp_size;               /* >= 1 */
  int tp_size;               /* >= 1; only decides whether position_ids are synthesized */
  cpdl_mode_t mode;
  int64_t padding_token_id;  /* pad value of input_ids */
  const cpdl_metadata_field_t *metadata;
  int n_metadata;
} cpdl_prep_params_t;

/** Defaults: cp_size 1, tp_size 1, contiguous, padding_token_id 0, no metadata.
 *  A NULL params does nothing but leave a message. */
CPDL_API void cpdl_prep_params_init(cpdl_prep_params_t *params);

/** One output field of a prepared batch.
 *  shape is what one CP rank sees: the shard for sequence fields, the whole
 *  tensor for shared ones. Sequence fields live in every rank's block at
 *  `offset`; shared fields (pass-through fields, the aux_only primary) live
 *  once in the shared block at `offset`. */
typedef struct cpdl_prep_field {
  char name[CPDL_NAME_MAX];
  cpdl_dtype_t dtype;
  int ndim;
  int64_t shape[CPDL_MAX_DIMS];
  int seq_dim;    /* dimension that was sharded; -1 if not sharded */
  int shared;     /* 1: in the shared block, 0: in each rank's block */
  size_t offset;  /* bytes from the start of its block; 64-byte aligned */
  size_t nbytes;
} cpdl_prep_field_t;

typedef struct cpdl_prep_plan cpdl_prep_plan_t;

/** Decide what a batch becomes (rules 1-7): output fields, shapes and layout.
 *  Inputs are recognized by name (cpdl/fields.h): the loss mask is the input
 *  field named "loss_mask" (CPDL_FIELD_LOSS_MASK), if any.
 *  \return 0; CPDL_EFIELD (neither or both primaries, missing labels and loss
 *          mask, batch or sequence sizes that disagree, a duplicated name);
 *          CPDL_EDTYPE; CPDL_EOVERFLOW; CPDL_EARG (cp_size < 1, bad ndim);
 *          -ENOMEM. The message names the field and the problem.
 *  *out belongs to the caller: free it with cpdl_prep_plan_destroy(). The plan
 *  keeps no pointer to the inputs or params. */
CPDL_API int cpdl_prep_plan_create(const cpdl_tensor_t *inputs, int n_inputs,
                                   const cpdl_prep_params_t *params,
                                   cpdl_prep_plan_t **out);
/** Free a plan (NULL is accepted). */
CPDL_API void cpdl_prep_plan_destroy(cpdl_prep_plan_t *plan);
/* The accessors below count, size or look up: a NULL plan gives 0 (NULL for
 * cpdl_prep_plan_field) and leaves a message. */
/** Number of output fields. */
CPDL_API int cpdl_prep_plan_nfields(const cpdl_prep_plan_t *plan);
/** Field i (0 <= i < nfields), or NULL with a message. Belongs to the plan. */
CPDL_API const cpdl_prep_field_t *cpdl_prep_plan_field(const cpdl_prep_plan_t *plan, int i);
/** Bytes of one rank's block (a multiple of 64). */
CPDL_API size_t cpdl_prep_plan_rank_bytes(const cpdl_prep_plan_t *plan);
/** Bytes of the shared block (a multiple of 64; 0 if nothing is shared). */
CPDL_API size_t cpdl_prep_plan_shared_bytes(const cpdl_prep_plan_t *plan);
/** S before and after padding. */
CPDL_API int64_t cpdl_prep_plan_seq_len(const cpdl_prep_plan_t *plan);
CPDL_API int64_t cpdl_prep_plan_padded_len(const cpdl_prep_plan_t *plan);

/** Prepare the shards of the CP ranks cp_ranks[0..n_ranks) in one pass and
 *  write rank cp_ranks[i]'s block to rank_dst[i] (rank_bytes each) and the
 *  shared block to shared_dst (may be NULL when shared_bytes is 0, or to skip
 *  writing it). The padded full batch is never materialized.
 *  inputs must have the same names, dtypes and shapes as at plan creation
 *  (data pointers may differ). \return 0, CPDL_EFIELD, CPDL_EARG. */
CPDL_API int cpdl_prep_execute(const cpdl_prep_plan_t *plan,
                               const cpdl_tensor_t *inputs, int n_inputs,
                               const int *cp_ranks, int n_ranks,
                               void *const *rank_dst, void *shared_dst);

/** The same, split for `n_parts` threads: part `part` (0 <= part < n_parts)
 *  writes only its share of the work items (each shared field, and each
 *  (rank, field) shard, dealt round-robin). Calling every part once, in any
 *  order or concurrently, writes exactly what cpdl_prep_execute() writes.
 *  \return as cpdl_prep_execute(), or CPDL_EARG for a bad part. */
CPDL_API int cpdl_prep_execute_part(const cpdl_prep_plan_t *plan,
                                    const cpdl_tensor_t *inputs, int n_inputs,
                                    const int *cp_ranks, int n_ranks,
                                    void *const *rank_dst, void *shared_dst,
                                    int part, int n_parts);

#ifdef __cplusplus
}
#endif

/* The field vocabulary: names, roles and dtypes of the fields cpdl knows. */
#include "cpdl/fields.h"

#endif /* CPDL_PREP_H */
