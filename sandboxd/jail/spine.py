"""The order of confinement, in one place.

A sandbox is built in two phases, so that the first can run before any job exists (the
spawner keeps a small pool of them) and only the second is on a job's critical path. Each
sandbox serves exactly one job and is destroyed after it.

Which code runs the stages is the spawner's choice (``sandboxd.native``): the compiled runner
(``sandboxd/native/stage.c``: ``prepare_native`` posix_spawns a helper that clones the sandbox
as the spawner's child, so the spawner's memory is never copied) or the Python stages below
(``prepare``: a clone of the spawner). Both run the same stages in the same order and report
the same facts; the result's ``layers.runner`` says which ran.

Parent (the spawner, single-threaded):
    ``prepare``: clone into new user, PID, mount, network, IPC and UTS namespaces
        → write setgroups=deny, gid_map, uid_map → place the child in its cgroup → release it.
    ``start``: send the job (argv, env, limits, stdio, the work directory as a detached
        mount) over the sandbox's socket; its report ends at execve.

Child, PID 1 of its namespaces — ``PREPARE_STAGES``:
    identity → cgroup namespace → mounts and pivot_root (all but the work directory)
    → hostname → network → session → [native: Landlock ruleset] → fork:
        PID 1 stays as the job's init: ``INIT_STAGES`` (capabilities, no_new_privs + death
            signal), then reaps until the program ends (``sandboxd.jail.init``);
        PID 2, the program-to-be, reports "warm" and waits for its job.
Program, PID 2 — ``WAIT_STAGES`` while it waits: default signal dispositions, bounding and
    ambient capability sets emptied and securebits locked, the Landlock ruleset built, the
    seccomp filter laid out; then ``JOB_STAGES`` when the job arrives:
    work directory → rlimits → session → capabilities → no_new_privs + death signal
    → Landlock enforced → stdio/fds → seccomp (last: nothing after it needs a filtered
    call) → execve.

Every module the child uses is imported here, at import time in the spawner: after
pivot_root or Landlock a lazy import would fail.
"""

from __future__ import annotations

import gc
import json
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
from sandboxd.jail.plan import JailTemplate, JobLimits, JobSpec, Rlimit, SeccompPlan

NAMESPACE_FLAGS = (sc.CLONE_NEWUSER | sc.CLONE_NEWPID | sc.CLONE_NEWNS | sc.CLONE_NEWNET
                   | sc.CLONE_NEWIPC | sc.CLONE_NEWUTS)
PR_SET_DUMPABLE = 4
NAMESPACES = ("user", "pid", "mnt", "net", "ipc", "uts", "cgroup")
JOB_MESSAGE_MAX = 1 << 20

EXIT_SETUP_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127


@dataclass
class ChildContext:
    """What the sandbox's processes know; the job's part arrives in ``start``."""

    template: JailTemplate
    sync_fd: int  # read end: the spawner's release, and its hang-up if it dies
    report_fd: int  # write end: warm / ready / error frames to the spawner
    status_fd: int  # write end: the init's last word (the program's wait status)
    job_fd: int  # the sandbox's end of its job socket
    sources: dict[str, mounts.Source] | None = None  # None: the child opens them (rootless)
    early_workdir: str | None = None  # a rootless job's work dir, bound while building the root
    handoff_fd: int = -1  # program ↔ init, to hand over the seccomp listener
    job: JobSpec | None = None
    stdio: tuple[int, int, int] = (-1, -1, -1)
    work_tree: int = -1
    ruleset: Any = None  # landlock.BuiltRuleset, built before the job arrives
    filter: Any = None  # seccomp.PreparedFilter, laid out before the job arrives
    applied: dict[str, Any] = field(default_factory=dict)

    @property
    def limits(self) -> JobLimits:
        return (self.job.limits if self.job and self.job.limits else None) or self.template.limits


# --- prepare: PID 1 ------------------------------------------------------------------------


def _wait_for_release(ctx: ChildContext) -> None:
    # The spawner writes one byte once our id maps and cgroup are in place.
    if os.read(ctx.sync_fd, 1) != b"\0":
        raise SetupFailure("the spawner did not release the sandbox")


