/*
 * sandboxd-stage: a sandbox built and run in compiled code — its helper, its init and its
 * program-to-be.
 *
 * Why native: every sandbox used to be two forks of the ~17 MiB Python spawner running
 * interpreted stage code, on the job's critical path too. The spawner now posix_spawns this
 * program (its memory is never copied) with the fds it needs and a configuration in a memfd
 * (sandboxd/jail/spine.py: native_config). The stages are the Python runner's, in its order
 * (spine.py's PREPARE_STAGES, WAIT_STAGES, JOB_STAGES), and the frames carry the same facts;
 * the spawner turns them into the same result.
 *
 *   helper: clone the sandbox as the spawner's child (CLONE_PARENT), say its pid, exit.
 *   PID 1, once the spawner mapped its ids and placed its cgroup: identity → cgroupns →
 *       mounts and pivot_root → hostname → network → session → Landlock ruleset → fork;
 *       then as the init: capabilities → no_new_privs + death signal → take the seccomp
 *       listener → reap until the program ends → "exit" frame.
 *   PID 2 (program): signals → capability bounds → "warm" frame → wait for the job →
 *       work directory → rlimits → session → capabilities → no_new_privs + death signal
 *       → Landlock → stdio/fds → seccomp → "ready" frame → execve.
 *
 * Frames: a 4-byte big-endian length, then a JSON object (sandboxd/jail/report.py).
 * The job message (spine.py: native_job_message): records of one tag byte, bytes, NUL.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define EXIT_SETUP_FAILED 125
#define EXIT_CANNOT_EXECUTE 126
#define EXIT_NOT_FOUND 127
#define JOB_MESSAGE_MAX (1 << 20)
#define MAX_RECORDED_KILLS 16
#define MAX_LIST 512

/* Kernel interfaces, spelled out so the build does not depend on the headers' age. */
#define SECCOMP_SET_MODE_FILTER_ 1
#define SECCOMP_FILTER_FLAG_NEW_LISTENER_ (1UL << 3)
#define SECCOMP_IOCTL_NOTIF_RECV_ 0xC0502100UL
#define SECCOMP_IOCTL_NOTIF_SEND_ 0xC0182101UL
#define LANDLOCK_RULE_PATH_BENEATH_ 1
#ifndef SYS_landlock_add_rule
#define SYS_landlock_add_rule 445
#define SYS_landlock_restrict_self 446
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#define MOVE_MOUNT_F_EMPTY_PATH_ 0x00000004
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef SYS_pivot_root
#define SYS_pivot_root 155
#endif
#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#endif
#define AT_RECURSIVE_ 0x8000
#define MOUNT_ATTR_RDONLY_ 0x1
#define MOUNT_ATTR_NOSUID_ 0x2
#define MOUNT_ATTR_NODEV_ 0x4
#define MOUNT_ATTR_NOEXEC_ 0x8
#define LANDLOCK_RULE_NET_PORT_ 2
struct mount_attr_ { uint64_t attr_set, attr_clr, propagation, userns_fd; };
struct ruleset_attr_ { uint64_t handled_fs, handled_net, scoped; };
struct net_port_ { uint64_t allowed_access, port; };
#define CLOSE_RANGE_CLOEXEC_ (1U << 2)
#define CAP_VERSION_3 0x20080522

struct sock_filter_ { uint16_t code; uint8_t jt, jf; uint32_t k; };
struct sock_fprog_ { unsigned short len; struct sock_filter_ *filter; };
struct notif_ {
    uint64_t id; uint32_t pid; uint32_t flags;
    int32_t nr; uint32_t arch; uint64_t ip; uint64_t args[6];
};
struct notif_resp_ { uint64_t id; int64_t val; int32_t error; uint32_t flags; };
struct path_beneath_ { uint64_t allowed_access; int32_t parent_fd; } __attribute__((packed));
struct cap_header_ { uint32_t version; int pid; };
struct cap_data_ { uint32_t effective, permitted, inheritable; };

/* --- configuration (written by spine.py into a memfd) ------------------------------------- */

struct config {
    int job_fd, report_fd, status_fd, sync_fd, ruleset_fd, bpf_fd;
    uint64_t later_access, later_file_access;
    unsigned restrict_flags;
    int seccomp, listener, default_notifies;
    uint32_t native_arch;
    long kill_nrs[MAX_LIST]; int n_kill;
    long notify_nrs[MAX_LIST]; int n_notify;
    char work_path[4096];
    unsigned long long work_size;
    int early_work;
    char sized[32][4096]; int n_sized;
    /* Building the sandbox: we start in the host's namespaces. */
    unsigned long clone_flags;
    unsigned long securebits; /* sandboxd.jail.caps.LOCKED_SECUREBITS */
    char hostname[256];
    int loopback, rootless;
    unsigned long long tmp_size, shm_size;
    struct mount_op { char kind; char dest[4096]; char source[4096]; int writable, optional, fd;
                      unsigned long long size; } *mounts; int n_mounts;
    char early_workdir[4096];
    char *masks[64]; int n_masks; /* "f:name", "d:name", "r:name" */
    char *devices[16]; int n_devices;
    char *devlinks[16]; int n_devlinks; /* "name=target" */
    int ll, ll_enforced;
    uint64_t ll_handled_fs, ll_handled_net, ll_scoped, ll_file_mask;
    struct { uint64_t access; char path[4096]; } *ll_fs; int n_ll_fs;
    struct { uint64_t access; uint64_t port; } ll_net[256]; int n_ll_net;
};

static struct config cfg;

/* --- a growable buffer and JSON ------------------------------------------------------------ */

struct buf { char *p; size_t n, cap; };

static void buf_grow(struct buf *b, size_t more) {
    if (b->n + more + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + more + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) _exit(EXIT_SETUP_FAILED);
    b->p = p;
    b->cap = cap;
}

static void buf_add(struct buf *b, const char *s, size_t len) {
    buf_grow(b, len);
    memcpy(b->p + b->n, s, len);
    b->n += len;
    b->p[b->n] = 0;
}

static void buf_puts(struct buf *b, const char *s) { buf_add(b, s, strlen(s)); }

static void buf_printf(struct buf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (len < 0) return;
    buf_add(b, tmp, (size_t)len < sizeof tmp ? (size_t)len : sizeof tmp - 1);
}

/* A JSON string; bytes that are not printable ASCII become \u00XX (never invalid UTF-8). */
static void buf_json(struct buf *b, const char *s, size_t len) {
    buf_grow(b, len * 6 + 2);
    char *o = b->p + b->n;
    *o++ = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') { *o++ = '\\'; *o++ = (char)c; }
        else if (c == '\n') { *o++ = '\\'; *o++ = 'n'; }
        else if (c == '\t') { *o++ = '\\'; *o++ = 't'; }
        else if (c < 0x20 || c >= 0x7f) { o += sprintf(o, "\\u%04x", c); }
        else *o++ = (char)c;
    }
    *o++ = '"';
    b->n = (size_t)(o - b->p);
    b->p[b->n] = 0;
}

static void buf_jstr(struct buf *b, const char *s) { buf_json(b, s, strlen(s)); }

