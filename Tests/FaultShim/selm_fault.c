// selm fault-injection shim: an LD_PRELOAD library the server tests load into a real `selm serve`
// to watch and break the writes and syncs of one file (the preference log, a checkpoint file).
// The environment variables and the event format are described in include/selm_fault.h.
//
// It interposes the calls the server makes on such files — write, pwrite(64), writev, pwritev(64),
// fsync, fdatasync, ftruncate(64) — and the open / close family only to forget what it knew about a
// descriptor number that is reused. Whether a descriptor is acted on is decided from its resolved
// path (/proc/self/fd/N) the first time it is written or synced, and cached until it is closed.
#define _GNU_SOURCE
#include "selm_fault.h"

#if defined(__linux__)
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

// MARK: configuration (read once, at load)

static const char *g_pattern;     // SELM_FAULT_PATH (NULL: inert)
static const char *g_events;      // SELM_FAULT_EVENTS
static const char *g_release;     // SELM_FAULT_RELEASE
static long g_delay_ms;           // SELM_FAULT_SYNC_DELAY_MS
static long g_fail_sync_n;        // SELM_FAULT_FAIL_SYNC n (0: never)
static int g_fail_sync_errno;
static long g_fail_write_n;       // SELM_FAULT_FAIL_WRITE n (0: never)
static int g_fail_write_errno;
static int g_fail_write_short;
static long g_hold_sync_n;        // SELM_FAULT_HOLD_SYNC n (0: never)

static long g_sync_count;         // matched fsync / fdatasync calls so far
static long g_write_count;        // matched write calls so far
static int g_fail_next_write;     // a short write happened: the next matched write fails
static int g_events_fd = -1;

enum { FD_UNKNOWN = 0, FD_MATCH = 1, FD_OTHER = 2, FD_TABLE = 1 << 16 };
static unsigned char g_fd_state[FD_TABLE];

static int parse_errno(const char *s) {
    if (!s || !*s) return EIO;
    if (!strcmp(s, "EIO")) return EIO;
    if (!strcmp(s, "ENOSPC")) return ENOSPC;
    if (!strcmp(s, "EDQUOT")) return EDQUOT;
    if (!strcmp(s, "EROFS")) return EROFS;
    if (!strcmp(s, "EBADF")) return EBADF;
    int n = atoi(s);
    return n > 0 ? n : EIO;
}

/// "N:ERR[:short]" → n, errno, short.
static void parse_fault(const char *s, long *n, int *err, int *shortw) {
    *n = 0;
    if (!s || !*s) return;
    char buf[64];
    snprintf(buf, sizeof buf, "%s", s);
    char *colon = strchr(buf, ':');
    char *rest = NULL;
    if (colon) { *colon = 0; rest = colon + 1; }
    *n = atol(buf);
    char *colon2 = rest ? strchr(rest, ':') : NULL;
    if (colon2) { *colon2 = 0; if (shortw) *shortw = !strcmp(colon2 + 1, "short"); }
    *err = parse_errno(rest);
}

__attribute__((constructor)) static void selm_fault_init(void) {
    g_pattern = getenv("SELM_FAULT_PATH");
    if (g_pattern && !*g_pattern) g_pattern = NULL;
    g_events = getenv("SELM_FAULT_EVENTS");
    g_release = getenv("SELM_FAULT_RELEASE");
    const char *d = getenv("SELM_FAULT_SYNC_DELAY_MS");
    g_delay_ms = d ? atol(d) : 0;
    parse_fault(getenv("SELM_FAULT_FAIL_SYNC"), &g_fail_sync_n, &g_fail_sync_errno, NULL);
    parse_fault(getenv("SELM_FAULT_FAIL_WRITE"), &g_fail_write_n, &g_fail_write_errno, &g_fail_write_short);
    const char *h = getenv("SELM_FAULT_HOLD_SYNC");
    g_hold_sync_n = h ? atol(h) : 0;
    // The shim acts on `selm serve` only: children it starts do not inherit it.
    unsetenv("LD_PRELOAD");
}

long selm_fault_sync_count(void) { return __atomic_load_n(&g_sync_count, __ATOMIC_SEQ_CST); }

// MARK: the real functions