def _enter_cgroup_namespace(ctx: ChildContext) -> None:
    # Why after the spawner placed us in our cgroup: the namespace's root is the cgroup we
    # are in at this moment, so the host's cgroup path never shows inside.
    sc.unshare(sc.CLONE_NEWCGROUP)


def _mounts(ctx: ChildContext) -> None:
    ctx.applied["mounts"] = mounts.build_root(ctx.template, ctx.sources, ctx.early_workdir)


def _fork_init(ctx: ChildContext) -> None:
    """PID 1 forks the program-to-be (PID 2) and stays behind as its init."""
    plan = ctx.template.seccomp
    ours = theirs = -1
    if plan is not None and plan.listener:
        ours, theirs = (s.detach() for s in socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM))
    program = os.fork()
    if program != 0:
        # Only the program takes jobs; the init reports its own failures, then lets go of the
        # report pipe so that the program's execve is what closes it.
        for fd in (ctx.job_fd, ours):
            if fd >= 0:
                os.close(fd)
        _run_stages(ctx, INIT_STAGES, report_to=ctx.report_fd)
        os.close(ctx.report_fd)
        sized = ctx.template.sized_tmpfs + (ctx.template.work_path,)
        init.become_init(program, ctx.status_fd, theirs, plan, sized)
    os.close(ctx.status_fd)
    if theirs >= 0:
        os.close(theirs)
    ctx.handoff_fd = ours
    # Our parent is now the init: if it dies, we die (it is the namespace's PID 1 anyway).
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)


PREPARE_STAGES: tuple[tuple[str, Callable[[ChildContext], None]], ...] = (
    ("wait for id maps", _wait_for_release),
    ("identity", lambda ctx: userns.become_root_in_namespace()),
    ("cgroup namespace", _enter_cgroup_namespace),
    ("mounts", _mounts),
    ("hostname", lambda ctx: identity.set_hostname(ctx.template.hostname)),
    ("network", lambda ctx: net.configure(ctx.template.network)),
    ("session", lambda ctx: identity.new_session()),
)


# --- Landlock -------------------------------------------------------------------------------------


def _build_ruleset(ctx: ChildContext) -> None:
    if ctx.template.landlock is not None:
        try:
            ctx.ruleset = landlock.build(landlock.LandlockPlan.from_dict(ctx.template.landlock),
                                         later=(ctx.template.work_path,))
        except OSError as exc:
            raise SetupFailure(f"Landlock: {exc}", exc.errno or 0) from None


def _prepare_filter(ctx: ChildContext) -> None:
    if ctx.template.seccomp is not None:
        ctx.filter = seccomp.PreparedFilter(ctx.template.seccomp.bpf)


def _landlock(ctx: ChildContext) -> None:
    if ctx.ruleset is None:
        ctx.applied["landlock"] = landlock_applied(ctx.template, False)
        return
    try:
        landlock.add_later(ctx.ruleset, (ctx.template.work_path,))  # its mount exists now
        applied = landlock.enforce(ctx.ruleset)
    except OSError as exc:
        raise SetupFailure(f"Landlock: {exc}", exc.errno or 0) from None
    ctx.applied["landlock"] = landlock_applied(ctx.template, applied.enforced)


_LANDLOCK_SUMMARIES: dict[str, dict[str, Any]] = {}


def landlock_applied(template: JailTemplate, enforced: bool) -> dict[str, Any]:
    """The result's Landlock layer; the plan's part is described once per template."""
    if template.landlock is None:
        return {"enforced": False, "mode": template.landlock_mode}
    summary = _LANDLOCK_SUMMARIES.get(template.policy_hash)
    if summary is None:
        plan = landlock.LandlockPlan.from_dict(template.landlock)
        summary = {"mode": template.landlock_mode, "abi": plan.abi, "rights": plan.describe(),
                   "dropped": list(plan.dropped)}
        if len(_LANDLOCK_SUMMARIES) > 256:
            _LANDLOCK_SUMMARIES.clear()
        _LANDLOCK_SUMMARIES[template.policy_hash] = summary
    return dict(summary, enforced=enforced)


