/* loader_impl.h — the loader object's fields, shared by the files that
 * implement it: loader.c (open, next/release, close, the view mapping) and
 * resume.c (the resume-state protocol: collective save and restore). Never
 * installed; nothing else includes it.
 */
#ifndef CPDL_LOADER_IMPL_H
#define CPDL_LOADER_IMPL_H

#include "internal.h"

#include "cpdl/tools.h"

#define MAX_GROUP ((int)CPDL__RING_MAX_CONSUMERS) /* one ring consumer per group member */

struct cpdl_loader {
  cpdl_config_t cfg;
  pid_t owner_pid;          /* the opener: a forked child owns nothing (cpdl__loader_check_owner) */
  /* The control plane (the mesh's teams point at it) and, when open built
   * it from an MPI communicator, that cpdl_oob_t to free at close. */
  cpdl__ctl_t ctl;
  cpdl_oob_t mpi_oob;
  cpdl__mesh_t mesh;
  cpdl__shm_t shm;          /* leader: read-write mapping; others: their mapping */
  cpdl__ring_t *ring;       /* leader: the writer's handle (loader threads) */
  /* The consumer side of every rank, the leader included, goes through a
   * read-only data mapping: the leader maps its own segment a second time,
   * so no rank can write into a view by mistake. */
  cpdl__shm_t view_shm;
  cpdl_mapping_t *view_map; /* view_shm's base and size, by reference (may be NULL) */
  cpdl__ring_t *cring;
  uint64_t nonce;
  uint64_t config_hash;
  size_t ctrl_bytes;
  size_t total_bytes;
  cpdl_tools_memory_t memory; /* the group's sizing, from the leader (sizing.c) */

  /* This host's other ranks (pid, pidfd), watched by open/restore/close's
   * collectives; the group's members among them by group rank (NULL: self,
   * or not found on this host) for the ring waits' liveness checks. */
  cpdl__watch_t watch;
  const cpdl__peer_t *group_peer[MAX_GROUP];
  /* A job across hosts: every rank's hostname (world order, for messages)
   * and the remote liveness (live.c; NULL on one host or without it). */
  char *hosts;
  cpdl__live_t *live;

  /* Consumer side (every rank, the leader included). */
  uint64_t next_step;      /* step the next next() returns */
  uint64_t end_step;       /* first step never delivered (UINT64_MAX: until EOF) */
  bool holding;            /* a batch is acquired and not released */
  bool failed;             /* a peer died: close without collectives */
  bool started;            /* a next() happened (restore no longer allowed) */
  /* The last next() timed out (a stalled rank, named in the message): if
   * this rank gives up and closes, the verdict is posted to the group, so
   * the stalled rank, once continued, names the same cause (R9/R19). */
  char timed_out[CPDL__RING_MSG_MAX];
  uint64_t state_words[CPDL__CURSOR_WORDS]; /* feed cursor after the last acquired step */
  uint64_t start_words[CPDL__CURSOR_WORDS]; /* feed cursor at next_step before any next() */
  cpdl_view_field_t view[CPDL_MAX_FIELDS];
  char view_names[CPDL_MAX_FIELDS][CPDL_NAME_MAX];
  int n_fields;

  /* Leader side. */
  cpdl__feed_t *feed;
  cpdl_prep_plan_t *plan;
  cpdl__pin_t *pin;
  uint64_t first_step;      /* step the loader threads start at */
  int64_t data_batch, data_seq_len; /* the first batch's input_ids (else first 2-d field) shape */
  cpdl__producer_t *producer; /* the loader threads, once started */
  char *dump_collated;      /* directory, or NULL */
};

/* A loader belongs to the process that opened it: CPDL_ESTATE naming the fork
 * (and fn) in a forked child, else 0 (loader.c). */
int cpdl__loader_check_owner(const cpdl_loader_t *L, const char *fn);

#endif /* CPDL_LOADER_IMPL_H */
