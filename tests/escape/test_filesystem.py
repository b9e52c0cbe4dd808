"""Escape attempts through the file system: reading or changing host files from a job.

Canary files hold a per-session token in /tmp, /root and /etc of the host; a case passes
when the token never reaches the job's output and every path the job tried to create is
still absent on the host (and host files it aimed at are byte-for-byte unchanged).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import pytest

from tests.escape.conftest import (POLICIES, Canaries, assert_killed_by_seccomp, job, traces)
from tests.sandboxes import Runner


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _host_paths(canaries: Canaries) -> list[str]:
    return [str(p) for p in canaries.readable]


@pytest.mark.parametrize("policy", POLICIES)
def test_fs01_read_host_canaries(root_sandbox: Runner, hostile: Path, canaries: Canaries, policy: str) -> None:
    """FS-01 read host files in /tmp, /root and /etc by their host path.
    Stopped by: the mount namespace (a fresh tmpfs root holding only the policy's binds)."""
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "read", *_host_paths(canaries), policy=policy)
    assert canaries.token not in outcome.stdout + outcome.stderr
    for path in _host_paths(canaries):
        assert f"{path} errno ENOENT" in outcome.stdout, outcome.stdout


def test_fs01b_read_host_canaries_root_and_rootless(sandbox: Runner, hostile: Path, canaries: Canaries) -> None:
    """FS-01b the same read as root-started and as rootless sandboxd (world-readable /tmp canary).
    Stopped by: the mount namespace."""
    outcome = job(sandbox, hostile, "/hostile/hostile", "read", str(canaries.readable[0]))
    assert canaries.token not in outcome.stdout + outcome.stderr


@pytest.mark.parametrize("policy", POLICIES)
def test_fs02_write_host_paths(root_sandbox: Runner, hostile: Path, canaries: Canaries, policy: str) -> None:
    """FS-02 create files in host /tmp, /root, /etc and overwrite the host canaries.
    Stopped by: the mount namespace (paths do not exist in the job), read-only root, Landlock."""
    targets = [str(p) for p in canaries.forbidden] + _host_paths(canaries)
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "write", *targets, policy=policy)
    canaries.assert_untouched()
    # What the job wrote went to its own /tmp tmpfs, which is gone with the job.
    assert f"{canaries.readable[0]} errno ENOENT" in outcome.stdout, outcome.stdout


def test_fs02b_write_host_paths_root_and_rootless(sandbox: Runner, hostile: Path, canaries: Canaries) -> None:
    """FS-02b the host-path writes as root-started and rootless sandboxd.
    Stopped by: the mount namespace, read-only root, Landlock."""
    targets = [str(p) for p in canaries.forbidden] + _host_paths(canaries)
    job(sandbox, hostile, "/hostile/hostile", "write", *targets)
    canaries.assert_untouched()


@pytest.mark.parametrize("policy", ("default", "compile"))
def test_fs03_symlink_in_workdir_to_host_file_is_read(root_sandbox: Runner, hostile: Path, canaries: Canaries,
                                                       workdir: Path, policy: str) -> None:
    """FS-03 the host work dir holds symlinks to the host canaries (absolute and relative).
    Stopped by: the mount namespace (symlinks resolve in the job's tree, where the targets do not exist)."""
    (workdir / "abs-link").symlink_to(canaries.readable[0])
    (workdir / "rel-link").symlink_to(os.path.relpath(canaries.readable[0], workdir))
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "read", "/work/abs-link", "/work/rel-link",
                  policy=policy, workdir=workdir)
    assert canaries.token not in outcome.stdout + outcome.stderr


def test_fs04_symlink_in_workdir_to_host_path_is_written(root_sandbox: Runner, hostile: Path, canaries: Canaries,
                                                         workdir: Path) -> None:
    """FS-04 write through host-made symlinks in the work dir that point at host paths
    (a new file in the canary dir, and the canary itself).
    Stopped by: the mount namespace (the targets resolve inside the job), Landlock."""
    (workdir / "new-link").symlink_to(canaries.forbidden[0])
    (workdir / "old-link").symlink_to(canaries.readable[0])
    job(root_sandbox, hostile, "/hostile/hostile", "write", "/work/new-link", "/work/old-link", workdir=workdir)
    canaries.assert_untouched()
    assert (workdir / "new-link").is_symlink() and (workdir / "old-link").is_symlink()


