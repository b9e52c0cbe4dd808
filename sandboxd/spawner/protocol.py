"""Messages between a caller and the spawner: one JSON object per SOCK_SEQPACKET datagram,
with file descriptors (the job's stdio going in, its pidfd coming out) as SCM_RIGHTS."""

from __future__ import annotations

import array
import json
import os
import socket
from typing import Any

MAX_MESSAGE = 1 << 20
MAX_FDS = 8


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | tuple[int, ...] = ()) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"message of {len(data)} bytes is over the {MAX_MESSAGE}-byte limit")
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def receive(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and its fds; ``(None, [])`` when the peer has closed the socket."""
    data, fds, flags = _recv_fds(sock)
    if not data:
        for fd in fds:
            _close_quietly(fd)
        return None, []
    if flags & socket.MSG_TRUNC or flags & socket.MSG_CTRUNC:
        for fd in fds:
            _close_quietly(fd)
        raise ValueError("message or its file descriptors were truncated")
    return json.loads(data), fds


def _recv_fds(sock: socket.socket) -> tuple[bytes, list[int], int]:
    # Close-on-exec from the start: a received fd must never cross into a process the
    # spawner starts (socket.recv_fds ignores its flags argument, hence recvmsg here).
    size = array.array("i").itemsize
    data, ancillary, flags, _addr = sock.recvmsg(MAX_MESSAGE, socket.CMSG_LEN(MAX_FDS * size),
                                                 socket.MSG_CMSG_CLOEXEC)
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % size)])
    return data, list(fds), flags


def socketpair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