static int write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void write_frame(int fd, struct buf *body) {
    unsigned char len[4] = {(unsigned char)(body->n >> 24), (unsigned char)(body->n >> 16),
                            (unsigned char)(body->n >> 8), (unsigned char)body->n};
    struct buf out = {0};
    buf_add(&out, (const char *)len, 4);
    buf_add(&out, body->p, body->n);
    write_all(fd, out.p, out.n);
    free(out.p);
}

/* --- failures: one "error" frame naming the stage, then exit ------------------------------- */

static int report_fd = -1;
static const char *stage = "start";

static void __attribute__((noreturn, format(printf, 3, 4)))
fail(int code, int err, const char *fmt, ...) {
    char detail[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    if (report_fd >= 0) {
        struct buf b = {0};
        buf_puts(&b, "{\"kind\": \"error\", \"stage\": ");
        buf_jstr(&b, stage);
        buf_puts(&b, ", \"detail\": ");
        buf_jstr(&b, detail);
        buf_printf(&b, ", \"errno\": %d, \"exit_code\": %d}", err, code);
        write_frame(report_fd, &b);
    }
    _exit(code);
}

/* The common shape "<what>: <strerror>", as the Python stages word it. */
#define FAIL_ERRNO(...) do { int e_ = errno; char w_[6000]; snprintf(w_, sizeof w_, __VA_ARGS__); \
    fail(EXIT_SETUP_FAILED, e_, "%s: %s", w_, strerror(e_)); } while (0)

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* --- configuration parsing ------------------------------------------------------------------ */

static char *read_fd_all(int fd, size_t *len) {
    struct buf b = {0};
    char chunk[8192];
    if (lseek(fd, 0, SEEK_SET) < 0 && errno != ESPIPE) return NULL;
    for (;;) {
        ssize_t r = read(fd, chunk, sizeof chunk);
        if (r < 0) {
            if (errno == EINTR) continue;
            free(b.p);
            return NULL;
        }
        if (r == 0) break;
        buf_add(&b, chunk, (size_t)r);
    }
    if (!b.p) buf_grow(&b, 1);
    *len = b.n;
    return b.p;
}

static int parse_list(const char *v, long *out, int max) {
    int n = 0;
    while (*v && n < max) {
        char *end;
        long x = strtol(v, &end, 10);
        if (end == v) break;
        out[n++] = x;
        v = *end == ',' ? end + 1 : end;
    }
    return n;
}

static int unhex(const char *in, char *out, size_t cap) {
    size_t n = 0;
    while (in[0] && in[1] && n + 1 < cap) {
        unsigned v;
        if (sscanf(in, "%2x", &v) != 1) return -1;
        out[n++] = (char)v;
        in += 2;
    }
    out[n] = 0;
    return (int)n;
}

/* "a,b,c,..." → up to max fields, in place. */
static int split(char *v, char **out, int max) {
    int n = 0;
    while (n < max) {
        out[n++] = v;
        char *comma = strchr(v, ',');
        if (!comma) break;
        *comma = 0;
        v = comma + 1;
    }
    return n;
}

static void read_config(int fd) {
    size_t len;
    char *text = read_fd_all(fd, &len);
    if (!text) fail(EXIT_SETUP_FAILED, errno, "read the stage configuration: %s", strerror(errno));
    close(fd);
    memset(&cfg, 0, sizeof cfg);
    cfg.ruleset_fd = cfg.bpf_fd = -1;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char *eq = strchr(line, '=');
        if (!eq) continue;
        *eq = 0;
        const char *k = line, *v = eq + 1;
        if (!strcmp(k, "job_fd")) cfg.job_fd = atoi(v);
        else if (!strcmp(k, "report_fd")) cfg.report_fd = atoi(v);
        else if (!strcmp(k, "status_fd")) cfg.status_fd = atoi(v);
        else if (!strcmp(k, "sync_fd")) cfg.sync_fd = atoi(v);
        else if (!strcmp(k, "bpf_fd")) cfg.bpf_fd = atoi(v);
        else if (!strcmp(k, "later_access")) cfg.later_access = strtoull(v, NULL, 10);
        else if (!strcmp(k, "later_file_access")) cfg.later_file_access = strtoull(v, NULL, 10);
        else if (!strcmp(k, "restrict_flags")) cfg.restrict_flags = (unsigned)strtoul(v, NULL, 10);
        else if (!strcmp(k, "seccomp")) cfg.seccomp = atoi(v);
        else if (!strcmp(k, "listener")) cfg.listener = atoi(v);
        else if (!strcmp(k, "default_notifies")) cfg.default_notifies = atoi(v);
        else if (!strcmp(k, "native_arch")) cfg.native_arch = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(k, "kill_nrs")) cfg.n_kill = parse_list(v, cfg.kill_nrs, MAX_LIST);
        else if (!strcmp(k, "notify_nrs")) cfg.n_notify = parse_list(v, cfg.notify_nrs, MAX_LIST);
        else if (!strcmp(k, "work_path")) unhex(v, cfg.work_path, sizeof cfg.work_path);
        else if (!strcmp(k, "work_size")) cfg.work_size = strtoull(v, NULL, 10);
        else if (!strcmp(k, "early_work")) cfg.early_work = atoi(v);
        else if (!strcmp(k, "sized") && cfg.n_sized < 32)
            unhex(v, cfg.sized[cfg.n_sized++], sizeof cfg.sized[0]);
        else if (!strcmp(k, "clone_flags")) cfg.clone_flags = strtoul(v, NULL, 10);
        else if (!strcmp(k, "securebits")) cfg.securebits = strtoul(v, NULL, 10);
        else if (!strcmp(k, "srcfd")) { /* the index-th mount's detached source tree */
            int index = atoi(v);
            const char *comma = strchr(v, ',');
            if (comma && index >= 0 && index < cfg.n_mounts) cfg.mounts[index].fd = atoi(comma + 1);
        }
        else if (!strcmp(k, "hostname")) unhex(v, cfg.hostname, sizeof cfg.hostname);
        else if (!strcmp(k, "loopback")) cfg.loopback = atoi(v);
        else if (!strcmp(k, "rootless")) cfg.rootless = atoi(v);
        else if (!strcmp(k, "tmp_size")) cfg.tmp_size = strtoull(v, NULL, 10);
        else if (!strcmp(k, "shm_size")) cfg.shm_size = strtoull(v, NULL, 10);
        else if (!strcmp(k, "early_workdir")) unhex(v, cfg.early_workdir, sizeof cfg.early_workdir);
        else if (!strcmp(k, "mask") && cfg.n_masks < 64) cfg.masks[cfg.n_masks++] = strdup(v);
        else if (!strcmp(k, "device") && cfg.n_devices < 16) cfg.devices[cfg.n_devices++] = strdup(v);
        else if (!strcmp(k, "devlink") && cfg.n_devlinks < 16) cfg.devlinks[cfg.n_devlinks++] = strdup(v);
        else if (!strcmp(k, "mount")) {
            char *f[7];
            char copy[16384];
            snprintf(copy, sizeof copy, "%s", v);
            if (split(copy, f, 7) != 7) continue;
            cfg.mounts = realloc(cfg.mounts, sizeof *cfg.mounts * (size_t)(cfg.n_mounts + 1));
            struct mount_op *op = &cfg.mounts[cfg.n_mounts++];
            op->kind = f[0][0];
            unhex(f[1], op->dest, sizeof op->dest);
            unhex(f[2], op->source, sizeof op->source);
            op->writable = atoi(f[3]);
            op->optional = atoi(f[4]);
            op->size = strtoull(f[5], NULL, 10);
            op->fd = atoi(f[6]);
        }
        else if (!strcmp(k, "ll")) cfg.ll = atoi(v);
        else if (!strcmp(k, "ll_enforced")) cfg.ll_enforced = atoi(v);
        else if (!strcmp(k, "ll_handled_fs")) cfg.ll_handled_fs = strtoull(v, NULL, 10);
        else if (!strcmp(k, "ll_handled_net")) cfg.ll_handled_net = strtoull(v, NULL, 10);
        else if (!strcmp(k, "ll_scoped")) cfg.ll_scoped = strtoull(v, NULL, 10);
        else if (!strcmp(k, "ll_file_mask")) cfg.ll_file_mask = strtoull(v, NULL, 10);
        else if (!strcmp(k, "llfs")) {
            char *comma = strchr(v, ',');
            if (!comma) continue;
            cfg.ll_fs = realloc(cfg.ll_fs, sizeof *cfg.ll_fs * (size_t)(cfg.n_ll_fs + 1));
            cfg.ll_fs[cfg.n_ll_fs].access = strtoull(v, NULL, 10);
            unhex(comma + 1, cfg.ll_fs[cfg.n_ll_fs].path, sizeof cfg.ll_fs[0].path);
            cfg.n_ll_fs++;
        }
        else if (!strcmp(k, "llnet") && cfg.n_ll_net < 256) {
            char *comma = strchr(v, ',');
            if (!comma) continue;
            cfg.ll_net[cfg.n_ll_net].access = strtoull(v, NULL, 10);
            cfg.ll_net[cfg.n_ll_net].port = strtoull(comma + 1, NULL, 10);
            cfg.n_ll_net++;
        }
    }
    free(text);
}

