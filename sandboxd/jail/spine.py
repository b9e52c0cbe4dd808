"""The order of confinement, in one place.

Parent (the spawner, single-threaded):  ``launch``
    clone into new user, PID, mount, network, IPC and UTS namespaces
    → write setgroups=deny, gid_map, uid_map (and, later, cgroup placement)
    → release the child → read its report until execve closes the pipe.

Child (PID 1 of its namespaces):  ``CHILD_STAGES`` then execve
    identity → cgroup namespace → mounts and pivot_root → hostname → network → rlimits
    → session → capabilities → no_new_privs + death signal → Landlock → stdio/fds
    → fork: PID 1 stays as the job's init (``sandboxd.jail.init``), PID 2 goes on
    → seccomp (last, so nothing after it needs a filtered call) → execve.

Every module the child uses is imported here, at import time in the spawner: after
pivot_root or Landlock a lazy import would fail.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NoReturn

from sandboxd.jail import caps, fds, identity, idmap, init, landlock, mounts, net, privs, readback
from sandboxd.jail import report, rlimits, seccomp, userns
from sandboxd.jail import syscalls as sc
from sandboxd.jail.failure import SetupFailure
from sandboxd.jail.plan import JailTemplate, JobSpec, Rlimit

NAMESPACE_FLAGS = (sc.CLONE_NEWUSER | sc.CLONE_NEWPID | sc.CLONE_NEWNS | sc.CLONE_NEWNET
                   | sc.CLONE_NEWIPC | sc.CLONE_NEWUTS)
PR_SET_DUMPABLE = 4
NAMESPACES = ("user", "pid", "mnt", "net", "ipc", "uts", "cgroup")
SETUP_TIMEOUT_S = 10.0

EXIT_SETUP_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127


@dataclass
class ChildContext:
    template: JailTemplate
    job: JobSpec
    stdio: tuple[int, int, int]
    sync_fd: int
    report_fd: int
    status_fd: int
    workdir_tree: int = -1
    sources: dict[str, mounts.Source] | None = None  # None: the child opens them (rootless)
    handoff_fd: int = -1  # program ↔ init, to hand over the seccomp listener
    applied: dict[str, Any] = field(default_factory=dict)


def _wait_for_release(ctx: ChildContext) -> None:
    # The spawner writes one byte once our id maps (and cgroup) are in place.
    if os.read(ctx.sync_fd, 1) != b"\0":
        raise SetupFailure("the spawner did not release the job")


def _enter_cgroup_namespace(ctx: ChildContext) -> None:
    # Why after the spawner placed us in our cgroup: the namespace's root is the cgroup we
    # are in at this moment, so the host's cgroup path never shows inside.
    sc.unshare(sc.CLONE_NEWCGROUP)


def _mounts(ctx: ChildContext) -> None:
    ctx.applied["mounts"] = mounts.build_root(ctx.template, ctx.job, ctx.sources, ctx.workdir_tree)


def _rlimits(ctx: ChildContext) -> None:
    limits = ctx.job.limits or ctx.template.limits
    extra = ()
    if limits.cpu_time is not None:
        # A per-process backstop only: the spawner enforces the job-wide CPU limit from the
        # cgroup's counter well before this fires.
        seconds = math.ceil(limits.cpu_time) + 1
        extra = (Rlimit("cpu", seconds, seconds + 1),)
    if ctx.job.limits is not None and ctx.job.limits.fsize is not None:
        extra += (Rlimit("fsize", ctx.job.limits.fsize, ctx.job.limits.fsize),)
    ctx.applied["rlimits"] = rlimits.apply(ctx.template.rlimits + extra)


def _landlock(ctx: ChildContext) -> None:
    if ctx.template.landlock is None:
        ctx.applied["landlock"] = {"enforced": False, "mode": ctx.template.landlock_mode}
        return
    plan = landlock.LandlockPlan.from_dict(ctx.template.landlock)
    try:
        applied = landlock.apply(plan)
    except OSError as exc:
        raise SetupFailure(f"Landlock: {exc}", exc.errno or 0) from None
    ctx.applied["landlock"] = {
        "mode": ctx.template.landlock_mode,
        "enforced": applied.enforced,
        "abi": applied.abi,
        "rights": plan.describe(),
        "dropped": list(plan.dropped),
    }


def _default_signals(ctx: ChildContext) -> None:
    """Dispositions and mask as a freshly started program expects them.

    execve resets handled signals but keeps ignored ones and the mask: Python ignores
    SIGPIPE and SIGXFSZ (and the spawner SIGINT), which would make `yes | head` and the
    file-size limit behave differently inside the jail.
    """
    for number in _RESETTABLE_SIGNALS:
        signal.signal(number, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


_RESETTABLE_SIGNALS = tuple(s for s in signal.valid_signals()
                            if s not in (signal.SIGKILL, signal.SIGSTOP) and s < signal.SIGRTMIN)


def _seccomp(ctx: ChildContext) -> None:
    plan = ctx.template.seccomp
    if plan is None:
        ctx.applied["seccomp"] = {"enforced": False}
        return
    try:
        if plan.listener:
            # Our parent, the job's init, takes the listener with pidfd_getfd, which needs
            # us dumpable (the id change in the identity stage cleared it; execve sets it anew).
            sc.prctl(PR_SET_DUMPABLE, 1)
            listener = seccomp.load_filter(plan.bpf, listener=True)
            os.write(ctx.handoff_fd, struct.pack("=i", listener))
            if os.read(ctx.handoff_fd, 1) != b"k":
                raise SetupFailure("seccomp: the job's init could not take the notification listener")
            os.close(listener)
            os.close(ctx.handoff_fd)
        else:
            seccomp.load_filter(plan.bpf)
    except OSError as exc:
        raise SetupFailure(f"seccomp: {exc.strerror}", exc.errno or 0) from None
    ctx.applied["seccomp"] = {"enforced": True, "mode": plan.mode, "profile": plan.profile,
                              "profile_hash": plan.profile_hash, "kills_named": plan.listener,
                              "errno_denials_observable": False}


def _fork_init(ctx: ChildContext) -> None:
    """PID 1 forks the program (PID 2) and stays behind as its init; see ``jail/init.py``."""
    plan = ctx.template.seccomp
    ours = theirs = -1
    if plan is not None and plan.listener:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours, theirs = ours.detach(), theirs.detach()
    program = os.fork()
    if program != 0:
        os.close(ctx.report_fd)  # only the program reports set-up; its exec closes the pipe
        if ours >= 0:
            os.close(ours)
        sized = ctx.template.sized_tmpfs + (() if ctx.job.workdir else (ctx.template.work_path,))
        init.become_init(program, ctx.status_fd, theirs, plan, sized)
    os.close(ctx.status_fd)
    if theirs >= 0:
        os.close(theirs)
    ctx.handoff_fd = ours


CHILD_STAGES: tuple[tuple[str, Callable[[ChildContext], None]], ...] = (
    ("wait for id maps", _wait_for_release),
    ("identity", lambda ctx: userns.become_root_in_namespace()),
    ("cgroup namespace", _enter_cgroup_namespace),
    ("mounts", _mounts),
    ("hostname", lambda ctx: identity.set_hostname(ctx.template.hostname)),
    ("network", lambda ctx: net.configure(ctx.template.network)),
    ("rlimits", _rlimits),
    ("session", lambda ctx: identity.new_session()),
    ("capabilities", lambda ctx: caps.drop_all()),
    ("no_new_privs", lambda ctx: privs.lock_privileges(ctx.sync_fd)),
    ("landlock", _landlock),
    ("fds", lambda ctx: fds.install_stdio(ctx.stdio)),
    ("init", _fork_init),
    ("signals", _default_signals),
    ("seccomp", _seccomp),
)


def _namespace_ids() -> dict[str, str]:
    ids = {}
    for name in NAMESPACES:
        try:
            ids[name] = os.readlink(f"/proc/self/ns/{name}")
        except OSError:
            ids[name] = "unreadable"
    return ids


def _environment(ctx: ChildContext) -> dict[str, str]:
    env = dict(ctx.template.env)
    env.update(ctx.job.env)
    return env


def run_child(ctx: ChildContext) -> NoReturn:
    """The child's whole life until execve. Never returns; never raises."""
    stage = "start"
    timings: dict[str, float] = {}
    try:
        last = time.perf_counter()
        for stage, step in CHILD_STAGES:
            step(ctx)
            now = time.perf_counter()
            timings[stage] = round((now - last) * 1000, 3)
            last = now
        ctx.applied["stage_ms"] = timings
        stage = "exec"
        report.write_frame(ctx.report_fd, "ready", {
            "applied": ctx.applied, "readback": readback.read_self(), "namespaces": _namespace_ids(),
        })
        env = _environment(ctx)
        try:
            os.execvpe(ctx.job.argv[0], list(ctx.job.argv), env)
        except OSError as exc:
            code = EXIT_NOT_FOUND if exc.errno == 2 else EXIT_CANNOT_EXECUTE
            report.write_frame(ctx.report_fd, "error", {
                "stage": "exec", "detail": f"{ctx.job.argv[0]}: {exc.strerror}",
                "errno": exc.errno, "exit_code": code})
            os._exit(code)
    except SetupFailure as exc:
        _report_failure(ctx, stage, exc.detail, exc.errno, exc.exit_code)
    except OSError as exc:
        _report_failure(ctx, stage, exc.strerror or str(exc), exc.errno or 0, EXIT_SETUP_FAILED)
    except BaseException as exc:  # the child must never unwind into the spawner's loop
        _report_failure(ctx, stage, f"{type(exc).__name__}: {exc}", 0, EXIT_SETUP_FAILED)
    os._exit(EXIT_SETUP_FAILED)


