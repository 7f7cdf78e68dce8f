/* segment.h — the shared-memory segment's bytes: its geometry, the
 * header, field, slot and consumer records as they lie in shared memory
 * (their ABI: magic, version, limits; tests corrupt them on purpose) and the
 * offsets of everything in it. ring.c alone computes offsets (the functions
 * below); no other file adds sizes by hand. Offsets and sizes only, never
 * pointers. Never installed.
 *
 * Layout: [header + field table + slot table + consumer cursors + slot lengths][data]
 * data: [region for local CP shard 0: slot 0 .. slot n-1][region 1]...[shared: slot 0..n-1]
 * Every region and every slot within it is page-aligned.
 */
#ifndef CPDL_SEGMENT_H
#define CPDL_SEGMENT_H

#include "base.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cpdl__ring_geometry {
  uint32_t n_slots;
  uint32_t n_regions;      /* local CP shards */
  uint32_t n_consumers;    /* group size */
  uint32_t n_fields;
  uint64_t slot_bytes;     /* one rank block, page-aligned */
  uint64_t shared_slot_bytes; /* one shared block, page-aligned (may be 0) */
} cpdl__ring_geometry_t;

/* The segment's control part as it lies in shared memory (its ABI; tests
 * corrupt it on purpose). Offsets and sizes only, never pointers. Layout:
 * [hdr][field records][slot records][consumer records][slot lengths], each
 * table 64-byte aligned, the whole control part page-aligned. */
#define CPDL__RING_MAGIC UINT64_C(0x474e49524c445043) /* "CPDLRING" little-endian */
#define CPDL__RING_VERSION 4u /* 2: consumer records carry world_rank and left; 3: 5 state
                               * words; 4: the slot lengths table */
#define CPDL__RING_MAX_SLOTS 1024u
#define CPDL__RING_MAX_REGIONS 64u
#define CPDL__RING_MAX_CONSUMERS 512u
#define CPDL__RING_STATE_WORDS 5 /* == CPDL__CURSOR_WORDS (checked in ring.c) */
#define CPDL__RING_MSG_MAX 512
typedef struct cpdl__ring_hdr {
  /* written once by the leader before the name is sent; read once by each
   * consumer into a local copy */
  uint64_t magic, total_bytes, header_bytes, nonce, config_hash, first_step;
  uint32_t version, page_bytes;
  uint32_t n_slots, n_regions, n_consumers, n_fields;
  uint64_t slot_bytes, shared_slot_bytes;
  /* live words */
  _Alignas(CPDL__CACHE_LINE) _Atomic int32_t leader_pid;
  _Atomic uint32_t abort_state;   /* 0 none, 1 being posted, 2 posted */
  _Atomic int32_t error_code;     /* valid once abort_state == 2 */
  _Atomic uint32_t eof_set;       /* 1: eof_step is valid */
  _Atomic uint64_t eof_step;      /* no step >= this will be published */
  _Atomic uint64_t heartbeat;
  char error_msg[CPDL__RING_MSG_MAX];
} cpdl__ring_hdr_t;
typedef struct cpdl__ring_field_rec {
  char name[CPDL_NAME_MAX];
  int32_t dtype, ndim, seq_dim, shared;
  int64_t shape[CPDL_MAX_DIMS];
  uint64_t offset, nbytes;        /* within its (rank or shared) block */
} cpdl__ring_field_rec_t;
typedef struct cpdl__ring_slot_rec {
  _Alignas(CPDL__CACHE_LINE) _Atomic uint32_t seq; /* futex word, bumped per publish */
  uint32_t reserved;
  _Atomic uint64_t step;          /* step last published in this slot */
  _Atomic uint64_t state[CPDL__RING_STATE_WORDS]; /* feed cursor after that step */
} cpdl__ring_slot_rec_t;
typedef struct cpdl__ring_consumer_rec { /* one cache line, written by its consumer */
  _Alignas(CPDL__CACHE_LINE) _Atomic uint64_t cursor; /* last released step + 1 */
  _Atomic int32_t pid;
  _Atomic uint32_t futex;         /* bumped per release (and on leave); the leader sleeps on it */
  _Atomic int32_t world_rank;     /* for messages that name this consumer */
  _Atomic uint32_t left;          /* 1: this consumer closed its loader; its cursor is final */
} cpdl__ring_consumer_rec_t;
/* The slot lengths table: what varies per step travels with the step, so a
 * consumer never re-derives it from the data. For every slot, one row of
 * (n_regions + 1) x n_fields words:
 *   lengths[slot][block][field]   (_Atomic uint64_t)
 * block < n_regions is local CP region `block`'s rank block, block ==
 * n_regions the shared block (the numbering of cpdl__ring_block_offset).
 * Each word is the number of valid entries along dim 0 of that field in
 * that block for the step the slot holds: at most the field record's
 * shape[0] (its capacity in the segment), which it is for every fixed-size
 * field; less for fields of variable length (mode thd's cu_seqlens and
 * cu_seqlens_padded: n+1 of their S/2cp+1 entries). A consumer reads the
 * word of its own region for rank fields and the shared word for shared
 * fields, so the length can differ per CP rank (TP peers share a region and
 * so a length). The publisher writes the whole row of a slot before
 * publishing it (ordered by publish()'s release store, like the state
 * words); a row starts on a cache line. */
/* Offsets of the tables in the control part (pure function of n_fields,
 * n_slots, n_consumers). */
size_t cpdl__ring_fields_offset(void);
size_t cpdl__ring_slots_offset(uint32_t n_fields);
size_t cpdl__ring_consumers_offset(uint32_t n_fields, uint32_t n_slots);
size_t cpdl__ring_lengths_offset(const cpdl__ring_geometry_t *geo);
/* Bytes of one slot's row of the lengths table (cache-line aligned). */
size_t cpdl__ring_lengths_row_bytes(const cpdl__ring_geometry_t *geo);
/* Offsets in a segment of this geometry whose control part is ctrl_bytes
 * (cpdl__ring_sizes): local CP region `region`'s block for slot `slot`, or,
 * for region == geo->n_regions, the shared block of `slot`; and the bytes of
 * one region (its n_slots blocks). Pure; the geometry must have passed
 * cpdl__ring_sizes (which bounds every product). */
size_t cpdl__ring_block_offset(const cpdl__ring_geometry_t *geo, size_t ctrl_bytes,
                               uint32_t region, uint32_t slot);
size_t cpdl__ring_region_bytes(const cpdl__ring_geometry_t *geo);

#endif /* CPDL_SEGMENT_H */
