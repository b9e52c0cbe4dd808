"""Docker/OCI seccomp profile JSON: parse into typed, frozen dataclasses.

This module only reads and validates; it never changes the calling process. Compiling to BPF
lives in :mod:`sandboxd.policy.seccomp_compile`.

Accepted format (the one Docker, Podman/containers-common, CRI-O and the Kubernetes security
profiles operator write):

* top level: ``defaultAction`` (required), ``defaultErrnoRet`` (int) and/or ``defaultErrno``
  (errno name such as ``"EPERM"``), ``architectures`` (list of ``SCMP_ARCH_*``), ``archMap``
  (list of ``{"architecture", "subArchitectures"}``; ``subArchitectures`` may be null),
  ``syscalls`` (list), ``listenerPath``, ``listenerMetadata``, ``flags``. Any other top-level
  key is tolerated and ignored (recorded in :attr:`SeccompProfile.unknown_keys`).
* each ``syscalls[]`` entry: ``names`` (list) or the older ``name`` (string), ``action``,
  ``errnoRet`` (int) and/or ``errno`` (name), ``args`` (absent, null or list), ``includes`` /
  ``excludes`` (``caps``, ``arches``, ``minKernel``), ``comment``. Unknown per-entry keys are
  tolerated too.
* each ``args[]`` object: ``index`` (0..5), ``value``, ``valueTwo`` (default 0) and ``op``, one
  of ``SCMP_CMP_NE/LT/LE/EQ/GE/GT/MASKED_EQ``. For ``MASKED_EQ``, ``value`` is the mask and
  ``valueTwo`` the expected result: the condition is ``(arg & value) == valueTwo``.

When a profile gives both a number and a name for an errno they must agree.

Every problem raises :class:`ProfileError`, whose ``str()`` is one line:
``profiles/x.json: syscalls[3].args[0].op: unknown operator 'SCMP_CMP_FOO'``.
"""

from __future__ import annotations

import errno as _errno
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandboxd.errors import SandboxdInputError, one_line

__all__ = [
    "ACTIONS",
    "ARCHES",
    "GO_ARCHES",
    "OPERATORS",
    "ArchMapEntry",
    "ArgCondition",
    "ProfileError",
    "RuleFilter",
    "SeccompProfile",
    "SyscallRule",
    "canonical_json",
    "find_profile",
    "load_profile",
    "parse_profile",
    "profile_search_path",
]


class ProfileError(SandboxdInputError):
    """A seccomp profile is malformed; names the file, the entry and the reason (one line).

    ``source``, ``entry`` and ``reason`` are kept escaped by :func:`sandboxd.errors.one_line`
    (a line break becomes ``\\n``, never a second line and never silently dropped).
    """

    def __init__(self, source: str, entry: str, reason: str) -> None:
        self.source = one_line(source)
        self.entry = one_line(entry)
        self.reason = one_line(reason)
        text = f"{self.source}: {self.entry}: {self.reason}" if entry else f"{self.source}: {self.reason}"
        super().__init__(text)


# Actions the format knows. Values: (takes an errno/trace value, description).
ACTIONS: dict[str, bool] = {
    "SCMP_ACT_ALLOW": False,
    "SCMP_ACT_ERRNO": True,
    "SCMP_ACT_KILL": False,  # libseccomp's SCMP_ACT_KILL is KILL_THREAD
    "SCMP_ACT_KILL_PROCESS": False,
    "SCMP_ACT_KILL_THREAD": False,
    "SCMP_ACT_TRAP": False,
    "SCMP_ACT_TRACE": True,
    "SCMP_ACT_LOG": False,
    "SCMP_ACT_NOTIFY": False,
}

OPERATORS = (
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
)

