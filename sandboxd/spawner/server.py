"""The spawner: a lean, single-threaded process and the only place that forks jobs.

It serves one caller over a SOCK_SEQPACKET socket. The caller defines jail templates
(compiled policies, cached here by hash, each with the size of its pool of pre-built
sandboxes) and asks for runs, passing the job's stdio as SCM_RIGHTS. The spawner gives
each run a sandbox — a warm one from the template's pool, or one built on the spot — hands
back a pidfd, enforces the clocks, reaps the job, reports how it ended, tears the sandbox
down, and builds a replacement in the background. A sandbox serves exactly one job.
When the caller goes away, every sandbox is killed and the spawner exits.

Nothing here blocks on a child: building, starting and ending sandboxes are steps of one
poll loop, so set-up work runs in the children, on the other cores, while the spawner
answers.

Why a separate process: forking from a process with threads (any asyncio service) can
deadlock the child on a lock another thread held, and unshare(CLONE_NEWUSER) refuses a
multi-threaded caller. Keep asyncio, aiohttp and pydantic out of this process: fork cost
grows with its memory.
"""

from __future__ import annotations

import gc
import math
import os
import select
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sandboxd import native
from sandboxd.jail import cgroups, proctitle, spine
from sandboxd.jail import syscalls as sc
from sandboxd.jail.failure import SetupFailure
from sandboxd.jail.plan import JailTemplate, JobLimits, JobSpec
from sandboxd.jail.userns import IdAllocator
from sandboxd.spawner import protocol
from sandboxd.spawner.jobs import RunningJob, cgroup_for, limit_value

SETUP_TIMEOUT_S = 10.0
POOL_IDLE_S = 300.0
# Building a sandbox takes CPU the running job could use: a refill waits until no job is
# running, or at most this long, unless the pool is empty (then the next job would wait).
REFILL_DEFER_S = 0.025
# ... and until the spawner has been quiet this long: a caller's next job often follows its
# last one within a millisecond, and should not find the spawner busy building.
REFILL_QUIET_S = 0.004
# Demand: each job that found the pool empty grows it by one, up to this many times its
# configured size (and 16); an extra sandbox idle this long is let go again.
DEMAND_FACTOR = 3
DEMAND_DECAY_S = 30.0
POOL_MAX = 16


@dataclass
class Pool:
    size: int = 0  # warm sandboxes to keep for this template: the floor
    target: int = 0  # what demand asks for now: size ≤ target ≤ cap
    warm: deque = field(default_factory=deque)
    building: int = 0
    due: float | None = None  # a deferred refill must start by then
    misses: int = 0  # jobs that found no warm sandbox

    @property
    def cap(self) -> int:
        return min(POOL_MAX, self.size * DEMAND_FACTOR)

    def resize(self, size: int) -> None:
        self.size = max(0, min(size, POOL_MAX))
        self.target = max(self.size, min(self.target, self.cap))


@dataclass
class Entry:
    """One sandbox and what the spawner knows of it."""

    sandbox: spine.Sandbox
    cgroup: Any
    cgroup_layer: dict[str, Any]
    job: RunningJob | None = None
    pending: tuple[JobSpec, list[int]] | None = None  # a job waiting for this sandbox to be warm
    deadline: float = 0.0  # by when it must be warm
    digest: str = ""  # its template
    pooled: bool = False  # built for the pool (counted in Pool.building until warm)
    warm_since: float = 0.0
    begun: bool = False  # the cgroup's counters were taken as the job's zero


