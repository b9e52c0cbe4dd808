"""User namespace: who the job is on the host.

Started as root, the job's uid/gid 0 maps to one unprivileged host id taken from a configured
range, different for every job running at the same time on this host. Started unprivileged,
it maps to the caller's own ids (the only mapping the kernel lets an unprivileged process
write) — or, with ``SANDBOXD_ROOTLESS_IDS=subordinate`` and a range for the caller in
/etc/subuid and /etc/subgid, to one id of that range per job, written by the setuid helpers
newuidmap/newgidmap: the job is then not even the caller (but cannot write the caller's files,
so a work directory must be writable by that id). ``setgroups`` is always denied, so the job
can never drop into a group it was not given.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
from dataclasses import dataclass

DEFAULT_ROOT_RANGE = (2_100_000_000, 65_536)
"""Host ids for jobs when sandboxd runs as root: far above any real user's or subuid range."""


@dataclass(frozen=True)
class IdMapping:
    """``inside`` 0 is ``host_uid``/``host_gid`` on the host; ``count`` ids are mapped."""

    host_uid: int
    host_gid: int
    count: int = 1
    helper: bool = False  # written by newuidmap/newgidmap (a subordinate range)

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


def subordinate_range(path: str, uid: int) -> tuple[int, int] | None:
    """The caller's first range in /etc/subuid or /etc/subgid (by name or number)."""
    import pwd

    try:
        names = {str(uid), pwd.getpwuid(uid).pw_name}
    except KeyError:
        names = {str(uid)}
    try:
        with open(path) as handle:
            for line in handle:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[0] in names and parts[1].isdigit() and parts[2].isdigit():
                    if int(parts[2]) > 0:
                        return int(parts[1]), int(parts[2])
    except OSError:
        return None
    return None


class IdAllocator:
    def __init__(self, root_range: tuple[int, int] = DEFAULT_ROOT_RANGE, rootless_ids: str | None = None) -> None:
        self.rootless = os.geteuid() != 0
        self.start, self.count = root_range
        self.gid_start = self.start
        self.helper = False
        mode = rootless_ids or os.environ.get("SANDBOXD_ROOTLESS_IDS", "self")
        if self.rootless and mode == "subordinate":
            uids = subordinate_range("/etc/subuid", os.geteuid())
            gids = subordinate_range("/etc/subgid", os.geteuid())
            if uids is None or gids is None or not (shutil.which("newuidmap") and shutil.which("newgidmap")):
                raise RuntimeError("SANDBOXD_ROOTLESS_IDS=subordinate needs ranges for this user in /etc/subuid "
                                   "and /etc/subgid and the newuidmap/newgidmap helpers (package uidmap)")
            self.start, self.gid_start, self.count = uids[0], gids[0], min(uids[1], gids[1])
            self.helper = True
        self._next = random.randrange(self.count)

    def lease(self) -> IdLease:
        if self.rootless and not self.helper:
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
            return IdLease(IdMapping(host_id, self.gid_start + offset, helper=self.helper), lock)
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
    if mapping.helper:
        # A subordinate range: only the setuid helpers may write it, after checking the range.
        for helper, host in (("newgidmap", mapping.host_gid), ("newuidmap", mapping.host_uid)):
            done = subprocess.run([helper, str(pid), "0", str(host), str(mapping.count)],
                                  capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if done.returncode != 0:
                raise OSError(1, f"{helper}: {done.stderr.strip() or 'failed'}")
        return
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
