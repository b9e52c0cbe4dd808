"""Proof that the escape suite can fail: the same attacks, with one layer removed, ESCAPE.

Each test runs an attack from the suite twice — with the shipped configuration (contained)
and with one layer turned off through a policy file written here (a copy of
``policies/default.toml`` with one section changed) or a flag — and asserts that the host-side
check which passes in the suite now *fails*: the canary token shows, the host file appears,
the host keyring is read, the bomb grows past the limit. So a regression in that layer would
turn the corresponding case red.

Everything stays bounded: no fork bomb without a pids limit (512 vs 32, with a cap of 200
processes and a wall-time limit), memory only up to 128 MiB, loopback only.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from sandboxd.jail import cgroups
from tests.escape.conftest import (DEFAULT_POLICY_TEXT, Listener, assert_killed_by_seccomp, job, settle, traces,
                                   write_policy)
from tests.host import host_lacks
from tests.sandboxes import Runner

PY = "/usr/bin/python3"
needs_cgroups = pytest.mark.skipif(cgroups.detect() is None, reason="no writable cgroup hierarchy on this host")


def _without(section: str, replacement: str) -> str:
    old = f"[{section}]\nmode = \"required\""
    assert old in DEFAULT_POLICY_TEXT, f"policies/default.toml has no {old!r}"
    return DEFAULT_POLICY_TEXT.replace(old, f"[{section}]\n{replacement}")


@pytest.fixture(scope="module")
def no_seccomp(root_sandbox: Runner) -> Path:
    return write_policy(root_sandbox, "no-seccomp.toml", _without("seccomp", 'mode = "off"'))


READ_HOST_KEY = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
print('calling keyctl', flush=True)
buf = ctypes.create_string_buffer(256)
n = libc.syscall(250, 11, int(sys.argv[1]), buf, 256)  # KEYCTL_READ
print('read', n, buf.raw[:max(n, 0)].decode(errors='replace'), flush=True)
"""


def test_lm01_without_seccomp_the_host_keyring_is_read(root_sandbox: Runner, no_seccomp: Path, canaries) -> None:
    """LM-01 (case PV-05) keyctl(KEYCTL_READ) of a key in the session keyring the job inherits from the
    host. Seccomp on: killed, token unseen. Seccomp off: the job prints the host's secret."""
    libc = ctypes.CDLL(None, use_errno=True)
    payload = canaries.token.encode()
    serial = libc.syscall(248, b"user", f"sandboxd-escape-lm-{canaries.name}".encode(), payload, len(payload),
                          ctypes.c_long(-3))
    if serial <= 0:
        host_lacks("cannot add a key to this host's session keyring")
    try:
        contained = job(root_sandbox, None, PY, "-c", READ_HOST_KEY, str(serial))
        assert_killed_by_seccomp(contained, "keyctl")
        assert canaries.token not in contained.stdout
        escaped = job(root_sandbox, None, PY, "-c", READ_HOST_KEY, str(serial), policy=str(no_seccomp))
        assert escaped.result["layers"]["seccomp"]["enforced"] is False
        assert canaries.token in escaped.stdout, escaped.stdout
    finally:
        libc.syscall(250, 21, serial)  # KEYCTL_INVALIDATE


def test_lm02_without_seccomp_a_nested_user_namespace_is_made(root_sandbox: Runner, hostile: Path,
                                                              no_seccomp: Path) -> None:
    """LM-02 (case PV-03) unshare(CLONE_NEWUSER|CLONE_NEWNS). Seccomp on: killed, no trace. Seccomp
    off: the call succeeds and the job leaves ESCAPED-unshare in the host work dir."""
    contained_dir, escaped_dir = root_sandbox.make_dir("lm-"), root_sandbox.make_dir("lm-")
    try:
        contained = job(root_sandbox, hostile, "/hostile/hostile", "unshare-user", workdir=contained_dir)
        assert_killed_by_seccomp(contained, "unshare")
        assert traces(contained_dir) == []
        job(root_sandbox, hostile, "/hostile/hostile", "unshare-user", workdir=escaped_dir, policy=str(no_seccomp))
        assert "ESCAPED-unshare" in traces(escaped_dir)
    finally:
        shutil.rmtree(contained_dir, ignore_errors=True)
        shutil.rmtree(escaped_dir, ignore_errors=True)