def seccomp_applied(plan: SeccompPlan | None, enforced: bool) -> dict[str, Any]:
    """The result's seccomp layer."""
    if plan is None or not enforced:
        return {"enforced": False}
    return {"enforced": True, "mode": plan.mode, "profile": plan.profile, "profile_hash": plan.profile_hash,
            "kills_named": plan.listener, "errno_denials_observable": False}


def job_environment(template: JailTemplate, job: JobSpec) -> dict[str, str]:
    """The job's environment: the policy's, then the request's on top."""
    env = dict(template.env)
    env.update(job.env)
    return env


# The init holds no capability and cannot gain one, and runs only sandboxd's code. It stays
# outside the program's Landlock domain on purpose: a domain may only ptrace and signal into
# itself, and the init must take the program's seccomp listener (pidfd_getfd) and kill a
# caller of a killed syscall — while the program, in its own domain, can reach neither.
INIT_STAGES: tuple[tuple[str, Callable[[ChildContext], None]], ...] = (
    ("capabilities", lambda ctx: caps.drop_all()),
    ("no_new_privs", lambda ctx: privs.lock_privileges(ctx.sync_fd)),
)


# --- the job: PID 2 -----------------------------------------------------------------------------


def _receive_job(ctx: ChildContext) -> None:
    """Wait for the job; the spawner closing the socket means: not needed, go."""
    message, received, _flags, _addr = socket.recv_fds(socket.socket(fileno=ctx.job_fd), JOB_MESSAGE_MAX, 4)
    if not message:
        os._exit(0)
    data = json.loads(message)
    ctx.job = JobSpec.from_dict(data["job"])
    ctx.stdio = (received[0], received[1], received[2])
    ctx.work_tree = received[3] if data.get("work_tree") and len(received) > 3 else -1


def _work(ctx: ChildContext) -> None:
    ctx.applied["work"] = mounts.attach_work(ctx.template, ctx.work_tree, ctx.early_workdir is not None,
                                             ctx.job.workdir if ctx.job else None)


def job_rlimits(template: JailTemplate, limits: JobLimits) -> tuple[Rlimit, ...]:
    """The policy's rlimits and the job's backstops, in the order they are set."""
    extra: tuple[Rlimit, ...] = ()
    if limits.cpu_time is not None:
        # A per-process backstop only: the spawner enforces the job-wide CPU limit from the
        # cgroup's counter well before this fires.
        seconds = math.ceil(limits.cpu_time) + 1
        extra = (Rlimit("cpu", seconds, seconds + 1),)
    if limits.fsize is not None:
        extra += (Rlimit("fsize", limits.fsize, limits.fsize),)
    return template.rlimits + extra


def _rlimits(ctx: ChildContext) -> None:
    ctx.applied["rlimits"] = rlimits.apply(job_rlimits(ctx.template, ctx.limits))


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
        ctx.applied["seccomp"] = seccomp_applied(None, False)
        return
    try:
        if plan.listener:
            # Our parent, the job's init, takes the listener with pidfd_getfd, which needs
            # us dumpable (the id change in the identity stage cleared it; execve sets it anew).
            sc.prctl(PR_SET_DUMPABLE, 1)
            listener = ctx.filter.load(listener=True)
            os.write(ctx.handoff_fd, struct.pack("=i", listener))
            if os.read(ctx.handoff_fd, 1) != b"k":
                raise SetupFailure("seccomp: the job's init could not take the notification listener")
            os.close(listener)
            os.close(ctx.handoff_fd)
        else:
            ctx.filter.load()
    except OSError as exc:
        raise SetupFailure(f"seccomp: {exc.strerror}", exc.errno or 0) from None
    ctx.applied["seccomp"] = seccomp_applied(plan, True)


RUNNER_NAME = "sandboxd-init"


# The program-to-be readies what does not depend on the job while it waits for one.
WAIT_STAGES: tuple[tuple[str, Callable[[ChildContext], None]], ...] = (
    ("signals", _default_signals),
    ("capability bounds", lambda ctx: caps.lock_down()),
    ("landlock ruleset", _build_ruleset),
    ("seccomp filter", _prepare_filter),
)

