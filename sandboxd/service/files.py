"""Files in and out of a job's work directory, safe against a hostile job.

The work directory (``workdir``) is a host directory the job sees as ``/work`` and can fill
with anything: symlinks, FIFOs, sockets, device nodes, hard links to files it can see, huge
or sparse files, thousands of entries, very deep trees, names that are not UTF-8. Nothing
it leaves there may make the service read or write outside ``workdir``, block, or spend
unbounded memory or time. The rules that follow from that:

* Every open is relative to a directory file descriptor and names exactly one path
  component; the kernel never resolves a path string the job could have influenced.
  Each open uses ``openat2(2)`` with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
  RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`` when the kernel has it (Linux >= 5.6), else
  ``openat(2)`` with ``O_NOFOLLOW`` plus an ``st_dev`` check standing in for
  ``RESOLVE_NO_XDEV``. Symlinks are never followed, in any position.
* :func:`place_files` creates with ``O_CREAT | O_EXCL | O_NOFOLLOW``: a name that exists
  (file, symlink, anything) is an error, never overwritten or followed.
* :func:`copy_out` looks at an entry with ``fstatat(AT_SYMLINK_NOFOLLOW)`` first, so
  devices, FIFOs and sockets are never even opened; a regular file is then opened with
  ``O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC`` and checked again with
  ``fstat`` on the descriptor (same inode, still regular, still one link).
  Hard links (``st_nlink > 1``) are refused: a job can hard-link a host file it can only
  read (when it is on the same file system and ``fs.protected_hardlinks`` allows), and
  handing that back would leak it. Every walk is bounded by :class:`CopyOutLimits`.
* :func:`remove_workdir` is its own fd-based removal instead of :func:`shutil.rmtree`.
  ``shutil.rmtree`` *is* symlink-safe on Linux (``shutil.rmtree.avoids_symlink_attacks``
  is true: it walks with ``os.scandir(fd)`` / ``dir_fd=`` and compares ``st_ino`` before
  descending), but in Python 3.11 it recurses once per level (a job can make a tree deeper
  than the recursion limit and the number of open files), lists every directory into
  memory at once, and does not cope with a directory the job made mode 000.
"""

from __future__ import annotations

import ctypes
import errno
import fnmatch
import os
import platform
import re
import stat
import unicodedata
from dataclasses import dataclass
from typing import Callable, Iterator

from sandboxd.errors import SandboxdInputError, one_line

__all__ = [
    "CopyOutLimits",
    "FileError",
    "FileIn",
    "FileOut",
    "copy_out",
    "openat2_available",
    "place_files",
    "remove_workdir",
    "validate_name",
    "validate_pattern",
]


# --------------------------------------------------------------------------- errors and types


class FileError(SandboxdInputError):
    """A file name, pattern or file placement that cannot be accepted.

    ``str()`` is always one line naming the field or file and the reason; the service
    answers 4xx with it. Built either from one message or from ``(name, reason, field=)``.
    """

    def __init__(self, message: str, reason: str | None = None, *, field: str | None = None) -> None:
        if reason is None:
            self.name = None
            self.reason = one_line(message)
            self.field = field
            text = one_line(message) if field is None else f"{one_line(field)}: {one_line(message)}"
        else:
            self.name = message
            self.reason = one_line(reason)
            self.field = field
            shown = _shown(message)
            text = f"{one_line(field)}: {shown}: {self.reason}" if field else f"{shown}: {self.reason}"
        super().__init__(text)


def _shown(name: object, limit: int = 80) -> str:
    """``name`` quoted, escaped onto one line and cut to ``limit`` characters."""
    text = one_line(name)
    if len(text) > limit:
        text = text[:limit] + "..."
    return f'"{text}"'


@dataclass(frozen=True)
class FileIn:
    """A file :func:`place_files` creates: ``path`` relative to the work directory."""

    path: str
    data: bytes
    executable: bool = False


