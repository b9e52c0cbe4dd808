"""Escape attempts through privileges: setuid and file-capability binaries, capset, nested
namespaces, and the kernel interfaces seccomp removes.

Where an attack would give the job power over the host, the hostile program immediately
tries to use it on something the host can check (a file in a root-owned host directory
bound writable, an ESCAPED-* trace in the host work dir, the host's keyring or terminal).
For the syscall-only attacks the host-side evidence is the supervisor's result: verdict
SECCOMP naming the exact call (recorded outside the job by its init's seccomp listener) and
no trace left behind.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import struct
import termios
import tty
from pathlib import Path

import pytest

from tests.escape.conftest import POLICIES, assert_killed_by_seccomp, job, make_workdir, traces
from tests.host import host_lacks
from tests.sandboxes import Runner

PY = "/usr/bin/python3"


def _root_owned_dir(runner: Runner) -> Path:
    """A host directory only the host's root may write (0755 root:root), bound writable into the job."""
    path = runner.make_dir("escape-rootdir-")
    os.chown(path, 0, 0)
    path.chmod(0o755)
    return path


def _status(stdout: str) -> dict[str, str]:
    fields = {}
    for line in stdout.splitlines():
        if line.startswith("status "):
            key, _, value = line[len("status "):].partition(":")
            fields[key] = value.strip()
    return fields


@pytest.mark.parametrize("binary", ["suid", "fcaps"])
def test_pv01_setuid_and_file_capability_binaries(sandbox: Runner, hostile: Path, binary: str) -> None:
    """PV-01 run a setuid-root binary (4755 root:root) and a binary with file capabilities
    (cap_sys_admin,cap_dac_override,cap_setuid+ep), then write into a root-owned host directory.
    Stopped by: nosuid on every bind, no_new_privs, the unmapped host owner, locked securebits."""
    if binary == "fcaps":
        try:
            os.getxattr(hostile / "fcaps", "security.capability", follow_symlinks=False)
        except OSError:
            host_lacks("setcap is not available: fcaps has no file capabilities")
    victim = _root_owned_dir(sandbox)
    try:
        outcome = job(sandbox, hostile, f"/hostile/{binary}", "/victim/pwned",
                      flags=("--bind", str(victim), "/victim"))
        fields = _status(outcome.stdout)
        assert int(fields["CapEff"], 16) == 0 and int(fields["CapPrm"], 16) == 0, fields
        assert fields["NoNewPrivs"] == "1"
        assert not (victim / "pwned").exists(), "the privileged binary wrote into a root-owned host dir"
        assert list(victim.iterdir()) == []
    finally:
        shutil.rmtree(victim, ignore_errors=True)


@pytest.mark.parametrize("policy", ("default", "compile"))
def test_pv02_capset_and_securebits(root_sandbox: Runner, hostile: Path, policy: str) -> None:
    """PV-02 capset() every capability into all sets, unlock the securebits, then write into a
    root-owned host directory.
    Stopped by: empty bounding/permitted sets (capset EPERM), locked securebits; the unmapped
    host owner of the directory."""
    victim = _root_owned_dir(root_sandbox)
    try:
        outcome = job(root_sandbox, hostile, "/hostile/hostile", "capset", "/victim/pwned", policy=policy,
                      flags=("--bind", str(victim), "/victim"))
        assert "capset errno EPERM" in outcome.stdout, outcome.stdout
        if policy == "default":
            assert "securebits-unlock errno EPERM" in outcome.stdout
        assert int(_status(outcome.stdout)["CapEff"], 16) == 0
        assert list(victim.iterdir()) == []
    finally:
        shutil.rmtree(victim, ignore_errors=True)


@pytest.mark.parametrize("policy", POLICIES)
def test_pv03_nested_user_namespace(root_sandbox: Runner, hostile: Path, workdir: Path, policy: str) -> None:
    """PV-03 unshare(CLONE_NEWUSER|CLONE_NEWNS) to become root of a nested namespace, then mount;
    clone(CLONE_NEWUSER) as the fallback.
    Stopped by: seccomp (unshare is a kill rule; clone with namespace flags fails)."""
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "unshare-user", policy=policy, workdir=workdir)
    assert_killed_by_seccomp(outcome, "unshare")
    assert traces(workdir) == []


