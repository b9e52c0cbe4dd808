"""The compiled stage runner (``stage.c``): where it lives, whether it is usable, how to build it.

The spawner execs it as each sandbox's PID 1 once the Python stages have built the root
(see ``sandboxd.jail.spine``). It is built from source with the system's C compiler by
``python -m sandboxd.native`` (``make native``; the Makefile's install step runs it). Which
runner a spawner uses: ``SANDBOXD_STAGE_RUNNER`` = ``auto`` (the default: native when built,
else the Python runner, and the result says which), ``native`` (refuse to start jobs without
it) or ``python``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "stage.c"
BINARY = HERE / "sandboxd-stage"
CFLAGS = ("-O2", "-Wall", "-Wextra", "-Werror", "-Wno-format-truncation", "-fstack-protector-strong",
          "-D_FORTIFY_SOURCE=2", "-fPIE", "-Wl,-z,relro,-z,now")
# Static when the C library allows it: no dynamic loader on each sandbox's start (≈0.15 ms of
# CPU per sandbox measured here); a dynamic PIE otherwise.
LINK_CHOICES = (("-static-pie",), ("-pie",))
CHOICES = ("auto", "native", "python")


@dataclass(frozen=True)
class RunnerChoice:
    """What a spawner will run sandboxes with, and why."""

    kind: str  # "native" | "python" | "unavailable"
    path: str | None
    reason: str


def status() -> tuple[bool, str]:
    """(usable, why not) for the built binary."""
    if not BINARY.exists():
        return False, f"{BINARY} is not built (run `python -m sandboxd.native` or `make native`)"
    if not os.access(BINARY, os.X_OK):
        return False, f"{BINARY} is not executable"
    if SOURCE.exists() and SOURCE.stat().st_mtime > BINARY.stat().st_mtime:
        return False, f"{BINARY} is older than {SOURCE.name}: rebuild it"
    return True, ""


def choose(setting: str | None = None) -> RunnerChoice:
    setting = (setting or os.environ.get("SANDBOXD_STAGE_RUNNER") or "auto").strip().lower()
    if setting not in CHOICES:
        return RunnerChoice("unavailable", None, f"SANDBOXD_STAGE_RUNNER={setting!r}: use one of {', '.join(CHOICES)}")
    if setting == "python":
        return RunnerChoice("python", None, "SANDBOXD_STAGE_RUNNER=python")
    usable, why = status()
    if usable:
        return RunnerChoice("native", str(BINARY), "built")
    if setting == "native":
        return RunnerChoice("unavailable", None, f"SANDBOXD_STAGE_RUNNER=native but {why}")
    return RunnerChoice("python", None, why)


def build(compiler: str | None = None, quiet: bool = False) -> Path:
    """Compile ``stage.c`` next to itself (atomically replacing an older binary)."""
    cc = compiler or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler found (install gcc: scripts/install-system-deps)")
    partial = BINARY.with_name(BINARY.name + f".{os.getpid()}.tmp")
    try:
        for index, link in enumerate(LINK_CHOICES):
            last = index == len(LINK_CHOICES) - 1
            done = subprocess.run([cc, *CFLAGS, *link, "-o", str(partial), str(SOURCE)],
                                  capture_output=quiet or not last)
            if done.returncode == 0:
                break
            if last:
                raise subprocess.CalledProcessError(done.returncode, done.args)
        os.chmod(partial, 0o755)
        os.replace(partial, BINARY)
    finally:
        partial.unlink(missing_ok=True)
    return BINARY


def main() -> int:
    try:
        path = build()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"sandboxd.native: {exc}", file=sys.stderr)
        return 1
    print(f"built {path}")
    return 0