JOB_STAGES: tuple[tuple[str, Callable[[ChildContext], None]], ...] = (
    ("work directory", _work),
    ("rlimits", _rlimits),
    ("session", lambda ctx: identity.new_session()),
    ("capabilities", lambda ctx: caps.drop_all()),
    ("no_new_privs", lambda ctx: privs.lock_privileges(ctx.sync_fd)),
    ("landlock", _landlock),
    ("fds", lambda ctx: fds.install_stdio(ctx.stdio)),
    ("seccomp", _seccomp),
)


# --- the child's life ---------------------------------------------------------------------------


def _namespace_ids() -> dict[str, str]:
    ids = {}
    for name in NAMESPACES:
        try:
            ids[name] = os.readlink(f"/proc/self/ns/{name}")
        except OSError:
            ids[name] = "unreadable"
    return ids


def _run_stages(ctx: ChildContext, stages, report_to: int | None) -> dict[str, float]:
    """Run ``stages``; a failure is reported on ``report_to`` (or just ends an init) and exits."""
    stage = "start"
    timings: dict[str, float] = {}
    try:
        last = time.perf_counter()
        for stage, step in stages:
            step(ctx)
            now = time.perf_counter()
            timings[stage] = round((now - last) * 1000, 3)
            last = now
        return timings
    except SetupFailure as exc:
        _fail(report_to, stage, exc.detail, exc.errno, exc.exit_code)
    except OSError as exc:
        _fail(report_to, stage, exc.strerror or str(exc), exc.errno or 0, EXIT_SETUP_FAILED)
    except BaseException as exc:  # the child must never unwind into the spawner's loop
        _fail(report_to, stage, f"{type(exc).__name__}: {exc}", 0, EXIT_SETUP_FAILED)


def _fail(report_to: int | None, stage: str, detail: str, errno: int, code: int) -> NoReturn:
    try:
        if report_to is not None:
            report.write_frame(report_to, "error", {"stage": stage, "detail": detail, "errno": errno,
                                                    "exit_code": code})
    finally:
        os._exit(code)


def run_sandbox(ctx: ChildContext) -> NoReturn:
    """The cloned child's whole life. Never returns; never raises."""
    gc.disable()  # short-lived: a collection would only write to (and copy) shared pages
    try:
        prepared = _run_stages(ctx, PREPARE_STAGES, ctx.report_fd)
        prepared.update(_run_stages(ctx, (("init", _fork_init),), ctx.report_fd))
        # From here on we are PID 2, the program-to-be (PID 1 went on as the init).
        prepared.update(_run_stages(ctx, WAIT_STAGES, ctx.report_fd))
        report.write_frame(ctx.report_fd, "warm", {})
        _run_stages(ctx, (("receive job", _receive_job),), ctx.report_fd)
        timings = _run_stages(ctx, JOB_STAGES, ctx.report_fd)
        ctx.applied["stage_ms"] = {"prepare": prepared, "job": timings}
        ctx.applied["runner"] = "python"
        job = ctx.job
        assert job is not None
        report.write_frame(ctx.report_fd, "ready", {
            "applied": ctx.applied, "readback": readback.read_self(), "namespaces": _namespace_ids(),
        })
        try:
            os.execvpe(job.argv[0], list(job.argv), job_environment(ctx.template, job))
        except OSError as exc:
            code = EXIT_NOT_FOUND if exc.errno == 2 else EXIT_CANNOT_EXECUTE
            _fail(ctx.report_fd, "exec", f"{job.argv[0]}: {exc.strerror}", exc.errno or 0, code)
        except ValueError as exc:  # a NUL byte or a lone surrogate: nothing execve could take
            _fail(ctx.report_fd, "exec", f"{job.argv[0]!r}: {exc}", 0, EXIT_CANNOT_EXECUTE)
    except BaseException as exc:
        _fail(ctx.report_fd, "sandbox", f"{type(exc).__name__}: {exc}", 0, EXIT_SETUP_FAILED)
    os._exit(EXIT_SETUP_FAILED)


# --- the spawner's side -----------------------------------------------------------------------