/* --- stages shared by the init and the program ----------------------------------------------- */

static void default_signals(void) {
    /* execve keeps ignored dispositions and the mask: the Python child ignored SIGPIPE and
     * SIGXFSZ, which would change how `yes | head` and the file-size limit behave. */
    for (int s = 1; s < SIGRTMIN; s++)
        if (s != SIGKILL && s != SIGSTOP) signal(s, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

static int cap_last_cap(void) {
    int fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 63;
    char text[16] = {0};
    ssize_t r = read(fd, text, sizeof text - 1);
    close(fd);
    return r > 0 ? atoi(text) : 63;
}

static void lock_down(void) {
    /* uid 0 of the namespace must never regain capabilities on execve: root semantics off. */
    if (prctl(PR_SET_SECUREBITS, cfg.securebits, 0, 0, 0) < 0) FAIL_ERRNO("lock capabilities down");
    int last = cap_last_cap();
    /* Emptying the bounding set needs CAP_SETPCAP, which we still hold: before capset. */
    for (int cap = 0; cap <= last; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) FAIL_ERRNO("lock capabilities down");
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0) FAIL_ERRNO("lock capabilities down");
}

static void drop_all(void) {
    if (prctl(PR_CAPBSET_READ, 0, 0, 0, 0) == 1) lock_down();
    struct cap_header_ h = {CAP_VERSION_3, 0};
    struct cap_data_ d[2];
    memset(d, 0, sizeof d);
    /* Every set emptied: the job holds no capability, even over its own namespaces. */
    if (syscall(SYS_capset, &h, d) < 0) FAIL_ERRNO("drop capabilities");
}

static void lock_privileges(void) {
    /* execve can never again grant privileges; seccomp and Landlock require it. */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 || prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
        FAIL_ERRNO("set no_new_privs and parent-death signal");
    /* The spawner holds the write end until we exec: a hang-up means it died before the
     * death signal was armed. */
    struct pollfd p = {cfg.sync_fd, POLLIN, 0};
    if (poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLERR)))
        fail(EXIT_SETUP_FAILED, 0, "the spawner went away during set-up");
}

/* --- the init (PID 1) ----------------------------------------------------------------------------- */

struct kill_record { int pid, nr; uint32_t arch; int main; };

static int in_list(long nr, const long *list, int n) {
    for (int i = 0; i < n; i++)
        if (list[i] == nr) return 1;
    return 0;
}

static int thread_group(int tid) {
    char path[64], text[4096];
    snprintf(path, sizeof path, "/proc/%d/status", tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return tid;
    ssize_t r = read(fd, text, sizeof text - 1);
    close(fd);
    if (r <= 0) return tid;
    text[r] = 0;
    char *t = strstr(text, "\nTgid:");
    return t ? atoi(t + 6) : tid;
}

static int take_listener(int handoff, int program) {
    int number;
    size_t got = 0;
    while (got < sizeof number) {
        ssize_t r = read(handoff, (char *)&number + got, sizeof number - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1; /* the program died in set-up */
        got += (size_t)r;
    }
    int pidfd = (int)syscall(SYS_pidfd_open, program, 0);
    /* Copy the program's listener into our table: only we, outside its Landlock domain and
     * non-dumpable, may answer (and kill for) its filter. */
    int listener = pidfd < 0 ? -1 : (int)syscall(SYS_pidfd_getfd, pidfd, number, 0);
    if (pidfd >= 0) close(pidfd);
    /* Fail closed: the program refuses to run without a listener in our hands. */
    if (write(handoff, listener < 0 ? "n" : "k", 1) != 1 && listener >= 0) {
        close(listener);
        return -1;
    }
    return listener;
}

static void __attribute__((noreturn)) become_init(int program, int handoff) {
    /* Not dumpable: the program (same uid) must not read our memory. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    /* Hold none of the job's stdio: a reader of its stdout sees EOF when the job is done. */
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
        for (int fd = 0; fd < 3; fd++) dup2(null, fd);
        close(null);
    }
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    int listener = handoff >= 0 ? take_listener(handoff, program) : -1;
    if (handoff >= 0) close(handoff);
    struct kill_record kills[MAX_RECORDED_KILLS];
    int n_kills = 0;
    struct { uint32_t arch; int nr; unsigned count; } denied[64];
    int n_denied = 0;
    for (;;) {
        for (;;) { /* reap everything that has ended */
            int status;
            pid_t pid = waitpid(-1, &status, WNOHANG);
            if (pid < 0 && errno == EINTR) continue;
            if (pid < 0) { pid = program; status = 0xFF00; }
            if (pid == 0) break;
            if (pid != program) continue;
            struct buf b = {0};
            buf_printf(&b, "{\"kind\": \"exit\", \"wait_status\": %d, \"full_tmpfs\": [", status);
            int first = 1;
            for (int i = 0; i < cfg.n_sized; i++) {
                struct statvfs v;
                if (statvfs(cfg.sized[i], &v) == 0 && (v.f_bavail == 0 || v.f_favail == 0)) {
                    if (!first) buf_puts(&b, ", ");
                    buf_jstr(&b, cfg.sized[i]);
                    first = 0;
                }
            }
            buf_puts(&b, "]");
            if (cfg.seccomp) {
                buf_puts(&b, ", \"seccomp_kills\": [");
                for (int i = 0; i < n_kills; i++)
                    buf_printf(&b, "%s{\"pid\": %d, \"nr\": %d, \"arch\": %u, \"main\": %s}", i ? ", " : "",
                               kills[i].pid, kills[i].nr, kills[i].arch, kills[i].main ? "true" : "false");
                buf_puts(&b, "], \"seccomp_denied\": {");
                for (int i = 0; i < n_denied; i++)
                    buf_printf(&b, "%s\"%u:%d\": %u", i ? ", " : "", denied[i].arch, denied[i].nr, denied[i].count);
                buf_puts(&b, "}");
            }
            buf_puts(&b, "}");
            write_frame(cfg.status_fd, &b);
            _exit(0);
        }
        struct pollfd p[2] = {{sfd, POLLIN, 0}, {listener, POLLIN, 0}};
        if (poll(p, listener >= 0 ? 2 : 1, -1) < 0) continue;
        if (p[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) > 0) {}
        }
        if (listener >= 0 && (p[1].revents & POLLIN)) {
            struct notif_ n;
            memset(&n, 0, sizeof n); /* RECV wants it zeroed */
            if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV_, &n) < 0) continue;
            int kill_it = n.arch != cfg.native_arch || (n.nr & 0x40000000) || in_list(n.nr, cfg.kill_nrs, cfg.n_kill)
                          || !(in_list(n.nr, cfg.notify_nrs, cfg.n_notify) || cfg.default_notifies);
            if (kill_it) {
                /* Kill before answering: the call never runs, and its whole thread group goes. */
                kill((pid_t)n.pid, SIGKILL);
                if (n_kills < MAX_RECORDED_KILLS)
                    kills[n_kills++] = (struct kill_record){(int)n.pid, n.nr, n.arch,
                                                            thread_group((int)n.pid) == program};
                continue;
            }
            int i;
            for (i = 0; i < n_denied; i++)
                if (denied[i].arch == n.arch && denied[i].nr == n.nr) break;
            if (i == n_denied && n_denied < 64) denied[n_denied++] = (typeof(denied[0])){n.arch, n.nr, 0};
            if (i < 64) denied[i].count++;
            struct notif_resp_ r = {n.id, 0, -EPERM, 0};
            /* The profile's own NOTIFY rules: the call is refused, never run on its behalf. */
            ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND_, &r);
        } else if (listener >= 0 && (p[1].revents & (POLLHUP | POLLERR))) {
            close(listener);
            listener = -1;
        }
    }
}

