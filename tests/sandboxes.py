"""Running the real ``sandboxd run`` from tests, as root or as an unprivileged user.

Rootless runs use Debian's ``/usr/bin/python3`` (another user cannot run the pyenv shim
under /root) with a world-readable copy of the package and its pure/compiled dependencies,
made once per test session in a fresh directory under /tmp.
"""

from __future__ import annotations

import importlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ROOTLESS_USER = "sandboxd-test"
ROOTLESS_PYTHON = "/usr/bin/python3"
_RUNTIME_MODULES = ("pydantic", "pydantic_core", "typing_extensions", "typing_inspection",
                    "annotated_types", "pyseccomp", "landlock")


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    result: dict[str, Any] | None


@dataclass
class Runner:
    """How to start ``sandboxd``: as whom, with which interpreter, from which tree."""

    name: str
    python: str
    env: dict[str, str]
    uid: int | None = None
    gid: int | None = None
    scratch: Path | None = None

    def make_dir(self, prefix: str = "work-") -> Path:
        """A directory the runner's user owns (a job's work directory, result files)."""
        path = Path(tempfile.mkdtemp(prefix=f"sandboxd-{prefix}", dir=self.scratch))
        if self.uid is not None:
            os.chown(path, self.uid, self.gid or -1)
        path.chmod(0o755)
        return path

    def run(self, args: list[str], *, timeout: float = 60, pass_fds: tuple[int, ...] = (),
            extra_env: dict[str, str] | None = None, want_result: bool = True,
            stdin: bytes | None = None) -> Outcome:
        result_path = None
        command = [self.python, "-m", "sandboxd", *args]
        if want_result and args and args[0] == "run":
            result_dir = self.make_dir("result-")
            result_path = result_dir / "result.json"
            command = [self.python, "-m", "sandboxd", "run", "--result", str(result_path), *args[1:]]
        proc = subprocess.run(
            command, env={**self.env, **(extra_env or {})}, capture_output=True, timeout=timeout,
            pass_fds=pass_fds, user=self.uid, group=self.gid, extra_groups=[] if self.uid else None,
            input=stdin, cwd="/",
        )
        result = None
        if result_path is not None and result_path.exists():
            result = json.loads(result_path.read_text())
        return Outcome(proc.returncode, proc.stdout.decode(errors="replace"),
                       proc.stderr.decode(errors="replace"), result)


def root_runner() -> Runner:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
           "PYTHONPATH": str(REPO)}
    return Runner("root", sys.executable, env, scratch=None)


SUBORDINATE_START = 2_200_000_000  # far from sandboxd's own root range and from usual grants
SUBORDINATE_COUNT = 65_536


def _ensure_user() -> pwd.struct_passwd:
    try:
        user = pwd.getpwnam(ROOTLESS_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        ROOTLESS_USER], check=True, capture_output=True)
        user = pwd.getpwnam(ROOTLESS_USER)
    # A subordinate range for the test user, for the rootless `subordinate` id mode.
    for path in ("/etc/subuid", "/etc/subgid"):
        existing = Path(path).read_text() if Path(path).exists() else ""
        if not any(line.startswith(f"{ROOTLESS_USER}:") for line in existing.splitlines()):
            with open(path, "a") as handle:
                handle.write(f"{ROOTLESS_USER}:{SUBORDINATE_START}:{SUBORDINATE_COUNT}\n")
    return user


def rootless_runner() -> Runner | str:
    """A runner for an unprivileged user, or the reason it cannot be made here."""
    if os.geteuid() != 0:
        return "the rootless tests create a user, which needs root"
    if not os.access(ROOTLESS_PYTHON, os.X_OK):
        return f"{ROOTLESS_PYTHON} is missing (apt-get install python3)"
    user = _ensure_user()
    scratch = Path(tempfile.mkdtemp(prefix="sandboxd-rootless-"))
    scratch.chmod(0o755)
    tree = scratch / "pythonpath"
    tree.mkdir()
    shutil.copytree(REPO / "sandboxd", tree / "sandboxd", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("policies", "profiles"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, tree / name)
    for name in _RUNTIME_MODULES:
        module = importlib.import_module(name)
        source = Path(module.__file__)
        if source.name == "__init__.py":
            shutil.copytree(source.parent, tree / source.parent.name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, tree / source.name)
    for path in [scratch, *scratch.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": str(tree),
           "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(scratch)}
    return Runner("rootless", ROOTLESS_PYTHON, env, uid=user.pw_uid, gid=user.pw_gid, scratch=scratch)


def host_processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker`` (a job's unique argv)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry))
    return found
