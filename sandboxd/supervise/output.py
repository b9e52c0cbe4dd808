"""Capturing a job's stdout and stderr with a cap on each.

The job writes into a pipe; the supervisor reads it, keeps (and forwards, for the CLI) at
most ``cap`` bytes, and reports when the cap was passed so the job can be ended at once —
a job printing 1 GiB under a 1 MiB cap is stopped after a few pipe-fulls, not after 1 GiB.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

READ_CHUNK = 1 << 16


@dataclass
class CappedStream:
    name: str  # "stdout" | "stderr"
    read_fd: int
    cap: int | None
    sink_fd: int | None = None  # where kept bytes are forwarded (the CLI's own stdout…)
    keep: bool = False  # keep the bytes in memory (the service returns them)
    kept: bytearray = field(default_factory=bytearray)
    total: int = 0  # bytes kept or forwarded
    truncated: bool = False
    closed: bool = False

    def pump(self) -> bool:
        """Read what is there; False once the cap is passed (the job must be stopped)."""
        try:
            data = os.read(self.read_fd, READ_CHUNK)
        except BlockingIOError:
            return True
        if not data:
            self.close()
            return True
        if self.cap is not None and self.total + len(data) > self.cap:
            data = data[: self.cap - self.total]
            self.truncated = True
        self._deliver(data)
        return not self.truncated

    def _deliver(self, data: bytes) -> None:
        self.total += len(data)
        if self.keep:
            self.kept += data
        if self.sink_fd is not None:
            view = memoryview(data)
            while view:
                try:
                    written = os.write(self.sink_fd, view)
                except BrokenPipeError:
                    self.sink_fd = None
                    return
                view = view[written:]

    def drain(self) -> None:
        """After the job: read what is left, still within the cap."""
        while not self.closed and not self.truncated:
            self.pump()

    def close(self) -> None:
        if not self.closed:
            os.close(self.read_fd)
            self.closed = True


def pipe_for(name: str, cap: int | None, sink_fd: int | None, keep: bool) -> tuple[CappedStream, int]:
    """A capped stream and the write end to hand to the job."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(read_fd, False)
    return CappedStream(name, read_fd, cap, sink_fd, keep), write_fd