/* --- the program (PID 2) -------------------------------------------------------------------------- */

struct job {
    char **argv; int argc;
    char **envp; int envc;
    struct { int resource; char name[16]; long long soft, hard; } rlimits[16]; int n_rlimits;
    const char *host_workdir;
    const char *exec_error; /* the spawner found argv/env execve could not take */
    int stdio[3];
    int tree;
};

static const struct { const char *name; int resource; } RESOURCES[] = {
    {"nofile", RLIMIT_NOFILE}, {"stack", RLIMIT_STACK}, {"core", RLIMIT_CORE}, {"fsize", RLIMIT_FSIZE},
    {"memlock", RLIMIT_MEMLOCK}, {"msgqueue", RLIMIT_MSGQUEUE}, {"cpu", RLIMIT_CPU}, {"nproc", RLIMIT_NPROC},
    {"as", RLIMIT_AS},
};

static void receive_job(struct job *job) {
    char *message = malloc(JOB_MESSAGE_MAX);
    if (!message) fail(EXIT_SETUP_FAILED, ENOMEM, "no memory for the job");
    union { char space[CMSG_SPACE(4 * sizeof(int))]; struct cmsghdr align; } control;
    struct iovec iov = {message, JOB_MESSAGE_MAX};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space,
                         .msg_controllen = sizeof control.space};
    ssize_t n;
    do n = recvmsg(cfg.job_fd, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0) FAIL_ERRNO("receive the job");
    if (n == 0) _exit(0); /* the spawner let this sandbox go unused */
    int fds[4] = {-1, -1, -1, -1}, nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < count && nfds < 4; i++) memcpy(&fds[nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        }
    if (nfds < 3) fail(EXIT_SETUP_FAILED, 0, "the job came without its stdio");
    memcpy(job->stdio, fds, sizeof job->stdio);
    job->tree = -1;
    int argc = 0, envc = 0;
    for (ssize_t i = 0; i < n;) {
        size_t len = strnlen(message + i, (size_t)(n - i));
        if (message[i] == 'a') argc++;
        else if (message[i] == 'e') envc++;
        i += (ssize_t)len + 1;
    }
    job->argv = calloc((size_t)argc + 1, sizeof(char *));
    job->envp = calloc((size_t)envc + 1, sizeof(char *));
    job->argc = job->envc = job->n_rlimits = 0;
    job->host_workdir = job->exec_error = NULL;
    for (ssize_t i = 0; i < n;) {
        size_t len = strnlen(message + i, (size_t)(n - i));
        if (i + (ssize_t)len >= n) break; /* an unterminated record: ignore it */
        char tag = message[i], *value = message + i + 1;
        if (tag == 'a') job->argv[job->argc++] = value;
        else if (tag == 'e') job->envp[job->envc++] = value;
        else if (tag == 'w') job->host_workdir = value;
        else if (tag == 't') job->tree = nfds > 3 ? fds[3] : -1;
        else if (tag == 'x') job->exec_error = value;
        else if (tag == 'r' && job->n_rlimits < 16) {
            char name[16];
            long long soft, hard;
            if (sscanf(value, "%15s %lld %lld", name, &soft, &hard) == 3) {
                int k = job->n_rlimits++;
                snprintf(job->rlimits[k].name, sizeof job->rlimits[k].name, "%s", name);
                job->rlimits[k].resource = -1;
                for (size_t r = 0; r < sizeof RESOURCES / sizeof RESOURCES[0]; r++)
                    if (!strcmp(RESOURCES[r].name, name)) job->rlimits[k].resource = RESOURCES[r].resource;
                job->rlimits[k].soft = soft;
                job->rlimits[k].hard = hard;
            }
        }
        i += (ssize_t)len + 1;
    }
    if (job->argc == 0) fail(EXIT_SETUP_FAILED, 0, "the job has no argv");
}

static void tmpfs(const char *target, unsigned long long size, const char *mode, const char *what,
                  unsigned long flags);

static const char *attach_work(struct job *job) {
    const char *kind;
    if (job->tree >= 0) {
        /* Still holding CAP_SYS_ADMIN over our mount namespace: attach the job's work dir. */
        if (syscall(SYS_move_mount, job->tree, "", AT_FDCWD, cfg.work_path, MOVE_MOUNT_F_EMPTY_PATH_) < 0)
            FAIL_ERRNO("attach %s on %s", job->host_workdir ? job->host_workdir : "the work directory", cfg.work_path);
        close(job->tree);
        kind = "bind (idmapped)";
    } else if (cfg.early_work) {
        kind = "bind";
    } else {
        char what[4200];
        snprintf(what, sizeof what, "mount tmpfs on %s", cfg.work_path);
        tmpfs(cfg.work_path, cfg.work_size, "0755", what, 0); /* this job's alone */
        kind = "tmpfs";
    }
    if (chdir(cfg.work_path) < 0) FAIL_ERRNO("chdir %s", cfg.work_path);
    return kind;
}

