"""Give memory the service no longer uses back to the system once it falls idle.

After a burst of runs the service's heap is mostly free but still resident: glibc keeps
freed chunks (and each thread's arena) mapped, so an idle service looked twice its size in
the benchmark after a load. ``malloc_trim(0)`` returns free pages of every arena to the
kernel; it costs a few milliseconds, so the service calls it once per idle period.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from typing import Callable

IDLE_DELAY_S = 1.0  # idle this long (no run active) before trimming


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc.malloc_trim if libc is not None and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_TRIM = _malloc_trim()


def release_free_memory() -> bool:
    """Return free heap pages to the kernel; False where the C library cannot (not glibc)."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


class IdleTrimmer:
    """Trims once each time the service goes from busy to idle for ``IDLE_DELAY_S``."""

    def __init__(self, is_idle: Callable[[], bool], delay_s: float = IDLE_DELAY_S) -> None:
        self.is_idle = is_idle
        self.delay_s = delay_s
        self.handle: asyncio.TimerHandle | None = None
        self.trims = 0

    def went_idle(self) -> None:
        if self.handle is None:
            self.handle = asyncio.get_running_loop().call_later(self.delay_s, self._fire)

    def _fire(self) -> None:
        self.handle = None
        if self.is_idle() and release_free_memory():
            self.trims += 1

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