@dataclass
class Sandbox:
    """A sandbox as the spawner holds it: before, during and after its one job."""

    template: JailTemplate
    pid: int
    pidfd: int
    lease: userns.IdLease
    report_fd: int  # read end
    status_fd: int  # read end
    job_sock: socket.socket  # the spawner's end of the job socket
    sync_fd: int  # write end, held until the program execs (our liveness for the child)
    created: float
    rootless: bool
    early_workdir: str | None = None
    native: bool = False  # the compiled runner takes over after the session stage
    state: str = "preparing"  # preparing → warm → starting → running
    buffer: bytes = b""
    frames: list[dict[str, Any]] = field(default_factory=list)
    prepared: dict[str, Any] = field(default_factory=dict)  # the native path's "prepared" frame
    job: JobSpec | None = None
    helper_pid: int = -1  # natively built: the short-lived helper that clones the sandbox
    place_in_cgroup: Callable[[int], None] | None = None


def prepare(template: JailTemplate, ids: userns.IdAllocator, *, early_workdir: str | None = None,
            place_in_cgroup: Callable[[int], None] | None = None) -> Sandbox:
    """Clone a sandbox and release it to build itself; returns without waiting for it."""
    lease = ids.lease()
    try:
        # As root, the spawner resolves bind sources with the operator's rights.
        sources = None if ids.rootless else mounts.open_sources(template, None, detached=True)
    except SetupFailure:
        lease.release()
        raise
    sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    job_ours, job_theirs = (s.detach() for s in socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET))
    created = time.monotonic()
    try:
        # All the namespaces at once, from this single-threaded process (CLONE_NEWUSER refuses a
        # threaded caller); the child waits on sync_r until its ids and cgroup are set.
        pid, pidfd = sc.clone_process(NAMESPACE_FLAGS)
    except OSError as exc:
        for fd in (sync_r, sync_w, report_r, report_w, status_r, status_w, job_ours, job_theirs):
            os.close(fd)
        mounts.close_sources(sources or {})
        lease.release()
        raise SetupFailure(f"clone into new namespaces: {exc.strerror}", exc.errno or 0) from None
    if pid == 0:
        # The clone copied every fd the spawner held — other jobs' stdio among them, which
        # this sandbox would keep open (and their readers waiting for EOF): keep only ours.
        keep = {sync_r, report_w, status_w, job_theirs}
        keep.update(source.fd for source in (sources or {}).values())
        _close_all_but(keep)
        run_sandbox(ChildContext(template, sync_r, report_w, status_w, job_theirs, sources, early_workdir))
    for fd in (sync_r, report_w, status_w, job_theirs):
        os.close(fd)
    mounts.close_sources(sources or {})
    sandbox = Sandbox(template, pid, pidfd, lease, report_r, status_r, socket.socket(fileno=job_ours),
                      sync_w, created, ids.rootless, early_workdir)
    try:
        userns.write_id_maps(pid, lease.mapping)
        if place_in_cgroup is not None:
            place_in_cgroup(pid)
        os.write(sync_w, b"\0")
    except OSError as exc:
        destroy(sandbox)
        raise SetupFailure(f"set up the sandbox's ids and cgroup: {exc.strerror}", exc.errno or 0) from None
    os.set_blocking(report_r, False)
    return sandbox


def _hex(text: str) -> str:
    return os.fsencode(text).hex()


def native_config(template: JailTemplate, *, job_fd: int, report_fd: int, status_fd: int, sync_fd: int,
                  bpf_fd: int, sources: dict[str, mounts.Source] | None, early_workdir: str | None) -> bytes:
    """The compiled runner's configuration: ``key=value`` lines, paths in hex (stage.c).

    All but the fds is the same for every sandbox of a template: it is built once."""
    rootless = sources is None
    key = (template.policy_hash, rootless, early_workdir)
    static = _STATIC_CONFIGS.get(key)
    if static is None:
        if len(_STATIC_CONFIGS) > 256:  # rootless early work dirs vary per job: stay bounded
            _STATIC_CONFIGS.clear()
        static = _STATIC_CONFIGS[key] = _static_config(template, rootless, early_workdir)
    lines: list[tuple[str, Any]] = [("job_fd", job_fd), ("report_fd", report_fd), ("status_fd", status_fd),
                                    ("sync_fd", sync_fd), ("bpf_fd", bpf_fd)]
    if sources is not None:  # the i-th mount's detached source tree
        lines += [("srcfd", f"{index},{sources[op.dest].fd}") for index, op in enumerate(template.mounts)
                  if op.kind == "bind"]
    return static + "".join(f"{name}={value}\n" for name, value in lines).encode()