static void apply_rlimits(struct job *job, struct buf *applied) {
    buf_puts(applied, "{");
    for (int i = 0; i < job->n_rlimits; i++) {
        if (job->rlimits[i].resource < 0) {
            errno = EINVAL;
            FAIL_ERRNO("setrlimit %s", job->rlimits[i].name);
        }
        struct rlimit r = {job->rlimits[i].soft < 0 ? RLIM_INFINITY : (rlim_t)job->rlimits[i].soft,
                           job->rlimits[i].hard < 0 ? RLIM_INFINITY : (rlim_t)job->rlimits[i].hard};
        if (setrlimit(job->rlimits[i].resource, &r) < 0) FAIL_ERRNO("setrlimit %s", job->rlimits[i].name);
        getrlimit(job->rlimits[i].resource, &r);
        buf_printf(applied, "%s\"%s\": [%lld, %lld]", i ? ", " : "", job->rlimits[i].name,
                   r.rlim_cur == RLIM_INFINITY ? -1LL : (long long)r.rlim_cur,
                   r.rlim_max == RLIM_INFINITY ? -1LL : (long long)r.rlim_max);
    }
    buf_puts(applied, "}");
}

static int enforce_landlock(void) {
    if (cfg.ruleset_fd < 0) return 0;
    if (cfg.later_access) {
        /* The work path's rule waited for its mount (Landlock does not see through a hidden
         * mount point): add it now that the job's work directory is attached. */
        int fd = open(cfg.work_path, O_PATH | O_CLOEXEC);
        if (fd < 0)
            fail(EXIT_SETUP_FAILED, errno, "Landlock: [Errno %d] landlock rule path cannot be opened: %s: '%s'",
                 errno, strerror(errno), cfg.work_path);
        struct stat st;
        uint64_t access = cfg.later_access;
        if (fstat(fd, &st) == 0 && !S_ISDIR(st.st_mode)) access = cfg.later_file_access;
        struct path_beneath_ attr = {access, fd};
        if (access && syscall(SYS_landlock_add_rule, cfg.ruleset_fd, LANDLOCK_RULE_PATH_BENEATH_, &attr, 0) < 0)
            fail(EXIT_SETUP_FAILED, errno, "Landlock: [Errno %d] landlock_add_rule: %s: '%s'", errno,
                 strerror(errno), cfg.work_path);
        close(fd);
    }
    /* Confine this process and everything it starts to the policy's paths and ports. */
    if (syscall(SYS_landlock_restrict_self, cfg.ruleset_fd, cfg.restrict_flags) < 0)
        fail(EXIT_SETUP_FAILED, errno, "Landlock: [Errno %d] landlock_restrict_self: %s", errno, strerror(errno));
    close(cfg.ruleset_fd);
    cfg.ruleset_fd = -1;
    return 1;
}

static void install_stdio(struct job *job) {
    int moved[3];
    /* Move every source above 2 first, so dup2 onto 0-2 cannot clobber a later source. */
    for (int i = 0; i < 3; i++) {
        moved[i] = job->stdio[i] <= 2 ? fcntl(job->stdio[i], F_DUPFD_CLOEXEC, 3) : job->stdio[i];
        if (moved[i] < 0) FAIL_ERRNO("install stdio and close other fds");
    }
    for (int i = 0; i < 3; i++)
        if (dup2(moved[i], i) < 0) FAIL_ERRNO("install stdio and close other fds");
    /* Everything above 2 closes at execve: CLOEXEC, since the report pipe is still needed. */
    if (syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC_) < 0) FAIL_ERRNO("install stdio and close other fds");
}

/* Load the filter; with a listener, tell the init its number and return it (-1 without):
 * the init copies it while we write our report, and ``finish_handoff`` waits for that. */
static int load_seccomp(struct sock_fprog_ *prog, int handoff) {
    /* Last of the job's stages: nothing after it needs a call the filter may refuse. */
    if (!cfg.listener) {
        if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER_, 0, prog) < 0)
            fail(EXIT_SETUP_FAILED, errno, "seccomp: %s", strerror(errno));
        return -1;
    }
    /* The init takes the listener with pidfd_getfd, which needs us dumpable (the id change
     * cleared it; execve sets it anew). */
    prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
    int listener = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER_, SECCOMP_FILTER_FLAG_NEW_LISTENER_, prog);
    if (listener < 0) fail(EXIT_SETUP_FAILED, errno, "seccomp: %s", strerror(errno));
    if (write(handoff, &listener, sizeof listener) != sizeof listener)
        fail(EXIT_SETUP_FAILED, 0, "seccomp: the job's init could not take the notification listener");
    return listener;
}

/* Never exec holding our own listener: the init must have its copy first (fail closed). */
static void finish_handoff(int listener, int handoff) {
    if (listener < 0) return;
    char ack = 0;
    if (read(handoff, &ack, 1) != 1 || ack != 'k')
        fail(EXIT_SETUP_FAILED, 0, "seccomp: the job's init could not take the notification listener");
    close(listener);
    close(handoff);
}

static void add_file(struct buf *b, const char *key, const char *path, int first) {
    buf_printf(b, "%s\"%s\": ", first ? "" : ", ", key);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    size_t len = 0;
    char *text = fd < 0 ? NULL : read_fd_all(fd, &len);
    if (fd >= 0) close(fd);
    if (!text) {
        char msg[128];
        snprintf(msg, sizeof msg, "unreadable: %s", strerror(errno));
        buf_jstr(b, msg);
        return;
    }
    buf_json(b, text, len);
    free(text);
}

static void exec_job(struct job *job) {
    if (job->exec_error) fail(EXIT_CANNOT_EXECUTE, 0, "%s", job->exec_error);
    const char *file = job->argv[0];
    if (strchr(file, '/')) {
        execve(file, job->argv, job->envp);
        fail(errno == ENOENT ? EXIT_NOT_FOUND : EXIT_CANNOT_EXECUTE, errno, "%s: %s", file, strerror(errno));
    }
    /* PATH from the job's environment, as os.execvpe searches it. */
    const char *path = "/bin:/usr/bin";
    for (int i = 0; i < job->envc; i++)
        if (!strncmp(job->envp[i], "PATH=", 5)) path = job->envp[i] + 5;
    int saved = 0, last = ENOENT;
    char full[8192];
    for (const char *p = path;; p++) {
        const char *end = strchrnul(p, ':');
        int dlen = (int)(end - p);
        snprintf(full, sizeof full, "%.*s%s%s", dlen, p, dlen ? "/" : "", file);
        execve(full, job->argv, job->envp);
        last = errno;
        if (errno != ENOENT && errno != ENOTDIR && !saved) saved = errno;
        if (!*end) break;
        p = end;
    }
    int err = saved ? saved : last;
    fail(err == ENOENT ? EXIT_NOT_FOUND : EXIT_CANNOT_EXECUTE, err, "%s: %s", file, strerror(err));
}

