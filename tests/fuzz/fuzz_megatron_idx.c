/* fuzz_megatron_idx.c — libFuzzer target: the input is a Megatron .idx file;
 * it is validated against a .bin whose length also comes from the input, in
 * both units (document, sequence). A crash, a sanitizer report or a sample
 * extent outside the .bin (trap) is a bug. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

int cpdl_megatron_fuzz_parse(const uint8_t *buf, size_t size, uint64_t bin_size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* The last 4 bytes choose the .bin length so the fuzzer explores both
   * fitting and overflowing sequences; the rest is the .idx. */
  uint32_t bin_size = 0;
  if (size >= 4) {
    memcpy(&bin_size, data + size - 4, 4);
    size -= 4;
  }
  cpdl_megatron_fuzz_parse(data, size, bin_size);
  return 0;
}
