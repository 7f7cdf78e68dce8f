/* plugin_broken.c — deliberately broken data-source plugins for
 * test_source.c: built four times (CPDL_BROKEN=1 wrong ABI version, 2 a
 * descriptor too small, 3 a name that differs from its file name, 4 no
 * entry symbol at all). */
#include "cpdl/plugin.h"

static int64_t no_count(void *state) { (void)state; return 0; }

static const cpdl_source_plugin_t descriptor = {
#if CPDL_BROKEN == 1
  .abi_version = 99,
  .struct_size = sizeof(cpdl_source_plugin_t),
  .name = "badabi",
#elif CPDL_BROKEN == 2
  .abi_version = CPDL_SOURCE_ABI_VERSION,
  .struct_size = 8,
  .name = "small",
#else
  .abi_version = CPDL_SOURCE_ABI_VERSION,
  .struct_size = sizeof(cpdl_source_plugin_t),
  .name = "other",
#endif
  .description = "broken on purpose",
  .count = no_count,
};

#if CPDL_BROKEN == 4
CPDL_SOURCE_PLUGIN_EXPORT const cpdl_source_plugin_t *not_the_entry(void) { return &descriptor; }
#else
CPDL_SOURCE_PLUGIN_EXPORT const cpdl_source_plugin_t *cpdl_source_plugin_v1(void) {
  return &descriptor;
}
#endif
