/* tv-sandbox's explain shim: an LD_PRELOAD library that records the file operations the kernel
 * layer refused, so that a native or shell write gets the same explanation as a Python one.
 *
 * It never decides and never changes a result: each wrapper calls the real libc function and, only
 * when that failed with EROFS, EACCES or EPERM on a write-like operation, appends one JSON line to
 * the file named by $TV_SANDBOX_NATIVE_EVENTS (read once, at load):
 *
 *   {"time": 1767225600.123, "pid": 42, "call": "openat", "op": "write", "errno": 30,
 *    "path": "data/lakehouse/x", "dir": "/cwd/or/dirfd/target"}
 *
 * The launcher maps these lines to explained events after the step (sandbox.events.explain_native).
 * The line is written with raw system calls (open/write/close by number), in one write(2) on an
 * O_APPEND descriptor: atomic among processes, never through these wrappers, no allocation. errno
 * is restored before returning, so the caller sees exactly what libc said.
 *
 * What it cannot see: static binaries, programs that make system calls directly (Go), and calls
 * inside libc itself that do not go through the PLT (glibc's own fopen is wrapped here for that
 * reason). Those denials stay unexplained -- the kernel layer still refuses them.
 *
 * Build: cc -shared -fPIC -O2 -o shim.so shim.c -ldl   (sandbox/native/__init__.py does it lazily)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define SHIM_VERSION 1
#define LINE_MAX_BYTES 8192

static char log_path[4096];
static int enabled;

/* Successful writes are recorded only below a watched prefix and not below a skipped one
 * ($TV_SANDBOX_NATIVE_WATCH / _SKIP, ':'-separated absolute paths): the workspace as the step sees
 * it, minus $TV_RUN_DIR -- there a write is an overlay redirect (or, on a writable mount, a change
 * of the host) that no other layer logged. */
#define MAX_PREFIXES 8
static char prefix_buf[2][4096];
static const char *prefixes[2][MAX_PREFIXES];
static size_t prefix_len[2][MAX_PREFIXES];
static int n_prefixes[2];

static void parse_prefixes(int which, const char *env) {
    const char *v = getenv(env);
    if (!v || strlen(v) >= sizeof prefix_buf[which]) return;
    strcpy(prefix_buf[which], v);
    char *save = 0;
    for (char *tok = strtok_r(prefix_buf[which], ":", &save); tok && n_prefixes[which] < MAX_PREFIXES;
         tok = strtok_r(0, ":", &save)) {
        if (tok[0] != '/') continue;
        prefixes[which][n_prefixes[which]] = tok;
        prefix_len[which][n_prefixes[which]++] = strlen(tok);
    }
}

__attribute__((constructor)) static void shim_init(void) {
    const char *p = getenv("TV_SANDBOX_NATIVE_EVENTS");
    if (p && *p && strlen(p) < sizeof(log_path)) {
        strcpy(log_path, p);
        enabled = 1;
        parse_prefixes(0, "TV_SANDBOX_NATIVE_WATCH");
        parse_prefixes(1, "TV_SANDBOX_NATIVE_SKIP");
    }
}

static int below(int which, const char *abs) {
    for (int i = 0; i < n_prefixes[which]; i++) {
        size_t n = prefix_len[which][i];
        if (strncmp(abs, prefixes[which][i], n) == 0 && (abs[n] == '/' || abs[n] == 0)) return 1;
    }
    return 0;
}

static int denied(int e) { return e == EROFS || e == EACCES || e == EPERM; }

/* Append s to buf as a JSON string body (quotes not included). */
static size_t put_json(char *buf, size_t at, size_t cap, const char *s) {
    static const char hex[] = "0123456789abcdef";
    for (; s && *s && at + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[at++] = '\\';
            buf[at++] = (char)c;
        } else if (c < 0x20) {
            buf[at++] = '\\';
            buf[at++] = 'u';
            buf[at++] = '0';
            buf[at++] = '0';
            buf[at++] = hex[c >> 4];
            buf[at++] = hex[c & 15];
        } else {
            buf[at++] = (char)c;  /* UTF-8 bytes pass through; undecodable ones are replaced later */
        }
    }
    return at;
}

static size_t put(char *buf, size_t at, size_t cap, const char *s) {
    while (s && *s && at + 1 < cap) buf[at++] = *s++;
    return at;
}

/* The folder a relative path is relative to: the cwd, or what dirfd names. */
static void base_dir(int dirfd, char *out, size_t cap) {
    out[0] = 0;
    if (dirfd == AT_FDCWD) {
        if (!getcwd(out, cap)) out[0] = 0;
        return;
    }
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
    ssize_t n = readlink(link, out, cap - 1);
    out[n > 0 ? n : 0] = 0;
}

