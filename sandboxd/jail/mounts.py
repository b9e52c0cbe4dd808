"""Mount namespace: a new root on tmpfs that holds only what the policy names.

Order (all in the child, inside its own mount and PID namespaces):
1. make every mount private, so nothing we do propagates to the host;
2. open every bind source with O_PATH before anything is mounted over it;
3. mount a tmpfs over /tmp (our base; the host's /tmp is untouched outside this namespace)
   and build the jail's tree in it: binds, tmpfs mounts, symlinks, /dev, /tmp, the work path;
4. mount a fresh /proc (we are PID 1 of the new PID namespace) and mask its sensitive files;
5. pivot_root into the base and detach the old root, so no path leads back to the host;
6. make the root and /dev read-only.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from sandboxd.jail import syscalls as sc
from sandboxd.jail.failure import SetupFailure, failed
from sandboxd.jail.plan import JailTemplate

BASE = "/tmp"
_BIND_ATTRS = sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV
DEVICES = ("null", "zero", "full", "random", "urandom")
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
              ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"))
# Masked as container runtimes mask them: files hidden behind /dev/null, directories behind an
# empty read-only tmpfs, and the kernel's tunables read-only.
PROC_HIDDEN_FILES = ("kcore", "keys", "timer_list", "sched_debug", "latency_stats", "kallsyms",
                     "kmsg", "config.gz", "pagetypeinfo", "vmallocinfo")
PROC_HIDDEN_DIRS = ("acpi", "scsi", "asound", "driver")
PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus", "fs")


def _mount(source, target, fstype, flags, data, what):
    try:
        sc.mount(source, target, fstype, flags, data)
    except OSError as exc:
        raise failed(what, exc) from None


def _setattr(path, attrs, recursive, what):
    try:
        sc.mount_setattr(path, attrs, recursive=recursive)
    except OSError as exc:
        raise failed(what, exc) from None


def _make_mountpoint(path: str, is_dir: bool) -> None:
    parent = os.path.dirname(path)
    os.makedirs(parent, mode=0o755, exist_ok=True)
    if is_dir:
        if not os.path.isdir(path):
            os.mkdir(path, 0o755)
    elif not os.path.lexists(path):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))


WORK_KEY = "@work"


@dataclass(frozen=True)
class Source:
    """A bind source: an O_PATH fd to bind from, or a detached mount tree to attach."""

    fd: int  # -1: the source does not exist
    detached: bool = False


def open_sources(template: JailTemplate, workdir: str | None, *, detached: bool) -> dict[str, Source]:
    """Every bind source, keyed by its destination (the work directory as ``WORK_KEY``).

    ``detached=True`` runs in a root spawner before clone: each source becomes a detached
    clone of its mount (open_tree), already read-only/nosuid/nodev as asked, resolved with
    the operator's rights rather than the job's unprivileged id; the child attaches it with
    move_mount (a bind from an fd of another mount namespace is refused). ``detached=False``
    runs in the child of a rootless spawner, which has the same rights as its caller.
    """
    wanted = [(op.dest, op.source, op.writable) for op in template.mounts if op.kind == "bind"]
    if workdir:
        wanted.append((WORK_KEY, workdir, True))
    sources: dict[str, Source] = {}
    try:
        for key, path, writable in wanted:
            sources[key] = _open_source(path, writable, detached)
    except OSError as exc:
        close_sources(sources)
        raise failed(f"open bind source {path}", exc) from None
    return sources


def _open_source(path: str, writable: bool, detached: bool) -> Source:
    try:
        if not detached:
            return Source(os.open(path, os.O_PATH | os.O_CLOEXEC))
        # Root, in the host's mount namespace, before clone: a detached copy the child can attach.
        tree = sc.open_tree(path, sc.OPEN_TREE_CLONE | sc.AT_RECURSIVE | os.O_CLOEXEC)
    except FileNotFoundError:
        return Source(-1)
    try:
        attrs = _BIND_ATTRS if writable else _BIND_ATTRS | sc.MOUNT_ATTR_RDONLY
        # Read-only/nosuid/nodev set on the detached copy, so it is never writable inside.
        sc.mount_setattr_fd(tree, attrs)
    except OSError:
        os.close(tree)
        raise
    return Source(tree, detached=True)


def close_sources(sources: dict[str, Source]) -> None:
    for source in sources.values():
        if source.fd >= 0:
            os.close(source.fd)


def _bind(source: Source, target: str, writable: bool, what: str) -> None:
    is_dir = stat.S_ISDIR(os.fstat(source.fd).st_mode)
    _make_mountpoint(target, is_dir)
    if source.detached:
        try:
            # In our own mount namespace (CAP_SYS_ADMIN over it): attach the spawner's copy.
            sc.move_mount_fd(source.fd, target)
        except OSError as exc:
            raise failed(what, exc) from None
        return
    # Rootless: bind from the fd opened before the base tmpfs hid the host's path.
    _mount(f"/proc/self/fd/{source.fd}", target, None, sc.MS_BIND | sc.MS_REC, None, what)
    attrs = _BIND_ATTRS if writable else _BIND_ATTRS | sc.MOUNT_ATTR_RDONLY
    # mount_setattr changes only the bits named, so the source's locked flags (noexec…) stay.
    _setattr(target, attrs, True, what)


def inode_limit(size: int) -> int:
    """Inodes a tmpfs of ``size`` bytes may hold: one per 4 KiB page, at least 1024.

    Without a cap a tmpfs allows millions of empty files, each costing kernel memory that no
    size= counts: a job could fill host memory through a 16 MiB /tmp."""
    return max(1024, size // 4096)


def _tmpfs(target: str, size: int, mode: str, what: str, flags: int = 0) -> None:
    os.makedirs(target, mode=0o755, exist_ok=True)
    size = max(size, 4096)
    # A fresh tmpfs in our mount namespace: sized and inode-capped, nothing shared with the host.
    _mount("tmpfs", target, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | flags,
           f"mode={mode},size={size},nr_inodes={inode_limit(size)}", what)


def _build_dev(root: str, shm_size: int) -> None:
    dev = root + "/dev"
    _tmpfs(dev, 1 << 16, "0755", "mount tmpfs on /dev", sc.MS_NOEXEC)
    for name in DEVICES:
        target = f"{dev}/{name}"
        _make_mountpoint(target, False)
        # Device nodes cannot be created in a user namespace; bind the host's harmless ones.
        _mount(f"/dev/{name}", target, None, sc.MS_BIND, None, f"bind /dev/{name}")
    for name, link in DEV_LINKS:
        os.symlink(link, f"{dev}/{name}")
    _tmpfs(f"{dev}/shm", shm_size, "1777", "mount tmpfs on /dev/shm")


def _mount_proc(root: str) -> None:
    target = root + "/proc"
    os.makedirs(target, mode=0o755, exist_ok=True)
    # Why here: a proc mount shows the PID namespace of its mounter, and we are its PID 1; the
    # kernel only allows it while the host's full /proc is still reachable (before the old
    # root is detached).
    _mount("proc", target, "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, None, "mount /proc")  # our PID ns


def _mask_proc() -> None:
    for name in PROC_HIDDEN_FILES:
        path = f"/proc/{name}"
        if os.path.exists(path):
            # Hide a kernel interface the job has no business reading (as container runtimes do).
            _mount("/dev/null", path, None, sc.MS_BIND, None, f"mask {path}")
    for name in PROC_HIDDEN_DIRS:
        path = f"/proc/{name}"
        if os.path.isdir(path):
            _mount("tmpfs", path, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | sc.MS_RDONLY,
                   "size=0,mode=0555", f"mask {path}")
    for name in PROC_READ_ONLY:
        path = f"/proc/{name}"
        if os.path.exists(path):
            # A bind onto itself, so the kernel's tunables can be made read-only for the job.
            _mount(path, path, None, sc.MS_BIND | sc.MS_REC, None, f"bind {path}")
            _setattr(path, sc.MOUNT_ATTR_RDONLY | sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV
                     | sc.MOUNT_ATTR_NOEXEC, True, f"make {path} read-only")


def build_root(template: JailTemplate, sources: dict[str, Source] | None, workdir: str | None) -> list[str]:
    """Build and enter the jail's root; returns the mount points made, for the result.

    ``sources`` are the bind sources a root spawner prepared (``open_sources``), or None to
    open them here (rootless). ``workdir`` is a host directory to bind at the work path now
    (a rootless job's, known before the sandbox is built); otherwise the work path is left
    an empty mount point and ``attach_work`` fills it when the job arrives.
    """
    made: list[str] = []
    # Why first: with shared propagation our mounts would appear on the host, and pivot_root
    # refuses a shared root.
    _mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE, None, "make / private")
    if sources is None:  # before the base tmpfs hides anything under /tmp
        sources = open_sources(template, workdir, detached=False)
    _tmpfs(BASE, 4 << 20, "0755", "mount the root tmpfs")
    for op in template.mounts:
        target = BASE + op.dest
        if op.kind == "bind":
            source = sources[op.dest]
            if source.fd < 0:
                if op.optional:
                    continue
                raise SetupFailure(f"bind source {op.source} does not exist")
            _bind(source, target, op.writable, f"bind {op.source} on {op.dest}")
        elif op.kind == "tmpfs":
            _tmpfs(target, op.size, "0755", f"mount tmpfs on {op.dest}")
        elif op.kind == "symlink":
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            if os.path.islink(target) and os.readlink(target) == op.source:
                continue  # already there through a bind of its parent
            try:
                os.symlink(op.source, target)
            except OSError as exc:
                raise failed(f"symlink {op.dest} -> {op.source}", exc) from None
        else:
            raise SetupFailure(f"unknown mount kind {op.kind!r}")
        made.append(op.dest)
    work = BASE + template.work_path
    os.makedirs(work, mode=0o755, exist_ok=True)
    if workdir:
        source = sources[WORK_KEY]
        if source.fd < 0:
            raise SetupFailure(f"work directory {workdir} does not exist")
        _bind(source, work, True, f"bind {workdir} on {template.work_path}")
        made.append(template.work_path)
    _tmpfs(BASE + "/tmp", template.tmp_size, "1777", "mount tmpfs on /tmp")
    _build_dev(BASE, template.shm_size)
    _mount_proc(BASE)
    made += ["/tmp", "/dev", "/dev/shm", "/proc"]
    close_sources(sources)

    os.chdir(BASE)
    # pivot_root(".", ".") stacks the old root under the new one; detaching it right away
    # leaves no path back to the host's filesystem.
    try:
        sc.pivot_root(".", ".")
        sc.umount2(".", sc.MNT_DETACH)
    except OSError as exc:
        raise failed("pivot_root into the new root", exc) from None
    os.chdir("/")
    _mask_proc()
    # Last, once everything is mounted on them: nothing can be created in / or /dev by the job.
    _setattr("/dev", sc.MOUNT_ATTR_RDONLY, False, "make /dev read-only")
    _setattr("/", sc.MOUNT_ATTR_RDONLY | sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV, False,
             "make the root read-only")
    return made


def attach_work(template: JailTemplate, tree: int, bound_early: bool, workdir: str | None) -> str:
    """The job's work directory at the work path, then the job's cwd; returns what it is.

    ``tree``: a detached (idmapped) clone of the job's work directory made by a root spawner,
    attached with move_mount; -1 and not ``bound_early``: a fresh tmpfs of the policy's size.
    """
    if tree >= 0:
        try:
            # Still holding CAP_SYS_ADMIN over our mount namespace: attach the job's work dir.
            sc.move_mount_fd(tree, template.work_path)
        except OSError as exc:
            raise failed(f"attach {workdir} on {template.work_path}", exc) from None
        finally:
            os.close(tree)
        kind = "bind (idmapped)"
    elif bound_early:
        kind = "bind"
    else:
        _tmpfs(template.work_path, template.work_size, "0755", f"mount tmpfs on {template.work_path}")
        kind = "tmpfs"
    try:
        os.chdir(template.work_path)
    except OSError as exc:
        raise failed(f"chdir {template.work_path}", exc) from None
    return kind
