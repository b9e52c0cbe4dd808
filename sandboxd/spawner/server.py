"""The spawner: a lean, single-threaded process and the only place that forks jobs.

It serves one caller over a SOCK_SEQPACKET socket. The caller defines jail templates
(compiled policies, cached here by hash) and asks for runs, passing the job's stdio as
SCM_RIGHTS; the spawner clones the job (``sandboxd.jail.spine.launch``), hands back a
pidfd, reaps the job and reports how it ended. When the caller goes away, every job it
started is killed and the spawner exits.

Why a separate process: forking from a process with threads (any asyncio service) can
deadlock the child on a lock another thread held, and unshare(CLONE_NEWUSER) refuses a
multi-threaded caller. Keep asyncio, aiohttp and pydantic out of this process: fork cost
grows with its memory.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

from sandboxd.jail import cgroups, spine
from sandboxd.jail import syscalls as sc
from sandboxd.jail.failure import SetupFailure
from sandboxd.jail.plan import JailTemplate, JobSpec
from sandboxd.jail.userns import IdAllocator
from sandboxd.spawner import protocol
from sandboxd.spawner.jobs import RunningJob, cgroup_for, limit_value


class Spawner:
    def __init__(self, sock: socket.socket, ids: IdAllocator | None = None) -> None:
        self.sock = sock
        self.ids = ids or IdAllocator()
        self.templates: dict[str, JailTemplate] = {}
        self.jobs: dict[int, RunningJob] = {}  # by pidfd
        self.poller = select.poll()
        self.poller.register(sock.fileno(), select.POLLIN)
        self.cgroups = cgroups.detect()
        # What a sandboxd that died without cleaning up left behind: its jobs' cgroups.
        self.swept = self.cgroups.sweep() if self.cgroups is not None else []

    # --- requests ------------------------------------------------------------------------
    def handle(self, message: dict[str, Any], fds: list[int]) -> None:
        op = message.get("op")
        try:
            if op == "define":
                self.templates[message["hash"]] = JailTemplate.from_dict(message["template"])
                protocol.send(self.sock, {"event": "defined", "hash": message["hash"]})
            elif op == "run":
                self.run(message, fds)
                fds = []
            elif op == "ping":
                protocol.send(self.sock, {"event": "pong", "pid": os.getpid(), "jobs": len(self.jobs)})
            else:
                protocol.send(self.sock, {"event": "error", "detail": f"unknown op {op!r}"})
        except (KeyError, TypeError, ValueError) as exc:
            protocol.send(self.sock, {"event": "error", "job_id": message.get("job", {}).get("job_id"),
                                      "detail": f"bad {op} request: {exc!r}"})
        finally:
            for fd in fds:
                os.close(fd)

    def _refuse(self, job: JobSpec, stage: str, detail: str, errno: int = 0) -> None:
        protocol.send(self.sock, {"event": "failed", "job_id": job.job_id, "error": {
            "stage": stage, "detail": detail, "errno": errno,
            "exit_code": spine.EXIT_SETUP_FAILED}, "final": True})

    def run(self, message: dict[str, Any], fds: list[int]) -> None:
        job = JobSpec.from_dict(message["job"])
        cgroup = None
        try:
            if len(fds) != 3:
                raise ValueError(f"a run needs 3 stdio fds, got {len(fds)}")
            template = self.templates.get(message["template"])
            if template is None:
                raise ValueError(f"unknown template {message['template']!r}")
            limits = job.limits or template.limits
            try:
                cgroup, cgroup_layer = cgroup_for(self.cgroups, job.job_id, limits, template.cgroup_mode)
            except cgroups.CgroupUnavailable as exc:
                self._refuse(job, "cgroup", f"refused: {exc} (the policy requires cgroups; "
                             "set cgroup.mode = \"best-effort\" to run without)")
                return
            try:
                launched = spine.launch(template, job, (fds[0], fds[1], fds[2]), self.ids,
                                        place_in_cgroup=None if cgroup is None else cgroup.place)
            except (SetupFailure, OSError) as exc:
                if isinstance(exc, OSError):
                    exc = SetupFailure(f"{exc.filename or 'spawner'}: {exc.strerror}", exc.errno or 0)
                if cgroup is not None:
                    cgroup.remove()
                self._refuse(job, "spawner", exc.detail, exc.errno)
                return
        finally:
            for fd in fds:
                os.close(fd)
        self.jobs[launched.pidfd] = RunningJob(job.job_id, launched.pid, launched.pidfd,
                                               launched.started, launched.lease, launched.status_fd,
                                               limits, cgroup)
        self.poller.register(launched.pidfd, select.POLLIN)
        if launched.ready is not None:
            launched.ready["cgroup"] = cgroup_layer
        if launched.error is not None:
            protocol.send(self.sock, {"event": "failed", "job_id": job.job_id, "error": launched.error,
                                      "final": False})
        else:
            started = {"event": "started", "job_id": job.job_id, "pid": launched.pid,
                       "ready": launched.ready, "host_namespaces": spine._namespace_ids(),
                       "id_map": {"uid": launched.lease.mapping.host_uid,
                                  "gid": launched.lease.mapping.host_gid,
                                  "rootless": self.ids.rootless}}
            # The caller gets its own copy of the pidfd: it can signal the job without a pid race.
            protocol.send(self.sock, started, [launched.pidfd])

    # --- jobs ending ---------------------------------------------------------------------
    def reap(self, pidfd: int) -> None:
        job = self.jobs.pop(pidfd)
        self.poller.unregister(pidfd)
        _, init_status, rusage = os.wait4(job.pid, 0)
        wall = time.monotonic() - job.started
        try:
            usage = job.finish()
        except OSError as exc:
            usage = {"error": f"cgroup teardown: {exc}"}
        # The program's own status, as the job's init saw it; the init's when it never ran.
        program = spine.program_exit(job.status_fd) or {}
        status = program.get("wait_status")
        source = "program"
        if status is None:
            status, source = init_status, "init"
        os.close(job.status_fd)
        os.close(pidfd)
        job.lease.release()
        code = os.waitstatus_to_exitcode(status)
        protocol.send(self.sock, {
            "event": "exited", "job_id": job.job_id,
            "exit_code": code if code >= 0 else None,
            "signal": -code if code < 0 else None,
            "core_dumped": os.WCOREDUMP(status) if os.WIFSIGNALED(status) else False,
            "status_from": source,
            "seccomp_kills": program.get("seccomp_kills", []),
            "seccomp_denied": program.get("seccomp_denied", {}),
            "full_tmpfs": program.get("full_tmpfs", []),
            "killed_for": job.killed_for,
            "limit_value": limit_value(job),
            "wall_s": wall,
            "cgroup_usage": usage,
            # The init's rusage includes the program and every descendant it reaped.
            "rusage": {"utime": rusage.ru_utime, "stime": rusage.ru_stime,
                       "nvcsw": rusage.ru_nvcsw, "nivcsw": rusage.ru_nivcsw},
        })

    def kill_all(self) -> None:
        for pidfd, job in list(self.jobs.items()):
            try:
                sc.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass
        for pidfd, job in list(self.jobs.items()):
            try:
                os.waitpid(job.pid, 0)
            except ChildProcessError:
                pass
            try:
                job.finish()
            except OSError:
                pass
            os.close(pidfd)
            os.close(job.status_fd)
            job.lease.release()
        self.jobs.clear()
        if self.cgroups is not None:
            self.cgroups.close()

    def _timeout_ms(self) -> int | None:
        if not self.jobs:
            return None
        soonest = min(job.next_check for job in self.jobs.values())
        if soonest == float("inf"):
            return None
        return max(0, int((soonest - time.monotonic()) * 1000) + 1)

    def _check_clocks(self) -> None:
        current = time.monotonic()
        for job in self.jobs.values():
            if job.next_check <= current:
                job.check(current)

    # --- loop ----------------------------------------------------------------------------
    def serve(self) -> None:
        sock_fd = self.sock.fileno()
        try:
            while True:
                for fd, events in self.poller.poll(self._timeout_ms()):
                    if fd == sock_fd:
                        if events & select.POLLIN:
                            message, fds = protocol.receive(self.sock)
                            if message is None:
                                return
                            self.handle(message, fds)
                        elif events & (select.POLLHUP | select.POLLERR):
                            return
                    elif fd in self.jobs:
                        self.reap(fd)
                self._check_clocks()
        except (BrokenPipeError, ConnectionResetError):
            return
        finally:
            self.kill_all()


def prepare_process() -> None:
    """Make this process fit to be the spawner (called once, right after it starts)."""
    if os.geteuid() == 0:
        # Root's supplementary groups would travel into every job (setgroups is denied there).
        os.setgroups([])
    # If the caller dies, so do we (and our jobs with us, through their own death signals).
    # After setgroups: any credential change clears the death signal.
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:
        os._exit(1)  # the caller died before the death signal was armed
    # Keep 0-2 occupied so a received fd can never land on them.
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open("/dev/null", os.O_RDWR)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)


def main(fd: int) -> None:
    prepare_process()
    sock = socket.socket(fileno=fd)
    Spawner(sock).serve()