def test_fs05_hardlink_read_only_files_into_the_workdir(root_sandbox: Runner, hostile: Path, workdir: Path) -> None:
    """FS-05 hard-link read-only files (/usr/bin/passwd, a file of a read-only host bind) into the
    writable host work dir, by path, through /proc/self/fd and with AT_EMPTY_PATH.
    Stopped by: the mount namespace (EXDEV across mounts), no CAP_DAC_READ_SEARCH, Landlock REFER."""
    sources = ["/usr/bin/passwd", "/hostile/suid"]
    inodes = {os.stat(p).st_ino for p in ("/usr/bin/passwd", hostile / "suid")}
    job(root_sandbox, hostile, "/hostile/hostile", "hardlink", *sources, workdir=workdir)
    for entry in workdir.iterdir():
        assert entry.lstat().st_ino not in inodes, f"{entry} is a hard link to a read-only host file"
    assert os.stat("/usr/bin/passwd").st_nlink == 1


@pytest.mark.parametrize("policy", POLICIES)
def test_fs06_dotdot_traversal_from_the_workdir(root_sandbox: Runner, hostile: Path, canaries: Canaries,
                                                workdir: Path, policy: str) -> None:
    """FS-06 climb out of /work with ../ (relative and absolute) towards the host canaries.
    Stopped by: the mount namespace (/ of the job is a tmpfs; .. of / is /)."""
    climbs = []
    for path in _host_paths(canaries):
        climbs += ["../" * 12 + path.lstrip("/"), "/work/" + "../" * 12 + path.lstrip("/"),
                   "/work/../.." + str(workdir) + "/../.." + path]
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "read", *climbs, policy=policy, workdir=workdir)
    assert canaries.token not in outcome.stdout + outcome.stderr


@pytest.mark.parametrize("policy", POLICIES)
def test_fs07_proc_root_links(root_sandbox: Runner, hostile: Path, canaries: Canaries, policy: str) -> None:
    """FS-07 reach the host through /proc/1/root, /proc/self/root, /proc/2/root and /proc/thread-self/root.
    Stopped by: the PID namespace (pid 1 is the job's own init), the mount namespace (every root is
    the job's root) and the init being non-dumpable (EACCES on /proc/1/root)."""
    paths = []
    for base in ("/proc/1/root", "/proc/self/root", "/proc/2/root", "/proc/thread-self/root"):
        paths += [base + p for p in _host_paths(canaries)]
        paths += [base + "/.." * 8 + p for p in _host_paths(canaries)]
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "read", *paths, policy=policy)
    assert canaries.token not in outcome.stdout + outcome.stderr


def test_fs08_open_proc_exe_for_writing(root_sandbox: Runner, hostile: Path, workdir: Path) -> None:
    """FS-08 open /proc/self/exe (the bound hostile binary) and /proc/1/exe (the job's init, i.e. the
    host's sandboxd interpreter) for writing, the runc CVE-2019-5736 pattern.
    Stopped by: read-only binds, the unmapped host owner, the init being non-dumpable, Landlock."""
    interpreter = os.path.realpath(root_sandbox.python)
    before = {interpreter: _sha(interpreter), str(hostile / "hostile"): _sha(str(hostile / "hostile"))}
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "proc-exe", "/proc/self/exe", "/proc/1/exe",
                  "/proc/2/exe", workdir=workdir)
    assert " ok " not in outcome.stdout, outcome.stdout
    assert traces(workdir) == []
    assert {path: _sha(path) for path in before} == before


@pytest.mark.parametrize("policy", ("default", "compile"))
def test_fs09_open_by_handle_at_shocker(root_sandbox: Runner, hostile: Path, canaries: Canaries,
                                        workdir: Path, policy: str) -> None:
    """FS-09 guess the file handle of the host file system's root (ext4 inode 2) and open it with
    open_by_handle_at from a job, bypassing the mount namespace ("shocker").
    Stopped by: seccomp (open_by_handle_at is not in the profiles: EPERM) and no CAP_DAC_READ_SEARCH."""
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "open-by-handle", *_host_paths(canaries),
                  policy=policy, workdir=workdir)
    assert "open_by_handle_at errno EPERM" in outcome.stdout, outcome.stdout
    assert canaries.token not in outcome.stdout
    assert traces(workdir) == []


@pytest.mark.parametrize("policy", POLICIES)
def test_fs10_remount_a_read_only_bind_writable(root_sandbox: Runner, hostile: Path, policy: str) -> None:
    """FS-10 mount(MS_REMOUNT|MS_BIND) on the read-only bind of a host directory, then write into it.
    Stopped by: seccomp (mount is a kill rule); behind it no CAP_SYS_ADMIN and Landlock."""
    victim = root_sandbox.make_dir("escape-ro-")
    victim.chmod(0o777)
    try:
        outcome = job(root_sandbox, hostile, "/hostile/hostile", "remount", "/victim", policy=policy,
                      flags=("--ro-bind", str(victim), "/victim"))
        assert_killed_by_seccomp(outcome, "mount")
        assert list(victim.iterdir()) == []
    finally:
        shutil.rmtree(victim, ignore_errors=True)