@dataclass(frozen=True)
class CopyOutLimits:
    """Bounds on one :func:`copy_out` call.

    ``max_files`` files are returned with their data; ``max_file_bytes`` is the largest one,
    ``max_total_bytes`` all of them. ``max_scanned_entries`` directory entries are looked
    at in all (the walk stops there), ``max_depth`` is the most components a returned
    path can have, ``max_patterns`` the most patterns one call accepts.
    """

    max_files: int = 64
    max_file_bytes: int = 8 << 20
    max_total_bytes: int = 32 << 20
    max_scanned_entries: int = 10_000
    max_depth: int = 16
    max_patterns: int = 64


@dataclass(frozen=True)
class FileOut:
    """One entry :func:`copy_out` reports: data, or ``None`` and the reason it was refused.

    ``size`` is the number of bytes returned, or for a refused regular file its size on
    disk; 0 for anything that is not a regular file.
    """

    path: str
    data: bytes | None
    size: int
    refused: str | None


# --------------------------------------------------------------------------- names and patterns

_BAD_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})  # controls, lone surrogates, line breaks
_GLOB_CHARS = frozenset("*?[")


def _bad_character(text: str) -> str | None:
    """The first character of ``text`` a name may not contain, or None."""
    for ch in text:
        if unicodedata.category(ch) in _BAD_CATEGORIES:
            return ch
    return None


def _check_path(path: object, field: str, max_length: int, max_component: int,
                component_check: Callable[[str], str | None] | None = None) -> str:
    if not isinstance(path, str):
        raise FileError(f"must be a string, not {type(path).__name__}", field=field)
    if not path:
        raise FileError("must not be empty", field=field)

    def fail(reason: str) -> FileError:
        return FileError(path, reason, field=field)

    if "\x00" in path:
        raise fail("contains a NUL character")
    bad = _bad_character(path)
    if bad is not None:
        raise fail(f"contains the control character {repr(bad)[1:-1]}")
    if "\\" in path:
        raise fail("contains a backslash (separate directories with '/')")
    size = len(path.encode("utf-8"))
    if size > max_length:
        raise fail(f"is {size} bytes long, longer than {max_length}")
    if path.startswith("/"):
        raise fail("must be relative to the work directory, not absolute")
    for component in path.split("/"):
        if component == "":
            raise fail("has an empty component (a trailing '/' or '//')")
        if component in (".", ".."):
            raise fail(f"has a '{component}' component")
        if len(component.encode("utf-8")) > max_component:
            raise fail(f"has a component longer than {max_component} bytes")
        if component_check is not None:
            reason = component_check(component)
            if reason is not None:
                raise fail(reason)
    return path


def validate_name(path: str, *, field: str = "path", max_length: int = 255, max_component: int = 255) -> str:
    """``path`` if it is an acceptable file name relative to the work directory.

    Accepted: ``/``-separated components, none empty, ``.`` or ``..``; not absolute; no NUL,
    control character (Unicode ``Cc``), line/paragraph separator or lone surrogate; no
    backslash (it is a legal POSIX name character but almost always a Windows-style
    separator by mistake); at most ``max_length`` UTF-8 bytes, each component at most
    ``max_component``. Glob characters are ordinary characters here. Nothing is rewritten:
    every accepted name is already in normal form (no ``./``, ``//`` or trailing ``/``), so
    the name returned is the name given. Raises :class:`FileError` naming ``field``.
    """
    return _check_path(path, field, max_length, max_component)


def _pattern_component(component: str) -> str | None:
    if "**" in component and component != "**":
        return "'**' must be a whole component (like 'a/**/b')"
    return None


def validate_pattern(pattern: str, *, field: str = "pattern", max_length: int = 255,
                     max_component: int = 255) -> str:
    """``pattern`` if it is an acceptable copy-out pattern: a name, or a glob.

    The rules of :func:`validate_name`, and within a component ``*``, ``?`` and ``[...]``
    match as :func:`fnmatch.fnmatchcase` does (``*`` also matches names starting with a
    dot; ``[`` without ``]`` is literal); a component that is exactly ``**`` matches zero or
    more directories. ``**`` elsewhere in a component is refused.
    """
    return _check_path(pattern, field, max_length, max_component, _pattern_component)


# --------------------------------------------------------------------------- openat2


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "arm64": 437}.get(platform.machine())

_openat2_state: dict[str, object] = {}


