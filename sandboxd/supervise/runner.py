"""Run one job through the spawner and turn its events into a ``RunResult``.

The CLI uses this synchronously; the service will drive the same events from asyncio.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from sandboxd import result as r
from sandboxd.jail import syscalls as sc
from sandboxd.jail.plan import JailTemplate, JobSpec
from sandboxd.spawner.client import SpawnerClient
from sandboxd.supervise import layers, syscall_names


def _verdict(exit_code: int | None, sig: int | None) -> str:
    if sig is not None:
        return r.SIGNALED
    return r.OK if exit_code == 0 else r.NONZERO_EXIT


def run_job(client: SpawnerClient, template: JailTemplate, job: JobSpec,
            stdio: tuple[int, int, int], wall_time_limit: float | None = None) -> r.RunResult:
    began = time.monotonic()
    client.run(template, job, stdio)
    first = client.next_event(job.job_id)
    assert first is not None
    policy = {"name": template.policy_name, "hash": template.policy_hash}
    applied_layers: dict[str, Any] = {}
    error: dict[str, Any] | None = None
    pidfd = -1
    if first.kind == "started":
        pidfd = first.fds[0]
        applied_layers = layers.describe(first.data, template.network)
    elif first.kind == "failed":
        error = first.data.get("error")
        if first.data.get("final"):
            return r.RunResult(job.job_id, r.SETUP_ERROR, None, None, r.Usage(), policy, {}, error=error)
    else:
        return r.RunResult(job.job_id, r.INTERNAL_ERROR, None, None, r.Usage(), policy, {},
                           error={"detail": first.data.get("detail", f"unexpected {first.kind}")})
    killed_for: str | None = None
    try:
        deadline = None if wall_time_limit is None else began + wall_time_limit
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ended = client.next_event(job.job_id, timeout=remaining)
            if ended is not None:
                break
            killed_for = r.WALL_TIME_LIMIT
            # The job is PID 1 of its namespace: killing it takes every process of the job.
            sc.pidfd_send_signal(pidfd, signal.SIGKILL)
            deadline = None
    finally:
        if pidfd >= 0:
            os.close(pidfd)
    exit_code, sig = ended.data.get("exit_code"), ended.data.get("signal")
    usage = r.Usage(wall_s=round(ended.data.get("wall_s", 0.0), 6))
    limit = None
    kills = [dict(syscall_names.describe(k["nr"], k["arch"]), main=k["main"])
             for k in ended.data.get("seccomp_kills", [])]
    main_kill = next((k for k in kills if k["main"]), None)
    denials = None
    if template.seccomp is not None:
        denials = {"kills": kills, "errno": _named_denials(ended.data.get("seccomp_denied", {})),
                   "not_observable": "denials answered by ERRNO rules in the filter itself"}
    if error is not None:
        stage = error.get("stage")
        verdict = r.EXEC_FAILED if stage == "exec" else r.SETUP_ERROR
    elif main_kill is not None and sig == signal.SIGKILL:
        verdict = r.SECCOMP
    elif killed_for is not None:
        verdict = killed_for
        limit = {"name": "wall_time", "value": wall_time_limit}
    else:
        verdict = _verdict(exit_code, sig)
    seccomp = None
    if verdict == r.SECCOMP and main_kill is not None:
        seccomp = {key: main_kill[key] for key in ("syscall", "nr", "arch")}
        # The init killed the program on the kernel's behalf; report it as a seccomp kill
        # reads everywhere else (SIGSYS, exit status 159).
        sig = signal.SIGSYS
    return r.RunResult(job.job_id, verdict, exit_code if sig is None else None, sig, usage, policy,
                       applied_layers, limit=limit, error=error, seccomp=seccomp, denials=denials)


def _named_denials(counts: dict[str, int]) -> dict[str, int]:
    named = {}
    for key, count in counts.items():
        arch, _, nr = key.partition(":")
        named[syscall_names.describe(int(nr), int(arch))["syscall"]] = count
    return named
