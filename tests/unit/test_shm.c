/* test_shm.c — shared-memory segments: creation (O_EXCL, 0600, random name,
 * space reserved), attachment checks (owner, mode, size), read-only data
 * mapping, sweep of leftovers, a full /dev/shm, and flat resources over many
 * cycles (docs/reliability.md R1, R2, R4, R5, R11, R15).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

static size_t page(void) { return (size_t)sysconf(_SC_PAGESIZE); }

static bool shm_exists(const char *name) {
  char path[256];
  snprintf(path, sizeof path, "/dev/shm%s", name);
  return access(path, F_OK) == 0;
}

/* Entries of /dev/shm created under this process's pid. */
static int count_own_segments(void) {
  char prefix[64];
  snprintf(prefix, sizeof prefix, "cpdl-%u-%ld-", (unsigned)geteuid(), (long)getpid());
  DIR *dir = opendir("/dev/shm");
  assert_non_null(dir);
  int n = 0;
  struct dirent *ent;
  while ((ent = readdir(dir)) != NULL)
    n += strncmp(ent->d_name, prefix, strlen(prefix)) == 0;
  closedir(dir);
  return n;
}

static int count_fds(void) {
  DIR *dir = opendir("/proc/self/fd");
  assert_non_null(dir);
  int n = 0;
  while (readdir(dir) != NULL)
    n++;
  closedir(dir);
  return n;
}

static int count_maps(void) {
  FILE *f = fopen("/proc/self/maps", "r");
  assert_non_null(f);
  int n = 0, c;
  while ((c = fgetc(f)) != EOF)
    n += c == '\n';
  fclose(f);
  return n;
}

/* A name of our own shape that create could pick, made by hand (this
 * process's PID namespace and boot). */
static void make_name(char *buf, size_t size, unsigned uid, long pid, const char *tail) {
  char identity[48];
  cpdl__shm_identity(identity, sizeof identity);
  snprintf(buf, size, "/cpdl-%u-%ld-%s-%s", uid, pid, identity, tail);
}

static void test_create_attach_unlink(void **state) {
  (void)state;
  mode_t old_umask = umask(0); /* a permissive umask must not widen the mode */
  cpdl__shm_t shm, peer;
  size_t size = 3 * page();
  assert_int_equal(cpdl__shm_create(size, &shm), 0);
  umask(old_umask);

  char prefix[64];
  snprintf(prefix, sizeof prefix, "/cpdl-%u-%ld-", (unsigned)geteuid(), (long)getpid());
  assert_int_equal(strncmp(shm.name, prefix, strlen(prefix)), 0);
  char identity[48];
  cpdl__shm_identity(identity, sizeof identity);
  assert_int_equal(strncmp(shm.name + strlen(prefix), identity, strlen(identity)), 0);
  /* then 16 hex of randomness */
  assert_int_equal(strlen(shm.name), strlen(prefix) + strlen(identity) + 1 + 16);
  assert_true(shm.owner);
  assert_true(shm_exists(shm.name));

  struct stat st;
  assert_int_equal(fstat(shm.fd, &st), 0);
  assert_int_equal(st.st_mode & 07777, 0600);
  assert_int_equal((size_t)st.st_size, size);
  /* Space is reserved, not just a sparse file (R1/R2). */
  assert_true((size_t)st.st_blocks * 512 >= size);

  memset(shm.base, 0xab, size);
  assert_int_equal(cpdl__shm_attach(shm.name, size, page(), false, &peer), 0);
  assert_false(peer.owner);
  assert_int_equal(((unsigned char *)peer.base)[size - 1], 0xab);
  ((unsigned char *)peer.base)[5] = 7;
  assert_int_equal(((unsigned char *)shm.base)[5], 7);

  /* Two creates never share a name. */
  cpdl__shm_t other;
  assert_int_equal(cpdl__shm_create(page(), &other), 0);
  assert_string_not_equal(other.name, shm.name);
  cpdl__shm_close(&other);
  assert_false(shm_exists(other.name)); /* the owner's close unlinks */

  assert_int_equal(cpdl__shm_unlink(&shm), 0);
  assert_false(shm_exists(shm.name));
  assert_int_equal(cpdl__shm_unlink(&peer), 0); /* ENOENT: already gone is fine */
  /* Mappings outlive the name. */
  assert_int_equal(((unsigned char *)peer.base)[5], 7);
  cpdl__shm_close(&peer);
  cpdl__shm_close(&shm);
  cpdl__shm_close(&shm); /* idempotent */
  assert_null(shm.base);
  assert_int_equal(shm.fd, -1);
}

