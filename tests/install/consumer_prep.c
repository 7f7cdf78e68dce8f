/* consumer_prep.c — the bottom layer alone: includes only <cpdl/prep.h>, links
 * only libcpdl_prep (built without MPI's include path, so a <mpi.h> reached
 * from prep.h fails the build), shards one batch for two CP ranks and checks
 * the bytes, then checks that no MPI library was loaded into the process.
 * Built by cpdl's own tests (unit.layer_prep) and by tests/install/check.sh
 * against an installed prefix. */
#include <cpdl/prep.h>

#include <stdio.h>
#include <string.h>

static int fail(const char *what) {
  fprintf(stderr, "consumer_prep: %s (%s)\n", what, cpdl_last_error());
  return 1;
}

/* 1 if a library whose path contains `name` is mapped into this process. */
static int mapped(const char *name) {
  FILE *maps = fopen("/proc/self/maps", "r");
  char line[4096];
  int found = 0;
  if (!maps)
    return 0;
  while (!found && fgets(line, sizeof line, maps))
    found = strstr(line, name) != NULL;
  fclose(maps);
  return found;
}

int main(void) {
  /* S = 5 tokens, cp = 2: padded to a multiple of 2 * cp = 8, 4 per rank. */
  int64_t ids[5] = {11, 12, 13, 14, 15};
  cpdl_tensor_t in[2] = {
      {.name = "input_ids", .dtype = CPDL_DTYPE_INT64, .ndim = 2, .shape = {1, 5}, .data = ids},
      {.name = "labels", .dtype = CPDL_DTYPE_INT64, .ndim = 2, .shape = {1, 5}, .data = ids}};
  cpdl_prep_params_t params;
  cpdl_prep_params_init(&params);
  params.cp_size = 2;
  params.padding_token_id = 99;
  cpdl_prep_plan_t *plan = NULL;
  if (cpdl_prep_plan_create(in, 2, &params, &plan))
    return fail("plan");
  if (cpdl_prep_plan_padded_len(plan) != 8)
    return fail("padded length is not 8");
  const cpdl_prep_field_t *ids_field = NULL;
  for (int i = 0; i < cpdl_prep_plan_nfields(plan); i++)
    if (strcmp(cpdl_prep_plan_field(plan, i)->name, "input_ids") == 0)
      ids_field = cpdl_prep_plan_field(plan, i);
  if (!ids_field || ids_field->shape[1] != 4)
    return fail("no input_ids shard of 4 tokens");
  static _Alignas(64) unsigned char block[4096];
  if (cpdl_prep_plan_rank_bytes(plan) > sizeof block)
    return fail("rank block larger than expected");
  int rank = 1;
  void *dst[1] = {block};
  if (cpdl_prep_execute(plan, in, 2, &rank, 1, dst, NULL))
    return fail("execute");
  const int64_t *got = (const int64_t *)(block + ids_field->offset);
  const int64_t want[4] = {15, 99, 99, 99}; /* rank 1 keeps positions 4..7 */
  if (memcmp(got, want, sizeof want) != 0)
    return fail("rank 1's input_ids shard is not {15, 99, 99, 99}");
  cpdl_prep_plan_destroy(plan);
  /* A failing call leaves a message in this library too. */
  if (cpdl_prep_plan_create(in, 1, &params, &plan) != CPDL_EFIELD || !cpdl_last_error()[0])
    return fail("one primary without labels or loss mask is not CPDL_EFIELD with a message");
  if (mapped("libmpi") || mapped("libcpdl.so"))
    return fail("libmpi or libcpdl.so is loaded; libcpdl_prep must stand alone");
  printf("consumer_prep: ok\n");
  return 0;
}