_STATIC_CONFIGS: dict[tuple[str, bool, str | None], bytes] = {}


def _static_config(template: JailTemplate, rootless: bool, early_workdir: str | None) -> bytes:
    plan = template.seccomp
    ll = landlock.LandlockPlan.from_dict(template.landlock) if template.landlock is not None else None
    later = 0
    if ll is not None:
        for rule in ll.fs_rules:
            if rule.path == template.work_path:
                later |= rule.access & ll.handled_fs
    lines: list[tuple[str, Any]] = [
        ("clone_flags", NAMESPACE_FLAGS), ("rootless", int(rootless)),
        ("securebits", caps.LOCKED_SECUREBITS),
        ("hostname", _hex(template.hostname)), ("loopback", int(template.network == "loopback")),
        ("tmp_size", template.tmp_size), ("shm_size", template.shm_size),
        ("work_path", _hex(template.work_path)), ("work_size", template.work_size),
        ("early_work", int(early_workdir is not None)),
        ("later_access", later), ("later_file_access", later & landlock.ACCESS_FILE),
        ("seccomp", int(plan is not None)), ("listener", int(bool(plan and plan.listener))),
        ("default_notifies", int(bool(plan and plan.default_notifies))),
        ("native_arch", init.NATIVE_AUDIT_ARCH),
        ("kill_nrs", ",".join(map(str, plan.kill_nrs)) if plan else ""),
        ("notify_nrs", ",".join(map(str, plan.notify_nrs)) if plan else ""),
    ]
    if early_workdir is not None:
        lines.append(("early_workdir", _hex(early_workdir)))
    kinds = {"bind": "b", "tmpfs": "t", "symlink": "s"}
    for op in template.mounts:
        if op.kind not in kinds:
            raise SetupFailure(f"unknown mount kind {op.kind!r}")
        lines.append(("mount", f"{kinds[op.kind]},{_hex(op.dest)},{_hex(op.source)},{int(op.writable)},"
                               f"{int(op.optional)},{op.size},-1"))
    lines += [("mask", f"f:{name}") for name in mounts.PROC_HIDDEN_FILES]
    lines += [("mask", f"d:{name}") for name in mounts.PROC_HIDDEN_DIRS]
    lines += [("mask", f"r:{name}") for name in mounts.PROC_READ_ONLY]
    lines += [("device", name) for name in mounts.DEVICES]
    lines += [("devlink", f"{name}={target}") for name, target in mounts.DEV_LINKS]
    lines += [("sized", _hex(path)) for path in template.sized_tmpfs + (template.work_path,)]
    if ll is not None:
        lines += [("ll", 1), ("ll_enforced", int(ll.enforced)), ("ll_handled_fs", ll.handled_fs),
                  ("ll_handled_net", ll.handled_net), ("ll_scoped", ll.scoped),
                  ("ll_file_mask", landlock.ACCESS_FILE), ("restrict_flags", ll.restrict_flags)]
        lines += [("llfs", f"{rule.access},{_hex(rule.path)}") for rule in ll.fs_rules]
        lines += [("llnet", f"{rule.access},{rule.port}") for rule in ll.net_rules]
    return "".join(f"{name}={value}\n" for name, value in lines).encode()


_ALL_SIGNALS = tuple(s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))