@pytest.mark.parametrize("policy", POLICIES)
def test_pv04_setns_into_other_namespaces(root_sandbox: Runner, hostile: Path, workdir: Path, policy: str) -> None:
    """PV-04 open /proc/1/ns/{mnt,user,pid,net} and /proc/self/ns/user and setns() into them.
    Stopped by: the non-dumpable init (EACCES on its ns files), seccomp (setns is a kill rule)."""
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "setns", "/proc/1/ns/mnt", "/proc/1/ns/user",
                  "/proc/1/ns/pid", "/proc/1/ns/net", "/proc/self/ns/user", policy=policy, workdir=workdir)
    assert "/proc/1/ns/mnt errno EACCES" in outcome.stdout, outcome.stdout
    assert_killed_by_seccomp(outcome, "setns")
    assert traces(workdir) == []


def _add_host_key(description: str, payload: bytes) -> int | None:
    libc = ctypes.CDLL(None, use_errno=True)
    serial = libc.syscall(248, b"user", description.encode(), payload, len(payload), ctypes.c_long(-3))
    return serial if serial > 0 else None


@pytest.mark.parametrize("policy", POLICIES)
def test_pv05_keyctl_reads_host_keys(root_sandbox: Runner, hostile: Path, canaries, policy: str) -> None:
    """PV-05 read the session keyring the job inherited from the host (the test adds a key holding
    the canary token to it) with keyctl, and /proc/keys.
    Stopped by: seccomp (keyctl/add_key/request_key are kill rules), /proc/keys masked."""
    serial = _add_host_key(f"sandboxd-escape-{canaries.name}", canaries.token.encode())
    try:
        outcome = job(root_sandbox, hostile, "/hostile/hostile", "syscall", "250", "11", str(serial or 0),
                      "0", "0", policy=policy)  # KEYCTL_READ
        assert_killed_by_seccomp(outcome, "keyctl")
        assert canaries.token not in outcome.stdout
        keys = job(root_sandbox, hostile, "/hostile/hostile", "read", "/proc/keys", policy=policy)
        assert canaries.name not in keys.stdout and "/proc/keys content \n" in keys.stdout + "\n", keys.stdout
    finally:
        if serial:
            ctypes.CDLL(None).syscall(250, 21, serial)  # KEYCTL_INVALIDATE


# (id, syscall, x86_64 number, arguments): kernel interfaces the profiles kill. With invalid
# arguments the kernel itself would answer EINVAL/EFAULT/ENOSYS; a kill proves the call never
# reached it (see test_layers_matter.py for the same calls with seccomp off).
KILLED_CALLS = [
    ("PV-06", "bpf", 321, ["0", "0", "0"]),
    ("PV-07", "perf_event_open", 298, ["0", "0", "-1", "-1", "0"]),
    ("PV-08", "userfaultfd", 323, ["1"]),  # UFFD_USER_MODE_ONLY: allowed to anyone without seccomp
    ("PV-09", "kexec_load", 246, ["0", "0", "0", "0"]),
    ("PV-10", "init_module", 175, ["0", "0", "0"]),
    ("PV-11", "finit_module", 313, ["-1", "0", "0"]),
    ("PV-12", "kexec_file_load", 320, ["-1", "-1", "0", "0", "0"]),
    ("PV-13", "delete_module", 176, ["0", "0"]),
]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("case, name, nr, args", KILLED_CALLS, ids=[c[1] for c in KILLED_CALLS])
def test_pv06_13_dangerous_kernel_interfaces(root_sandbox: Runner, hostile: Path, policy: str, case: str,
                                             name: str, nr: int, args: list[str]) -> None:
    """PV-06..PV-13 bpf, perf_event_open, userfaultfd, kexec_load, init_module, finit_module,
    kexec_file_load, delete_module with invalid arguments.
    Stopped by: seccomp kill rules, before the kernel's own argument checks."""
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "syscall", str(nr), *args, policy=policy)
    assert outcome.stdout.startswith(f"calling {nr}"), (case, outcome.stdout)
    assert "syscall " not in outcome.stdout, f"{name} returned to the program: {outcome.stdout}"
    assert_killed_by_seccomp(outcome, name)


