"""The job store: every run's request, state and result, in SQLite under the state directory.

A run moves queued → running → finished (or failed / cancelled) and every move is committed
before it is acted on, so a restart finds each run in its last known state: queued runs are
run again, runs that were running when the service died are marked failed with the reason.

Durability. The database is in WAL mode with ``synchronous=NORMAL``: a commit is a write()
into the WAL, without an fsync, so it survives the death of the process (SIGKILL, OOM kill,
a crash), which is what restart recovery covers; it is made power-safe by ``sync()`` (one
fsync of the WAL, shared by every commit before it). After a power loss the database comes
back as a *prefix* of its commits (WAL frames are replayed up to the last complete commit),
so a run is never seen in a state older than one it was in after a later state was lost.
What callers make durable (``durable=True``, the default) is every state a client has been
told (a 202 names a queued run; an answer reports a finished one) and every start of a run
that was stored as queued before (so that after a power loss it is failed, never run a
second time); the rest may be lost with the power only before anyone was told of it: a
run inserted straight as running and not yet finished simply did not happen. A finished
run's result is staged (stored, the run still running and the result unseen) and synced
while its audit record is written; the flip to finished after both needs no fsync of its
own, because ``recover`` finishes a running run whose staged result and audit record both
made it to disk.

Commits are made on the event loop's thread (each is a few tens of µs: no thread hop), only
the fsync and the WAL checkpoints run on the store's own thread, so the loop never waits
for the disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    token_id    TEXT NOT NULL,
    policy      TEXT NOT NULL,
    status      TEXT NOT NULL,
    request     TEXT NOT NULL,
    result      TEXT,
    reason      TEXT,
    created_at  REAL NOT NULL,
    started_at  REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status, created_at);
"""
FINAL = ("finished", "failed", "cancelled")
CHECKPOINT_EVERY = 64  # syncs between two WAL checkpoints (on the store's thread)
WAL_LIMIT_BYTES = 16 << 20  # a WAL larger than this (after a burst) is truncated to it once reset
PRUNE_BATCH = 100  # rows deleted per statement (a few ms): a prune never holds the loop for long


@dataclass
class RunRow:
    id: str
    tenant: str
    token_id: str
    policy: str
    status: str
    request: dict[str, Any]
    result: dict[str, Any] | None
    reason: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None


