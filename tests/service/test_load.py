"""A bounded load test: 500 runs from 32 concurrent clients against the real server process,
no errors, and nothing left behind (job processes, cgroups, file descriptors, work dirs)."""

from __future__ import annotations

import asyncio
import os
import statistics
import time

from sandboxd.client import SandboxClient
from sandboxd.spawner.server import DEMAND_FACTOR
from tests.service.conftest import cli_token, descendants, job_cgroups, job_processes, wait_until

RUNS = 500
CLIENTS = 32

# ServiceConfig.pool_size default is 2 warm sandboxes per policy; a burst of demand may grow
# the pool up to DEMAND_FACTOR times that until it has been idle a while.
POOL = 2 * DEMAND_FACTOR


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_500_runs_from_32_clients(real_server, tmp_path):
    state = tmp_path / "state"
    server = real_server(state)
    token = cli_token(state, "load", "--rate", "10000", "--burst", "100000", "--max-running", "64",
                      "--max-queued", "1000")
    await asyncio.sleep(0.6)
    async with SandboxClient(server.url, token) as warm:  # the policy compiled, the spawner warm
        assert (await warm.run(["echo", "warm"]))["verdict"] == "OK"
    fds_before = _fds(server.proc.pid)
    latencies: list[float] = []
    errors: list[str] = []
    todo = iter(range(RUNS))

    async def client_loop() -> None:
        async with SandboxClient(server.url, token) as client:
            for index in todo:
                started = time.monotonic()
                try:
                    argv = ["/bin/true"] if index % 2 else ["echo", f"run {index}"]
                    result = await client.run(argv)
                    if result.get("verdict") != "OK" or (index % 2 == 0 and result["stdout"] != f"run {index}\n"):
                        errors.append(f"{index}: {result.get('verdict')} {result.get('error')}")
                except Exception as exc:  # noqa: BLE001 - every failure counts
                    errors.append(f"{index}: {exc!r}")
                latencies.append(time.monotonic() - started)

    began = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(client_loop() for _ in range(CLIENTS))), 110)
    elapsed = time.monotonic() - began
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(f"\nload: {RUNS} runs, {CLIENTS} clients, {elapsed:.1f} s, {RUNS / elapsed:.1f} runs/s, "
          f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, slots {os.cpu_count()}")
    assert errors == [], errors[:10]
    assert len(latencies) == RUNS

    # Nothing left: no job process, no job cgroup, no work directory, no descriptor — but the
    # warm sandboxes of the spawner's pool (pool_size, default 2, for the one policy used).
    spawners = descendants(server.proc.pid)
    assert spawners, "the spawner should be running"

    def sandboxes() -> set[str]:
        return {os.path.basename(path) for path in job_cgroups(spawners)}

    async def settled():
        return len(sandboxes()) <= POOL and len(job_processes(server.proc.pid)) <= 2 * POOL
    try:
        await wait_until(settled, 10)
    except TimeoutError:
        raise AssertionError(f"left behind: processes {job_processes(server.proc.pid)}, "
                             f"sandboxes {sorted(sandboxes())}") from None
    assert list((state / "work").iterdir()) == []
    assert _fds(server.proc.pid) <= fds_before + 4, (fds_before, _fds(server.proc.pid))
    everything = spawners | set(job_processes(server.proc.pid))
    assert server.terminate(30) == 0
    # Stopped: the spawner, its warm sandboxes and their cgroups are all gone.
    await wait_until(lambda: _none_alive(everything), 10)
    assert job_cgroups(spawners) == []


async def _none_alive(pids: set[int]) -> bool:
    return not any(os.path.exists(f"/proc/{pid}") for pid in pids)
