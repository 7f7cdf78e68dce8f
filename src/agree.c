/* agree.c — the agreements: one verdict for every rank of a team.
 *
 * cpdl__agree reduces a local result (the lowest code wins, with its rank's
 * message); cpdl__config_agree compares the ranks' configurations and names
 * the first key that differs. Both are collective over a team (coll.c's
 * allgather-based operations) and return the same result on every rank, so
 * no rank proceeds to a collective that another skipped. A CPDL_EPEER from a
 * watched collective is returned as is: another collective would only wait
 * on the dead.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- an error --------------------------------------------------------------- */

#define AGREE_MSG_MAX 1024

int cpdl__agree(const cpdl__team_t *team, int local_rc) {
  /* MINLOC: the lowest code, and among ranks with it the lowest rank. */
  int worst = 0, worst_rank = 0;
  int rc = cpdl__coll_minloc(team, local_rc, &worst, &worst_rank, "error agreement");
  int rank = cpdl__team_world_rank(team, team->rank);
  if (rc == CPDL_EPEER)
    return rc;
  if (rc)
    return cpdl__error_prefix(rc, "on rank %d (local result %d)", rank, local_rc);
  if (worst == 0)
    return 0;
  char msg[AGREE_MSG_MAX];
  snprintf(msg, sizeof msg, "%s", team->rank == worst_rank ? cpdl_last_error() : "");
  rc = cpdl__coll_bcast(team, msg, sizeof msg, worst_rank, "error agreement");
  int who = cpdl__team_world_rank(team, worst_rank);
  if (rc == CPDL_EPEER)
    return rc;
  if (rc)
    return cpdl__error_prefix(rc, "broadcasting rank %d's message (its code: %s)", who,
                              cpdl_err_name(worst));
  msg[sizeof msg - 1] = '\0';
  if (msg[0])
    return cpdl__error(worst, "rank %d: %s", who, msg);
  return cpdl__error(worst, "rank %d: %s", who, cpdl_strerror(worst));
}

/* ---- the configuration ------------------------------------------------------ */

#define N_KEYS cpdl__config_key_count()
#define VALUE_MAX CPDL__CONFIG_VALUE_MAX

/* Values of every key, NUL-terminated one after another, in canonical order. */
static size_t pack_values(const cpdl_config_t *cfg, char *buf, size_t size) {
  size_t at = 0;
  for (int i = 0; i < N_KEYS; i++) {
    char value[VALUE_MAX];
    (void)cpdl__config_value(cfg, i, value, sizeof value);
    size_t len = strlen(value);
    if (at + len + 1 > size)
      len = size - at - 1; /* cannot happen: size is N_KEYS * VALUE_MAX */
    memcpy(buf + at, value, len);
    buf[at + len] = '\0';
    at += len + 1;
  }
  return at;
}

#define PACKED_MAX ((size_t)N_KEYS * VALUE_MAX)

int cpdl__config_agree(const cpdl__team_t *team, const cpdl_config_t *cfg) {
  /* A NULL config on one rank must not desynchronize the collectives below:
   * it is compared as a default config and reported afterwards. */
  cpdl_config_t local;
  cpdl_config_init(&local);
  if (cfg)
    local = *cfg;

  /* min(h) and min(~h) = ~max(h) in one reduction. */
  uint64_t hash = cpdl__config_hash(&local);
  /* Signed min of the top-bit-flipped value = unsigned min. */
  int64_t all[2] = {(int64_t)(hash ^ (UINT64_C(1) << 63)), (int64_t)(~hash ^ (UINT64_C(1) << 63))};
  int rc = cpdl__coll_min_i64(team, all, 2, "configuration agreement");
  if (rc)
    return rc;
  if (((uint64_t)all[0] ^ (UINT64_C(1) << 63)) == ~((uint64_t)all[1] ^ (UINT64_C(1) << 63)))
    return cfg ? 0 : cpdl__error(CPDL_EARG, "config is NULL");

  /* Every rank agrees that something differs. Compare each rank's values
   * with rank 0's; the lowest (key index, rank) that differs is reported. */
  char *packed0 = malloc(PACKED_MAX), *packed = malloc(PACKED_MAX);
  int64_t all_ok = packed0 && packed;
  rc = cpdl__coll_min_i64(team, &all_ok, 1, "configuration agreement");
  if (rc || !all_ok) {
    free(packed0);
    free(packed);
    return rc ? rc : cpdl__error(-ENOMEM, "configuration agreement: out of memory");
  }
  rc = CPDL_ECONFIG;
  pack_values(&local, packed, PACKED_MAX);
  memcpy(packed0, packed, PACKED_MAX);
  int mrc;
  if ((mrc = cpdl__coll_bcast(team, packed0, PACKED_MAX, 0, "configuration agreement")) != 0) {
    rc = mrc;
    goto out;
  }
  struct { int key; int rank; } first = {N_KEYS, team->rank}, lowest;
  const char *v0 = packed0, *v = packed;
  for (int i = 0; i < N_KEYS; i++) {
    if (strcmp(v0, v) != 0) {
      first.key = i;
      break;
    }
    v0 += strlen(v0) + 1;
    v += strlen(v) + 1;
  }
  if ((mrc = cpdl__coll_minloc(team, first.key, &lowest.key, &lowest.rank,
                               "configuration agreement")) != 0) {
    rc = mrc;
    goto out;
  }
  if (lowest.key >= N_KEYS) {
    /* Hashes differ but no value does: only a NULL cfg on some rank. */
    rc = cfg ? cpdl__error(CPDL_ECONFIG, "configuration hashes differ between ranks but no key "
                           "does (a rank passed no configuration?)")
             : cpdl__error(CPDL_EARG, "config is NULL");
    goto out;
  }
  /* The chosen rank sends its value of that key. */
  char other[VALUE_MAX], value0[VALUE_MAX];
  v0 = packed0;
  v = packed;
  for (int i = 0; i < lowest.key; i++) {
    v0 += strlen(v0) + 1;
    v += strlen(v) + 1;
  }
  snprintf(value0, sizeof value0, "%s", v0);
  snprintf(other, sizeof other, "%s", v);
  if ((mrc = cpdl__coll_bcast(team, other, sizeof other, lowest.rank,
                              "configuration agreement")) != 0) {
    rc = mrc;
    goto out;
  }
  other[sizeof other - 1] = '\0';
  rc = cpdl__error(CPDL_ECONFIG, "configuration differs between ranks: key '%s' is %s on rank 0 "
                   "but %s on rank %d; pass the same options/CPDL_* variables to every rank",
                   cpdl__config_key(lowest.key, NULL), value0, other,
                   cpdl__team_world_rank(team, lowest.rank));
out:
  free(packed0);
  free(packed);
  return rc;
}
