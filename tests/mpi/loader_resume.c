/* loader_resume.c — exact resume of the whole job through the library, with
 * any number of replicas: run A delivers steps 0..N-1 and every rank saves
 * the job's state after step K-1 (collective); run B restores RANK 0's bytes
 * on every rank and must deliver steps K..N-1 with views identical, byte for
 * byte, to run A's on every rank (a hash of every field per step and rank).
 * Also: a save while step K-1 is still held equals the save after its
 * release (the held step counts as consumed); states with a wrong version,
 * magic, size, checksum, or a cursor whose step word disagrees with the
 * state's step are refused with CPDL_ESTATE on every rank, and leave the
 * loader restorable. With steps of >= 4 MiB and threads=2 the leader is
 * pipelined, so this also proves the cursor saved with each step is the one
 * before the look-ahead. In mode thd the test checks that the resume point
 * follows a row whose last document was carried to the next row.
 *
 * usage: mpi_loader_resume "<key=value ...>" [synthetic|llmc|megatron|gpt|npy]
 * (llmc, megatron, gpt, npy: rank 0 writes a small dataset of that kind first;
 * gpt reads the Megatron files in Megatron's GPTDataset order).
 */
#include "internal.h"
#include "mpi_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define N_STEPS 12
#define K_RESUME 5
#define N_DOCS 60

static int global_order; /* the source is gpt: (the whole job's sample order) */
static int carried_at_k = -1; /* thd: step K-1's row carried its last document (thd_carried) */

typedef struct {
  void *bytes;
  size_t size;
} blob_t;

static uint64_t view_hash(const cpdl_batch_t *b) {
  uint64_t h = CPDL__FNV1A_BASIS;
  for (int f = 0; f < b->n_fields; f++) {
    h = cpdl__fnv1a(h, b->fields[f].name, strlen(b->fields[f].name));
    h = cpdl__fnv1a(h, b->fields[f].data, b->fields[f].nbytes);
  }
  return h;
}

static blob_t save(cpdl_loader_t *loader) {
  blob_t s = {NULL, 0};
  size_t need = 0;
  CHECK(cpdl_loader_state_size(loader, &need) == 0 && need > 80, "state size %zu", need);
  s.bytes = malloc(need);
  int rc = cpdl_loader_state_save(loader, s.bytes, need, &s.size);
  CHECK(rc == 0 && s.size <= need, "save: %s: %s", cpdl_err_name(rc), cpdl_last_error());
  /* Too small a buffer: refused on every rank, the size needed reported (a global
   * order's state holds no per-replica cursors: less than state_size's bound). */
  size_t used = 0;
  rc = cpdl_loader_state_save(loader, s.bytes, 8, &used);
  CHECK(rc == CPDL_EOVERFLOW && (global_order ? used >= s.size : used == s.size),
        "save into 8 bytes: %s, used %zu (the state has %zu)", cpdl_err_name(rc), used, s.size);
  return s;
}

static uint64_t word(const blob_t *s, size_t i) {
  uint64_t w;
  memcpy(&w, (const char *)s->bytes + 8 * i, 8);
  return w;
}

/* Refused with `code` by restore on every rank, then restorable again. */
static void expect_refused(cpdl_loader_t *loader, const void *bytes, size_t size, int code,
                           const char *what, const char *needle) {
  int rc = cpdl_loader_state_restore(loader, bytes, size);
  CHECK(rc == code, "%s: restore returned %s, expected %s (%s)", what, cpdl_err_name(rc),
        cpdl_err_name(code), cpdl_last_error());
  CHECK(strstr(cpdl_last_error(), needle) != NULL, "%s: message '%s' lacks '%s'", what,
        cpdl_last_error(), needle);
}

/* A copy of s with word i set to v, checksum recomputed (or not). */
static blob_t patched(const blob_t *s, size_t i, uint64_t v, int fix_sum) {
  blob_t p = {malloc(s->size), s->size};
  memcpy(p.bytes, s->bytes, s->size);
  memcpy((char *)p.bytes + 8 * i, &v, 8);
  if (fix_sum) {
    uint64_t sum = cpdl__fnv1a(CPDL__FNV1A_BASIS, p.bytes, p.size - 8);
    memcpy((char *)p.bytes + p.size - 8, &sum, 8);
  }
  return p;
}