def prepare_native(template: JailTemplate, ids: userns.IdAllocator, runner: str, *,
                   early_workdir: str | None = None,
                   place_in_cgroup: Callable[[int], None] | None = None) -> Sandbox:
    """Start a natively built sandbox: the compiled runner, spawned without copying the
    spawner's memory, clones it as our child and says its pid (``adopt`` takes it from there)."""
    lease = ids.lease()
    sources = None
    ours: list[int] = []
    theirs: list[int] = []
    try:
        # As root, the spawner resolves bind sources with the operator's rights.
        sources = None if ids.rootless else mounts.open_sources(template, None, detached=True)
        sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        ours, theirs = [sync_w, report_r, status_r], [sync_r, report_w, status_w]
        job_ours, job_theirs = (s.detach() for s in socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET))
        ours.append(job_ours)
        theirs.append(job_theirs)
        bpf_fd = -1
        if template.seccomp is not None:
            bpf_fd = os.memfd_create("seccomp", os.MFD_CLOEXEC)
            theirs.append(bpf_fd)
            os.write(bpf_fd, template.seccomp.bpf)
        config_fd = os.memfd_create("stage-config", os.MFD_CLOEXEC)
        theirs.append(config_fd)
        os.write(config_fd, native_config(template, job_fd=job_theirs, report_fd=report_w, status_fd=status_w,
                                          sync_fd=sync_r, bpf_fd=bpf_fd, sources=sources,
                                          early_workdir=early_workdir))
        passed = theirs + [source.fd for source in (sources or {}).values() if source.fd >= 0]
        for fd in passed:
            os.set_inheritable(fd, True)
        created = time.monotonic()
        # posix_spawn (vfork + exec): the spawner's memory is not copied; only the fds made
        # inheritable just above cross, and they are closed here right after.
        helper = os.posix_spawn(runner, [RUNNER_NAME, str(config_fd)], {}, setsigdef=_ALL_SIGNALS, setsigmask=())
    except BaseException as exc:
        for fd in ours + theirs:
            os.close(fd)
        mounts.close_sources(sources or {})
        lease.release()
        if isinstance(exc, OSError):
            raise SetupFailure(f"start the stage runner: {exc.strerror}", exc.errno or 0) from None
        raise
    for fd in theirs:
        os.close(fd)
    mounts.close_sources(sources or {})
    os.set_blocking(report_r, False)
    return Sandbox(template, -1, -1, lease, report_r, status_r, socket.socket(fileno=job_ours), sync_w, created,
                   ids.rootless, early_workdir, native=True, state="spawning", helper_pid=helper,
                   place_in_cgroup=place_in_cgroup)


def adopt(sandbox: Sandbox, pid: int) -> None:
    """The helper cloned ``pid`` (our child, CLONE_PARENT): map its ids, place it, release it."""
    reap_helper(sandbox)
    try:
        sandbox.pidfd = sc.pidfd_open(pid)
    except OSError as exc:
        raise SetupFailure(f"pidfd_open of the new sandbox: {exc.strerror}", exc.errno or 0) from None
    sandbox.pid = pid
    sandbox.state = "preparing"
    try:
        # The spawner grants the ids (its lease) and the cgroup, as for a Python-built sandbox;
        # before the release, so the sandbox never runs unmapped or uncounted.
        userns.write_id_maps(pid, sandbox.lease.mapping)
        if sandbox.place_in_cgroup is not None:
            sandbox.place_in_cgroup(pid)
        os.write(sandbox.sync_fd, b"\0")
    except OSError as exc:
        destroy(sandbox)
        raise SetupFailure(f"set up the sandbox's ids and cgroup: {exc.strerror}", exc.errno or 0) from None


