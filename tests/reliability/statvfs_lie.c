/* statvfs_lie.c — LD_PRELOAD shim for R2 (tests/reliability/enospc_race.sh):
 * statvfs() on /dev/shm reports a terabyte free, as if space vanished right
 * after cpdl's free-space check, so only posix_fallocate's return value can
 * tell that the segment does not fit. Test-only; never linked into cpdl. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <string.h>
#include <sys/statvfs.h>

static void lie(const char *path, struct statvfs *buf) {
  if (path && strncmp(path, "/dev/shm", 8) == 0) {
    buf->f_frsize = 4096;
    buf->f_bavail = buf->f_bfree = (fsblkcnt_t)1 << 28; /* 1 TiB */
  }
}

int statvfs(const char *path, struct statvfs *buf) {
  int (*real)(const char *, struct statvfs *) =
      (int (*)(const char *, struct statvfs *))dlsym(RTLD_NEXT, "statvfs");
  int rc = real(path, buf);
  if (rc == 0)
    lie(path, buf);
  return rc;
}
