"""Thin ctypes wrappers for the Linux system calls Python 3.11 does not expose.

Every wrapper raises ``OSError`` with the real errno on failure and returns the raw
result otherwise. Nothing here decides policy; the layer modules do.

The module is imported by the spawner before any job is cloned: after ``pivot_root`` or
Landlock a lazy import would fail, so nothing here imports lazily.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

_MACHINE = platform.machine()

# System call numbers for the architectures sandboxd supports.
_NR = {
    "x86_64": {
        "clone": 56,
        "pivot_root": 155,
        "capset": 126,
        "capget": 125,
        "seccomp": 317,
        "pidfd_getfd": 438,
        "open_tree": 428,
        "move_mount": 429,
        "pidfd_send_signal": 424,
        "pidfd_open": 434,
        "clone3": 435,
        "close_range": 436,
        "mount_setattr": 442,
        "landlock_create_ruleset": 444,
        "landlock_add_rule": 445,
        "landlock_restrict_self": 446,
    },
    "aarch64": {
        "clone": 220,
        "pivot_root": 41,
        "capset": 91,
        "capget": 90,
        "seccomp": 277,
        "pidfd_getfd": 438,
        "open_tree": 428,
        "move_mount": 429,
        "pidfd_send_signal": 424,
        "pidfd_open": 434,
        "clone3": 435,
        "close_range": 436,
        "mount_setattr": 442,
        "landlock_create_ruleset": 444,
        "landlock_add_rule": 445,
        "landlock_restrict_self": 446,
    },
}
if _MACHINE not in _NR:  # pragma: no cover - refused up front rather than misbehaving later
    raise ImportError(f"sandboxd does not support the {_MACHINE} architecture")
NR = _NR[_MACHINE]

# clone(2) / unshare(2) flags.
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_PIDFD = 0x00001000
CLONE_INTO_CGROUP = 0x200000000

# mount(2) flags.
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
MNT_DETACH = 0x2

# mount_setattr(2).
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8

# prctl(2) options.
PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_GET_SECUREBITS = 27
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# close_range(2) flags.
CLOSE_RANGE_CLOEXEC = 1 << 2


def _check(result: int) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def _path(p: str | bytes | None) -> bytes | None:
    if p is None:
        return None
    return os.fsencode(p)


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)))


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)))


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    _check(
        _libc.mount(
            _path(source), _path(target), _path(fstype), ctypes.c_ulong(flags), _path(data)
        )
    )


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_path(target), ctypes.c_int(flags)))


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_syscall(ctypes.c_long(NR["pivot_root"]), _path(new_root), _path(put_old)))


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount_setattr(path: str, attr_set: int, *, recursive: bool = True) -> None:
    """Set mount attributes; only the named bits change, so locked flags survive."""
    attr = _MountAttr(attr_set, 0, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    _check(
        _syscall(
            ctypes.c_long(NR["mount_setattr"]),
            ctypes.c_int(-100),  # AT_FDCWD
            _path(path),
            ctypes.c_uint(flags),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        )
    )


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))))


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_libc.setdomainname(raw, ctypes.c_size_t(len(raw))))


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(
        _libc.prctl(
            ctypes.c_int(option),
            ctypes.c_ulong(arg2),
            ctypes.c_ulong(arg3),
            ctypes.c_ulong(arg4),
            ctypes.c_ulong(arg5),
        )
    )


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def capset_empty() -> None:
    """Clear the effective, permitted and inheritable sets of the calling thread."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_syscall(ctypes.c_long(NR["capset"]), ctypes.byref(header), ctypes.byref(data)))


def clone_process(flags: int) -> tuple[int, int]:
    """fork-like clone(2): the child continues on a copy of the caller's stack.

    Returns ``(pid, pidfd)`` in the parent and ``(0, -1)`` in the child. ``CLONE_PIDFD`` is
    always added so the parent gets a pidfd that cannot refer to a recycled pid.
    Only call this from a single-threaded process (the spawner): it skips Python's
    fork hooks, which is safe only when no other thread can hold a lock.
    """
    pidfd = ctypes.c_int(-1)
    # x86_64 and aarch64 both take (flags, stack, parent_tid, ...); with CLONE_PIDFD the
    # pidfd is stored through parent_tid. A NULL stack means "copy the caller's".
    pid = _check(
        _syscall(
            ctypes.c_long(NR["clone"]),
            ctypes.c_ulong(flags | CLONE_PIDFD | 17),  # 17 = SIGCHLD on exit
            None,
            ctypes.byref(pidfd),
            None,
            None,
        )
    )
    if pid == 0:
        return 0, -1
    return pid, pidfd.value


def pidfd_open(pid: int) -> int:
    return _check(_syscall(ctypes.c_long(NR["pidfd_open"]), ctypes.c_int(pid), ctypes.c_uint(0)))


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    _check(
        _syscall(
            ctypes.c_long(NR["pidfd_send_signal"]),
            ctypes.c_int(pidfd),
            ctypes.c_int(sig),
            None,
            ctypes.c_uint(0),
        )
    )


def close_range(first: int, last: int = 0xFFFFFFFF, flags: int = 0) -> None:
    _check(
        _syscall(
            ctypes.c_long(NR["close_range"]),
            ctypes.c_uint(first),
            ctypes.c_uint(last),
            ctypes.c_uint(flags),
        )
    )


def raw_syscall(nr: int, *args: int) -> int:
    """Call a system call by number; returns the raw result or raises OSError."""
    return _check(_syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args)))


def get_errno() -> int:
    return ctypes.get_errno()


# open_tree(2) / move_mount(2), for idmapped work directories.
OPEN_TREE_CLONE = 1
AT_EMPTY_PATH = 0x1000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_IDMAP = 0x100000


def open_tree(path: str, flags: int) -> int:
    return _check(_syscall(ctypes.c_long(NR["open_tree"]), ctypes.c_int(-100), _path(path), ctypes.c_uint(flags)))


def mount_setattr_fd(fd: int, attr_set: int, userns_fd: int = 0, *, recursive: bool = True) -> None:
    attr = _MountAttr(attr_set, 0, 0, userns_fd)
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    _check(_syscall(ctypes.c_long(NR["mount_setattr"]), ctypes.c_int(fd), b"", ctypes.c_uint(flags),
                    ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))))


def move_mount_fd(fd: int, target: str) -> None:
    _check(_syscall(ctypes.c_long(NR["move_mount"]), ctypes.c_int(fd), b"", ctypes.c_int(-100),
                    _path(target), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)))


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    """A copy of another process's fd (needs ptrace-attach rights over it)."""
    return _check(_syscall(ctypes.c_long(NR["pidfd_getfd"]), ctypes.c_int(pidfd), ctypes.c_int(target_fd),
                           ctypes.c_uint(0)))
