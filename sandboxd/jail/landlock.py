"""Landlock: a small ctypes binding of the three system calls, a rule plan built from
data, and ABI negotiation.

Split of work
-------------
* :func:`build_plan` runs in the supervisor (any process). It is pure apart from the
  optional :func:`abi_version` query: it turns path and port lists into a
  :class:`LandlockPlan`, negotiating against the kernel's Landlock ABI. The plan is plain
  data (``to_dict``/``from_dict`` round-trip through JSON; it also pickles) so it can be
  handed to the spawner and the child.
* :func:`apply` runs in the sandboxed child after ``pivot_root``, so every rule path is a
  path *as seen inside the new root*. It imports nothing, allocates little and makes only
  the needed system calls: one ``landlock_create_ruleset``, per rule one ``open(O_PATH)``
  + ``fstat`` + ``landlock_add_rule``, one ``landlock_restrict_self``, and the closes.

Caller contract for :func:`apply`: ``landlock_restrict_self`` refuses (EPERM) unless the
thread has ``no_new_privs`` set or holds ``CAP_SYS_ADMIN`` in its user namespace. The
caller sets ``prctl(PR_SET_NO_NEW_PRIVS, 1)`` first (seccomp needs it anyway); this
module never sets it itself. The domain applies to the calling thread only, so the caller
must be single-threaded (the spawner's child is).

Errno handling: the system calls go through libc ``syscall`` loaded with
``use_errno=True``; errno is read only when the call returned -1, so a stale errno left by
an earlier failed call can never turn a success into an error.

The PyPI ``landlock`` package is *not* used by this module (it covers file-system rules
only, no TCP rules or scoping, and misreports errno); the test suite uses it only as a
cross-check of the file-system constant values and of the ABI version.

Rights handled per ABI
----------------------
======  ==========================================================================
ABI 1   FS: EXECUTE, WRITE_FILE, READ_FILE, READ_DIR, REMOVE_DIR, REMOVE_FILE,
        MAKE_CHAR, MAKE_DIR, MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM
ABI 2   FS: REFER (linking/renaming across directories; while *unhandled* (ABI 1)
        such re-parenting is always denied)
ABI 3   FS: TRUNCATE
ABI 4   NET: BIND_TCP, CONNECT_TCP
ABI 5   FS: IOCTL_DEV (ioctl on character/block devices opened after restriction)
ABI 6   scopes: ABSTRACT_UNIX_SOCKET, SIGNAL
ABI 7   ``landlock_restrict_self`` flags controlling audit logging of denials
        (LOG_SAME_EXEC_OFF, LOG_NEW_EXEC_ON, LOG_SUBDOMAINS_OFF); these change
        logging only, never what is allowed, so on older kernels they are dropped
        (recorded in ``dropped``) rather than refused.
======  ==========================================================================

Policy decisions
----------------
* Everything the ABI knows is handled (denied unless granted), including MAKE_CHAR and
  MAKE_BLOCK, which are never granted.
* ``read_only`` paths get READ_FILE | READ_DIR | EXECUTE; ``read_noexec`` paths get
  READ_FILE | READ_DIR; ``read_write`` paths get the read-only set plus WRITE_FILE,
  REMOVE_DIR, REMOVE_FILE, MAKE_DIR, MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_SYM, TRUNCATE
  and REFER (each where the ABI has it).
* IOCTL_DEV is handled from ABI 5 on and granted only beneath the ``ioctl_dev`` paths
  (typically ``["/dev"]``, the sandbox's own small /dev); those paths also get
  READ_FILE | WRITE_FILE | READ_DIR. Device ioctls on fds opened *before* restriction
  (the inherited stdio) are not affected.
* Landlock rights are inherited down the hierarchy and rules are unioned, so a path
  listed as read-only beneath a read-write path is still writable.
* A rule on a non-directory only accepts file rights (EXECUTE, WRITE_FILE, READ_FILE,
  TRUNCATE, IOCTL_DEV); :func:`apply` masks the directory rights away per the opened
  fd's type (``fstat``), since the kernel rejects them with EINVAL.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

from sandboxd.jail.syscalls import NR

__all__ = [
    "ACCESS_FS_EXECUTE", "ACCESS_FS_WRITE_FILE", "ACCESS_FS_READ_FILE", "ACCESS_FS_READ_DIR",
    "ACCESS_FS_REMOVE_DIR", "ACCESS_FS_REMOVE_FILE", "ACCESS_FS_MAKE_CHAR",
    "ACCESS_FS_MAKE_DIR", "ACCESS_FS_MAKE_REG", "ACCESS_FS_MAKE_SOCK", "ACCESS_FS_MAKE_FIFO",
    "ACCESS_FS_MAKE_BLOCK", "ACCESS_FS_MAKE_SYM", "ACCESS_FS_REFER", "ACCESS_FS_TRUNCATE",
    "ACCESS_FS_IOCTL_DEV", "ACCESS_NET_BIND_TCP", "ACCESS_NET_CONNECT_TCP",
    "SCOPE_ABSTRACT_UNIX_SOCKET", "SCOPE_SIGNAL", "RESTRICT_SELF_LOG_SAME_EXEC_OFF",
    "RESTRICT_SELF_LOG_NEW_EXEC_ON", "RESTRICT_SELF_LOG_SUBDOMAINS_OFF",
    "CREATE_RULESET_VERSION", "CREATE_RULESET_ERRATA", "ACCESS_FILE",
    "FS_READ", "FS_READ_EXEC", "FS_WRITE", "FS_DEV",
    "LandlockUnavailable", "LandlockError", "FsRule", "NetRule", "LandlockPlan",
    "AppliedLandlock", "abi_version", "handled_fs_for_abi", "handled_net_for_abi",
    "scopes_for_abi", "restrict_flags_for_abi", "rights_for_abi", "fs_names", "net_names",
    "scope_names", "build_plan", "apply", "create_ruleset", "add_path_rule",
    "add_net_rule", "restrict_self",
]

# --------------------------------------------------------------------------- constants

# landlock_create_ruleset() flags.
CREATE_RULESET_VERSION = 1 << 0
CREATE_RULESET_ERRATA = 1 << 1  # returns a bitmask of fixed errata (kernel 6.15+)

# landlock_add_rule() rule types.
RULE_PATH_BENEATH = 1
RULE_NET_PORT = 2

# File-system access rights.
ACCESS_FS_EXECUTE = 1 << 0
ACCESS_FS_WRITE_FILE = 1 << 1
ACCESS_FS_READ_FILE = 1 << 2
ACCESS_FS_READ_DIR = 1 << 3
ACCESS_FS_REMOVE_DIR = 1 << 4
ACCESS_FS_REMOVE_FILE = 1 << 5
ACCESS_FS_MAKE_CHAR = 1 << 6
ACCESS_FS_MAKE_DIR = 1 << 7
ACCESS_FS_MAKE_REG = 1 << 8
ACCESS_FS_MAKE_SOCK = 1 << 9
ACCESS_FS_MAKE_FIFO = 1 << 10
ACCESS_FS_MAKE_BLOCK = 1 << 11
ACCESS_FS_MAKE_SYM = 1 << 12
ACCESS_FS_REFER = 1 << 13  # ABI 2
ACCESS_FS_TRUNCATE = 1 << 14  # ABI 3
ACCESS_FS_IOCTL_DEV = 1 << 15  # ABI 5

# Network access rights (ABI 4).
ACCESS_NET_BIND_TCP = 1 << 0
ACCESS_NET_CONNECT_TCP = 1 << 1

# Scopes (ABI 6).
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1

# landlock_restrict_self() flags (ABI 7): audit logging only.
RESTRICT_SELF_LOG_SAME_EXEC_OFF = 1 << 0
RESTRICT_SELF_LOG_NEW_EXEC_ON = 1 << 1
RESTRICT_SELF_LOG_SUBDOMAINS_OFF = 1 << 2

_FS_NAMES = (
    (ACCESS_FS_EXECUTE, "EXECUTE"),
    (ACCESS_FS_WRITE_FILE, "WRITE_FILE"),
    (ACCESS_FS_READ_FILE, "READ_FILE"),
    (ACCESS_FS_READ_DIR, "READ_DIR"),
    (ACCESS_FS_REMOVE_DIR, "REMOVE_DIR"),
    (ACCESS_FS_REMOVE_FILE, "REMOVE_FILE"),
    (ACCESS_FS_MAKE_CHAR, "MAKE_CHAR"),
    (ACCESS_FS_MAKE_DIR, "MAKE_DIR"),
    (ACCESS_FS_MAKE_REG, "MAKE_REG"),
    (ACCESS_FS_MAKE_SOCK, "MAKE_SOCK"),
    (ACCESS_FS_MAKE_FIFO, "MAKE_FIFO"),
    (ACCESS_FS_MAKE_BLOCK, "MAKE_BLOCK"),
    (ACCESS_FS_MAKE_SYM, "MAKE_SYM"),
    (ACCESS_FS_REFER, "REFER"),
    (ACCESS_FS_TRUNCATE, "TRUNCATE"),
    (ACCESS_FS_IOCTL_DEV, "IOCTL_DEV"),
)
_NET_NAMES = ((ACCESS_NET_BIND_TCP, "BIND_TCP"), (ACCESS_NET_CONNECT_TCP, "CONNECT_TCP"))
_SCOPE_NAMES = ((SCOPE_ABSTRACT_UNIX_SOCKET, "ABSTRACT_UNIX_SOCKET"), (SCOPE_SIGNAL, "SIGNAL"))
_FLAG_NAMES = (
    (RESTRICT_SELF_LOG_SAME_EXEC_OFF, "LOG_SAME_EXEC_OFF"),
    (RESTRICT_SELF_LOG_NEW_EXEC_ON, "LOG_NEW_EXEC_ON"),
    (RESTRICT_SELF_LOG_SUBDOMAINS_OFF, "LOG_SUBDOMAINS_OFF"),
)

_FS_ABI1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
_FS_BY_ABI = {
    1: _FS_ABI1,
    2: _FS_ABI1 | ACCESS_FS_REFER,
    3: _FS_ABI1 | ACCESS_FS_REFER | ACCESS_FS_TRUNCATE,
    4: _FS_ABI1 | ACCESS_FS_REFER | ACCESS_FS_TRUNCATE,
}
_FS_ALL = _FS_BY_ABI[4] | ACCESS_FS_IOCTL_DEV
_NET_ALL = ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP
_SCOPE_ALL = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
_FLAGS_ALL = (
    RESTRICT_SELF_LOG_SAME_EXEC_OFF | RESTRICT_SELF_LOG_NEW_EXEC_ON | RESTRICT_SELF_LOG_SUBDOMAINS_OFF
)
MAX_KNOWN_ABI = 7

# Rights valid on a rule whose path is not a directory.
ACCESS_FILE = (
    ACCESS_FS_EXECUTE | ACCESS_FS_WRITE_FILE | ACCESS_FS_READ_FILE | ACCESS_FS_TRUNCATE | ACCESS_FS_IOCTL_DEV
)

# Grant sets used by build_plan (masked by the negotiated ABI).
FS_READ = ACCESS_FS_READ_FILE | ACCESS_FS_READ_DIR
FS_READ_EXEC = FS_READ | ACCESS_FS_EXECUTE
FS_WRITE = (
    ACCESS_FS_WRITE_FILE
    | ACCESS_FS_REMOVE_DIR
    | ACCESS_FS_REMOVE_FILE
    | ACCESS_FS_MAKE_DIR
    | ACCESS_FS_MAKE_REG
    | ACCESS_FS_MAKE_SOCK
    | ACCESS_FS_MAKE_FIFO
    | ACCESS_FS_MAKE_SYM
    | ACCESS_FS_TRUNCATE
    | ACCESS_FS_REFER
)
FS_DEV = ACCESS_FS_READ_FILE | ACCESS_FS_WRITE_FILE | ACCESS_FS_READ_DIR | ACCESS_FS_IOCTL_DEV


def handled_fs_for_abi(abi: int) -> int:
    """File-system rights a kernel with Landlock ABI ``abi`` can handle."""
    if abi <= 0:
        return 0
    if abi >= 5:
        return _FS_ALL
    return _FS_BY_ABI[abi]


def handled_net_for_abi(abi: int) -> int:
    """Network rights a kernel with Landlock ABI ``abi`` can handle."""
    return _NET_ALL if abi >= 4 else 0


def scopes_for_abi(abi: int) -> int:
    """Scopes a kernel with Landlock ABI ``abi`` can enforce."""
    return _SCOPE_ALL if abi >= 6 else 0


def restrict_flags_for_abi(abi: int) -> int:
    """``landlock_restrict_self`` flags a kernel with Landlock ABI ``abi`` accepts."""
    return _FLAGS_ALL if abi >= 7 else 0


def rights_for_abi(abi: int) -> dict[str, int]:
    """All rights/scopes/flags available at ``abi``, as bitmasks keyed by kind."""
    return {
        "fs": handled_fs_for_abi(abi),
        "net": handled_net_for_abi(abi),
        "scoped": scopes_for_abi(abi),
        "restrict_flags": restrict_flags_for_abi(abi),
    }


def _names(mask: int, table: tuple[tuple[int, str], ...]) -> list[str]:
    out = [name for bit, name in table if mask & bit]
    rest = mask & ~sum(bit for bit, _ in table)
    if rest:
        out.append(hex(rest))
    return out


def fs_names(mask: int) -> list[str]:
    """Names of the file-system rights in ``mask`` (unknown bits as hex)."""
    return _names(mask, _FS_NAMES)


def net_names(mask: int) -> list[str]:
    return _names(mask, _NET_NAMES)


def scope_names(mask: int) -> list[str]:
    return _names(mask, _SCOPE_NAMES)


# --------------------------------------------------------------------------- binding

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
# A private function object (CDLL.__getitem__ does not cache) so nothing else sharing
# libc's ``syscall`` attribute is affected by our restype.
_sys = _libc["syscall"]
_sys.restype = ctypes.c_long
_get_errno = ctypes.get_errno
_c_long = ctypes.c_long
_c_int = ctypes.c_int
_c_uint = ctypes.c_uint
_c_size_t = ctypes.c_size_t
_byref = ctypes.byref
_sizeof = ctypes.sizeof

_NR_CREATE = _c_long(NR["landlock_create_ruleset"])
_NR_ADD = _c_long(NR["landlock_add_rule"])
_NR_RESTRICT = _c_long(NR["landlock_restrict_self"])

_ENOSYS = 38
_EOPNOTSUPP = 95


class _RulesetAttr(ctypes.Structure):
    # Full ABI 6+ layout. Older kernels accept the larger size because the extra
    # fields are zero when the plan was negotiated for that ABI.
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # the kernel struct is __attribute__((packed)): 12 bytes
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


assert _sizeof(_PathBeneathAttr) == 12 and _sizeof(_NetPortAttr) == 16
_RULESET_ATTR_SIZE = _c_size_t(_sizeof(_RulesetAttr))
_RULE_PATH = _c_int(RULE_PATH_BENEATH)
_RULE_NET = _c_int(RULE_NET_PORT)
_ZERO_UINT = _c_uint(0)


class LandlockError(OSError):
    """A Landlock system call or a rule path failed; ``errno``/``filename`` are set."""


class LandlockUnavailable(RuntimeError):
    """The kernel cannot enforce what the policy requires (and best_effort was off)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _fail(what: str, filename: str | None = None) -> LandlockError:
    err = _get_errno()
    return LandlockError(err, f"{what}: {os.strerror(err)}", filename)


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is unsupported or disabled."""
    r = _sys(_NR_CREATE, None, _c_size_t(0), _c_uint(CREATE_RULESET_VERSION))
    if r == -1:
        err = _get_errno()
        if err in (_ENOSYS, _EOPNOTSUPP):
            return 0
        raise LandlockError(err, f"landlock_create_ruleset(VERSION): {os.strerror(err)}")
    return int(r)


def create_ruleset(handled_fs: int, handled_net: int = 0, scoped: int = 0) -> int:
    """landlock_create_ruleset(2); returns the (close-on-exec) ruleset fd."""
    attr = _RulesetAttr(handled_fs, handled_net, scoped)
    r = _sys(_NR_CREATE, _byref(attr), _RULESET_ATTR_SIZE, _ZERO_UINT)
    if r == -1:
        raise _fail("landlock_create_ruleset")
    return r


def add_path_rule(ruleset_fd: int, parent_fd: int, access: int, path: str | None = None) -> None:
    """landlock_add_rule(2) for a path-beneath rule on an O_PATH fd."""
    attr = _PathBeneathAttr(access, parent_fd)
    r = _sys(_NR_ADD, _c_int(ruleset_fd), _RULE_PATH, _byref(attr), _ZERO_UINT)
    if r == -1:
        raise _fail(f"landlock_add_rule(path, access={'|'.join(fs_names(access))})", path)


def add_net_rule(ruleset_fd: int, port: int, access: int) -> None:
    """landlock_add_rule(2) for a TCP port rule."""
    attr = _NetPortAttr(access, port)
    r = _sys(_NR_ADD, _c_int(ruleset_fd), _RULE_NET, _byref(attr), _ZERO_UINT)
    if r == -1:
        raise _fail(f"landlock_add_rule(port {port}, access={'|'.join(net_names(access))})")


def restrict_self(ruleset_fd: int, flags: int = 0) -> None:
    """landlock_restrict_self(2): needs no_new_privs or CAP_SYS_ADMIN (else EPERM)."""
    r = _sys(_NR_RESTRICT, _c_int(ruleset_fd), _c_uint(flags))
    if r == -1:
        raise _fail("landlock_restrict_self")


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class FsRule:
    path: str
    access: int


@dataclass(frozen=True)
class NetRule:
    port: int
    access: int


@dataclass(frozen=True)
class LandlockPlan:
    """What to enforce; plain data, negotiated for ``abi``. ``abi == 0``: enforce nothing."""

    fs_rules: tuple[FsRule, ...] = ()
    net_rules: tuple[NetRule, ...] = ()
    handled_fs: int = 0
    handled_net: int = 0
    scoped: int = 0
    abi: int = 0
    restrict_flags: int = 0
    dropped: tuple[str, ...] = field(default=())

    @property
    def enforced(self) -> bool:
        return self.abi > 0 and bool(self.handled_fs or self.handled_net or self.scoped)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fs_rules": [[r.path, r.access] for r in self.fs_rules],
            "net_rules": [[r.port, r.access] for r in self.net_rules],
            "handled_fs": self.handled_fs,
            "handled_net": self.handled_net,
            "scoped": self.scoped,
            "abi": self.abi,
            "restrict_flags": self.restrict_flags,
            "dropped": list(self.dropped),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LandlockPlan":
        return cls(
            fs_rules=tuple(FsRule(str(p), int(a)) for p, a in d.get("fs_rules", ())),
            net_rules=tuple(NetRule(int(p), int(a)) for p, a in d.get("net_rules", ())),
            handled_fs=int(d.get("handled_fs", 0)),
            handled_net=int(d.get("handled_net", 0)),
            scoped=int(d.get("scoped", 0)),
            abi=int(d.get("abi", 0)),
            restrict_flags=int(d.get("restrict_flags", 0)),
            dropped=tuple(str(x) for x in d.get("dropped", ())),
        )

    def describe(self) -> str:
        """Multi-line, human-readable summary with rights by name."""
        if not self.enforced:
            lines = [f"landlock: not enforced (abi {self.abi})"]
        else:
            lines = [f"landlock abi {self.abi}"]
            known = handled_fs_for_abi(MAX_KNOWN_ABI)
            lines.append("  fs handled: " + (",".join(fs_names(self.handled_fs)) or "-"))
            unhandled = known & ~self.handled_fs
            if unhandled and self.handled_fs:
                lines.append("  fs not enforceable at this abi: " + ",".join(fs_names(unhandled)))
            for r in self.fs_rules:
                lines.append(f"    allow {r.path}: {','.join(fs_names(r.access))}")
            if self.handled_net:
                lines.append("  net handled: " + ",".join(net_names(self.handled_net)))
                for n in self.net_rules:
                    lines.append(f"    allow tcp port {n.port}: {','.join(net_names(n.access))}")
            else:
                lines.append("  net: not restricted")
            lines.append("  scoped: " + (",".join(scope_names(self.scoped)) or "-"))
            if self.restrict_flags:
                lines.append("  restrict flags: " + ",".join(_names(self.restrict_flags, _FLAG_NAMES)))
        if self.dropped:
            lines.append("  dropped (kernel too old): " + "; ".join(self.dropped))
        return "\n".join(lines)


@dataclass(frozen=True)
class AppliedLandlock:
    """What :func:`apply` actually enforced."""

    abi: int
    handled_fs: int
    handled_net: int
    scoped: int
    restrict_flags: int
    fs_rules: int  # rules added
    net_rules: int
    enforced: bool


def _norm_path(p: str) -> str:
    if not isinstance(p, str) or not p.startswith("/"):
        raise ValueError(f"landlock rule path must be absolute: {p!r}")
    if "\0" in p:
        raise ValueError(f"landlock rule path contains NUL: {p!r}")
    p = os.path.normpath(p)
    return "/" + p.lstrip("/")  # normpath keeps a leading "//"


def _ports(ports: Iterable[int], what: str) -> list[int]:
    out = []
    for p in ports:
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 65535:
            raise ValueError(f"{what}: invalid TCP port {p!r}")
        out.append(p)
    return sorted(set(out))


def build_plan(
    *,
    read_only: Iterable[str] = (),
    read_write: Iterable[str] = (),
    read_noexec: Iterable[str] = (),
    ioctl_dev: Iterable[str] = (),
    tcp_bind: Iterable[int] | None = None,
    tcp_connect: Iterable[int] | None = None,
    scope_abstract_unix: bool = False,
    scope_signal: bool = False,
    log_same_exec: bool = True,
    log_new_exec: bool = False,
    log_subdomains: bool = True,
    min_abi: int = 1,
    best_effort: bool = False,
    abi: int | None = None,
) -> LandlockPlan:
    """Negotiate a plan for ``abi`` (default: the running kernel's).

    ``tcp_bind``/``tcp_connect``: ``None`` leaves that right unrestricted; a list (even
    empty) handles it and allows only the listed ports. Requirements the ABI cannot meet
    raise :class:`LandlockUnavailable` unless ``best_effort``, which drops them and
    records each in ``plan.dropped``. File-system rights newer than the ABI are masked
    (not enforceable, not an error). Logging flags (ABI 7) are always dropped silently
    into ``dropped`` on older kernels.
    """
    if abi is None:
        abi = abi_version()
    if abi < 0:
        raise ValueError(f"invalid abi {abi}")
    dropped: list[str] = []

    def need(ok: bool, what: str) -> bool:
        if ok:
            return True
        if not best_effort:
            raise LandlockUnavailable(what)
        dropped.append(what)
        return False

    if abi == 0:
        need(False, "landlock is not supported by this kernel (abi 0)")
        return LandlockPlan(abi=0, dropped=tuple(dropped))
    if abi < min_abi:
        need(False, f"landlock abi {abi} < required minimum {min_abi}")

    handled_fs = handled_fs_for_abi(abi)
    grants: dict[str, int] = {}

    def grant(paths: Iterable[str], access: int) -> None:
        if isinstance(paths, str):
            raise TypeError("path lists must be lists, not a single string")
        for p in paths:
            q = _norm_path(p)
            grants[q] = grants.get(q, 0) | (access & handled_fs)

    grant(read_only, FS_READ_EXEC)
    grant(read_noexec, FS_READ)
    grant(read_write, FS_READ_EXEC | FS_WRITE)
    grant(ioctl_dev, FS_DEV)
    fs_rules = tuple(FsRule(p, a) for p, a in sorted(grants.items()) if a)

    handled_net = 0
    net_access: dict[int, int] = {}
    for ports, right, label in (
        (tcp_bind, ACCESS_NET_BIND_TCP, "tcp_bind"),
        (tcp_connect, ACCESS_NET_CONNECT_TCP, "tcp_connect"),
    ):
        if ports is None:
            continue
        if isinstance(ports, (str, bytes)):
            raise TypeError(f"{label} must be a list of ports")
        plist = _ports(ports, label)
        if need(abi >= 4, f"{label} restriction needs landlock abi 4 (kernel has {abi})"):
            handled_net |= right
            for p in plist:
                net_access[p] = net_access.get(p, 0) | right
    net_rules = tuple(NetRule(p, a) for p, a in sorted(net_access.items()))

    scoped = 0
    if scope_abstract_unix and need(
        abi >= 6, f"abstract unix socket scoping needs landlock abi 6 (kernel has {abi})"
    ):
        scoped |= SCOPE_ABSTRACT_UNIX_SOCKET
    if scope_signal and need(abi >= 6, f"signal scoping needs landlock abi 6 (kernel has {abi})"):
        scoped |= SCOPE_SIGNAL

    flags = 0
    if not log_same_exec:
        flags |= RESTRICT_SELF_LOG_SAME_EXEC_OFF
    if log_new_exec:
        flags |= RESTRICT_SELF_LOG_NEW_EXEC_ON
    if not log_subdomains:
        flags |= RESTRICT_SELF_LOG_SUBDOMAINS_OFF
    if flags & ~restrict_flags_for_abi(abi):
        dropped.append(
            "logging flags " + ",".join(_names(flags, _FLAG_NAMES)) + f" need landlock abi 7 (kernel has {abi})"
        )
        flags &= restrict_flags_for_abi(abi)

    return LandlockPlan(
        fs_rules=fs_rules,
        net_rules=net_rules,
        handled_fs=handled_fs,
        handled_net=handled_net,
        scoped=scoped,
        abi=abi,
        restrict_flags=flags,
        dropped=tuple(dropped),
    )


# --------------------------------------------------------------------------- apply

_O_PATH_CLOEXEC = os.O_PATH | os.O_CLOEXEC
_S_IFMT = 0o170000
_S_IFDIR = 0o040000
_os_open = os.open
_os_fstat = os.fstat
_os_close = os.close


@dataclass
class BuiltRuleset:
    """A ruleset with its rules added, not yet enforced (``build`` then ``enforce``)."""

    plan: "LandlockPlan"
    fd: int
    fs_rules: int
    net_rules: int


def apply(plan: LandlockPlan) -> AppliedLandlock:
    """Enforce ``plan`` on the calling (single-threaded) process; runs in the child.

    The caller must already have set ``PR_SET_NO_NEW_PRIVS`` (or hold CAP_SYS_ADMIN).
    Raises :class:`LandlockError` naming the path when a rule path cannot be opened.
    A plan with ``abi == 0`` (best-effort on a kernel without Landlock) is a no-op.
    """
    built = build(plan)
    return enforce(built)


def build(plan: LandlockPlan, *, later: tuple[str, ...] = ()) -> BuiltRuleset:
    """Create the ruleset and add every rule but those on ``later`` paths; nothing is
    enforced yet.

    Splitting this from ``enforce`` lets a sandbox build its ruleset before its job arrives.
    A path something will be mounted on must wait (``add_later``): Landlock skips a hidden
    mount point on its way up from a file, so a rule on the directory beneath a mount does
    not reach into it.
    """
    if not plan.enforced:
        return BuiltRuleset(plan, -1, 0, 0)
    handled_net = plan.handled_net
    rfd = create_ruleset(plan.handled_fs, handled_net, plan.scoped)
    built = BuiltRuleset(plan, rfd, 0, 0)
    try:
        _add_fs_rules(built, [rule for rule in plan.fs_rules if rule.path not in later])
        if handled_net:
            nattr = _NetPortAttr()
            pn = _byref(nattr)
            for nrule in plan.net_rules:
                access = nrule.access & handled_net
                if access:
                    nattr.allowed_access = access
                    nattr.port = nrule.port
                    if _sys(_NR_ADD, _c_int(rfd), _RULE_NET, pn, _ZERO_UINT) == -1:
                        raise _fail(f"landlock_add_rule(tcp port {nrule.port})")
                    built.net_rules += 1
    except BaseException:
        _os_close(rfd)
        raise
    return built


def add_later(built: BuiltRuleset, paths: tuple[str, ...]) -> None:
    """Add the rules ``build`` left for ``paths``, once their mounts are in place."""
    if built.fd >= 0:
        _add_fs_rules(built, [rule for rule in built.plan.fs_rules if rule.path in paths])


def _add_fs_rules(built: BuiltRuleset, rules: list) -> None:
    handled_fs = built.plan.handled_fs
    attr = _PathBeneathAttr()
    pattr = _byref(attr)
    c_rfd = _c_int(built.fd)
    for rule in rules:
        path = rule.path
        try:
            fd = _os_open(path, _O_PATH_CLOEXEC)
        except OSError as e:
            raise LandlockError(e.errno, f"landlock rule path cannot be opened: {e.strerror}", path) from None
        try:
            access = rule.access & handled_fs
            if _os_fstat(fd).st_mode & _S_IFMT != _S_IFDIR:
                access &= ACCESS_FILE
            if access:
                attr.allowed_access = access
                attr.parent_fd = fd
                if _sys(_NR_ADD, c_rfd, _RULE_PATH, pattr, _ZERO_UINT) == -1:
                    raise _fail(f"landlock_add_rule(access={'|'.join(fs_names(access))})", path)
                built.fs_rules += 1
        finally:
            _os_close(fd)


def enforce(built: BuiltRuleset) -> AppliedLandlock:
    """restrict_self with a built ruleset (needs no_new_privs), then close it."""
    plan = built.plan
    if built.fd < 0:
        return AppliedLandlock(plan.abi, 0, 0, 0, 0, 0, 0, False)
    try:
        restrict_self(built.fd, plan.restrict_flags)
    finally:
        _os_close(built.fd)
        built.fd = -1
    return AppliedLandlock(
        plan.abi, plan.handled_fs, plan.handled_net, plan.scoped, plan.restrict_flags,
        built.fs_rules, built.net_rules, True
    )
