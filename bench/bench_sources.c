/* bench_sources.c — tokens/s of reading every sample through the llmc and
 * megatron plugins (zero-copy pointers into their mappings, each token summed
 * so the reads cannot be optimized away) against a raw sum of the same bytes
 * from a plain mmap of the file. A benchmark program, not a test.
 *   bench_sources [--mb 200] [--dir /tmp/cpdl-bench] [--reps 3]
 * Writes an llm.c shard and a Megatron .idx/.bin pair holding the same
 * uint16 tokens (documents of random length, mean ~1000), warms the page
 * cache, then reports the best of --reps runs as a table and JSON lines.
 */
#include "cpdl/source.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t sum_u16(const uint16_t *t, int64_t n) {
  uint64_t s = 0;
  for (int64_t k = 0; k < n; k++)
    s += t[k];
  return s;
}

/* Write the shard and the Megatron pair; documents start with EOT 50256. */
static int write_files(const char *dir, int64_t n_tokens, int64_t *n_docs_out) {
  char path[512];
  uint16_t *t = malloc((size_t)n_tokens * 2);
  int64_t cap = n_tokens / 16 + 16, n_docs = 0;
  int32_t *lengths = malloc((size_t)cap * 4);
  int64_t *pointers = malloc((size_t)cap * 8);
  if (!t || !lengths || !pointers)
    return -1;
  uint64_t x = 0x9e3779b97f4a7c15ull;
  int64_t pos = 0;
  while (pos < n_tokens) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    int64_t len = 16 + (int64_t)(x % 1984); /* mean ~1000 */
    if (len > n_tokens - pos)
      len = n_tokens - pos;
    t[pos] = 50256;
    for (int64_t k = 1; k < len; k++) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      t[pos + k] = (uint16_t)(x % 50256);
    }
    lengths[n_docs] = (int32_t)len;
    pointers[n_docs] = pos * 2;
    n_docs++;
    pos += len;
  }
  snprintf(path, sizeof path, "%s/shard.bin", dir);
  FILE *f = fopen(path, "wb");
  int32_t header[256] = {20240520, 1, (int32_t)n_tokens};
  if (!f || fwrite(header, 4, 256, f) != 256 || fwrite(t, 2, (size_t)n_tokens, f) != (size_t)n_tokens)
    return -1;
  fclose(f);
  snprintf(path, sizeof path, "%s/mm.bin", dir);
  f = fopen(path, "wb");
  if (!f || fwrite(t, 2, (size_t)n_tokens, f) != (size_t)n_tokens)
    return -1;
  fclose(f);
  snprintf(path, sizeof path, "%s/mm.idx", dir);
  f = fopen(path, "wb");
  uint64_t version = 1, n = (uint64_t)n_docs, d = (uint64_t)n_docs + 1;
  uint8_t code = 8;
  if (!f)
    return -1;
  fwrite("MMIDIDX\0\0", 1, 9, f);
  fwrite(&version, 8, 1, f);
  fwrite(&code, 1, 1, f);
  fwrite(&n, 8, 1, f);
  fwrite(&d, 8, 1, f);
  fwrite(lengths, 4, (size_t)n_docs, f);
  fwrite(pointers, 8, (size_t)n_docs, f);
  for (int64_t j = 0; j <= n_docs; j++)
    fwrite(&j, 8, 1, f);
  fclose(f);
  free(t);
  free(lengths);
  free(pointers);
  *n_docs_out = n_docs;
  return 0;
}

/* Raw: one mmap of the .bin, summed in one pass. */
static double run_raw(const char *path, uint64_t offset, uint64_t *sum, int64_t *tokens) {
  int fd = open(path, O_RDONLY);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0)
    return -1;
  void *base = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
  close(fd);
  if (base == MAP_FAILED)
    return -1;
  double t0 = now();
  int64_t n = (int64_t)(((uint64_t)st.st_size - offset) / 2);
  *sum = sum_u16((const uint16_t *)((const uint8_t *)base + offset), n);
  double dt = now() - t0;
  *tokens = n;
  munmap(base, (size_t)st.st_size);
  return dt;
}

/* Through the plugin: open (index build timed separately), read every sample. */
static double run_source(const char *uri, uint64_t *sum, int64_t *tokens, double *open_s) {
  cpdl_source_t *src;
  double t0 = now();
  if (cpdl_source_open(uri, &src) != 0) {
    fprintf(stderr, "bench_sources: %s\n", cpdl_last_error());
    return -1;
  }
  *open_s = now() - t0;
  int64_t count = cpdl_source_count(src), total = 0;
  uint64_t s = 0;
  t0 = now();
  for (int64_t i = 0; i < count; i++) {
    const void *t;
    int64_t n;
    int tb;
    if (cpdl_source_read(src, i, &t, &n, &tb) != 0 || tb != 2)
      return -1;
    s += sum_u16(t, n);
    total += n;
  }
  double dt = now() - t0;
  cpdl_source_close(src);
  *sum = s;
  *tokens = total;
  return dt;
}