class _Syncer:
    """Makes the WAL durable on the store's thread; concurrent callers share one fsync."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobstore")
        self._wal_fd = -1
        self._checkpointer: sqlite3.Connection | None = None  # used on the store's thread only
        self._current: asyncio.Future | None = None  # the fsync in flight
        self._queued: asyncio.Future | None = None  # the one that starts when it ends
        self._failed: BaseException | None = None
        self._syncs = 0  # on the store's thread

    async def sync(self) -> None:
        if self._failed is not None:
            raise OSError(f"the job store could not be synced earlier: {self._failed}")
        if self._current is None:
            self._current = self._start()
            waiter = self._current
        else:
            # The fsync in flight may have begun before this caller's commit: wait for the
            # next one, which every caller until it starts shares (group commit).
            if self._queued is None:
                self._queued = asyncio.get_running_loop().create_future()
            waiter = self._queued
        await asyncio.shield(waiter)

    def _start(self) -> asyncio.Future:
        future = asyncio.wrap_future(self.pool.submit(self._fsync_wal))
        future.add_done_callback(self._ended)
        return future

    def _ended(self, done: asyncio.Future) -> None:
        if not done.cancelled() and done.exception() is not None and self._failed is None:
            # After a failed fsync what the kernel holds of the file is unknown: no more syncs.
            self._failed = done.exception()
        queued, self._queued = self._queued, None
        self._current = None
        if queued is None:
            return
        if self._failed is not None:
            queued.set_exception(OSError(f"the job store could not be synced: {self._failed}"))
            return
        self._current = self._start()
        self._current.add_done_callback(lambda done: _settle(done, queued))

    def _fsync_wal(self) -> None:
        if self._wal_fd < 0:
            # SQLite keeps the WAL (this name, this inode) while a connection is open; an
            # fsync through another descriptor flushes the file's data all the same.
            self._wal_fd = os.open(self.path + "-wal", os.O_RDONLY | os.O_CLOEXEC)
            # Made by the first connection: its directory entry must be durable too.
            directory = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        os.fdatasync(self._wal_fd)
        self._syncs += 1
        if self._syncs % CHECKPOINT_EVERY == 0:
            self._checkpoint()

    def _checkpoint(self) -> None:
        # PASSIVE: copy what it can into the database without blocking the loop's commits;
        # the loop's connection then starts the WAL over at its next commit, overwriting it
        # in place (an fdatasync of overwritten blocks costs no journal commit, unlike growth).
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def close(self) -> None:
        def release() -> None:
            if self._checkpointer is not None:
                self._checkpointer.close()
            if self._wal_fd >= 0:
                os.close(self._wal_fd)
        try:
            self.pool.submit(release).result()
        finally:
            self.pool.shutdown(wait=True)


def _settle(done: asyncio.Future, waiter: asyncio.Future) -> None:
    if waiter.done():
        return
    if done.cancelled():
        waiter.cancel()
    elif done.exception() is not None:
        waiter.set_exception(done.exception())
    else:
        waiter.set_result(None)


class JobStore:
    def __init__(self, db: sqlite3.Connection, syncer: _Syncer) -> None:
        self.db = db
        self._syncer = syncer

    @classmethod
    async def open(cls, path: str) -> "JobStore":
        # Autocommit (isolation_level=None): every statement below is its own transaction.
        db = sqlite3.connect(path, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            # Checkpoints fsync and copy pages: they run on the store's thread, not here.
            db.execute("PRAGMA wal_autocheckpoint=0")
            db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            db.executescript(SCHEMA)
        except BaseException:
            db.close()
            raise
        store = cls(db, _Syncer(path))
        await store.sync()
        return store

    async def close(self) -> None:
        try:
            await self.sync()
        finally:
            await asyncio.to_thread(self._syncer.close)
            self.db.close()

    async def sync(self) -> None:
        """Make every commit so far survive a power loss (they all survive a crash already)."""
        await self._syncer.sync()

    async def add(self, run_id: str, tenant: str, token_id: str, policy: str, request: dict[str, Any], *,
                  running: bool = False, durable: bool = True) -> float:
        """Store a new run, queued or (when it has its slot already) running; its creation time."""
        now = time.time()
        self.db.execute(
            "INSERT INTO runs (id, tenant, token_id, policy, status, request, created_at, started_at) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (run_id, tenant, token_id, policy, "running" if running else "queued", json.dumps(request), now,
             now if running else None))
        if durable:
            await self.sync()
        return now

    async def mark_running(self, run_id: str, *, durable: bool = True) -> None:
        self.db.execute("UPDATE runs SET status='running', started_at=? WHERE id=?", (time.time(), run_id))
        if durable:
            await self.sync()

    async def finish(self, run_id: str, status: str, result: dict[str, Any] | None, reason: str | None = None,
                     *, durable: bool = True) -> None:
        self.db.execute(
            "UPDATE runs SET status=?, result=?, reason=?, finished_at=? WHERE id=?",
            (status, None if result is None else json.dumps(result), reason, time.time(), run_id))
        if durable:
            await self.sync()

    def stage_result(self, run_id: str, result: dict[str, Any]) -> None:
        """Keep a running run's result while its audit record is written; the run stays
        running (nobody reads the result before ``complete``; ``recover`` may, see there)."""
        self.db.execute("UPDATE runs SET result=? WHERE id=? AND status='running'", (json.dumps(result), run_id))

    def complete(self, run_id: str) -> None:
        """A run with a staged result: finished. Not synced by itself (see ``recover``)."""
        self.db.execute("UPDATE runs SET status='finished', finished_at=? WHERE id=? AND status='running'",
                        (time.time(), run_id))

    async def get(self, run_id: str) -> RunRow | None:
        row = self.db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return None if row is None else _row(row)

    async def by_status(self, status: str) -> list[RunRow]:
        rows = self.db.execute("SELECT * FROM runs WHERE status=? ORDER BY created_at", (status,)).fetchall()
        return [_row(row) for row in rows]

    async def prune(self, older_than_s: float) -> int:
        """Forget finished runs older than ``older_than_s``: the store does not grow forever."""
        cutoff = time.time() - older_than_s
        removed = 0
        while True:
            # In batches, with the loop free in between. Not synced: a prune lost with the
            # power is done again by the next one.
            cursor = self.db.execute(
                "DELETE FROM runs WHERE id IN (SELECT id FROM runs WHERE status IN ('finished','failed','cancelled') "
                "AND finished_at < ? LIMIT ?)", (cutoff, PRUNE_BATCH))
            removed += cursor.rowcount
            if cursor.rowcount < PRUNE_BATCH:
                return removed
            await asyncio.sleep(0)

    async def recover(self, recorded: Callable[[set[str]], Awaitable[set[str]]] | None = None
                      ) -> tuple[list[RunRow], list[RunRow]]:
        """After a restart: runs still queued (to run again) and the runs that were running
        (now failed: their processes died with the previous service).

        A running run with a staged result whose end is on record (``recorded``: which of
        these ids have their job_finished record) had finished and was being answered: it is
        finished, as it was reported, not failed."""
        staged = {row[0] for row in self.db.execute(
            "SELECT id FROM runs WHERE status='running' AND result IS NOT NULL")}
        ended = (await recorded(staged)) & staged if staged and recorded is not None else set()
        for run_id in ended:
            self.db.execute("UPDATE runs SET status='finished', finished_at=? WHERE id=? AND status='running'",
                            (time.time(), run_id))
        self.db.execute("UPDATE runs SET result=NULL WHERE status='running'")  # a result never recorded
        running = await self.by_status("running")
        self.db.execute(
            "UPDATE runs SET status='failed', reason=?, finished_at=? WHERE status='running'",
            ("the service stopped while the run was running", time.time()))
        await self.sync()
        for row in running:
            row.status, row.reason = "failed", "the service stopped while the run was running"
        return await self.by_status("queued"), running


def _row(row: tuple) -> RunRow:
    # A staged result (stage_result) is not the run's result until the run is finished.
    return RunRow(
        id=row[0], tenant=row[1], token_id=row[2], policy=row[3], status=row[4],
        request=json.loads(row[5]), result=None if row[6] is None or row[4] not in FINAL else json.loads(row[6]),
        reason=row[7], created_at=row[8], started_at=row[9], finished_at=row[10])