# libseccomp architecture names (SCMP_ARCH_*) known to this loader. Unknown SCMP_ARCH_* names
# are accepted (a newer profile may name an arch this libseccomp lacks) and ignored when compiling.
ARCHES = (
    "SCMP_ARCH_NATIVE",
    "SCMP_ARCH_X86",
    "SCMP_ARCH_X86_64",
    "SCMP_ARCH_X32",
    "SCMP_ARCH_ARM",
    "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_MIPS",
    "SCMP_ARCH_MIPS64",
    "SCMP_ARCH_MIPS64N32",
    "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32",
    "SCMP_ARCH_PPC",
    "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE",
    "SCMP_ARCH_S390",
    "SCMP_ARCH_S390X",
    "SCMP_ARCH_PARISC",
    "SCMP_ARCH_PARISC64",
    "SCMP_ARCH_RISCV64",
    "SCMP_ARCH_LOONGARCH64",
    "SCMP_ARCH_M68K",
    "SCMP_ARCH_SH",
    "SCMP_ARCH_SHEB",
)

# Go-style names used in includes/excludes.arches -> SCMP_ARCH_* name. Docker writes "x86" for
# 32-bit x86 where Go says "386"; both are accepted.
GO_ARCHES: dict[str, str] = {
    "386": "SCMP_ARCH_X86",
    "x86": "SCMP_ARCH_X86",
    "amd64": "SCMP_ARCH_X86_64",
    "x32": "SCMP_ARCH_X32",
    "arm": "SCMP_ARCH_ARM",
    "arm64": "SCMP_ARCH_AARCH64",
    "mips": "SCMP_ARCH_MIPS",
    "mipsle": "SCMP_ARCH_MIPSEL",
    "mips64": "SCMP_ARCH_MIPS64",
    "mips64le": "SCMP_ARCH_MIPSEL64",
    "mips64n32": "SCMP_ARCH_MIPS64N32",
    "mips64len32": "SCMP_ARCH_MIPSEL64N32",
    "ppc": "SCMP_ARCH_PPC",
    "ppc64": "SCMP_ARCH_PPC64",
    "ppc64le": "SCMP_ARCH_PPC64LE",
    "s390": "SCMP_ARCH_S390",
    "s390x": "SCMP_ARCH_S390X",
    "parisc": "SCMP_ARCH_PARISC",
    "parisc64": "SCMP_ARCH_PARISC64",
    "riscv64": "SCMP_ARCH_RISCV64",
    "loong64": "SCMP_ARCH_LOONGARCH64",
    "loongarch64": "SCMP_ARCH_LOONGARCH64",
    "m68k": "SCMP_ARCH_M68K",
    "sh": "SCMP_ARCH_SH",
    "sheb": "SCMP_ARCH_SHEB",
}

_U64_MAX = (1 << 64) - 1
MAX_PROFILE_BYTES = 16 << 20
"""A profile file larger than this (16 MiB) is refused rather than parsed."""
# Always used with fullmatch: ``$`` would also match before a trailing newline, and ``\d``
# any Unicode digit.
_CAP_RE = re.compile(r"CAP_[A-Z0-9_]+")
_KERNEL_RE = re.compile(r"([0-9]+)\.([0-9]+)(?:\.([0-9]+))?")
_KERNEL_PART_DIGITS = 9  # more is no kernel version (and int() refuses 4300+ digits)
_NAME_RE = re.compile(r"[a-z_][a-z0-9_]*")
_PROFILE_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class ArgCondition:
    """One argument comparison. For MASKED_EQ: ``(arg & value) == value_two``."""

    index: int
    value: int
    value_two: int
    op: str

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "value": self.value, "valueTwo": self.value_two, "op": self.op}

    def describe(self) -> str:
        a = f"arg{self.index}"
        if self.op == "SCMP_CMP_MASKED_EQ":
            return f"({a} & {self.value:#x}) == {self.value_two:#x}"
        sym = {"SCMP_CMP_NE": "!=", "SCMP_CMP_LT": "<", "SCMP_CMP_LE": "<=", "SCMP_CMP_EQ": "==",
               "SCMP_CMP_GE": ">=", "SCMP_CMP_GT": ">"}[self.op]
        return f"{a} {sym} {self.value:#x}"