static void emit(const char *call, const char *op, int err, const char *dir, const char *path,
                 const char *path2);

static void record(const char *call, const char *op, int err, int dirfd, const char *path, const char *path2) {
    if (!enabled) return;
    int saved = errno;
    char dir[4096];
    dir[0] = 0;
    if (path && path[0] != '/') base_dir(dirfd, dir, sizeof dir);
    emit(call, op, err, dir, path, path2);
    errno = saved;
}

/* A write that succeeded: recorded (errno 0) when it lands below a watched prefix (see above). */
static void record_ok(const char *call, const char *op, int dirfd, const char *path, const char *path2) {
    if (!enabled || !n_prefixes[0] || !path) return;
    int saved = errno;
    char dir[4096], abs[8192];
    dir[0] = 0;
    if (path[0] != '/') base_dir(dirfd, dir, sizeof dir);
    snprintf(abs, sizeof abs, "%s%s%s", dir, dir[0] ? "/" : "", path);
    if (below(0, abs) && !below(1, abs)) emit(call, op, 0, dir, path, path2);
    errno = saved;
}

static void emit(const char *call, const char *op, int err, const char *dir, const char *path,
                 const char *path2) {
    char buf[LINE_MAX_BYTES];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    size_t at = (size_t)snprintf(buf, sizeof buf, "{\"time\": %lld.%03ld, \"pid\": %d, \"call\": \"%s\", "
                                 "\"op\": \"%s\", \"errno\": %d, \"path\": \"",
                                 (long long)ts.tv_sec, ts.tv_nsec / 1000000, (int)getpid(), call, op, err);
    at = put_json(buf, at, sizeof buf - 64, path);
    at = put(buf, at, sizeof buf, "\", \"dir\": \"");
    at = put_json(buf, at, sizeof buf - 64, dir);
    at = put(buf, at, sizeof buf, "\"");
    if (path2) {
        at = put(buf, at, sizeof buf, ", \"path2\": \"");
        at = put_json(buf, at, sizeof buf - 16, path2);
        at = put(buf, at, sizeof buf, "\"");
    }
    at = put(buf, at, sizeof buf, "}\n");
    long fd = syscall(SYS_openat, AT_FDCWD, log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) {
        syscall(SYS_write, (int)fd, buf, at);
        syscall(SYS_close, (int)fd);
    }
}

