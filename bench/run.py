#!/usr/bin/env python3
"""What a sandboxd job costs, side by side with bubblewrap and a plain fork+exec, in one run.

    .venv/bin/python bench/run.py [--quick] [--json PATH] [--results PATH] [...]

Two programs: ``/bin/true`` (the jail's cost alone) and ``head -c 1048576 /dev/zero`` with its
1 MiB of stdout read to the end by this process. Paths: plain posix_spawn (the floor),
bubblewrap, the ``sandboxd run`` CLI, the spawner directly (cold: pool=0; warm: pool=2, right
after a refill and back-to-back) and the HTTP API of a real ``sandboxd serve`` on loopback.
Then sustained throughput with 2 and 16 concurrent submitters, and the memory (RSS and PSS)
of the service, the spawner and its warm sandboxes, idle and under load. Contenders are
interleaved (shuffled rounds, A-B-C-C-B-A slots) so that machine noise falls on all alike;
every loop is bounded by a count and by time. What each row means: bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
BENCH = REPO / "bench"
VARIANTS = BENCH / "policies"
MIB = 1 << 20

# The two programs every path runs. "1mib" writes 1 MiB to stdout, which the caller reads fully.
PROGRAMS = {"true": ("/bin/true",), "1mib": ("head", "-c", str(MIB), "/dev/zero")}
PROGRAM_PATHS = {"true": "/bin/true", "1mib": "/usr/bin/head"}  # for posix_spawn (no PATH search)
PROGRAM_TITLES = {"true": "/bin/true", "1mib": f"head -c {MIB} /dev/zero (1 MiB on stdout, read fully)"}

# bubblewrap with the isolation sandboxd's default policy gives (bench/README.md lists what
# still differs). All of these flags exist in bubblewrap 0.8; ``--seccomp FD`` is added per run.
BWRAP_FLAGS = [
    "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
    "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
    "--ro-bind", "/usr", "/usr",
    "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
    "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/sbin", "/sbin",
    "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/work", "--chdir", "/work",
    "--hostname", "sandbox", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin",
]
BWRAP_BPF_FD = 3  # the fd number bwrap sees the filter on (dup2'd from our memfd per run)

# The cold spawner's rows: label → policy (a shipped name or a file under bench/policies/).
COLD_POLICIES = {
    "cold": "default",
    "cold-no-seccomp": str(VARIANTS / "no-seccomp.toml"),
    "cold-no-landlock": str(VARIANTS / "no-landlock.toml"),
    "cold-none": str(VARIANTS / "no-seccomp-no-landlock.toml"),
}
EXPECTED_LAYERS = {  # what each must show in the job's read-back (checked during warm-up)
    "cold": (True, True), "cold-no-seccomp": (False, True), "cold-no-landlock": (True, False),
    "cold-none": (False, False), "warm": (True, True),
}
POOL = 2  # warm sandboxes per template for the warm spawner rows and the throughput spawners
BURST = 4  # warm rows: per round, wait for a full pool, then BURST jobs back to back

LABELS = {
    "floor": "floor: posix_spawn + waitpid, no isolation",
    "bwrap": "bubblewrap, comparable isolation + seccomp",
    "python": "python -c pass (interpreter start-up)",
    "cli": "sandboxd CLI: sandboxd run -- PROGRAM",
    "cold": "spawner direct, cold (pool=0), all layers",
    "warm-gap": "spawner direct, warm (pool=2), after refill",
    "warm-b2b": "spawner direct, warm (pool=2), back-to-back",
    "warm-py": "  the same after refill, Python stages (before)",
    "http": "HTTP API, 1 client, wait=true",
    "cold-no-seccomp": "  cold spawner, seccomp off",
    "cold-no-landlock": "  cold spawner, Landlock off",
    "cold-none": "  cold spawner, seccomp + Landlock off",
}
ROWS = {  # the latency table's rows per program, in print order
    "true": ["floor", "bwrap", "python", "cli", "cold", "warm-gap", "warm-b2b", "warm-py", "http",
             "cold-no-seccomp", "cold-no-landlock", "cold-none"],
    "1mib": ["floor", "bwrap", "cli", "cold", "warm-gap", "warm-b2b", "http"],
}
# One job (a burst for "warm") of each per round, in a shuffled order.
FAST = [("floor", "true"), ("floor", "1mib"), ("bwrap", "true"), ("bwrap", "1mib"),
        ("cold", "true"), ("cold", "1mib"), ("warm", "true"), ("warm", "1mib"), ("warm-py", "true"),
        ("http", "true"), ("http", "1mib"),
        ("cold-no-seccomp", "true"), ("cold-no-landlock", "true"), ("cold-none", "true")]
SLOW = [("cli", "true"), ("cli", "1mib"), ("python", "true")]  # every few rounds only

# Issue 8's targets.
TARGET_LATENCY = 0.7  # spawner /bin/true, all layers, ≤ 0.7 × bubblewrap
TARGET_THROUGHPUT = 1.5  # 2 submitters ≥ 1.5 × bubblewrap
TARGET_HTTP_P50 = 1.5  # HTTP, 1 client, p50 ≤ 1.5 × bubblewrap
TARGET_HTTP_P99 = 4.0  # … p99 ≤ 4 × bubblewrap
TARGET_IDLE_MIB = 80.0  # service + spawner + pool, idle


# --- statistics ------------------------------------------------------------------------------
def quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile (q in [0, 1]); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: list[float]) -> float:
    return quantile(values, 0.5)


@dataclass
class Series:
    """The latency samples of one contender and program, in ms, with the round of each."""

    name: str
    ms: list[float] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)
    inner_ms: list[float] = field(default_factory=list)  # spawner's own start→reap wall time
    failures: list[str] = field(default_factory=list)

    def add(self, round_no: int, ms: float, inner_ms: float | None = None) -> None:
        self.ms.append(ms)
        self.rounds.append(round_no)
        if inner_ms is not None:
            self.inner_ms.append(inner_ms)

    def by_round(self) -> dict[int, float]:
        return dict(zip(self.rounds, self.ms))


def paired_median_diff(a: Series, b: Series) -> float:
    """Median of a−b over the rounds both ran in: less sensitive to slow drifts than a
    difference of medians."""
    br = b.by_round()
    return median([ms - br[r] for r, ms in a.by_round().items() if r in br])


# --- running things --------------------------------------------------------------------------
def read_all(fd: int) -> int:
    """Read ``fd`` to its end; the number of bytes read. Closes it."""
    total = 0
    try:
        while chunk := os.read(fd, 1 << 16):
            total += len(chunk)
    finally:
        os.close(fd)
    return total


def spawn_and_wait(path: str, argv: list[str], env: dict[str, str], null: int,
                   capture: bool = False, extra: list[tuple] = ()) -> tuple[float, int, int]:
    """posix_spawn + (read stdout to its end) + waitpid: (ms, exit code or −signal, bytes)."""
    began = time.perf_counter_ns()
    if capture:
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        actions = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, write_end, 1),
                   (os.POSIX_SPAWN_DUP2, null, 2), *extra]
        try:
            pid = os.posix_spawn(path, argv, env, file_actions=actions)
        finally:
            os.close(write_end)
        nbytes = read_all(read_end)
    else:
        actions = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1),
                   (os.POSIX_SPAWN_DUP2, null, 2), *extra]
        pid = os.posix_spawn(path, argv, env, file_actions=actions)
        nbytes = 0
    _, status = os.waitpid(pid, 0)
    return (time.perf_counter_ns() - began) / 1e6, os.waitstatus_to_exitcode(status), nbytes


def default_bpf() -> bytes:
    from sandboxd.policy import seccomp_compile, seccomp_profile

    profile = seccomp_profile.load_profile(seccomp_profile.find_profile("default"))
    return seccomp_compile.compile_profile(profile).bpf


def compare_filters(bwrap_bpf: bytes, template_bpf: bytes) -> str:
    """The template may name kills with SECCOMP_RET_USER_NOTIF where the plain compile kills
    (RET_KILL_PROCESS): bwrap has no notify listener, so it gets the plain one. Same rules?"""
    if bwrap_bpf == template_bpf:
        return "identical"
    if len(bwrap_bpf) != len(template_bpf):
        return f"different programs ({len(bwrap_bpf) // 8} vs {len(template_bpf) // 8} instructions)"
    kill_like = {0x80000000, 0x7FC00000}  # RET_KILL_PROCESS, RET_USER_NOTIF
    for at in range(0, len(bwrap_bpf), 8):
        a, b = bwrap_bpf[at:at + 8], template_bpf[at:at + 8]
        if a != b:
            code_a, k_a = int.from_bytes(a[:2], "little"), int.from_bytes(a[4:], "little")
            code_b, k_b = int.from_bytes(b[:2], "little"), int.from_bytes(b[4:], "little")
            if not (code_a == code_b == 0x06 and {k_a, k_b} <= kill_like):  # BPF_RET|BPF_K
                return f"different at instruction {at // 8}"
    return "identical except the kill action"


class Bwrap:
    """One bwrap submitter: its own memfd holding the filter (bwrap reads the fd to its end,
    and a dup2'd fd shares the offset, so each run seeks it back to 0 — and concurrent
    submitters must not share one)."""

    def __init__(self, binary: str, bpf: bytes, null: int) -> None:
        self.binary, self.null = binary, null
        self.memfd = os.memfd_create("sandboxd-bench-bpf", os.MFD_CLOEXEC)
        os.write(self.memfd, bpf)
        if self.memfd == BWRAP_BPF_FD:  # dup2 onto itself would keep FD_CLOEXEC
            moved = os.dup(self.memfd)
            os.close(self.memfd)
            self.memfd = moved

    def argv(self, program: str) -> list[str]:
        return [self.binary, *BWRAP_FLAGS, "--seccomp", str(BWRAP_BPF_FD), *PROGRAMS[program]]

    def run(self, program: str = "true") -> tuple[float, int, int]:
        os.lseek(self.memfd, 0, os.SEEK_SET)
        return spawn_and_wait(self.binary, self.argv(program), {}, self.null, capture=program != "true",
                              extra=[(os.POSIX_SPAWN_DUP2, self.memfd, BWRAP_BPF_FD)])

    def close(self) -> None:
        os.close(self.memfd)


class SpawnerJobs:
    """Jobs through one ``SpawnerClient`` (a spawner of its own), as the CLI runs them."""

    def __init__(self, templates: dict[str, Any], null: int, pool: int, runner: str | None = None) -> None:
        from sandboxd.spawner.client import SpawnerClient

        saved = os.environ.get("SANDBOXD_STAGE_RUNNER")
        if runner is not None:  # the spawner reads it at start-up
            os.environ["SANDBOXD_STAGE_RUNNER"] = runner
        try:
            self.client = SpawnerClient.start_exec()
        finally:
            if runner is not None:
                if saved is None:
                    del os.environ["SANDBOXD_STAGE_RUNNER"]
                else:
                    os.environ["SANDBOXD_STAGE_RUNNER"] = saved
        self.templates, self.null, self.pool = templates, null, pool

    def define(self) -> None:
        for template in self.templates.values():
            self.client.define(template, pool=self.pool)

    def warm_count(self, name: str) -> int:
        """How many warm sandboxes the spawner holds for ``name`` (a ``ping`` round trip)."""
        from sandboxd.spawner import protocol

        protocol.send(self.client.sock, {"op": "ping"})
        event = self.client.next_event(None, timeout=2.0)
        if event is None or event.kind != "pong":
            raise RuntimeError(f"spawner ping: {event.kind if event else 'no answer'}")
        return int(event.data.get("warm", {}).get(self.templates[name].policy_hash, 0))

    def wait_full(self, name: str, limit_s: float) -> tuple[float, bool]:
        """Wait (bounded) until the pool of ``name`` is full: (ms waited, full)."""
        began = time.perf_counter()
        while True:
            if self.warm_count(name) >= self.pool:
                return (time.perf_counter() - began) * 1000, True
            if time.perf_counter() - began > limit_s:
                return (time.perf_counter() - began) * 1000, False
            time.sleep(0.002)

    def run(self, name: str, program: str = "true") -> tuple[float, float, Any, int]:
        """(round trip ms as the caller sees it, spawner's start→reap ms, RunResult, stdout bytes)."""
        from sandboxd.jail.plan import JobSpec
        from sandboxd.supervise.output import pipe_for
        from sandboxd.supervise.runner import run_job

        job = JobSpec(job_id=uuid.uuid4().hex, argv=PROGRAMS[program])
        began = time.perf_counter_ns()
        if program == "true":
            result = run_job(self.client, self.templates[name], job, (self.null, self.null, self.null))
            nbytes = 0
        else:  # stdout into a pipe this process reads to its end (uncapped, not kept)
            stream, write_end = pipe_for("stdout", None, None, keep=False)
            result = run_job(self.client, self.templates[name], job, (self.null, write_end, self.null),
                             [stream], close_after_send=(write_end,))
            nbytes = stream.total
        elapsed = (time.perf_counter_ns() - began) / 1e6
        return elapsed, result.usage.wall_s * 1000, result, nbytes

    def close(self) -> None:
        self.client.close()


class Service:
    """A real ``sandboxd serve`` on loopback, with a state directory and a token of its own."""

    def __init__(self, cli: str) -> None:
        self.cli = cli
        self.state = tempfile.mkdtemp(prefix="sandboxd-bench-")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # The token first: a running service re-reads the token file only now and then.
        added = subprocess.run([cli, "token", "add", "--tenant", "bench", "--rate", "10000", "--burst", "100000",
                                "--max-running", "64", "--max-queued", "1000", "--state-dir", self.state],
                               capture_output=True, text=True, timeout=30)
        if added.returncode != 0:
            raise RuntimeError(f"sandboxd token add: {added.stderr.strip()}")
        self.token = added.stdout.strip()
        self.log_path = Path(self.state) / "serve.log"
        self.argv = [cli, "serve", "--listen", f"127.0.0.1:{self.port}", "--state-dir", self.state]
        from sandboxd.jail import syscalls  # noqa: F401 (imported here, not in the forked child)

        self.started = time.monotonic()
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            preexec_fn=_die_with_us)

    async def wait_healthy(self, client: Any, limit_s: float) -> float:
        deadline = time.monotonic() + limit_s
        while True:
            try:
                await client.health()
                return time.monotonic() - self.started
            except Exception:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"sandboxd serve not healthy within {limit_s:g} s; log: {self.log_path}")
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        shutil.rmtree(self.state, ignore_errors=True)


