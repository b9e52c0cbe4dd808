"""A running job as the spawner sees it: its cgroup, its clocks, and when to look again.

The spawner enforces the limits that need a clock or a counter, because it owns the
cgroup and is already awake for every job's end: wall time against a deadline, CPU time
across all the job's processes by polling the cgroup's counter (RLIMIT_CPU is per process
and whole seconds). Polls are scheduled for the earliest moment the budget could run out
at the job's full CPU bandwidth, so an idle job costs nothing and a spinner is caught
within a few milliseconds of its limit.
"""

from __future__ import annotations

import math
import os
import signal
from dataclasses import dataclass, field
from typing import Any

from sandboxd.jail import cgroups
from sandboxd.jail import syscalls as sc
from sandboxd.jail.plan import JobLimits
from sandboxd.jail.userns import IdLease

MIN_POLL_S = 0.002
MAX_POLL_S = 0.25
CPU_COUNT = os.cpu_count() or 1


@dataclass
class RunningJob:
    job_id: str
    pid: int
    pidfd: int
    started: float
    lease: IdLease
    status_fd: int
    limits: JobLimits
    cgroup: Any = None  # cgroups.JobCgroupV1 | JobCgroupV2 | None
    killed_for: str | None = None  # "cpu_time" | "wall_time" when the spawner ended it
    next_check: float = field(default=math.inf)

    def __post_init__(self) -> None:
        self.next_check = self._first_check()

    @property
    def wall_deadline(self) -> float:
        return math.inf if self.limits.wall_time is None else self.started + self.limits.wall_time

    def _bandwidth(self) -> float:
        return min(CPU_COUNT, self.limits.cpus or CPU_COUNT)

    def _first_check(self) -> float:
        checks = [self.wall_deadline]
        if self.limits.cpu_time is not None and self.cgroup is not None:
            checks.append(self.started + self.limits.cpu_time / self._bandwidth())
        return min(checks)

    def check(self, now: float) -> None:
        """Kill the job if a clock ran out; otherwise schedule the next look."""
        if self.killed_for is not None:
            self.next_check = math.inf
            return
        if now >= self.wall_deadline:
            self.kill("wall_time")
            return
        next_check = self.wall_deadline
        if self.limits.cpu_time is not None and self.cgroup is not None:
            used = self.cgroup.job_cpu_s()
            if used >= self.limits.cpu_time:
                self.kill("cpu_time")
                return
            # The soonest the rest of the budget could be spent, at full bandwidth.
            wait = (self.limits.cpu_time - used) / self._bandwidth()
            next_check = min(next_check, now + min(max(wait, MIN_POLL_S), MAX_POLL_S))
        self.next_check = next_check

    def kill(self, reason: str) -> None:
        self.killed_for = reason
        self.next_check = math.inf
        try:
            # The init is PID 1 of the job: its death takes every process of the job.
            sc.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except OSError:
            pass
        if self.cgroup is not None:
            try:
                self.cgroup.kill_all()
            except OSError:
                pass


def limit_value(job: RunningJob) -> Any:
    return {"cpu_time": job.limits.cpu_time, "wall_time": job.limits.wall_time}.get(job.killed_for or "")


def cgroup_for(backend: Any, job_id: str, limits: JobLimits, mode: str) -> tuple[Any, dict[str, Any]]:
    """The job's cgroup (or None) and what the result should say about it.

    Fails closed: when the limits need a cgroup and the policy requires one, a host that
    cannot give it raises ``CgroupUnavailable`` with the reason.
    """
    wanted = cgroups.CgroupLimits(memory_bytes=limits.memory, pids=limits.pids, cpus=limits.cpus)
    if mode == "off":
        return None, {"enabled": False, "mode": mode}
    if backend is None:
        if mode == "required" and limits.needs_cgroup():
            raise cgroups.CgroupUnavailable(
                "no writable cgroup hierarchy for this user (run `sandboxd doctor`; on cgroup v2 "
                "use a delegated subtree)")
        return None, {"enabled": False, "mode": mode, "reason": "no usable cgroup hierarchy",
                      "not_enforced": _not_enforced(limits)}
    try:
        job = backend.create(job_id, wanted)
    except (cgroups.CgroupUnavailable, OSError) as exc:
        if mode == "required" and limits.needs_cgroup():
            if isinstance(exc, OSError):
                raise cgroups.CgroupUnavailable(f"cannot create the job's cgroup: {exc.strerror}") from None
            raise
        return None, {"enabled": False, "mode": mode, "reason": str(exc),
                      "not_enforced": _not_enforced(limits)}
    controllers = sorted(job.paths) if hasattr(job, "paths") else sorted(
        wanted.controllers("v2") | (cgroups.ACCOUNTING["v2"] & backend.available))
    return job, {"enabled": True, "mode": mode, "version": backend.version, "controllers": controllers}


def _not_enforced(limits: JobLimits) -> list[str]:
    names = {"cpu_time": "cpu_time (RLIMIT_CPU per process remains)", "memory": "memory",
             "pids": "pids", "cpus": "cpus"}
    return [text for name, text in names.items() if getattr(limits, name) is not None]
