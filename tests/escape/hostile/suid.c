/* suid: installed setuid-root (and with file capabilities) by the escape suite's set-up.
 * Prints the ids and capability sets the kernel gave it, tries to make the most of them,
 * then tries to create argv[1] in a directory only the host's root may write. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    uid_t r, e, s;
    getresuid(&r, &e, &s);
    printf("resuid %u %u %u\n", r, e, s);
    int rc = setresuid(0, 0, 0);
    printf("setresuid %d %s\n", rc, rc ? strerrorname_np(errno) : "ok");
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "Cap", 3) || !strncmp(line, "NoNewPrivs", 10)) printf("status %s", line);
    if (argc > 1) {
        int fd = open(argv[1], O_WRONLY | O_CREAT, 0644);
        printf("privileged-write %s\n", fd >= 0 ? "ok" : strerrorname_np(errno));
    }
    return 0;
}