static void check_refusals(cpdl_loader_t *loader, const blob_t *s) {
  blob_t v1 = patched(s, 1, 1, 0);
  expect_refused(loader, v1.bytes, v1.size, CPDL_ESTATE, "version 1", "version 1");
  blob_t magic = patched(s, 0, 42, 1);
  expect_refused(loader, magic.bytes, magic.size, CPDL_ESTATE, "magic", "not a cpdl resume state");
  expect_refused(loader, s->bytes, s->size - 8, CPDL_ESTATE, "truncated", "bytes");
  blob_t flipped = patched(s, 3, word(s, 3) + 1, 0);
  expect_refused(loader, flipped.bytes, flipped.size, CPDL_ESTATE, "checksum", "checksum");
  /* The state's step moved without its cursors (checksum valid): the words
   * disagree, which would shift step numbers; refused. (A global order's state
   * has no per-replica cursors to disagree with: step and samples consumed.) */
  blob_t shifted = patched(s, 3, word(s, 3) + 1, 1);
  if (!global_order)
    expect_refused(loader, shifted.bytes, shifted.size, CPDL_ESTATE, "step word",
                   "cursor is at step");
  free(v1.bytes);
  free(magic.bytes);
  free(flipped.bytes);
  free(shifted.bytes);
}

/* mode thd: whether this step's row ended with a document carried to the next row (the
 * row's tail pads its last document beyond the next multiple of 2*cp; the loop leaves a
 * tail only when the next document did not fit). -1: not a thd batch. */
static int thd_carried(const cpdl_batch_t *b, int cp) {
  const cpdl_view_field_t *cu = NULL, *cup = NULL;
  for (int f = 0; f < b->n_fields; f++) {
    if (strcmp(b->fields[f].name, "cu_seqlens") == 0)
      cu = &b->fields[f];
    if (strcmp(b->fields[f].name, "cu_seqlens_padded") == 0)
      cup = &b->fields[f];
  }
  if (!cu || !cup || cu->shape[0] < 2)
    return -1;
  const int32_t *real = cu->data, *padded = cup->data;
  int64_t n = cu->shape[0] - 1, m = 2 * (int64_t)cp;
  int64_t len = real[n] - real[n - 1], exact = (len + m - 1) / m * m;
  return padded[n] - padded[n - 1] > exact;
}

/* Deliver steps until EOF; hashes[step] = hash of the rank's view. */
static void run(const cpdl_config_t *cfg, const blob_t *restore, blob_t *at_k, blob_t *held_k,
                uint64_t *hashes, int *first_step) {
  cpdl_loader_t *loader = NULL;
  int rc = cpdl_loader_open(MPI_COMM_WORLD, cfg, &loader);
  CHECK(rc == 0, "open: %s", cpdl_last_error());
  if (rc)
    return;
  if (restore) {
    check_refusals(loader, restore);
    rc = cpdl_loader_state_restore(loader, restore->bytes, restore->size);
    CHECK(rc == 0, "restore: %s", cpdl_last_error());
  }
  *first_step = -1;
  cpdl_batch_t b;
  while ((rc = cpdl_loader_next(loader, &b)) == 0) {
    if (*first_step < 0)
      *first_step = (int)b.step;
    if (b.step < N_STEPS)
      hashes[b.step] = view_hash(&b);
    uint64_t step = b.step;
    if (step == K_RESUME - 1)
      carried_at_k = thd_carried(&b, cfg->cp);
    if (held_k && step == K_RESUME - 1)
      *held_k = save(loader); /* collective, while every rank holds step K-1 */
    CHECK(cpdl_batch_release(loader, &b) == 0, "release: %s", cpdl_last_error());
    if (at_k && step == K_RESUME - 1)
      *at_k = save(loader);
  }
  CHECK(rc == CPDL_EEOF, "run ended with %s: %s", cpdl_err_name(rc), cpdl_last_error());
  CHECK(cpdl_loader_close(loader) == 0, "close: %s", cpdl_last_error());
}

