/* fuzz_llmc_header.c — libFuzzer target: the input is an llm.c .bin shard;
 * its header is validated against its length and its documents indexed.
 * A crash or sanitizer report is a bug. */
#include <stddef.h>
#include <stdint.h>

int cpdl_llmc_fuzz_parse(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  cpdl_llmc_fuzz_parse(data, size);
  return 0;
}