class Spawner:
    def __init__(self, sock: socket.socket, ids: IdAllocator | None = None) -> None:
        self.sock = sock
        self.ids_error: str | None = None
        try:
            self.ids = ids or IdAllocator()
        except RuntimeError as exc:  # e.g. subordinate ids asked for but not granted
            self.ids, self.ids_error = IdAllocator(rootless_ids="self"), str(exc)
        # Which code builds and runs sandboxes: the compiled runner when it is built.
        self.runner = native.choose()
        if self.runner.kind == "unavailable" and self.ids_error is None:
            self.ids_error = f"stage runner: {self.runner.reason}"
        self.templates: dict[str, JailTemplate] = {}
        self.pools: dict[str, Pool] = {}
        self.by_fd: dict[int, Entry] = {}  # report fds and pidfds
        self.entries: set[int] = set()  # ids of live entries, to count
        self.poller = select.poll()
        self.poller.register(sock.fileno(), select.POLLIN)
        self.cgroups = cgroups.detect()
        # What a sandboxd that died without cleaning up left behind: its jobs' cgroups.
        self.swept = self.cgroups.sweep() if self.cgroups is not None else []
        self.host_namespaces = spine._namespace_ids()
        self.last_activity = 0.0  # when a job last started or ended

    # --- requests ------------------------------------------------------------------------
    def handle(self, message: dict[str, Any], fds: list[int]) -> None:
        op = message.get("op")
        try:
            if op == "define":
                digest = message["hash"]
                self.templates[digest] = JailTemplate.from_dict(message["template"])
                self.pools.setdefault(digest, Pool()).resize(int(message.get("pool", 0)))
                protocol.send(self.sock, {"event": "defined", "hash": digest})
                self._refill(digest)
            elif op == "run":
                self.run(message, fds)
                fds = []
            elif op == "ping":
                protocol.send(self.sock, {"event": "pong", "pid": os.getpid(), "sandboxes": len(self.entries),
                                          "runner": {"kind": self.runner.kind, "reason": self.runner.reason},
                                          "warm": {h: len(p.warm) for h, p in self.pools.items()},
                                          "target": {h: p.target for h, p in self.pools.items()},
                                          "misses": {h: p.misses for h, p in self.pools.items()}})
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
        digest = message["template"]
        template = self.templates.get(digest)
        if template is None or len(fds) != 3:
            for fd in fds:
                os.close(fd)
            raise ValueError(f"unknown template {digest!r}" if template is None else f"a run needs 3 fds, got {len(fds)}")
        if self.ids_error is not None:
            for fd in fds:
                os.close(fd)
            self._refuse(job, "stage runner" if self.ids_error.startswith("stage runner") else "user namespace",
                         self.ids_error)
            return
        limits = job.limits or template.limits
        pool = self.pools[digest]
        # A rootless job's work directory must be bound while the root is built (after
        # pivot_root a rootless sandbox cannot reach host paths): no warm sandbox fits it.
        early = job.workdir if (job.workdir and self.ids.rootless) else None
        entry = None
        if early is None:
            while pool.warm and entry is None:
                candidate = pool.warm.popleft()
                entry = candidate if candidate.sandbox.state == "warm" else None
        if entry is None:
            if early is None and pool.size:
                pool.misses += 1
                pool.target = min(pool.cap, pool.target + 1)
            try:
                entry = self._prepare(template, digest, limits, early)
            except (SetupFailure, cgroups.CgroupUnavailable, OSError) as exc:
                for fd in fds:
                    os.close(fd)
                self._refuse(job, "cgroup" if isinstance(exc, cgroups.CgroupUnavailable) else "spawner",
                             _detail(exc), getattr(exc, "errno", 0) or 0)
                return
        entry.pending = (job, fds)
        if entry.sandbox.state == "warm":
            self._start(entry)
        if pool.warm:
            # The job goes first: build its replacement once it is done (or soon anyway).
            pool.due = min(pool.due or float("inf"), time.monotonic() + REFILL_DEFER_S)
        else:
            self._refill(digest)

    # --- building sandboxes ------------------------------------------------------------------
    def _prepare(self, template: JailTemplate, digest: str, limits: JobLimits, early: str | None) -> Entry:
        job_id = f"sbx-{time.monotonic_ns()}"
        cgroup, layer = cgroup_for(self.cgroups, job_id, limits, template.cgroup_mode)
        place = None if cgroup is None else cgroup.place
        try:
            if self.runner.kind == "native":
                sandbox = spine.prepare_native(template, self.ids, self.runner.path or "", early_workdir=early,
                                               place_in_cgroup=place)
            else:
                sandbox = spine.prepare(template, self.ids, early_workdir=early, place_in_cgroup=place)
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            raise
        entry = Entry(sandbox, cgroup, layer, deadline=time.monotonic() + SETUP_TIMEOUT_S, digest=digest)
        self.by_fd[sandbox.report_fd] = entry
        self.entries.add(id(entry))
        self.poller.register(sandbox.report_fd, select.POLLIN)
        if sandbox.pidfd >= 0:
            self._watch_pidfd(entry)
        return entry

    def _watch_pidfd(self, entry: Entry) -> None:
        self.by_fd[entry.sandbox.pidfd] = entry
        self.poller.register(entry.sandbox.pidfd, select.POLLIN)

    def _adopt(self, entry: Entry) -> None:
        """A natively built sandbox's helper said its pid: take it as ours and release it."""
        sandbox = entry.sandbox
        born = next((f for f in sandbox.frames if f.get("kind") == "born"), None)
        error = next((f for f in sandbox.frames if f.get("kind") == "error"), None)
        sandbox.frames.clear()
        if born is None or error is not None:
            spine.reap_helper(sandbox, kill=True)
            self._abandon(entry, error or {"stage": "runner", "detail": "the stage runner ended before the sandbox existed",
                                           "errno": 0, "exit_code": spine.EXIT_SETUP_FAILED})
            return
        try:
            spine.adopt(sandbox, int(born["pid"]))
        except SetupFailure as exc:
            if sandbox.pidfd >= 0:
                self._watch_pidfd(entry)  # killed in adopt; reaped when its pidfd says so
                self._fail_entry(entry, {"stage": "spawner", "detail": exc.detail, "errno": exc.errno,
                                         "exit_code": spine.EXIT_SETUP_FAILED})
            else:
                self._abandon(entry, {"stage": "spawner", "detail": exc.detail, "errno": exc.errno,
                                      "exit_code": spine.EXIT_SETUP_FAILED})
            return
        self._watch_pidfd(entry)

    def _abandon(self, entry: Entry, error: dict[str, Any]) -> None:
        """A sandbox that never got a pid of ours: fail it and tear it down at once."""
        self._fail_entry(entry, error)
        self.entries.discard(id(entry))
        self._teardown(entry)

    def _refill(self, digest: str) -> None:
        pool = self.pools.get(digest)
        template = self.templates.get(digest)
        if pool is None or template is None or self.ids_error is not None:
            return
        pool.due = None
        while len(pool.warm) + pool.building < pool.target:
            try:
                entry = self._prepare(template, digest, template.limits, None)
            except (SetupFailure, cgroups.CgroupUnavailable, OSError):
                return  # the next run builds its own and says why
            entry.pooled = True
            pool.building += 1

    def _on_report(self, entry: Entry) -> None:
        sandbox = entry.sandbox
        ended = spine.read_report(sandbox)
        if sandbox.state == "spawning":
            if ended or sandbox.frames:
                # Its frames (prepared, warm) follow only once adopted and released; if it
                # dies instead, its pidfd says so and _reap fails it.
                self._adopt(entry)
            return
        error = next((f for f in sandbox.frames if f.get("kind") == "error"), None)
        if sandbox.state == "preparing":
            if any(f.get("kind") == "warm" for f in sandbox.frames) and error is None:
                sandbox.prepared = next((f for f in sandbox.frames if f.get("kind") == "prepared"), {})
                sandbox.frames.clear()
                sandbox.state = "warm"
                if entry.cgroup is not None:
                    # A warm sandbox only waits: its counters now are the job's zero, taken
                    # here so that reading them is not on the job's path.
                    try:
                        entry.cgroup.begin()
                        entry.begun = True
                    except OSError:
                        pass  # tried again, and reported, when the job starts
                if entry.pooled:
                    pool = self.pools[entry.digest]
                    pool.building -= 1
                    entry.pooled = False
                    if entry.pending is None:
                        entry.warm_since = time.monotonic()
                        pool.warm.append(entry)
                if entry.pending is not None:
                    self._start(entry)
                return
            if error is not None or ended:
                self._fail_entry(entry, error or {"stage": "sandbox", "detail": "the sandbox ended while being built",
                                                  "errno": 0, "exit_code": spine.EXIT_SETUP_FAILED})
            return
        if sandbox.state == "starting" and (ended or error is not None):
            self._started(entry, error)

    def _fail_entry(self, entry: Entry, error: dict[str, Any]) -> None:
        """A sandbox that could not be built: tell the job waiting for it, if any."""
        if entry.pooled:
            self.pools[entry.digest].building -= 1
            entry.pooled = False
        if entry.pending is not None:
            job, fds = entry.pending
            entry.pending = None
            for fd in fds:
                os.close(fd)
            protocol.send(self.sock, {"event": "failed", "job_id": job.job_id, "error": error, "final": True})
        entry.sandbox.state = "failed"
        self._stop_watching_report(entry)
        spine.destroy(entry.sandbox)
        spine.reap_helper(entry.sandbox, kill=True)

    # --- starting jobs ---------------------------------------------------------------------------
    def _start(self, entry: Entry) -> None:
        assert entry.pending is not None
        job, fds = entry.pending
        entry.pending = None
        sandbox = entry.sandbox
        limits = job.limits or sandbox.template.limits
        tree = -1
        try:
            if entry.cgroup is not None:
                if limits != sandbox.template.limits:
                    entry.cgroup.set_limits(cgroups.CgroupLimits(limits.memory, limits.pids, limits.cpus))
                if not entry.begun:
                    entry.cgroup.begin()
            elif limits.needs_cgroup() and sandbox.template.cgroup_mode == "required":
                raise cgroups.CgroupUnavailable("the job's limits need a cgroup this host cannot give")
            if job.workdir and not sandbox.rootless:
                # As root the job owns nothing on the host: show it the work directory as its own.
                tree = spine.work_tree(sandbox, job.workdir)
            spine.start(sandbox, job, (fds[0], fds[1], fds[2]), tree)
        except (SetupFailure, cgroups.CgroupUnavailable, OSError) as exc:
            entry.job = None
            protocol.send(self.sock, {"event": "failed", "job_id": job.job_id, "final": True, "error": {
                "stage": "cgroup" if isinstance(exc, cgroups.CgroupUnavailable) else "spawner",
                "detail": _detail(exc), "errno": getattr(exc, "errno", 0) or 0,
                "exit_code": spine.EXIT_SETUP_FAILED}})
            sandbox.state = "failed"
            spine.destroy(sandbox)
            return
        finally:
            for fd in fds:
                os.close(fd)
            if tree >= 0:
                os.close(tree)
        entry.job = RunningJob(job.job_id, sandbox.pid, sandbox.pidfd, time.monotonic(), sandbox.lease,
                               sandbox.status_fd, limits, entry.cgroup)
        self.last_activity = entry.job.started

    def _started(self, entry: Entry, error: dict[str, Any] | None) -> None:
        sandbox = entry.sandbox
        job = entry.job
        assert job is not None
        self._stop_watching_report(entry)
        os.close(sandbox.sync_fd)
        sandbox.sync_fd = -1
        sandbox.state = "running"
        if error is not None:
            protocol.send(self.sock, {"event": "failed", "job_id": job.job_id, "error": error, "final": False})
            return
        ready = next((f for f in sandbox.frames if f.get("kind") == "ready"), None)
        if ready is not None and sandbox.native:
            ready = spine.native_ready(sandbox, ready)
        if ready is None:
            protocol.send(self.sock, {"event": "failed", "job_id": job.job_id, "final": False, "error": {
                "stage": "sandbox", "detail": "the sandbox ended before its program started",
                "errno": 0, "exit_code": spine.EXIT_SETUP_FAILED}})
            return
        ready["cgroup"] = entry.cgroup_layer
        started = {"event": "started", "job_id": job.job_id, "pid": sandbox.pid, "ready": ready,
                   "host_namespaces": self.host_namespaces,
                   "id_map": {"uid": sandbox.lease.mapping.host_uid, "gid": sandbox.lease.mapping.host_gid,
                              "rootless": self.ids.rootless}}
        # The caller gets its own copy of the pidfd: it can signal the job without a pid race.
        protocol.send(self.sock, started, [sandbox.pidfd])

    def _stop_watching_report(self, entry: Entry) -> None:
        fd = entry.sandbox.report_fd
        if fd >= 0 and fd in self.by_fd:
            self.poller.unregister(fd)
            del self.by_fd[fd]
            os.close(fd)
            entry.sandbox.report_fd = -1

    # --- sandboxes ending ------------------------------------------------------------------------
    def _reap(self, entry: Entry) -> None:
        sandbox = entry.sandbox
        if sandbox.state == "starting" and sandbox.report_fd >= 0:
            # Its report and its end arrived together: the caller hears "started" first.
            spine.read_report(sandbox)
            self._started(entry, next((f for f in sandbox.frames if f.get("kind") == "error"), None))
        self._stop_watching_report(entry)
        self.poller.unregister(sandbox.pidfd)
        self.by_fd.pop(sandbox.pidfd, None)
        self.entries.discard(id(entry))
        _, init_status, rusage = os.wait4(sandbox.pid, 0)
        job = entry.job
        if sandbox.state in ("preparing", "warm") and job is None:
            if entry.pending is not None or sandbox.state == "preparing":
                self._fail_entry(entry, {"stage": "sandbox", "detail": "the sandbox died while being built",
                                         "errno": 0, "exit_code": spine.EXIT_SETUP_FAILED})
            pool = self.pools.get(entry.digest)
            if pool is not None and entry in pool.warm:
                pool.warm.remove(entry)
            self._teardown(entry)
            return
        if job is None:
            self._teardown(entry)
            return
        wall = time.monotonic() - job.started
        program = spine.program_exit(sandbox.status_fd) or {}
        status = program.get("wait_status")
        source = "program"
        if status is None:
            status, source = init_status, "init"
        usage: dict[str, Any] = {}
        if entry.cgroup is not None:
            try:
                counted = entry.cgroup.usage()
                usage = {k: v for k, v in counted.__dict__.items() if k != "sources"}
                usage["sources"] = counted.sources
            except OSError as exc:
                usage = {"error": f"cgroup counters: {exc}"}
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
        # Teardown after the answer: the caller does not wait for the cgroup's removal.
        self._teardown(entry)
        self.last_activity = time.monotonic()

    def _teardown(self, entry: Entry) -> None:
        if entry.cgroup is not None:
            try:
                entry.cgroup.remove()
            except OSError:
                pass
        entry.sandbox.lease.release()
        spine.close_fds(entry.sandbox)

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
                        continue
                    entry = self.by_fd.get(fd)
                    if entry is None:
                        continue
                    if fd == entry.sandbox.pidfd:
                        self._reap(entry)
                    else:
                        self._on_report(entry)
                self._check_clocks()
                self._refill_due()
        except (BrokenPipeError, ConnectionResetError):
            return
        finally:
            self.kill_all()

    def _refill_due(self) -> None:
        """Start deferred refills once no job runs and the spawner has been quiet a moment,
        or once their time is up."""
        due = [(digest, pool) for digest, pool in self.pools.items() if pool.due is not None]
        if not due:
            return
        now = time.monotonic()
        quiet = not self._running() and now - self.last_activity >= REFILL_QUIET_S
        for digest, pool in due:
            if quiet or pool.due <= now:
                self._refill(digest)

    def _running(self) -> list[RunningJob]:
        seen = {id(e): e for e in self.by_fd.values()}
        return [e.job for e in seen.values() if e.job is not None]

    def _timeout_ms(self) -> int | None:
        now = time.monotonic()
        wake = [job.next_check for job in self._running()]
        wake += [e.deadline for e in self.by_fd.values() if e.sandbox.state in ("spawning", "preparing")]
        due = [p.due for p in self.pools.values() if p.due is not None]
        wake += due
        if due and self.last_activity + REFILL_QUIET_S > now:
            wake.append(self.last_activity + REFILL_QUIET_S)  # the quiet moment a refill waits for
        wake += [p.warm[0].warm_since + (DEMAND_DECAY_S if p.target > p.size else POOL_IDLE_S)
                 for p in self.pools.values() if p.warm]
        soonest = min(wake, default=math.inf)
        if soonest == math.inf:
            return None
        return max(0, int((soonest - now) * 1000) + 1)

    def _check_clocks(self) -> None:
        now = time.monotonic()
        for job in self._running():
            if job.next_check <= now:
                job.check(now)
        for entry in {id(e): e for e in self.by_fd.values()}.values():
            if entry.sandbox.state in ("spawning", "preparing") and entry.deadline <= now:
                error = {"stage": "sandbox", "detail": f"not built within {SETUP_TIMEOUT_S} s",
                         "errno": 0, "exit_code": spine.EXIT_SETUP_FAILED}
                if entry.sandbox.pidfd < 0:
                    self._abandon(entry, error)
                else:
                    self._fail_entry(entry, error)
        for pool in self.pools.values():  # warm sandboxes nobody asked for in a while
            while pool.warm and now - pool.warm[0].warm_since > POOL_IDLE_S:
                spine.destroy(pool.warm.popleft().sandbox)
            if pool.target > pool.size and pool.warm and now - pool.warm[0].warm_since > DEMAND_DECAY_S:
                pool.target -= 1  # demand has fallen: let one extra sandbox go
                spine.destroy(pool.warm.popleft().sandbox)

    def kill_all(self) -> None:
        entries = list({id(e): e for e in self.by_fd.values()}.values())
        for entry in entries:
            spine.destroy(entry.sandbox)
        for entry in entries:
            spine.reap_helper(entry.sandbox, kill=True)
            if entry.sandbox.pid > 0:
                try:
                    os.waitpid(entry.sandbox.pid, 0)
                except ChildProcessError:
                    pass
            self._teardown(entry)
        self.by_fd.clear()
        if self.cgroups is not None:
            self.cgroups.close()


def _detail(exc: BaseException) -> str:
    if isinstance(exc, cgroups.CgroupUnavailable):
        return (f"refused: {exc} (the policy requires cgroups for these limits; "
                "set cgroup.mode = \"best-effort\" to run without them)")
    if isinstance(exc, SetupFailure):
        return exc.detail
    if isinstance(exc, OSError):
        return f"{exc.filename or 'spawner'}: {exc.strerror}"
    return str(exc)


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
    # Every job's init is a fork of this process: host paths in our command line would be
    # readable at /proc/1/cmdline inside every job.
    proctitle.set_title("sandboxd-spawner")


def main(fd: int) -> None:
    prepare_process()
    sock = socket.socket(fileno=fd)
    spawner = Spawner(sock)
    # Every sandbox starts as a copy-on-write copy of this process: objects the collector
    # would walk (and so write to) are set aside, so a child copies fewer pages.
    gc.collect()
    gc.freeze()
    spawner.serve()