static void __attribute__((noreturn)) run_program(int handoff) {
    struct buf timing = {0};
    double t0 = now_ms(), t;
#define STAGE(name) do { stage = name; } while (0)
#define DONE(name) do { t = now_ms(); buf_printf(&timing, "%s\"%s\": %.3f", timing.n ? ", " : "", name, t - t0); t0 = t; } while (0)
    /* Our parent is the init: if it dies, so do we (it is the namespace's PID 1 anyway). */
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    close(cfg.status_fd);
    STAGE("signals");
    default_signals();
    STAGE("capability bounds");
    lock_down();
    STAGE("seccomp filter");
    struct sock_fprog_ prog = {0, NULL};
    if (cfg.seccomp) {
        size_t len;
        char *bpf = read_fd_all(cfg.bpf_fd, &len);
        if (!bpf || len == 0 || len % 8 || len / 8 > 4096) fail(EXIT_SETUP_FAILED, EINVAL, "bad seccomp program");
        prog.len = (unsigned short)(len / 8);
        prog.filter = (struct sock_filter_ *)bpf;
        close(cfg.bpf_fd);
    }
    struct buf warm = {0};
    buf_puts(&warm, "{\"kind\": \"warm\", \"native\": true}");
    write_frame(report_fd, &warm);

    STAGE("receive job");
    struct job job;
    receive_job(&job);
    t0 = now_ms();
    STAGE("work directory");
    const char *work = attach_work(&job);
    DONE("work directory");
    STAGE("rlimits");
    struct buf rl = {0};
    apply_rlimits(&job, &rl);
    DONE("rlimits");
    STAGE("session");
    /* A new session with no controlling terminal: the job cannot reach a terminal of ours. */
    if (setsid() < 0) fail(EXIT_SETUP_FAILED, errno, "%s", strerror(errno));
    DONE("session");
    STAGE("capabilities");
    drop_all();
    DONE("capabilities");
    STAGE("no_new_privs");
    lock_privileges();
    DONE("no_new_privs");
    STAGE("landlock");
    int landlocked = enforce_landlock();
    DONE("landlock");
    STAGE("fds");
    install_stdio(&job);
    DONE("fds");
    STAGE("seccomp");
    int listener = cfg.seccomp ? load_seccomp(&prog, handoff) : -1;
    DONE("seccomp");

    struct buf b = {0};
    buf_puts(&b, "{\"kind\": \"ready\", \"native\": {\"work\": ");
    buf_jstr(&b, work);
    buf_puts(&b, ", \"rlimits\": ");
    buf_add(&b, rl.p, rl.n);
    buf_printf(&b, ", \"landlock\": %s, \"seccomp\": %s, \"stage_ms\": {%s}}, \"raw\": {",
               landlocked ? "true" : "false", cfg.seccomp ? "true" : "false", timing.p ? timing.p : "");
    add_file(&b, "status", "/proc/self/status", 1);
    add_file(&b, "uid_map", "/proc/self/uid_map", 0);
    add_file(&b, "gid_map", "/proc/self/gid_map", 0);
    add_file(&b, "setgroups", "/proc/self/setgroups", 0);
    add_file(&b, "mountinfo", "/proc/self/mountinfo", 0);
    char host[256] = {0};
    gethostname(host, sizeof host - 1);
    buf_puts(&b, ", \"hostname\": ");
    buf_jstr(&b, host);
    buf_puts(&b, "}, \"namespaces\": {");
    static const char *NAMESPACES[] = {"user", "pid", "mnt", "net", "ipc", "uts", "cgroup"};
    for (int i = 0; i < 7; i++) {
        char path[64], link[256] = {0};
        snprintf(path, sizeof path, "/proc/self/ns/%s", NAMESPACES[i]);
        if (readlink(path, link, sizeof link - 1) < 0) snprintf(link, sizeof link, "unreadable");
        buf_printf(&b, "%s\"%s\": ", i ? ", " : "", NAMESPACES[i]);
        buf_jstr(&b, link);
    }
    buf_puts(&b, "}}");
    stage = "seccomp";
    finish_handoff(listener, handoff);
    write_frame(report_fd, &b);
    stage = "exec";
    exec_job(&job);
    _exit(EXIT_SETUP_FAILED);
}


/* --- building the sandbox — the order of sandboxd.jail.spine's PREPARE_STAGES ---------------------- */

#define BASE "/tmp"

static void mkdirs(const char *path) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            mkdir(tmp, 0755);
            *p = '/';
        }
    mkdir(tmp, 0755);
}

static void make_mountpoint(const char *path, int is_dir) {
    char parent[4096];
    snprintf(parent, sizeof parent, "%s", path);
    char *slash = strrchr(parent, '/');
    if (slash && slash != parent) {
        *slash = 0;
        mkdirs(parent);
    }
    if (is_dir) {
        mkdir(path, 0755);
    } else {
        int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd >= 0) close(fd);
    }
}

static void setattr(const char *path, uint64_t attrs, int recursive, const char *what) {
    struct mount_attr_ a = {attrs, 0, 0, 0};
    /* mount_setattr changes only the bits named, so a source's locked flags (noexec…) stay. */
    if (syscall(SYS_mount_setattr, AT_FDCWD, path, recursive ? AT_RECURSIVE_ : 0, &a, sizeof a) < 0)
        FAIL_ERRNO("%s", what);
}

static void tmpfs(const char *target, unsigned long long size, const char *mode, const char *what,
                  unsigned long flags) {
    mkdirs(target);
    if (size < 4096) size = 4096;
    unsigned long long inodes = size / 4096 < 1024 ? 1024 : size / 4096;
    char data[160];
    snprintf(data, sizeof data, "mode=%s,size=%llu,nr_inodes=%llu", mode, size, inodes);
    /* A fresh tmpfs in our mount namespace: sized and inode-capped, nothing shared with the host. */
    if (mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV | flags, data) < 0) FAIL_ERRNO("%s", what);
}

static void bind_source(int fd, int detached, const char *target, int writable, const char *what) {
    struct stat st;
    if (fstat(fd, &st) < 0) FAIL_ERRNO("%s", what);
    make_mountpoint(target, S_ISDIR(st.st_mode));
    if (detached) {
        /* In our own mount namespace (CAP_SYS_ADMIN over it): attach the spawner's copy. */
        if (syscall(SYS_move_mount, fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH_) < 0) FAIL_ERRNO("%s", what);
        return;
    }
    char proc_path[64];
    snprintf(proc_path, sizeof proc_path, "/proc/self/fd/%d", fd);
    /* Rootless: bind from the fd opened before the base tmpfs hid the host's path. */
    if (mount(proc_path, target, NULL, MS_BIND | MS_REC, NULL) < 0) FAIL_ERRNO("%s", what);
    setattr(target, MOUNT_ATTR_NOSUID_ | MOUNT_ATTR_NODEV_ | (writable ? 0 : MOUNT_ATTR_RDONLY_), 1, what);
}

static int path_exists(const char *p) { struct stat st; return lstat(p, &st) == 0; }
static int is_dir(const char *p) { struct stat st; return stat(p, &st) == 0 && S_ISDIR(st.st_mode); }