def test_fs11_mount_sysfs(root_sandbox: Runner, hostile: Path, workdir: Path) -> None:
    """FS-11 mount a sysfs to read the host's devices and kernel state.
    Stopped by: seccomp (mount is a kill rule)."""
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "mount-sysfs", workdir=workdir)
    assert_killed_by_seccomp(outcome, "mount")
    assert traces(workdir) == []


@pytest.mark.parametrize("policy", POLICIES)
def test_fs12_umount_the_proc_masks(root_sandbox: Runner, hostile: Path, workdir: Path, policy: str) -> None:
    """FS-12 umount the /dev/null masks over /proc/keys and /proc/kallsyms to see the host's data.
    Stopped by: seccomp (umount2 is a kill rule)."""
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "umount", "/proc/keys", "/proc/kallsyms",
                  policy=policy, workdir=workdir)
    assert_killed_by_seccomp(outcome, "umount2")
    assert traces(workdir) == []


@pytest.mark.parametrize("policy", POLICIES)
def test_fs13_chroot_escape(root_sandbox: Runner, hostile: Path, canaries: Canaries, workdir: Path,
                            policy: str) -> None:
    """FS-13 chroot into a subdirectory, chdir("..") many times, chroot(".") and read host files.
    Stopped by: seccomp (chroot is not in the profiles: EPERM), no CAP_SYS_CHROOT; and even a
    successful climb would end at the job's pivot_root'ed tmpfs root."""
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "chroot-escape", *_host_paths(canaries),
                  policy=policy, workdir=workdir)
    assert "chroot errno EPERM" in outcome.stdout
    assert canaries.token not in outcome.stdout
    assert traces(workdir) == []


@pytest.mark.parametrize("policy", POLICIES)
def test_fs14_pivot_root(root_sandbox: Runner, hostile: Path, workdir: Path, policy: str) -> None:
    """FS-14 pivot_root to a new root (looking for the detached old root).
    Stopped by: seccomp (pivot_root is a kill rule)."""
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "pivot-root", policy=policy, workdir=workdir)
    assert_killed_by_seccomp(outcome, "pivot_root")
    assert traces(workdir) == []


@pytest.mark.parametrize("policy", ("default", "compile"))
def test_fs15_mknod_host_disk_and_mem(root_sandbox: Runner, hostile: Path, workdir: Path, policy: str) -> None:
    """FS-15 mknod a block device with the host root disk's numbers in the host work dir (and
    /dev/mem's 1:1 next to it), then read it.
    Stopped by: no CAP_MKNOD in the initial user namespace, Landlock (MAKE_BLOCK/MAKE_CHAR not
    granted), nodev on the work dir."""
    dev = os.stat("/").st_dev
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "mknod", "/work/disk",
                  str(os.major(dev)), str(os.minor(dev)), policy=policy, workdir=workdir)
    assert "open-block errno" in outcome.stdout and "open-mem errno" in outcome.stdout, outcome.stdout
    for entry in workdir.iterdir():
        mode = entry.lstat().st_mode
        assert not (stat.S_ISBLK(mode) or stat.S_ISCHR(mode)), f"device node {entry} on the host"
    assert traces(workdir) == []


def test_fs16_sys_is_not_mounted(root_sandbox: Runner, hostile: Path) -> None:
    """FS-16 read host state from /sys (block devices, network interfaces, DMI, cgroups).
    Stopped by: the mount namespace (no /sys in the job)."""
    host_uevent = Path("/sys/kernel/uevent_seqnum").read_text().strip()
    paths = ["/sys/kernel/uevent_seqnum", "/sys/class/net/lo/address", "/sys/fs/cgroup/memory/memory.limit_in_bytes",
             "/sys/block/vda/size", "/sys/devices/virtual/dmi/id/product_uuid"]
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "read", *paths)
    for path in paths:
        assert f"{path} errno ENOENT" in outcome.stdout, outcome.stdout
    assert "content" not in outcome.stdout and host_uevent not in outcome.stdout.split()


