"""The caller's side of the spawner: start it, define templates, run jobs, read events.

The spawner is always a fresh interpreter (``start_exec``): forked from its caller it would
inherit the caller's memory (fork cost grows with it) and every fd the caller had open —
another client's socket, a job's output pipe — keeping them alive as long as it lives.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from sandboxd.jail.plan import JailTemplate, JobSpec
from sandboxd.spawner import protocol


class SpawnerGone(RuntimeError):
    """The spawner closed its socket or died."""


@dataclass
class Event:
    kind: str
    job_id: str | None
    data: dict[str, Any]
    fds: list[int] = field(default_factory=list)


class SpawnerClient:
    def __init__(self, sock: socket.socket, pid: int, process: subprocess.Popen | None = None) -> None:
        self.sock = sock
        self.pid = pid
        self._process = process
        self._defined: set[str] = set()
        self._pending: list[Event] = []

    # --- starting ------------------------------------------------------------------------
    @classmethod
    def start_exec(cls, python: str | None = None, runner: str | None = None) -> "SpawnerClient":
        """``runner``: the stage runner setting (``sandboxd.native``), else the environment's."""
        ours, theirs = protocol.socketpair()
        env = None if runner is None else {**os.environ, "SANDBOXD_STAGE_RUNNER": runner}
        process = subprocess.Popen(
            [python or sys.executable, "-m", "sandboxd.spawner", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, close_fds=True, env=env,
        )
        theirs.close()
        return cls(ours, process.pid, process)

    def close(self) -> None:
        """Closing the socket makes the spawner kill its jobs and exit; then reap it."""
        self.sock.close()
        if self._process is not None:
            self._process.wait()
        else:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass

    def __enter__(self) -> "SpawnerClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- requests ------------------------------------------------------------------------
    def define(self, template: JailTemplate, pool: int = 0) -> None:
        """Send a template once; ``pool`` warm sandboxes of it are then kept ready."""
        if template.policy_hash in self._defined:
            return
        protocol.send(self.sock, {"op": "define", "hash": template.policy_hash,
                                  "template": template.to_dict(), "pool": pool})
        event = self._wait_for(lambda e: e.kind in ("defined", "error"))
        if event.kind == "error":
            raise RuntimeError(f"spawner refused the template: {event.data.get('detail')}")
        self._defined.add(template.policy_hash)

    def run(self, template: JailTemplate, job: JobSpec, stdio: tuple[int, int, int]) -> None:
        self.define(template)
        protocol.send(self.sock, {"op": "run", "template": template.policy_hash, "job": job.to_dict()},
                      list(stdio))

    def take_pending(self, job_id: str | None = None) -> Event | None:
        """An event already received (for ``job_id`` if given), without reading the socket."""
        for index, event in enumerate(self._pending):
            if job_id is None or event.job_id == job_id:
                return self._pending.pop(index)
        return None

    def next_event(self, job_id: str | None = None, timeout: float | None = None) -> Event | None:
        """The next event (for ``job_id`` if given); None on timeout."""
        for index, event in enumerate(self._pending):
            if job_id is None or event.job_id == job_id:
                return self._pending.pop(index)
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        while True:
            if not poller.poll(None if timeout is None else max(0, timeout) * 1000):
                return None
            event = self._receive()
            if job_id is None or event.job_id == job_id:
                return event
            self._pending.append(event)

    def _wait_for(self, accept) -> Event:
        while True:
            event = self._receive()
            if accept(event):
                return event
            self._pending.append(event)

    def _receive(self) -> Event:
        try:
            message, fds = protocol.receive(self.sock)
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise SpawnerGone(str(exc)) from None
        if message is None:
            raise SpawnerGone("the spawner closed its socket")
        return Event(message.get("event", "?"), message.get("job_id"), message, fds)
