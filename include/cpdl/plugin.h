/* cpdl/plugin.h — the data-source plugin ABI, and nothing else.
 *
 * A plugin is a shared object named cpdl-<scheme>.so exporting one symbol,
 * CPDL_SOURCE_ENTRY_SYMBOL, a function returning a static descriptor
 * (cpdl_source_plugin_t). The host (libcpdl) checks abi_version and
 * struct_size before touching anything else, then calls open() with a table
 * of host services (cpdl_source_host_t) so plugins never link libcpdl.
 *
 * Rules every plugin follows:
 *  - Return 0 or a negative code from the CPDL_SOURCE_E* list below (the same
 *    values as cpdl/prep.h's CPDL_E* codes); on failure write a one-line message
 *    into err (errlen bytes, always NUL-terminated) naming the file, the byte
 *    offset and what was expected.
 *  - Check every size against the file length before reading; never crash on
 *    corrupt input.
 *  - Token pointers returned by read() are valid until close() when the
 *    descriptor has CPDL_SOURCE_STABLE_TOKENS (mmap-backed sources), else only
 *    until the next read() on the same state (generated sources).
 *  - Calls on one state may run concurrently only when the descriptor has
 *    CPDL_SOURCE_CONCURRENT_READS; the host serializes otherwise.
 * The ABI grows by appending members; struct_size tells the reader how much
 * of a struct the other side knows.
 *
 * Parameters: a loader opening a source passes its own parameters (seed,
 * seq_len: cpdl_source_params_t) to open_params(); the URI is passed as the
 * user wrote it, never rewritten. A plugin that also takes a parameter as a
 * query key lets the key win: the loader's value is the default of the key
 * (synthetic: and gpt: take seed=, gpt: seq_len=). Values flowing back to the
 * host (gpt:'s consumed_samples=) are descriptor members read after open.
 */
#ifndef CPDL_PLUGIN_H
#define CPDL_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CPDL_SOURCE_ABI_VERSION 1
#define CPDL_SOURCE_ENTRY_SYMBOL "cpdl_source_plugin_v1"

/* Return codes (identical to cpdl/prep.h's; kept here so plugins need no cpdl.h). */
#define CPDL_SOURCE_OK 0
#define CPDL_SOURCE_EARG (-4001)
#define CPDL_SOURCE_EDTYPE (-4003)
#define CPDL_SOURCE_EOVERFLOW (-4004)
#define CPDL_SOURCE_ECORRUPT (-4012)
#define CPDL_SOURCE_ESOURCE (-4018)
/* -ENOMEM, -ENOENT, ... (negative errno) are valid returns too. */

/* Dtype codes for pre-collated tensors (identical to cpdl_dtype_t). */
enum {
  CPDL_SOURCE_DTYPE_BOOL = 0,
  CPDL_SOURCE_DTYPE_UINT8 = 1,
  CPDL_SOURCE_DTYPE_INT32 = 2,
  CPDL_SOURCE_DTYPE_INT64 = 3,
  CPDL_SOURCE_DTYPE_FLOAT16 = 4,
  CPDL_SOURCE_DTYPE_BFLOAT16 = 5,
  CPDL_SOURCE_DTYPE_FLOAT32 = 6,
  CPDL_SOURCE_DTYPE_FLOAT64 = 7
};

#define CPDL_SOURCE_MAX_DIMS 4
#define CPDL_SOURCE_NAME_MAX 48
#define CPDL_SOURCE_MAX_FIELDS 32

/** One tensor of a pre-collated batch: C-contiguous; data belongs to the
 *  plugin (valid as token pointers are, see the rules above). */
typedef struct cpdl_source_tensor {
  char name[CPDL_SOURCE_NAME_MAX];
  int dtype;                       /* CPDL_SOURCE_DTYPE_* */
  int ndim;                        /* 1 .. CPDL_SOURCE_MAX_DIMS */
  int64_t shape[CPDL_SOURCE_MAX_DIMS];
  const void *data;
  uint64_t nbytes;
} cpdl_source_tensor_t;