#define REAL(name) \
    static __typeof__(&name) real_##name; \
    if (!real_##name) real_##name = (__typeof__(&name))dlsym(RTLD_NEXT, #name)

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static void event(const char *fmt, ...) {
    if (!g_events) return;
    REAL(open);
    REAL(write);
    int fd = __atomic_load_n(&g_events_fd, __ATOMIC_SEQ_CST);
    if (fd < 0) {
        int nfd = real_open(g_events, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (nfd < 0) return;
        int expected = -1;
        if (!__atomic_compare_exchange_n(&g_events_fd, &expected, nfd, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
            close(nfd);
            fd = expected;
        } else {
            fd = nfd;
        }
    }
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (n > (int)sizeof line - 2) n = (int)sizeof line - 2;
    line[n++] = '\n';
    int saved = errno;
    (void)real_write(fd, line, (size_t)n);  // one write on an O_APPEND file: lines never interleave
    errno = saved;
}

// MARK: which descriptors

static void forget(int fd) {
    if (fd >= 0 && fd < FD_TABLE) __atomic_store_n(&g_fd_state[fd], FD_UNKNOWN, __ATOMIC_SEQ_CST);
}

static int matched(int fd) {
    if (!g_pattern || fd < 0 || fd >= FD_TABLE || fd == g_events_fd) return 0;
    unsigned char s = __atomic_load_n(&g_fd_state[fd], __ATOMIC_SEQ_CST);
    if (s == FD_UNKNOWN) {
        char link[64], path[4096];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        int saved = errno;
        ssize_t n = readlink(link, path, sizeof path - 1);
        errno = saved;
        if (n <= 0) return 0;
        path[n] = 0;
        s = fnmatch(g_pattern, path, 0) == 0 ? FD_MATCH : FD_OTHER;
        __atomic_store_n(&g_fd_state[fd], s, __ATOMIC_SEQ_CST);
    }
    return s == FD_MATCH;
}

static long long file_size(int fd) {
    struct stat st;
    int saved = errno;
    long long size = fstat(fd, &st) == 0 ? (long long)st.st_size : -1;
    errno = saved;
    return size;
}

// MARK: writes

/// Before a matched write of `len` bytes: 0 to go on (with `*len` possibly cut to half for a short
/// write), or -1 with errno set to fail the call.
static int write_fault(size_t *len, int can_shorten) {
    long n = __atomic_add_fetch(&g_write_count, 1, __ATOMIC_SEQ_CST);
    if (__atomic_exchange_n(&g_fail_next_write, 0, __ATOMIC_SEQ_CST)) { errno = g_fail_write_errno; return -1; }
    if (g_fail_write_n > 0 && n == g_fail_write_n) {
        if (g_fail_write_short && can_shorten && *len >= 2) {
            *len /= 2;
            __atomic_store_n(&g_fail_next_write, 1, __ATOMIC_SEQ_CST);
            return 0;
        }
        errno = g_fail_write_errno;
        return -1;
    }
    return 0;
}

static void write_event(int fd, long long off, size_t len, ssize_t rc) {
    int e = rc < 0 ? errno : 0;
    event("write fd=%d off=%lld len=%zu end=%lld rc=%zd errno=%d t=%lld", fd, off, len,
          rc > 0 ? off + (long long)rc : off, rc, e, now_ns());
    errno = e ? e : errno;
}

static long long current_offset(int fd) {
    int saved = errno;
    off_t o = lseek(fd, 0, SEEK_CUR);
    errno = saved;
    return (long long)o;
}

ssize_t write(int fd, const void *buf, size_t count) {
    REAL(write);
    if (!matched(fd)) return real_write(fd, buf, count);
    long long off = current_offset(fd);
    size_t len = count;
    ssize_t rc = write_fault(&len, 1) < 0 ? -1 : real_write(fd, buf, len);
    write_event(fd, off, count, rc);
    return rc;
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    REAL(pwrite);
    if (!matched(fd)) return real_pwrite(fd, buf, count, offset);
    size_t len = count;
    ssize_t rc = write_fault(&len, 1) < 0 ? -1 : real_pwrite(fd, buf, len, offset);
    write_event(fd, (long long)offset, count, rc);
    return rc;
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off64_t offset) {
    REAL(pwrite64);
    if (!matched(fd)) return real_pwrite64(fd, buf, count, offset);
    size_t len = count;
    ssize_t rc = write_fault(&len, 1) < 0 ? -1 : real_pwrite64(fd, buf, len, offset);
    write_event(fd, (long long)offset, count, rc);
    return rc;
}

static size_t iov_bytes(const struct iovec *iov, int n) {
    size_t t = 0;
    for (int i = 0; i < n; i++) t += iov[i].iov_len;
    return t;
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    REAL(writev);
    if (!matched(fd)) return real_writev(fd, iov, iovcnt);
    long long off = current_offset(fd);
    size_t len = iov_bytes(iov, iovcnt);
    ssize_t rc = write_fault(&len, 0) < 0 ? -1 : real_writev(fd, iov, iovcnt);
    write_event(fd, off, iov_bytes(iov, iovcnt), rc);
    return rc;
}

ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, off_t offset) {
    REAL(pwritev);
    if (!matched(fd)) return real_pwritev(fd, iov, iovcnt, offset);
    size_t len = iov_bytes(iov, iovcnt);
    ssize_t rc = write_fault(&len, 0) < 0 ? -1 : real_pwritev(fd, iov, iovcnt, offset);
    write_event(fd, (long long)offset, iov_bytes(iov, iovcnt), rc);
    return rc;
}

ssize_t pwritev64(int fd, const struct iovec *iov, int iovcnt, off64_t offset) {
    REAL(pwritev64);
    if (!matched(fd)) return real_pwritev64(fd, iov, iovcnt, offset);
    size_t len = iov_bytes(iov, iovcnt);
    ssize_t rc = write_fault(&len, 0) < 0 ? -1 : real_pwritev64(fd, iov, iovcnt, offset);
    write_event(fd, (long long)offset, iov_bytes(iov, iovcnt), rc);
    return rc;
}

// MARK: syncs

static int do_sync(int fd, int data_only) {
    REAL(fsync);
    REAL(fdatasync);
    if (!matched(fd)) return data_only ? real_fdatasync(fd) : real_fsync(fd);
    long n = __atomic_add_fetch(&g_sync_count, 1, __ATOMIC_SEQ_CST);
    long long size = file_size(fd);
    long long t0 = now_ns();
    if (g_hold_sync_n > 0 && n == g_hold_sync_n) {
        event("hold n=%ld fd=%d size=%lld t=%lld", n, fd, size, t0);
        while (!g_release || access(g_release, F_OK) != 0) sleep_ms(2);
    }
    if (g_delay_ms > 0) sleep_ms(g_delay_ms);
    int rc, e = 0;
    if (g_fail_sync_n > 0 && n == g_fail_sync_n) {
        rc = -1;
        e = g_fail_sync_errno;
    } else {
        rc = data_only ? real_fdatasync(fd) : real_fsync(fd);
        if (rc != 0) e = errno;
    }
    event("sync n=%ld call=%s fd=%d size=%lld rc=%d errno=%d t0=%lld t1=%lld", n, data_only ? "fdatasync" : "fsync", fd,
          size, rc, e, t0, now_ns());
    if (rc != 0) errno = e;
    return rc;
}

int fsync(int fd) { return do_sync(fd, 0); }
int fdatasync(int fd) { return do_sync(fd, 1); }

// MARK: truncation

int ftruncate(int fd, off_t length) {
    REAL(ftruncate);
    int rc = real_ftruncate(fd, length);
    if (matched(fd)) {
        int e = errno;
        event("truncate fd=%d len=%lld rc=%d t=%lld", fd, (long long)length, rc, now_ns());
        errno = e;
    }
    return rc;
}

int ftruncate64(int fd, off64_t length) {
    REAL(ftruncate64);
    int rc = real_ftruncate64(fd, length);
    if (matched(fd)) {
        int e = errno;
        event("truncate fd=%d len=%lld rc=%d t=%lld", fd, (long long)length, rc, now_ns());
        errno = e;
    }
    return rc;
}

// MARK: descriptors opened and closed (only to forget a reused number)

static mode_t mode_arg(int flags, va_list ap) {
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...) {
    REAL(open);
    va_list ap; va_start(ap, flags); mode_t m = mode_arg(flags, ap); va_end(ap);
    int fd = real_open(path, flags, m);
    forget(fd);
    return fd;
}

int open64(const char *path, int flags, ...) {
    REAL(open64);
    va_list ap; va_start(ap, flags); mode_t m = mode_arg(flags, ap); va_end(ap);
    int fd = real_open64(path, flags, m);
    forget(fd);
    return fd;
}

int openat(int dirfd, const char *path, int flags, ...) {
    REAL(openat);
    va_list ap; va_start(ap, flags); mode_t m = mode_arg(flags, ap); va_end(ap);
    int fd = real_openat(dirfd, path, flags, m);
    forget(fd);
    return fd;
}

int openat64(int dirfd, const char *path, int flags, ...) {
    REAL(openat64);
    va_list ap; va_start(ap, flags); mode_t m = mode_arg(flags, ap); va_end(ap);
    int fd = real_openat64(dirfd, path, flags, m);
    forget(fd);
    return fd;
}

int creat(const char *path, mode_t mode) {
    REAL(creat);
    int fd = real_creat(path, mode);
    forget(fd);
    return fd;
}

int close(int fd) {
    REAL(close);
    forget(fd);
    return real_close(fd);
}

int dup2(int oldfd, int newfd) {
    REAL(dup2);
    int fd = real_dup2(oldfd, newfd);
    forget(fd);
    return fd;
}

int dup3(int oldfd, int newfd, int flags) {
    REAL(dup3);
    int fd = real_dup3(oldfd, newfd, flags);
    forget(fd);
    return fd;
}

int accept(int s, struct sockaddr *addr, socklen_t *len) {
    REAL(accept);
    int fd = real_accept(s, addr, len);
    forget(fd);
    return fd;
}

int accept4(int s, struct sockaddr *addr, socklen_t *len, int flags) {
    REAL(accept4);
    int fd = real_accept4(s, addr, len, flags);
    forget(fd);
    return fd;
}

#else
long selm_fault_sync_count(void) { return 0; }
#endif
