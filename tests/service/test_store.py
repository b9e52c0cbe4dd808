"""The job store's durability and recovery (sandboxd/service/store.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

from sandboxd.service.store import JobStore
from tests.service.conftest import REPO


async def test_commits_survive_a_killed_process_without_a_sync(tmp_path):
    """Every commit is in the WAL when it returns: SIGKILL loses nothing, synced or not."""
    path = tmp_path / "jobs.sqlite"
    child = textwrap.dedent(f"""
        import asyncio, os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from sandboxd.service.store import JobStore

        async def main():
            store = await JobStore.open({str(path)!r})
            await store.add("durable", "t", "tok", "default", {{"argv": ["a"]}})
            await store.add("quick", "t", "tok", "default", {{"argv": ["b"]}}, running=True, durable=False)
            await store.finish("durable", "finished", {{"verdict": "OK"}}, durable=False)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
    """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    store = await JobStore.open(str(path))
    try:
        durable, quick = await store.get("durable"), await store.get("quick")
        assert durable.status == "finished" and durable.result == {"verdict": "OK"}
        assert quick.status == "running" and quick.started_at == quick.created_at
    finally:
        await store.close()


async def test_concurrent_syncs_share_fsyncs(tmp_path, monkeypatch):
    store = await JobStore.open(str(tmp_path / "jobs.sqlite"))
    calls = []
    original = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), original(fd))[1])
    try:
        for index in range(50):
            await store.add(f"r{index}", "t", "tok", "default", {}, durable=False)
        await asyncio.gather(*(store.finish(f"r{index}", "failed", None, "x") for index in range(50)))
        assert 1 <= len(calls) <= 3  # one in flight, one after it for everyone who came later
        assert len(await store.by_status("failed")) == 50
    finally:
        await store.close()


async def test_a_staged_result_is_unseen_until_complete(tmp_path):
    store = await JobStore.open(str(tmp_path / "jobs.sqlite"))
    try:
        await store.add("r", "t", "tok", "default", {}, running=True, durable=False)
        store.stage_result("r", {"verdict": "OK"})
        row = await store.get("r")
        assert row.status == "running" and row.result is None and row.finished_at is None
        store.complete("r")
        row = await store.get("r")
        assert row.status == "finished" and row.result == {"verdict": "OK"} and row.finished_at is not None
    finally:
        await store.close()


async def test_recover_finishes_recorded_runs_and_fails_the_others(tmp_path):
    path = str(tmp_path / "jobs.sqlite")
    store = await JobStore.open(path)
    for run_id in ("recorded", "unrecorded", "bare"):
        await store.add(run_id, "t", "tok", "default", {}, running=True, durable=False)
    await store.add("waiting", "t", "tok", "default", {"argv": ["x"]})
    store.stage_result("recorded", {"verdict": "OK"})
    store.stage_result("unrecorded", {"verdict": "OK"})
    await store.close()  # the service died before either was complete

    asked = []

    async def recorded(ids: set[str]) -> set[str]:
        asked.append(set(ids))
        return {"recorded", "not-running"}

    store = await JobStore.open(path)
    try:
        queued, failed = await store.recover(recorded)
        assert asked == [{"recorded", "unrecorded"}]
        assert [row.id for row in queued] == ["waiting"]
        assert sorted(row.id for row in failed) == ["bare", "unrecorded"]
        finished = await store.get("recorded")
        assert finished.status == "finished" and finished.result == {"verdict": "OK"}
        for run_id in ("bare", "unrecorded"):
            row = await store.get(run_id)
            assert row.status == "failed" and row.result is None
            assert row.reason == "the service stopped while the run was running"
        assert store.db.execute("SELECT result FROM runs WHERE id='unrecorded'").fetchone() == (None,)
    finally:
        await store.close()


async def test_prune_forgets_old_finished_runs_in_batches(tmp_path):
    store = await JobStore.open(str(tmp_path / "jobs.sqlite"))
    try:
        for index in range(250):
            await store.add(f"r{index}", "t", "tok", "default", {}, durable=False)
            await store.finish(f"r{index}", "finished", {"verdict": "OK"}, durable=False)
        await store.add("open", "t", "tok", "default", {}, durable=False)
        assert await store.prune(3600) == 0
        assert await store.prune(-1) == 250
        assert [row.id for row in await store.by_status("queued")] == ["open"]
    finally:
        await store.close()