def test_lm03_without_seccomp_the_i386_abi_writes_on_the_host(root_sandbox: Runner, hostile: Path,
                                                               no_seccomp: Path) -> None:
    """LM-03 (case PV-16) creat() through int 0x80. Seccomp on: killed as arch i386. Seccomp off: the
    file appears in the host work dir."""
    escaped_dir = root_sandbox.make_dir("lm-")
    try:
        job(root_sandbox, hostile, "/hostile/hostile", "int80", "/work/ESCAPED-int80", workdir=escaped_dir,
            policy=str(no_seccomp))
        assert traces(escaped_dir) == ["ESCAPED-int80"]
    finally:
        shutil.rmtree(escaped_dir, ignore_errors=True)


# Seccomp off, these reach the kernel and come back with the kernel's own answer — never the
# kill the suite (PV-06..PV-14) requires.
REACHES_KERNEL = [
    ("bpf", 321, ["0", "0", "0"], {"EINVAL"}),
    ("perf_event_open", 298, ["0", "0", "-1", "-1", "0"], {"EFAULT", "EINVAL"}),
    ("userfaultfd", 323, ["1"], {"ok"}),
    ("kexec_load", 246, ["0", "0", "0", "0"], {"ENOSYS", "EPERM", "EINVAL"}),
    ("init_module", 175, ["0", "0", "0"], {"ENOSYS", "EPERM", "EFAULT"}),
]


@pytest.mark.parametrize("name, nr, args, answers", REACHES_KERNEL, ids=[c[0] for c in REACHES_KERNEL])
def test_lm04_without_seccomp_the_calls_reach_the_kernel(root_sandbox: Runner, hostile: Path, no_seccomp: Path,
                                                          name: str, nr: int, args: list[str], answers: set) -> None:
    """LM-04 (cases PV-06..PV-10) bpf, perf_event_open, userfaultfd, kexec_load, init_module with
    seccomp off: not killed; the kernel answers itself (argument checks, or a usable descriptor)."""
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "syscall", str(nr), *args, policy=str(no_seccomp))
    assert outcome.result["verdict"] == "OK", outcome.result["verdict"]
    line = next(line for line in outcome.stdout.splitlines() if line.startswith("syscall "))
    answer = line.split()[1] if line.split()[1] == "ok" else line.split()[2]
    assert answer in answers, line


def test_lm05_without_seccomp_io_uring_reaches_the_kernel(root_sandbox: Runner, hostile: Path,
                                                           no_seccomp: Path) -> None:
    """LM-05 (case PV-14) io_uring_setup with seccomp off: no longer ENOSYS from the filter (the kernel
    answers: a ring, or ENOMEM under memlock = 0)."""
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "io-uring", policy=str(no_seccomp))
    assert "io_uring_setup errno ENOSYS" not in outcome.stdout, outcome.stdout


def test_lm06_without_landlock_a_read_only_bind_is_written(root_sandbox: Runner, hostile: Path) -> None:
    """LM-06 (Landlock wall, cf. FS-20) a host directory bound *writable* but listed in
    landlock.read_only. Landlock on: the write is refused. Landlock off: the file appears on the host."""
    with_ll = write_policy(root_sandbox, "ro-landlock.toml",
                           _without("landlock", 'mode = "required"\nread_only = ["/data"]'))
    without_ll = write_policy(root_sandbox, "no-landlock.toml",
                              _without("landlock", 'mode = "off"\nread_only = ["/data"]'))
    data = root_sandbox.make_dir("lm-data-")
    data.chmod(0o777)
    try:
        contained = job(root_sandbox, hostile, "/hostile/hostile", "write", "/data/pwned", policy=str(with_ll),
                        flags=("--bind", str(data), "/data"))
        assert "/data/pwned errno EACCES" in contained.stdout and list(data.iterdir()) == []
        job(root_sandbox, hostile, "/hostile/hostile", "write", "/data/pwned", policy=str(without_ll),
            flags=("--bind", str(data), "/data"))
        assert (data / "pwned").read_text() == "escaped\n"
    finally:
        shutil.rmtree(data, ignore_errors=True)


def test_lm07_with_the_canary_directory_bound_the_token_is_read(root_sandbox: Runner, hostile: Path,
                                                                canaries) -> None:
    """LM-07 (case FS-01, the mount layer "removed") the host canary directory bound into the job:
    the same read now prints the secret."""
    contained = job(root_sandbox, hostile, "/hostile/hostile", "read", "/canary/secret.txt")
    assert canaries.token not in contained.stdout
    escaped = job(root_sandbox, hostile, "/hostile/hostile", "read", "/canary/secret.txt",
                  flags=("--ro-bind", str(canaries.directory), "/canary"))
    assert canaries.token in escaped.stdout


