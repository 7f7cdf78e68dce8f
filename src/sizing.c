/* sizing.c — how much memory a group's batches get: the ring's slots and the
 * collate's output sets, from bytes and need rather than a fixed count
 * (docs/design.md#memory-sized-by-need; the formula is stated once, in
 * include/cpdl/tools.h above cpdl_tools_memory_t).
 *
 * Why 2 slots suffice: a rank holds at most one unreleased batch (next()
 * releases the previous one; the device feed releases a slot once its copy
 * has read it), so while the consumers hold step k the leader writes k+1
 * into the other slot, and writes k+2 as soon as k is released. More slots
 * only let the leader run further ahead: worth it for small steps, where
 * they cost little, not for a 1M-token step of 32 MiB each. Pure: no MPI,
 * no shared memory; the loader calls it once at open.
 */
#include "internal.h"

#include "cpdl/tools.h"

#include <inttypes.h>
#include <string.h>

int cpdl__sizing_plan(const cpdl_config_t *cfg, uint64_t rank_block_bytes,
                      uint64_t shared_block_bytes, int n_regions, int max_collate_sets,
                      cpdl_tools_memory_t *out) {
  memset(out, 0, sizeof *out);
  out->struct_size = sizeof *out;
  out->slots_need = CPDL__SLOTS_NEED;
  out->slots_max = CPDL__SLOTS_MAX;
  out->slots_given = cfg->slots;
  out->n_regions = n_regions;
  out->rank_block_bytes = rank_block_bytes;
  out->shared_block_bytes = shared_block_bytes;
  out->budget_bytes = cfg->ring_bytes > 0 ? (uint64_t)cfg->ring_bytes : CPDL__RING_BYTES_DEFAULT;
  if (cfg->slots == 1 || cfg->slots < 0 || cfg->ring_bytes < 0)
    return cpdl__error(CPDL_EARG, "config key slots=%d: expected 0 (sized by need and ring_bytes) "
                       "or a ring of 2..%u slots", cfg->slots, CPDL__RING_MAX_SLOTS);
  if (n_regions < 1 ||
      __builtin_mul_overflow((uint64_t)n_regions, rank_block_bytes, &out->slot_bytes) ||
      __builtin_add_overflow(out->slot_bytes, shared_block_bytes, &out->slot_bytes))
    return cpdl__error(CPDL_EOVERFLOW, "one step of %d CP shards of %" PRIu64 " bytes and %" PRIu64
                       " shared bytes does not fit in memory", n_regions, rank_block_bytes,
                       shared_block_bytes);
  if (cfg->slots >= CPDL__SLOTS_NEED) {
    out->slots = cfg->slots;
  } else {
    uint64_t fit = out->slot_bytes ? out->budget_bytes / out->slot_bytes : UINT64_MAX;
    if (fit < CPDL__SLOTS_NEED && cfg->ring_bytes > 0)
      return cpdl__error(CPDL_EARG, "config key ring_bytes=%" PRIu64 " holds %" PRIu64 " step(s) of "
                         "%" PRIu64 " bytes (%d CP shard(s) of seq_len x batch); the ring needs "
                         "%d: set ring_bytes >= %" PRIu64 ", or 0 for the default",
                         out->budget_bytes, fit, out->slot_bytes, n_regions, CPDL__SLOTS_NEED,
                         (uint64_t)CPDL__SLOTS_NEED * out->slot_bytes);
    out->slots = fit < CPDL__SLOTS_NEED ? CPDL__SLOTS_NEED
                 : fit > CPDL__SLOTS_MAX ? CPDL__SLOTS_MAX
                                         : (int)fit;
  }
  /* A second collate set lets one loader thread collate step k+1 while the
   * others prepare step k: lookahead, bought only where the ring itself has
   * room to run ahead. */
  out->collate_sets = max_collate_sets >= 2 && out->slots > CPDL__SLOTS_NEED ? 2 : 1;
  if (__builtin_mul_overflow((uint64_t)out->slots, out->slot_bytes, &out->ring_bytes))
    return cpdl__error(CPDL_EOVERFLOW, "a ring of %d slots of %" PRIu64 " bytes does not fit in "
                       "memory", out->slots, out->slot_bytes);
  return 0;
}
