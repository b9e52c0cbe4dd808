"""Finding, reading and validating policy files; applying command-line overrides.

Every failure becomes one ``PolicyError`` whose message names the file, the key and the
reason, e.g. ``policies/x.toml: filesystem.mounts[1].source: '/nope' does not exist``.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pydantic import ValidationError

from sandboxd.errors import PolicyError
from sandboxd.policy.model import Mount, Policy, policy_hash

SHIPPED_POLICIES = Path(__file__).resolve().parents[2] / "policies"
DEFAULT_POLICY = "default"


@dataclass(frozen=True)
class LoadedPolicy:
    """A validated policy with where it came from and its content hash."""

    name: str
    source: str
    policy: Policy
    hash: str


def policy_search_path() -> list[Path]:
    """Directories searched for ``NAME.toml``: $SANDBOXD_POLICY_PATH first, then shipped ones."""
    extra = os.environ.get("SANDBOXD_POLICY_PATH", "")
    dirs = [Path(p) for p in extra.split(":") if p]
    dirs.append(SHIPPED_POLICIES)
    return dirs


def find_policy(name_or_file: str) -> Path:
    """A policy file by path (contains '/' or ends in .toml) or by name on the search path."""
    if "/" in name_or_file or name_or_file.endswith(".toml"):
        path = Path(name_or_file)
        if not path.is_file():
            raise PolicyError(name_or_file, "", "no such policy file")
        return path
    if not name_or_file.replace("-", "").replace("_", "").isalnum():
        raise PolicyError(name_or_file, "", "a policy name has only letters, digits, '-' and '_'")
    for directory in policy_search_path():
        candidate = directory / f"{name_or_file}.toml"
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(d) for d in policy_search_path())
    raise PolicyError(name_or_file, "", f"no policy of that name (searched {searched})")


def _key_of(location: Iterable[Any]) -> str:
    key = ""
    for part in location:
        if isinstance(part, int):
            key += f"[{part}]"
        elif part.startswith(("function-", "literal[")) or part in ("str", "int", "float", "bool"):
            continue  # pydantic's names for union branches, not keys of the file
        else:
            key += f".{part}" if key else str(part)
    return key


def _reason_of(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    if kind.endswith("_type") and "input" in error:
        message += f" (got {type(error['input']).__name__} {error['input']!r})"
    return message


def validate_policy(data: dict[str, Any], source: str) -> Policy:
    """Validate parsed TOML; raise the first problem as a PolicyError."""
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise PolicyError(source, _key_of(first["loc"]) or "(policy)", _reason_of(first)) from None


def check_host_paths(policy: Policy, source: str) -> None:
    """Every non-optional bind source must exist on this host."""
    for index, mount in enumerate(policy.filesystem.mounts):
        if mount.source is not None and not mount.optional and not os.path.exists(mount.source):
            raise PolicyError(
                source, f"filesystem.mounts[{index}].source", f"{mount.source!r} does not exist on this host"
            )


def read_policy_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(str(path), "(toml)", f"malformed TOML: {exc}") from None
    except OSError as exc:
        raise PolicyError(str(path), "", exc.strerror or str(exc)) from None


def load_policy(name_or_file: str = DEFAULT_POLICY) -> LoadedPolicy:
    """Find, parse, validate and check a policy."""
    path = find_policy(name_or_file)
    policy = validate_policy(read_policy_file(path), str(path))
    check_host_paths(policy, str(path))
    name = path.stem
    return LoadedPolicy(name=name, source=str(path), policy=policy, hash=policy_hash(policy))


@dataclass(frozen=True)
class Overrides:
    """What ``sandboxd run`` flags change in a policy; they may only add or narrow."""

    mounts: tuple[tuple[str, str, str], ...] = ()  # (flag, source-or-"", dest)
    env: tuple[tuple[str, str], ...] = ()
    network: str | None = None
    hostname: str | None = None


def apply_overrides(loaded: LoadedPolicy, overrides: Overrides) -> LoadedPolicy:
    """A new policy with the overrides applied, validated as strictly as a file."""
    if overrides == Overrides():
        return loaded
    data = loaded.policy.model_dump(mode="python")
    mounts = list(data["filesystem"]["mounts"])
    for flag, source, dest in overrides.mounts:
        label = f"{flag} {source} {dest}".replace("  ", " ").strip()
        if flag == "--tmpfs":
            entry = {"type": "tmpfs", "dest": dest}
        else:
            if not source.startswith("/"):
                source = os.path.abspath(source)
            if not os.path.exists(source):
                raise PolicyError("command line", label, f"source {source!r} does not exist")
            entry = {"type": "ro-bind" if flag == "--ro-bind" else "bind", "source": source, "dest": dest}
        try:
            mounts.append(Mount.model_validate(entry).model_dump(mode="python"))
        except ValidationError as exc:
            raise PolicyError("command line", label, _reason_of(exc.errors()[0])) from None
    data["filesystem"]["mounts"] = mounts
    if overrides.env:
        data["process"]["env"] = {**data["process"]["env"], **dict(overrides.env)}
    if overrides.network is not None:
        data["network"]["mode"] = overrides.network
    if overrides.hostname is not None:
        data["process"]["hostname"] = overrides.hostname
    policy = validate_policy(data, "command line")
    return LoadedPolicy(
        name=loaded.name, source=loaded.source, policy=policy, hash=policy_hash(policy)
    )