async def _close_all(clients: list[Any]) -> None:
    await asyncio.gather(*(client.close() for client in clients))


def _die_with_us() -> None:
    from sandboxd.jail import syscalls as sc

    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGTERM)


# --- CPU time ----------------------------------------------------------------------------------
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """This process (every thread) and the children it has reaped (floor, bwrap, CLI)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def cpu_s(pids: list[int]) -> float:
    """utime + stime + cutime + cstime of ``pids``: their own CPU time and that of every
    descendant they reaped (a spawner reaps each sandbox's init, which reaped the program)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += sum(int(x) for x in fields[11:15])  # fields 14-17 of stat(5)
    return total / CLOCK_TICKS


# --- memory ------------------------------------------------------------------------------------
def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(root: int, kids: dict[int, list[int]] | None = None) -> list[int]:
    kids = kids if kids is not None else _children_map()
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += kids.get(pid, [])
    return found


def smaps_rollup(pid: int) -> dict[str, int] | None:
    """Rss, Pss, Pss_Anon of one process in KiB; None if it is gone."""
    wanted = {"Rss", "Pss", "Pss_Anon"}
    values = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in wanted:
                    values[key] = int(rest.split()[0])
    except OSError:
        return None
    return values if "Rss" in values else None


def tree_memory(roots: list[int]) -> dict[str, Any]:
    """RSS, PSS and PSS of anonymous pages (MiB) summed over ``roots`` and every descendant;
    split into the roots, their direct children, and deeper processes."""
    kids = _children_map()
    total = {"procs": 0, "rss": 0.0, "pss": 0.0, "pss_anon": 0.0}
    parts: dict[str, dict[str, float]] = {}
    for root in roots:
        depth = {root: 0}
        for pid in process_tree(root, kids):
            for child in kids.get(pid, []):
                depth[child] = depth[pid] + 1
            values = smaps_rollup(pid)
            if values is None:
                continue
            part = parts.setdefault(str(min(depth.get(pid, 2), 2)), {"procs": 0, "rss": 0.0, "pss": 0.0})
            for target in (total, part):
                target["procs"] += 1
                target["rss"] += values["Rss"] / 1024
                target["pss"] += values.get("Pss", 0) / 1024
            total["pss_anon"] += values.get("Pss_Anon", 0) / 1024
    total["parts"] = parts
    return total


class MemorySampler:
    """Samples ``tree_memory(roots())`` every ``period`` s in a thread; keeps the peak (by PSS)."""

    def __init__(self, roots: Callable[[], list[int]], period: float) -> None:
        self.roots, self.period = roots, period
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.samples.append(tree_memory(self.roots()))

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def peak(self) -> dict[str, Any]:
        if not self.samples:
            return {"procs": 0, "rss": float("nan"), "pss": float("nan"), "pss_anon": float("nan"), "samples": 0}
        top = dict(max(self.samples, key=lambda s: s["pss"]))
        top["rss_max"] = max(s["rss"] for s in self.samples)
        top["samples"] = len(self.samples)
        return top


# --- the benchmark ---------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        names = [f"{row}/{program}" for program, rows in ROWS.items() for row in rows]
        self.series = {name: Series(name) for name in names}
        self.refill_wait_ms: list[float] = []
        self.refill_misses = 0
        self.throughput: dict[str, dict[str, Any]] = {}
        self.memory: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []
        self.checks: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self.spawners: list[SpawnerJobs] = []
        self.tp_spawners: list[SpawnerJobs] = []
        self.service: Service | None = None
        self.loop = asyncio.new_event_loop()
        self.http = None

        bwrap = shutil.which("bwrap")
        if bwrap is None:
            sys.exit("bench: bwrap is not installed (apt-get install bubblewrap)")
        self.bwrap_binary = bwrap
        venv_bin = Path(sys.executable).parent
        cli = venv_bin / "sandboxd"
        self.cli = str(cli) if cli.exists() else (shutil.which("sandboxd") or sys.exit("bench: no sandboxd CLI"))
        self.python_argv = [sys.executable, "-c", "pass"]

        # Compile once, as the service does: templates per policy, the BPF for bwrap.
        from sandboxd.policy.compile import compile_template
        from sandboxd.policy.load import load_policy

        loaded = {name: load_policy(spec) for name, spec in COLD_POLICIES.items()}
        self._check_variants_mirror_default(loaded)
        self.templates = {name: compile_template(policy) for name, policy in loaded.items()}
        self.bpf = default_bpf()
        self.checks["bwrap_filter"] = compare_filters(self.bpf, self.templates["cold"].seccomp.bpf)
        if self.checks["bwrap_filter"] not in ("identical", "identical except the kill action"):
            self.notes.append(f"bwrap's filter vs the default template's: {self.checks['bwrap_filter']}")

    def start(self) -> None:
        began = time.monotonic()
        # Everything starts at once: spawners and the service boot in parallel.
        self.cold = SpawnerJobs(self.templates, self.null, pool=0)
        self.warm = SpawnerJobs({"warm": self.templates["cold"]}, self.null, pool=POOL)
        self.warm_py = SpawnerJobs({"warm": self.templates["cold"]}, self.null, pool=POOL, runner="python")
        self.spawners = [self.cold, self.warm, self.warm_py]
        self.service = Service(self.cli)
        for spawner in self.spawners:
            spawner.define()
        self.bwrap = Bwrap(self.bwrap_binary, self.bpf, self.null)
        self.http = self.loop.run_until_complete(self._open_http(1))[0]
        self.timings["service_healthy_s"] = self.loop.run_until_complete(
            self.service.wait_healthy(self.http, 30))
        # Fresh: healthy, no policy defined in its spawner yet, so no pool.
        self.memory["service, fresh (no pool yet)"] = tree_memory([self.service.process.pid])
        self.timings["start_s"] = time.monotonic() - began

    async def _open_http(self, count: int) -> list[Any]:
        from sandboxd.client import SandboxClient

        assert self.service is not None
        return [SandboxClient(self.service.url, self.service.token, timeout=60) for _ in range(count)]

    def close(self) -> None:
        for spawner in [*self.tp_spawners, *self.spawners]:
            try:
                spawner.close()
            except Exception as exc:  # report, go on closing the rest
                self.notes.append(f"closing a spawner: {exc!r}")
        if self.http is not None:
            self.loop.run_until_complete(self.http.close())
        if self.service is not None:
            self.service.stop()
        if hasattr(self, "bwrap"):
            self.bwrap.close()
        self.loop.close()
        os.close(self.null)

    def _check_variants_mirror_default(self, loaded: dict[str, Any]) -> None:
        skip = ("description", "seccomp", "landlock")
        ref = {k: v for k, v in loaded["cold"].policy.model_dump(mode="json").items() if k not in skip}
        for name, policy in loaded.items():
            data = {k: v for k, v in policy.policy.model_dump(mode="json").items() if k not in skip}
            if data != ref:
                self.notes.append(f"{COLD_POLICIES[name]} no longer mirrors policies/default.toml "
                                  "outside [seccomp]/[landlock]: update bench/policies/")

    # --- one job of each kind -----------------------------------------------------------------
    def _record(self, row: str, program: str, round_no: int, ok: bool, why: str, ms: float,
                inner: float | None, record: bool) -> None:
        series = self.series[f"{row}/{program}"]
        if not ok:
            series.failures.append(f"round {round_no}: {why}")
        elif record:
            series.add(round_no, ms, inner)

    def one(self, name: str, program: str, round_no: int, record: bool = True) -> None:
        want = MIB if program == "1mib" else 0
        if name == "warm":
            self._warm_burst(program, round_no, record)
            return
        if name == "warm-py":  # the compiled runner's "before": Python stages, after a refill
            self.warm_py.wait_full("warm", self.args.refill_limit)
            ms, inner, result, nbytes = self.warm_py.run("warm", program)
            self._record(name, program, round_no, result.verdict == "OK", f"{result.verdict} {result.error}",
                         ms, inner, record)
            return
        inner = None
        if name == "floor":
            ms, code, nbytes = spawn_and_wait(PROGRAM_PATHS[program], list(PROGRAMS[program]), {}, self.null,
                                              capture=program != "true")
            ok, why = code == 0 and nbytes == want, f"exit {code}, {nbytes} bytes"
        elif name == "bwrap":
            ms, code, nbytes = self.bwrap.run(program)
            ok, why = code == 0 and nbytes == want, f"exit {code}, {nbytes} bytes"
        elif name == "cli":
            argv = [self.cli, "run", "--", *PROGRAMS[program]]
            ms, code, nbytes = spawn_and_wait(self.cli, argv, dict(os.environ), self.null, capture=program != "true")
            ok, why = code == 0 and nbytes == want, f"exit {code}, {nbytes} bytes"
        elif name == "python":
            ms, code, _ = spawn_and_wait(sys.executable, self.python_argv, dict(os.environ), self.null)
            ok, why = code == 0, f"exit {code}"
        elif name == "http":
            ms, inner, ok, why = self.loop.run_until_complete(self._http_one(self.http, program))
        else:  # a cold spawner row
            ms, inner, result, nbytes = self.cold.run(name, program)
            ok, why = result.verdict == "OK" and nbytes == want, f"{result.verdict} {result.error}, {nbytes} bytes"
            if not record and ok:
                self._check_layers(name, result)
        self._record(name, program, round_no, ok, why, ms, inner, record)

    def _warm_burst(self, program: str, round_no: int, record: bool) -> None:
        """Wait for a full pool (bounded), then BURST jobs back to back: the first is the
        "after refill" row, the others the "back-to-back" row."""
        waited, full = self.warm.wait_full("warm", self.args.refill_limit)
        if record:
            self.refill_wait_ms.append(waited)
            self.refill_misses += not full
        want = MIB if program == "1mib" else 0
        for index in range(BURST):
            ms, inner, result, nbytes = self.warm.run("warm", program)
            ok = result.verdict == "OK" and nbytes == want
            if not record and ok and index == 0:
                self._check_layers("warm", result)
            self._record("warm-gap" if index == 0 else "warm-b2b", program, round_no, ok,
                         f"{result.verdict} {result.error}, {nbytes} bytes", ms, inner, record)

    async def _http_one(self, client: Any, program: str) -> tuple[float, float | None, bool, str]:
        began = time.perf_counter_ns()
        try:
            result = await client.run(list(PROGRAMS[program]), output_encoding="base64")
        except Exception as exc:
            return (time.perf_counter_ns() - began) / 1e6, None, False, repr(exc)
        ms = (time.perf_counter_ns() - began) / 1e6
        nbytes = len(base64.b64decode(result.get("stdout") or ""))
        want = MIB if program == "1mib" else 0
        ok = result.get("verdict") == "OK" and nbytes == want
        inner = (result.get("usage") or {}).get("wall_s")
        return ms, None if inner is None else inner * 1000, ok, f"{result.get('verdict')}, {nbytes} bytes"

    def _check_layers(self, name: str, result: Any) -> None:
        layers = result.layers or {}
        seccomp_on = bool((layers.get("seccomp") or {}).get("enforced")) and layers.get("seccomp_mode") == 2
        landlock_on = bool((layers.get("landlock") or {}).get("enforced"))
        self.checks[f"{name}: seccomp, landlock enforced"] = [seccomp_on, landlock_on]
        if (seccomp_on, landlock_on) != EXPECTED_LAYERS[name]:
            self.notes.append(f"{name}: expected seccomp/Landlock {EXPECTED_LAYERS[name]}, "
                              f"the job read back {(seccomp_on, landlock_on)}")

    def check_bwrap(self) -> None:
        """Once: does the bwrap jail really have the filter and no capabilities?"""
        os.lseek(self.bwrap.memfd, 0, os.SEEK_SET)
        argv = [self.bwrap_binary, *BWRAP_FLAGS, "--seccomp", str(BWRAP_BPF_FD),
                "/bin/sh", "-c", "grep -E '^(Seccomp|CapEff|NoNewPrivs):' /proc/self/status; hostname"]
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        actions = [(os.POSIX_SPAWN_DUP2, self.null, 0), (os.POSIX_SPAWN_DUP2, write_end, 1),
                   (os.POSIX_SPAWN_DUP2, write_end, 2), (os.POSIX_SPAWN_DUP2, self.bwrap.memfd, BWRAP_BPF_FD)]
        pid = os.posix_spawn(self.bwrap_binary, argv, {}, file_actions=actions)
        os.close(write_end)
        with os.fdopen(read_end, "r") as pipe:
            output = pipe.read()
        os.waitpid(pid, 0)
        seen = {k: v.strip() for k, v in (line.split(":", 1) for line in output.splitlines() if ":" in line)}
        self.checks["bwrap read-back"] = seen
        if seen.get("Seccomp") != "2" or seen.get("CapEff") != "0000000000000000":
            self.notes.append(f"bwrap jail is not as expected: {output.strip()!r}")

    # --- phases -------------------------------------------------------------------------------
    def warm_up(self) -> None:
        for name, program in FAST:
            for _ in range(self.args.warmup if name != "warm" else max(1, self.args.warmup // BURST)):
                self.one(name, program, -1, record=False)
        for name, program in SLOW:
            for _ in range(self.args.warmup // 4):
                self.one(name, program, -1, record=False)
        for series in self.series.values():  # warm-up failures are real failures too
            if series.failures:
                self.notes.append(f"{series.name} failed during warm-up: {series.failures[:3]}")

    def idle_memory(self, label: str) -> None:
        """Service and warm spawner at rest, each pool full (waited for, bounded)."""
        assert self.service is not None
        self.warm.wait_full("warm", 3.0)
        expected = 2 + 2 * POOL  # service, its spawner, 2 processes (init + program-to-be) per warm sandbox
        deadline = time.monotonic() + 3.0
        while len(process_tree(self.service.process.pid)) < expected and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # let the last teardown settle
        self.memory[f"service + spawner + pool, idle{label}"] = tree_memory([self.service.process.pid])
        self.memory[f"spawner direct + pool, idle{label}"] = tree_memory([self.warm.client.pid])

    def latency(self) -> dict[str, Any]:
        rng = random.Random(self.args.seed)
        deadline = time.monotonic() + self.args.latency_budget
        slow_every = max(1, self.args.runs // max(1, self.args.slow_runs))
        began = time.monotonic()
        rounds = 0
        for round_no in range(self.args.runs):
            order = list(FAST)
            if round_no % slow_every == 0 and len(self.series["cli/true"].ms) < self.args.slow_runs:
                order += SLOW
            rng.shuffle(order)
            for name, program in order:
                self.one(name, program, round_no)
            rounds += 1
            if time.monotonic() >= deadline:
                if rounds < self.args.runs:
                    self.notes.append(f"latency phase stopped by its {self.args.latency_budget:.0f} s budget "
                                      f"after {rounds} of {self.args.runs} rounds")
                break
        return {"rounds": rounds, "seconds": time.monotonic() - began, "slow_every": slow_every}

    # --- throughput ---------------------------------------------------------------------------
    def _threads(self, jobs: list[Callable[[], bool]]) -> list[list[float]]:
        """One thread per job function, each calling it until the slot ends: completion times."""
        ends: list[list[float]] = [[] for _ in jobs]
        errors = [0] * len(jobs)
        barrier = threading.Barrier(len(jobs) + 1)
        stop_at = [0.0]

        def loop(i: int) -> None:
            barrier.wait()
            while time.monotonic() < stop_at[0]:
                if jobs[i]():
                    ends[i].append(time.monotonic())
                else:
                    errors[i] += 1

        threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(len(jobs))]
        for t in threads:
            t.start()
        self._slot_began = time.monotonic()
        stop_at[0] = self._slot_began + self.args.slot
        barrier.wait()
        for t in threads:
            t.join(self.args.slot + 60)
        self._slot_errors = sum(errors)
        return ends

    async def _async_clients(self, clients: list[Any]) -> list[list[float]]:
        ends: list[list[float]] = [[] for _ in clients]
        errors = [0]
        self._slot_began = time.monotonic()
        stop_at = self._slot_began + self.args.slot

        async def loop(i: int) -> None:
            while time.monotonic() < stop_at:
                try:
                    result = await clients[i].run(list(PROGRAMS["true"]))
                    ok = result.get("verdict") == "OK"
                except Exception:
                    ok = False
                if ok:
                    ends[i].append(time.monotonic())
                else:
                    errors[0] += 1

        await asyncio.wait_for(asyncio.gather(*(loop(i) for i in range(len(clients)))), self.args.slot + 60)
        self._slot_errors = errors[0]
        return ends

    def _slot(self, name: str, level: int, run: Callable[[], list[list[float]]],
              cpu_pids: Callable[[], list[int]] = list) -> None:
        pids = cpu_pids()
        cpu_before = own_cpu_s() + cpu_s(pids)
        ends = run()
        cpu = own_cpu_s() + cpu_s(pids) - cpu_before
        window_start = self._slot_began + self.args.ramp
        window_end = self._slot_began + self.args.slot
        counted = sum(1 for per in ends for t in per if window_start <= t <= window_end)
        total = self.throughput.setdefault(f"{name}/{level}", {"jobs": 0, "errors": 0, "seconds": 0.0, "slots": [],
                                                               "cpu_s": 0.0, "all_jobs": 0})
        total["jobs"] += counted
        total["cpu_s"] += cpu
        total["all_jobs"] += sum(map(len, ends))
        total["errors"] += self._slot_errors
        total["seconds"] += window_end - window_start
        total["slots"].append({"jobs": counted, "all_jobs": sum(map(len, ends)),
                               "per_submitter": [len(per) for per in ends], "errors": self._slot_errors})

    def throughput_phase(self) -> None:
        began = time.monotonic()
        levels = self.args.levels
        top = max(levels)
        # One spawner (own client) per submitter thread, all with the product's pool.
        tp_templates = {"warm": self.templates["cold"]}
        self.tp_spawners = [SpawnerJobs(tp_templates, self.null, POOL) for _ in range(top)]
        for spawner in self.tp_spawners:
            spawner.define()
        for spawner in self.tp_spawners:
            spawner.wait_full("warm", 5.0)
        self.timings["throughput_spawners_ready_s"] = time.monotonic() - began
        bwraps = [Bwrap(self.bwrap_binary, self.bpf, self.null) for _ in range(top)]
        clients = self.loop.run_until_complete(self._open_http(top))
        try:
            for level in levels:
                def bwrap_slot() -> list[list[float]]:
                    return self._threads([(lambda b=b: b.run()[1] == 0) for b in bwraps[:level]])

                def spawner_slot() -> list[list[float]]:
                    return self._threads([(lambda s=s: s.run("warm")[2].verdict == "OK")
                                          for s in self.tp_spawners[:level]])

                def http_slot() -> list[list[float]]:
                    return self.loop.run_until_complete(self._async_clients(clients[:level]))

                def floor_slot() -> list[list[float]]:
                    return self._threads([(lambda: spawn_and_wait("/bin/true", ["/bin/true"], {}, self.null)[1] == 0)
                                          for _ in range(level)])

                def spawner_pids() -> list[int]:
                    return [s.client.pid for s in self.tp_spawners[:level]]

                plan = [("bwrap", bwrap_slot, list), ("spawner", spawner_slot, spawner_pids),
                        ("http", http_slot, self._service_pids), ("http", http_slot, self._service_pids),
                        ("spawner", spawner_slot, spawner_pids), ("bwrap", bwrap_slot, list),
                        ("floor", floor_slot, list)]
                for name, run, pids in plan:
                    self._slot(name, level, run, pids)
        finally:
            for b in bwraps:
                b.close()
            self.loop.run_until_complete(_close_all(clients))
        for key, total in self.throughput.items():
            total["jobs_per_s"] = total["jobs"] / total["seconds"] if total["seconds"] else float("nan")
            total["cpu_ms_per_job"] = 1000 * total["cpu_s"] / total["all_jobs"] if total["all_jobs"] else float("nan")
            if total["errors"]:
                self.notes.append(f"throughput {key}: {total['errors']} failed jobs")

    def _service_pids(self) -> list[int]:
        """The service and its spawner (not the sandboxes: their CPU time reaches the
        spawner's when it reaps them)."""
        assert self.service is not None
        pid = self.service.process.pid
        return [pid, *_children_map().get(pid, [])]

    def memory_under_load(self) -> None:
        """16 (the top level) concurrent submitters while a thread samples RSS/PSS."""
        assert self.service is not None
        top = max(self.args.levels)
        period = self.args.sample_period
        saved_slot, self.args.slot = self.args.slot, self.args.load_seconds
        try:
            roots = [s.client.pid for s in self.tp_spawners[:top]]
            with MemorySampler(lambda: roots, period) as sampler:
                self._threads([(lambda s=s: s.run("warm")[2].verdict == "OK") for s in self.tp_spawners[:top]])
            peak = sampler.peak()
            peak["spawners"] = top
            self.memory[f"{top} spawners direct + pools, {top} submitters (peak)"] = peak
            clients = self.loop.run_until_complete(self._open_http(top))
            pid = self.service.process.pid
            try:
                with MemorySampler(lambda: [pid], period) as sampler:
                    self.loop.run_until_complete(self._async_clients(clients))
            finally:
                self.loop.run_until_complete(_close_all(clients))
            self.memory[f"service + spawner + pool, {top} HTTP clients (peak)"] = sampler.peak()
        finally:
            self.args.slot = saved_slot


# --- machine and report ------------------------------------------------------------------------
def _command_output(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def _stage_runner() -> str:
    from sandboxd import native

    choice = native.choose()
    return f"{choice.kind} ({choice.path or choice.reason})"


def machine_info(bwrap: str) -> dict[str, Any]:
    from sandboxd.jail import landlock
    from sandboxd.policy import seccomp_compile

    try:
        abi = landlock.abi_version()
    except OSError as exc:
        abi = f"unavailable ({exc})"
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "?")
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as handle:
            mem = next((f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB" for line in handle
                        if line.startswith("MemTotal")), "?")
    except OSError:
        pass
    try:
        import aiohttp
        aiohttp_version = aiohttp.__version__
    except ImportError:
        aiohttp_version = "?"
    return {
        "date": dt.datetime.now(dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
        "uname": _command_output(["uname", "-a"]),
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory": mem,
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "aiohttp": aiohttp_version,
        "bwrap": _command_output([bwrap, "--version"]),
        "landlock_abi": abi,
        "stage_runner": _stage_runner(),
        "libseccomp": getattr(seccomp_compile, "LIBSECCOMP_VERSION", "?"),
        "euid": os.geteuid(),
        "sandboxd_commit": _command_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "loadavg_before": tuple(round(x, 2) for x in os.getloadavg()),
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE", ""),
    }


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:.{digits}f}"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("MET" if ok else "NOT MET")


def build_tables(bench: Bench) -> tuple[str, str, dict[str, Any]]:
    s = bench.series
    med = {name: median(series.ms) for name, series in s.items()}
    lines = []
    for program, rows in ROWS.items():
        bwrap = med[f"bwrap/{program}"]
        head = (f"{'latency, ' + PROGRAM_TITLES[program] + ' (ms)':46} {'n':>4} {'median':>8} {'p90':>8} "
                f"{'p99':>8} {'min':>7} {'x bwrap':>8} {'in-spawner':>10}")
        lines += [head, "-" * len(head)]
        for row in rows:
            series = s[f"{row}/{program}"]
            inner = median(series.inner_ms) if series.inner_ms else float("nan")
            label = LABELS[row].replace("PROGRAM", "/bin/true" if program == "true" else "head -c 1M")
            lines.append(f"{label:46} {len(series.ms):>4} {_fmt(med[series.name]):>8} "
                         f"{_fmt(quantile(series.ms, 0.9)):>8} {_fmt(quantile(series.ms, 0.99)):>8} "
                         f"{_fmt(min(series.ms) if series.ms else None):>7} "
                         f"{_fmt(med[series.name] / bwrap):>8} {_fmt(inner):>10}")
        lines.append("")
    refill = bench.refill_wait_ms
    lines.append(f"warm rows: before each burst of {BURST} the pool was waited for: median "
                 f"{_fmt(median(refill), 1)} ms, max {_fmt(max(refill) if refill else None, 1)} ms, "
                 f"not full within {bench.args.refill_limit:g} s: {bench.refill_misses} of {len(refill)}")
    lines.append("")

    costs = {"seccomp + Landlock": ("cold", "cold-none"), "seccomp alone": ("cold", "cold-no-seccomp"),
             "Landlock alone": ("cold", "cold-no-landlock")}
    head = f"{'per-job layer cost, /bin/true (ms, cold spawner)':52} {'diff of medians':>16} {'paired median':>14} {'share':>6}"
    lines += [head, "-" * len(head)]
    layer_cost = {}
    for label, (on, off) in costs.items():
        a, b = s[f"{on}/true"], s[f"{off}/true"]
        diff = med[a.name] - med[b.name]
        paired = paired_median_diff(a, b)
        layer_cost[label] = {"diff_of_medians_ms": diff, "paired_median_ms": paired, "on": on, "off": off}
        lines.append(f"{label + f'  ({on} - {off})':52} {_fmt(diff, 3):>16} {_fmt(paired, 3):>14} "
                     f"{_fmt(100 * diff / med[a.name], 0) + ' %':>6}")
    lines.append("")

    tp = bench.throughput
    levels = bench.args.levels
    head = f"{'throughput, /bin/true (jobs/s; CPU ms per job)':52}" + "".join(
        f" {f'{n} subm.':>9} {'x bwrap':>8} {'CPU/job':>8}" for n in levels) + f" {'failed':>7}"
    lines += [head, "-" * len(head)]
    labels = {"floor": "floor: posix_spawn, N threads",
              "bwrap": "bubblewrap, N threads (own memfd each)",
              "spawner": "spawner direct, N threads, own client + pool=2 each",
              "http": "HTTP API, N async clients, one service"}
    for name, label in labels.items():
        cells, failed = [], 0
        for n in levels:
            t = tp.get(f"{name}/{n}")
            base = tp.get(f"bwrap/{n}")
            if t is None:
                cells.append(f" {'-':>9} {'-':>8} {'-':>8}")
                continue
            failed += t["errors"]
            cells.append(f" {t['jobs_per_s']:>9.1f} {_fmt(t['jobs_per_s'] / base['jobs_per_s'] if base else None):>8}"
                         f" {_fmt(t['cpu_ms_per_job'], 1):>8}")
        lines.append(f"{label:52}" + "".join(cells) + f" {failed:>7}")
    lines.append("")

    head = f"{'memory (MiB; sums over the process tree)':58} {'procs':>5} {'RSS':>8} {'PSS':>8} {'PSS anon':>9}"
    lines += [head, "-" * len(head)]
    for label, m in bench.memory.items():
        lines.append(f"{label:58} {m['procs']:>5} {_fmt(m['rss'], 1):>8} {_fmt(m['pss'], 1):>8} "
                     f"{_fmt(m['pss_anon'], 1):>9}")
        if "spawners" in m and m["spawners"]:
            n = m["spawners"]
            lines.append(f"{'  … per spawner':58} {m['procs'] / n:>5.1f} {_fmt(m['rss'] / n, 1):>8} "
                         f"{_fmt(m['pss'] / n, 1):>8} {_fmt(m['pss_anon'] / n, 1):>9}")
    idle = bench.memory.get("service + spawner + pool, idle")
    if idle:
        parts = idle["parts"]
        names = {"0": "service", "1": "its spawner", "2": "warm sandboxes"}
        lines.append("  idle split (RSS / PSS): " + ", ".join(
            f"{names[k]} {parts[k]['rss']:.1f} / {parts[k]['pss']:.1f} ({parts[k]['procs']} procs)"
            for k in sorted(parts)))
    table = "\n".join(lines)

    # --- targets ---------------------------------------------------------------------------------
    bw_true = med["bwrap/true"]
    bw_p99 = quantile(s["bwrap/true"].ms, 0.99)
    http = s["http/true"].ms
    http_p50, http_p99 = median(http), quantile(http, 0.99)
    tp2 = {name: tp.get(f"{name}/2", {}).get("jobs_per_s") for name in ("bwrap", "spawner", "http")}
    ratio = {row: med[f"{row}/true"] / bw_true for row in ("warm-gap", "warm-b2b", "cold")}
    tp_ratio = (tp2["spawner"] / tp2["bwrap"]) if tp2["spawner"] and tp2["bwrap"] else None
    http_tp_ratio = (tp2["http"] / tp2["bwrap"]) if tp2["http"] and tp2["bwrap"] else None
    idle_pss = idle["pss"] if idle else None
    idle_rss = idle["rss"] if idle else None
    verdicts = {
        "latency": ratio["warm-gap"] <= TARGET_LATENCY,
        "throughput": None if tp_ratio is None else tp_ratio >= TARGET_THROUGHPUT,
        "http_p50": http_p50 / bw_true <= TARGET_HTTP_P50,
        "http_p99": http_p99 / bw_true <= TARGET_HTTP_P99,
        "idle_memory": None if idle_pss is None else idle_pss <= TARGET_IDLE_MIB,
    }
    t = []
    head = f"{'target (issue 8)':62} {'measured':>22} {'verdict':>8}"
    t += [head, "-" * len(head)]
    t.append(f"{'/bin/true via spawner, all layers <= 0.7x bwrap (warm, refilled)':62} "
             f"{_fmt(ratio['warm-gap']) + 'x':>22} {_verdict(verdicts['latency']):>8}")
    t.append(f"{'  same, warm back-to-back / cold (pool=0)':62} "
             f"{_fmt(ratio['warm-b2b']) + 'x / ' + _fmt(ratio['cold']) + 'x':>22} "
             f"{_verdict(ratio['warm-b2b'] <= TARGET_LATENCY) + '/' + _verdict(ratio['cold'] <= TARGET_LATENCY):>8}")
    t.append(f"{'throughput, 2 submitters, spawner >= 1.5x bwrap':62} {_fmt(tp_ratio) + 'x':>22} "
             f"{_verdict(verdicts['throughput']):>8}")
    t.append(f"{'  (HTTP API, 2 clients, for comparison)':62} {_fmt(http_tp_ratio) + 'x':>22} {'':>8}")
    t.append(f"{'HTTP 1 client p50 <= 1.5x bwrap median':62} "
             f"{_fmt(http_p50 / bw_true) + 'x (' + _fmt(http_p50, 1) + ' ms)':>22} {_verdict(verdicts['http_p50']):>8}")
    t.append(f"{'HTTP 1 client p99 <= 4x bwrap median':62} "
             f"{_fmt(http_p99 / bw_true) + 'x (' + _fmt(http_p99, 1) + ' ms)':>22} {_verdict(verdicts['http_p99']):>8}")
    t.append(f"{'  (p99 against bwrap p99 instead)':62} {_fmt(http_p99 / bw_p99) + 'x':>22} "
             f"{_verdict(http_p99 / bw_p99 <= TARGET_HTTP_P99):>8}")
    t.append(f"{'idle service + spawner + pool <= 80 MiB (PSS)':62} {_fmt(idle_pss, 1) + ' MiB':>22} "
             f"{_verdict(verdicts['idle_memory']):>8}")
    t.append(f"{'  (the same as a sum of RSS)':62} {_fmt(idle_rss, 1) + ' MiB':>22} "
             f"{_verdict(None if idle_rss is None else idle_rss <= TARGET_IDLE_MIB):>8}")
    targets = "\n".join(t)
    summary = {"medians_ms": med, "layer_cost": layer_cost, "latency_ratios_true": ratio,
               "throughput_2_spawner_over_bwrap": tp_ratio, "throughput_2_http_over_bwrap": http_tp_ratio,
               "http_p50_ms": http_p50, "http_p99_ms": http_p99, "bwrap_median_ms": bw_true,
               "bwrap_p99_ms": bw_p99, "idle_pss_mib": idle_pss, "idle_rss_mib": idle_rss,
               "verdicts": verdicts}
    return table, targets, summary


def write_results(path: Path, bench: Bench, machine: dict[str, Any], table: str, targets: str,
                  latency: dict[str, Any], mode: str, total_s: float) -> None:
    a = bench.args
    bwrap_cmd = " ".join([bench.bwrap_binary, *BWRAP_FLAGS, "--seccomp", str(BWRAP_BPF_FD), "PROGRAM"])
    service = bench.service
    serve_cmd = " ".join(service.argv).replace(service.state, "$STATE") if service else "?"
    text = f"""# sandboxd benchmark results

Written by `bench/run.py` ({mode} mode, {total_s:.0f} s); what each row measures and how to read
it: `bench/README.md`.

## Machine

| | |
|---|---|
| date | {machine['date']} |
| uname -a | `{machine['uname']}` |
| nproc / usable | {machine['nproc']} / {machine['cpus_usable']} |
| CPU / memory | {machine['cpu']} / {machine['memory']} |
| Python / aiohttp | {machine['python']} / {machine['aiohttp']} |
| bubblewrap | {machine['bwrap']} |
| kernel Landlock ABI | {machine['landlock_abi']} |
| stage runner | {machine['stage_runner']} |
| libseccomp | {machine['libseccomp']} |
| running as euid | {machine['euid']} |
| sandboxd commit | {machine['sandboxd_commit']} (working tree may differ) |
| PYTHONDONTWRITEBYTECODE | {machine['PYTHONDONTWRITEBYTECODE'] or '(unset)'} |
| load average (1, 5, 15 min) at start / end | {machine['loadavg_before']} / {machine.get('loadavg_after')} |

The machine is shared: other work ran at the same time (see the load average). Contenders were
interleaved so that it fell on all of them alike; compare within this run, not across runs.

## Commands

- the run: `{' '.join([Path(sys.executable).name, 'bench/run.py', *sys.argv[1:]])}`: up to {a.runs}
  latency rounds or {a.latency_budget:g} s (done: {latency['rounds']} rounds in {latency['seconds']:.1f} s;
  CLI and python every {latency['slow_every']} rounds, at most {a.slow_runs} each), {a.warmup} warm-up
  runs each, seed {a.seed}; throughput slots of {a.slot:g} s (the first {a.ramp:g} s not counted),
  order bwrap, spawner, HTTP, HTTP, spawner, bwrap, floor, for {' and '.join(map(str, a.levels))}
  submitters; memory under load: {a.load_seconds:g} s per product, sampled every {a.sample_period:g} s.
- programs: `/bin/true`; `head -c {MIB} /dev/zero` with stdout on a pipe that this process reads to
  its end (every row checks it got exactly {MIB} bytes; the HTTP row asks for
  `output_encoding=base64` and decodes it after the clock stops).
- floor: `os.posix_spawn` + `os.waitpid`, stdio on /dev/null (stdout on the pipe for 1 MiB).
- bubblewrap (spawned the same way, empty environment; fd {BWRAP_BPF_FD} is a memfd holding sandboxd's
  compiled `default` seccomp filter, seeked to 0 before each run):

  `{bwrap_cmd}`
- sandboxd CLI: `{bench.cli} run -- PROGRAM` (spawned the same way, our environment).
- python: `{' '.join(bench.python_argv)}`: interpreter start-up alone, to read the CLI row against.
- spawner direct: in this process, `SpawnerClient.start_exec()`, templates compiled once with
  `compile_template(load_policy(...))`, `client.define(template, pool=N)`, then per job
  `run_job(client, template, JobSpec(job_id, argv), stdio)` (for 1 MiB: a `pipe_for("stdout", None, None)`
  stream and `close_after_send`). Cold: one spawner, pool=0, policies `default` and
  `bench/policies/{{no-seccomp,no-landlock,no-seccomp-no-landlock}}.toml`. Warm: another spawner,
  `default` with pool={POOL}; each round waits (ping, ≤ {a.refill_limit:g} s) for a full pool, then runs
  {BURST} jobs back to back: the first is "after refill", the other {BURST - 1} "back-to-back".
  "in-spawner" = `RunResult.usage.wall_s` (the spawner's start of the job → reap).
- HTTP API: `{serve_cmd}` (a fresh temporary `$STATE`, defaults otherwise: pool_size 2, slots = nproc),
  after `sandboxd token add --tenant bench --rate 10000 --burst 100000 --max-running 64
  --max-queued 1000 --state-dir $STATE`; `sandboxd.client.SandboxClient(url, token).run(argv,
  output_encoding="base64")` (wait=true), one client for latency.
- throughput: N = {' and '.join(map(str, a.levels))} submitters: floor and bwrap N threads (own memfd each);
  spawner N threads each with its own `SpawnerClient` (own spawner, pool={POOL}); HTTP N `SandboxClient`s
  (own connection pool each) on one asyncio loop against the one service. jobs/s = jobs finished inside
  the counted window / its length, summed over the two slots of a contender.
- memory: for each process of a tree (the service and every descendant: its spawner and the warm
  sandboxes' init + program-to-be; or the direct spawner and its sandboxes), `Rss`, `Pss`, `Pss_Anon`
  from `/proc/PID/smaps_rollup`, summed. Idle: pools full, nothing running. Peak: the sample with the
  largest PSS while 16 submitters ran.

## Results

```
{table}
```

## Targets (issue 8)

```
{targets}
```

- The latency target is judged on the row the product runs a lone job on: the warm spawner whose pool
  had time to refill. Back-to-back and cold are shown beside it.
- "bubblewrap's CLI latency" is read as bwrap's median for `/bin/true` in this run; the HTTP p99 is
  judged against that median (the line after it uses bwrap's own p99 instead).
- Memory is judged on **PSS**, not RSS: the warm sandboxes are forks of the spawner and share most of
  its pages copy-on-write, and the spawner shares the interpreter and libraries with the service; a
  sum of RSS counts every shared page once per process that maps it, PSS divides each page among its
  sharers, so the PSS sum is what the tree costs the machine. The RSS sum is printed next to it.
"""
    checks = json.dumps(bench.checks, indent=None, default=str)
    text += f"\nChecks made during warm-up: `{checks}`\n"
    text += f"\nPhase timings: `{json.dumps({k: round(v, 2) for k, v in bench.timings.items()})}`\n"
    if bench.notes:
        text += "\nNotes:\n\n" + "".join(f"- {note}\n" for note in bench.notes)
    # Paths of this machine mean nothing elsewhere: name the checkout "." instead.
    path.write_text(text.replace(str(BENCH.parent) + "/", "./"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (< 30 s); writes no RESULTS.md "
                        "unless --results is given")
    parser.add_argument("--runs", type=int, help="latency rounds at most (default 400, quick 60)")
    parser.add_argument("--latency-budget", type=float, help="cap on the latency phase, s (default 45, quick 5)")
    parser.add_argument("--slow-runs", type=int, help="CLI and python runs each, at most (default 14, quick 3)")
    parser.add_argument("--warmup", type=int, help="warm-up runs per contender (default 4, quick 1; the CLI a quarter of it)")
    parser.add_argument("--slot", type=float, help="throughput slot, s (default 1.5, quick 0.45)")
    parser.add_argument("--ramp", type=float, help="uncounted start of each slot, s (default 0.3, quick 0.1)")
    parser.add_argument("--load-seconds", type=float, help="memory-under-load run per product, s "
                        "(default 1.5, quick 0.6)")
    parser.add_argument("--sample-period", type=float, default=0.25, help="memory sampling period, s")
    parser.add_argument("--refill-limit", type=float, default=1.0, help="longest wait for a full pool, s")
    parser.add_argument("--levels", type=lambda text: [int(x) for x in text.split(",")], default=[2, 16],
                        help="concurrent submitters for throughput (default 2,16)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the round order shuffle")
    parser.add_argument("--json", metavar="PATH", help="dump the raw numbers here")
    parser.add_argument("--results", metavar="PATH", help="markdown report (default bench/RESULTS.md; "
                        "none in quick mode)")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"runs": (400, 60), "latency_budget": (45.0, 5.0), "slow_runs": (14, 3), "warmup": (4, 1),
                "slot": (1.5, 0.45), "ramp": (0.3, 0.1), "load_seconds": (1.5, 0.6)}
    for key, (full, short) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, short if quick else full)
    if args.ramp >= args.slot:
        parser.error("--ramp must be shorter than --slot")
    if args.results is None and not quick:
        args.results = str(BENCH / "RESULTS.md")
    if os.geteuid() != 0:
        print("bench: not root: the spawner runs rootless and bwrap uses an unprivileged user namespace;"
              " numbers are not comparable with root runs", file=sys.stderr)

    began = time.monotonic()
    machine = machine_info(shutil.which("bwrap") or "bwrap")
    print(f"load average at start: {machine['loadavg_before']}", file=sys.stderr)
    bench = Bench(args)
    latency = {"rounds": 0, "seconds": 0.0, "slow_every": 0}
    try:
        print("starting spawners and sandboxd serve…", file=sys.stderr, flush=True)
        bench.start()
        bench.check_bwrap()
        mark = time.monotonic()
        print(f"warm-up ({args.warmup} runs each)…", file=sys.stderr, flush=True)
        bench.warm_up()
        bench.idle_memory("")
        bench.timings["warm_up_s"] = time.monotonic() - mark
        mark = time.monotonic()
        print(f"latency: up to {args.runs} rounds / {args.latency_budget:g} s…", file=sys.stderr, flush=True)
        latency = bench.latency()
        mark = time.monotonic()
        print(f"throughput: {args.levels} submitters, slots of {args.slot:g} s…", file=sys.stderr, flush=True)
        bench.throughput_phase()
        bench.timings["throughput_s"] = time.monotonic() - mark
        mark = time.monotonic()
        print("memory under load…", file=sys.stderr, flush=True)
        bench.memory_under_load()
        bench.idle_memory(", after the load")
        bench.timings["memory_s"] = time.monotonic() - mark
    finally:
        bench.close()
    machine["loadavg_after"] = tuple(round(x, 2) for x in os.getloadavg())
    before = bench.memory.get("service + spawner + pool, idle")
    after = bench.memory.get("service + spawner + pool, idle, after the load")
    if before and after and after["pss"] > before["pss"] + 20:
        bench.notes.append(f"the service tree kept {after['pss'] - before['pss']:.0f} MiB more PSS idle after the "
                           f"load than before it ({before['pss']:.0f} → {after['pss']:.0f} MiB): memory retained "
                           "per finished run (see bench/README.md, 'Memory')")
    for series in bench.series.values():
        if series.failures:
            bench.notes.append(f"{series.name}: {len(series.failures)} failed runs, e.g. {series.failures[:3]}")
    table, targets, summary = build_tables(bench)
    total_s = time.monotonic() - began
    print(table)
    print("\ntargets (issue 8)\n" + targets)
    if bench.notes:
        print("\nnotes:\n" + "\n".join(f"- {note}" for note in bench.notes))
    print(f"\nload average at start {machine['loadavg_before']}, at end {machine['loadavg_after']}; "
          f"total {total_s:.1f} s", file=sys.stderr)
    mode = "quick" if quick else "default"
    if args.results:
        write_results(Path(args.results), bench, machine, table, targets, latency, mode, total_s)
        print(f"wrote {args.results}", file=sys.stderr)
    if args.json:
        raw = {
            "mode": mode, "args": vars(args), "machine": machine, "latency_phase": latency,
            "series": {name: {"ms": s.ms, "rounds": s.rounds, "in_spawner_ms": s.inner_ms,
                              "failures": s.failures} for name, s in bench.series.items()},
            "refill_wait_ms": bench.refill_wait_ms, "throughput": bench.throughput, "memory": bench.memory,
            "summary": summary, "checks": bench.checks, "notes": bench.notes, "timings": bench.timings,
            "bwrap_argv": [bench.bwrap_binary, *BWRAP_FLAGS, "--seccomp", str(BWRAP_BPF_FD), "PROGRAM"],
            "cold_policies": COLD_POLICIES,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(raw, indent=1, default=str))
        print(f"wrote {args.json}", file=sys.stderr)
    failed = any(s.failures for s in bench.series.values()) or any(t["errors"] for t in bench.throughput.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
