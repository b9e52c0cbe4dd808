"""The result of one job: one schema for ``sandboxd run --result`` and the HTTP API.

The verdicts and their precedence are decided in ``sandboxd.supervise.verdict`` and
documented in docs/results.md.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

OK = "OK"
NONZERO_EXIT = "NONZERO_EXIT"
SIGNALED = "SIGNALED"
WALL_TIME_LIMIT = "WALL_TIME_LIMIT"
TIME_LIMIT = "TIME_LIMIT"
MEMORY_LIMIT = "MEMORY_LIMIT"
OUTPUT_LIMIT = "OUTPUT_LIMIT"
FILE_SIZE_LIMIT = "FILE_SIZE_LIMIT"
PIDS_LIMIT = "PIDS_LIMIT"
SECCOMP = "SECCOMP"
EXEC_FAILED = "EXEC_FAILED"
SETUP_ERROR = "SETUP_ERROR"
INTERNAL_ERROR = "INTERNAL_ERROR"

# Exit statuses of `sandboxd run` for its own failures, as container runtimes use them.
EXIT_SETUP_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127
EXIT_USAGE = 2


@dataclass
class Usage:
    """What the job used; ``sources`` names where each figure came from (never the
    launcher's ru_maxrss, which counts the launcher's own memory)."""

    wall_s: float = 0.0
    cpu_total_s: float | None = None  # the counter the CPU-time limit is enforced on
    cpu_user_s: float | None = None
    cpu_sys_s: float | None = None
    memory_peak_bytes: int | None = None
    pids_peak: int | None = None
    oom_kills: int | None = None
    voluntary_context_switches: int | None = None
    involuntary_context_switches: int | None = None
    sources: dict[str, str] = field(default_factory=lambda: {"wall_s": "spawner:monotonic"})


@dataclass
class RunResult:
    job_id: str
    verdict: str
    exit_code: int | None
    signal: int | None
    usage: Usage
    policy: dict[str, str]
    layers: dict[str, Any]
    limit: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    # The syscall a seccomp kill rule stopped: {"syscall": "ptrace", "nr": 101, "arch": "x86_64"}.
    seccomp: dict[str, Any] | None = None
    # Everything seccomp stopped during the job (kills in any process, EPERM answers to the
    # profile's NOTIFY rules), and what could not be observed.
    denials: dict[str, Any] | None = None
    # Per captured stream: bytes kept and whether the cap cut it.
    output: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)  # what dataclasses.asdict makes, several times faster

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def exit_status(self) -> int:
        """What `sandboxd run` exits with for this result."""
        if self.verdict == SETUP_ERROR:
            return EXIT_SETUP_FAILED
        if self.verdict == EXEC_FAILED:
            return (self.error or {}).get("exit_code", EXIT_CANNOT_EXECUTE)
        if self.signal is not None:
            return 128 + self.signal
        if self.exit_code is not None:
            return self.exit_code
        return EXIT_SETUP_FAILED


_ATOMS = frozenset({str, int, float, bool, type(None)})


@dataclass
class _Box:
    value: Any


def _plain(value: Any) -> Any:
    """``value`` as ``dataclasses.asdict`` copies it (fresh dicts and lists all the way
    down), with fast paths for the JSON-like values a result holds."""
    kind = type(value)
    if kind in _ATOMS:
        return value
    if kind is dict:
        return {key: _plain(item) for key, item in value.items()}
    if kind is list:
        return [_plain(item) for item in value]
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    return asdict(_Box(value))["value"]  # anything else: exactly as asdict does it
