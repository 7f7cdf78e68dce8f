/* shm.c — POSIX shared-memory segments: create, attach, unlink, sweep.
 *
 * Invariants: a segment is only ever created with O_CREAT|O_EXCL and mode
 * 0600 under an unguessable name "/cpdl-<uid>-<pid>-<pidns>-<boot>-<16 hex>"
 * (pidns: the creator's PID namespace inode in hex, boot: 12 hex of the boot
 * id; 0 where /proc does not say): the pid means something only in that
 * namespace during that boot, which is all a sweep may judge by. An existing
 * object is never opened by create. Its space is reserved before anyone maps
 * it, so a full /dev/shm is an error at start and never a SIGBUS later. Every
 * failing path leaves no fd, no mapping and no /dev/shm entry behind.
 * No locks: each cpdl__shm_t belongs to one thread at a time.
 */
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
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#define SHM_DIR "/dev/shm"
#define CREATE_ATTEMPTS 16
#define ENOSPACE_FIX "enlarge /dev/shm (e.g. docker run --shm-size=<bytes>, or remount it larger) " \
                     "or lower ring_bytes/slots/seq_len/batch"

static char forced_name[CPDL__SHM_NAME_MAX]; /* tests only */

void cpdl__shm_test_force_name(const char *name) {
  if (!name)
    forced_name[0] = '\0';
  else
    snprintf(forced_name, sizeof forced_name, "%s", name);
}

static void shm_reset(cpdl__shm_t *shm) {
  memset(shm, 0, sizeof *shm);
  shm->fd = -1;
}

/* This process's PID namespace inode (0 if /proc does not say) and the first
 * 12 hex digits of the boot id ("0" likewise): what makes its pid meaningful. */
static void self_identity(uint64_t *pidns, char boot[13]) {
  struct stat st;
  *pidns = stat("/proc/self/ns/pid", &st) == 0 ? (uint64_t)st.st_ino : 0;
  snprintf(boot, 13, "0");
  FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
  if (!f)
    return;
  char id[64] = "";
  if (fgets(id, sizeof id, f)) {
    int n = 0;
    for (const char *p = id; *p && n < 12; p++)
      if ((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))
        boot[n++] = *p;
    boot[n] = '\0';
    if (n == 0)
      snprintf(boot, 13, "0");
  }
  fclose(f);
}

int cpdl__shm_identity(char *buf, size_t size) {
  uint64_t pidns;
  char boot[13];
  self_identity(&pidns, boot);
  return snprintf(buf, size, "%" PRIx64 "-%s", pidns, boot);
}

static int random_name(char *buf, size_t size) {
  uint64_t rnd;
  /* getrandom without GRND_NONBLOCK only blocks before the pool is seeded at
   * boot; a short read of 8 bytes cannot happen (<= 256 bytes is atomic). */
  ssize_t got;
  do {
    got = getrandom(&rnd, sizeof rnd, 0);
  } while (got < 0 && errno == EINTR);
  if (got != (ssize_t)sizeof rnd)
    return cpdl__error(CPDL_ESHM, "getrandom() failed for the segment name: %s",
                       got < 0 ? strerror(errno) : "short read");
  char identity[48];
  cpdl__shm_identity(identity, sizeof identity);
  int n = snprintf(buf, size, "/" CPDL__SHM_PREFIX "%u-%ld-%s-%016" PRIx64, (unsigned)geteuid(),
                   (long)getpid(), identity, rnd);
  if (n < 0 || (size_t)n >= size)
    return cpdl__error(CPDL_ESHM, "segment name longer than %zu bytes", size - 1);
  return 0;
}

static int no_space(size_t needed, uint64_t available) {
  return cpdl__error(CPDL_ENOSPACE,
                     "shared memory %s is too small: the segment needs %zu bytes, %" PRIu64
                     " bytes are available; %s",
                     SHM_DIR, needed, available, ENOSPACE_FIX);
}

static int shm_free_bytes(uint64_t *out) {
  struct statvfs vfs;
  if (statvfs(SHM_DIR, &vfs) != 0)
    return cpdl__error(CPDL_ESHM, "statvfs(%s) failed: %s; is /dev/shm mounted?", SHM_DIR,
                       strerror(errno));
  uint64_t free_bytes;
  if (__builtin_mul_overflow((uint64_t)vfs.f_bavail, (uint64_t)vfs.f_frsize, &free_bytes))
    free_bytes = UINT64_MAX;
  *out = free_bytes;
  return 0;
}