def _libc_syscall() -> Callable[..., int] | None:
    if "syscall" not in _openat2_state:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.syscall
            fn.restype = ctypes.c_long
            fn.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_OpenHow), ctypes.c_size_t]
        except (OSError, AttributeError):
            fn = None
        _openat2_state["syscall"] = fn
    return _openat2_state["syscall"]  # type: ignore[return-value]


def _openat2(dir_fd: int, name: bytes, flags: int, mode: int) -> int | None:
    """openat2(2) with the strict resolve flags; None if the kernel does not have it."""
    if _SYS_OPENAT2 is None or _openat2_state.get("missing"):
        return None
    syscall = _libc_syscall()
    if syscall is None:
        return None
    how = _OpenHow(flags=flags, mode=mode if flags & (os.O_CREAT | getattr(os, "O_TMPFILE", 0)) else 0,
                   resolve=_RESOLVE)
    fd = syscall(_SYS_OPENAT2, dir_fd, name, ctypes.byref(how), ctypes.sizeof(how))
    if fd >= 0:
        return int(fd)
    err = ctypes.get_errno()
    if err == errno.ENOSYS:
        _openat2_state["missing"] = True
        return None
    if err == errno.EXDEV:  # RESOLVE_NO_XDEV (a single component cannot escape RESOLVE_BENEATH)
        raise OSError(err, "on another file system", os.fsdecode(name))
    raise OSError(err, os.strerror(err), os.fsdecode(name))


def openat2_available() -> bool:
    """Whether opens here go through ``openat2(2)`` (else the ``O_NOFOLLOW`` fallback)."""
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        got = _openat2(fd, b".", os.O_PATH | os.O_CLOEXEC, 0)
    except OSError:
        return True  # the syscall exists; it only refused this open
    finally:
        os.close(fd)
    if got is None:
        return False
    os.close(got)
    return True


def _open_at(dir_fd: int, name: str, flags: int, mode: int = 0, *, dev: int | None = None) -> int:
    """Open one path component ``name`` relative to ``dir_fd``, never following a symlink.

    ``dev``: the device the result must be on (the fallback's stand-in for RESOLVE_NO_XDEV).
    """
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"not a single path component: {name!r}")
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC
    raw = os.fsencode(name)
    fd = _openat2(dir_fd, raw, flags, mode)
    if fd is None:
        fd = os.open(raw, flags, mode, dir_fd=dir_fd)
        if dev is not None:
            try:
                if os.fstat(fd).st_dev != dev:
                    raise OSError(errno.EXDEV, "on another file system", name)
            except BaseException:
                os.close(fd)
                raise
    return fd


def _open_root(workdir: str) -> int:
    """The work directory itself: the service made it, only its last component is checked."""
    return os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


# --------------------------------------------------------------------------- files in


def place_files(workdir: str, files: list[FileIn], *, owner: tuple[int, int] | None = None) -> None:
    """Create ``files`` in ``workdir`` before the job starts.

    Parent directories are created (mode 0755) or entered if they exist as real
    directories; files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (mode 0644, or
    0755 when ``executable``), all through directory fds, never following a symlink. A name
    that exists already, or a symlink or non-directory where a directory is needed, is a
    :class:`FileError`. With ``owner`` the directories and files made are chowned to
    ``(uid, gid)``. On error what was placed so far stays: the caller removes the work
    directory.
    """
    if owner is not None and (len(owner) != 2 or not all(isinstance(x, int) for x in owner)):
        raise ValueError("owner must be (uid, gid)")
    root = _open_root(workdir)
    try:
        dev = os.fstat(root).st_dev
        for index, item in enumerate(files):
            field = f"files[{index}].path"
            name = validate_name(item.path, field=field)
            if not isinstance(item.data, (bytes, bytearray, memoryview)):
                raise FileError(f"files[{index}].data must be bytes")
            _place_one(root, dev, name, bytes(item.data), item.executable, owner, field)
    finally:
        os.close(root)


