"""One verdict for every ending, with a documented, deterministic precedence.

When several could apply, the first that holds wins:

 1. SETUP_ERROR      the sandbox could not be built
 2. EXEC_FAILED      the program could not be executed
 3. SECCOMP          a seccomp kill rule ended the program
 4. MEMORY_LIMIT     the cgroup OOM-killed a process and the job did not end cleanly
 5. OUTPUT_LIMIT     sandboxd ended the job when stdout or stderr passed its cap
 6. PIDS_LIMIT       the pids limit refused a fork and the job did not end cleanly
 7. FILE_SIZE_LIMIT  a file hit RLIMIT_FSIZE (SIGXFSZ), or a sized tmpfs filled up and the
                     job did not end cleanly
 8. TIME_LIMIT       sandboxd ended the job at its CPU-time limit
 9. WALL_TIME_LIMIT  sandboxd ended the job at its wall-time limit
10. SIGNALED         a signal ended the program
11. NONZERO_EXIT     the program exited with a non-zero status
12. OK

Limits that sandboxd enforces itself by killing (output, CPU, wall time) always give their
verdict; limits the kernel enforces by refusing (memory, pids, file size) give theirs only
when the job did not end cleanly — a program that recovers from a failed fork still passes.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any

from sandboxd import result as r


@dataclass
class Ending:
    """Everything known when a job has ended."""

    exit_code: int | None = None
    signal: int | None = None
    setup_error: dict[str, Any] | None = None
    seccomp_main_kill: bool = False
    oom_kills: int = 0
    output_capped: str | None = None  # "stdout" | "stderr"
    pids_limit_hits: int = 0
    full_tmpfs: list[str] = field(default_factory=list)
    killed_for: str | None = None  # "cpu_time" | "wall_time"

    @property
    def clean(self) -> bool:
        return self.signal is None and self.exit_code == 0


def decide(ending: Ending, limits: Any) -> tuple[str, dict[str, Any] | None]:
    """The verdict and, when a limit fired, ``{"name": ..., "value": ...}``."""
    if ending.setup_error is not None:
        stage = ending.setup_error.get("stage")
        return (r.EXEC_FAILED if stage == "exec" else r.SETUP_ERROR), None
    if ending.seccomp_main_kill:
        return r.SECCOMP, None
    if ending.oom_kills > 0 and not ending.clean:
        return r.MEMORY_LIMIT, {"name": "memory", "value": limits.memory}
    if ending.output_capped is not None:
        return r.OUTPUT_LIMIT, {"name": "output", "value": limits.output, "stream": ending.output_capped}
    if ending.pids_limit_hits > 0 and not ending.clean:
        return r.PIDS_LIMIT, {"name": "pids", "value": limits.pids}
    if ending.signal == signal.SIGXFSZ:
        return r.FILE_SIZE_LIMIT, {"name": "file_size", "value": limits.fsize}
    if ending.full_tmpfs and not ending.clean:
        return r.FILE_SIZE_LIMIT, {"name": "tmpfs_size", "value": None, "paths": ending.full_tmpfs}
    if ending.killed_for == "cpu_time":
        return r.TIME_LIMIT, {"name": "cpu_time", "value": limits.cpu_time}
    if ending.killed_for == "wall_time":
        return r.WALL_TIME_LIMIT, {"name": "wall_time", "value": limits.wall_time}
    if ending.signal is not None:
        return r.SIGNALED, None
    if ending.exit_code != 0:
        return r.NONZERO_EXIT, None
    return r.OK, None
