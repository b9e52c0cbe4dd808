#!/usr/bin/env python3
"""What the audit log costs the service: throughput and cost per job of a 1000-job run.

    .venv/bin/python bench/audit_service.py [--jobs 1000] [--clients 16] [--writer-seconds 3]
                                            [--no-tmpfs] [--json FILE]

Three measurements, about a minute in all with the defaults (run as root, like the product):

1. **service, audit on disk** — a real ``sandboxd serve`` (subprocess, free loopback port,
   temporary state directory, ``--slots`` = clients) runs ``--jobs`` ``/bin/true`` jobs,
   wait=true, from ``--clients`` concurrent ``SandboxClient``s. Reported: jobs/s, the records
   the audit log took during the run and records/s (records / wall time of the run), MB/s,
   the job latency seen by the client, and the *answer-after-record* delay: for each job, the
   time the client had its answer minus the ``time`` of the job's ``job_finished`` record
   (stamped just before the record is handed to the writer). That delay holds the record's
   wait in the group-commit queue, its write and fdatasync, and then the answer's way back
   over HTTP: an upper bound on what awaiting the record costs a job.
2. **service, audit on tmpfs** — the same run with ``SANDBOXD_AUDIT_LOG`` on ``/dev/shm``,
   where fdatasync costs nothing. The service cannot turn its audit log off, and forcing the
   writer's fsync away would need a code change; this changes only a setting. Disk minus
   tmpfs is what durability (the fdatasyncs) costs per job; what stays (record building,
   canonical JSON, SHA-256, the writer thread) is in both.
3. **AuditWriter alone** — the writer the service uses (group commit, defaults) fed by
   ``--clients`` asyncio tasks with the records run 1 wrote (the same sizes, the same mix:
   per job three records handed over without waiting, as the service does for
   auth_decision/job_queued/job_started, then the ``job_finished`` record awaited). Reported:
   records/s and the latency of the awaited ``append_async`` — what a job waits for its
   record at this concurrency, without the service around it. On disk and on tmpfs.

Numbers are noisy on a shared virtual disk; run it twice before believing a difference.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sandboxd.audit.chain import list_segments  # noqa: E402
from sandboxd.audit.writer import RESERVED, AuditWriter  # noqa: E402
from sandboxd.client import SandboxClient  # noqa: E402

PYTHON = sys.executable
SHM = Path("/dev/shm")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def fs_type(path: Path) -> str:
    """The file system type of ``path`` (longest mount point that holds it)."""
    best, kind = "", "?"
    real = str(path.resolve())
    with open("/proc/mounts") as mounts:
        for line in mounts:
            _dev, point, fstype, *_ = line.split()
            if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                best, kind = point, fstype
    return kind


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXD_")}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_log(audit: Path) -> list[dict]:
    found = []
    for _number, path in list_segments(str(audit)):
        with open(path, "rb") as handle:
            found += [json.loads(line) for line in handle.read().splitlines()]
    return found


def log_bytes(audit: Path) -> int:
    return sum(os.path.getsize(path) for _number, path in list_segments(str(audit)))


def parse_time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Server:
    def __init__(self, state: Path, slots: int, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = state.parent / "serve.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "sandboxd", "serve", "--listen", f"127.0.0.1:{self.port}", "--state-dir", str(state),
                 "--slots", str(slots)], cwd=REPO, env=child_env(SANDBOXD_LOG_LEVEL="warning", **env), stdout=log, stderr=log,
                stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"sandboxd serve exited {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit("sandboxd serve did not become ready in 60 s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)


def token_add(state: Path) -> str:
    out = subprocess.run([PYTHON, "-m", "sandboxd", "token", "add", "--tenant", "bench", "--rate", "10000",
                          "--burst", "10000", "--max-running", "64", "--max-queued", "10000",
                          "--state-dir", str(state)], cwd=REPO, env=child_env(), capture_output=True, text=True,
                         timeout=60)
    if out.returncode != 0:
        raise SystemExit(f"sandboxd token add failed: {out.stderr.strip()}")
    return out.stdout.strip()


async def fire(url: str, token: str, jobs: int, clients: int) -> list[tuple[str, float, float]]:
    """(job_id, latency s, wall-clock time the answer was in hand) of every job."""
    done: list[tuple[str, float, float]] = []
    left = [jobs]

    async def client() -> None:
        async with SandboxClient(url, token, timeout=120) as sandbox:
            while left[0] > 0:
                left[0] -= 1
                t0 = time.perf_counter()
                result = await sandbox.run(["/bin/true"], wait=True)
                answered = time.time()
                if result.get("verdict") != "OK":
                    raise SystemExit(f"a job did not finish OK: {str(result)[:300]}")
                done.append((result["job_id"], time.perf_counter() - t0, answered))

    await asyncio.gather(*(client() for _ in range(clients)))
    return done


def service_run(label: str, jobs: int, clients: int, audit_dir: Path | None, work: Path) -> dict:
    state = work / f"state-{label}"
    token = token_add(state)
    env = {"SANDBOXD_AUDIT_LOG": str(audit_dir)} if audit_dir is not None else {}
    audit = audit_dir if audit_dir is not None else state / "audit"
    server = Server(state, clients, env)
    try:
        asyncio.run(fire(server.url, token, clients, clients))  # warm-up: spawner, policy, pools
        time.sleep(0.3)
        seq0, bytes0 = len(read_log(audit)), log_bytes(audit)
        started = time.perf_counter()
        done = asyncio.run(fire(server.url, token, jobs, clients))
        elapsed = time.perf_counter() - started
        time.sleep(0.3)  # the background records (auth_decision…) of the last jobs
        log = read_log(audit)
        nbytes = log_bytes(audit) - bytes0
    finally:
        server.stop()
    new = log[seq0:]
    finished = {r["job_id"]: parse_time(r["time"]) for r in new if r["event"] == "job_finished"}
    gaps = [(answered - finished[job]) for job, _lat, answered in done if job in finished]
    latencies = [lat for _job, lat, _answered in done]
    missing = len(done) - len(gaps)
    return {"label": label, "fs": fs_type(audit), "jobs": len(done), "seconds": elapsed, "jobs_per_s": len(done) / elapsed,
            "records": len(new), "records_per_s": len(new) / elapsed, "mb_per_s": nbytes / elapsed / 1e6,
            "record_bytes": nbytes / max(1, len(new)), "lat_p50": pct(latencies, 0.5), "lat_p99": pct(latencies, 0.99),
            "lat_mean": statistics.fmean(latencies), "gap_p50": pct(gaps, 0.5), "gap_p99": pct(gaps, 0.99),
            "gap_mean": statistics.fmean(gaps) if gaps else float("nan"), "missing_finished": missing,
            "sample": [{k: v for k, v in r.items() if k not in RESERVED}
                       for r in new if r["event"] in ("auth_decision", "job_queued", "job_started", "job_finished")]}


def writer_run(label: str, directory: Path, sample: list[dict], clients: int, seconds: float,
               jobs_per_s: float | None = None) -> dict:
    """``clients`` asyncio tasks replaying the service's record mix into a fresh AuditWriter:
    back to back (saturated), or paced so that all together they make ``jobs_per_s`` jobs."""
    finished = [r for r in sample if r["event"] == "job_finished"]
    others = [r for r in sample if r["event"] != "job_finished"]
    per_job = max(0, round(len(others) / max(1, len(finished))))
    latencies: list[float] = []
    counts = [0]

    async def main() -> float:
        writer = AuditWriter(str(directory))
        try:
            stop = time.monotonic() + seconds
            start = time.monotonic()

            async def task(index: int) -> None:
                i = index
                interval = clients / jobs_per_s if jobs_per_s else 0.0
                due = start + interval * index / clients
                while time.monotonic() < stop:
                    if interval:
                        await asyncio.sleep(max(0.0, due - time.monotonic()))
                        due += interval
                    for k in range(per_job):  # handed over, not awaited (the service's background records)
                        writer.submit(others[(i * per_job + k) % len(others)])
                    t0 = time.perf_counter()
                    await writer.append_async(finished[i % len(finished)])
                    latencies.append(time.perf_counter() - t0)
                    counts[0] += per_job + 1
                    i += clients

            await asyncio.gather(*(task(i) for i in range(clients)))
            return time.monotonic() - start
        finally:
            await asyncio.to_thread(writer.close)

    elapsed = asyncio.run(main())
    return {"label": label + (f", paced at {jobs_per_s:.0f} jobs/s" if jobs_per_s else ", back to back"),
            "fs": fs_type(directory), "records": counts[0], "records_per_s": counts[0] / elapsed,
            "jobs_per_s": len(latencies) / elapsed, "p50": pct(latencies, 0.5), "p99": pct(latencies, 0.99),
            "mean": statistics.fmean(latencies) if latencies else float("nan")}


def ms(value: float) -> str:
    return f"{value * 1000:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--writer-seconds", type=float, default=3.0)
    parser.add_argument("--no-tmpfs", action="store_true", help="skip the tmpfs runs")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    args = parser.parse_args()
    tmpfs = not args.no_tmpfs and SHM.is_dir() and fs_type(SHM) == "tmpfs"

    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="sandboxd-audit-bench-"))
    shm = Path(tempfile.mkdtemp(prefix="sandboxd-audit-bench-", dir=SHM)) if tmpfs else None
    try:
        service = [service_run("disk", args.jobs, args.clients, None, work)]
        if shm is not None:
            service.append(service_run("tmpfs", args.jobs, args.clients, shm / "service-audit", work))
        sample = service[0].pop("sample")
        for row in service[1:]:
            row.pop("sample")
        pace = service[0]["jobs_per_s"]
        writer = [writer_run("disk", work / "writer-audit", sample, args.clients, args.writer_seconds),
                  writer_run("disk", work / "writer-paced", sample, args.clients, args.writer_seconds, pace)]
        if shm is not None:
            writer += [writer_run("tmpfs", shm / "writer-audit", sample, args.clients, args.writer_seconds),
                       writer_run("tmpfs", shm / "writer-paced", sample, args.clients, args.writer_seconds, pace)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if shm is not None:
            shutil.rmtree(shm, ignore_errors=True)

    print(f"\n## The audit log under the service: {args.jobs} × /bin/true, wait=true, {args.clients} clients, "
          f"--slots {args.clients}\n")
    print("| audit log on | jobs/s | records | records/s | MB/s | bytes/record | job p50 ms | job p99 ms "
          "| answer-after-record p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in service:
        print(f"| {r['label']} ({r['fs']}) | {r['jobs_per_s']:.1f} | {r['records']} | {r['records_per_s']:.0f} "
              f"| {r['mb_per_s']:.2f} | {r['record_bytes']:.0f} | {ms(r['lat_p50'])} | {ms(r['lat_p99'])} "
              f"| {ms(r['gap_p50'])} | {ms(r['gap_p99'])} |")
    print(f"\n## AuditWriter alone: {args.clients} asyncio tasks, the service's record mix, "
          f"{args.writer_seconds:g} s each\n")
    print("| directory on | records/s | jobs/s | awaited job_finished p50 ms | p99 ms | mean ms |")
    print("|---|---|---|---|---|---|")
    for r in writer:
        print(f"| {r['label']} ({r['fs']}) | {r['records_per_s']:.0f} | {r['jobs_per_s']:.0f} | {ms(r['p50'])} "
              f"| {ms(r['p99'])} | {ms(r['mean'])} |")
    print("\n## Cost per job\n")
    disk = service[0]
    print(f"- answer-after-record on disk (record queued+written+fdatasynced, then the HTTP answer): "
          f"p50 {ms(disk['gap_p50'])} ms, mean {ms(disk['gap_mean'])} ms")
    if len(service) > 1:
        shm_row = service[1]
        print(f"- durability (disk − tmpfs): answer-after-record p50 {ms(disk['gap_p50'] - shm_row['gap_p50'])} ms; "
              f"end to end (noisier than that: the jail's own cost varies more from run to run): job latency "
              f"p50 {ms(disk['lat_p50'] - shm_row['lat_p50'])} ms, mean {ms(disk['lat_mean'] - shm_row['lat_mean'])} "
              f"ms, jobs/s {disk['jobs_per_s']:.1f} vs {shm_row['jobs_per_s']:.1f}")
    print(f"- the writer alone, awaited job_finished, {args.clients} tasks at the service's job rate: p50 "
          f"{ms(writer[1]['p50'])} ms (p99 {ms(writer[1]['p99'])} ms) on disk"
          + (f", {ms(writer[3]['p50'])} ms on tmpfs" if len(writer) > 3 else "")
          + f"; back to back (saturated, latency = tasks / rate): {ms(writer[0]['p50'])} ms on disk")
    print(f"- capacity: the writer takes {writer[0]['records_per_s']:.0f} records/s back to back; the service "
          f"wrote {disk['records_per_s']:.0f}/s, i.e. the log runs at "
          f"{disk['records_per_s'] / writer[0]['records_per_s'] * 100:.0f} % of what it can take")
    print(f"- as a share of the job: {disk['gap_mean'] / disk['lat_mean'] * 100:.1f} % of the mean job latency "
          f"is the answer-after-record delay")
    missing = sum(r["missing_finished"] for r in service)
    if missing:
        print(f"\nWARNING: {missing} answered jobs had no job_finished record in the log")
    print(f"\n(total {time.monotonic() - began:.0f} s)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"service": service, "writer": writer, "args": vars(args)}, handle, indent=2)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
