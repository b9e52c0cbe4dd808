"""PID 1 of the job: a tiny reaper, so the program runs as PID 2 with ordinary signals.

Why not run the program as PID 1: the kernel protects a namespace's init from every signal
it has no handler for, even from the kernel's soft limits — a program that is PID 1 cannot
kill itself with SIGTERM, `abort()` ends in SIGSEGV instead of SIGABRT, SIGXFSZ and SIGXCPU
are dropped, and orphans (double-forked daemons) would be its to reap. bubblewrap and
container inits make the same choice.

The init is this same (already confined) process after the last privileged stage: it has
no capabilities, no_new_privs, Landlock, and holds none of the job's stdio. It waits for the
program, reaps every orphan, writes the program's exact wait status on the status pipe and
exits; its exit ends the namespace, so nothing the job started outlives it.
"""

from __future__ import annotations

import os

from sandboxd.jail import report
from sandboxd.jail import syscalls as sc

PR_SET_DUMPABLE = 4


def become_init(program_pid: int, status_fd: int) -> None:
    """Never returns."""
    try:
        # Not dumpable: the program (same uid) must not read our memory or /proc/1/environ,
        # which still holds the spawner's environment.
        sc.prctl(PR_SET_DUMPABLE, 0)
        # Hold none of the job's stdio: a reader of its stdout must see EOF when the
        # program and its children are done, not when we are.
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        while True:
            pid, status = os.waitpid(-1, 0)
            if pid == program_pid:
                report.write_frame(status_fd, "exit", {"wait_status": status})
                os._exit(0)
    except BaseException:
        os._exit(125)