/* ---- datasets (rank 0 writes, everyone reads) ------------------------------ */

static uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

static int doc_len(int d) { return 5 + (int)(mix((uint64_t)d) % 90); }
static uint16_t token(int d, int i) { return (uint16_t)(1 + mix((uint64_t)d * 1000 + (uint64_t)i) % 30000); }

static void write_llmc(const char *path) {
  FILE *f = fopen(path, "wb");
  int32_t header[256] = {20240520, 1, 0};
  int64_t n = 0;
  for (int d = 0; d < N_DOCS; d++)
    n += 1 + doc_len(d);
  header[2] = (int32_t)n;
  fwrite(header, sizeof header, 1, f);
  for (int d = 0; d < N_DOCS; d++) {
    uint16_t eot = 50256;
    fwrite(&eot, 2, 1, f);
    for (int i = 0; i < doc_len(d); i++) {
      uint16_t t = token(d, i);
      fwrite(&t, 2, 1, f);
    }
  }
  fclose(f);
}

static void write_megatron(const char *prefix) {
  char path[1024];
  snprintf(path, sizeof path, "%s.bin", prefix);
  FILE *bin = fopen(path, "wb");
  snprintf(path, sizeof path, "%s.idx", prefix);
  FILE *idx = fopen(path, "wb");
  fwrite("MMIDIDX\0\0", 9, 1, idx);
  uint64_t version = 1, n = N_DOCS, n_doc_idx = N_DOCS + 1;
  uint8_t code = 8; /* uint16 */
  fwrite(&version, 8, 1, idx);
  fwrite(&code, 1, 1, idx);
  fwrite(&n, 8, 1, idx);
  fwrite(&n_doc_idx, 8, 1, idx);
  for (int d = 0; d < N_DOCS; d++) {
    int32_t len = doc_len(d);
    fwrite(&len, 4, 1, idx);
  }
  int64_t pointer = 0;
  for (int d = 0; d < N_DOCS; d++) {
    fwrite(&pointer, 8, 1, idx);
    pointer += 2 * doc_len(d);
  }
  for (int64_t d = 0; d <= N_DOCS; d++)
    fwrite(&d, 8, 1, idx);
  for (int d = 0; d < N_DOCS; d++)
    for (int i = 0; i < doc_len(d); i++) {
      uint16_t t = token(d, i);
      fwrite(&t, 2, 1, bin);
    }
  fclose(bin);
  fclose(idx);
}

static void write_npy(const char *root, int n_batches, int batch, int64_t seq_len) {
  int64_t shape[2] = {batch, seq_len};
  int64_t *ids = malloc((size_t)(batch * seq_len) * sizeof *ids);
  for (int k = 0; k < n_batches; k++) {
    char path[1024];
    for (int64_t i = 0; i < batch * seq_len; i++)
      ids[i] = (int64_t)(mix((uint64_t)k * 100003 + (uint64_t)i) % 30000);
    snprintf(path, sizeof path, "%s/step%04d/input_ids.npy", root, k);
    cpdl__mkdirs(root);
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/step%04d", root, k);
    cpdl__mkdirs(dir);
    cpdl__npy_write(path, CPDL_DTYPE_INT64, 2, shape, ids);
    for (int64_t i = 0; i < batch * seq_len; i++)
      ids[i] = (ids[i] * 7 + 3) % 30000;
    snprintf(path, sizeof path, "%s/step%04d/labels.npy", root, k);
    cpdl__npy_write(path, CPDL_DTYPE_INT64, 2, shape, ids);
  }
  free(ids);
}

