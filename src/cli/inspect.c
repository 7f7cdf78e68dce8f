/* inspect.c — `cpdl inspect URI`: a data source's summary (samples,
 * documents, tokens, token width, sample-length statistics and a log2
 * histogram; or, for pre-collated sources, steps and fields), as text or
 * one JSON object. Uses only the public cpdl_source_* API, so it works
 * against the installed libcpdl.
 */
#include "cli.h"
#include "cpdl/source.h"

#include <inttypes.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HIST_BUCKETS 40 /* bucket b: lengths in [2^(b-1), 2^b), bucket 0: length 0 */

static void usage(FILE *f) {
  fprintf(f,
          "usage: cpdl inspect URI [--json] [--limit N] [--show K]\n"
          "  URI        scheme:path?key=value (synthetic:, llmc:, megatron:, npy:, ...)\n"
          "  --json     print one JSON object instead of text\n"
          "  --limit N  scan only the first N samples (default: all)\n"
          "  --show K   print the first 16 tokens of the first K samples\n");
}

static void json_string(const char *s) {
  putchar('"');
  for (; *s; s++) {
    if (*s == '"' || *s == '\\')
      printf("\\%c", *s);
    else if ((unsigned char)*s < 0x20)
      printf("\\u%04x", *s);
    else
      putchar(*s);
  }
  putchar('"');
}

static uint64_t token_at(const void *tokens, int token_bytes, int64_t k) {
  const uint8_t *p = (const uint8_t *)tokens + k * token_bytes;
  uint64_t v = 0;
  memcpy(&v, p, (size_t)token_bytes); /* little-endian host */
  return v;
}

static int inspect_batches(cpdl_source_t *src, const char *uri, int json) {
  int64_t steps = cpdl_source_batch_count(src);
  cpdl_tensor_t fields[CPDL_MAX_FIELDS];
  int n = 0;
  int rc = cpdl_source_read_batch(src, 0, fields, &n);
  if (rc) {
    fprintf(stderr, "cpdl inspect: %s\n", cpdl_last_error());
    return 1;
  }
  if (json) {
    printf("{\"uri\": ");
    json_string(uri);
    printf(", \"plugin\": ");
    json_string(cpdl_source_name(src));
    printf(", \"steps\": %" PRId64 ", \"fields\": [", steps);
    for (int f = 0; f < n; f++) {
      printf("%s{\"name\": ", f ? ", " : "");
      json_string(fields[f].name);
      printf(", \"dtype\": \"%s\", \"shape\": [", cpdl_dtype_name(fields[f].dtype));
      for (int d = 0; d < fields[f].ndim; d++)
        printf("%s%" PRId64, d ? ", " : "", fields[f].shape[d]);
      printf("]}");
    }
    printf("]}\n");
    return 0;
  }
  printf("source      %s\nplugin      %s (pre-collated batches)\nsteps       %" PRId64
         "\nfields      %d\n", uri, cpdl_source_name(src), steps, n);
  for (int f = 0; f < n; f++) {
    printf("  %-24s %-9s [", fields[f].name, cpdl_dtype_name(fields[f].dtype));
    for (int d = 0; d < fields[f].ndim; d++)
      printf("%s%" PRId64, d ? ", " : "", fields[f].shape[d]);
    printf("]\n");
  }
  return 0;
}

/* A non-negative decimal count, nothing else. */
static int parse_count(const char *option, const char *text, int64_t *out) {
  char *end = NULL;
  errno = 0;
  long long v = text ? strtoll(text, &end, 10) : 0;
  if (!text || !*text || *end || errno || v < 0 || !(*text >= '0' && *text <= '9')) {
    fprintf(stderr, "cpdl inspect: %s needs a non-negative integer, got '%s'\n", option,
            text ? text : "");
    return -1;
  }
  *out = v;
  return 0;
}

