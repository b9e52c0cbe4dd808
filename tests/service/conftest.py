"""Starting the service for tests: in this event loop (``serve(config, ready=, stop=)``) for
breadth, or as the real ``python -m sandboxd serve`` process for end-to-end tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sandboxd.service import auth
from sandboxd.service.config import ServiceConfig
from sandboxd.service.server import serve

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
# Job processes run as one host id of this range (README: "Started as root…").
JOB_UID_RANGE = range(2_100_000_000, 2_100_065_536)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class InProcess:
    """A service running in the test's event loop."""

    url: str
    state_dir: Path
    admin: str
    task: asyncio.Task
    stop_event: asyncio.Event
    tokens: auth.TokenStore = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = auth.TokenStore(self.state_dir / "tokens.json")

    def token(self, tenant: str, *, policies=("*",), max_running: int = 64, max_queued: int = 10_000,
              rate: float = 10_000.0, burst: int = 100_000) -> str:
        secret, _ = self.tokens.add(tenant, policies=policies, max_running=max_running, max_queued=max_queued,
                                    rate_per_s=rate, burst=burst)
        # The service re-reads tokens.json at most every 0.5 s (auth.TokenStore.reload_interval).
        time.sleep(0.6)
        return secret

    async def stop(self, timeout: float = 60) -> None:
        self.stop_event.set()
        await asyncio.wait_for(self.task, timeout)


async def start_in_process(state_dir: Path, **settings: Any) -> InProcess:
    port = free_port()
    config = ServiceConfig(**{"listen": f"127.0.0.1:{port}", "state_dir": str(state_dir), "slots": 2,
                              "log_level": "warning", "shutdown_grace_s": 1.0, **settings})
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(config, ready=ready, stop=stop))
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        if task.done():
            task.result()  # raise what stopped it
        raise TimeoutError("the service did not start")
    admin = (state_dir / "admin-token").read_text().strip()
    return InProcess(f"http://127.0.0.1:{port}", state_dir, admin, task, stop)


@pytest.fixture
async def service(tmp_path: Path):
    """A factory: ``await service(**settings)``; every service made is stopped afterwards."""
    started: list[InProcess] = []

    async def make(**settings: Any) -> InProcess:
        svc = await start_in_process(tmp_path / f"state{len(started)}", **settings)
        started.append(svc)
        return svc

    yield make
    for svc in started:
        if not svc.task.done():
            await svc.stop()


# --------------------------------------------------------------------------- the real process


@dataclass
class RealServer:
    proc: subprocess.Popen
    url: str
    state_dir: Path
    log_path: Path

    @property
    def admin(self) -> str:
        return (self.state_dir / "admin-token").read_text().strip()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def spawner_pids(self) -> list[int]:
        return [pid for pid in descendants(self.proc.pid)]

    def terminate(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def cli_token(state_dir: Path, tenant: str, *args: str) -> str:
    """``sandboxd token add`` through the real CLI; it prints the token alone."""
    out = subprocess.run([PYTHON, "-m", "sandboxd", "token", "add", "--tenant", tenant, *args,
                          "--state-dir", str(state_dir)], cwd=REPO, capture_output=True, text=True,
                         timeout=60, check=True)
    token = out.stdout.strip()
    assert token.startswith("sbx_") and "\n" not in token
    return token


def start_real(state_dir: Path, log_path: Path, *, config: Path | None = None, port: int | None = None,
               env: dict[str, str] | None = None) -> RealServer:
    port = port or free_port()
    argv = [PYTHON, "-m", "sandboxd", "serve", "--listen", f"127.0.0.1:{port}", "--state-dir", str(state_dir)]
    if config is not None:
        argv += ["--config", str(config)]
    log = open(log_path, "ab")
    proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=log, env={**os.environ, **(env or {})},
                            start_new_session=True)
    log.close()
    server = RealServer(proc, f"http://127.0.0.1:{port}", state_dir, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sandboxd serve exited {proc.returncode}:\n{server.log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return server
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise TimeoutError(f"sandboxd serve did not listen:\n{server.log()}")


@pytest.fixture
def real_server(tmp_path: Path):
    """A factory for real server processes; each is SIGTERMed (then killed) afterwards."""
    started: list[RealServer] = []

    def make(state_dir: Path | None = None, **kwargs: Any) -> RealServer:
        server = start_real(state_dir or tmp_path / "state", tmp_path / f"serve{len(started)}.log", **kwargs)
        started.append(server)
        return server

    yield make
    for server in started:
        if server.proc.poll() is None:
            try:
                server.terminate(60)
            except subprocess.TimeoutExpired:
                os.killpg(server.proc.pid, signal.SIGKILL)
                server.proc.wait()


# --------------------------------------------------------------------------- leak checks


def _ppid_map() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                data = handle.read()
        except OSError:
            continue
        parents[int(entry)] = int(data[data.rindex(")") + 2:].split()[1])
    return parents


def descendants(root: int) -> set[int]:
    parents = _ppid_map()
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def job_processes(root: int) -> list[int]:
    """Descendants of ``root`` running as a job's host uid: a job's processes."""
    jobs = []
    for pid in descendants(root):
        try:
            with open(f"/proc/{pid}/status") as handle:
                for line in handle:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) in JOB_UID_RANGE:
                            jobs.append(pid)
                        break
        except OSError:
            continue
    return jobs


def job_cgroups(spawner_pids: set[int] | list[int]) -> list[str]:
    """Job cgroup directories left under the given spawners' cgroups."""
    left = []
    base = Path("/sys/fs/cgroup")
    for pid in spawner_pids:
        for spawner_dir in base.glob(f"*/sandboxd/spawner-{pid}-*"):
            left += [str(p) for p in spawner_dir.iterdir() if p.is_dir()]
    return left


async def wait_until(predicate, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


async def post_run(session: aiohttp.ClientSession, url: str, token: str, body: Any, **kwargs: Any):
    async with session.post(f"{url}/v1/runs", json=body, headers=headers(token), **kwargs) as response:
        return response.status, await response.json(), response.headers