@pytest.mark.parametrize("policy", POLICIES)
def test_fs17_proc_sys_writes(root_sandbox: Runner, hostile: Path, policy: str) -> None:
    """FS-17 write kernel tunables: core_pattern (a classic host escape), modprobe, hostname, drop_caches.
    Stopped by: /proc/sys mounted read-only; the files belong to the unmapped host root; Landlock."""
    targets = ["/proc/sys/kernel/core_pattern", "/proc/sys/kernel/modprobe", "/proc/sys/kernel/hostname",
               "/proc/sys/vm/drop_caches", "/proc/sys/fs/suid_dumpable"]
    before = {t: Path(t).read_bytes() for t in targets if Path(t).exists() and t != "/proc/sys/vm/drop_caches"}
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "write", *targets, policy=policy)
    assert "written" not in outcome.stdout, outcome.stdout
    assert {t: Path(t).read_bytes() for t in before} == before


def test_fs18_sysrq_trigger(root_sandbox: Runner, hostile: Path) -> None:
    """FS-18 write /proc/sysrq-trigger (absent on this kernel; bound read-only where present).
    Stopped by: the read-only /proc/sysrq-trigger bind, the unmapped host owner (0200 root), Landlock."""
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "write", "/proc/sysrq-trigger")
    assert "written" not in outcome.stdout, outcome.stdout


def test_fs19_kernel_memory_and_raw_devices(root_sandbox: Runner, hostile: Path) -> None:
    """FS-19 read /proc/kcore, /dev/mem, /dev/kmem, /dev/port and the host's root disk device.
    Stopped by: /proc masking (kcore behind /dev/null), the minimal /dev (null, zero, full, random,
    urandom only)."""
    dev = os.stat("/").st_dev
    disk = next((f"/dev/{name}" for name in os.listdir("/dev")
                 if os.path.exists(f"/dev/{name}") and stat.S_ISBLK(os.stat(f"/dev/{name}").st_mode)
                 and os.stat(f"/dev/{name}").st_rdev == dev), "/dev/vda")
    paths = ["/proc/kcore", "/dev/mem", "/dev/kmem", "/dev/port", disk, "/dev/vda", "/dev/sda"]
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "read", *paths)
    for path in paths:
        line = next(line for line in outcome.stdout.splitlines() if line.startswith(path + " "))
        assert line == f"{path} errno ENOENT" or line == f"{path} content ", line


@pytest.mark.parametrize("policy", POLICIES)
def test_fs20_write_into_read_only_host_bind(root_sandbox: Runner, hostile: Path, policy: str) -> None:
    """FS-20 create, overwrite and chmod files in a host directory bound read-only (0777 on the host).
    Stopped by: the read-only bind (EROFS) and Landlock (no write rights outside the writable places)."""
    victim = root_sandbox.make_dir("escape-ro-")
    victim.chmod(0o777)
    (victim / "existing").write_text("host data\n")
    (victim / "existing").chmod(0o666)
    try:
        outcome = job(root_sandbox, hostile, "/hostile/hostile", "write", "/victim/new", "/victim/existing",
                      policy=policy, flags=("--ro-bind", str(victim), "/victim"))
        assert "written" not in outcome.stdout, outcome.stdout
        assert sorted(p.name for p in victim.iterdir()) == ["existing"]
        assert (victim / "existing").read_text() == "host data\n"
    finally:
        shutil.rmtree(victim, ignore_errors=True)


def test_fs21_walk_the_inits_descriptors(root_sandbox: Runner, canaries: Canaries) -> None:
    """FS-21 walk /proc/1/fd, /proc/1/cwd and /proc/1/map_files of the job's init (which was set up
    by the host-side spawner) looking for a descriptor that leads back to the host tree.
    Stopped by: the init being non-dumpable (EACCES) and holding no host directory."""
    script = (
        "import os\n"
        "for base in ('/proc/1/fd', '/proc/1/map_files'):\n"
        "    try: names = os.listdir(base)\n"
        "    except OSError as e: print(base, 'errno', e.errno); continue\n"
        "    for n in names:\n"
        "        p = f'{base}/{n}'\n"
        "        try: print(p, os.listdir(p + '/tmp'))\n"
        "        except OSError as e: print(p, 'errno', e.errno)\n"
        "for p in ('/proc/1/cwd', '/proc/1/root'):\n"
        "    try: print(p, os.listdir(p + '/tmp'), os.listdir(p + '/root'))\n"
        "    except OSError as e: print(p, 'errno', e.errno)\n"
    )
    outcome = job(root_sandbox, None, "/usr/bin/python3", "-c", script)
    assert canaries.token not in outcome.stdout
    assert "/proc/1/fd errno 13" in outcome.stdout, outcome.stdout
