"""What the child can see of its own confinement, read just before execve.

The result's ``layers`` come from here and from the spawner's look at the child's
namespaces: what was applied, read back, never assumed from the plan. The compiled runner
sends the same files raw; ``parse`` gives both runners' reports one shape.
"""

from __future__ import annotations

import os

_STATUS_KEYS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp",
                "Seccomp_filters", "Uid", "Gid", "Groups")
RAW_FILES = {"status": "/proc/self/status", "uid_map": "/proc/self/uid_map",
             "gid_map": "/proc/self/gid_map", "setgroups": "/proc/self/setgroups",
             "mountinfo": "/proc/self/mountinfo"}


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError as exc:
        return f"unreadable: {exc.strerror}"


def raw_self() -> dict[str, str]:
    raw = {key: _read(path) for key, path in RAW_FILES.items()}
    raw["hostname"] = os.uname().nodename
    return raw


def parse(raw: dict[str, str]) -> dict:
    status = {}
    for line in str(raw.get("status", "")).splitlines():
        key, _, value = line.partition(":")
        if key in _STATUS_KEYS:
            status[key] = value.strip()
    mounts = []
    for line in str(raw.get("mountinfo", "")).splitlines():
        fields = line.split(" ")
        if len(fields) > 5:
            sep = fields.index("-") if "-" in fields else len(fields) - 3
            mounts.append({"path": fields[4], "options": fields[5], "fstype": fields[sep + 1]})
    return {
        "status": status,
        "uid_map": " ".join(str(raw.get("uid_map", "")).split()),
        "gid_map": " ".join(str(raw.get("gid_map", "")).split()),
        "setgroups": str(raw.get("setgroups", "")).strip(),
        "hostname": str(raw.get("hostname", "")),
        "mounts": mounts,
    }


def read_self() -> dict:
    return parse(raw_self())
