"""Install a precompiled seccomp BPF program in the calling process (runs in the job child).

Called just before ``execve``, after ``PR_SET_NO_NEW_PRIVS`` was set by the caller. Everything
is imported at module load: after ``pivot_root`` a lazy import would fail. The BPF bytes come
from :func:`sandboxd.policy.seccomp_compile.compile_profile` in the supervisor.
"""

from __future__ import annotations

import ctypes
import os

from sandboxd.jail import syscalls as _sc

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1 << 0
SECCOMP_FILTER_FLAG_LOG = 1 << 1
SECCOMP_FILTER_FLAG_SPEC_ALLOW = 1 << 2
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3

_SOCK_FILTER_SIZE = 8  # struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }
_BPF_MAXINSNS = 4096

_NR_SECCOMP = ctypes.c_long(_sc.NR["seccomp"])
_SET_MODE_FILTER = ctypes.c_uint(SECCOMP_SET_MODE_FILTER)


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def load_filter(bpf: bytes, *, log: bool = False, listener: bool = False) -> int:
    """Install ``bpf`` (raw ``struct sock_filter`` array) with ``seccomp(SECCOMP_SET_MODE_FILTER)``.

    ``log=True`` adds ``SECCOMP_FILTER_FLAG_LOG`` (denied actions other than ALLOW are audited).
    ``listener=True`` asks for a user-notification fd (returned; -1 otherwise): the filter's
    NOTIFY actions then wait for whoever holds it (``sandboxd.jail.init``).
    Raises ``ValueError`` for a malformed program and ``OSError`` with the kernel's errno
    (EACCES without no_new_privs, EINVAL for a program the kernel rejects).
    """
    n, rest = divmod(len(bpf), _SOCK_FILTER_SIZE)
    if rest or not 0 < n <= _BPF_MAXINSNS:
        raise ValueError(f"bad seccomp program: {len(bpf)} bytes")
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = SockFprog(n, ctypes.addressof(buf))
    flags = (SECCOMP_FILTER_FLAG_LOG if log else 0) | (SECCOMP_FILTER_FLAG_NEW_LISTENER if listener else 0)
    res = _sc._syscall(_NR_SECCOMP, _SET_MODE_FILTER, ctypes.c_uint(flags), ctypes.byref(prog))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return res if listener else -1


class PreparedFilter:
    """A filter laid out for the kernel ahead of time, so loading it is one system call.

    Built while a sandbox waits for its job: the buffer and the ``sock_fprog`` already exist
    (and their memory is touched), which takes the Python and ctypes work off the job's path.
    """

    def __init__(self, bpf: bytes) -> None:
        n, rest = divmod(len(bpf), _SOCK_FILTER_SIZE)
        if rest or not 0 < n <= _BPF_MAXINSNS:
            raise ValueError(f"bad seccomp program: {len(bpf)} bytes")
        self.buffer = ctypes.create_string_buffer(bpf, len(bpf))
        self.prog = SockFprog(n, ctypes.addressof(self.buffer))
        self.prog_ref = ctypes.byref(self.prog)

    def load(self, *, listener: bool = False) -> int:
        flags = ctypes.c_uint(SECCOMP_FILTER_FLAG_NEW_LISTENER if listener else 0)
        res = _sc._syscall(_NR_SECCOMP, _SET_MODE_FILTER, flags, self.prog_ref)
        if res < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return res if listener else -1
