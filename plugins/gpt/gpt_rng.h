/* gpt_rng.h — numpy's legacy RandomState stream, bit for bit: MT19937 seeded
 * from one 32-bit integer (numpy's RandomState(int) uses init_genrand, not
 * init_by_array), the masked rejection sampler numpy calls random_interval
 * (formerly rk_interval), and RandomState.shuffle of a 1-D array (Fisher–Yates
 * from the last element down to 1). Megatron-LM's GPTDataset draws its
 * document and shuffle indices from exactly this stream.
 */
#ifndef CPDL_GPT_RNG_H
#define CPDL_GPT_RNG_H

#include <stdint.h>

#define GPT_MT_N 624

typedef struct gpt_mt {
  uint32_t key[GPT_MT_N];
  int pos;
} gpt_mt_t;

/** RandomState(seed) for an integer seed in [0, 2^32). */
void gpt_mt_seed(gpt_mt_t *mt, uint32_t seed);
/** The next 32-bit output (numpy: random_raw / next_uint32). */
uint32_t gpt_mt_next32(gpt_mt_t *mt);
/** Uniform in [0, max] by masking and rejecting, as numpy's random_interval
 *  (64-bit draws, high word first, when max >= 2^32). */
uint64_t gpt_mt_interval(gpt_mt_t *mt, uint64_t max);
/** RandomState.shuffle of a 1-D array of n elements (the element type does not
 *  change the draws). */
void gpt_mt_shuffle_i32(gpt_mt_t *mt, int32_t *x, int64_t n);
void gpt_mt_shuffle_u32(gpt_mt_t *mt, uint32_t *x, int64_t n);
void gpt_mt_shuffle_i64(gpt_mt_t *mt, int64_t *x, int64_t n);

#endif