/* The next definition of libc's name (RTLD_NEXT), looked up once. */
#define REAL(name, ret, params)     \
    static ret(*real_##name) params; \
    if (!real_##name) *(void **)&real_##name = dlsym(RTLD_NEXT, #name)

static int writes(int flags) { return (flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND)) != 0; }

/* -- open and friends -------------------------------------------------------------------------- */

#define OPEN_LIKE(name)                                                              \
    int name(const char *path, int flags, ...) {                                      \
        mode_t mode = 0;                                                              \
        if (flags & (O_CREAT | __O_TMPFILE)) {                                        \
            va_list ap;                                                               \
            va_start(ap, flags);                                                      \
            mode = (mode_t)va_arg(ap, int);                                           \
            va_end(ap);                                                               \
        }                                                                             \
        REAL(name, int, (const char *, int, ...));                                  \
        int r = real_##name(path, flags, mode);                                       \
        if (r < 0 && writes(flags) && denied(errno)) record(#name, "write", errno, AT_FDCWD, path, 0); \
        else if (r >= 0 && writes(flags)) record_ok(#name, "write", AT_FDCWD, path, 0); \
        return r;                                                                     \
    }

#define OPENAT_LIKE(name)                                                            \
    int name(int dirfd, const char *path, int flags, ...) {                           \
        mode_t mode = 0;                                                              \
        if (flags & (O_CREAT | __O_TMPFILE)) {                                        \
            va_list ap;                                                               \
            va_start(ap, flags);                                                      \
            mode = (mode_t)va_arg(ap, int);                                           \
            va_end(ap);                                                               \
        }                                                                             \
        REAL(name, int, (int, const char *, int, ...));                             \
        int r = real_##name(dirfd, path, flags, mode);                                \
        if (r < 0 && writes(flags) && denied(errno)) record(#name, "write", errno, dirfd, path, 0); \
        else if (r >= 0 && writes(flags)) record_ok(#name, "write", dirfd, path, 0); \
        return r;                                                                     \
    }

OPEN_LIKE(open)
OPEN_LIKE(open64)
OPENAT_LIKE(openat)
OPENAT_LIKE(openat64)

int __open_2(const char *path, int flags) {
    REAL(__open_2, int, (const char *, int));
    int r = real___open_2(path, flags);
    if (r < 0 && writes(flags) && denied(errno)) record("open", "write", errno, AT_FDCWD, path, 0);
    else if (r >= 0 && writes(flags)) record_ok("open", "write", AT_FDCWD, path, 0);
    return r;
}

int __open64_2(const char *path, int flags) {
    REAL(__open64_2, int, (const char *, int));
    int r = real___open64_2(path, flags);
    if (r < 0 && writes(flags) && denied(errno)) record("open", "write", errno, AT_FDCWD, path, 0);
    else if (r >= 0 && writes(flags)) record_ok("open", "write", AT_FDCWD, path, 0);
    return r;
}

int __openat_2(int dirfd, const char *path, int flags) {
    REAL(__openat_2, int, (int, const char *, int));
    int r = real___openat_2(dirfd, path, flags);
    if (r < 0 && writes(flags) && denied(errno)) record("openat", "write", errno, dirfd, path, 0);
    else if (r >= 0 && writes(flags)) record_ok("openat", "write", dirfd, path, 0);
    return r;
}

int __openat64_2(int dirfd, const char *path, int flags) {
    REAL(__openat64_2, int, (int, const char *, int));
    int r = real___openat64_2(dirfd, path, flags);
    if (r < 0 && writes(flags) && denied(errno)) record("openat", "write", errno, dirfd, path, 0);
    else if (r >= 0 && writes(flags)) record_ok("openat", "write", dirfd, path, 0);
    return r;
}

int creat(const char *path, mode_t mode) {
    REAL(creat, int, (const char *, mode_t));
    int r = real_creat(path, mode);
    if (r < 0 && denied(errno)) record("creat", "write", errno, AT_FDCWD, path, 0);
    else if (r >= 0) record_ok("creat", "write", AT_FDCWD, path, 0);
    return r;
}

int creat64(const char *path, mode_t mode) {
    REAL(creat64, int, (const char *, mode_t));
    int r = real_creat64(path, mode);
    if (r < 0 && denied(errno)) record("creat", "write", errno, AT_FDCWD, path, 0);
    else if (r >= 0) record_ok("creat", "write", AT_FDCWD, path, 0);
    return r;
}

static int mode_writes(const char *mode) { return mode && (strchr(mode, 'w') || strchr(mode, 'a') || strchr(mode, '+')); }

FILE *fopen(const char *path, const char *mode) {
    REAL(fopen, FILE *, (const char *, const char *));
    FILE *f = real_fopen(path, mode);
    if (!f && mode_writes(mode) && denied(errno)) record("fopen", "write", errno, AT_FDCWD, path, 0);
    else if (f && mode_writes(mode)) record_ok("fopen", "write", AT_FDCWD, path, 0);
    return f;
}

FILE *fopen64(const char *path, const char *mode) {
    REAL(fopen64, FILE *, (const char *, const char *));
    FILE *f = real_fopen64(path, mode);
    if (!f && mode_writes(mode) && denied(errno)) record("fopen", "write", errno, AT_FDCWD, path, 0);
    else if (f && mode_writes(mode)) record_ok("fopen", "write", AT_FDCWD, path, 0);
    return f;
}

FILE *freopen(const char *path, const char *mode, FILE *stream) {
    REAL(freopen, FILE *, (const char *, const char *, FILE *));
    FILE *f = real_freopen(path, mode, stream);
    if (!f && path && mode_writes(mode) && denied(errno)) record("freopen", "write", errno, AT_FDCWD, path, 0);
    return f;
}

/* -- names: remove, rename, make, link --------------------------------------------------------- */

#define PATH_CALL(name, op, params, args, path)                      \
    int name params {                                                \
        REAL(name, int, params);                                  \
        int r = real_##name args;                                    \
        if (r < 0 && denied(errno)) record(#name, op, errno, AT_FDCWD, path, 0); \
        else if (r >= 0 && strcmp(op, "metadata")) record_ok(#name, op, AT_FDCWD, path, 0); \
        return r;                                                    \
    }

#define PATHAT_CALL(name, op, params, args, dirfd, path)             \
    int name params {                                                \
        REAL(name, int, params);                                  \
        int r = real_##name args;                                    \
        if (r < 0 && denied(errno)) record(#name, op, errno, dirfd, path, 0); \
        else if (r >= 0 && strcmp(op, "metadata")) record_ok(#name, op, dirfd, path, 0); \
        return r;                                                    \
    }

PATH_CALL(unlink, "delete", (const char *p), (p), p)
PATH_CALL(rmdir, "rmdir", (const char *p), (p), p)
PATH_CALL(mkdir, "mkdir", (const char *p, mode_t m), (p, m), p)
PATHAT_CALL(mkdirat, "mkdir", (int d, const char *p, mode_t m), (d, p, m), d, p)
PATH_CALL(truncate, "write", (const char *p, off_t l), (p, l), p)
PATH_CALL(truncate64, "write", (const char *p, off64_t l), (p, l), p)
PATH_CALL(chmod, "metadata", (const char *p, mode_t m), (p, m), p)
PATHAT_CALL(fchmodat, "metadata", (int d, const char *p, mode_t m, int f), (d, p, m, f), d, p)
PATH_CALL(chown, "metadata", (const char *p, uid_t u, gid_t g), (p, u, g), p)
PATH_CALL(lchown, "metadata", (const char *p, uid_t u, gid_t g), (p, u, g), p)
PATHAT_CALL(fchownat, "metadata", (int d, const char *p, uid_t u, gid_t g, int f), (d, p, u, g, f), d, p)
PATHAT_CALL(utimensat, "metadata", (int d, const char *p, const struct timespec t[2], int f), (d, p, t, f), d, p)
PATH_CALL(symlink, "link", (const char *t, const char *p), (t, p), p)
PATHAT_CALL(symlinkat, "link", (const char *t, int d, const char *p), (t, d, p), d, p)
PATH_CALL(mkfifo, "write", (const char *p, mode_t m), (p, m), p)

int unlinkat(int dirfd, const char *path, int flags) {
    REAL(unlinkat, int, (int, const char *, int));
    int r = real_unlinkat(dirfd, path, flags);
    const char *op = (flags & AT_REMOVEDIR) ? "rmdir" : "delete";
    if (r < 0 && denied(errno)) record("unlinkat", op, errno, dirfd, path, 0);
    else if (r >= 0) record_ok("unlinkat", op, dirfd, path, 0);
    return r;
}

int remove(const char *path) {
    REAL(remove, int, (const char *));
    int r = real_remove(path);
    if (r < 0 && denied(errno)) record("remove", "delete", errno, AT_FDCWD, path, 0);
    else if (r >= 0) record_ok("remove", "delete", AT_FDCWD, path, 0);
    return r;
}

int link(const char *old, const char *new_) {
    REAL(link, int, (const char *, const char *));
    int r = real_link(old, new_);
    if (r < 0 && denied(errno)) record("link", "link", errno, AT_FDCWD, new_, 0);
    else if (r >= 0) record_ok("link", "link", AT_FDCWD, new_, 0);
    return r;
}

int linkat(int od, const char *old, int nd, const char *new_, int flags) {
    REAL(linkat, int, (int, const char *, int, const char *, int));
    int r = real_linkat(od, old, nd, new_, flags);
    if (r < 0 && denied(errno)) record("linkat", "link", errno, nd, new_, 0);
    else if (r >= 0) record_ok("linkat", "link", nd, new_, 0);
    return r;
}

/* A rename names two places; the line keeps both (path2: the new name), decided both after. */
int rename(const char *old, const char *new_) {
    REAL(rename, int, (const char *, const char *));
    int r = real_rename(old, new_);
    if (r < 0 && denied(errno)) record("rename", "rename", errno, AT_FDCWD, old, new_);
    else if (r >= 0) record_ok("rename", "rename", AT_FDCWD, old, new_);
    return r;
}

int renameat(int od, const char *old, int nd, const char *new_) {
    REAL(renameat, int, (int, const char *, int, const char *));
    int r = real_renameat(od, old, nd, new_);
    if (r < 0 && denied(errno)) record("renameat", "rename", errno, od == nd ? od : AT_FDCWD, old, new_);
    else if (r >= 0) record_ok("renameat", "rename", od == nd ? od : AT_FDCWD, old, new_);
    return r;
}

int renameat2(int od, const char *old, int nd, const char *new_, unsigned int flags) {
    REAL(renameat2, int, (int, const char *, int, const char *, unsigned int));
    int r = real_renameat2(od, old, nd, new_, flags);
    if (r < 0 && denied(errno)) record("renameat2", "rename", errno, od == nd ? od : AT_FDCWD, old, new_);
    else if (r >= 0) record_ok("renameat2", "rename", od == nd ? od : AT_FDCWD, old, new_);
    return r;
}

int tv_sandbox_shim_version(void) { return SHIM_VERSION; }
