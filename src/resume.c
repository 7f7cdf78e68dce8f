/* resume.c — the resume-state protocol (the state is a position in the
 * global order, the same on every replica: it restores any layout): what
 * every rank contributes to a save, how the job's state is built from them (the blob's bytes: state.c;
 * its layout: docs/state.md) and how a restore checks, agrees on and applies
 * one state. Both calls are collective on the caller's thread; each ends with
 * cpdl__agree() so every rank returns the same result, and runs with the
 * host's pid watch installed, so a death inside them is CPDL_EPEER (the loader
 * is then failed: close frees it locally).
 */
#include "internal.h"
#include "loader_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* After a CPDL_EPEER from a collective: failed for good, and the other hosts'
 * ranks are told (they would wait for this rank in the next collective). */
static void fail(cpdl_loader_t *L) {
  char msg[1024];
  snprintf(msg, sizeof msg, "%s", cpdl_last_error());
  cpdl__live_announce_failure(L->live, msg);
  cpdl__error(CPDL_EPEER, "%s", msg);
  L->failed = true;
}

/* What each rank contributes to a save: whether it leads a group (and so
 * knows the feed's cursor first-hand), the step of its next batch (a held
 * step counts as consumed) and the cursor at that step. The cursor is the
 * global order's, the same on every replica: any leader's will do, and they
 * are checked to agree. */
enum { REC_FLAGS, REC_STEP, REC_CURSOR, REC_WORDS = REC_CURSOR + CPDL__CURSOR_WORDS };
#define REC_LEADER 1u

static void state_record(const cpdl_loader_t *L, uint64_t rec[REC_WORDS]) {
  uint64_t step = L->holding ? L->next_step + 1 : L->next_step;
  const uint64_t *cursor = step == L->first_step ? L->start_words : L->state_words;
  rec[REC_FLAGS] = L->mesh.is_leader ? REC_LEADER : 0;
  rec[REC_STEP] = step;
  memcpy(&rec[REC_CURSOR], cursor, CPDL__CURSOR_WORDS * sizeof *cursor);
}

/* The stream keys' text (malloc'd) or NULL with -ENOMEM. */
static char *stream_text(const cpdl_loader_t *L) {
  int len = cpdl__config_stream_format(&L->cfg, NULL, 0);
  char *text = len < 0 ? NULL : malloc((size_t)len + 1);
  if (!text) {
    cpdl__error(-ENOMEM, "out of memory formatting the resume state's configuration");
    return NULL;
  }
  cpdl__config_stream_format(&L->cfg, text, (size_t)len + 1);
  return text;
}

int cpdl_loader_state_size(const cpdl_loader_t *L, size_t *bytes) {
  if (!L || !bytes)
    return cpdl__error(CPDL_EARG, "cpdl_loader_state_size: NULL argument");
  int len = cpdl__config_stream_format(&L->cfg, NULL, 0);
  if (len < 0)
    return len;
  *bytes = cpdl__state_bytes((size_t)len);
  return 0;
}

/* From every rank's record, the job's state, encoded into buf. */
static int state_build(cpdl_loader_t *L, const uint64_t *recs, void *buf, size_t size,
                       size_t *used) {
  int n = L->mesh.me.world_size;
  uint64_t step = recs[REC_STEP];
  const uint64_t *cursor = NULL;
  int from = -1;
  for (int r = 0; r < n; r++) {
    const uint64_t *rec = recs + (size_t)r * REC_WORDS;
    if (rec[REC_STEP] != step)
      return cpdl__error(CPDL_ESTATE, "cpdl_loader_state_save: rank 0 is at step %llu but rank "
                         "%d at step %llu; save when every rank has taken the same steps",
                         (unsigned long long)step, r, (unsigned long long)rec[REC_STEP]);
    if (!(rec[REC_FLAGS] & REC_LEADER))
      continue;
    if (!cursor) {
      cursor = &rec[REC_CURSOR];
      from = r;
    } else if (memcmp(cursor, &rec[REC_CURSOR], CPDL__CURSOR_WORDS * sizeof *cursor) != 0) {
      return cpdl__error(CPDL_ESTATE, "cpdl_loader_state_save: the group leaders of ranks %d and "
                         "%d hold different cursors of the global order at step %llu (a bug: "
                         "every replica computes the same)", from, r, (unsigned long long)step);
    }
  }
  if (!cursor)
    return cpdl__error(CPDL_ESTATE, "cpdl_loader_state_save: no group leader among the ranks");
  char *text = stream_text(L);
  if (!text)
    return -ENOMEM;
  cpdl__state_t st = {
      .step = step,
      .dp_size = (uint64_t)L->mesh.me.dp_size,
      .cursor = cursor,
      .stream = text,
  };
  int rc = cpdl__state_encode(&st, buf, size, used);
  free(text);
  return rc;
}