def _place_one(root: int, dev: int, name: str, data: bytes, executable: bool,
               owner: tuple[int, int] | None, field: str) -> None:
    *parents, leaf = name.split("/")
    fds: list[int] = []
    try:
        here = root
        walked = []
        for component in parents:
            walked.append(component)
            made = False
            try:
                os.mkdir(component, 0o755, dir_fd=here)
                made = True
            except FileExistsError:
                pass
            except OSError as err:
                raise FileError(name, f"cannot create directory {_shown('/'.join(walked))}: {err.strerror}",
                                field=field) from None
            try:
                here = _open_at(here, component, os.O_RDONLY | os.O_DIRECTORY, dev=dev)
            except OSError as err:
                raise FileError(name, _in_the_way("/".join(walked), err), field=field) from None
            fds.append(here)
            if made:
                os.fchmod(here, 0o755)
                if owner is not None:
                    os.fchown(here, *owner)
        try:
            fd = _open_at(here, leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOCTTY,
                          0o755 if executable else 0o644, dev=dev)
        except FileExistsError:
            raise FileError(name, "already exists", field=field) from None
        except OSError as err:
            raise FileError(name, f"cannot create: {err.strerror}", field=field) from None
        try:
            os.fchmod(fd, 0o755 if executable else 0o644)
            if owner is not None:
                os.fchown(fd, *owner)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        finally:
            os.close(fd)
    finally:
        for fd in fds:
            os.close(fd)


def _in_the_way(where: str, err: OSError) -> str:
    if err.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
        return f"{_shown(where)} is a symlink or not a directory"
    return f"cannot open directory {_shown(where)}: {err.strerror}"


# --------------------------------------------------------------------------- files out

_State = tuple[int, int]  # (pattern index, component index)


class _Matcher:
    """All patterns as one NFA over path components; ``**`` is a self-looping state."""

    def __init__(self, patterns: list[str]) -> None:
        self.parts = [p.split("/") for p in patterns]
        self._regex: dict[str, Callable[[str], object]] = {}

    def _match(self, component: str, name: str) -> bool:
        if not (_GLOB_CHARS & set(component)):
            return component == name
        fn = self._regex.get(component)
        if fn is None:
            fn = self._regex[component] = re.compile(fnmatch.translate(component)).match
        return fn(name) is not None

    def closure(self, states: set[_State]) -> frozenset[_State]:
        todo = list(states)
        seen = set(states)
        while todo:
            p, i = todo.pop()
            parts = self.parts[p]
            if i < len(parts) and parts[i] == "**" and (p, i + 1) not in seen:
                seen.add((p, i + 1))
                todo.append((p, i + 1))
        return frozenset(seen)

    def start(self) -> frozenset[_State]:
        return self.closure({(p, 0) for p in range(len(self.parts))})

    def step(self, states: frozenset[_State], name: str) -> tuple[frozenset[_State], bool, bool]:
        """(states inside ``name``, whether ``name`` is matched, whether a pattern goes deeper)."""
        nxt: set[_State] = set()
        for p, i in states:
            parts = self.parts[p]
            if i >= len(parts):
                continue
            if parts[i] == "**":
                nxt.add((p, i))
            elif self._match(parts[i], name):
                nxt.add((p, i + 1))
        closed = self.closure(nxt)
        matched = any(i == len(self.parts[p]) for p, i in closed)
        deeper = any(i < len(self.parts[p]) for p, i in closed)
        return closed, matched, deeper

    def literals(self, states: frozenset[_State]) -> list[str] | None:
        """The names that can match here if every live component is a plain name, else None."""
        names = set()
        for p, i in states:
            parts = self.parts[p]
            if i >= len(parts):
                continue
            if parts[i] == "**" or _GLOB_CHARS & set(parts[i]):
                return None
            names.add(parts[i])
        return sorted(names, key=_sort_key)


def _sort_key(name: str) -> bytes:
    return os.fsencode(name)


_TYPE_NAMES = {
    stat.S_IFLNK: "symlink",
    stat.S_IFDIR: "not a regular file: directory",
    stat.S_IFIFO: "not a regular file: fifo",
    stat.S_IFSOCK: "not a regular file: socket",
    stat.S_IFCHR: "not a regular file: character device",
    stat.S_IFBLK: "not a regular file: block device",
}


def _type_reason(mode: int) -> str:
    return _TYPE_NAMES.get(stat.S_IFMT(mode), "not a regular file")


