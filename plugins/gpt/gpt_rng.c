/* gpt_rng.c — numpy legacy RandomState (MT19937) and its shuffle; see
 * gpt_rng.h. Written from the MT19937 paper's reference algorithm and numpy's
 * documented legacy behaviour; checked against numpy by unit.gpt_rng. */
#include "gpt_rng.h"

#define MT_M 397
#define MT_MATRIX_A 0x9908b0dfu
#define MT_UPPER 0x80000000u
#define MT_LOWER 0x7fffffffu

void gpt_mt_seed(gpt_mt_t *mt, uint32_t seed) {
  mt->key[0] = seed;
  for (int i = 1; i < GPT_MT_N; i++) {
    uint32_t prev = mt->key[i - 1];
    mt->key[i] = 1812433253u * (prev ^ (prev >> 30)) + (uint32_t)i;
  }
  mt->pos = GPT_MT_N;
}

static inline uint32_t twist(uint32_t a, uint32_t b, uint32_t far) {
  uint32_t y = (a & MT_UPPER) | (b & MT_LOWER);
  return far ^ (y >> 1) ^ ((0u - (y & 1u)) & MT_MATRIX_A);
}

static void regenerate(gpt_mt_t *mt) {
  uint32_t *k = mt->key;
  int i = 0;
  for (; i < GPT_MT_N - MT_M; i++)
    k[i] = twist(k[i], k[i + 1], k[i + MT_M]);
  for (; i < GPT_MT_N - 1; i++)
    k[i] = twist(k[i], k[i + 1], k[i + MT_M - GPT_MT_N]);
  k[GPT_MT_N - 1] = twist(k[GPT_MT_N - 1], k[0], k[MT_M - 1]);
  mt->pos = 0;
}

uint32_t gpt_mt_next32(gpt_mt_t *mt) {
  if (mt->pos == GPT_MT_N)
    regenerate(mt);
  uint32_t y = mt->key[mt->pos++];
  y ^= y >> 11;
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= y >> 18;
  return y;
}

uint64_t gpt_mt_interval(gpt_mt_t *mt, uint64_t max) {
  if (max == 0)
    return 0;
  uint64_t mask = max;
  mask |= mask >> 1;
  mask |= mask >> 2;
  mask |= mask >> 4;
  mask |= mask >> 8;
  mask |= mask >> 16;
  mask |= mask >> 32;
  uint64_t v;
  if (max <= 0xffffffffu) {
    while ((v = (gpt_mt_next32(mt) & mask)) > max)
      ;
  } else {
    for (;;) {
      uint64_t hi = gpt_mt_next32(mt);
      uint64_t lo = gpt_mt_next32(mt);
      if ((v = ((hi << 32) | lo) & mask) <= max)
        break;
    }
  }
  return v;
}

/* Fisher–Yates from the end. The draws do not depend on the data, so a block
 * of upcoming swap targets is drawn first and prefetched: the random accesses
 * of a large array overlap instead of waiting one cache miss at a time. The
 * order of draws and swaps is exactly the one-at-a-time loop's. */
#define SHUFFLE_BLOCK 32
#define DEFINE_SHUFFLE(name, type)                                            \
  void name(gpt_mt_t *mt, type *x, int64_t n) {                               \
    uint64_t j[SHUFFLE_BLOCK];                                                \
    int64_t i = n - 1;                                                        \
    while (i >= 1) {                                                          \
      int m = i >= SHUFFLE_BLOCK ? SHUFFLE_BLOCK : (int)i;                    \
      for (int b = 0; b < m; b++) {                                           \
        j[b] = gpt_mt_interval(mt, (uint64_t)(i - b));                        \
        __builtin_prefetch(&x[j[b]], 1);                                      \
      }                                                                       \
      for (int b = 0; b < m; b++, i--) {                                      \
        type t = x[i];                                                        \
        x[i] = x[j[b]];                                                       \
        x[j[b]] = t;                                                          \
      }                                                                       \
    }                                                                         \
  }
DEFINE_SHUFFLE(gpt_mt_shuffle_i32, int32_t)
DEFINE_SHUFFLE(gpt_mt_shuffle_u32, uint32_t)
DEFINE_SHUFFLE(gpt_mt_shuffle_i64, int64_t)