static int save_watched(cpdl_loader_t *L, void *buf, size_t size, size_t *used, int local) {
  int n = L->mesh.me.world_size;
  uint64_t *recs = malloc((size_t)n * REC_WORDS * sizeof *recs);
  if (!recs && !local)
    local = cpdl__error(-ENOMEM, "out of memory gathering the resume state");
  int rc = cpdl__agree(&L->mesh.world, local);
  if (rc) {
    free(recs);
    return rc;
  }
  uint64_t mine[REC_WORDS];
  state_record(L, mine);
  rc = cpdl__coll_allgather(&L->mesh.world, mine, REC_WORDS * sizeof(uint64_t), recs,
                            "state save (the cursors' gather)");
  if (!rc)
    rc = cpdl__agree(&L->mesh.world, state_build(L, recs, buf, size, used));
  free(recs);
  return rc;
}

int cpdl_loader_state_save(cpdl_loader_t *L, void *buf, size_t size, size_t *used) {
  if (!L)
    return cpdl__error(CPDL_EARG, "cpdl_loader_state_save: NULL loader");
  int owner = cpdl__loader_check_owner(L, "cpdl_loader_state_save");
  if (owner)
    return owner;
  if (L->failed)
    return cpdl__error(CPDL_EPEER, "the loader failed earlier (a rank died); close it");
  size_t need = 0;
  int local = cpdl_loader_state_size(L, &need);
  if (used)
    *used = need;
  if (!local && (!buf || size < need))
    local = cpdl__error(CPDL_EOVERFLOW, "cpdl_loader_state_save: the buffer has %zu bytes, the "
                        "state needs %zu (cpdl_loader_state_size)", buf ? size : 0, need);
  const cpdl__watch_t *previous = cpdl__watch_install(&L->watch);
  cpdl__op_t previous_op = cpdl__coll_op(CPDL__OP_SAVE);
  int rc = save_watched(L, buf, size, used, local);
  cpdl__coll_op(previous_op);
  cpdl__watch_install(previous);
  if (rc == CPDL_EPEER)
    fail(L); /* close must not try a collective */
  return rc;
}

/* Local checks of a state against this job: the blob itself (CPDL_ESTATE),
 * then its stream keys (CPDL_ECONFIG naming the key and both values). The
 * layout is not among them: the order is global. */
static int state_check(const cpdl_loader_t *L, const void *buf, size_t size,
                       cpdl__state_view_t *view) {
  int rc = cpdl__state_decode(buf, size, view);
  if (rc)
    return rc;
  cpdl_config_t saved;
  cpdl_config_init(&saved);
  if ((rc = cpdl_config_parse(&saved, view->stream)))
    return cpdl__error_prefix(CPDL_ECONFIG, "resume state's configuration is not one this cpdl "
                              "reads");
  if ((rc = cpdl__config_stream_compare(&saved, &L->cfg)))
    return rc;
  if (L->cfg.steps > 0 && view->step > (uint64_t)L->cfg.steps)
    return cpdl__error(CPDL_EARG, "resume state is at step %llu, beyond the run's end at "
                       "steps=%lld", (unsigned long long)view->step, (long long)L->cfg.steps);
  return 0;
}

/* The collective part of restore (a watch installed): agree on the local
 * checks and that every rank was given the same state, then the leader
 * rewinds the ring and seeks its feed to the state's cursor between two
 * group barriers, so no consumer waits on the ring while it changes; the
 * run's end is counted again from there, for this layout. */
