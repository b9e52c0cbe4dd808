"""What the spawner needs to build one jail: plain data that crosses the socket as JSON.

``JailTemplate`` is compiled once per resolved policy (in the caller) and cached by the
spawner under its hash; ``JobSpec`` is what changes from one job to the next. Neither has
behaviour: the stages in ``sandboxd.jail.spine`` act on them.
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class MountOp:
    """One step of building the new root, in order.

    kind: ``bind`` (source → dest, read-only unless ``writable``), ``tmpfs`` (dest, size),
    ``symlink`` (dest is a link to ``source``, as on the host).
    """

    kind: str
    dest: str
    source: str = ""
    writable: bool = False
    optional: bool = False
    size: int = 0


@dataclass(frozen=True)
class Rlimit:
    name: str
    soft: int
    hard: int


@dataclass(frozen=True)
class JobLimits:
    """Job-wide limits; None: not limited. A request can narrow a policy's, never widen."""

    cpu_time: float | None = None  # seconds of CPU, all the job's processes together
    wall_time: float | None = None  # seconds
    memory: int | None = None  # bytes, no swap
    pids: int | None = None
    cpus: float | None = None  # CPU bandwidth in cores
    output: int | None = None  # bytes kept of each of stdout and stderr
    fsize: int | None = None  # bytes one file may grow to (RLIMIT_FSIZE)

    def narrowed(self, request: "JobLimits") -> "JobLimits":
        def tighter(ours, theirs):
            if ours is None:
                return theirs
            if theirs is None:
                return ours
            return min(ours, theirs)

        return JobLimits(**{name: tighter(getattr(self, name), getattr(request, name))
                            for name in self.__dataclass_fields__})

    def needs_cgroup(self) -> bool:
        return any(v is not None for v in (self.cpu_time, self.memory, self.pids, self.cpus))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "JobLimits":
        return cls(**(data or {}))


@dataclass(frozen=True)
class SeccompPlan:
    mode: str  # "required" | "best-effort"
    profile: str
    profile_hash: str
    bpf: bytes
    # A user-notification listener goes to the job's init, which names killed syscalls and
    # answers the profile's own NOTIFY rules with EPERM (see sandboxd.jail.init).
    listener: bool = False
    kill_nrs: tuple[int, ...] = ()
    notify_nrs: tuple[int, ...] = ()
    default_notifies: bool = False


@dataclass(frozen=True)
class JailTemplate:
    policy_name: str
    policy_hash: str
    hostname: str
    network: str
    work_path: str
    work_size: int
    tmp_size: int
    shm_size: int
    mounts: tuple[MountOp, ...]
    env: tuple[tuple[str, str], ...]
    rlimits: tuple[Rlimit, ...]
    seccomp: SeccompPlan | None = None
    landlock: dict[str, Any] | None = None  # LandlockPlan.to_dict(), or None when off
    landlock_mode: str = "off"
    limits: JobLimits = field(default_factory=JobLimits)
    cgroup_mode: str = "off"  # "required" | "best-effort" | "off"
    sized_tmpfs: tuple[str, ...] = ()  # tmpfs paths whose filling up the init reports

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.seccomp is not None:
            data["seccomp"]["bpf"] = base64.b64encode(self.seccomp.bpf).decode()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JailTemplate":
        seccomp = data.get("seccomp")
        return cls(
            policy_name=data["policy_name"],
            policy_hash=data["policy_hash"],
            hostname=data["hostname"],
            network=data["network"],
            work_path=data["work_path"],
            work_size=data["work_size"],
            tmp_size=data["tmp_size"],
            shm_size=data["shm_size"],
            mounts=tuple(MountOp(**m) for m in data["mounts"]),
            env=tuple((k, v) for k, v in data["env"]),
            rlimits=tuple(Rlimit(**r) for r in data["rlimits"]),
            seccomp=None
            if seccomp is None
            else SeccompPlan(
                mode=seccomp["mode"],
                profile=seccomp["profile"],
                profile_hash=seccomp["profile_hash"],
                bpf=base64.b64decode(seccomp["bpf"]),
                listener=seccomp.get("listener", False),
                kill_nrs=tuple(seccomp.get("kill_nrs", ())),
                notify_nrs=tuple(seccomp.get("notify_nrs", ())),
                default_notifies=seccomp.get("default_notifies", False),
            ),
            landlock=data.get("landlock"),
            landlock_mode=data.get("landlock_mode", "off"),
            limits=JobLimits.from_dict(data.get("limits")),
            cgroup_mode=data.get("cgroup_mode", "off"),
            sized_tmpfs=tuple(data.get("sized_tmpfs", ())),
        )


@dataclass(frozen=True)
class JobSpec:
    """The per-job part: what to run, its extra environment and its host work directory."""

    job_id: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    workdir: str | None = None  # host directory bound read-write at the work path
    limits: JobLimits | None = None  # the effective limits (policy's narrowed by the request)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JobSpec":
        return cls(
            job_id=data["job_id"],
            argv=tuple(data["argv"]),
            env=tuple((k, v) for k, v in data["env"]),
            workdir=data.get("workdir"),
            limits=None if data.get("limits") is None else JobLimits.from_dict(data["limits"]),
            extra=dict(data.get("extra") or {}),
        )
