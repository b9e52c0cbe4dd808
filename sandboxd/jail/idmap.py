"""Idmapped work directories: a host directory the job can write as its own, unchanged on disk.

When sandboxd runs as root, a job is an unprivileged host id H that owns nothing on the
host, so a work directory the caller owns would be read-only to it. Instead of chowning the
caller's files, the spawner clones the directory's mount with an id mapping that shows its
owner as H: inside, the job (uid 0 = H) owns its work directory; on disk, everything it
writes belongs to the directory's real owner. Rootless jobs do not need this: they already
are the caller.

Needs Linux >= 5.12 and a filesystem that supports idmapped mounts (ext4, xfs, btrfs, tmpfs
>= 6.3, …); where they are missing the job is refused with that reason (fail closed).
"""

from __future__ import annotations

import os

from sandboxd.jail import syscalls as sc
from sandboxd.jail.failure import SetupFailure


def _mapping_namespace(owner_uid: int, owner_gid: int, host_id: int) -> int:
    """An fd of a throwaway user namespace mapping owner → host_id (1 id each)."""
    hold_r, hold_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid, pidfd = sc.clone_process(sc.CLONE_NEWUSER)
    except OSError as exc:
        os.close(hold_r)
        os.close(hold_w)
        raise SetupFailure(f"user namespace for the work directory's id mapping: {exc.strerror}", exc.errno or 0)
    if pid == 0:  # holds the namespace open until the spawner has its fd, then goes
        os.close(hold_w)
        os.read(hold_r, 1)
        os._exit(0)
    os.close(hold_r)
    try:
        with open(f"/proc/{pid}/uid_map", "w") as handle:
            handle.write(f"{owner_uid} {host_id} 1\n")
        with open(f"/proc/{pid}/gid_map", "w") as handle:
            handle.write(f"{owner_gid} {host_id} 1\n")
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(hold_w)
        os.waitpid(pid, 0)
        os.close(pidfd)


def idmapped_tree(path: str, host_id: int, userns_path: str | None = None) -> int:
    """A detached clone of the mount at ``path`` whose owner shows as ``host_id``.

    Runs in the spawner (as root, in the host's namespaces): only a process privileged over
    the filesystem's user namespace may create an idmapped mount. The child attaches the
    returned fd in its own mount namespace with move_mount(2). ``userns_path`` names a user
    namespace that already maps the directory's owner to ``host_id`` (the job's own, for a
    directory owned by root); without it a throwaway one is made.
    """
    if userns_path is not None:
        userns_fd = os.open(userns_path, os.O_RDONLY | os.O_CLOEXEC)
    else:
        info = os.stat(path)
        userns_fd = _mapping_namespace(info.st_uid, info.st_gid, host_id)
    try:
        tree = sc.open_tree(path, sc.OPEN_TREE_CLONE | sc.AT_RECURSIVE | os.O_CLOEXEC)
    except OSError as exc:
        os.close(userns_fd)
        raise SetupFailure(f"clone the mount of {path}: {exc.strerror}", exc.errno or 0) from None
    try:
        sc.mount_setattr_fd(tree, sc.MOUNT_ATTR_IDMAP | sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV,
                            userns_fd)
    except OSError as exc:
        os.close(tree)
        raise SetupFailure(f"idmap the work directory {path} (does its filesystem support "
                           f"idmapped mounts?): {exc.strerror}", exc.errno or 0) from None
    finally:
        os.close(userns_fd)
    return tree