static int restore_watched(cpdl_loader_t *L, const cpdl__state_view_t *view, uint64_t checksum,
                           int local) {
  int rc = cpdl__agree(&L->mesh.world, local);
  if (rc)
    return rc;
  /* min(c) and min(~c) = ~max(c): signed min of top-bit-flipped values. */
  const uint64_t flip = UINT64_C(1) << 63;
  int64_t all[2] = {(int64_t)(checksum ^ flip), (int64_t)(~checksum ^ flip)};
  rc = cpdl__coll_min_i64(&L->mesh.world, all, 2, "restore (the states' comparison)");
  if (rc)
    return rc;
  if (((uint64_t)all[0] ^ flip) != ~((uint64_t)all[1] ^ flip))
    return cpdl__error(CPDL_ECONFIG, "ranks were given different resume states: give every rank "
                       "the same one (any rank's save holds the whole job)");
  uint64_t step = view->step;
  uint64_t cursor[CPDL__CURSOR_WORDS];
  memcpy(cursor, view->cursor, sizeof cursor);
  rc = cpdl__coll_barrier(&L->mesh.group, "restore (the group's barrier)");
  if (rc == CPDL_EPEER)
    return rc;
  local = rc;
  uint64_t end = L->cfg.steps > 0 ? (uint64_t)L->cfg.steps : UINT64_MAX;
  uint64_t epochs = cpdl__config_epochs(&L->cfg);
  if (!local && L->mesh.is_leader) {
    local = cpdl__feed_seek(L->feed, cursor);
    uint64_t left = 0;
    if (!local && epochs && !(local = cpdl__feed_steps(L->feed, epochs, UINT64_MAX, &left)))
      end = left > end - step ? end : step + left;
    if (!local)
      cpdl__ring_reset(L->ring, step);
  }
  if (!local)
    cpdl__ring_rebase(L->cring, step);
  rc = cpdl__agree(&L->mesh.world, local);
  if (rc)
    return rc;
  if (epochs) { /* the leaders' end, equal on all of them; the others learn it */
    int64_t e = !L->mesh.is_leader || end > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)end;
    if ((rc = cpdl__coll_min_i64(&L->mesh.world, &e, 1, "restore (the run's end step)")))
      return rc;
    end = e == INT64_MAX ? UINT64_MAX : (uint64_t)e;
  }
  /* The reset is complete before any consumer waits on the ring. */
  rc = cpdl__coll_barrier(&L->mesh.group, "restore (the group's barrier)");
  if (rc)
    return rc;
  L->first_step = step;
  L->next_step = step;
  L->end_step = end;
  memcpy(L->start_words, view->cursor, sizeof cursor);
  memcpy(L->state_words, view->cursor, sizeof cursor);
  return 0;
}

int cpdl_loader_state_restore(cpdl_loader_t *L, const void *buf, size_t size) {
  if (!L || !buf)
    return cpdl__error(CPDL_EARG, "cpdl_loader_state_restore: NULL argument");
  int owner = cpdl__loader_check_owner(L, "cpdl_loader_state_restore");
  if (owner)
    return owner;
  if (L->failed)
    return cpdl__error(CPDL_EPEER, "the loader failed earlier (a rank died); close it");
  cpdl__state_view_t view;
  memset(&view, 0, sizeof view);
  int local = 0;
  if (L->started)
    local = cpdl__error(CPDL_ESTATE, "cpdl_loader_state_restore: only valid before the first "
                        "cpdl_loader_next()");
  else
    local = state_check(L, buf, size, &view);
  uint64_t checksum = 0;
  if (!local)
    memcpy(&checksum, (const char *)buf + size - 8, 8);
  if (!local)
    local = cpdl__fault("restoring", L->mesh.me.world_rank);
  const cpdl__watch_t *previous = cpdl__watch_install(&L->watch);
  cpdl__op_t previous_op = cpdl__coll_op(CPDL__OP_RESTORE);
  int rc = restore_watched(L, &view, checksum, local);
  cpdl__coll_op(previous_op);
  cpdl__watch_install(previous);
  if (rc == CPDL_EPEER)
    fail(L); /* close must not try a collective */
  return rc;
}
