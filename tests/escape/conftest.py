"""Host-side set-up of the escape suite: canaries, hostile programs, listeners, helpers.

Every case in ``tests/escape`` attacks one thing a job must not achieve and is judged by
what the *host* sees afterwards: canary files the job tries to read must not reach its
output, files it tries to create must not exist, listeners the test runs must record no
connection, processes it tries to signal must still be alive, environment variables and
descriptors given to the ``sandboxd`` process must not show. What the program prints is
used only to tell which layer answered, never as the verdict.

The hostile programs (``hostile/*.c``) are compiled once per session into a fresh
directory readable by everybody (the job's host id is an unprivileged, unmapped uid) and
bound read-only into each job at ``/hostile``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.sandboxes import REPO, Runner, host_processes_with  # noqa: F401 - re-exported to the cases

HERE = Path(__file__).resolve().parent
HOSTILE_SOURCES = HERE / "hostile"
PY = "/usr/bin/python3"
POLICIES = ("default", "judge", "compile")
DEFAULT_POLICY_TEXT = (REPO / "policies" / "default.toml").read_text()


# --------------------------------------------------------------------------- programs

@pytest.fixture(scope="session")
def hostile() -> Path:
    """The compiled hostile programs, in a 0755 directory owned by root.

    ``hostile``  the multi-attack program (see hostile/hostile.c)
    ``suid``     setuid root (4755, owner 0:0)
    ``fcaps``    the same program with file capabilities cap_sys_admin,cap_dac_override,cap_setuid+ep
    """
    directory = Path(tempfile.mkdtemp(prefix="sandboxd-escape-hostile-"))
    directory.chmod(0o755)
    subprocess.run(["gcc", "-O1", "-Wall", "-o", str(directory / "hostile"),
                    str(HOSTILE_SOURCES / "hostile.c"), "-lpthread"], check=True, capture_output=True)
    subprocess.run(["gcc", "-O1", "-Wall", "-o", str(directory / "suid"),
                    str(HOSTILE_SOURCES / "suid.c")], check=True, capture_output=True)
    shutil.copy2(directory / "suid", directory / "fcaps")
    os.chown(directory / "suid", 0, 0)
    (directory / "suid").chmod(0o4755)
    if shutil.which("setcap") and os.geteuid() == 0:
        subprocess.run(["setcap", "cap_sys_admin,cap_dac_override,cap_setuid+ep", str(directory / "fcaps")],
                       check=True, capture_output=True)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


# --------------------------------------------------------------------------- canaries

@dataclass
class Canaries:
    """Host files with a unique token the job must never read, and host paths it must never create."""

    token: str               # the secret content of every canary file (never part of a path)
    name: str                # the unique part of the canaries' host paths
    directory: Path          # /tmp/sandboxd-escape-canary-TOKEN (0755), never bound into a job
    readable: list[Path]     # files holding the token (world-readable where the parent allows)
    forbidden: list[Path]    # paths the job tries to create; they must not exist afterwards
    host_files: dict[Path, bytes] = field(default_factory=dict)

    def assert_untouched(self) -> None:
        for path in self.forbidden:
            assert not path.exists(), f"the job created {path} on the host"
        for path, content in self.host_files.items():
            assert path.read_bytes() == content, f"the job changed {path} on the host"


@pytest.fixture(scope="session")
def canaries() -> Canaries:
    token = f"SECRET{secrets.token_hex(12)}"
    name = f"canary-{secrets.token_hex(6)}"
    directory = Path(f"/tmp/sandboxd-escape-{name}")
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    secret = directory / "secret.txt"
    secret.write_text(f"{token}-tmp\n")
    secret.chmod(0o644)
    root_file = Path(f"/root/sandboxd-escape-{name}.txt")
    etc_file = Path(f"/etc/sandboxd-escape-{name}.txt")
    for path, where in ((root_file, "root"), (etc_file, "etc")):
        path.write_text(f"{token}-{where}\n")
        path.chmod(0o644)
    forbidden = [directory / "written-by-job", Path(f"/root/sandboxd-escape-{name}-written"),
                 Path(f"/etc/sandboxd-escape-{name}-written"), Path(f"/tmp/sandboxd-escape-{name}-written")]
    found = Canaries(token, name, directory, [secret, root_file, etc_file], forbidden,
                     {p: p.read_bytes() for p in (secret, root_file, etc_file)})
    yield found
    shutil.rmtree(directory, ignore_errors=True)
    for path in (root_file, etc_file, *forbidden):
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            path.unlink()


# --------------------------------------------------------------------------- running jobs

def job(runner: Runner, hostile_dir: Path | None, *program: str, policy: str = "default",
        workdir: Path | None = None, flags: tuple[str, ...] = (), **kwargs):
    """``sandboxd run`` with the hostile programs at /hostile and an optional host work dir."""
    args = ["run", "--policy", policy]
    if hostile_dir is not None:
        args += ["--ro-bind", str(hostile_dir), "/hostile"]
    if workdir is not None:
        args += ["--workdir", str(workdir)]
    args += [*flags, "--", *program]
    outcome = runner.run(args, **kwargs)
    assert outcome.result is not None, (outcome.returncode, outcome.stderr)
    assert outcome.result["verdict"] not in ("SETUP_ERROR", "INTERNAL_ERROR", "EXEC_FAILED"), \
        (outcome.result["verdict"], outcome.result.get("error"), outcome.stderr)
    return outcome


def traces(workdir: Path) -> list[str]:
    """The ESCAPED-* files a hostile program leaves when one of its attacks gets through."""
    return sorted(p.name for p in workdir.iterdir() if p.name.startswith("ESCAPED"))


def assert_killed_by_seccomp(outcome, syscall: str) -> None:
    result = outcome.result
    assert result["verdict"] == "SECCOMP", (result["verdict"], outcome.stdout, outcome.stderr)
    assert result["seccomp"]["syscall"] == syscall, result["seccomp"]
    assert outcome.returncode == 128 + 31


@pytest.fixture
def workdir(root_sandbox: Runner) -> Path:
    path = root_sandbox.make_dir("escape-work-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


_CREATED: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def _remove_made_directories():
    yield
    for path in _CREATED:
        shutil.rmtree(path, ignore_errors=True)


def make_workdir(runner: Runner) -> Path:
    """A host work dir owned by the runner's user, removed at the end of the session."""
    path = runner.make_dir("escape-work-")
    _CREATED.append(path)
    return path


