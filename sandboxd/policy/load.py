"""Finding, reading and validating policy files; applying command-line overrides.

Every failure becomes one ``PolicyError`` whose message names the file, the key and the
reason, e.g. ``policies/x.toml: filesystem.mounts[1].source: '/nope' does not exist``.
Nothing else may escape, whatever the input: not a decoding error, not a recursion or
integer-size limit of the TOML parser, not an ``OSError`` from looking at a hostile path.
"""

from __future__ import annotations

import errno
import os
import re
import reprlib
import shlex
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pydantic import ValidationError

from sandboxd.errors import PolicyError
from sandboxd.policy.model import MOUNT_COLLISION, Mount, Policy, mount_collision, policy_hash

SHIPPED_POLICIES = Path(__file__).resolve().parents[2] / "policies"
DEFAULT_POLICY = "default"

MAX_POLICY_BYTES = 1 << 20
"""A policy file larger than this (1 MiB) is refused rather than parsed."""

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")  # a TOML bare key; anything else is shown quoted

_SHORT = reprlib.Repr()  # repr of a user's value in a message: bounded in length and depth
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlevel = 3


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


def _is_file(path: Path, source: str) -> bool:
    """Whether ``path`` is a regular file (following symlinks); a PolicyError when it cannot be told."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except ValueError:  # a NUL byte
        raise PolicyError(source, "", "a path cannot contain a NUL byte") from None
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return False
        raise PolicyError(source, "", f"cannot look at {str(path)!r}: {exc.strerror or exc}") from None


def find_policy(name_or_file: str) -> Path:
    """A policy file by path (contains '/' or ends in .toml) or by name on the search path."""
    if "/" in name_or_file or name_or_file.endswith(".toml"):
        path = Path(name_or_file)
        if not _is_file(path, name_or_file):
            raise PolicyError(name_or_file, "", "no such policy file")
        return path
    if not name_or_file.replace("-", "").replace("_", "").isalnum():
        raise PolicyError(name_or_file, "", "a policy name has only letters, digits, '-' and '_'")
    for directory in policy_search_path():
        candidate = directory / f"{name_or_file}.toml"
        if _is_file(candidate, name_or_file):
            return candidate
    searched = ", ".join(str(d) for d in policy_search_path())
    raise PolicyError(name_or_file, "", f"no policy of that name (searched {searched})")


def _key_part(part: str) -> str:
    """A key as TOML would write it: bare when it can be, else in double quotes."""
    if _BARE_KEY.fullmatch(part):
        return part
    return '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'  # PolicyError escapes the rest


def _key_of(location: Iterable[Any]) -> str:
    # The model has no union fields, so every part of a location is a key of the file or an
    # index (pydantic would add names of union branches such as "int" or "function-after[...]";
    # a user's key can be called that too, so they are not filtered out here).
    key = ""
    for part in location:
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            part = _key_part(str(part))
            key += f".{part}" if key else part
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
        message += f" (got {type(error['input']).__name__} {_SHORT.repr(error['input'])})"
    return message


def _policy_error(source: str, exc: ValidationError) -> PolicyError:
    first = exc.errors()[0]
    key = _key_of(first["loc"])
    if first["type"] == MOUNT_COLLISION:  # raised by the Policy model, about one of its mounts
        key = f"filesystem.mounts[{first['ctx']['index']}]"
    return PolicyError(source, key or "(policy)", _reason_of(first))


def validate_policy(data: dict[str, Any], source: str) -> Policy:
    """Validate parsed TOML; raise the first problem as a PolicyError."""
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise _policy_error(source, exc) from None
    except RecursionError:
        raise PolicyError(source, "(policy)", "nested too deeply") from None


def _host_path_problem(path: str, here: str = " on this host") -> str | None:
    """Why ``path`` cannot be a bind source on this host (None: it exists)."""
    try:
        os.stat(path)
        return None
    except ValueError:
        return f"{path!r} contains a NUL byte"
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            return f"{path!r} cannot be used{here}: {exc.strerror or exc}"
    if os.path.islink(path):
        return f"{path!r} does not exist{here} (it is a dangling symlink)"
    return f"{path!r} does not exist{here}"


def check_host_paths(policy: Policy, source: str) -> None:
    """Every non-optional bind source must exist on this host."""
    for index, mount in enumerate(policy.filesystem.mounts):
        if mount.source is not None and not mount.optional:
            problem = _host_path_problem(mount.source)
            if problem is not None:
                raise PolicyError(source, f"filesystem.mounts[{index}].source", problem)


def read_policy_file(path: Path) -> dict[str, Any]:
    """The parsed TOML of a policy file; every failure is a PolicyError naming the file."""
    source = str(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise PolicyError(source, "", exc.strerror or str(exc)) from None
    except ValueError:  # a NUL byte in the path
        raise PolicyError(source, "", "a path cannot contain a NUL byte") from None
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyError(source, "", f"larger than {MAX_POLICY_BYTES} bytes; not a policy file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise PolicyError(source, "(toml)", f"not valid UTF-8 (line {line}, byte offset {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(source, "(toml)", f"malformed TOML: {exc}") from None
    except ValueError as exc:  # int() refuses more than sys.get_int_max_str_digits() digits
        if "integer string conversion" in str(exc):
            raise PolicyError(source, "(toml)", "malformed TOML: an integer has too many digits") from None
        raise PolicyError(source, "(toml)", f"malformed TOML: {exc}") from None
    except RecursionError:
        raise PolicyError(source, "(toml)", "malformed TOML: arrays or tables nested too deeply") from None


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


def _flag_label(flag: str, source: str, dest: str) -> str:
    """The flag as the user typed it, shell-quoted where needed (``--bind /x /usr``)."""
    words = [flag, source, dest] if flag != "--tmpfs" or source else [flag, dest]
    return shlex.join(words)


def apply_overrides(loaded: LoadedPolicy, overrides: Overrides) -> LoadedPolicy:
    """A new policy with the overrides applied, validated as strictly as a file."""
    if overrides == Overrides():
        return loaded
    data = loaded.policy.model_dump(mode="python")
    mounts = list(data["filesystem"]["mounts"])
    work_path = loaded.policy.filesystem.work_path
    # Who mounts each target so far: a flag colliding with it is reported as that flag.
    taken = {mount.target: "the policy" for mount in loaded.policy.filesystem.mounts}
    for flag, source, dest in overrides.mounts:
        label = _flag_label(flag, source, dest)
        if flag == "--tmpfs":
            entry = {"type": "tmpfs", "dest": dest}
        else:
            if not source.startswith("/"):
                try:
                    source = os.path.abspath(source)
                except OSError as exc:  # the current directory is gone
                    raise PolicyError("command line", label, f"cannot resolve the source: {exc.strerror}") from None
            problem = _host_path_problem(source, here="")
            if problem is not None:
                raise PolicyError("command line", label, f"source {problem}")
            entry = {"type": "ro-bind" if flag == "--ro-bind" else "bind", "source": source, "dest": dest}
        try:
            mount = Mount.model_validate(entry)
        except ValidationError as exc:
            raise PolicyError("command line", label, _reason_of(exc.errors()[0])) from None
        reason = mount_collision(mount.target, taken, work_path)
        if reason is not None:
            if mount.target in taken:
                reason += f" (already mounted by {taken[mount.target]})"
            raise PolicyError("command line", label, reason)
        taken[mount.target] = label
        mounts.append(mount.model_dump(mode="python"))
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
