"""Run one job through the spawner and turn what happened into a ``RunResult``.

``JobWatch`` holds the logic — what each spawner event means, when output ends a job, what
the result says — and does no I/O of its own, so the CLI's blocking loop (``run_job``) and
the service's asyncio loop drive the same code.
"""

from __future__ import annotations

import os
import select
import signal
from dataclasses import dataclass, field
from typing import Any

from sandboxd import result as r
from sandboxd.jail import syscalls as sc
from sandboxd.jail.plan import JailTemplate, JobLimits, JobSpec
from sandboxd.spawner.client import Event, SpawnerClient
from sandboxd.supervise import layers, syscall_names, verdict
from sandboxd.supervise.output import CappedStream


@dataclass
class JobWatch:
    template: JailTemplate
    job: JobSpec
    streams: list[CappedStream] = field(default_factory=list)
    pidfd: int = -1
    started: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    exited: dict[str, Any] | None = None
    output_capped: str | None = None

    @property
    def limits(self) -> JobLimits:
        return self.job.limits or self.template.limits

    @property
    def done(self) -> bool:
        return self.exited is not None or (self.error is not None and self.error.get("final", False))

    def on_event(self, event: Event) -> None:
        if event.kind == "started":
            self.started = event.data
            self.pidfd = event.fds[0] if event.fds else -1
        elif event.kind == "failed":
            self.error = dict(event.data.get("error") or {}, final=event.data.get("final", False))
        elif event.kind == "exited":
            self.exited = event.data
        elif event.kind == "error":
            self.error = {"stage": "spawner", "detail": event.data.get("detail"), "final": True,
                          "internal": True}
        for fd in event.fds if event.kind != "started" else event.fds[1:]:
            os.close(fd)

    def on_output(self, stream: CappedStream) -> None:
        if not stream.pump() and self.output_capped is None:
            self.output_capped = stream.name
            self.kill()

    def kill(self) -> None:
        if self.pidfd >= 0 and self.exited is None:
            try:
                # The job's init is PID 1 of its namespace: killing it ends every process.
                sc.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except OSError:
                pass

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        for stream in self.streams:
            stream.close()

    # --- the result ----------------------------------------------------------------------
    def result(self) -> r.RunResult:
        policy = {"name": self.template.policy_name, "hash": self.template.policy_hash}
        error = None if self.error is None else {k: v for k, v in self.error.items() if k != "final"}
        if self.error is not None and self.error.get("internal"):
            return r.RunResult(self.job.job_id, r.INTERNAL_ERROR, None, None, r.Usage(), policy, {},
                               error=error)
        applied = layers.describe(self.started, self.template.network) if self.started else {}
        exited = self.exited or {}
        kills = [dict(syscall_names.describe(k["nr"], k["arch"]), main=k["main"])
                 for k in exited.get("seccomp_kills", [])]
        main_kill = next((k for k in kills if k["main"]), None)
        cgroup_usage = exited.get("cgroup_usage") or {}
        ending = verdict.Ending(
            exit_code=exited.get("exit_code"), signal=exited.get("signal"), setup_error=error,
            seccomp_main_kill=main_kill is not None and exited.get("signal") == signal.SIGKILL,
            oom_kills=cgroup_usage.get("oom_kills") or 0, output_capped=self.output_capped,
            pids_limit_hits=cgroup_usage.get("pids_limit_hits") or 0,
            full_tmpfs=exited.get("full_tmpfs", []), killed_for=exited.get("killed_for"))
        outcome, limit = verdict.decide(ending, self.limits)
        sig = ending.signal
        seccomp = None
        if outcome == r.SECCOMP and main_kill is not None:
            seccomp = {key: main_kill[key] for key in ("syscall", "nr", "arch")}
            # The init killed the program on the kernel's behalf; report it as a seccomp kill
            # reads everywhere else (SIGSYS, exit status 159).
            sig = signal.SIGSYS
        denials = None
        if self.template.seccomp is not None and self.exited is not None:
            denials = {"kills": kills, "errno": _named(exited.get("seccomp_denied", {})),
                       "not_observable": "calls denied by ERRNO rules inside the filter"}
        return r.RunResult(
            self.job.job_id, outcome, ending.exit_code if sig is None else None, sig,
            _usage(exited), policy, applied, limit=limit, error=error, seccomp=seccomp,
            denials=denials, output={s.name: {"bytes": s.total, "truncated": s.truncated}
                                     for s in self.streams} or None)


def _named(counts: dict[str, int]) -> dict[str, int]:
    named = {}
    for key, count in counts.items():
        arch, _, nr = key.partition(":")
        named[syscall_names.describe(int(nr), int(arch))["syscall"]] = count
    return named


def _usage(exited: dict[str, Any]) -> r.Usage:
    usage = r.Usage(wall_s=round(exited.get("wall_s", 0.0), 6))
    counted = exited.get("cgroup_usage") or {}
    rusage = exited.get("rusage") or {}
    sources = dict(usage.sources)
    for key in ("cpu_total_s", "cpu_user_s", "cpu_sys_s", "memory_peak_bytes", "pids_peak", "oom_kills"):
        value = counted.get(key)
        if value is not None:
            setattr(usage, key, round(value, 6) if isinstance(value, float) else value)
            sources[key] = counted.get("sources", {}).get(key, "cgroup")
    if usage.cpu_user_s is None and rusage:
        # No cgroup: the init's rusage covers the program and every descendant it reaped.
        usage.cpu_user_s, usage.cpu_sys_s = round(rusage["utime"], 6), round(rusage["stime"], 6)
        sources["cpu_user_s"] = sources["cpu_sys_s"] = "rusage:wait4(init)"
    if rusage:
        usage.voluntary_context_switches = rusage.get("nvcsw")
        usage.involuntary_context_switches = rusage.get("nivcsw")
        sources["voluntary_context_switches"] = "rusage:wait4(init)"
        sources["involuntary_context_switches"] = "rusage:wait4(init)"
    usage.sources = sources
    return usage


def run_job(client: SpawnerClient, template: JailTemplate, job: JobSpec,
            stdio: tuple[int, int, int], streams: list[CappedStream] | None = None,
            close_after_send: tuple[int, ...] = ()) -> r.RunResult:
    """Blocking: run ``job`` and return its result.

    ``close_after_send`` are our copies of fds handed to the job (the write ends of capped
    streams): they are closed once the spawner has its own, so the streams see end of file.
    """
    watch = JobWatch(template, job, list(streams or []))
    try:
        client.run(template, job, stdio)
    finally:
        for fd in close_after_send:
            os.close(fd)
    poller = select.poll()
    poller.register(client.sock.fileno(), select.POLLIN)
    by_fd = {}
    for stream in watch.streams:
        poller.register(stream.read_fd, select.POLLIN)
        by_fd[stream.read_fd] = stream
    try:
        while not watch.done:
            pending = client.take_pending(job.job_id)
            if pending is not None:
                watch.on_event(pending)
                continue
            for fd, events in poller.poll():
                if fd == client.sock.fileno():
                    event = client.next_event(job.job_id, timeout=0)
                    if event is not None:
                        watch.on_event(event)
                elif fd in by_fd:
                    stream = by_fd[fd]
                    watch.on_output(stream)
                    if stream.closed or stream.truncated:
                        poller.unregister(fd)
                        del by_fd[fd]
        for stream in watch.streams:
            stream.drain()
        return watch.result()
    finally:
        watch.close()