def _report_failure(ctx: ChildContext, stage: str, detail: str, errno: int, code: int) -> NoReturn:
    try:
        report.write_frame(ctx.report_fd, "error", {
            "stage": stage, "detail": detail, "errno": errno, "exit_code": code})
    finally:
        os._exit(code)


@dataclass
class Launched:
    """What the spawner knows after set-up: the child, its pidfd and its report."""

    pid: int
    pidfd: int
    started: float
    lease: userns.IdLease
    ready: dict[str, Any] | None
    error: dict[str, Any] | None
    status_fd: int  # the init writes the program's wait status here before it exits


def launch(template: JailTemplate, job: JobSpec, stdio: tuple[int, int, int],
           ids: userns.IdAllocator, place_in_cgroup: Callable[[int], None] | None = None) -> Launched:
    """Parent side: clone, map ids, place, release, and wait for execve or a failure."""
    lease = ids.lease()
    workdir_tree = -1
    if job.workdir and not ids.rootless:
        # As root the job owns nothing on the host: show it the work directory as its own.
        try:
            workdir_tree = idmap.idmapped_tree(job.workdir, lease.mapping.host_uid)
        except (SetupFailure, OSError):
            lease.release()
            raise
    try:
        # As root, the spawner resolves the sources with the operator's rights.
        sources = None if ids.rootless else mounts.open_sources(template, job, workdir_tree, detached=True)
    except SetupFailure:
        if workdir_tree >= 0:
            os.close(workdir_tree)
        lease.release()
        raise
    sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    started = time.monotonic()
    try:
        pid, pidfd = sc.clone_process(NAMESPACE_FLAGS)
    except OSError as exc:
        for fd in (sync_r, sync_w, report_r, report_w, status_r, status_w):
            os.close(fd)
        if workdir_tree >= 0:
            os.close(workdir_tree)
        mounts.close_sources(sources or {})
        lease.release()
        raise SetupFailure(f"clone into new namespaces: {exc.strerror}", exc.errno or 0) from None
    if pid == 0:
        os.close(sync_w)
        os.close(report_r)
        os.close(status_r)
        run_child(ChildContext(template, job, stdio, sync_r, report_w, status_w, workdir_tree, sources))
    if workdir_tree >= 0:
        os.close(workdir_tree)
    mounts.close_sources(sources or {})
    os.close(sync_r)
    os.close(report_w)
    os.close(status_w)
    try:
        userns.write_id_maps(pid, lease.mapping)
        if place_in_cgroup is not None:
            place_in_cgroup(pid)
        os.write(sync_w, b"\0")
        frames, timed_out = report.read_frames(report_r, SETUP_TIMEOUT_S)
    except OSError as exc:
        frames, timed_out = [{"kind": "error", "stage": "spawner", "detail": str(exc),
                              "errno": exc.errno or 0, "exit_code": EXIT_SETUP_FAILED}], False
    finally:
        os.close(sync_w)
        os.close(report_r)
    ready = next((f for f in frames if f.get("kind") == "ready"), None)
    error = next((f for f in frames if f.get("kind") == "error"), None)
    if timed_out and error is None:
        error = {"stage": "set-up", "detail": f"no report within {SETUP_TIMEOUT_S} s",
                 "errno": 0, "exit_code": EXIT_SETUP_FAILED}
    if error is not None:
        # A child that failed set-up may still be alive (timed out): end it now.
        try:
            sc.pidfd_send_signal(pidfd, 9)
        except OSError:
            pass
    return Launched(pid, pidfd, started, lease, ready, error, status_r)


def program_exit(status_fd: int) -> dict[str, Any] | None:
    """The init's last frame: the program's wait status and what seccomp stopped; None if
    the init never wrote it (it died, or the job failed before the program started)."""
    os.set_blocking(status_fd, False)
    data = b""
    try:
        while chunk := os.read(status_fd, 65536):
            data += chunk
    except BlockingIOError:
        pass
    for frame in report.split_frames(data):
        if frame.get("kind") == "exit":
            return frame
    return None