static void build_root(struct buf *made) {
    char target[8192], what[8400];
    /* Why first: with shared propagation our mounts would appear on the host, and
     * pivot_root refuses a shared root. */
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) FAIL_ERRNO("make / private");
    int early_fd = -1;
    if (cfg.rootless) { /* open every source before the base tmpfs hides anything under /tmp */
        for (int i = 0; i < cfg.n_mounts; i++) {
            struct mount_op *op = &cfg.mounts[i];
            if (op->kind != 'b') continue;
            op->fd = open(op->source, O_PATH | O_CLOEXEC);
            if (op->fd < 0 && errno != ENOENT) FAIL_ERRNO("open bind source %s", op->source);
        }
        if (cfg.early_workdir[0]) {
            early_fd = open(cfg.early_workdir, O_PATH | O_CLOEXEC);
            if (early_fd < 0 && errno != ENOENT) FAIL_ERRNO("open bind source %s", cfg.early_workdir);
        }
    }
    tmpfs(BASE, 4 << 20, "0755", "mount the root tmpfs", 0);
    buf_puts(made, "[");
    int n_made = 0;
    for (int i = 0; i < cfg.n_mounts; i++) {
        struct mount_op *op = &cfg.mounts[i];
        snprintf(target, sizeof target, BASE "%s", op->dest);
        if (op->kind == 'b') {
            if (op->fd < 0) {
                if (op->optional) continue;
                fail(EXIT_SETUP_FAILED, 0, "bind source %s does not exist", op->source);
            }
            snprintf(what, sizeof what, "bind %s on %s", op->source, op->dest);
            bind_source(op->fd, !cfg.rootless, target, op->writable, what);
            close(op->fd);
            op->fd = -1;
        } else if (op->kind == 't') {
            snprintf(what, sizeof what, "mount tmpfs on %s", op->dest);
            tmpfs(target, op->size, "0755", what, 0);
        } else if (op->kind == 's') {
            char parent[8192];
            snprintf(parent, sizeof parent, "%s", target);
            char *slash = strrchr(parent, '/');
            if (slash && slash != parent) { *slash = 0; mkdirs(parent); }
            char link[4096];
            ssize_t r = readlink(target, link, sizeof link - 1);
            if (r >= 0) {
                link[r] = 0;
                if (!strcmp(link, op->source)) continue; /* already there through a bind of its parent */
            }
            if (symlink(op->source, target) < 0) FAIL_ERRNO("symlink %s -> %s", op->dest, op->source);
        } else {
            fail(EXIT_SETUP_FAILED, 0, "unknown mount kind %c", op->kind);
        }
        if (n_made++) buf_puts(made, ", ");
        buf_jstr(made, op->dest);
    }
    snprintf(target, sizeof target, BASE "%s", cfg.work_path);
    mkdirs(target);
    if (cfg.early_workdir[0]) {
        if (early_fd < 0) fail(EXIT_SETUP_FAILED, 0, "work directory %s does not exist", cfg.early_workdir);
        snprintf(what, sizeof what, "bind %s on %s", cfg.early_workdir, cfg.work_path);
        bind_source(early_fd, 0, target, 1, what);
        close(early_fd);
        if (n_made++) buf_puts(made, ", ");
        buf_jstr(made, cfg.work_path);
    }
    tmpfs(BASE "/tmp", cfg.tmp_size, "1777", "mount tmpfs on /tmp", 0);
    /* /dev: a small tmpfs with the host's harmless device nodes bound in (device nodes
     * cannot be created in a user namespace). */
    tmpfs(BASE "/dev", 1 << 16, "0755", "mount tmpfs on /dev", MS_NOEXEC);
    for (int i = 0; i < cfg.n_devices; i++) {
        char host[64];
        snprintf(target, sizeof target, BASE "/dev/%s", cfg.devices[i]);
        snprintf(host, sizeof host, "/dev/%s", cfg.devices[i]);
        make_mountpoint(target, 0);
        snprintf(what, sizeof what, "bind /dev/%s", cfg.devices[i]);
        if (mount(host, target, NULL, MS_BIND, NULL) < 0) FAIL_ERRNO("%s", what);
    }
    for (int i = 0; i < cfg.n_devlinks; i++) {
        char *eq = strchr(cfg.devlinks[i], '=');
        if (!eq) continue;
        *eq = 0;
        snprintf(target, sizeof target, BASE "/dev/%s", cfg.devlinks[i]);
        if (symlink(eq + 1, target) < 0) FAIL_ERRNO("symlink /dev/%s", cfg.devlinks[i]);
        *eq = '=';
    }
    tmpfs(BASE "/dev/shm", cfg.shm_size, "1777", "mount tmpfs on /dev/shm", 0);
    mkdirs(BASE "/proc");
    /* A proc mount shows its mounter's PID namespace (ours, as its PID 1); the kernel allows
     * it only while the host's full /proc is still reachable, so before the old root goes. */
    if (mount("proc", BASE "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) FAIL_ERRNO("mount /proc");
    buf_printf(made, "%s\"/tmp\", \"/dev\", \"/dev/shm\", \"/proc\"]", n_made ? ", " : "");
    if (chdir(BASE) < 0) FAIL_ERRNO("chdir " BASE);
    /* pivot_root(".", ".") stacks the old root under the new one; detaching it at once
     * leaves no path back to the host's filesystem. */
    if (syscall(SYS_pivot_root, ".", ".") < 0 || umount2(".", MNT_DETACH) < 0) FAIL_ERRNO("pivot_root into the new root");
    if (chdir("/") < 0) FAIL_ERRNO("chdir /");
    for (int i = 0; i < cfg.n_masks; i++) {
        char kind = cfg.masks[i][0];
        const char *name = cfg.masks[i] + 2;
        snprintf(target, sizeof target, "/proc/%s", name);
        snprintf(what, sizeof what, "mask %s", target);
        if (kind == 'f' && path_exists(target)) {
            /* Hide a kernel interface the job has no business reading (as runtimes do). */
            if (mount("/dev/null", target, NULL, MS_BIND, NULL) < 0) FAIL_ERRNO("%s", what);
        } else if (kind == 'd' && is_dir(target)) {
            if (mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, "size=0,mode=0555") < 0)
                FAIL_ERRNO("%s", what);
        } else if (kind == 'r' && path_exists(target)) {
            snprintf(what, sizeof what, "bind %s", target);
            /* A bind onto itself, so the kernel's tunables can be made read-only for the job. */
            if (mount(target, target, NULL, MS_BIND | MS_REC, NULL) < 0) FAIL_ERRNO("%s", what);
            snprintf(what, sizeof what, "make %s read-only", target);
            setattr(target, MOUNT_ATTR_RDONLY_ | MOUNT_ATTR_NOSUID_ | MOUNT_ATTR_NODEV_ | MOUNT_ATTR_NOEXEC_, 1, what);
        }
    }
    /* Last, once everything is mounted on them: nothing can be created in / or /dev. */
    setattr("/dev", MOUNT_ATTR_RDONLY_, 0, "make /dev read-only");
    setattr("/", MOUNT_ATTR_RDONLY_ | MOUNT_ATTR_NOSUID_ | MOUNT_ATTR_NODEV_, 0, "make the root read-only");
}