@dataclass(frozen=True)
class RuleFilter:
    """``includes`` or ``excludes`` of a rule."""

    caps: tuple[str, ...] = ()
    arches: tuple[str, ...] = ()  # as written (Go-style names)
    min_kernel: tuple[int, int, int] | None = None

    def is_empty(self) -> bool:
        return not self.caps and not self.arches and self.min_kernel is None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.caps:
            out["caps"] = list(self.caps)
        if self.arches:
            out["arches"] = list(self.arches)
        if self.min_kernel is not None:
            out["minKernel"] = ".".join(str(p) for p in self.min_kernel)
        return out


@dataclass(frozen=True)
class SyscallRule:
    """One ``syscalls[]`` entry. ``errno_ret`` is the ERRNO/TRACE value (None: not given)."""

    position: int
    names: tuple[str, ...]
    action: str
    errno_ret: int | None = None
    args: tuple[ArgCondition, ...] = ()
    includes: RuleFilter = field(default_factory=RuleFilter)
    excludes: RuleFilter = field(default_factory=RuleFilter)
    comment: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"names": list(self.names), "action": self.action}
        if self.errno_ret is not None:
            out["errnoRet"] = self.errno_ret
        if self.args:
            out["args"] = [a.to_dict() for a in self.args]
        if not self.includes.is_empty():
            out["includes"] = self.includes.to_dict()
        if not self.excludes.is_empty():
            out["excludes"] = self.excludes.to_dict()
        if self.comment:
            out["comment"] = self.comment
        return out


@dataclass(frozen=True)
class ArchMapEntry:
    architecture: str
    sub_architectures: tuple[str, ...] = ()


@dataclass(frozen=True)
class SeccompProfile:
    source: str
    default_action: str
    default_errno_ret: int | None = None
    architectures: tuple[str, ...] = ()
    arch_map: tuple[ArchMapEntry, ...] = ()
    syscalls: tuple[SyscallRule, ...] = ()
    listener_path: str | None = None
    listener_metadata: str | None = None
    flags: tuple[str, ...] = ()
    unknown_keys: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Canonical, normalised form (``names`` lists, ints, no empty optional keys)."""
        out: dict[str, Any] = {"defaultAction": self.default_action}
        if self.default_errno_ret is not None:
            out["defaultErrnoRet"] = self.default_errno_ret
        if self.architectures:
            out["architectures"] = list(self.architectures)
        if self.arch_map:
            out["archMap"] = [
                {"architecture": e.architecture, "subArchitectures": list(e.sub_architectures)}
                for e in self.arch_map
            ]
        if self.listener_path is not None:
            out["listenerPath"] = self.listener_path
        if self.listener_metadata is not None:
            out["listenerMetadata"] = self.listener_metadata
        if self.flags:
            out["flags"] = list(self.flags)
        out["syscalls"] = [r.to_dict() for r in self.syscalls]
        return out

    def arches_for(self, native: str) -> tuple[str, ...]:
        """SCMP_ARCH_* names the profile asks for when running on ``native`` (SCMP_ARCH_*).

        ``architectures`` wins if present; otherwise the ``archMap`` entry of the native arch
        (itself plus its sub-architectures); otherwise just the native arch.
        """
        if self.architectures:
            return self.architectures
        for e in self.arch_map:
            if e.architecture == native:
                return (e.architecture, *e.sub_architectures)
        return (native,)


def canonical_json(profile: SeccompProfile) -> str:
    return json.dumps(profile.to_dict(), sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------- parsing helpers


def _errno_by_name(source: str, where: str, name: Any) -> int:
    if not isinstance(name, str):
        raise ProfileError(source, where, f"expected an errno name string, got {_tname(name)}")
    value = getattr(_errno, name, None)
    if not name.startswith("E") or not isinstance(value, int):
        raise ProfileError(source, where, f"unknown errno name {name!r}")
    return value


def _shown(text: str) -> str:
    """repr of a user's string in a message, shortened when long."""
    return repr(text) if len(text) <= 60 else repr(text[:40]) + f"... ({len(text)} characters)"


