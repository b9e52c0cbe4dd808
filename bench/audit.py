#!/usr/bin/env python3
"""What a durable audit record costs: fsync per record vs group commit, 1/4/16 writers.

    .venv/bin/python bench/audit.py [--seconds S] [--writers 1,4,16]

Each contender appends records of ~600 bytes (the size of a typical job_finished record)
from N threads (and, for 16, from N asyncio tasks) for S seconds (default 1.3) into a fresh
log in a temporary directory on the disk under the repository, and reports records/s and
the p50/p99 latency of ``append`` (from the call to its return, i.e. until the record is on
disk). Everything is bounded: about 20 s in total with the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sandboxd.audit.writer import AuditWriter  # noqa: E402

PAYLOAD = {"event": "job_finished", "request_id": "0" * 32, "tenant": "acme", "client": "10.0.0.7:51234",
           "policy": {"name": "judge", "hash": "sha256:" + "a" * 64}, "argv": ["./a.out", "--fast"],
           "argv_sha256": "b" * 64, "verdict": "OK", "exit_code": 0,
           "usage": {"wall_s": 0.0123, "cpu_user_s": 0.01, "memory_peak_bytes": 1 << 22},
           "layers": {"namespaces": {n: True for n in ("user", "pid", "mnt", "net", "ipc", "uts", "cgroup")},
                      "landlock": {"abi": 4, "enforced": True}, "seccomp": {"hash": "sha256:" + "c" * 64}}}

CONTENDERS = [("fsync", {"durability": "fsync"}),
              ("group, no linger", {"durability": "group", "max_delay": 0.0}),
              ("group, linger 2 ms", {"durability": "group", "max_delay": 0.002})]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_threads(directory: str, options: dict, writers: int, seconds: float) -> tuple[int, float, list[float]]:
    latencies: list[list[float]] = [[] for _ in range(writers)]
    with AuditWriter(directory, **options) as writer:
        stop = time.monotonic() + seconds
        start = time.monotonic()

        def work(index: int) -> None:
            own = latencies[index]
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                writer.append(PAYLOAD)
                own.append(time.perf_counter() - t0)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - start
    flat = [x for own in latencies for x in own]
    return len(flat), elapsed, flat


def run_tasks(directory: str, options: dict, writers: int, seconds: float) -> tuple[int, float, list[float]]:
    flat: list[float] = []

    async def main() -> float:
        writer = AuditWriter(directory, **options)
        try:
            stop = time.monotonic() + seconds
            start = time.monotonic()

            async def work() -> None:
                while time.monotonic() < stop:
                    t0 = time.perf_counter()
                    await writer.append_async(PAYLOAD)
                    flat.append(time.perf_counter() - t0)

            await asyncio.gather(*(work() for _ in range(writers)))
            return time.monotonic() - start
        finally:
            writer.close()

    elapsed = asyncio.run(main())
    return len(flat), elapsed, flat


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.3, help="per contender and writer count")
    parser.add_argument("--writers", default="1,4,16")
    args = parser.parse_args()
    counts = [int(x) for x in args.writers.split(",")]
    scratch = tempfile.mkdtemp(prefix=".audit-bench-", dir=REPO)
    rows = []
    try:
        for writers in counts:
            for name, options in CONTENDERS:
                directory = os.path.join(scratch, f"{name.split(',')[0]}-{writers}-{len(rows)}")
                n, elapsed, lat = run_threads(directory, options, writers, args.seconds)
                rows.append((name, f"{writers} threads", n, elapsed, lat))
        for name, options in CONTENDERS[:2]:
            directory = os.path.join(scratch, f"async-{len(rows)}")
            n, elapsed, lat = run_tasks(directory, options, max(counts), args.seconds)
            rows.append((name, f"{max(counts)} asyncio tasks", n, elapsed, lat))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"audit append, {len(str(PAYLOAD))}-byte records, disk under {REPO}")
    print(f"{'mode':<20} {'writers':<17} {'records':>8} {'records/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for name, writers, n, elapsed, lat in rows:
        print(f"{name:<20} {writers:<17} {n:>8} {n / elapsed:>10.0f} {statistics.median(lat) * 1e3:>8.3f} "
              f"{pct(lat, 0.99) * 1e3:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
