/* fuzz_npy_header.c — libFuzzer target: the input is an .npy file whose
 * header (magic, version, length, dict) is parsed and checked against its
 * length. A crash or sanitizer report is a bug. */
#include <stddef.h>
#include <stdint.h>

int cpdl_npy_fuzz_parse(const uint8_t *buf, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  cpdl_npy_fuzz_parse(data, size);
  return 0;
}
