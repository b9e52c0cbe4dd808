"""User namespace: who the job is on the host.

Started as root, the job's uid/gid 0 maps to one unprivileged host id taken from a configured
range, different for every job running at the same time on this host. Started unprivileged,
it maps to the caller's own ids (the only mapping the kernel lets an unprivileged process
write). ``setgroups`` is always denied, so the job can never drop into a group it was not given.
"""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass

DEFAULT_ROOT_RANGE = (2_100_000_000, 65_536)
"""Host ids for jobs when sandboxd runs as root: far above any real user's or subuid range."""


@dataclass(frozen=True)
class IdMapping:
    """``inside`` 0 is ``host_uid``/``host_gid`` on the host; ``count`` ids are mapped."""

    host_uid: int
    host_gid: int
    count: int = 1

    def uid_map(self) -> str:
        return f"0 {self.host_uid} {self.count}\n"

    def gid_map(self) -> str:
        return f"0 {self.host_gid} {self.count}\n"


class IdLease:
    """A host id held for one job: an abstract unix socket bound to a name derived from the
    id is the lock, so two spawners on one host never hand out the same id, and the kernel
    releases it when the holder dies."""

    def __init__(self, mapping: IdMapping, lock: socket.socket | None) -> None:
        self.mapping = mapping
        self._lock = lock

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


class IdAllocator:
    def __init__(self, root_range: tuple[int, int] = DEFAULT_ROOT_RANGE) -> None:
        self.rootless = os.geteuid() != 0
        self.start, self.count = root_range
        self._next = random.randrange(self.count)

    def lease(self) -> IdLease:
        if self.rootless:
            # Unprivileged: the kernel allows exactly one mapping, our own ids.
            return IdLease(IdMapping(os.geteuid(), os.getegid()), None)
        for _ in range(self.count):
            offset = self._next
            self._next = (self._next + 1) % self.count
            host_id = self.start + offset
            lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                lock.bind(f"\0sandboxd-hostid-{host_id}")
            except OSError:
                lock.close()
                continue
            return IdLease(IdMapping(host_id, host_id), lock)
        raise RuntimeError(f"all {self.count} host ids of the range starting at {self.start} are in use")


def write_id_maps(pid: int, mapping: IdMapping) -> None:
    """Runs in the spawner right after clone: the child waits until its maps exist.

    Why here: only a process in the parent namespace may map ids other than its own, and the
    child must not touch anything before it stops being host uid 0 in kernel terms.
    """
    # setgroups must be denied before gid_map can be written by an unprivileged writer, and we
    # deny it always so the job can never call setgroups(2) to shed a group.
    with open(f"/proc/{pid}/setgroups", "w") as handle:
        handle.write("deny")
    with open(f"/proc/{pid}/gid_map", "w") as handle:
        handle.write(mapping.gid_map())
    with open(f"/proc/{pid}/uid_map", "w") as handle:
        handle.write(mapping.uid_map())


def become_root_in_namespace() -> None:
    """Child: take uid/gid 0 of the new namespace (an unprivileged id on the host).

    Why first: until this call the child still runs as the spawner's kernel uid; every later
    step must act as the mapped, unprivileged id.
    """
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
