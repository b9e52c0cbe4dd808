"""no_new_privs and the parent-death signal."""

from __future__ import annotations

import select
import signal

from sandboxd.jail import syscalls as sc
from sandboxd.jail.failure import SetupFailure, failed


def lock_privileges(spawner_alive_fd: int) -> None:
    try:
        # execve can never again grant privileges (setuid bits, file caps); seccomp and
        # Landlock both require it of an unprivileged process.
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
        # Why here: setresuid(2) clears the death signal, so it goes after the last credential
        # change. If the spawner dies the job dies with it.
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError as exc:
        raise failed("set no_new_privs and parent-death signal", exc) from None
    # The spawner may have died before the death signal was armed; it holds the other end of
    # this pipe until we exec, so a hang-up means it is gone.
    poller = select.poll()
    poller.register(spawner_alive_fd, select.POLLIN)
    for _fd, events in poller.poll(0):
        if events & (select.POLLHUP | select.POLLERR):
            raise SetupFailure("the spawner went away during set-up")