/** A read-only mapping of a whole file made by the host. */
typedef struct cpdl_source_mapping {
  const void *addr;  /* NULL for an empty file */
  uint64_t size;     /* file length in bytes */
} cpdl_source_mapping_t;

enum { CPDL_SOURCE_LOG_DEBUG = 0, CPDL_SOURCE_LOG_INFO = 1, CPDL_SOURCE_LOG_WARN = 2 };

/** Services the host lends a plugin. Valid from open() until close(). */
typedef struct cpdl_source_host {
  uint32_t abi_version;  /* CPDL_SOURCE_ABI_VERSION */
  uint32_t struct_size;  /* sizeof(cpdl_source_host_t) as the host knows it */
  /** A diagnostic line (to stderr when CPDL_DEBUG is set, else dropped below WARN). */
  void (*log)(int level, const char *plugin, const char *msg);
  /** Map `path` read-only and whole. \return 0, or -errno with a message in
   *  err naming the file. An empty file gives addr NULL, size 0. */
  int (*map_file)(const char *path, cpdl_source_mapping_t *out, char *err, size_t errlen);
  /** Undo map_file (a zeroed mapping is accepted). */
  void (*unmap_file)(cpdl_source_mapping_t *mapping);
  /** Value of `key` in a query "k=v&k=v" (may be NULL): copies it into buf.
   *  \return 1 found, 0 absent, CPDL_SOURCE_EARG (value longer than buflen-1). */
  int (*query_get)(const char *query, const char *key, char *buf, size_t buflen);
  /** Integer value of `key` in [min, max], or dflt when absent.
   *  \return 0 or CPDL_SOURCE_EARG with a message naming the key. */
  int (*query_int)(const char *query, const char *key, int64_t dflt, int64_t min, int64_t max,
                   int64_t *out, char *err, size_t errlen);
  /** Every key of the query is in the NULL-terminated list `known`.
   *  \return 0 or CPDL_SOURCE_EARG naming the unknown key and the known ones. */
  int (*query_check)(const char *query, const char *const *known, char *err, size_t errlen);
} cpdl_source_host_t;

/** The loader's parameters, lent to open_params() for the call only.
 *  The host fills every member its struct_size reaches; a plugin reads a
 *  member through CPDL_SOURCE_PARAM, which gives the plugin's own default for
 *  a member the host does not know (an older host) and when there are no
 *  parameters at all (params NULL: the source is opened by cpdl_source_open,
 *  `cpdl inspect` or Python's cpdl.Source, not by a loader). Grows by
 *  appending members, as the other structs do. */
typedef struct cpdl_source_params {
  uint32_t struct_size; /* sizeof(cpdl_source_params_t) as the host knows it */
  uint32_t flags;       /* 0: reserved */
  uint64_t seed;        /* the loader's config key seed */
  int64_t seq_len;      /* the loader's config key seq_len (read_row's width), >= 1 */
} cpdl_source_params_t;

/** Whether the host gave member `m` (params may be NULL). */
#define CPDL_SOURCE_HAS_PARAM(params, m)                                                  \
  ((params) != NULL &&                                                                  \
   (params)->struct_size >= offsetof(cpdl_source_params_t, m) + sizeof((params)->m))
/** Member `m` of params, or `dflt` when the host did not give it. */
#define CPDL_SOURCE_PARAM(params, m, dflt) \
  (CPDL_SOURCE_HAS_PARAM(params, m) ? (params)->m : (dflt))

/* Descriptor flags. */
#define CPDL_SOURCE_STABLE_TOKENS 0x1u    /* read() pointers valid until close() */
#define CPDL_SOURCE_CONCURRENT_READS 0x2u /* read()/read_batch() may run concurrently */
/* Samples are training rows in one global order (Megatron-LM's GPTDataset):
 * the host reads step k, replica r (of dp), row b from sample
 * (k*dp + r)*batch + b through read_row() instead of sampling and packing,
 * and the resume state is the number of samples consumed. Requires read_row. */
#define CPDL_SOURCE_GLOBAL_ORDER 0x4u

