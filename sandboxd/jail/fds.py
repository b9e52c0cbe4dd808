"""The job's stdio on 0-2 and nothing else."""

from __future__ import annotations

import os

from sandboxd.jail import syscalls as sc
from sandboxd.jail.failure import failed


def install_stdio(stdio: tuple[int, int, int]) -> None:
    try:
        # Move every source above 2 first, so dup2 onto 0-2 cannot clobber a later source.
        moved = [os.dup(fd) if fd <= 2 else fd for fd in stdio]
        for target, fd in enumerate(moved):
            os.dup2(fd, target, inheritable=True)
        # Everything above 2 closes at execve. CLOEXEC rather than close: the report pipe
        # must stay usable until exec, and close_range after seccomp may be denied.
        sc.close_range(3, 0xFFFFFFFF, sc.CLOSE_RANGE_CLOEXEC)
    except OSError as exc:
        raise failed("install stdio and close other fds", exc) from None
