"""The child's report to the spawner: length-prefixed JSON frames on a CLOEXEC pipe.

The child writes ``ready`` (its read-back) just before execve and ``error`` when a stage or
execve fails; a successful execve closes the pipe, which the spawner sees as end of file.
"""

from __future__ import annotations

import json
import os
import select
import struct
import time

_LEN = struct.Struct(">I")
MAX_FRAME = 1 << 20


def write_frame(fd: int, kind: str, payload: dict) -> None:
    body = json.dumps({"kind": kind, **payload}).encode()
    data = _LEN.pack(len(body)) + body
    while data:
        written = os.write(fd, data)
        data = data[written:]


def read_frames(fd: int, timeout_s: float) -> tuple[list[dict], bool]:
    """All frames until end of file; returns (frames, timed_out)."""
    buffer = b""
    deadline = time.monotonic() + timeout_s
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return split_frames(buffer), True
        if not poller.poll(remaining * 1000):
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return split_frames(buffer), False
        buffer += chunk
        if len(buffer) > MAX_FRAME * 4:
            return split_frames(buffer), False


def split_frames(buffer: bytes) -> list[dict]:
    frames = []
    while len(buffer) >= _LEN.size:
        (length,) = _LEN.unpack_from(buffer)
        if length > MAX_FRAME or len(buffer) < _LEN.size + length:
            break
        try:
            frames.append(json.loads(buffer[_LEN.size : _LEN.size + length]))
        except ValueError:
            break
        buffer = buffer[_LEN.size + length :]
    return frames


def take_frames(buffer: bytes) -> tuple[list[dict], bytes]:
    """The complete frames at the start of ``buffer`` and what is left of it."""
    frames = []
    while len(buffer) >= _LEN.size:
        (length,) = _LEN.unpack_from(buffer)
        if length > MAX_FRAME:
            return frames, b""
        if len(buffer) < _LEN.size + length:
            break
        try:
            frames.append(json.loads(buffer[_LEN.size : _LEN.size + length]))
        except ValueError:
            pass
        buffer = buffer[_LEN.size + length :]
    return frames, buffer