static void loopback_up(void) {
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0) FAIL_ERRNO("bring loopback up");
    struct ifreq req;
    memset(&req, 0, sizeof req);
    snprintf(req.ifr_name, sizeof req.ifr_name, "lo");
    if (ioctl(sock, SIOCGIFFLAGS, &req) < 0) FAIL_ERRNO("bring loopback up");
    req.ifr_flags |= IFF_UP;
    /* Needs CAP_NET_ADMIN over the new network namespace, which we hold until caps drop. */
    if (ioctl(sock, SIOCSIFFLAGS, &req) < 0) FAIL_ERRNO("bring loopback up");
    close(sock);
}

static void build_ruleset(void) {
    if (!cfg.ll || !cfg.ll_enforced) return;
    struct ruleset_attr_ attr = {cfg.ll_handled_fs, cfg.ll_handled_net, cfg.ll_scoped};
    int rfd = (int)syscall(SYS_landlock_create_ruleset, &attr, sizeof attr, 0);
    if (rfd < 0)
        fail(EXIT_SETUP_FAILED, errno, "Landlock: [Errno %d] landlock_create_ruleset: %s", errno, strerror(errno));
    for (int i = 0; i < cfg.n_ll_fs; i++) {
        const char *path = cfg.ll_fs[i].path;
        if (!strcmp(path, cfg.work_path)) continue; /* added once the job's work dir is mounted */
        int fd = open(path, O_PATH | O_CLOEXEC);
        if (fd < 0)
            fail(EXIT_SETUP_FAILED, errno, "Landlock: [Errno %d] landlock rule path cannot be opened: %s: '%s'",
                 errno, strerror(errno), path);
        uint64_t access = cfg.ll_fs[i].access & cfg.ll_handled_fs;
        struct stat st;
        if (fstat(fd, &st) == 0 && !S_ISDIR(st.st_mode)) access &= cfg.ll_file_mask;
        struct path_beneath_ rule = {access, fd};
        if (access && syscall(SYS_landlock_add_rule, rfd, LANDLOCK_RULE_PATH_BENEATH_, &rule, 0) < 0)
            fail(EXIT_SETUP_FAILED, errno, "Landlock: [Errno %d] landlock_add_rule(access=%llu): %s: '%s'", errno,
                 (unsigned long long)access, strerror(errno), path);
        close(fd);
    }
    for (int i = 0; cfg.ll_handled_net && i < cfg.n_ll_net; i++) {
        struct net_port_ rule = {cfg.ll_net[i].access & cfg.ll_handled_net, cfg.ll_net[i].port};
        if (rule.allowed_access && syscall(SYS_landlock_add_rule, rfd, LANDLOCK_RULE_NET_PORT_, &rule, 0) < 0)
            fail(EXIT_SETUP_FAILED, errno, "Landlock: [Errno %d] landlock_add_rule(tcp port %llu): %s", errno,
                 (unsigned long long)rule.port, strerror(errno));
    }
    cfg.ruleset_fd = rfd;
}

/* We are the sandbox's PID 1, cloned by the helper below: build the sandbox, then go on. */
static void prepare_stages(void) {
    struct buf timing = {0}, made = {0};
    double t0 = now_ms(), t;
    stage = "wait for id maps";
    char byte = 1;
    /* The spawner writes one byte once our id maps and cgroup are in place. */
    if (read(cfg.sync_fd, &byte, 1) != 1 || byte != 0) fail(EXIT_SETUP_FAILED, 0, "the spawner did not release the sandbox");
    DONE("wait for id maps");
    stage = "identity";
    /* Why first: until now we run as the spawner's kernel ids; every later step acts as the
     * mapped, unprivileged id. */
    if (setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0) fail(EXIT_SETUP_FAILED, errno, "%s", strerror(errno));
    DONE("identity");
    stage = "cgroup namespace";
    /* After the spawner placed us in our cgroup: the namespace's root is that cgroup, so the
     * host's cgroup path never shows inside. */
    if (unshare(CLONE_NEWCGROUP) < 0) fail(EXIT_SETUP_FAILED, errno, "%s", strerror(errno));
    DONE("cgroup namespace");
    stage = "mounts";
    build_root(&made);
    DONE("mounts");
    stage = "hostname";
    /* Needs CAP_SYS_ADMIN over the new UTS namespace: before the capabilities are dropped. */
    if (sethostname(cfg.hostname, strlen(cfg.hostname)) < 0 || setdomainname("(none)", 6) < 0) FAIL_ERRNO("set hostname");
    DONE("hostname");
    stage = "network";
    if (cfg.loopback) loopback_up();
    DONE("network");
    stage = "session";
    if (setsid() < 0) fail(EXIT_SETUP_FAILED, errno, "%s", strerror(errno));
    DONE("session");
    stage = "landlock ruleset";
    build_ruleset();
    DONE("landlock ruleset");
    struct buf b = {0};
    buf_puts(&b, "{\"kind\": \"prepared\", \"applied\": {\"mounts\": ");
    buf_add(&b, made.p, made.n);
    buf_printf(&b, "}, \"stage_ms\": {%s}}", timing.p ? timing.p : "");
    write_frame(report_fd, &b);
}

/* The helper the spawner starts with posix_spawn (cheap for the spawner: no copy of its
 * memory): clone the sandbox as the spawner's own child (CLONE_PARENT) in new namespaces,
 * say its pid, and exit. */
static void clone_sandbox(void) {
    stage = "clone into new namespaces";
    /* All the namespaces at once: the user namespace owns the others. */
    long pid = syscall(SYS_clone, cfg.clone_flags | CLONE_PARENT | SIGCHLD, NULL, NULL, NULL, 0);
    if (pid < 0) fail(EXIT_SETUP_FAILED, errno, "clone into new namespaces: %s", strerror(errno));
    if (pid == 0) return; /* the sandbox */
    struct buf b = {0};
    buf_printf(&b, "{\"kind\": \"born\", \"pid\": %ld}", pid);
    write_frame(report_fd, &b);
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "sandboxd-stage: started by sandboxd's spawner only\n");
        return 2;
    }
    read_config(atoi(argv[1]));
    report_fd = cfg.report_fd;
    clone_sandbox();
    prepare_stages();
    stage = "init";
    int pair[2] = {-1, -1};
    if (cfg.listener && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0)
        FAIL_ERRNO("socketpair for the seccomp listener");
    /* SIGCHLD blocked before the fork, so the init's signalfd misses no child; the program
     * empties its mask in its signals stage. */
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    pid_t program = fork();
    if (program < 0) FAIL_ERRNO("fork the program");
    if (program == 0) {
        if (pair[1] >= 0) close(pair[1]);
        run_program(pair[0]);
    }
    /* The init: only the program takes jobs, and the program's execve closes the report pipe. */
    close(cfg.job_fd);
    if (pair[0] >= 0) close(pair[0]);
    if (cfg.ruleset_fd >= 0) close(cfg.ruleset_fd);
    if (cfg.bpf_fd >= 0) close(cfg.bpf_fd);
    for (int s = 1; s < SIGRTMIN; s++)
        if (s != SIGKILL && s != SIGSTOP && s != SIGCHLD) signal(s, SIG_DFL);
    stage = "capabilities";
    drop_all();
    stage = "no_new_privs";
    lock_privileges();
    close(report_fd);
    report_fd = -1;
    become_init(program, pair[1]);
}
