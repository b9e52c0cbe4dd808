"""The cgroup backends on this machine: v1 for limits, and v2 on the hybrid's unified
hierarchy as far as it allows (placement, cgroup.kill, cgroup.events, freeze, cpu.stat)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sandboxd.jail import cgroups
from tests.host import host_lacks
from tests.sandboxes import Runner

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="creating cgroups here needs root")


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "60"])


def _v1() -> cgroups.CgroupV1:
    backend = cgroups.detect()
    if not isinstance(backend, cgroups.CgroupV1):
        host_lacks(f"this host's cgroup backend is {type(backend).__name__}, not v1")
    return backend


def _v2_unified() -> cgroups.CgroupV2:
    point = cgroups.unified_hierarchy()
    if point is None:
        host_lacks("no cgroup2 hierarchy is mounted")
    return cgroups.CgroupV2(point, base="sandboxd-test")


@needs_root
def test_v1_limits_are_written_and_the_cgroup_removed() -> None:
    backend = _v1()
    limits = cgroups.CgroupLimits(memory_bytes=64 << 20, pids=32, cpus=0.5)
    job = backend.create("limits-test", limits)
    try:
        read = lambda ctl, name: Path(job.paths[ctl], name).read_text().strip()  # noqa: E731
        assert read("memory", "memory.limit_in_bytes") == str(64 << 20)
        assert read("pids", "pids.max") == "32"
        assert read("cpu", "cpu.cfs_quota_us") == "50000"
        assert set(job.paths) >= {"memory", "pids", "cpu", "cpuacct", "freezer"}
    finally:
        job.remove()
        backend.close()
    assert not any(Path(p).exists() for p in job.paths.values())


@needs_root
def test_v1_kill_all_takes_every_process_and_usage_reads() -> None:
    backend = _v1()
    job = backend.create("kill-test", cgroups.CgroupLimits())
    sleepers = [_sleeper() for _ in range(3)]
    try:
        for proc in sleepers:
            job.place(proc.pid)
        job.kill_all()
        for proc in sleepers:
            assert proc.wait(timeout=5) == -signal.SIGKILL
        usage = job.usage()
        assert usage.sources["cpu_user_s"].startswith("cgroup1:")
        assert usage.memory_peak_bytes is not None and usage.oom_kills == 0
    finally:
        job.remove()
        backend.close()


@needs_root
def test_v2_placement_events_freeze_kill_and_cpu_stat() -> None:
    backend = _v2_unified()
    job = backend.create("v2-test", cgroups.CgroupLimits())
    proc = _sleeper()
    try:
        job.place(proc.pid)
        assert str(proc.pid) in Path(job.path, "cgroup.procs").read_text().split()
        assert job.populated()
        job.freeze(True)
        deadline = time.monotonic() + 5
        while "frozen 1" not in Path(job.path, "cgroup.events").read_text() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "frozen 1" in Path(job.path, "cgroup.events").read_text()
        job.freeze(False)
        assert job.cpu_usage_s() >= 0
        job.kill_all()
        assert proc.wait(timeout=5) == -signal.SIGKILL
        assert not job.populated()
    finally:
        job.remove()
        backend.close()
        try:
            os.rmdir(backend.base)
        except OSError:
            pass
    assert not Path(job.path).exists()


@needs_root
def test_v2_limits_need_controllers_the_hybrid_does_not_delegate() -> None:
    backend = _v2_unified()
    missing = {"memory", "pids", "cpu"} - backend.available
    if not missing:
        host_lacks("needs a cgroup2 hierarchy without the memory, pids and cpu controllers (a hybrid "
                   "host's); this one offers them, and the limits are exercised "
                   "by the v2 path of tests/supervise/test_limits.py")
    with pytest.raises(cgroups.CgroupUnavailable, match="does not offer"):
        backend.create("refused", cgroups.CgroupLimits(memory_bytes=1 << 20, pids=4, cpus=1))
    # The gap, stated: on this hybrid host memory.max, pids.max, cpu.max, memory.peak and
    # memory.events cannot be exercised on cgroup2 (no controllers are enabled there).


@needs_root
def test_sweep_removes_what_a_dead_sandboxd_left(root_sandbox: Runner) -> None:
    """SIGKILL the sandboxd process mid-job; the next start leaves nothing behind."""
    backend = cgroups.detect()
    if backend is None:
        host_lacks("no writable cgroup hierarchy")
    marker = f"{time.time_ns() % 10_000_000}.25"
    mounts_before = Path("/proc/self/mountinfo").read_text()
    proc = subprocess.Popen([root_sandbox.python, "-m", "sandboxd", "run", "--memory-limit", "64M",
                             "--", "sleep", marker], env=root_sandbox.env)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not _job_processes(marker):
            time.sleep(0.02)
        assert _job_processes(marker), "the job never started"
        spawner = _children(proc.pid)
        assert len(spawner) == 1
        ours = {path for path in _instances(_bases(backend)) if f"/spawner-{spawner[0]}-" in path}
        assert ours, "the job's cgroups are not where the sweep looks"
    finally:
        proc.kill()  # SIGKILL: nothing of sandboxd gets to clean up
        proc.wait()
    deadline = time.monotonic() + 10
    while (_job_processes(marker) or os.path.exists(f"/proc/{spawner[0]}")) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _job_processes(marker) == [], "the job outlived the sandboxd that started it"
    assert not os.path.exists(f"/proc/{spawner[0]}"), "the spawner outlived its caller"
    assert all(os.path.isdir(path) for path in ours), "nothing was left for the sweep to find"
    # The next start sweeps the dead spawner's cgroups.
    assert root_sandbox.run(["run", "--", "/bin/true"]).returncode == 0
    assert not any(os.path.exists(path) for path in ours)
    assert Path("/proc/self/mountinfo").read_text() == mounts_before


def _bases(backend) -> list[str]:
    if isinstance(backend, cgroups.CgroupV1):
        return [f"{mount}/{backend.base}" for mount in backend.hierarchies.values()]
    return [backend.base]


def _children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


def _instances(bases: list[str]) -> set[str]:
    found = set()
    for base in bases:
        if os.path.isdir(base):
            found |= {f"{base}/{name}" for name in os.listdir(base) if os.path.isdir(f"{base}/{name}")}
    return found


def _job_processes(marker: str) -> list[int]:
    """The job's own `sleep`, not the sandboxd command line that names it."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/cmdline").read_bytes().startswith(f"sleep\0{marker}".encode()):
                    found.append(int(entry))
            except OSError:
                pass
    return found


