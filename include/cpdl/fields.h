/* cpdl/fields.h — the field vocabulary: every batch field name cpdl gives a
 * meaning to, declared once, with its role and the dtype cpdl produces it in.
 *
 * The collate, the feeds, the loader, the CLI and the Python binding (which
 * reads this table from the library: python/cpdl/fields.py) take names and
 * dtypes from here; none spells a field name of its own. Part of the bottom
 * layer (included by cpdl/prep.h, served by libcpdl_prep.so too).
 */
#ifndef CPDL_FIELDS_H
#define CPDL_FIELDS_H

#ifndef CPDL_PREP_H
#error "include <cpdl.h> or <cpdl/prep.h>, which include this header"
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* What a field is to the batch contract (docs/design.md, "The batch contract"). */
typedef enum {
  CPDL_ROLE_PRIMARY = 0, /* the sequence being split: token ids or embeddings (one per batch) */
  CPDL_ROLE_LABELS,      /* next-token targets; -100 where no loss is taken */
  CPDL_ROLE_LOSS_MASK,   /* 1 where the loss counts, 0 elsewhere */
  CPDL_ROLE_POSITION,    /* position of each token (in its document) */
  CPDL_ROLE_MASK,        /* says which tokens are padding; consumed by the contract */
  CPDL_ROLE_SEQUENCE,    /* other per-token fields, split like the primary */
  CPDL_ROLE_DOCUMENTS,   /* per-document fields (mode thd): whole, the same on every CP rank */
  CPDL_ROLE_COUNT
} cpdl_field_role_t;

/* X(ID, name, role, dtype): dtype is the one cpdl's loader produces the field
 * in, COUNT where cpdl only passes on the caller's (any dtype). The order is
 * the ABI of cpdl_field_id_t: entries are appended, never reordered. */
#define CPDL_FIELD_MAP(X)                                                 \
  X(INPUT_IDS,         "input_ids",         PRIMARY,   INT64)             \
  X(INPUTS_EMBEDS,     "inputs_embeds",     PRIMARY,   COUNT)             \
  X(LABELS,            "labels",            LABELS,    INT64)             \
  X(LOSS_MASK,         "loss_mask",         LOSS_MASK, FLOAT32)           \
  X(POSITION_IDS,      "position_ids",      POSITION,  INT64)             \
  X(ATTENTION_MASK,    "attention_mask",    MASK,      INT64)             \
  X(PADDING_MASK,      "padding_mask",      MASK,      COUNT)             \
  X(PACKED_SEQ_IDS,    "_packed_seq_ids",   SEQUENCE,  INT64)             \
  X(MM_TOKEN_TYPE_IDS, "mm_token_type_ids", SEQUENCE,  COUNT)             \
  X(PER_LAYER_INPUTS,  "per_layer_inputs",  SEQUENCE,  COUNT)             \
  X(CU_SEQLENS,        "cu_seqlens",        DOCUMENTS, INT32)             \
  X(CU_SEQLENS_PADDED, "cu_seqlens_padded", DOCUMENTS, INT32)             \
  X(MAX_SEQLEN,        "max_seqlen",        DOCUMENTS, INT32)             \
  X(DOC_IDS,           "doc_ids",           DOCUMENTS, INT64)             \
  X(CU_LOCAL,          "cu_local",          DOCUMENTS, INT32)             \
  X(CP_GROUP,          "cp_group",          DOCUMENTS, INT32)             \
  X(CP_CHUNK,          "cp_chunk",          DOCUMENTS, INT32)             \
  X(CP_GROUPS,         "cp_groups",         DOCUMENTS, INT32)             \
  X(CP_WORLD_RANKS,    "cp_world_ranks",    DOCUMENTS, INT32)

typedef enum {
#define CPDL__FIELD_ENUM(id, name, role, dtype) CPDL_FIELD_##id,
  CPDL_FIELD_MAP(CPDL__FIELD_ENUM)
#undef CPDL__FIELD_ENUM
  CPDL_FIELD_COUNT
} cpdl_field_id_t;

/** One entry of the vocabulary. Static, belongs to the library. */
typedef struct cpdl_field_info {
  const char *name;       /* "input_ids", ... */
  cpdl_field_role_t role;
  cpdl_dtype_t dtype;     /* what cpdl produces; CPDL_DTYPE_COUNT: the caller's, any */
} cpdl_field_info_t;

/** Entry `field` of the vocabulary, or NULL with a message when field is
 *  not below CPDL_FIELD_COUNT. */
CPDL_API const cpdl_field_info_t *cpdl_field_info(cpdl_field_id_t field);
/** The name of `field` ("input_ids", ...); "?" with a message if unknown. Static. */
CPDL_API const char *cpdl_field_name(cpdl_field_id_t field);
/** The field called `name`.
 *  \return 0, CPDL_EFIELD (a name the vocabulary does not hold: a field cpdl
 *          passes through as it is), CPDL_EARG (name or out NULL). */
CPDL_API int cpdl_field_lookup(const char *name, cpdl_field_id_t *out);
/** "primary", "labels", "loss_mask", "position", "mask", "sequence",
 *  "documents"; "?" with a message if unknown. Static. */
CPDL_API const char *cpdl_field_role_name(cpdl_field_role_t role);

#ifdef __cplusplus
}
#endif

#endif /* CPDL_FIELDS_H */
