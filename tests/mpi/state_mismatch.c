/* state_mismatch.c — a resume state is tied to the stream of its job, not to
 * its layout. For every key of the configuration's key table
 * (cpdl__config_key): a stream key changed between save and restore is
 * refused with CPDL_ECONFIG on every rank, the message naming the key and
 * the job's value; any other key — the layout (cp, tp, order) among them —
 * may change and the state is accepted. A key the table gains without an
 * entry here fails the test (decide which it is). Also: another dp size (the
 * same cp on half the ranks) is accepted (the order is global); a state of
 * the old per-replica format (version 2) is refused as such; ranks given
 * different states are refused.
 *
 * usage: mpi_state_mismatch   (np 4)
 */
#include "internal.h"
#include "mpi_test.h"

#include <stdlib.h>
#include <string.h>

static const char base_text[] =
    "cp=2 tp=1 order=dp,cp,tp seq_len=64 batch=2 steps=4 mode=contiguous seed=5 "
    "source=synthetic:?mean=40 collate=pack padding_token_id=0 position_ids=restart "
    "loss_on_eot=1 drop_last=1 slots=4 threads=2 pin=none timeout_ms=60000";

/* Another value for each key (canonical text); stream says whether the
 * state must refuse it. */
static const struct {
  const char *key, *other;
  bool stream;
} alternatives[] = {
    {"cp", "4", false},
    {"tp", "2", false},
    {"order", "cp,dp,tp", false},
    {"seq_len", "128", true},
    {"batch", "3", true},
    {"mode", "round_robin", true},
    {"seed", "99", true},
    {"source", "synthetic:?mean=41", true},
    {"collate", "pad", true},
    {"padding_token_id", "7", true},
    {"position_ids", "continuous", true},
    {"loss_on_eot", "0", true},
    {"drop_last", "0", true},
    {"steps", "6", false},
    {"epochs", "2", false},
    {"slots", "3", false},
    {"threads", "1", false},
    {"pin", "auto", false},
    {"timeout_ms", "5000", false},
    /* Who computes which rows, not which rows: a change resumes. The base's mode
     * (contiguous) takes only schedule=static, its default; python.schedule_run resumes
     * a balanced thd run under another layout. */
    {"schedule", "static", false},
    {"cost", "1000,1", false},
    {"ring_bytes", "8M", false}, /* memory, not rows: a change resumes */
};
#define N_ALTERNATIVES ((int)(sizeof alternatives / sizeof alternatives[0]))

/* Open with cfg on comm, take one step, save. */
static size_t save_after_one(MPI_Comm comm, const cpdl_config_t *cfg, char *buf, size_t size) {
  cpdl_loader_t *loader = NULL;
  size_t used = 0;
  int rc = cpdl_loader_open(comm, cfg, &loader);
  CHECK(rc == 0, "open: %s", cpdl_last_error());
  if (rc)
    return 0;
  cpdl_batch_t b;
  CHECK(cpdl_loader_next(loader, &b) == 0, "next: %s", cpdl_last_error());
  CHECK(cpdl_batch_release(loader, &b) == 0, "release: %s", cpdl_last_error());
  rc = cpdl_loader_state_save(loader, buf, size, &used);
  CHECK(rc == 0, "save: %s", cpdl_last_error());
  CHECK(cpdl_loader_close(loader) == 0, "close: %s", cpdl_last_error());
  return used;
}

/* Open with cfg, restore; return restore's code (message in last_error). */
static int restore_with(MPI_Comm comm, const cpdl_config_t *cfg, const char *buf, size_t size,
                        char *msg, size_t msg_size) {
  cpdl_loader_t *loader = NULL;
  int rc = cpdl_loader_open(comm, cfg, &loader);
  CHECK(rc == 0, "open: %s", cpdl_last_error());
  if (rc)
    return rc;
  rc = cpdl_loader_state_restore(loader, buf, size);
  snprintf(msg, msg_size, "%s", cpdl_last_error());
  if (rc == 0) {
    cpdl_batch_t b;
    int next = cpdl_loader_next(loader, &b);
    CHECK(next == 0 && b.step == 1, "first step after restore: %s step %llu",
          cpdl_err_name(next), (unsigned long long)b.step);
    if (next == 0)
      cpdl_batch_release(loader, &b);
  }
  CHECK(cpdl_loader_close(loader) == 0, "close: %s", cpdl_last_error());
  return rc;
}