int cpdl__shm_create(size_t size, cpdl__shm_t *out) {
  shm_reset(out);
  if (size == 0 || size > (size_t)INT64_MAX)
    return cpdl__error(CPDL_EARG, "shared segment size %zu is out of range", size);

  /* Check first so the common case (Docker's 64 MiB /dev/shm) gets a clear
   * message before anything is created; posix_fallocate below is the real
   * reservation (the space can go between the two: R2). */
  uint64_t available = 0; /* set by shm_free_bytes on success; 0 keeps GCC -O2 quiet */
  int rc = shm_free_bytes(&available);
  if (rc)
    return rc;
  if ((uint64_t)size > available)
    return no_space(size, available);

  char name[CPDL__SHM_NAME_MAX];
  int fd = -1;
  for (int attempt = 0; attempt < CREATE_ATTEMPTS && fd < 0; attempt++) {
    if (attempt == 0 && forced_name[0]) {
      snprintf(name, sizeof name, "%s", forced_name);
      forced_name[0] = '\0';
    } else if ((rc = random_name(name, sizeof name)) != 0) {
      return rc;
    }
    /* O_EXCL: a stale, squatted or foreign object under this name is never
     * opened or changed — we just pick another name (R4). */
    fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0 && errno != EEXIST)
      return cpdl__error(CPDL_ESHM, "shm_open(%s, O_CREAT|O_EXCL) failed: %s", name,
                         strerror(errno));
  }
  if (fd < 0)
    return cpdl__error(CPDL_ESHM, "no free shared-memory name after %d attempts (last %s)",
                       CREATE_ATTEMPTS, name);

  /* The umask may have dropped bits but never adds any; fchmod makes the
   * mode exactly 0600 whatever the umask, so consumers can insist on it. */
  if (fchmod(fd, 0600) != 0) {
    rc = cpdl__error(CPDL_ESHM, "fchmod(%s, 0600) failed: %s", name, strerror(errno));
    goto fail_unlink;
  }
  /* posix_fallocate returns the error number and does NOT set errno. */
  int err = posix_fallocate(fd, 0, (off_t)size);
  if (err != 0) {
    if (err == ENOSPC || err == EFBIG || err == ENOMEM) {
      uint64_t now_free = 0;
      (void)shm_free_bytes(&now_free);
      rc = no_space(size, now_free);
      /* Say which step failed: the space was there at the check (R2). */
      rc = cpdl__error_prefix(rc, "reserving the segment failed (posix_fallocate: %s)",
                              strerror(err));
    } else {
      rc = cpdl__error(CPDL_ESHM, "posix_fallocate(%s, %zu bytes) failed: %s", name, size,
                       strerror(err));
    }
    goto fail_unlink;
  }
  void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) {
    rc = cpdl__error(CPDL_ESHM, "mmap of segment %s (%zu bytes) failed: %s", name, size,
                     strerror(errno));
    goto fail_unlink;
  }
  snprintf(out->name, sizeof out->name, "%s", name);
  out->fd = fd;
  out->base = base;
  out->size = size;
  out->ctrl_bytes = size;
  out->owner = true;
  out->unlinked = false;
  return 0;

fail_unlink:
  shm_unlink(name);
  close(fd);
  return rc;
}

