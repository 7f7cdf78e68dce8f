/* consumer.c — uses the installed cpdl through its one public header. */
#include <cpdl.h>
#include <stdio.h>
#include <string.h>

int main(void) {
  /* The pure preparation needs no MPI. */
  int64_t ids[6] = {1, 2, 3, 4, 5, 6};
  cpdl_tensor_t in[2] = {
      {.name = "input_ids", .dtype = CPDL_DTYPE_INT64, .ndim = 2, .shape = {1, 6}, .data = ids},
      {.name = "labels", .dtype = CPDL_DTYPE_INT64, .ndim = 2, .shape = {1, 6}, .data = ids}};
  cpdl_prep_params_t params;
  cpdl_prep_params_init(&params);
  params.cp_size = 2;
  cpdl_prep_plan_t *plan = NULL;
  if (cpdl_prep_plan_create(in, 2, &params, &plan)) {
    fprintf(stderr, "plan: %s\n", cpdl_last_error());
    return 1;
  }
  int ok = cpdl_prep_plan_padded_len(plan) == 8 && strcmp(cpdl_err_name(CPDL_EPEER), "CPDL_EPEER") == 0;
  cpdl_prep_plan_destroy(plan);
  printf("consumer: %s\n", ok ? "ok" : "wrong");
  return ok ? 0 : 1;
}
