"""What the child can see of its own confinement, read just before execve.

The result's ``layers`` come from here and from the spawner's look at the child's
namespaces: what was applied, read back, never assumed from the plan.
"""

from __future__ import annotations

import os

_STATUS_KEYS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp",
                "Seccomp_filters", "Uid", "Gid", "Groups")


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError as exc:
        return f"unreadable: {exc.strerror}"


def read_self() -> dict:
    status = {}
    for line in _read("/proc/self/status").splitlines():
        key, _, value = line.partition(":")
        if key in _STATUS_KEYS:
            status[key] = value.strip()
    mounts = []
    for line in _read("/proc/self/mountinfo").splitlines():
        fields = line.split(" ")
        if len(fields) > 5:
            sep = fields.index("-") if "-" in fields else len(fields) - 3
            mounts.append({"path": fields[4], "options": fields[5], "fstype": fields[sep + 1]})
    return {
        "status": status,
        "uid_map": " ".join(_read("/proc/self/uid_map").split()),
        "gid_map": " ".join(_read("/proc/self/gid_map").split()),
        "setgroups": _read("/proc/self/setgroups").strip(),
        "hostname": os.uname().nodename,
        "mounts": mounts,
    }