int cpdl_cli_inspect(int argc, char **argv) {
  const char *uri = NULL;
  int json = 0;
  int64_t limit = -1, show = 0;
  for (int a = 1; a < argc; a++) {
    if (strcmp(argv[a], "--json") == 0)
      json = 1;
    else if (strcmp(argv[a], "--limit") == 0 || strcmp(argv[a], "--show") == 0) {
      int64_t *dst = argv[a][2] == 'l' ? &limit : &show;
      if (a + 1 >= argc || parse_count(argv[a], argv[a + 1], dst)) {
        usage(stderr);
        return 2;
      }
      a++;
    }
    else if (strcmp(argv[a], "--help") == 0 || strcmp(argv[a], "-h") == 0) {
      usage(stdout);
      return 0;
    } else if (argv[a][0] == '-' || uri) {
      fprintf(stderr, "cpdl inspect: unexpected argument '%s'\n", argv[a]);
      usage(stderr);
      return 2;
    } else
      uri = argv[a];
  }
  if (!uri) {
    usage(stderr);
    return 2;
  }
  cpdl_source_t *src = NULL;
  int rc = cpdl_source_open(uri, &src);
  if (rc) {
    fprintf(stderr, "cpdl inspect: %s (%s)\n", cpdl_last_error(), cpdl_err_name(rc));
    return 1;
  }
  if (cpdl_source_batch_count(src) > 0) {
    int status = inspect_batches(src, uri, json);
    cpdl_source_close(src);
    return status;
  }

  int64_t count = cpdl_source_count(src);
  int64_t scan = limit >= 0 && limit < count ? limit : count;
  int64_t tokens = 0, min_len = INT64_MAX, max_len = 0;
  int64_t hist[HIST_BUCKETS] = {0};
  int token_bytes = 0;
  for (int64_t i = 0; i < scan; i++) {
    const void *t;
    int64_t n;
    int tb;
    if ((rc = cpdl_source_read(src, i, &t, &n, &tb))) {
      fprintf(stderr, "cpdl inspect: %s (%s)\n", cpdl_last_error(), cpdl_err_name(rc));
      cpdl_source_close(src);
      return 1;
    }
    token_bytes = tb;
    tokens += n;
    min_len = n < min_len ? n : min_len;
    max_len = n > max_len ? n : max_len;
    int b = 0;
    while (b + 1 < HIST_BUCKETS && (n >> b) != 0)
      b++; /* n in [2^(b-1), 2^b) */
    hist[b]++;
    if (i < show && !json) {
      printf("sample %" PRId64 " (%" PRId64 " tokens):", i, n);
      for (int64_t k = 0; k < n && k < 16; k++)
        printf(" %" PRIu64, token_at(t, tb, k));
      printf("%s\n", n > 16 ? " ..." : "");
    }
  }
  if (scan == 0)
    min_len = 0;
  double mean = scan ? (double)tokens / (double)scan : 0.0;
  int64_t peak = 1;
  for (int b = 0; b < HIST_BUCKETS; b++)
    peak = hist[b] > peak ? hist[b] : peak;

  if (json) {
    printf("{\"uri\": ");
    json_string(uri);
    printf(", \"plugin\": ");
    json_string(cpdl_source_name(src));
    printf(", \"plugin_path\": ");
    json_string(cpdl_source_plugin_path(src));
    printf(", \"samples\": %" PRId64 ", \"documents\": %" PRId64 ", \"scanned\": %" PRId64
           ", \"tokens\": %" PRId64 ", \"token_bytes\": %d, \"eot\": %" PRId64
           ", \"length\": {\"min\": %" PRId64 ", \"mean\": %.3f, \"max\": %" PRId64
           "}, \"histogram\": [",
           count, cpdl_source_document_count(src), scan, tokens, token_bytes,
           cpdl_source_eot(src), min_len, mean, max_len);
    int first = 1;
    for (int b = 0; b < HIST_BUCKETS; b++) {
      if (!hist[b])
        continue;
      int64_t lo = b ? INT64_C(1) << (b - 1) : 0, hi = b ? INT64_C(1) << b : 1;
      printf("%s{\"lo\": %" PRId64 ", \"hi\": %" PRId64 ", \"count\": %" PRId64 "}",
             first ? "" : ", ", lo, hi, hist[b]);
      first = 0;
    }
    printf("]}\n");
  } else {
    printf("source      %s\nplugin      %s: %s\n            %s\nsamples     %" PRId64
           "\ndocuments   %" PRId64 "\n",
           uri, cpdl_source_name(src), cpdl_source_description(src),
           cpdl_source_plugin_path(src), count, cpdl_source_document_count(src));
    if (scan < count)
      printf("scanned     %" PRId64 " samples (--limit)\n", scan);
    printf("tokens      %" PRId64 "\ntoken bytes %d (%s)\n", tokens, token_bytes,
           token_bytes == 2 ? "uint16" : token_bytes == 4 ? "uint32" : token_bytes == 8 ? "int64"
                                                                                       : "-");
    if (cpdl_source_eot(src) >= 0)
      printf("eot         %" PRId64 "\n", cpdl_source_eot(src));
    else
      printf("eot         none\n");
    printf("length      min %" PRId64 "  mean %.1f  max %" PRId64 " tokens per sample\n", min_len,
           mean, max_len);
    printf("histogram   (tokens per sample, log2 buckets)\n");
    for (int b = 0; b < HIST_BUCKETS; b++) {
      if (!hist[b])
        continue;
      int64_t lo = b ? INT64_C(1) << (b - 1) : 0, hi = b ? INT64_C(1) << b : 1;
      int bar = (int)(40 * hist[b] / peak);
      printf("  [%8" PRId64 ", %8" PRId64 ") %10" PRId64 " %.*s\n", lo, hi, hist[b],
             bar ? bar : 1, "########################################");
    }
  }
  cpdl_source_close(src);
  return 0;
}