int main(int argc, char **argv) {
  int64_t mb = 200;
  int reps = 3;
  const char *dir = "/tmp/cpdl-bench";
  for (int a = 1; a + 1 < argc; a += 2) {
    if (strcmp(argv[a], "--mb") == 0)
      mb = strtoll(argv[a + 1], NULL, 10);
    else if (strcmp(argv[a], "--dir") == 0)
      dir = argv[a + 1];
    else if (strcmp(argv[a], "--reps") == 0)
      reps = atoi(argv[a + 1]);
  }
  mkdir(dir, 0700);
  int64_t n_tokens = mb * 1000 * 1000 / 2, n_docs;
  if (n_tokens >= INT32_MAX) {
    fprintf(stderr, "bench_sources: --mb too large for one llm.c shard\n");
    return 2;
  }
  double tw = now();
  if (write_files(dir, n_tokens, &n_docs) != 0) {
    fprintf(stderr, "bench_sources: cannot write test files in %s\n", dir);
    return 1;
  }
  fprintf(stderr, "wrote %" PRId64 " tokens, %" PRId64 " documents (%.1f s)\n", n_tokens, n_docs,
          now() - tw);

  char shard[512], mmbin[512], llmc_uri[600], mm_uri[600];
  snprintf(shard, sizeof shard, "%s/shard.bin", dir);
  snprintf(mmbin, sizeof mmbin, "%s/mm.bin", dir);
  snprintf(llmc_uri, sizeof llmc_uri, "llmc:%s", shard);
  snprintf(mm_uri, sizeof mm_uri, "megatron:%s/mm", dir);

  struct {
    const char *name;
    double best, open_s;
    int64_t tokens;
    uint64_t sum;
  } rows[4] = {{"raw llmc .bin", 1e30, 0, 0, 0}, {"llmc plugin", 1e30, 0, 0, 0},
               {"raw megatron .bin", 1e30, 0, 0, 0}, {"megatron plugin", 1e30, 0, 0, 0}};
  uint64_t s;
  int64_t n;
  run_raw(shard, 1024, &s, &n); /* warm the page cache */
  run_raw(mmbin, 0, &s, &n);
  for (int r = 0; r < reps; r++) {
    double dt, open_s = 0;
    if ((dt = run_raw(shard, 1024, &s, &n)) < 0)
      return 1;
    if (dt < rows[0].best)
      rows[0].best = dt, rows[0].sum = s, rows[0].tokens = n;
    if ((dt = run_source(llmc_uri, &s, &n, &open_s)) < 0)
      return 1;
    if (dt < rows[1].best)
      rows[1].best = dt, rows[1].sum = s, rows[1].tokens = n, rows[1].open_s = open_s;
    if ((dt = run_raw(mmbin, 0, &s, &n)) < 0)
      return 1;
    if (dt < rows[2].best)
      rows[2].best = dt, rows[2].sum = s, rows[2].tokens = n;
    if ((dt = run_source(mm_uri, &s, &n, &open_s)) < 0)
      return 1;
    if (dt < rows[3].best)
      rows[3].best = dt, rows[3].sum = s, rows[3].tokens = n, rows[3].open_s = open_s;
  }
  printf("%-20s %12s %10s %12s %8s %10s\n", "reader", "tokens", "seconds", "Mtok/s",
         "vs raw", "open s");
  for (int r = 0; r < 4; r++) {
    double raw = rows[r & ~1].best;
    double rate = (double)rows[r].tokens / rows[r].best / 1e6;
    printf("%-20s %12" PRId64 " %10.4f %12.1f %8.3f %10.4f%s\n", rows[r].name, rows[r].tokens,
           rows[r].best, rate, raw / rows[r].best, rows[r].open_s,
           rows[r].sum == rows[r & ~1].sum && rows[r].tokens == rows[r & ~1].tokens
               ? "" : "  SUM MISMATCH");
  }
  for (int r = 0; r < 4; r++)
    printf("{\"bench\": \"sources\", \"reader\": \"%s\", \"tokens\": %" PRId64
           ", \"documents\": %" PRId64 ", \"seconds\": %.6f, \"mtok_per_s\": %.2f, "
           "\"ratio_vs_raw\": %.4f, \"open_seconds\": %.6f, \"sum\": %" PRIu64 "}\n",
           rows[r].name, rows[r].tokens, n_docs, rows[r].best,
           (double)rows[r].tokens / rows[r].best / 1e6, rows[r & ~1].best / rows[r].best,
           rows[r].open_s, rows[r].sum);
  return 0;
}
