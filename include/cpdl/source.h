/* cpdl/source.h — data sources: opening a URI through its plugin and
 * reading samples or pre-collated batches. No MPI. The plugin side of the
 * ABI is cpdl/plugin.h.
 */
#ifndef CPDL_SOURCE_H
#define CPDL_SOURCE_H

#include "cpdl/prep.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------- */
/* Data sources (plugins: include/cpdl/plugin.h)                              */
/* ------------------------------------------------------------------------- */

typedef struct cpdl_source cpdl_source_t;

/** Open a data source from a URI "scheme:path?key=value&key=value", e.g.
 *  "synthetic:?seed=1&vocab=1000", "llmc:/data/fineweb_train_*.bin",
 *  "megatron:/data/corpus_text_document?unit=sequence", "npy:/data/batches".
 *  A query key may appear once. npy: batch k is the step directory with the
 *  k-th smallest number ending its name (step0, step1, ..., step10; leading
 *  zeros ignored; a name without a number, or a number twice, is CPDL_EARG).
 *  The plugin cpdl-<scheme>.so is searched in $CPDL_PLUGIN_PATH (colon-
 *  separated), then the install and build plugin directories.
 *  \return 0; CPDL_EPLUGIN (unknown scheme — the message lists the known
 *          ones —, ABI mismatch with both versions, missing entry symbol,
 *          dlerror() text); CPDL_EARG (bad URI or query); CPDL_ECORRUPT (the
 *          file, the byte offset and what was expected); CPDL_ESOURCE;
 *          -errno. *out belongs to the caller: close it with cpdl_source_close(). */
CPDL_API int cpdl_source_open(const char *uri, cpdl_source_t **out);
/** Number of samples (npy: of steps); 0 for a NULL source (with a message). */
CPDL_API int64_t cpdl_source_count(const cpdl_source_t *src);
/** End-of-text token id, or -1 when the source has none (and for a NULL
 *  source, with a message). */
CPDL_API int64_t cpdl_source_eot(const cpdl_source_t *src);
/** Sample `index` (0 <= index < count) as *n_tokens tokens of *token_bytes
 *  bytes each (2: uint16, 4: uint32, 8: int64; native byte order).
 *  \return 0, CPDL_EARG (index out of range), CPDL_ESOURCE, CPDL_ECORRUPT.
 *  *tokens belongs to the source: valid until cpdl_source_close() for
 *  mmap-backed sources (llmc, megatron), until the next read on the same
 *  source for generated ones (synthetic). */
CPDL_API int cpdl_source_read(cpdl_source_t *src, int64_t index, const void **tokens,
                              int64_t *n_tokens, int *token_bytes);
/** The plugin's name (the URI scheme). Static; never NULL ("?" for a NULL
 *  source, with a message). */
CPDL_API const char *cpdl_source_name(const cpdl_source_t *src);
/** The plugin's one-line description of its format ("" if it has none) and
 *  the path of the plugin file that was loaded. Static for the source's life;
 *  "" for a NULL source (with a message). */
CPDL_API const char *cpdl_source_description(const cpdl_source_t *src);
CPDL_API const char *cpdl_source_plugin_path(const cpdl_source_t *src);
/** Number of documents: equals the sample count unless a sample is a part of
 *  a document (megatron with ?unit=sequence); 0 for a NULL source (with a
 *  message). */
CPDL_API int64_t cpdl_source_document_count(const cpdl_source_t *src);
/** Pre-collated sources (npy): number of batches, 0 for token sources (and
 *  for a NULL source, with a message). */
CPDL_API int64_t cpdl_source_batch_count(const cpdl_source_t *src);
/** Batch `step` of a pre-collated source: up to CPDL_MAX_FIELDS tensors,
 *  sorted by name. \return 0, CPDL_EEOF (step out of range), CPDL_ESOURCE
 *  (a token source), CPDL_ECORRUPT (a step whose shapes differ). Names and
 *  data belong to the source, valid until the next call on it. */
CPDL_API int cpdl_source_read_batch(cpdl_source_t *src, int64_t step, cpdl_tensor_t *fields,
                                    int *n_fields);
/** Close the source and release its mappings (NULL is accepted). */
CPDL_API void cpdl_source_close(cpdl_source_t *src);

#ifdef __cplusplus
}
#endif
#endif /* CPDL_SOURCE_H */