class _CopyOut:
    def __init__(self, root: int, dev: int, matcher: _Matcher, limits: CopyOutLimits) -> None:
        self.root = root
        self.dev = dev
        self.matcher = matcher
        self.limits = limits
        self.results: list[FileOut] = []
        self.scanned = 0
        self.files = 0
        self.total = 0
        self.total_hit = False
        self.exhausted: list[str] | None = None  # the directory where max_scanned_entries ran out

    # -- reporting

    def refuse(self, rel: list[str], reason: str, size: int = 0) -> None:
        self.results.append(FileOut(_display(rel), None, size, reason))

    # -- walking

    def names(self, fd: int, states: frozenset[_State], rel: list[str]) -> list[str]:
        """The entries of directory ``fd`` worth looking at, sorted; counts them as scanned.

        Reads at most what is left of ``max_scanned_entries``: if the directory has more,
        the entries read are still handled and the walk then stops (nothing more is read).
        """
        if self.exhausted is not None:
            return []
        left = self.limits.max_scanned_entries - self.scanned
        wanted = self.matcher.literals(states)
        if wanted is not None:
            if len(wanted) > left:
                wanted = wanted[:left]
                self.exhausted = rel
            self.scanned += len(wanted)
            return wanted
        names = []
        with os.scandir(fd) as entries:
            for entry in entries:
                if len(names) >= left:
                    self.exhausted = rel
                    break
                names.append(entry.name)
        self.scanned += len(names)
        names.sort(key=_sort_key)
        return names

    def walk(self) -> list[FileOut]:
        self._walk()
        if self.exhausted is not None:
            self.refuse(self.exhausted, "limit: max_scanned_entries")
        return self.results

    def _walk(self) -> None:
        # Depth-first with an explicit stack: one open fd per level, at most max_depth + 1.
        stack: list[tuple[int, list[str], Iterator[str], frozenset[_State]]] = []
        start = self.matcher.start()
        stack.append((self.root, [], iter(self.names(self.root, start, [])), start))
        try:
            while stack:
                fd, rel, names, states = stack[-1]
                name = next(names, None)
                if name is None:
                    stack.pop()
                    if fd != self.root:
                        os.close(fd)
                    continue
                inner, matched, deeper = self.matcher.step(states, name)
                if not matched and not deeper:
                    continue
                path = rel + [name]
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # a literal pattern naming nothing
                except OSError as err:
                    self.refuse(path, f"unreadable: {err.strerror}")
                    continue
                if stat.S_ISDIR(st.st_mode) and deeper:
                    child = self.enter(fd, name, st, path)
                    if child is not None:
                        try:
                            stack.append((child, path, iter(self.names(child, inner, path)), inner))
                        except BaseException:
                            os.close(child)
                            raise
                elif matched:
                    self.take(fd, name, st, path)
                elif stat.S_ISLNK(st.st_mode):
                    self.refuse(path, "symlink")  # a pattern would go through it: say why not
        finally:
            for fd, *_ in stack:
                if fd != self.root:
                    os.close(fd)

    def enter(self, fd: int, name: str, st: os.stat_result, path: list[str]) -> int | None:
        if len(path) >= self.limits.max_depth:
            self.refuse(path, "limit: max_depth")
            return None
        try:
            child = _open_at(fd, name, os.O_RDONLY | os.O_DIRECTORY, dev=self.dev)
        except OSError as err:
            self.refuse(path, f"unreadable directory: {err.strerror}")
            return None
        cst = os.fstat(child)
        if (cst.st_dev, cst.st_ino) != (st.st_dev, st.st_ino):
            os.close(child)
            self.refuse(path, "changed while copying")
            return None
        return child

    def take(self, fd: int, name: str, st: os.stat_result, path: list[str]) -> None:
        limits = self.limits
        if not stat.S_ISREG(st.st_mode):
            self.refuse(path, _type_reason(st.st_mode))
            return
        size = st.st_size
        problem = _name_problem(path)
        if problem:
            self.refuse(path, problem, size)
        elif st.st_nlink > 1:
            self.refuse(path, "hard link", size)
        elif size > limits.max_file_bytes:
            self.refuse(path, "too large", size)
        elif self.files >= limits.max_files:
            self.refuse(path, "limit: max_files", size)
        elif self.total_hit or self.total + size > limits.max_total_bytes:
            self.total_hit = True
            self.refuse(path, "limit: max_total_bytes", size)
        else:
            self.read(fd, name, st, path)

    def read(self, dir_fd: int, name: str, st: os.stat_result, path: list[str]) -> None:
        limits = self.limits
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY
        try:
            fd = _open_at(dir_fd, name, flags, dev=self.dev)
        except OSError as err:
            self.refuse(path, f"unreadable: {err.strerror}", st.st_size)
            return
        try:
            fst = os.fstat(fd)
            if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(fst.st_mode):
                self.refuse(path, "changed while copying", fst.st_size)
                return
            if fst.st_nlink > 1:
                self.refuse(path, "hard link", fst.st_size)
                return
            cap = limits.max_file_bytes + 1
            chunks = []
            got = 0
            while got < cap:
                chunk = os.read(fd, min(1 << 20, cap - got))
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
        except OSError as err:
            self.refuse(path, f"unreadable: {err.strerror}", st.st_size)
            return
        finally:
            os.close(fd)
        if got > limits.max_file_bytes:
            self.refuse(path, "too large", got)
        elif self.total + got > limits.max_total_bytes:
            self.total_hit = True
            self.refuse(path, "limit: max_total_bytes", got)
        else:
            data = b"".join(chunks)
            self.files += 1
            self.total += got
            self.results.append(FileOut(_display(path), data, got, None))


