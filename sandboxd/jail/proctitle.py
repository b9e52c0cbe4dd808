"""What a job can read of its sandbox's own processes: a neutral command line.

The init (PID 1 of every job) is a fork of the spawner, whose command line names the host
path of the Python interpreter and of sandboxd. ``/proc/1/cmdline`` is readable by any
process in the namespace, so the spawner overwrites its own argument (and environment)
area once at start; every sandbox inherits the blank copy.
"""

from __future__ import annotations

import ctypes


def _areas() -> tuple[int, int, int, int]:
    with open("/proc/self/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    # After "pid (comm)": fields[0] is field 3 (state); arg_start..env_end are fields 48..51.
    return tuple(int(fields[index - 3]) for index in (48, 49, 50, 51))  # type: ignore[return-value]


def set_title(title: str) -> None:
    """Replace the command line with ``title`` and blank the environment area."""
    arg_start, arg_end, env_start, env_end = _areas()
    raw = title.encode()[: max(0, arg_end - arg_start - 1)]
    ctypes.memset(arg_start, 0, arg_end - arg_start)
    ctypes.memmove(arg_start, raw, len(raw))
    if env_end > env_start:
        ctypes.memset(env_start, 0, env_end - env_start)