@pytest.mark.parametrize("policy", POLICIES)
def test_pv14_io_uring(root_sandbox: Runner, hostile: Path, workdir: Path, policy: str) -> None:
    """PV-14 io_uring_setup, whose submitted operations would bypass the seccomp filter.
    Stopped by: seccomp (ENOSYS, so runtimes fall back to plain I/O)."""
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "io-uring", policy=policy, workdir=workdir)
    assert "io_uring_setup errno ENOSYS" in outcome.stdout, outcome.stdout
    assert traces(workdir) == []


@pytest.mark.parametrize("policy", POLICIES)
def test_pv15_tiocsti_on_the_terminal(root_sandbox: Runner, hostile: Path, policy: str) -> None:
    """PV-15 TIOCSTI: push characters into the input of the host terminal the job's stdin is
    (a pty the test owns, in raw mode), so the host shell would run them after the job.
    Stopped by: seccomp (ioctl TIOCSTI is a kill rule); behind it setsid (no controlling tty)."""
    master, slave = os.openpty()
    try:
        tty.setraw(slave)
        outcome = job(root_sandbox, hostile, "/hostile/hostile", "tiocsti", policy=policy,
                      flags=("--stdin", os.ttyname(slave)))
        assert "isatty 1" in outcome.stdout, outcome.stdout
        assert_killed_by_seccomp(outcome, "ioctl")
        queued = struct.unpack("i", fcntl.ioctl(slave, termios.FIONREAD, b"\0\0\0\0"))[0]
        assert queued == 0, "characters were injected into the host terminal"
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.parametrize("policy", POLICIES)
def test_pv16_i386_int80(root_sandbox: Runner, hostile: Path, workdir: Path, policy: str) -> None:
    """PV-16 the i386 ABI (int 0x80) from a 64-bit program: creat("/work/ESCAPED-int80"), whose
    number a 64-bit-only filter would read as a different call.
    Stopped by: seccomp (foreign architectures are killed)."""
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "int80", "/work/ESCAPED-int80",
                  policy=policy, workdir=workdir)
    assert_killed_by_seccomp(outcome, "creat")
    assert outcome.result["seccomp"]["arch"] == "i386"
    assert traces(workdir) == []


@pytest.mark.parametrize("policy", POLICIES)
def test_pv17_x32_syscall(root_sandbox: Runner, hostile: Path, workdir: Path, policy: str) -> None:
    """PV-17 the x32 ABI (nr | 0x40000000): creat("/work/ESCAPED-x32").
    Stopped by: seccomp (x32 numbers are killed)."""
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "x32", "/work/ESCAPED-x32",
                  policy=policy, workdir=workdir)
    assert_killed_by_seccomp(outcome, "creat")
    assert outcome.result["seccomp"]["arch"] == "x32"
    assert traces(workdir) == []


def test_pv18_privileges_root_and_rootless(sandbox: Runner, hostile: Path) -> None:
    """PV-18 the namespace and capability attacks (unshare, capset) as root-started and rootless sandboxd.
    Stopped by: seccomp, empty capability sets."""
    workdir = make_workdir(sandbox)
    outcome = job(sandbox, hostile, "/hostile/hostile", "unshare-user", workdir=workdir)
    assert_killed_by_seccomp(outcome, "unshare")
    caps = job(sandbox, hostile, "/hostile/hostile", "capset", workdir=workdir)
    assert "capset errno EPERM" in caps.stdout and int(_status(caps.stdout)["CapEff"], 16) == 0
    assert traces(workdir) == []
