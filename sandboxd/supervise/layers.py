"""The result's ``layers``: what was applied, from the child's read-back and the spawner's
comparison of namespaces — never from the plan alone."""

from __future__ import annotations

from typing import Any

CAP_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def describe(started: dict[str, Any], network: str) -> dict[str, Any]:
    ready = started.get("ready") or {}
    readback = ready.get("readback") or {}
    applied = ready.get("applied") or {}
    status = readback.get("status") or {}
    child_ns = ready.get("namespaces") or {}
    host_ns = started.get("host_namespaces") or {}
    namespaces = {
        name: child_ns.get(name) not in (None, "unreadable") and child_ns.get(name) != host_ns.get(name)
        for name in host_ns
    }
    caps = {name: status.get(name) for name in CAP_FIELDS}
    return {
        "namespaces": namespaces,
        "id_map": {
            "uid_map": readback.get("uid_map"),
            "gid_map": readback.get("gid_map"),
            "setgroups": readback.get("setgroups"),
            "rootless": (started.get("id_map") or {}).get("rootless"),
        },
        "capabilities": caps,
        "capabilities_empty": all(v is not None and int(v, 16) == 0 for v in caps.values()),
        "no_new_privs": status.get("NoNewPrivs") == "1",
        "seccomp_mode": int(status.get("Seccomp", "0") or 0),
        "seccomp": applied.get("seccomp"),
        "landlock": applied.get("landlock"),
        "network": network,
        "hostname": readback.get("hostname"),
        "mounts": readback.get("mounts"),
        "rlimits": applied.get("rlimits"),
        "cgroup": ready.get("cgroup"),
        "stage_ms": applied.get("stage_ms"),
        "runner": applied.get("runner"),
        "work": applied.get("work"),
    }