def write_policy(runner: Runner, name: str, text: str) -> Path:
    """A policy file the runner's user can read (for the layer-removal proofs)."""
    directory = runner.make_dir("escape-policy-")
    _CREATED.append(directory)
    path = directory / name
    path.write_text(text)
    path.chmod(0o644)
    return path


# --------------------------------------------------------------------------- host processes



def wait_until_gone(marker: str, timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := host_processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@contextlib.contextmanager
def host_sleeper(uid: int | None = None, gid: int | None = None):
    """A host process with a unique argv (``sleep 1000.NNNN``), as ``uid`` when given."""
    marker = f"1000.{secrets.randbelow(10**9):09d}"
    proc = subprocess.Popen(["sleep", marker], user=uid, group=gid,
                            extra_groups=[] if uid else None,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc, marker
    finally:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- host listeners

class Listener:
    """A host listener that records every connection (and datagram) it gets."""

    def __init__(self, sock: socket.socket, datagram: bool = False) -> None:
        self.sock = sock
        self.datagram = datagram
        self.events: list[bytes] = []
        self._stop = False
        sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop:
            try:
                if self.datagram:
                    data, _ = self.sock.recvfrom(65536)
                    self.events.append(data)
                    continue
                conn, _ = self.sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            conn.settimeout(0.5)
            try:
                data = conn.recv(4096)
            except OSError:
                data = b""
            self.events.append(b"connected:" + data)
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def tcp_listener():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    listener = Listener(sock)
    listener.port = sock.getsockname()[1]
    yield listener
    listener.close()


@pytest.fixture
def udp_listener():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    listener = Listener(sock, datagram=True)
    listener.port = sock.getsockname()[1]
    yield listener
    listener.close()


@pytest.fixture
def abstract_listener():
    name = f"sandboxd-escape-{secrets.token_hex(8)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind("\0" + name)
    sock.listen(16)
    listener = Listener(sock)
    listener.name = name
    yield listener
    listener.close()


def settle(listener: Listener, seconds: float = 0.3) -> None:
    """Give a late connection the chance to be recorded before the host looks."""
    time.sleep(seconds)


def file_mode(path: Path) -> str:
    return stat.filemode(path.lstat().st_mode)