static void test_create_never_touches_existing(void **state) {
  (void)state;
  char squat[CPDL__SHM_NAME_MAX];
  make_name(squat, sizeof squat, (unsigned)geteuid(), (long)getpid(), "5a5a5a5a5a5a5a5a");
  int fd = shm_open(squat, O_RDWR | O_CREAT | O_EXCL, 0644);
  assert_true(fd >= 0);
  assert_int_equal(fchmod(fd, 0644), 0);
  assert_int_equal(write(fd, "SQUAT", 5), 5);

  cpdl__shm_test_force_name(squat); /* create's first try is the squatted name */
  cpdl__shm_t shm;
  assert_int_equal(cpdl__shm_create(2 * page(), &shm), 0);
  assert_string_not_equal(shm.name, squat);

  /* The squatter is exactly as it was: mode, size, content (R4). */
  struct stat st;
  assert_int_equal(fstat(fd, &st), 0);
  assert_int_equal(st.st_mode & 07777, 0644);
  assert_int_equal(st.st_size, 5);
  char buf[8] = {0};
  assert_int_equal(pread(fd, buf, 5, 0), 5);
  assert_string_equal(buf, "SQUAT");

  cpdl__shm_close(&shm);
  close(fd);
  shm_unlink(squat);

  /* With a free forced name, create uses it (proves the hook reached O_EXCL). */
  cpdl__shm_test_force_name(squat);
  assert_int_equal(cpdl__shm_create(page(), &shm), 0);
  assert_string_equal(shm.name, squat);
  cpdl__shm_close(&shm);
  assert_false(shm_exists(squat));
}

static void test_attach_refuses(void **state) {
  (void)state;
  cpdl__shm_t shm, peer;
  size_t size = 2 * page();
  assert_int_equal(cpdl__shm_create(size, &shm), 0);

  /* Wrong size: the size the leader sent is the truth. */
  assert_int_equal(cpdl__shm_attach(shm.name, size + page(), page(), true, &peer), CPDL_ESHM);
  assert_non_null(strstr(cpdl_last_error(), "bytes"));
  assert_int_equal(peer.fd, -1);
  assert_null(peer.base);

  /* Group/other permission bits (R11). */
  assert_int_equal(fchmod(shm.fd, 0640), 0);
  assert_int_equal(cpdl__shm_attach(shm.name, size, page(), true, &peer), CPDL_ESHM);
  assert_non_null(strstr(cpdl_last_error(), "0640"));
  assert_int_equal(fchmod(shm.fd, 0604), 0);
  assert_int_equal(cpdl__shm_attach(shm.name, size, page(), true, &peer), CPDL_ESHM);
  assert_int_equal(fchmod(shm.fd, 0600), 0);

  /* Another owner (needs root to give the file away). */
  if (geteuid() == 0) {
    assert_int_equal(fchown(shm.fd, 65534, 65534), 0);
    assert_int_equal(cpdl__shm_attach(shm.name, size, page(), true, &peer), CPDL_ESHM);
    assert_non_null(strstr(cpdl_last_error(), "uid 65534"));
    assert_int_equal(fchown(shm.fd, 0, 0), 0);
  } else {
    print_message("skipping the wrong-owner case: not root\n");
  }

  /* Not a cpdl name, or a name that does not exist. */
  assert_int_equal(cpdl__shm_attach("/etc-passwd", size, page(), true, &peer), CPDL_ESHM);
  assert_int_equal(cpdl__shm_attach("/cpdl-0-1-nonexistent0000000", size, page(), true, &peer),
                   CPDL_ESHM);
  /* The control part must be a page multiple within the segment. */
  assert_int_equal(cpdl__shm_attach(shm.name, size, 100, true, &peer), CPDL_EARG);

  /* After all that, the good attach works. */
  assert_int_equal(cpdl__shm_attach(shm.name, size, page(), true, &peer), 0);
  cpdl__shm_close(&peer);
  cpdl__shm_close(&shm);
}

