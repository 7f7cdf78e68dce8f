/* test_fields.c — the field vocabulary (cpdl/fields.h): every entry is named,
 * found again by its name and holds a valid role and dtype; names are unique;
 * the one loss_mask dtype is float32, and every kind of feed produces its
 * fields in the vocabulary's dtypes (collate: pack, pad, thd). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "internal.h"

#include <string.h>

static void test_table(void **state) {
  (void)state;
  for (int i = 0; i < CPDL_FIELD_COUNT; i++) {
    const cpdl_field_info_t *f = cpdl_field_info((cpdl_field_id_t)i);
    assert_non_null(f);
    assert_non_null(f->name);
    assert_true(strlen(f->name) > 0 && strlen(f->name) < CPDL_NAME_MAX);
    assert_string_equal(cpdl_field_name((cpdl_field_id_t)i), f->name);
    assert_true((unsigned)f->role < CPDL_ROLE_COUNT);
    assert_string_not_equal(cpdl_field_role_name(f->role), "?");
    assert_true((unsigned)f->dtype <= CPDL_DTYPE_COUNT);
    cpdl_field_id_t back = CPDL_FIELD_COUNT;
    assert_int_equal(cpdl_field_lookup(f->name, &back), 0);
    assert_int_equal(back, i); /* unique: the lookup finds this entry, not an earlier one */
  }
  assert_null(cpdl_field_info(CPDL_FIELD_COUNT));
  assert_string_equal(cpdl_field_name(CPDL_FIELD_COUNT), "?");
  assert_string_equal(cpdl_field_role_name(CPDL_ROLE_COUNT), "?");
  cpdl_field_id_t id;
  assert_int_equal(cpdl_field_lookup("pixel_values", &id), CPDL_EFIELD);
  assert_non_null(strstr(cpdl_last_error(), "pixel_values"));
  /* The names the contract and the frameworks know them by. */
  assert_string_equal(cpdl_field_name(CPDL_FIELD_INPUT_IDS), "input_ids");
  assert_string_equal(cpdl_field_name(CPDL_FIELD_PACKED_SEQ_IDS), "_packed_seq_ids");
  assert_string_equal(cpdl_field_name(CPDL_FIELD_CU_SEQLENS_PADDED), "cu_seqlens_padded");
  assert_int_equal(cpdl_field_info(CPDL_FIELD_LOSS_MASK)->role, CPDL_ROLE_LOSS_MASK);
  /* One loss_mask dtype: float32, as Megatron-LM's GPTDataset gives it. */
  assert_int_equal(cpdl_field_info(CPDL_FIELD_LOSS_MASK)->dtype, CPDL_DTYPE_FLOAT32);
}

/* Every field of every collate kind comes in the vocabulary's dtype. */
static void test_collate_dtypes(void **state) {
  (void)state;
  const struct {
    cpdl__collate_kind_t kind;
    int thd_multiple;
    bool doc_ids;
    int n_fields;
  } kinds[] = {{CPDL__COLLATE_PACK, 0, false, 4},
               {CPDL__COLLATE_PAD, 0, false, 3},
               {CPDL__COLLATE_PACK, 4, false, 7},
               {CPDL__COLLATE_PACK, 4, true, 8}};
  for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
    cpdl__collate_params_t p = {.kind = kinds[k].kind, .seq_len = 16, .batch = 1,
                                .thd_multiple = kinds[k].thd_multiple,
                                .thd_doc_ids = kinds[k].doc_ids, .eot_token = -1};
    cpdl_tensor_t fields[CPDL_MAX_FIELDS];
    int n = 0;
    assert_int_equal(cpdl__collate_spec(&p, fields, &n), 0);
    assert_int_equal(n, kinds[k].n_fields);
    bool loss_mask = false;
    for (int i = 0; i < n; i++) {
      cpdl_field_id_t id;
      assert_int_equal(cpdl_field_lookup(fields[i].name, &id), 0);
      assert_int_equal(fields[i].dtype, cpdl_field_info(id)->dtype);
      loss_mask = loss_mask || id == CPDL_FIELD_LOSS_MASK;
    }
    assert_true(loss_mask == (kinds[k].thd_multiple > 0));
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_table),
      cmocka_unit_test(test_collate_dtypes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