int cpdl__shm_attach(const char *name, size_t size, size_t ctrl_bytes, bool data_readonly,
                     cpdl__shm_t *out) {
  shm_reset(out);
  long page = sysconf(_SC_PAGESIZE);
  if (!name || strncmp(name, "/" CPDL__SHM_PREFIX, strlen("/" CPDL__SHM_PREFIX)) != 0 ||
      strlen(name) >= CPDL__SHM_NAME_MAX || strchr(name + 1, '/'))
    return cpdl__error(CPDL_ESHM, "'%s' is not a cpdl segment name (\"/" CPDL__SHM_PREFIX
                       "<uid>-<pid>-<random>\")", name ? name : "(null)");
  if (size == 0 || ctrl_bytes == 0 || ctrl_bytes > size || ctrl_bytes % (size_t)page != 0)
    return cpdl__error(CPDL_EARG, "segment %s: control part of %zu bytes does not fit %zu bytes "
                       "or is not a page multiple", name, ctrl_bytes, size);

  int fd = shm_open(name, O_RDWR, 0);
  if (fd < 0)
    return cpdl__error(CPDL_ESHM, "cannot open segment %s: %s", name, strerror(errno));
  int rc;
  struct stat st;
  if (fstat(fd, &st) != 0) {
    rc = cpdl__error(CPDL_ESHM, "fstat of segment %s failed: %s", name, strerror(errno));
    goto fail_close;
  }
  /* R11: only our own, private segment is trusted. */
  if (!S_ISREG(st.st_mode)) {
    rc = cpdl__error(CPDL_ESHM, "segment %s is not a regular shared-memory object", name);
    goto fail_close;
  }
  if (st.st_uid != geteuid()) {
    rc = cpdl__error(CPDL_ESHM, "segment %s is owned by uid %u, not by us (uid %u); refusing it",
                     name, (unsigned)st.st_uid, (unsigned)geteuid());
    goto fail_close;
  }
  if ((st.st_mode & 077) != 0) {
    rc = cpdl__error(CPDL_ESHM, "segment %s has mode %04o: group/other permissions are set "
                     "(must be 0600); refusing it", name, (unsigned)(st.st_mode & 07777));
    goto fail_close;
  }
  if (st.st_size < 0 || (uint64_t)st.st_size != (uint64_t)size) {
    rc = cpdl__error(CPDL_ESHM, "segment %s has %lld bytes, expected %zu (the size the leader "
                     "sent)", name, (long long)st.st_size, size);
    goto fail_close;
  }

  void *base;
  if (data_readonly && ctrl_bytes < size) {
    /* Reserve the whole range once, then map the two parts over it with
     * MAP_FIXED, so they are adjacent and nothing else can land in between. */
    base = mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) {
      rc = cpdl__error(CPDL_ESHM, "reserving %zu bytes of address space for %s failed: %s", size,
                       name, strerror(errno));
      goto fail_close;
    }
    char *at = base;
    if (mmap(at, ctrl_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) ==
            MAP_FAILED ||
        mmap(at + ctrl_bytes, size - ctrl_bytes, PROT_READ, MAP_SHARED | MAP_FIXED, fd,
             (off_t)ctrl_bytes) == MAP_FAILED) {
      rc = cpdl__error(CPDL_ESHM, "mmap of segment %s failed: %s", name, strerror(errno));
      munmap(base, size);
      goto fail_close;
    }
  } else {
    base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
      rc = cpdl__error(CPDL_ESHM, "mmap of segment %s failed: %s", name, strerror(errno));
      goto fail_close;
    }
  }
  snprintf(out->name, sizeof out->name, "%s", name);
  out->fd = fd;
  out->base = base;
  out->size = size;
  out->ctrl_bytes = data_readonly ? ctrl_bytes : size;
  out->owner = false;
  out->unlinked = false;
  return 0;

fail_close:
  close(fd);
  return rc;
}

int cpdl__shm_unlink(cpdl__shm_t *shm) {
  if (!shm || shm->unlinked || !shm->name[0])
    return 0;
  shm->unlinked = true;
  /* ENOENT: another rank of the group already unlinked it — the goal holds. */
  if (shm_unlink(shm->name) != 0 && errno != ENOENT)
    return cpdl__error(CPDL_ESHM, "shm_unlink(%s) failed: %s", shm->name, strerror(errno));
  return 0;
}

/* Idempotent. The creator also unlinks (if nobody did yet), so that an early
 * close on an error path leaves nothing in /dev/shm. */
void cpdl__shm_close(cpdl__shm_t *shm) {
  if (!shm)
    return;
  if (shm->owner && !shm->unlinked)
    (void)cpdl__shm_unlink(shm);
  if (shm->base) {
    munmap(shm->base, shm->size);
    shm->base = NULL;
  }
  if (shm->fd >= 0) {
    close(shm->fd);
    shm->fd = -1;
  }
}

