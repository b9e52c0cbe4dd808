"""Per-run event streams for ``GET /v1/runs/{id}/events`` (Server-Sent Events).

Each run keeps its events in order (queued, started, stdout/stderr chunks, finished), capped
in size, so a subscriber that connects late replays what it missed and then follows live.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

MAX_HISTORY_BYTES = 4 << 20
KEEP_FINISHED = 1000


@dataclass
class RunEvents:
    history: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    size: int = 0
    closed: bool = False
    waiters: set[asyncio.Event] = field(default_factory=set)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        if self.closed:
            return
        weight = len(str(data))
        if kind in ("stdout", "stderr") and self.size + weight > MAX_HISTORY_BYTES:
            return  # output stays capped in the result; the stream stops repeating it
        self.history.append((kind, data))
        self.size += weight
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
                    yield self.history[index]
                    index += 1
                if self.closed:
                    return
                waiter.clear()
                await waiter.wait()
        finally:
            self.waiters.discard(waiter)


class EventHub:
    def __init__(self) -> None:
        self.runs: dict[str, RunEvents] = {}
        self._finished: list[str] = []

    def get(self, run_id: str, create: bool = False) -> RunEvents | None:
        if create and run_id not in self.runs:
            self.runs[run_id] = RunEvents()
        return self.runs.get(run_id)

    def publish(self, run_id: str, kind: str, data: dict[str, Any]) -> None:
        events = self.get(run_id, create=True)
        assert events is not None
        events.publish(kind, data)
        if kind == "finished":
            self._finished.append(run_id)
            while len(self._finished) > KEEP_FINISHED:
                self.runs.pop(self._finished.pop(0), None)

    def output(self, run_id: str, stream: str, data: bytes) -> None:
        self.publish(run_id, stream, {"data": data.decode("utf-8", errors="replace"),
                                      "data_base64": base64.b64encode(data).decode()})