/** The descriptor. Required members are non-NULL; optional ones may be NULL. */
typedef struct cpdl_source_plugin {
  uint32_t abi_version;     /* CPDL_SOURCE_ABI_VERSION */
  uint32_t struct_size;     /* sizeof(cpdl_source_plugin_t) as the plugin knows it */
  const char *name;         /* URI scheme, e.g. "megatron" */
  const char *description;  /* one line, for `cpdl inspect` and error listings */
  uint32_t flags;           /* CPDL_SOURCE_* flags */

  /** Open the source at `path` (the URI between "scheme:" and "?"), with
   *  `query` (the text after "?", or "" when none). On success *state is the
   *  plugin's and is passed to every other call. */
  int (*open)(const cpdl_source_host_t *host, const char *path, const char *query,
              void **state, char *err, size_t errlen);
  /** Number of token samples (for pre-collated sources: of steps). */
  int64_t (*count)(void *state);
  /** Sample i (0 <= i < count) as n tokens of token_bytes (2, 4 or 8 bytes,
   *  unsigned 16/32-bit or int64, native = little-endian order). */
  int (*read)(void *state, int64_t i, const void **tokens, int64_t *n, int *token_bytes,
              char *err, size_t errlen);
  void (*close)(void *state);

  /* ---- optional ---- */
  /** The end-of-text token id, or -1 if the source has none. */
  int64_t (*eot)(void *state);
  /** Pre-collated sources: number of batches and batch `step` as tensors
   *  (at most CPDL_SOURCE_MAX_FIELDS; same names/dtypes/shapes every step). */
  int64_t (*batch_count)(void *state);
  int (*read_batch)(void *state, int64_t step, cpdl_source_tensor_t *fields, int *n_fields,
                    char *err, size_t errlen);
  /** Document boundaries when a sample is not a whole document (e.g. Megatron
   *  sequences): number of documents, and document j = samples
   *  [*first, *first + *n_samples). NULL means sample i is document i. */
  int64_t (*document_count)(void *state);
  int (*document)(void *state, int64_t j, int64_t *first, int64_t *n_samples);
  /* ---- appended: hosts check struct_size before using these ---- */
  /** CPDL_SOURCE_GLOBAL_ORDER sources: sample i as one training row of
   *  `width` positions (the loader's seq_len): input_ids, labels and
   *  position_ids as int64, loss_mask as float32, `width` entries each. */
  int (*read_row)(void *state, int64_t i, int64_t width, int64_t *input_ids, int64_t *labels,
                  float *loss_mask, int64_t *position_ids, char *err, size_t errlen);
  /** Number of tokens of sample i (0 <= i < count) without producing them,
   *  or a negative error code. The host uses it to count an epoch's steps at
   *  open (config key epochs); NULL: the host reads the sample instead, which
   *  is as cheap for mmap-backed sources. */
  int64_t (*length)(void *state, int64_t i);
  /** open() with the loader's parameters (params may be NULL: see
   *  cpdl_source_params_t). A host that knows this member calls it instead of
   *  open(); open() stays required, for hosts that do not. */
  int (*open_params)(const cpdl_source_host_t *host, const cpdl_source_params_t *params,
                     const char *path, const char *query, void **state, char *err,
                     size_t errlen);
  /** CPDL_SOURCE_GLOBAL_ORDER sources: the samples consumed before this
   *  stream begins, in [0, count] (gpt: consumed_samples=, where a Megatron
   *  run left off); the loader's first step starts there unless a resume
   *  state says otherwise. NULL: 0. */
  int64_t (*consumed)(void *state);
} cpdl_source_plugin_t;

/** The entry symbol's type. */
typedef const cpdl_source_plugin_t *(*cpdl_source_entry_fn)(void);

/* Plugins define their entry point with this (exported even when built with
 * hidden visibility). */
#define CPDL_SOURCE_PLUGIN_EXPORT __attribute__((visibility("default")))

#ifdef __cplusplus
}
#endif
#endif /* CPDL_PLUGIN_H */
