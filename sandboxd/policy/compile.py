"""Turn a validated policy into the spawner's ``JailTemplate``: once per policy, not per job.

This is where the fail-closed decisions about optional layers are made: a layer the policy
requires and this host cannot give raises ``LayerUnavailable``; a best-effort layer that
cannot be given is left out and the template records exactly what is applied.
"""

from __future__ import annotations

import os
from functools import lru_cache

from sandboxd.errors import LayerUnavailable, PolicyError, SandboxdInputError
from sandboxd.jail import landlock
from sandboxd.jail.plan import JailTemplate, JobLimits, MountOp, Rlimit, SeccompPlan
from sandboxd.jail.rlimits import INFINITY
from sandboxd.policy.load import LoadedPolicy
from sandboxd.policy.model import Policy

_DEVICE_FILES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")


def _depth(path: str) -> int:
    return path.rstrip("/").count("/")


def mount_ops(policy: Policy) -> tuple[MountOp, ...]:
    """The policy's mounts in build order (parents before children)."""
    ops = []
    for mount in policy.filesystem.mounts:
        if mount.type == "tmpfs":
            ops.append(MountOp("tmpfs", mount.target, size=mount.size or (64 << 20), writable=True))
            continue
        source = mount.source or ""
        if os.path.islink(source) and mount.target == source:
            # /bin -> usr/bin on merged-/usr hosts: the same link, not a second bind.
            ops.append(MountOp("symlink", mount.target, source=os.readlink(source), optional=mount.optional))
            continue
        ops.append(MountOp("bind", mount.target, source=source, writable=mount.type == "bind",
                           optional=mount.optional))
    return tuple(sorted(ops, key=lambda op: _depth(op.dest)))


def rlimit_list(policy: Policy) -> tuple[Rlimit, ...]:
    limits = policy.rlimits
    values = {
        "nofile": limits.nofile,
        "stack": limits.stack,
        "core": limits.core,
        "fsize": INFINITY if limits.fsize is None else limits.fsize,
        "memlock": limits.memlock,
        "msgqueue": limits.msgqueue,
    }
    return tuple(Rlimit(name, value, value) for name, value in values.items())


def writable_paths(policy: Policy, ops: tuple[MountOp, ...], source: str) -> list[str]:
    paths = [policy.filesystem.work_path, "/tmp", "/dev/shm"]
    for op in ops:
        if op.writable and (op.kind == "tmpfs" or not op.optional or os.path.exists(op.source)):
            paths.append(op.dest)
    for index, read_only in enumerate(policy.landlock.read_only):
        for path in paths:
            if read_only != path and read_only.startswith(path.rstrip("/") + "/"):
                # Landlock rights granted on a directory hold for everything beneath it; a
                # read-only hole below a writable path cannot be made, so refuse to pretend.
                raise PolicyError(source, f"landlock.read_only[{index}]",
                                  f"{read_only} is beneath the writable {path}; Landlock cannot take "
                                  "rights away below a path it grants them on")
    return [p for p in paths if p not in policy.landlock.read_only]


def landlock_plan(policy: Policy, ops: tuple[MountOp, ...], source: str = "policy") -> landlock.LandlockPlan | None:
    settings = policy.landlock
    if settings.mode == "off":
        return None
    network = policy.network
    try:
        return landlock.build_plan(
            # Read and execute everywhere the mounts show; writing only where the policy says.
            read_only=["/"],
            read_write=writable_paths(policy, ops, source),
            ioctl_dev=list(_DEVICE_FILES),
            tcp_bind=None if network.tcp_bind is None else list(network.tcp_bind),
            tcp_connect=None if network.tcp_connect is None else list(network.tcp_connect),
            scope_abstract_unix=settings.scope,
            scope_signal=settings.scope,
            min_abi=settings.min_abi,
            best_effort=settings.mode == "best-effort",
        )
    except landlock.LandlockUnavailable as exc:
        raise LayerUnavailable("landlock", f"{exc} (the policy requires it; "
                               "set landlock.mode = \"best-effort\" to run without)") from None


@lru_cache(maxsize=64)
def _compiled_profile(name: str, allow_foreign_arches: bool, notify_kills: bool):
    from sandboxd.policy.seccomp_compile import compile_profile
    from sandboxd.policy.seccomp_profile import find_profile, load_profile

    profile = load_profile(find_profile(name))
    return compile_profile(profile, allow_foreign_arches=allow_foreign_arches, notify_kills=notify_kills)


def seccomp_plan(policy: Policy, source: str = "policy") -> SeccompPlan | None:
    settings = policy.seccomp
    if settings.mode == "off":
        return None
    try:
        compiled = _compiled_profile(settings.profile, settings.allow_foreign_arches, settings.name_kills)
    except SandboxdInputError as exc:
        raise PolicyError(source, "seccomp.profile", str(exc)) from None
    except OSError as exc:
        if settings.mode == "best-effort":
            return None
        raise LayerUnavailable("seccomp", f"cannot compile profile {settings.profile!r}: {exc}") from None
    return SeccompPlan(mode=settings.mode, profile=settings.profile, profile_hash=compiled.profile_hash,
                       bpf=compiled.bpf, listener=compiled.needs_listener, kill_nrs=compiled.kill_nrs,
                       notify_nrs=compiled.notify_nrs, default_notifies=compiled.default_notifies)


def job_limits(policy: Policy) -> JobLimits:
    limits = policy.limits
    return JobLimits(cpu_time=limits.cpu_time, wall_time=limits.wall_time, memory=limits.memory,
                     pids=limits.pids, cpus=limits.cpus, output=limits.output, fsize=policy.rlimits.fsize)


def sized_tmpfs(policy: Policy, ops: tuple[MountOp, ...]) -> tuple[str, ...]:
    """tmpfs mounts with a size, whose filling up ends a job with a verdict."""
    paths = ["/tmp", "/dev/shm"] + [op.dest for op in ops if op.kind == "tmpfs"]
    return tuple(paths)


def compile_template(loaded: LoadedPolicy) -> JailTemplate:
    policy = loaded.policy
    ops = mount_ops(policy)
    plan = landlock_plan(policy, ops, loaded.source)
    if plan is not None and not plan.enforced and policy.landlock.mode == "required":
        raise LayerUnavailable("landlock", "this kernel has no Landlock")
    seccomp = seccomp_plan(policy, loaded.source)
    return JailTemplate(
        policy_name=loaded.name,
        policy_hash=loaded.hash,
        hostname=policy.process.hostname,
        network=policy.network.mode,
        work_path=policy.filesystem.work_path,
        work_size=policy.filesystem.work_size,
        tmp_size=policy.filesystem.tmp_size,
        shm_size=policy.filesystem.shm_size,
        mounts=ops,
        env=tuple(sorted(policy.process.env.items())),
        rlimits=rlimit_list(policy),
        seccomp=seccomp,
        landlock=None if plan is None else plan.to_dict(),
        landlock_mode=policy.landlock.mode,
        limits=job_limits(policy),
        cgroup_mode=policy.cgroup.mode,
        sized_tmpfs=sized_tmpfs(policy, ops),
    )
