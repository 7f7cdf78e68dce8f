/* source_test_util.h — helpers shared by the data-source unit tests (llmc, megatron, npy, source):
 * scratch directories, checked file writing, and "open succeeds" / "open fails with this code and
 * these message pieces" checks. Header-only (static inline): each test is its own executable. */
#ifndef CPDL_SOURCE_TEST_UTIL_H
#define CPDL_SOURCE_TEST_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Fail unless the last error message holds needle; prints both on failure. */
static inline void assert_msg_contains(const char *needle) {
  const char *msg = cpdl_last_error();
  if (!strstr(msg, needle)) {
    print_error("message \"%s\" lacks \"%s\"\n", msg, needle);
    fail();
  }
}

/* mkdtemp a fresh /tmp/cpdl-test-<tag>-XXXXXX into dir; 0 or -1, as a cmocka fixture returns. */
static inline int tmpdir_create(char *dir, size_t dir_size, const char *tag) {
  snprintf(dir, dir_size, "/tmp/cpdl-test-%s-XXXXXX", tag);
  return mkdtemp(dir) ? 0 : -1;
}

/* Remove dir and everything under it; 0 or -1. */
static inline int tmpdir_remove(const char *dir) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  return system(cmd) == 0 ? 0 : -1;
}

/* mkdir -p: every missing directory of path; ones that already exist are fine. */
static inline void mkdir_p(const char *path) {
  char buf[512];
  assert_true(strlen(path) < sizeof buf);
  strcpy(buf, path);
  for (char *slash = buf + 1; (slash = strchr(slash, '/')) != NULL; slash++) {
    *slash = '\0';
    if (mkdir(buf, 0700) != 0 && errno != EEXIST)
      fail_msg("mkdir %s: %s", buf, strerror(errno));
    *slash = '/';
  }
  if (mkdir(buf, 0700) != 0 && errno != EEXIST)
    fail_msg("mkdir %s: %s", buf, strerror(errno));
}

/* fopen that fails the test (naming the path) instead of returning NULL. */
static inline FILE *open_file(const char *path, const char *mode) {
  FILE *f = fopen(path, mode);
  if (!f)
    print_error("fopen %s (%s): %s\n", path, mode, strerror(errno));
  assert_non_null(f);
  return f;
}

/* fwrite all n bytes or fail; n == 0 writes nothing. */
static inline void write_bytes(FILE *f, const void *p, size_t n) {
  if (n)
    assert_int_equal(fwrite(p, 1, n, f), n);
}

/* Write (mode "wb") or append ("ab") n bytes to path. */
static inline void write_file(const char *path, const char *mode, const void *data, size_t n) {
  FILE *f = open_file(path, mode);
  write_bytes(f, data, n);
  assert_int_equal(fclose(f), 0);
}

/* Open uri, which must succeed; prints the library's message when it does not. */
static inline cpdl__source_t *open_ok(const char *uri) {
  cpdl__source_t *src = NULL;
  int rc = cpdl__source_open(uri, NULL, &src);
  if (rc)
    print_error("open %s: %s\n", uri, cpdl_last_error());
  assert_int_equal(rc, 0);
  assert_non_null(src);
  return src;
}

/* Open uri, which must fail with code, leave no source, and give a message holding n1 and, when
 * not NULL, n2 and n3. */
static inline void expect_open_error(const char *uri, int code, const char *n1, const char *n2,
                                     const char *n3) {
  cpdl__source_t *src = NULL;
  int rc = cpdl__source_open(uri, NULL, &src);
  if (rc != code)
    print_error("%s: rc %d (%s), want %d\n", uri, rc, cpdl_last_error(), code);
  assert_int_equal(rc, code);
  assert_null(src);
  assert_msg_contains(n1);
  if (n2)
    assert_msg_contains(n2);
  if (n3)
    assert_msg_contains(n3);
}

#endif