def _name_problem(path: list[str]) -> str | None:
    text = "/".join(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not UTF-8"
    if _bad_character(text) is not None:
        return "name has control characters"
    return None


def _display(path: list[str]) -> str:
    """``path`` as one line of valid text: undecodable bytes and controls escaped."""
    if not path:
        return "."
    raw = os.fsencode("/".join(path))
    return one_line(raw.decode("utf-8", "backslashreplace"))


def copy_out(workdir: str, patterns: list[str], limits: CopyOutLimits = CopyOutLimits()) -> list[FileOut]:
    """The regular files in ``workdir`` that ``patterns`` match, after the job has gone.

    Returns one :class:`FileOut` per matched entry, in walk order (depth first, names sorted
    by their bytes): the data of a regular file, or a refusal — ``"symlink"``,
    ``"not a regular file: <type>"``, ``"hard link"``, ``"too large"``, ``"name is not
    UTF-8"``, ``"name has control characters"``, ``"unreadable: ..."``, ``"limit: max_files"``,
    ``"limit: max_total_bytes"`` (once one file does not fit, no later one is taken),
    ``"limit: max_depth"`` (a directory a pattern would descend into, too deep) and
    ``"limit: max_scanned_entries"`` (reported once, last, for the directory where the
    budget ran out; the entries read up to then are still handled, nothing more is read).
    The per-directory order is by name bytes; a directory cut short by the budget is handled
    in a kernel-chosen subset. A directory a pattern descends into (``a/**``, ``**``) is walked, not
    reported; a symlink a pattern would descend through is reported as refused. Patterns
    are checked with :func:`validate_pattern` (a bad one raises :class:`FileError`).
    """
    if len(patterns) > limits.max_patterns:
        raise FileError(f"at most {limits.max_patterns} patterns, got {len(patterns)}", field="copy_out")
    checked = [validate_pattern(p, field=f"copy_out[{i}]") for i, p in enumerate(patterns)]
    if not checked:
        return []
    root = _open_root(workdir)
    try:
        return _CopyOut(root, os.fstat(root).st_dev, _Matcher(checked), limits).walk()
    finally:
        os.close(root)


# --------------------------------------------------------------------------- removal

_MAX_OPEN_LEVELS = 32  # deeper directories are moved up to the top and removed from there
_SWEEP_BATCH = 256  # subdirectory names remembered per directory between sweeps


def remove_workdir(workdir: str) -> None:
    """Delete ``workdir`` and everything in it; quietly done if it does not exist.

    Works through directory fds (never following a symlink: a symlink is unlinked, not
    entered), makes directories the job left without permissions ``u+rwx`` before going
    in, never crosses onto another file system (raises instead), and keeps memory and open
    files bounded however many entries and however deep the tree: a directory more than
    32 levels down is renamed to the top of ``workdir`` and removed from there. Raises
    ``OSError`` if something could not be removed.
    """
    path = os.path.abspath(workdir)
    parent, base = os.path.split(path)
    if not base:
        raise ValueError(f"refusing to remove {workdir!r}")
    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(base, dir_fd=pfd)
            return
        root = _open_for_removal(pfd, base, None)
        if root is None:
            return
        try:
            _empty_tree(root)
        finally:
            os.close(root)
        os.rmdir(base, dir_fd=pfd)
    finally:
        os.close(pfd)


def _open_for_removal(dir_fd: int, name: str, dev: int | None) -> int | None:
    """Directory ``name`` opened, with ``u+rwx`` for us; None if it is gone."""
    flags = os.O_RDONLY | os.O_DIRECTORY
    try:
        fd = _open_at(dir_fd, name, flags, dev=dev)
    except FileNotFoundError:
        return None
    except PermissionError:
        _chmod_nofollow(dir_fd, name, dev)
        fd = _open_at(dir_fd, name, flags, dev=dev)
    try:
        st = os.fstat(fd)
        if dev is not None and st.st_dev != dev:
            raise OSError(errno.EXDEV, "on another file system", name)
        if st.st_mode & 0o700 != 0o700:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) | 0o700)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _chmod_nofollow(dir_fd: int, name: str, dev: int | None) -> None:
    """chmod u+rwx a directory we may not open for reading, without following a symlink."""
    pfd = _open_at(dir_fd, name, os.O_PATH | os.O_DIRECTORY, dev=dev)
    try:
        mode = stat.S_IMODE(os.fstat(pfd).st_mode) | 0o700
        try:
            # The magic link names exactly the directory pfd holds (checked O_NOFOLLOW above).
            os.chmod(f"/proc/self/fd/{pfd}", mode)
        except FileNotFoundError:  # no /proc: fchmodat(AT_SYMLINK_NOFOLLOW) if libc can
            os.chmod(name, mode, dir_fd=dir_fd, follow_symlinks=False)
    finally:
        os.close(pfd)


