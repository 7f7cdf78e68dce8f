/* hash.c — the one FNV-1a (64-bit) of the library: the configuration hash,
 * the resume state's checksum and anything else that fingerprints bytes.
 * Not cryptographic: it detects accidents (a truncated or edited file, two
 * ranks given different configurations), not attacks.
 */
#include "internal.h"

uint64_t cpdl__fnv1a(uint64_t hash, const void *data, size_t n) {
  const unsigned char *p = data;
  for (size_t i = 0; i < n; i++) {
    hash ^= p[i];
    hash *= CPDL__FNV1A_PRIME;
  }
  return hash;
}