int main(int argc, char **argv) {
  cpdl_test_init(&argc, &argv);
  int size = 1, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  CHECK(size == 4, "run with -np 4, not %d", size);
  cpdl_config_t base;
  cpdl_config_init(&base);
  CHECK(cpdl_config_parse(&base, base_text) == 0, "base config: %s", cpdl_last_error());
  static char state[8192];
  size_t n = save_after_one(MPI_COMM_WORLD, &base, state, sizeof state);

  int n_stream = 0;
  for (int i = 0; i < cpdl__config_key_count(); i++) {
    bool stream = false;
    const char *key = cpdl__config_key(i, &stream);
    int a = 0;
    while (a < N_ALTERNATIVES && strcmp(alternatives[a].key, key) != 0)
      a++;
    CHECK(a < N_ALTERNATIVES, "config key '%s' has no entry in this test: add it, saying "
          "whether a resume state must refuse a change of it", key);
    if (a == N_ALTERNATIVES)
      continue;
    CHECK(alternatives[a].stream == stream, "key '%s': the table says stream=%d, this test %d",
          key, stream, alternatives[a].stream);
    cpdl_config_t cfg = base;
    CHECK(cpdl_config_set(&cfg, key, alternatives[a].other) == 0, "set %s: %s", key,
          cpdl_last_error());
    char msg[1024], want[256];
    int rc = restore_with(MPI_COMM_WORLD, &cfg, state, n, msg, sizeof msg);
    if (stream) {
      n_stream++;
      snprintf(want, sizeof want, "this job has %s=%s", key, alternatives[a].other);
      CHECK(rc == CPDL_ECONFIG && strstr(msg, want) && strstr(msg, "saved with"),
            "%s=%s: restore returned %s '%s', expected CPDL_ECONFIG naming '%s'", key,
            alternatives[a].other, cpdl_err_name(rc), msg, want);
    } else {
      CHECK(rc == 0, "%s=%s may change on resume, restore returned %s: %s", key,
            alternatives[a].other, cpdl_err_name(rc), msg);
    }
  }
  CHECK(n_stream >= 10, "only %d stream keys in the table", n_stream);

  /* Another dp size: the same cp on two ranks (dp 1; the state has dp 2). */
  MPI_Comm half;
  MPI_Comm_split(MPI_COMM_WORLD, rank / 2, rank, &half);
  char msg[1024];
  int rc = restore_with(half, &base, state, n, msg, sizeof msg);
  CHECK(rc == 0, "dp 2 state on dp 1 must be accepted: %s '%s'", cpdl_err_name(rc), msg);
  MPI_Comm_free(&half);

  /* The old format (version 2, per-replica cursors): refused, saying so. */
  static char old[8192];
  memcpy(old, state, n);
  uint64_t two = 2;
  memcpy(old + 8, &two, 8);
  rc = restore_with(MPI_COMM_WORLD, &base, old, n, msg, sizeof msg);
  CHECK(rc == CPDL_ESTATE && strstr(msg, "old format version 2"),
        "a version 2 state: %s '%s'", cpdl_err_name(rc), msg);

  /* Ranks given different states (rank 3 another step's): refused everywhere. */
  static char other[8192];
  size_t m = 0;
  {
    cpdl_loader_t *loader = NULL;
    CHECK(cpdl_loader_open(MPI_COMM_WORLD, &base, &loader) == 0, "open: %s", cpdl_last_error());
    CHECK(cpdl_loader_state_save(loader, other, sizeof other, &m) == 0, "save: %s",
          cpdl_last_error());
    cpdl_loader_close(loader);
  }
  rc = rank == 3 ? restore_with(MPI_COMM_WORLD, &base, other, m, msg, sizeof msg)
                 : restore_with(MPI_COMM_WORLD, &base, state, n, msg, sizeof msg);
  CHECK(rc == CPDL_ECONFIG && strstr(msg, "different resume states"),
        "different states per rank: %s '%s'", cpdl_err_name(rc), msg);

  int code = cpdl_test_finish();
  MPI_Finalize();
  return code;
}