def _tname(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _int(source: str, where: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProfileError(source, where, f"expected an integer, got {_tname(v)}")
    if not lo <= v <= hi:
        raise ProfileError(source, where, f"{v} out of range {lo}..{hi}")
    return v


def _str(source: str, where: str, v: Any) -> str:
    if not isinstance(v, str):
        raise ProfileError(source, where, f"expected a string, got {_tname(v)}")
    return v


def _str_list(source: str, where: str, v: Any, *, allow_null: bool = True) -> tuple[str, ...]:
    if v is None and allow_null:
        return ()
    if not isinstance(v, list):
        raise ProfileError(source, where, f"expected an array of strings, got {_tname(v)}")
    for i, item in enumerate(v):
        _str(source, f"{where}[{i}]", item)
    return tuple(v)


def _obj(source: str, where: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ProfileError(source, where, f"expected an object, got {_tname(v)}")
    return v


def _errno_pair(source: str, where: str, num: Any, name: Any, num_key: str, name_key: str) -> int | None:
    value: int | None = None
    if num is not None:
        value = _int(source, f"{where}{num_key}", num, 0, 0xFFFF)
    if name is not None:
        by_name = _errno_by_name(source, f"{where}{name_key}", name)
        if value is not None and value != by_name:
            raise ProfileError(
                source, f"{where}{name_key}",
                f"{name!r} ({by_name}) disagrees with {num_key} {value}",
            )
        value = by_name
    return value


def _action(source: str, where: str, v: Any) -> str:
    a = _str(source, where, v)
    if a not in ACTIONS:
        raise ProfileError(source, where, f"unknown action {a!r}")
    return a


def _arch(source: str, where: str, v: Any) -> str:
    a = _str(source, where, v)
    if not a.startswith("SCMP_ARCH_"):
        raise ProfileError(source, where, f"unknown architecture {a!r}")
    return a


def _filter(source: str, where: str, v: Any) -> RuleFilter:
    if v is None:
        return RuleFilter()
    d = _obj(source, where, v)
    caps = _str_list(source, f"{where}.caps", d.get("caps"))
    for i, c in enumerate(caps):
        if not _CAP_RE.fullmatch(c):
            raise ProfileError(source, f"{where}.caps[{i}]", f"not a capability name {c!r}")
    arches = _str_list(source, f"{where}.arches", d.get("arches"))
    for i, a in enumerate(arches):
        if a not in GO_ARCHES:
            raise ProfileError(source, f"{where}.arches[{i}]", f"unknown architecture {a!r}")
    mk = d.get("minKernel")
    min_kernel = None
    if mk is not None and mk != "":
        m = _KERNEL_RE.fullmatch(_str(source, f"{where}.minKernel", mk))
        if not m:
            raise ProfileError(source, f"{where}.minKernel", f"expected 'MAJOR.MINOR', got {_shown(mk)}")
        if any(len(part) > _KERNEL_PART_DIGITS for part in m.groups() if part):
            raise ProfileError(source, f"{where}.minKernel", f"version number too large in {_shown(mk)}")
        min_kernel = (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
    return RuleFilter(caps=caps, arches=arches, min_kernel=min_kernel)


def _arg(source: str, where: str, v: Any) -> ArgCondition:
    d = _obj(source, where, v)
    if "index" not in d:
        raise ProfileError(source, where, "missing 'index'")
    index = _int(source, f"{where}.index", d["index"], 0, 5)
    if "value" not in d:
        raise ProfileError(source, where, "missing 'value'")
    value = _int(source, f"{where}.value", d["value"], 0, _U64_MAX)
    vt = d.get("valueTwo")
    value_two = 0 if vt is None else _int(source, f"{where}.valueTwo", vt, 0, _U64_MAX)
    if "op" not in d:
        raise ProfileError(source, where, "missing 'op'")
    op = _str(source, f"{where}.op", d["op"])
    if op not in OPERATORS:
        raise ProfileError(source, f"{where}.op", f"unknown operator {op!r}")
    return ArgCondition(index=index, value=value, value_two=value_two, op=op)


def _rule(source: str, pos: int, v: Any) -> SyscallRule:
    where = f"syscalls[{pos}]"
    d = _obj(source, where, v)
    names: tuple[str, ...]
    if d.get("names") is not None:
        names = _str_list(source, f"{where}.names", d["names"], allow_null=False)
        if d.get("name") is not None:
            names = names + (_str(source, f"{where}.name", d["name"]),)
    elif d.get("name") is not None:
        names = (_str(source, f"{where}.name", d["name"]),)
    else:
        raise ProfileError(source, where, "needs 'names' (array) or 'name' (string)")
    if not names:
        raise ProfileError(source, f"{where}.names", "empty list of syscall names")
    for i, n in enumerate(names):
        if not _NAME_RE.fullmatch(n):
            raise ProfileError(source, f"{where}.names[{i}]", f"not a syscall name {_shown(n)}")
    if "action" not in d:
        raise ProfileError(source, where, "missing 'action'")
    action = _action(source, f"{where}.action", d["action"])
    errno_ret = _errno_pair(source, f"{where}.", d.get("errnoRet"), d.get("errno"), "errnoRet", "errno")
    raw_args = d.get("args")
    args: tuple[ArgCondition, ...] = ()
    if raw_args is not None:
        if not isinstance(raw_args, list):
            raise ProfileError(source, f"{where}.args", f"expected an array, got {_tname(raw_args)}")
        if len(raw_args) > 6:
            raise ProfileError(source, f"{where}.args", f"at most 6 conditions, got {len(raw_args)}")
        args = tuple(_arg(source, f"{where}.args[{i}]", a) for i, a in enumerate(raw_args))
    comment = d.get("comment")
    comment = "" if comment is None else _str(source, f"{where}.comment", comment)
    return SyscallRule(
        position=pos,
        names=names,
        action=action,
        errno_ret=errno_ret,
        args=args,
        includes=_filter(source, f"{where}.includes", d.get("includes")),
        excludes=_filter(source, f"{where}.excludes", d.get("excludes")),
        comment=comment,
    )


_KNOWN_TOP = {
    "defaultAction", "defaultErrnoRet", "defaultErrno", "architectures", "archMap", "syscalls",
    "listenerPath", "listenerMetadata", "flags",
}


def parse_profile(data: Any, source: str) -> SeccompProfile:
    """Validate an already-decoded JSON document and return the typed profile."""
    d = _obj(source, "", data)
    if "defaultAction" not in d:
        raise ProfileError(source, "defaultAction", "missing (required)")
    default_action = _action(source, "defaultAction", d["defaultAction"])
    default_errno = _errno_pair(
        source, "", d.get("defaultErrnoRet"), d.get("defaultErrno"), "defaultErrnoRet", "defaultErrno"
    )
    architectures = tuple(
        _arch(source, f"architectures[{i}]", a)
        for i, a in enumerate(_str_list(source, "architectures", d.get("architectures")))
    )
    arch_map: list[ArchMapEntry] = []
    raw_map = d.get("archMap")
    if raw_map is not None:
        if not isinstance(raw_map, list):
            raise ProfileError(source, "archMap", f"expected an array, got {_tname(raw_map)}")
        for i, e in enumerate(raw_map):
            w = f"archMap[{i}]"
            eo = _obj(source, w, e)
            if "architecture" not in eo:
                raise ProfileError(source, w, "missing 'architecture'")
            main = _arch(source, f"{w}.architecture", eo["architecture"])
            subs = tuple(
                _arch(source, f"{w}.subArchitectures[{j}]", s)
                for j, s in enumerate(_str_list(source, f"{w}.subArchitectures", eo.get("subArchitectures")))
            )
            arch_map.append(ArchMapEntry(main, subs))
    raw_sys = d.get("syscalls")
    rules: tuple[SyscallRule, ...] = ()
    if raw_sys is not None:
        if not isinstance(raw_sys, list):
            raise ProfileError(source, "syscalls", f"expected an array, got {_tname(raw_sys)}")
        rules = tuple(_rule(source, i, r) for i, r in enumerate(raw_sys))
    lp = d.get("listenerPath")
    lm = d.get("listenerMetadata")
    flags = _str_list(source, "flags", d.get("flags"))
    for i, f in enumerate(flags):
        if not f.startswith("SECCOMP_FILTER_FLAG_"):
            raise ProfileError(source, f"flags[{i}]", f"unknown flag {f!r}")
    return SeccompProfile(
        source=source,
        default_action=default_action,
        default_errno_ret=default_errno,
        architectures=architectures,
        arch_map=tuple(arch_map),
        syscalls=rules,
        listener_path=None if lp is None else _str(source, "listenerPath", lp),
        listener_metadata=None if lm is None else _str(source, "listenerMetadata", lm),
        flags=flags,
        unknown_keys=tuple(sorted(k for k in d if k not in _KNOWN_TOP)),
    )


def load_profile(path: str | os.PathLike[str]) -> SeccompProfile:
    """Read and parse one profile file; every failure is a one-line :class:`ProfileError`."""
    source = str(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_PROFILE_BYTES + 1)
    except OSError as e:
        raise ProfileError(source, "", f"cannot read: {e.strerror or e}") from None
    except ValueError:  # a NUL byte in the path
        raise ProfileError(source, "", "cannot read: the path contains a NUL byte") from None
    if len(raw) > MAX_PROFILE_BYTES:
        raise ProfileError(source, "", f"larger than {MAX_PROFILE_BYTES} bytes; not a seccomp profile")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ProfileError(source, f"byte {e.start}", "not valid UTF-8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProfileError(source, f"line {e.lineno} column {e.colno}", f"invalid JSON: {e.msg}") from None
    except ValueError as e:  # int() refuses more than sys.get_int_max_str_digits() digits
        if "integer string conversion" in str(e):
            raise ProfileError(source, "", "invalid JSON: an integer has too many digits") from None
        raise ProfileError(source, "", f"invalid JSON: {e}") from None
    except RecursionError:
        raise ProfileError(source, "", "invalid JSON: arrays or objects nested too deeply") from None
    return parse_profile(data, source)


# --------------------------------------------------------------------------- finding profiles


def profile_search_path() -> list[Path]:
    """Directories searched by :func:`find_profile`: ``$SANDBOXD_PROFILE_PATH`` then repo ``profiles/``."""
    dirs = [Path(p) for p in os.environ.get("SANDBOXD_PROFILE_PATH", "").split(":") if p]
    dirs.append(Path(__file__).resolve().parents[2] / "profiles")
    return dirs


def _is_file(path: Path, source: str) -> bool:
    """Whether ``path`` is a regular file; a ProfileError when that cannot be told."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except ValueError:  # a NUL byte
        raise ProfileError(source, "", "a path cannot contain a NUL byte") from None
    except OSError as e:
        if e.errno in (_errno.ENOENT, _errno.ENOTDIR, _errno.ELOOP):
            return False
        raise ProfileError(source, "", f"cannot look at {str(path)!r}: {e.strerror or e}") from None


def find_profile(name_or_path: str | os.PathLike[str]) -> Path:
    """Resolve a profile name (``default``, ``judge.json``) or a path to an existing file.

    Anything containing a ``/`` (or an existing file) is a path; a bare name is looked up as
    ``NAME`` and ``NAME.json`` in each directory of :func:`profile_search_path`, in order.
    """
    s = os.fspath(name_or_path)
    p = Path(s)
    if "/" in s or _is_file(p, s):
        if _is_file(p, s):
            return p
        raise ProfileError(s, "", "no such profile file")
    if not s or s in (".", "..") or not _PROFILE_NAME_RE.fullmatch(s):
        raise ProfileError(s or "''", "", "not a valid profile name")
    candidates = [s] if s.endswith(".json") else [s + ".json", s]
    for d in profile_search_path():
        for c in candidates:
            if _is_file(d / c, s):
                return d / c
    where = ", ".join(str(d) for d in profile_search_path())
    raise ProfileError(s, "", f"no such profile (searched {where})")