def reap_helper(sandbox: Sandbox, kill: bool = False) -> None:
    """Collect the helper (it exits right after saying the sandbox's pid)."""
    if sandbox.helper_pid > 0:
        if kill:
            try:
                os.kill(sandbox.helper_pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            os.waitpid(sandbox.helper_pid, 0)
        except ChildProcessError:
            pass
        sandbox.helper_pid = -1


def _close_all_but(keep: set[int]) -> None:
    low = 3
    for fd in sorted(fd for fd in keep if fd >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


def read_report(sandbox: Sandbox) -> bool:
    """Read what the sandbox reported; True at end of file (it exec'd or died)."""
    while True:
        try:
            chunk = os.read(sandbox.report_fd, 65536)
        except BlockingIOError:
            return False
        if not chunk:
            return True
        sandbox.buffer += chunk
        frames, sandbox.buffer = report.take_frames(sandbox.buffer)
        sandbox.frames += frames


def work_tree(sandbox: Sandbox, workdir: str) -> int:
    """A detached, idmapped clone of ``workdir`` for a root spawner's job (see idmap.py)."""
    from_userns = None
    info = os.stat(workdir)
    if (info.st_uid, info.st_gid) == (0, 0):
        # The sandbox's own user namespace maps 0 to its host id: no helper namespace needed.
        from_userns = f"/proc/{sandbox.pid}/ns/user"
    return idmap.idmapped_tree(workdir, sandbox.lease.mapping.host_uid, from_userns)


def start(sandbox: Sandbox, job: JobSpec, stdio: tuple[int, int, int], tree: int = -1) -> None:
    """Hand the job to a warm sandbox; its report then ends at execve."""
    fds_out = list(stdio) + ([tree] if tree >= 0 else [])
    if sandbox.native:
        message = native_job_message(sandbox.template, job, tree >= 0)
    else:
        message = json.dumps({"job": job.to_dict(), "work_tree": tree >= 0}).encode()
    socket.send_fds(sandbox.job_sock, [message], fds_out)
    sandbox.job = job
    sandbox.state = "starting"


def native_job_message(template: JailTemplate, job: JobSpec, work_tree: bool) -> bytes:
    """The job for the compiled runner: records of a tag byte, bytes, NUL (see stage.c).

    What execve could never take (a NUL byte, an unencodable name, '=' in a variable's
    name) is found here and sent as the exec stage's error, worded as os.execvpe words it.
    """
    env = job_environment(template, job)
    records: list[bytes] = []
    problem = None
    try:
        argv = [os.fsencode(arg) for arg in job.argv]
        variables = [(os.fsencode(key), os.fsencode(value)) for key, value in env.items()]
        if any(b"\0" in arg for arg in argv) or any(b"\0" in k or b"\0" in v for k, v in variables):
            raise ValueError("embedded null byte")
        if any(not k or b"=" in k for k, _ in variables):
            raise ValueError("illegal environment variable name")
        if not argv or not argv[0]:
            raise ValueError("execv() arg 2 first element cannot be empty")
    except ValueError as exc:  # UnicodeEncodeError included
        problem = f"{job.argv[0] if job.argv else ''!r}: {exc}"
        argv, variables = [b"-"], []
    records += [b"a" + arg for arg in argv]
    records += [b"e" + key + b"=" + value for key, value in variables]
    limits = job.limits or template.limits
    for limit in job_rlimits(template, limits):
        records.append(f"r{limit.name} {limit.soft} {limit.hard}".encode())
    if job.workdir:
        records.append(b"w" + os.fsencode(job.workdir))
    if work_tree:
        records.append(b"t")
    if problem is not None:
        records.append(b"x" + problem.encode("utf-8", "backslashreplace"))
    return b"\0".join(records) + b"\0"


def native_ready(sandbox: Sandbox, frame: dict[str, Any]) -> dict[str, Any]:
    """The compiled runner's "ready" frame in the shape the Python stages write it."""
    template, native = sandbox.template, frame.get("native") or {}
    applied: dict[str, Any] = dict(sandbox.prepared.get("applied") or {})
    applied["work"] = native.get("work")
    applied["rlimits"] = native.get("rlimits", {})
    applied["landlock"] = landlock_applied(template, bool(native.get("landlock")))
    applied["seccomp"] = seccomp_applied(template.seccomp, bool(native.get("seccomp")))
    applied["stage_ms"] = {"prepare": sandbox.prepared.get("stage_ms", {}), "job": native.get("stage_ms", {})}
    applied["runner"] = "native"
    return {"kind": "ready", "applied": applied, "readback": readback.parse(frame.get("raw") or {}),
            "namespaces": frame.get("namespaces", {})}


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


def destroy(sandbox: Sandbox) -> None:
    """Kill a sandbox (its init is PID 1: everything in it goes) — the caller reaps it."""
    if sandbox.pidfd < 0:
        return
    try:
        sc.pidfd_send_signal(sandbox.pidfd, signal.SIGKILL)
    except OSError:
        pass


def close_fds(sandbox: Sandbox) -> None:
    sandbox.job_sock.close()
    for name in ("report_fd", "status_fd", "sync_fd", "pidfd"):
        fd = getattr(sandbox, name)
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
            setattr(sandbox, name, -1)

