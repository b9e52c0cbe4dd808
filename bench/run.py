#!/usr/bin/env python3
"""Per-job cost of a sandboxd jail, side by side with bubblewrap and a plain fork+exec.

    .venv/bin/python bench/run.py [--quick] [--runs N] [--seconds S] [--json PATH] [--results PATH]

Every contender runs ``/bin/true`` so that what is measured is the jail, not the program.
Latency: rounds in which each contender runs one job, in a shuffled order, so that machine
noise falls on all of them alike. Throughput: 2 concurrent submitters per contender over a
fixed wall time, in A-B-B-A order. Everything is bounded by a count and by time.
What each row means and what still differs between contenders: bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
VARIANTS = BENCH / "policies"
PROGRAM = "/bin/true"

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

# The spawner rows: label → policy (a shipped name or a file under bench/policies/).
SPAWNER_POLICIES = {
    "spawner": "default",
    "spawner-no-seccomp": str(VARIANTS / "no-seccomp.toml"),
    "spawner-no-landlock": str(VARIANTS / "no-landlock.toml"),
    "spawner-none": str(VARIANTS / "no-seccomp-no-landlock.toml"),
}
# What each variant must show in the job's read-back (checked during warm-up).
EXPECTED_LAYERS = {
    "spawner": (True, True),
    "spawner-no-seccomp": (False, True),
    "spawner-no-landlock": (True, False),
    "spawner-none": (False, False),
}

LABELS = {
    "floor": "floor: posix_spawn /bin/true + waitpid",
    "bwrap": "bubblewrap, comparable isolation + seccomp",
    "python": "python -c pass (interpreter start-up)",
    "cli": "sandboxd CLI: sandboxd run -- /bin/true",
    "spawner": "sandboxd spawner direct, all layers",
    "spawner-no-seccomp": "  spawner, seccomp off",
    "spawner-no-landlock": "  spawner, Landlock off",
    "spawner-none": "  spawner, seccomp + Landlock off",
}
FAST = ["floor", "bwrap", *SPAWNER_POLICIES]  # one job each per round
SLOW = ["cli", "python"]  # Python start-up dominated: every few rounds only


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
    """The latency samples of one contender, in ms, with the round each was taken in."""

    name: str
    ms: list[float] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)
    inner_ms: list[float] = field(default_factory=list)  # spawner's own clone→reap wall time
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
    diffs = [ms - br[r] for r, ms in a.by_round().items() if r in br]
    return median(diffs)


# --- contenders ------------------------------------------------------------------------------
def _stdio_to_null(null: int) -> list[tuple]:
    return [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1), (os.POSIX_SPAWN_DUP2, null, 2)]


def spawn_and_wait(path: str, argv: list[str], env: dict[str, str], actions: list[tuple]) -> tuple[float, int]:
    """posix_spawn + waitpid: (elapsed ms, exit code or −signal)."""
    began = time.perf_counter_ns()
    pid = os.posix_spawn(path, argv, env, file_actions=actions)
    _, status = os.waitpid(pid, 0)
    elapsed = (time.perf_counter_ns() - began) / 1e6
    return elapsed, os.waitstatus_to_exitcode(status)


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
        self.binary = binary
        self.memfd = os.memfd_create("sandboxd-bench-bpf", os.MFD_CLOEXEC)
        os.write(self.memfd, bpf)
        if self.memfd == BWRAP_BPF_FD:  # dup2 onto itself would keep FD_CLOEXEC
            moved = os.dup(self.memfd)
            os.close(self.memfd)
            self.memfd = moved
        self.argv = [binary, *BWRAP_FLAGS, "--seccomp", str(BWRAP_BPF_FD), PROGRAM]
        self.actions = [*_stdio_to_null(null), (os.POSIX_SPAWN_DUP2, self.memfd, BWRAP_BPF_FD)]

    def run(self) -> tuple[float, int]:
        os.lseek(self.memfd, 0, os.SEEK_SET)
        return spawn_and_wait(self.binary, self.argv, {}, self.actions)

    def close(self) -> None:
        os.close(self.memfd)


class SpawnerJobs:
    """Jobs through one ``SpawnerClient``, as the product runs them."""

    def __init__(self, client: Any, templates: dict[str, Any], null: int) -> None:
        from sandboxd.jail.plan import JobSpec
        from sandboxd.supervise.runner import run_job

        self.client, self.templates, self.null = client, templates, null
        self._job_spec, self._run_job = JobSpec, run_job

    def run(self, variant: str) -> tuple[float, float, Any]:
        """(round-trip ms as the caller sees it, spawner's clone→reap ms, RunResult)."""
        job = self._job_spec(job_id=uuid.uuid4().hex, argv=(PROGRAM,))
        began = time.perf_counter_ns()
        result = self._run_job(self.client, self.templates[variant], job, (self.null, self.null, self.null))
        elapsed = (time.perf_counter_ns() - began) / 1e6
        return elapsed, result.usage.wall_s * 1000, result


# --- the benchmark ---------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        self.series = {name: Series(name) for name in [*FAST, *SLOW]}
        self.throughput: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []
        self.checks: dict[str, Any] = {}

        bwrap = shutil.which("bwrap")
        if bwrap is None:
            sys.exit("bench: bwrap is not installed (apt-get install bubblewrap)")
        self.bwrap_binary = bwrap
        venv_bin = Path(sys.executable).parent
        cli = venv_bin / "sandboxd"
        self.cli = str(cli) if cli.exists() else (shutil.which("sandboxd") or sys.exit("bench: no sandboxd CLI"))
        self.cli_argv = [self.cli, "run", "--", PROGRAM]
        self.python_argv = [sys.executable, "-c", "pass"]

        # Compile once, as the CLI and the service do: templates per policy, the BPF for bwrap.
        from sandboxd.policy.compile import compile_template
        from sandboxd.policy.load import load_policy

        loaded = {name: load_policy(spec) for name, spec in SPAWNER_POLICIES.items()}
        self._check_variants_mirror_default(loaded)
        self.templates = {name: compile_template(policy) for name, policy in loaded.items()}
        self.bpf = default_bpf()
        self.checks["bwrap_filter"] = compare_filters(self.bpf, self.templates["spawner"].seccomp.bpf)
        if self.checks["bwrap_filter"] not in ("identical", "identical except the kill action"):
            self.notes.append(f"bwrap's filter vs the default template's: {self.checks['bwrap_filter']}")

        # start_forked() needs a single-threaded caller: start both clients now, before any
        # thread exists (the throughput phase gives each submitter thread its own).
        from sandboxd.spawner.client import SpawnerClient

        self.clients = [SpawnerClient.start_forked(), SpawnerClient.start_forked()]
        self.spawner = SpawnerJobs(self.clients[0], self.templates, self.null)
        self.bwraps = [Bwrap(bwrap, self.bpf, self.null), Bwrap(bwrap, self.bpf, self.null)]

    def close(self) -> None:
        # Newest first: a spawner started by fork() holds a copy of every older client's
        # socket, so the older spawners only see their caller go once the newer ones exit.
        for client in reversed(self.clients):
            client.close()
        for b in self.bwraps:
            b.close()
        os.close(self.null)

    def _check_variants_mirror_default(self, loaded: dict[str, Any]) -> None:
        base = loaded["spawner"].policy.model_dump(mode="json")
        for name, policy in loaded.items():
            data = policy.policy.model_dump(mode="json")
            for key in ("description", "seccomp", "landlock"):
                data.pop(key, None)
            ref = {k: v for k, v in base.items() if k not in ("description", "seccomp", "landlock")}
            if data != ref:
                self.notes.append(f"{SPAWNER_POLICIES[name]} no longer mirrors policies/default.toml "
                                  "outside [seccomp]/[landlock]: update bench/policies/")

    # --- one job of each kind -----------------------------------------------------------------
    def one(self, name: str, round_no: int, record: bool = True) -> None:
        series = self.series[name]
        inner = None
        if name == "floor":
            ms, code = spawn_and_wait(PROGRAM, [PROGRAM], {}, _stdio_to_null(self.null))
            ok = code == 0
        elif name == "bwrap":
            ms, code = self.bwraps[0].run()
            ok = code == 0
        elif name == "cli":
            ms, code = spawn_and_wait(self.cli, self.cli_argv, dict(os.environ), _stdio_to_null(self.null))
            ok = code == 0
        elif name == "python":
            ms, code = spawn_and_wait(sys.executable, self.python_argv, dict(os.environ), _stdio_to_null(self.null))
            ok = code == 0
        else:
            ms, inner, result = self.spawner.run(name)
            code = result.exit_code
            ok = result.verdict == "OK"
            if not record:  # warm-up: check the layers really are on/off as the row says
                self._check_layers(name, result)
        if not ok:
            series.failures.append(f"round {round_no}: exit {code}")
        elif record:
            series.add(round_no, ms, inner)

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
        b = self.bwraps[0]
        os.lseek(b.memfd, 0, os.SEEK_SET)
        argv = [self.bwrap_binary, *BWRAP_FLAGS, "--seccomp", str(BWRAP_BPF_FD),
                "/bin/sh", "-c", "grep -E '^(Seccomp|CapEff|NoNewPrivs):' /proc/self/status; hostname"]
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        actions = [(os.POSIX_SPAWN_DUP2, self.null, 0), (os.POSIX_SPAWN_DUP2, write_end, 1),
                   (os.POSIX_SPAWN_DUP2, write_end, 2), (os.POSIX_SPAWN_DUP2, b.memfd, BWRAP_BPF_FD)]
        pid = os.posix_spawn(self.bwrap_binary, argv, {}, file_actions=actions)
        os.close(write_end)
        with os.fdopen(read_end, "r") as pipe:
            output = pipe.read()
        os.waitpid(pid, 0)
        status = dict(line.split(":", 1) for line in output.splitlines() if ":" in line)
        seen = {k: v.strip() for k, v in status.items()}
        self.checks["bwrap read-back"] = seen
        if seen.get("Seccomp") != "2" or seen.get("CapEff") != "0000000000000000":
            self.notes.append(f"bwrap jail is not as expected: {output.strip()!r}")

    # --- phases -------------------------------------------------------------------------------
    def warm_up(self) -> None:
        for name in FAST:
            for _ in range(self.args.warmup):
                self.one(name, -1, record=False)
        for name in SLOW:
            for _ in range(max(1, self.args.warmup // 3)):
                self.one(name, -1, record=False)
        for series in self.series.values():  # warm-up failures are real failures too
            if series.failures:
                self.notes.append(f"{series.name} failed during warm-up: {series.failures[:3]}")

    def latency(self) -> dict[str, Any]:
        rng = random.Random(self.args.seed)
        deadline = time.monotonic() + self.args.latency_budget
        slow_every = max(1, self.args.runs // max(1, self.args.slow_runs))
        began = time.monotonic()
        rounds = 0
        for round_no in range(self.args.runs):
            order = list(FAST)
            if round_no % slow_every == 0 and len(self.series["cli"].ms) < self.args.slow_runs:
                order += SLOW
            rng.shuffle(order)
            for name in order:
                self.one(name, round_no)
            rounds += 1
            if time.monotonic() >= deadline:
                self.notes.append(f"latency phase stopped by its {self.args.latency_budget:.0f} s budget "
                                  f"after {rounds} of {self.args.runs} rounds")
                break
        return {"rounds": rounds, "seconds": time.monotonic() - began, "slow_every": slow_every}

    def _submit(self, make_job: Callable[[int], Callable[[], bool]], seconds: float) -> dict[str, Any]:
        """2 threads, each calling its own job function until the wall time is up."""
        jobs = [make_job(i) for i in range(2)]
        counts, errors = [0, 0], [0, 0]
        barrier = threading.Barrier(3)
        stop_at = [0.0]

        def loop(i: int) -> None:
            barrier.wait()
            while time.monotonic() < stop_at[0]:
                if jobs[i]():
                    counts[i] += 1
                else:
                    errors[i] += 1

        threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(2)]
        for t in threads:
            t.start()
        began = time.monotonic()
        stop_at[0] = began + seconds
        barrier.wait()
        for t in threads:
            t.join(seconds + 30)
        elapsed = time.monotonic() - began
        return {"jobs": sum(counts), "errors": sum(errors), "seconds": elapsed, "per_submitter": counts}

    def throughput_phase(self) -> None:
        half = self.args.seconds / 2

        def bwrap_job(i: int) -> Callable[[], bool]:
            return lambda: self.bwraps[i].run()[1] == 0

        spawners = [SpawnerJobs(client, self.templates, self.null) for client in self.clients]

        def spawner_job(i: int) -> Callable[[], bool]:
            return lambda: spawners[i].run("spawner")[2].verdict == "OK"

        def floor_job(i: int) -> Callable[[], bool]:
            actions = _stdio_to_null(self.null)
            return lambda: spawn_and_wait(PROGRAM, [PROGRAM], {}, actions)[1] == 0

        plan = [("bwrap", bwrap_job), ("spawner", spawner_job), ("spawner", spawner_job), ("bwrap", bwrap_job)]
        plan.append(("floor", floor_job))
        for name, make in plan:
            slot = self._submit(make, half)
            total = self.throughput.setdefault(name, {"jobs": 0, "errors": 0, "seconds": 0.0, "slots": []})
            total["jobs"] += slot["jobs"]
            total["errors"] += slot["errors"]
            total["seconds"] += slot["seconds"]
            total["slots"].append(slot)
        for name, total in self.throughput.items():
            total["jobs_per_s"] = total["jobs"] / total["seconds"] if total["seconds"] else float("nan")
            if total["errors"]:
                self.notes.append(f"throughput {name}: {total['errors']} failed jobs")


# --- machine and report ------------------------------------------------------------------------
def _command_output(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


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
    return {
        "date": dt.datetime.now(dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
        "uname": _command_output(["uname", "-a"]),
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "bwrap": _command_output([bwrap, "--version"]),
        "landlock_abi": abi,
        "libseccomp": getattr(seccomp_compile, "LIBSECCOMP_VERSION", "?"),
        "euid": os.geteuid(),
        "sandboxd_commit": _command_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "loadavg_before": os.getloadavg(),
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE", ""),
    }


def _fmt(value: float, digits: int = 2) -> str:
    return "-" if value != value else f"{value:.{digits}f}"  # NaN → "-"


def build_tables(bench: Bench, latency: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    s = bench.series
    med = {name: median(series.ms) for name, series in s.items()}
    floor, bwrap = med["floor"], med["bwrap"]
    lines = []
    head = f"{'per-job latency (ms)':45} {'n':>5} {'median':>8} {'p90':>8} {'min':>8} {'x bwrap':>8} {'x floor':>8} {'in-spawner':>10}"
    lines += [head, "-" * len(head)]
    for name in ["floor", "bwrap", "python", "cli", *SPAWNER_POLICIES]:
        series = s[name]
        inner = median(series.inner_ms) if series.inner_ms else float("nan")
        lines.append(f"{LABELS[name]:45} {len(series.ms):>5} {_fmt(med[name]):>8} "
                     f"{_fmt(quantile(series.ms, 0.9)):>8} {_fmt(min(series.ms) if series.ms else float('nan')):>8} "
                     f"{_fmt(med[name] / bwrap):>8} {_fmt(med[name] / floor, 1):>8} {_fmt(inner):>10}")
    lines.append("")
    costs = {
        "seccomp + Landlock": ("spawner", "spawner-none"),
        "seccomp alone": ("spawner", "spawner-no-seccomp"),
        "Landlock alone": ("spawner", "spawner-no-landlock"),
    }
    head = f"{'per-job layer cost (ms, spawner direct)':45} {'diff of medians':>16} {'paired median':>14} {'share of job':>13}"
    lines += [head, "-" * len(head)]
    layer_cost = {}
    for label, (on, off) in costs.items():
        diff = med[on] - med[off]
        paired = paired_median_diff(s[on], s[off])
        layer_cost[label] = {"diff_of_medians_ms": diff, "paired_median_ms": paired, "on": on, "off": off}
        lines.append(f"{label + f'  ({on} - {off})':45} {_fmt(diff, 3):>16} {_fmt(paired, 3):>14} "
                     f"{_fmt(100 * diff / med[on], 0) + ' %':>13}")
    lines.append("")
    head = f"{'throughput, 2 concurrent submitters':45} {'jobs':>6} {'seconds':>8} {'jobs/s':>8} {'x bwrap':>8}"
    lines += [head, "-" * len(head)]
    tp = bench.throughput
    labels = {"floor": "floor: posix_spawn /bin/true (2 threads)",
              "bwrap": "bubblewrap (2 threads, own memfd each)",
              "spawner": "sandboxd spawner (2 threads, own client each)"}
    for name in ("floor", "bwrap", "spawner"):
        if name in tp:
            t = tp[name]
            lines.append(f"{labels[name]:45} {t['jobs']:>6} {t['seconds']:>8.2f} {t['jobs_per_s']:>8.1f} "
                         f"{_fmt(t['jobs_per_s'] / tp['bwrap']['jobs_per_s']):>8}")
    lines.append("")
    summary = {
        "cli_over_bwrap": med["cli"] / bwrap,
        "spawner_over_bwrap": med["spawner"] / bwrap,
        "spawner_minus_bwrap_ms": med["spawner"] - bwrap,
        "cli_minus_python_ms": med["cli"] - med["python"],
        "throughput_spawner_over_bwrap": (tp["spawner"]["jobs_per_s"] / tp["bwrap"]["jobs_per_s"]) if tp else None,
    }
    lines.append(f"sandboxd/bwrap latency ratio: CLI {summary['cli_over_bwrap']:.1f}x, "
                 f"spawner direct {summary['spawner_over_bwrap']:.2f}x "
                 f"(+{summary['spawner_minus_bwrap_ms']:.2f} ms per job)")
    lines.append(f"seccomp + Landlock per-job cost: {layer_cost['seccomp + Landlock']['diff_of_medians_ms']:.3f} ms "
                 f"(seccomp {layer_cost['seccomp alone']['diff_of_medians_ms']:.3f} ms, "
                 f"Landlock {layer_cost['Landlock alone']['diff_of_medians_ms']:.3f} ms)")
    lines.append(f"CLI beyond a bare interpreter start-up: {summary['cli_minus_python_ms']:.1f} ms")
    if summary["throughput_spawner_over_bwrap"] is not None:
        lines.append(f"throughput sandboxd/bwrap: {summary['throughput_spawner_over_bwrap']:.2f}x")
    summary["layer_cost"] = layer_cost
    summary["medians_ms"] = med
    return "\n".join(lines), summary


def write_results(path: Path, bench: Bench, machine: dict[str, Any], table: str,
                  latency: dict[str, Any], mode: str) -> None:
    a = bench.args
    bwrap_cmd = " ".join([bench.bwrap_binary, *BWRAP_FLAGS, "--seccomp", str(BWRAP_BPF_FD), PROGRAM])
    text = f"""# sandboxd benchmark results

Written by `bench/run.py` ({mode} mode); what each row measures: `bench/README.md`.

## Machine

| | |
|---|---|
| date | {machine['date']} |
| uname -a | `{machine['uname']}` |
| nproc / usable | {machine['nproc']} / {machine['cpus_usable']} |
| CPU | {machine['cpu']} |
| Python | {machine['python']} |
| bubblewrap | {machine['bwrap']} |
| kernel Landlock ABI | {machine['landlock_abi']} |
| libseccomp | {machine['libseccomp']} |
| running as euid | {machine['euid']} |
| sandboxd commit | {machine['sandboxd_commit']} (working tree may differ) |
| PYTHONDONTWRITEBYTECODE | {machine['PYTHONDONTWRITEBYTECODE'] or '(unset)'} |
| load average before / after | {machine['loadavg_before']} / {machine.get('loadavg_after')} |

## Commands

- run: `{' '.join([Path(sys.executable).name, 'bench/run.py', *sys.argv[1:]])}` → {a.runs} latency rounds
  (done: {latency['rounds']}, {latency['seconds']:.1f} s), {a.slow_runs} CLI / python runs
  (one every {latency['slow_every']} rounds), {a.warmup} warm-up runs each, throughput {a.seconds} s
  per contender (2 slots of {a.seconds / 2:g} s, order bwrap, spawner, spawner, bwrap), seed {a.seed}.
- floor: `os.posix_spawn("{PROGRAM}")` + `os.waitpid`, stdio on /dev/null.
- bubblewrap (posix_spawn + waitpid, stdio on /dev/null, empty environment; fd {BWRAP_BPF_FD} is a
  memfd holding sandboxd's compiled `default` seccomp filter, seeked to 0 before each run):

  `{bwrap_cmd}`
- sandboxd CLI: `{' '.join(bench.cli_argv)}` (posix_spawn + waitpid, stdio on /dev/null).
- python: `{' '.join(bench.python_argv)}`: the interpreter's start-up alone, for reading the CLI row.
- sandboxd spawner direct: in the benchmark process, `SpawnerClient.start_forked()` once, templates
  compiled once with `compile_template(load_policy(...))`, then per job
  `run_job(client, template, JobSpec(job_id, ("{PROGRAM}",)), (null, null, null))`; policies:
  `default`, `bench/policies/no-seccomp.toml`, `bench/policies/no-landlock.toml`,
  `bench/policies/no-seccomp-no-landlock.toml`. "in-spawner" is the spawner's own clone→reap time
  (`RunResult.usage.wall_s`).
- throughput: 2 threads per contender; bwrap threads each have their own memfd, spawner threads
  each their own `SpawnerClient` (both started before any thread).

## Results

```
{table}
```
"""
    checks = json.dumps(bench.checks, indent=None, default=str)
    text += f"\nChecks made during warm-up: `{checks}`\n"
    if bench.notes:
        text += "\nNotes:\n\n" + "".join(f"- {note}\n" for note in bench.notes)
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (< 30 s); writes no RESULTS.md "
                        "unless --results is given")
    parser.add_argument("--runs", type=int, help="latency rounds (default 300, quick 60)")
    parser.add_argument("--seconds", type=float, help="throughput wall time per contender (default 3, quick 1)")
    parser.add_argument("--slow-runs", type=int, help="CLI and python runs (default 30, quick 8)")
    parser.add_argument("--latency-budget", type=float, help="cap on the latency phase, s (default 75, quick 15)")
    parser.add_argument("--warmup", type=int, help="warm-up runs per contender (default 10, quick 4)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the round order shuffle")
    parser.add_argument("--json", metavar="PATH", help="dump the raw numbers here")
    parser.add_argument("--results", metavar="PATH", help="markdown report (default bench/RESULTS.md; "
                        "none in quick mode)")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"runs": (300, 60), "seconds": (3.0, 1.0), "slow_runs": (30, 8),
                "latency_budget": (75.0, 15.0), "warmup": (10, 4)}
    for key, (full, short) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, short if quick else full)
    if args.results is None and not quick:
        args.results = str(BENCH / "RESULTS.md")
    if os.geteuid() != 0:
        print("bench: not root: the spawner runs rootless and bwrap uses an unprivileged user namespace;"
              " numbers are not comparable with root runs", file=sys.stderr)

    began = time.monotonic()
    bench = Bench(args)
    machine = machine_info(bench.bwrap_binary)
    try:
        bench.check_bwrap()
        print(f"warm-up ({args.warmup} runs each)…", file=sys.stderr, flush=True)
        bench.warm_up()
        print(f"latency: up to {args.runs} rounds / {args.latency_budget:.0f} s…", file=sys.stderr, flush=True)
        latency = bench.latency()
        print(f"throughput: {args.seconds:g} s per contender…", file=sys.stderr, flush=True)
        bench.throughput_phase()
    finally:
        bench.close()
    machine["loadavg_after"] = os.getloadavg()
    for series in bench.series.values():
        if series.failures:
            bench.notes.append(f"{series.name}: {len(series.failures)} failed runs, e.g. {series.failures[:3]}")
    table, summary = build_tables(bench, latency)
    print(table)
    if bench.notes:
        print("\nnotes:\n" + "\n".join(f"- {note}" for note in bench.notes))
    print(f"\n(total {time.monotonic() - began:.1f} s)", file=sys.stderr)
    mode = "quick" if quick else "default"
    if args.results:
        write_results(Path(args.results), bench, machine, table, latency, mode)
        print(f"wrote {args.results}", file=sys.stderr)
    if args.json:
        raw = {
            "mode": mode, "args": vars(args), "machine": machine, "latency_phase": latency,
            "series": {name: {"ms": s.ms, "rounds": s.rounds, "in_spawner_ms": s.inner_ms,
                              "failures": s.failures} for name, s in bench.series.items()},
            "throughput": bench.throughput, "summary": summary, "checks": bench.checks,
            "notes": bench.notes, "bwrap_argv": [bench.bwrap_binary, *BWRAP_FLAGS, "--seccomp",
                                                 str(BWRAP_BPF_FD), PROGRAM],
            "cli_argv": bench.cli_argv, "spawner_policies": SPAWNER_POLICIES,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(raw, indent=1, default=str))
        print(f"wrote {args.json}", file=sys.stderr)
    failed = any(s.failures for s in bench.series.values()) or any(t["errors"] for t in bench.throughput.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