def _sweep(fd: int) -> tuple[list[str], bool, int]:
    """Unlink every non-directory in ``fd``; (some subdirectory names, more left?, entries seen)."""
    dirs: list[str] = []
    more = False
    seen = 0
    with os.scandir(fd) as entries:
        for entry in entries:
            seen += 1
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if not is_dir:
                try:
                    os.unlink(entry.name, dir_fd=fd)
                    continue
                except FileNotFoundError:
                    continue
                except IsADirectoryError:
                    pass
            if len(dirs) < _SWEEP_BATCH:
                dirs.append(entry.name)
            else:
                more = True
    return dirs, more, seen


def _empty_tree(root: int) -> None:
    dev = os.fstat(root).st_dev
    moved = 0
    # frame: [fd, name in parent, pending subdirectory names]
    stack: list[list] = [[root, None, []]]
    try:
        while stack:
            frame = stack[-1]
            fd, _, pending = frame
            if not pending:
                dirs, _, seen = _sweep(fd)
                if seen == 0:  # empty: remove it from its parent
                    stack.pop()
                    if stack:
                        os.close(fd)
                        os.rmdir(frame[1], dir_fd=stack[-1][0])
                    continue
                frame[2] = pending = dirs
                if not pending:
                    continue  # only files were there: sweep again to see it empty
            name = pending.pop()
            child = _open_for_removal(fd, name, dev)
            if child is None:
                continue
            if len(stack) >= _MAX_OPEN_LEVELS:
                os.close(child)
                while True:
                    moved += 1
                    target = f".sandboxd-remove-{moved}"
                    try:
                        os.stat(target, dir_fd=root, follow_symlinks=False)
                    except FileNotFoundError:
                        break
                os.rename(name, target, src_dir_fd=fd, dst_dir_fd=root)
                continue  # the root's next sweep finds it
            stack.append([child, name, []])
    finally:
        for frame in stack[1:]:
            os.close(frame[0])
