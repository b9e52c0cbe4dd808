"""Per-run event streams for ``GET /v1/runs/{id}/events`` (Server-Sent Events).

Each run keeps its events in order (queued, started, stdout/stderr chunks, finished), capped
in size, so a subscriber that connects late replays what it missed and then follows live.
Memory stays bounded: output chunks are held once, as bytes, and rendered when sent; a run
keeps at most ``MAX_HISTORY_BYTES`` of output events; a finished run's history is dropped
after ``KEEP_FINISHED_S`` or when more than ``KEEP_FINISHED`` runs have finished since — a
later subscriber gets the stored result as one ``finished`` event instead.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

MAX_HISTORY_BYTES = 1 << 20
KEEP_FINISHED = 64
KEEP_FINISHED_S = 60.0


@dataclass
class RunEvents:
    history: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    size: int = 0
    closed: bool = False
    waiters: set[asyncio.Event] = field(default_factory=set)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        if self.closed:
            return
        if kind in ("stdout", "stderr"):
            weight = len(data["raw"])
            if self.size + weight > MAX_HISTORY_BYTES:
                return  # output stays capped in the result; the stream stops repeating it
            self.size += weight
        self.history.append((kind, data))
        if kind == "finished":
            self.closed = True
        for waiter in self.waiters:
            waiter.set()

    async def follow(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        index = 0
        waiter = asyncio.Event()
        self.waiters.add(waiter)
        try:
            while True:
                while index < len(self.history):
                    kind, data = self.history[index]
                    index += 1
                    if kind in ("stdout", "stderr"):
                        raw = data["raw"]
                        data = {"data": raw.decode("utf-8", errors="replace"),
                                "data_base64": base64.b64encode(raw).decode()}
                    yield kind, data
                if self.closed:
                    return
                waiter.clear()
                await waiter.wait()
        finally:
            self.waiters.discard(waiter)


class EventHub:
    def __init__(self) -> None:
        self.runs: dict[str, RunEvents] = {}
        self._finished: list[tuple[float, str]] = []

    def get(self, run_id: str, create: bool = False) -> RunEvents | None:
        if create and run_id not in self.runs:
            self.runs[run_id] = RunEvents()
        return self.runs.get(run_id)

    def publish(self, run_id: str, kind: str, data: dict[str, Any]) -> None:
        events = self.get(run_id, create=True)
        assert events is not None
        events.publish(kind, data)
        if kind == "finished":
            now = time.monotonic()
            self._finished.append((now, run_id))
            while self._finished and (len(self._finished) > KEEP_FINISHED
                                      or now - self._finished[0][0] > KEEP_FINISHED_S):
                self.runs.pop(self._finished.pop(0)[1], None)

    def output(self, run_id: str, stream: str, data: bytes) -> None:
        self.publish(run_id, stream, {"raw": bytes(data)})
