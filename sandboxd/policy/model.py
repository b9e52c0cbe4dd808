"""The policy: what a job may do, as validated data.

A policy file is TOML (format and every key: ``policies/README.md``). These pydantic models
validate it strictly: unknown keys, wrong types and malformed values are rejected, and the
loader turns each failure into one ``PolicyError`` naming the file, the key and the reason.
Nothing here touches the host except ``check_host_paths``, which looks at mount sources.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from typing import Annotated, Iterable, Iterator, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from sandboxd.policy.sizes import parse_size

Size = Annotated[int, BeforeValidator(parse_size)]
"""Bytes; the file may say 4096, "64K", "64M" or "1G"."""

# Always used with fullmatch: ``$`` would also match before a trailing newline.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
LayerMode = Literal["required", "best-effort", "off"]


def _absolute_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{value!r} is not an absolute path")
    if "\0" in value:
        raise ValueError("a path cannot contain a NUL byte")
    normal = posixpath.normpath(value)
    if normal.startswith("//"):
        normal = normal[1:]
    if ".." in value.split("/"):
        raise ValueError(f"{value!r} contains '..'")
    return normal


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Mount(_Strict):
    """One mount inside the jail's new root."""

    type: Literal["ro-bind", "bind", "tmpfs"]
    source: str | None = None
    dest: str | None = None
    optional: bool = False
    size: Size | None = None

    @field_validator("source", "dest")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        return None if value is None else _absolute_path(value)

    @model_validator(mode="after")
    def _consistent(self) -> "Mount":
        if self.type == "tmpfs":
            if self.source is not None:
                raise ValueError("a tmpfs mount takes no source")
            if self.dest is None:
                raise ValueError("a tmpfs mount needs a dest")
        else:
            if self.source is None:
                raise ValueError(f"a {self.type} mount needs a source")
            if self.size is not None:
                raise ValueError("only a tmpfs mount takes a size")
        if (self.dest or self.source) == "/":
            raise ValueError("nothing may be mounted on the jail's root itself")
        return self

    @property
    def target(self) -> str:
        return self.dest or self.source or ""


class Filesystem(_Strict):
    work_path: str = "/work"
    work_size: Size = parse_size("64M")
    tmp_size: Size = parse_size("64M")
    shm_size: Size = parse_size("16M")
    mounts: tuple[Mount, ...] = Field(default=(), strict=False)

    @field_validator("work_path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        value = _absolute_path(value)
        if value in ("/", "/proc", "/dev", "/tmp", "/dev/shm"):
            raise ValueError(f"{value!r} is reserved and cannot be the work path")
        return value


class Network(_Strict):
    mode: Literal["none", "loopback"] = "none"
    # Landlock TCP port rules (ABI >= 4). Absent: not restricted; a list: only those ports.
    tcp_connect: tuple[Annotated[int, Field(ge=0, le=65535)], ...] | None = Field(default=None, strict=False)
    tcp_bind: tuple[Annotated[int, Field(ge=0, le=65535)], ...] | None = Field(default=None, strict=False)


class Process(_Strict):
    hostname: str = "sandbox"
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        if not _HOSTNAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid hostname")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, item in value.items():
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
            if "\0" in item:
                raise ValueError(f"the value of {name} contains a NUL byte")
        return value


class Rlimits(_Strict):
    """setrlimit(2) values applied to the job's first process (inherited by its children)."""

    nofile: int = Field(default=1024, ge=3, le=1 << 20)
    stack: Size = parse_size("8M")
    core: Size = 0
    fsize: Size | None = None
    memlock: Size = 0
    msgqueue: Size = 0


class Limits(_Strict):
    """Job-wide limits. A request may narrow them, never widen them."""

    # Finite numbers only: TOML's inf (or 1e999) would pass gt=0 and break math.ceil() later.
    cpu_time: float | None = Field(default=None, gt=0, allow_inf_nan=False)  # seconds, all processes
    wall_time: float | None = Field(default=None, gt=0, allow_inf_nan=False)  # seconds
    memory: Size | None = None  # bytes of RAM, no swap
    pids: int | None = Field(default=None, ge=1)  # processes and threads at once
    cpus: float | None = Field(default=None, gt=0, allow_inf_nan=False)  # CPU bandwidth in cores
    output: Size | None = None  # bytes each of stdout and stderr that are kept


class Cgroup(_Strict):
    # required: refuse the job when the host cannot give the cgroup controllers the limits
    # need; best-effort: run without them (the result's layers say what was not enforced).
    mode: LayerMode = "required"


class Seccomp(_Strict):
    mode: LayerMode = "required"
    profile: str = "default"
    allow_foreign_arches: bool = False
    # Name the syscall that a kill rule stopped (via a user-notification listener in the
    # job's init); off, kills still happen but the result cannot say which call it was.
    name_kills: bool = True


class Landlock(_Strict):
    mode: LayerMode = "required"
    min_abi: int = Field(default=1, ge=1)
    # Scope abstract unix sockets and signals to the job's own domain (ABI >= 6).
    scope: bool = True
    # Paths Landlock keeps read-only even where a mount is writable (a second, independent wall).
    read_only: tuple[str, ...] = Field(default=(), strict=False)

    @field_validator("read_only")
    @classmethod
    def _absolute(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_absolute_path(v) for v in value)


class Policy(_Strict):
    """A whole policy, as written in its file (after defaults)."""

    description: str = ""
    process: Process = Field(default_factory=Process)
    network: Network = Field(default_factory=Network)
    filesystem: Filesystem = Field(default_factory=Filesystem)
    rlimits: Rlimits = Field(default_factory=Rlimits)
    limits: Limits = Field(default_factory=Limits)
    cgroup: Cgroup = Field(default_factory=Cgroup)
    seccomp: Seccomp = Field(default_factory=Seccomp)
    landlock: Landlock = Field(default_factory=Landlock)

    @model_validator(mode="after")
    def _no_mount_collisions(self) -> "Policy":
        for index, reason in mount_collisions(self.filesystem.mounts, self.filesystem.work_path):
            # The error belongs to one mount, but an "after" validator cannot set its location:
            # the index travels in the context and the loader names filesystem.mounts[INDEX].
            raise PydanticCustomError(MOUNT_COLLISION, "{reason}", {"index": index, "reason": reason})
        return self


MOUNT_COLLISION = "mount_collision"
"""Error type of a mount collision; its context has the mount's ``index`` and the ``reason``."""

RESERVED_TARGETS = ("/proc", "/dev", "/tmp", "/dev/shm")
"""Mount points sandboxd sets up itself (and the work path); a policy may not mount on them."""


def mount_collision(target: str, taken: Iterable[str], work_path: str) -> str | None:
    """Why a mount on ``target`` is refused when ``taken`` are already mounted, or None."""
    if target in RESERVED_TARGETS or target == work_path:
        return f"{target} is managed by sandboxd"
    if target in taken:
        return f"{target} is mounted twice"
    return None


def mount_collisions(mounts: Iterable[Mount], work_path: str) -> Iterator[tuple[int, str]]:
    """(index, reason) of every mount whose target is reserved or already mounted."""
    seen: set[str] = set()
    for index, mount in enumerate(mounts):
        reason = mount_collision(mount.target, seen, work_path)
        if reason is not None:
            yield index, reason
        seen.add(mount.target)


def policy_hash(policy: Policy) -> str:
    """A stable content hash of the fully resolved policy."""
    canonical = json.dumps(policy.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
