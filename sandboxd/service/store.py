"""The job store: every run's request, state and result, in SQLite under the state directory.

A run moves queued → running → finished (or failed / cancelled) and every move is committed
before it is acted on, so a restart finds each run in its last known state: queued runs are
run again, runs that were running when the service died are marked failed with the reason.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import aiosqlite

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


class JobStore:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    @classmethod
    async def open(cls, path: str) -> "JobStore":
        db = await aiosqlite.connect(path)
        # WAL: readers never wait for the writer; synchronous=FULL: a committed state survives
        # a power cut, which is what "nothing silently lost" needs.
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.executescript(SCHEMA)
        await db.commit()
        return cls(db)

    async def close(self) -> None:
        await self.db.close()

    async def add(self, run_id: str, tenant: str, token_id: str, policy: str, request: dict[str, Any]) -> float:
        now = time.time()
        await self.db.execute(
            "INSERT INTO runs (id, tenant, token_id, policy, status, request, created_at) VALUES (?,?,?,?,?,?,?)",
            (run_id, tenant, token_id, policy, "queued", json.dumps(request), now))
        await self.db.commit()
        return now

    async def mark_running(self, run_id: str) -> None:
        await self.db.execute("UPDATE runs SET status='running', started_at=? WHERE id=?", (time.time(), run_id))
        await self.db.commit()

    async def finish(self, run_id: str, status: str, result: dict[str, Any] | None, reason: str | None = None) -> None:
        await self.db.execute(
            "UPDATE runs SET status=?, result=?, reason=?, finished_at=? WHERE id=?",
            (status, None if result is None else json.dumps(result), reason, time.time(), run_id))
        await self.db.commit()

    async def get(self, run_id: str) -> RunRow | None:
        async with self.db.execute("SELECT * FROM runs WHERE id=?", (run_id,)) as cursor:
            row = await cursor.fetchone()
        return None if row is None else _row(row)

    async def by_status(self, status: str) -> list[RunRow]:
        async with self.db.execute("SELECT * FROM runs WHERE status=? ORDER BY created_at", (status,)) as cursor:
            rows = await cursor.fetchall()
        return [_row(row) for row in rows]

    async def prune(self, older_than_s: float) -> int:
        """Forget finished runs older than ``older_than_s``: the store does not grow forever."""
        cursor = await self.db.execute(
            "DELETE FROM runs WHERE status IN ('finished','failed','cancelled') AND finished_at < ?",
            (time.time() - older_than_s,))
        await self.db.commit()
        return cursor.rowcount

    async def recover(self) -> tuple[list[RunRow], list[RunRow]]:
        """After a restart: runs still queued (to run again) and the runs that were running
        (now failed: their processes died with the previous service)."""
        running = await self.by_status("running")
        await self.db.execute(
            "UPDATE runs SET status='failed', reason=?, finished_at=? WHERE status='running'",
            ("the service stopped while the run was running", time.time()))
        await self.db.commit()
        for row in running:
            row.status, row.reason = "failed", "the service stopped while the run was running"
        return await self.by_status("queued"), running


def _row(row: tuple) -> RunRow:
    return RunRow(
        id=row[0], tenant=row[1], token_id=row[2], policy=row[3], status=row[4],
        request=json.loads(row[5]), result=None if row[6] is None else json.loads(row[6]),
        reason=row[7], created_at=row[8], started_at=row[9], finished_at=row[10])