def test_detect_prefers_v2_and_falls_back_to_v1() -> None:
    mounts = cgroups._mountinfo()
    pure_v2 = any(point == "/sys/fs/cgroup" and fstype == "cgroup2" for point, fstype, _ in mounts)
    v1_memory = [point for point, fstype, options in mounts if fstype == "cgroup" and "memory" in options.split(",")]
    backend = cgroups.detect()
    if pure_v2:
        assert backend is None or backend.version == "v2"
    elif v1_memory and os.access(v1_memory[0], os.W_OK):
        assert backend is not None and backend.version == "v1" and "memory" in backend.available
    else:
        assert backend is None


@needs_root
def test_rootless_uses_a_delegated_v2_subtree(rootless_sandbox: Runner, tmp_path: Path) -> None:
    """An unprivileged sandboxd started inside a cgroup2 subtree delegated to its user (as
    systemd's Delegate=yes does, here by chown on the hybrid's unified hierarchy) gives each job
    a cgroup there: placement, accounting from cpu.stat, and the kill at the end."""
    point = cgroups.unified_hierarchy()
    if point is None or not shutil.which("setpriv"):
        host_lacks("needs a cgroup2 hierarchy and setpriv")
    delegated = Path(point) / f"sandboxd-delegation-test-{os.getpid()}"
    delegated.mkdir()
    try:
        for path in (delegated, delegated / "cgroup.procs", delegated / "cgroup.subtree_control",
                     delegated / "cgroup.threads"):
            os.chown(path, rootless_sandbox.uid, rootless_sandbox.gid)
        result_dir = rootless_sandbox.make_dir("result-")
        result = result_dir / "result.json"
        command = (f"echo $$ > {delegated}/cgroup.procs && exec setpriv --reuid={rootless_sandbox.uid} "
                   f"--regid={rootless_sandbox.gid} --clear-groups {rootless_sandbox.python} -m sandboxd run "
                   f"--result {result} -- /bin/sh -c 'cat /proc/self/cgroup'")
        proc = subprocess.run(["/bin/sh", "-c", command], env=rootless_sandbox.env, capture_output=True,
                              text=True, timeout=60, cwd="/")
        assert proc.returncode == 0, proc.stderr
        data = json.loads(result.read_text())
        assert data["layers"]["cgroup"]["enabled"] is True and data["layers"]["cgroup"]["version"] == "v2"
        assert data["usage"]["sources"]["cpu_total_s"] == "cgroup2:cpu.stat usage_usec"
        assert "0::/\n" in proc.stdout  # the job's cgroup namespace hides where it is
        # The job's cgroup was made under the delegated subtree, and is gone again.
        assert (delegated / "sandboxd").is_dir()
        assert [p for p in delegated.rglob("spawner-*") if p.is_dir()] == []
    finally:
        for leftover in sorted(delegated.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if leftover.is_dir():
                leftover.rmdir()
        delegated.rmdir()