/* Whether the creator named by the part of a segment name after the uid
 * ("<pid>-<pidns>-<boot>-<random>") is provably gone: 1 dead, 0 alive, -1
 * unknown with the reason in why. A pid is only meaningful in its PID
 * namespace during its boot: a name from another namespace or boot (a
 * container sharing /dev/shm but not PIDs, as pods do) or without them (an
 * older cpdl) cannot be judged from here, and unknown keeps the segment. */
static int creator_gone(const char *rest, uint64_t my_ns, const char *my_boot, long *pid_out,
                        char *why, size_t why_size) {
  char *end;
  errno = 0;
  long pid = strtol(rest, &end, 10);
  *pid_out = pid;
  if (errno || end == rest || *end != '-' || pid <= 0 || pid > INT32_MAX) {
    snprintf(why, why_size, "its name holds no creator pid");
    return -1;
  }
  const char *ns_text = end + 1;
  errno = 0;
  unsigned long long ns = strtoull(ns_text, &end, 16);
  const char *boot = end + 1, *boot_end = *end == '-' ? strchr(boot, '-') : NULL;
  if (errno || end == ns_text || *end != '-' || !boot_end || boot_end == boot ||
      boot_end - boot > 12 || strlen(boot_end + 1) != 16) {
    snprintf(why, why_size, "its name does not say the creator's PID namespace and boot (an "
             "older cpdl made it)");
    return -1;
  }
  if (ns == 0 || ns != my_ns) {
    snprintf(why, why_size, "its creator ran in %s PID namespace (%llx; this sweep runs in %llx) "
             "whose processes cannot be seen from here; run cpdl sweep in that container or pod",
             ns ? "another" : "an unknown", ns, (unsigned long long)my_ns);
    return -1;
  }
  if ((size_t)(boot_end - boot) != strlen(my_boot) || strncmp(boot, my_boot, strlen(my_boot)) ||
      strcmp(my_boot, "0") == 0) {
    snprintf(why, why_size, "its creator ran under another or unknown boot (boot id %.*s, this one "
             "%s)", (int)(boot_end - boot), boot, my_boot);
    return -1;
  }
  /* Only a creator that is certainly gone: EPERM means it exists. */
  return kill((pid_t)pid, 0) == -1 && errno == ESRCH;
}

int cpdl__shm_sweep(bool remove, void *report_FILE, int *unknown) {
  FILE *report = report_FILE;
  if (unknown)
    *unknown = 0;
  DIR *dir = opendir(SHM_DIR);
  if (!dir)
    return cpdl__error(CPDL_ESHM, "cannot list %s: %s", SHM_DIR, strerror(errno));
  char prefix[32];
  int prefix_len = snprintf(prefix, sizeof prefix, CPDL__SHM_PREFIX "%u-", (unsigned)geteuid());
  uint64_t my_ns;
  char my_boot[13];
  self_identity(&my_ns, my_boot);
  int found = 0, rc = 0;
  struct dirent *ent;
  while ((ent = readdir(dir)) != NULL) {
    if (strncmp(ent->d_name, prefix, (size_t)prefix_len) != 0)
      continue;
    struct stat st;
    if (fstatat(dirfd(dir), ent->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode) ||
        st.st_uid != geteuid())
      continue;
    long pid;
    char why[256];
    int gone = creator_gone(ent->d_name + prefix_len, my_ns, my_boot, &pid, why, sizeof why);
    if (gone == 0)
      continue; /* alive */
    if (gone < 0) {
      if (unknown)
        ++*unknown;
      if (report)
        fprintf(report, "%s/%s  %lld bytes  kept: cannot prove its creator dead: %s\n", SHM_DIR,
                ent->d_name, (long long)st.st_size, why);
      continue;
    }
    found++;
    bool removed = false;
    if (remove) {
      char path[sizeof ent->d_name + 1];
      snprintf(path, sizeof path, "/%s", ent->d_name);
      removed = shm_unlink(path) == 0;
      if (!removed && errno != ENOENT && rc == 0)
        rc = cpdl__error(CPDL_ESHM, "shm_unlink(%s) failed: %s", path, strerror(errno));
    }
    if (report)
      fprintf(report, "%s/%s  %lld bytes  creator pid %ld (dead)%s\n", SHM_DIR, ent->d_name,
              (long long)st.st_size, pid, removed ? "  removed" : "");
  }
  closedir(dir);
  return rc ? rc : found;
}
