/* fields.c — the field vocabulary of cpdl/fields.h: one table, generated from
 * CPDL_FIELD_MAP, that every name, role and dtype lookup reads. */
#include "base.h"

#include <string.h>

static const cpdl_field_info_t fields[CPDL_FIELD_COUNT] = {
#define ENTRY(id, name, role, dtype) \
  [CPDL_FIELD_##id] = {name, CPDL_ROLE_##role, CPDL_DTYPE_##dtype},
    CPDL_FIELD_MAP(ENTRY)
#undef ENTRY
};

static const char *const roles[CPDL_ROLE_COUNT] = {
    [CPDL_ROLE_PRIMARY] = "primary",     [CPDL_ROLE_LABELS] = "labels",
    [CPDL_ROLE_LOSS_MASK] = "loss_mask", [CPDL_ROLE_POSITION] = "position",
    [CPDL_ROLE_MASK] = "mask",           [CPDL_ROLE_SEQUENCE] = "sequence",
    [CPDL_ROLE_DOCUMENTS] = "documents",
};

const cpdl_field_info_t *cpdl_field_info(cpdl_field_id_t field) {
  if ((unsigned)field >= CPDL_FIELD_COUNT) {
    cpdl__error(CPDL_EARG, "cpdl_field_info: field %d is not below CPDL_FIELD_COUNT (%d)",
                (int)field, CPDL_FIELD_COUNT);
    return NULL;
  }
  return &fields[field];
}

const char *cpdl_field_name(cpdl_field_id_t field) {
  if ((unsigned)field >= CPDL_FIELD_COUNT) {
    cpdl__error(CPDL_EARG, "cpdl_field_name: field %d is not below CPDL_FIELD_COUNT (%d)",
                (int)field, CPDL_FIELD_COUNT);
    return "?";
  }
  return fields[field].name;
}

int cpdl_field_lookup(const char *name, cpdl_field_id_t *out) {
  if (!name || !out)
    return cpdl__error(CPDL_EARG, "cpdl_field_lookup: %s is NULL", name ? "out" : "name");
  for (int i = 0; i < CPDL_FIELD_COUNT; i++)
    if (strcmp(name, fields[i].name) == 0) {
      *out = (cpdl_field_id_t)i;
      return 0;
    }
  return cpdl__error(CPDL_EFIELD, "'%s' is not a field of cpdl's vocabulary (cpdl/fields.h); "
                     "it passes through as it is", name);
}

const char *cpdl_field_role_name(cpdl_field_role_t role) {
  if ((unsigned)role >= CPDL_ROLE_COUNT) {
    cpdl__error(CPDL_EARG, "cpdl_field_role_name: role %d is not below CPDL_ROLE_COUNT (%d)",
                (int)role, CPDL_ROLE_COUNT);
    return "?";
  }
  return roles[role];
}