INTERNAL_TCP = """
import socket, sys
token = sys.argv[1]
try:
    server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=1)
    client.sendall(token.encode())
    print("received", server.accept()[0].recv(100).decode())
except OSError as exc:
    print("errno", exc.errno)
"""


def test_lm08_loopback_mode_lets_a_connection_through(root_sandbox: Runner, canaries) -> None:
    """LM-08 (network cases) the same TCP round trip through 127.0.0.1: --net none has no usable
    interface (ENETUNREACH/EADDRNOTAVAIL); --net loopback carries the token — the probe sees
    connections whenever a network is there."""
    none = job(root_sandbox, None, PY, "-c", INTERNAL_TCP, canaries.token, flags=("--net", "none"))
    assert canaries.token not in none.stdout and "errno" in none.stdout, none.stdout
    loopback = job(root_sandbox, None, PY, "-c", INTERNAL_TCP, canaries.token, flags=("--net", "loopback"))
    assert f"received {canaries.token}" in loopback.stdout, loopback.stdout


CONNECT_UNIX = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1]); s.sendall(sys.argv[2].encode()); print("connected")
"""


def test_lm09_a_bound_host_socket_is_reached(root_sandbox: Runner, canaries) -> None:
    """LM-09 (cases NET-01/NET-05, the host listener) a host unix socket whose directory is bound into
    the job: the host listener records the job's connection and token — the listeners the network
    cases rely on do see a job that gets through."""
    directory = Path(tempfile.mkdtemp(prefix="sandboxd-escape-sock-"))
    directory.chmod(0o755)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(directory / "s"))
    os.chmod(directory / "s", 0o777)
    sock.listen(4)
    listener = Listener(sock)
    try:
        job(root_sandbox, None, PY, "-c", CONNECT_UNIX, "/hostsock/s", canaries.token,
            flags=("--ro-bind", str(directory), "/hostsock"))
        settle(listener)
        assert listener.events == [b"connected:" + canaries.token.encode()], listener.events
    finally:
        listener.close()
        shutil.rmtree(directory, ignore_errors=True)


@needs_cgroups
def test_lm10_a_larger_pids_limit_lets_the_bomb_grow(root_sandbox: Runner, hostile: Path) -> None:
    """LM-10 (case PR-06) the fork bomb capped at 200 children: --pids-limit 32 holds it (PIDS_LIMIT,
    peak <= 32); --pids-limit 512 lets all 200 through — the host-side pids peak tells them apart."""
    held = job(root_sandbox, hostile, "/hostile/hostile", "forkbomb", "200",
               flags=("--pids-limit", "32", "--wall-time-limit", "10"))
    assert held.result["verdict"] == "PIDS_LIMIT" and held.result["usage"]["pids_peak"] <= 32
    grown = job(root_sandbox, hostile, "/hostile/hostile", "forkbomb", "200",
                flags=("--pids-limit", "512", "--wall-time-limit", "10"))
    assert grown.result["verdict"] == "OK", grown.result["verdict"]
    assert grown.result["usage"]["pids_peak"] > 200


@needs_cgroups
def test_lm11_without_a_memory_limit_the_hog_completes(root_sandbox: Runner, hostile: Path) -> None:
    """LM-11 (case RES-01) touching 128 MiB: completes without --memory-limit, MEMORY_LIMIT with 64M."""
    free = job(root_sandbox, hostile, "/hostile/hostile", "mem", "128")
    assert free.result["verdict"] == "OK" and "touched 128 MiB" in free.stdout
    assert free.result["usage"]["memory_peak_bytes"] > 128 << 20
    held = job(root_sandbox, hostile, "/hostile/hostile", "mem", "128", flags=("--memory-limit", "64M"))
    assert held.result["verdict"] == "MEMORY_LIMIT"


def test_lm12_a_variable_passed_on_purpose_is_seen(root_sandbox: Runner, canaries) -> None:
    """LM-12 (case LK-01) the environment scan finds the canary once it is passed with --env: the
    scan would catch a leaking environment."""
    outcome = job(root_sandbox, None, "/usr/bin/env", flags=("--env", f"SANDBOXD_ESCAPE_CANARY={canaries.token}"))
    assert canaries.token in outcome.stdout