/* Child: attach with the data part read-only, write the control part (must
 * work), read the data, then write the data (must SIGSEGV). Exit codes tell
 * which step failed. */
static void readonly_child(const char *name, size_t size) {
  signal(SIGSEGV, SIG_DFL); /* cmocka catches it otherwise */
  signal(SIGBUS, SIG_DFL);
  cpdl__shm_t peer;
  if (cpdl__shm_attach(name, size, page(), true, &peer) != 0)
    _exit(10);
  volatile unsigned char *bytes = peer.base;
  bytes[1] = 0x5c;                /* control part: writable */
  if (bytes[page() + 3] != 0x42)  /* data part: readable, same memory */
    _exit(11);
  bytes[page() + 3] = 0;          /* data part: must fault */
  _exit(12);
}

static void test_readonly_data_mapping(void **state) {
  (void)state;
  cpdl__shm_t shm;
  size_t size = 3 * page();
  assert_int_equal(cpdl__shm_create(size, &shm), 0);
  ((unsigned char *)shm.base)[page() + 3] = 0x42;
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0)
    readonly_child(shm.name, size);
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  if (!WIFSIGNALED(status))
    fail_msg("child exited with %d instead of faulting", WEXITSTATUS(status));
  assert_int_equal(WTERMSIG(status), SIGSEGV);
  assert_int_equal(((unsigned char *)shm.base)[1], 0x5c);
  assert_int_equal(((unsigned char *)shm.base)[page() + 3], 0x42);

  /* The two mappings are adjacent and cover exactly the segment. */
  cpdl__shm_t peer;
  assert_int_equal(cpdl__shm_attach(shm.name, size, page(), true, &peer), 0);
  assert_int_equal(peer.ctrl_bytes, page());
  assert_int_equal(((unsigned char *)peer.base)[size - 1], 0);
  assert_int_equal(((unsigned char *)peer.base)[page() + 3], 0x42);
  cpdl__shm_close(&peer);
  cpdl__shm_close(&shm);
}

static pid_t dead_pid(void) {
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0)
    _exit(0);
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  return pid;
}

static void make_segment(const char *name) {
  int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
  assert_true(fd >= 0);
  assert_int_equal(ftruncate(fd, 4096), 0);
  close(fd);
}

static void test_sweep(void **state) {
  (void)state;
  unsigned uid = (unsigned)geteuid();
  pid_t dead = dead_pid();
  char stale[128], live[128], foreign_name[128], chowned[128];
  char other_ns[128], other_boot[128], old_format[128], identity[48];
  make_name(stale, sizeof stale, uid, (long)dead, "deaddeaddeaddead");
  /* R26: the same dead-looking pid from another PID namespace or boot, or a
   * name that does not say: the creator cannot be judged here, so kept */
  cpdl__shm_identity(identity, sizeof identity);
  const char *boot = strchr(identity, '-') + 1;
  snprintf(other_ns, sizeof other_ns, "/cpdl-%u-%ld-1-%s-0123456789abcdef", uid, (long)dead, boot);
  snprintf(other_boot, sizeof other_boot, "/cpdl-%u-%ld-%.*s-%s-0123456789abcdef", uid,
           (long)dead, (int)(boot - 1 - identity), identity,
           strcmp(boot, "000000000001") ? "000000000001" : "000000000002");
  snprintf(old_format, sizeof old_format, "/cpdl-%u-%ld-0123456789abcdef", uid, (long)dead);
  make_segment(other_ns);
  make_segment(other_boot);
  make_segment(old_format);
  make_name(live, sizeof live, uid, (long)getpid(), "a11ea11ea11ea11e");
  make_name(foreign_name, sizeof foreign_name, uid + 1, (long)dead, "f0f0f0f0f0f0f0f0");
  make_name(chowned, sizeof chowned, uid, (long)dead, "c0c0c0c0c0c0c0c0");
  make_segment(stale);
  make_segment(live);
  make_segment(foreign_name);
  make_segment(chowned);
  bool can_chown = geteuid() == 0;
  if (can_chown) {
    char path[160];
    snprintf(path, sizeof path, "/dev/shm%s", chowned);
    assert_int_equal(chown(path, 65534, 65534), 0);
  }

  /* List only: our stale one is reported and nothing is removed. Other
   * leftovers of dead processes of our uid may exist on a shared machine, so
   * the count is at least 1 and the report is searched by name. */
  char *text = NULL;
  size_t text_len = 0;
  FILE *report = open_memstream(&text, &text_len);
  assert_non_null(report);
  int unknown = 0;
  int found = cpdl__shm_sweep(false, report, &unknown);
  fclose(report);
  assert_true(found >= 1);
  assert_true(unknown >= 3);
  char line[1024];
  snprintf(line, sizeof line, "%s  4096 bytes  kept: cannot prove its creator dead: its creator ran "
           "in another PID namespace", other_ns + 1);
  assert_non_null(strstr(text, line));
  assert_non_null(strstr(text, "another or unknown boot"));
  assert_non_null(strstr(text, "does not say the creator's PID namespace"));
  assert_non_null(strstr(text, stale + 1));
  assert_null(strstr(text, live + 1));
  assert_null(strstr(text, foreign_name + 1));
  if (can_chown)
    assert_null(strstr(text, chowned + 1));
  free(text);
  assert_true(shm_exists(stale));

  /* Remove: only the stale one goes (R5). */
  found = cpdl__shm_sweep(true, NULL, NULL);
  assert_true(found >= 1);
  assert_false(shm_exists(stale));
  assert_true(shm_exists(other_ns));
  assert_true(shm_exists(other_boot));
  assert_true(shm_exists(old_format));
  assert_true(shm_exists(live));
  assert_true(shm_exists(foreign_name));
  if (can_chown)
    assert_true(shm_exists(chowned));

  shm_unlink(live);
  shm_unlink(foreign_name);
  shm_unlink(chowned);
  shm_unlink(other_ns);
  shm_unlink(other_boot);
  shm_unlink(old_format);
}

