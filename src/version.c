/* version.c — the library's version, as CMake's project(VERSION) gave it
 * (cpdl/version.h is generated from it; nothing else writes the number). */
#include "base.h"

const char *cpdl_version(void) { return CPDL_VERSION_STRING; }
