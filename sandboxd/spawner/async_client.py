"""The spawner from asyncio: one socket, events dispatched to the job that awaits them.

The service has threads (aiohttp, the executor), so it never forks: it talks to an exec'd
spawner (``SpawnerClient.start_exec``) and reads its socket from the event loop.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from sandboxd.jail.plan import JailTemplate, JobSpec
from sandboxd.spawner import protocol
from sandboxd.spawner.client import Event, SpawnerClient, SpawnerGone


class AsyncSpawner:
    def __init__(self, client: SpawnerClient, pool: int = 0) -> None:
        self.client = client
        self.pool = pool  # warm sandboxes kept per policy
        self.sock = client.sock
        self.sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._queues: dict[str, asyncio.Queue[Event]] = {}
        self._control: asyncio.Queue[Event] = asyncio.Queue()
        self._defined: set[str] = set()
        self._define_lock = asyncio.Lock()
        self.gone: str | None = None
        self._loop.add_reader(self.sock.fileno(), self._readable)

    @classmethod
    async def start(cls, pool: int = 0, runner: str | None = None) -> "AsyncSpawner":
        client = await asyncio.to_thread(SpawnerClient.start_exec, None, runner)
        return cls(client, pool)

    @property
    def pid(self) -> int:
        return self.client.pid

    def _readable(self) -> None:
        while True:
            try:
                message, fds = protocol.receive(self.sock)
            except (BlockingIOError, InterruptedError):
                return
            except (ConnectionResetError, OSError, ValueError) as exc:
                self._lost(f"spawner socket: {exc}")
                return
            if message is None:
                self._lost("the spawner closed its socket")
                return
            event = Event(message.get("event", "?"), message.get("job_id"), message, fds)
            queue = self._queues.get(event.job_id or "") if event.job_id else None
            if queue is not None:
                queue.put_nowait(event)
            elif event.job_id is None:
                self._control.put_nowait(event)
            else:
                for fd in fds:  # an event for a job nobody waits for any more
                    os.close(fd)

    def _lost(self, why: str) -> None:
        if self.gone is None:
            self.gone = why
            self._loop.remove_reader(self.sock.fileno())
            for job_id, queue in self._queues.items():
                queue.put_nowait(Event("error", job_id, {"detail": why}))

    async def _define(self, template: JailTemplate) -> None:
        async with self._define_lock:
            if template.policy_hash in self._defined:
                return
            protocol.send(self.sock, {"op": "define", "hash": template.policy_hash,
                                      "template": template.to_dict(), "pool": self.pool})
            event = await asyncio.wait_for(self._control.get(), timeout=30)
            if event.kind != "defined":
                raise RuntimeError(f"spawner refused the template: {event.data.get('detail')}")
            self._defined.add(template.policy_hash)

    async def run(self, template: JailTemplate, job: JobSpec, stdio: tuple[int, int, int]) -> asyncio.Queue[Event]:
        """Start ``job``; its events arrive on the returned queue until ``release(job_id)``."""
        if self.gone is not None:
            raise SpawnerGone(self.gone)
        await self._define(template)
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._queues[job.job_id] = queue
        protocol.send(self.sock, {"op": "run", "template": template.policy_hash, "job": job.to_dict()},
                      list(stdio))
        return queue

    def release(self, job_id: str) -> None:
        self._queues.pop(job_id, None)

    async def ping(self) -> dict[str, Any]:
        protocol.send(self.sock, {"op": "ping"})
        event = await asyncio.wait_for(self._control.get(), timeout=5)
        return event.data

    async def close(self) -> None:
        if self.gone is None:
            self._loop.remove_reader(self.sock.fileno())
            self.gone = "closed"
        await asyncio.to_thread(self.client.close)