static void test_enospace_leaves_nothing(void **state) {
  (void)state;
  struct statvfs vfs;
  assert_int_equal(statvfs("/dev/shm", &vfs), 0);
  uint64_t free_bytes = (uint64_t)vfs.f_bavail * vfs.f_frsize;
  size_t want = (size_t)(free_bytes + (UINT64_C(1) << 30));
  int before = count_own_segments();
  int fds = count_fds();
  cpdl__shm_t shm;
  assert_int_equal(cpdl__shm_create(want, &shm), CPDL_ENOSPACE);
  const char *msg = cpdl_last_error();
  char needed[32];
  snprintf(needed, sizeof needed, "%zu", want);
  assert_non_null(strstr(msg, "/dev/shm"));
  assert_non_null(strstr(msg, needed));
  assert_non_null(strstr(msg, "available"));
  assert_non_null(strstr(msg, "--shm-size"));
  assert_null(shm.base);
  assert_int_equal(shm.fd, -1);
  assert_int_equal(count_own_segments(), before);
  assert_int_equal(count_fds(), fds);

  assert_int_equal(cpdl__shm_create(0, &shm), CPDL_EARG);
}

static void test_many_cycles_stay_flat(void **state) {
  (void)state;
  /* Warm up once so lazily opened descriptors (e.g. by libc) are counted. */
  cpdl__shm_t shm, peer;
  assert_int_equal(cpdl__shm_create(2 * page(), &shm), 0);
  cpdl__shm_close(&shm);
  int fds = count_fds(), maps = count_maps(), segs = count_own_segments();
  for (int i = 0; i < 200; i++) {
    assert_int_equal(cpdl__shm_create(2 * page(), &shm), 0);
    assert_int_equal(cpdl__shm_attach(shm.name, 2 * page(), page(), true, &peer), 0);
    if (i % 2)
      assert_int_equal(cpdl__shm_unlink(&shm), 0);
    cpdl__shm_close(&peer);
    cpdl__shm_close(&shm);
  }
  assert_int_equal(count_fds(), fds);
  assert_int_equal(count_maps(), maps);
  assert_int_equal(count_own_segments(), segs);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_create_attach_unlink),
      cmocka_unit_test(test_create_never_touches_existing),
      cmocka_unit_test(test_attach_refuses),
      cmocka_unit_test(test_readonly_data_mapping),
      cmocka_unit_test(test_sweep),
      cmocka_unit_test(test_enospace_leaves_nothing),
      cmocka_unit_test(test_many_cycles_stay_flat),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