/* Set cfg->source to a dataset of `kind` in dir (rank 0 writes it). */
static void make_source(cpdl_config_t *cfg, const char *kind, const char *dir, int dp) {
  char uri[600];
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (strcmp(kind, "llmc") == 0) {
    snprintf(uri, sizeof uri, "llmc:%s/shard.bin", dir);
    if (rank == 0)
      write_llmc(uri + 5);
  } else if (strcmp(kind, "megatron") == 0) {
    snprintf(uri, sizeof uri, "megatron:%s/corpus_text_document", dir);
    if (rank == 0)
      write_megatron(uri + 9);
  } else if (strcmp(kind, "gpt") == 0) {
    /* Megatron's sample order over the whole job: the state is the samples consumed,
     * so replica r must resume at its own rows of the global batch */
    char prefix[512];
    snprintf(prefix, sizeof prefix, "%s/corpus_text_document", dir);
    if (rank == 0)
      write_megatron(prefix);
    snprintf(uri, sizeof uri, "gpt:%s?num_samples=400&split=1", prefix);
    global_order = 1;
  } else if (strcmp(kind, "npy") == 0) {
    snprintf(uri, sizeof uri, "npy:%s/batches", dir);
    if (rank == 0)
      write_npy(uri + 4, N_STEPS * dp, cfg->batch, cfg->seq_len);
  } else {
    return; /* synthetic: as configured */
  }
  MPI_Barrier(MPI_COMM_WORLD);
  CHECK(cpdl_config_set(cfg, "source", uri) == 0, "source: %s", cpdl_last_error());
}

int main(int argc, char **argv) {
  cpdl_test_init(&argc, &argv);
  int size = 1, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  cpdl_config_t cfg;
  cpdl_config_init(&cfg);
  cfg.cp = size;
  cfg.steps = N_STEPS;
  snprintf(cfg.pin, sizeof cfg.pin, "none");
  if (argc > 1 && cpdl_config_parse(&cfg, argv[1]))
    CHECK(0, "config: %s", cpdl_last_error());
  const char *kind = argc > 2 ? argv[2] : "synthetic";
  char dir[256] = "";
  if (rank == 0 && strcmp(kind, "synthetic") != 0) {
    snprintf(dir, sizeof dir, "/tmp/cpdl-resume-test-XXXXXX");
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
  }
  MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
  make_source(&cfg, kind, dir, size / (cfg.cp * cfg.tp));

  uint64_t a[N_STEPS] = {0}, b[N_STEPS] = {0};
  blob_t at_k = {NULL, 0}, held_k = {NULL, 0};
  int first_a = -1, first_b = -1;
  run(&cfg, NULL, &at_k, &held_k, a, &first_a);
  CHECK(at_k.size >= 80 && word(&at_k, 3) == K_RESUME, "saved state is at step %llu, expected %d",
        at_k.size >= 80 ? (unsigned long long)word(&at_k, 3) : 0ull, K_RESUME);
  CHECK(held_k.size == at_k.size && memcmp(held_k.bytes, at_k.bytes, at_k.size) == 0,
        "the state saved while holding step %d differs from the one saved after releasing it",
        K_RESUME - 1);
  /* Every rank restores rank 0's bytes: the state of the whole job. */
  uint64_t n = at_k.size;
  MPI_Bcast(&n, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  blob_t from0 = {malloc(n), n};
  if (rank == 0)
    memcpy(from0.bytes, at_k.bytes, n);
  MPI_Bcast(from0.bytes, (int)n, MPI_BYTE, 0, MPI_COMM_WORLD);
  CHECK(n == at_k.size && memcmp(from0.bytes, at_k.bytes, n) == 0,
        "rank %d's state differs from rank 0's: a save must be the whole job's", rank);
  /* mode thd: the resume point is deliberate, right after a row that carried a document
   * to the next (on some replica), so the resumed row must start with that document. */
  int carried = carried_at_k;
  MPI_Allreduce(MPI_IN_PLACE, &carried, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  CHECK(carried != 0, "mode thd: no replica's step %d carried a document to the next row; "
        "change the data so that the resume point follows a carried document", K_RESUME - 1);
  run(&cfg, &from0, NULL, NULL, b, &first_b);
  CHECK(first_a == 0 && first_b == K_RESUME, "runs started at steps %d and %d", first_a, first_b);
  for (int s = K_RESUME; s < N_STEPS; s++)
    CHECK(a[s] == b[s] && a[s] != 0, "rank %d: step %d differs after resume", rank, s);
  free(at_k.bytes);
  free(held_k.bytes);
  free(from0.bytes);
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0 && dir[0]) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "rm %s", dir);
  }
  int code = cpdl_test_finish();
  MPI_Finalize();
  return code;
}
