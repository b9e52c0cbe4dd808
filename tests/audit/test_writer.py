"""The writer: torn tails sealed on reopen, group commit under concurrency, failures, crashes."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sandboxd.audit.chain import AuditError
from sandboxd.audit.verifier import TORN, verify
from sandboxd.audit.writer import AuditWriter
from tests.audit.helpers import lines_of_all, make_log, read_lines, segments

REPO = Path(__file__).resolve().parents[2]


def test_torn_tail_then_reopen_seals_and_continues(tmp_path):
    log = tmp_path / "log"
    make_log(log, 10, segment_bytes=1500)
    path = segments(log)[-1]
    size = os.path.getsize(path)
    with open(path, "ab") as handle:  # a crash in the middle of the next write
        handle.write(b'{"client":"10.0.0.1","event":"job_fini')
    report = verify([str(log)])
    assert report.problem.kind == TORN and f"torn last line at byte {size}" in str(report.problem)
    last_good = json.loads(read_lines(path)[-2])
    with AuditWriter(str(log)) as writer:
        assert writer.sealed is not None and writer.sealed["event"] == "seal"
        assert writer.sealed["seq"] == last_good["seq"] + 1 and writer.sealed["prev"] == last_good["hash"]
        after = writer.append({"event": "service_started", "config_hash": "c"})
        assert after["seq"] == writer.sealed["seq"] + 1
    report = verify([str(log)])
    assert report.ok, report.problem
    (seal,) = report.seals
    assert seal["seq"] == last_good["seq"] + 1 and seal["segment"] == path


def test_torn_segment_header_after_a_crash_while_rotating(tmp_path):
    log = tmp_path / "log"
    make_log(log, 10, segment_bytes=1500)
    count = len(segments(log))
    nxt = log / f"audit-{count + 1:06d}.jsonl"
    nxt.write_bytes(b'{"event":"segment_op')  # created, header half written
    assert verify([str(log)]).problem.kind == TORN
    with AuditWriter(str(log)) as writer:
        assert writer.sealed["segment"] == count + 1
        writer.append({"event": "job_started", "job_id": "after"})
    report = verify([str(log)])
    assert report.ok, report.problem
    first_two = [json.loads(line)["event"] for line in read_lines(nxt)[:2]]
    assert first_two == ["segment_opened", "seal"]


def test_empty_new_segment_after_a_crash_while_rotating(tmp_path):
    log = tmp_path / "log"
    make_log(log, 10, segment_bytes=1500)
    nxt = log / f"audit-{len(segments(log)) + 1:06d}.jsonl"
    nxt.write_bytes(b"")
    assert verify([str(log)]).problem.kind == TORN
    with AuditWriter(str(log)) as writer:
        assert writer.sealed is None
    assert verify([str(log)]).ok


def test_reopen_continues_the_chain(tmp_path):
    log = tmp_path / "log"
    first = make_log(log, 5, segment_bytes=1000)
    second = make_log(log, 5, segment_bytes=1000)
    assert second[0]["seq"] == first[-1]["seq"] + 1 and second[0]["prev"] == first[-1]["hash"]
    assert verify([str(log)]).ok


@pytest.mark.parametrize("durability", ["group", "fsync"])
def test_concurrent_threads_one_record_per_append(tmp_path, durability):
    log = tmp_path / "log"
    results: list[dict] = []
    guard = threading.Lock()
    with AuditWriter(str(log), durability=durability, segment_bytes=20000) as writer:
        def work(worker: int) -> None:
            for i in range(150):
                record = writer.append({"event": "job_started", "job_id": f"{worker}-{i}"})
                with guard:
                    results.append(record)

        threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    seqs = [r["seq"] for r in results]
    assert len(seqs) == len(set(seqs)) == 1200
    stored = [r for r in lines_of_all(log) if r["event"] == "job_started"]
    assert sorted(r["job_id"] for r in stored) == sorted(f"{w}-{i}" for w in range(8) for i in range(150))
    by_seq = {r["seq"]: r for r in stored}
    assert all(by_seq[r["seq"]]["job_id"] == r["job_id"] for r in results)
    report = verify([str(log)])
    assert report.ok, report.problem
    assert report.segments > 1


def test_group_commit_batches_fsyncs(tmp_path, monkeypatch):
    calls = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd))[1])
    with AuditWriter(str(tmp_path / "log")) as writer:
        def work() -> None:
            for i in range(100):
                writer.append({"event": "x", "i": i})

        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(calls) < 800  # records shared fsyncs
    assert verify([str(tmp_path / "log")]).ok


@pytest.mark.parametrize("durability", ["group", "fsync"])
async def test_asyncio_tasks_one_record_per_append(tmp_path, durability):
    log = tmp_path / "log"
    writer = AuditWriter(str(log), durability=durability)
    try:
        written = await asyncio.gather(*(writer.append_async({"event": "job_queued", "job_id": f"j{i}"})
                                         for i in range(300)))
    finally:
        writer.close()
    assert sorted(r["seq"] for r in written) == list(range(2, 302))
    assert {r["job_id"] for r in written} == {f"j{i}" for i in range(300)}
    assert verify([str(log)]).ok


async def test_the_event_loop_is_not_blocked(tmp_path):
    writer = AuditWriter(str(tmp_path / "log"))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        for i in range(50):
            await writer.append_async({"event": "x", "i": i})
    finally:
        task.cancel()
        writer.close()
    assert ticks > 50


def test_a_failed_fsync_stops_the_writer(tmp_path, monkeypatch):
    writer = AuditWriter(str(tmp_path / "log"))
    writer.append({"event": "before"})

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(AuditError, match="audit write failed"):
        writer.append({"event": "lost"})
    monkeypatch.undo()
    with pytest.raises(AuditError, match="failed earlier"):
        writer.append({"event": "after"})
    writer.close()


def test_records_cannot_set_chain_fields(tmp_path):
    with AuditWriter(str(tmp_path / "log")) as writer:
        with pytest.raises(ValueError):
            writer.append({"event": "x", "seq": 99})
        with pytest.raises(ValueError):
            writer.append({"no_event": 1})


def test_appends_after_close_are_refused(tmp_path):
    writer = AuditWriter(str(tmp_path / "log"))
    writer.close()
    with pytest.raises(AuditError, match="closed"):
        writer.append({"event": "x"})


CHILD = r"""
import os, sys, threading
from sandboxd.audit.writer import AuditWriter
w = AuditWriter(sys.argv[1], segment_bytes=int(sys.argv[2]), durability=sys.argv[3])
os.write(1, b"ready\n")
def work(n):
    i = 0
    while True:
        rec = w.append({"event": "job_finished", "job_id": f"{n}-{i}", "pad": "x" * (i * 37 % 3000)})
        os.write(1, b"%d\n" % rec["seq"])
        i += 1
threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(4)]
for t in threads: t.start()
threading.Event().wait()
"""


def test_sigkill_in_a_loop_loses_no_acknowledged_record(tmp_path):
    log = tmp_path / "log"
    rng = random.Random(20240601)
    acknowledged: set[int] = set()
    seals = 0
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for iteration in range(10):
        durability = "group" if iteration % 3 else "fsync"
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(log), "60000", durability],
                                 stdout=subprocess.PIPE, env=env, cwd=str(REPO))
        chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: child.stdout.read1(65536), b"")))
        reader.start()
        deadline = time.monotonic() + 20
        while b"ready\n" not in b"".join(chunks[:1]) and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.02, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait()
        reader.join()
        out = b"".join(chunks).split(b"\n")
        assert out[0] == b"ready", out[:3]
        acked = [int(x) for x in out[1:-1]]  # the last piece may be cut: ignore it
        assert acked, "the child acknowledged nothing"
        acknowledged.update(acked)
        before = verify([str(log)])
        assert before.ok or before.torn, before.problem
        with AuditWriter(str(log)) as writer:  # the next start: seals a torn tail
            seals += writer.sealed is not None
        report = verify([str(log)])
        assert report.ok, report.problem
        assert len(report.seals) == seals
    present = {r["seq"] for r in lines_of_all(log)}
    missing = acknowledged - present
    assert not missing, f"acknowledged but missing: {sorted(missing)[:10]}"
