"""``sandboxd doctor``: report, for this host, which isolation layers are available.

Every check is a read-only probe. Nothing here writes a sysctl or changes a mount, and the
few probes that must *do* something to learn the answer clean up after themselves:

* namespace probes run in a short-lived ``sys.executable -I -c ...`` child that calls
  ``unshare(2)`` (and writes its own uid/gid maps and mounts a tmpfs inside its private
  mount namespace); the namespaces vanish when the child exits; each child is bounded by
  :data:`PROBE_TIMEOUT`;
* the cgroup probe creates one empty child cgroup (``sandboxd-doctor-<pid>-<random>``)
  and removes it immediately;
* the system-call probes call ``pidfd_open``/``close_range`` on harmless arguments and
  ``clone3``/``mount_setattr`` with arguments the kernel rejects before doing anything.

Each probe catches its own errors: a probe that cannot decide reports status
``"unknown"`` with the reason, so :func:`main` never prints a traceback.

File reads go through :data:`PROC` and :data:`SYS` (module-level roots) so tests can point
them at a fake tree.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import errno as _errno
import json
import os
import secrets
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from typing import Any, Callable, Literal

__all__ = ["Check", "run_checks", "render_table", "to_json", "main", "LANDLOCK_FEATURES"]

Status = Literal["ok", "missing", "degraded", "unknown"]

#: Root of the proc file system (tests point this at a fake tree).
PROC = "/proc"
#: Root of sysfs (tests point this at a fake tree).
SYS = "/sys"
#: Upper bound, in seconds, for each probe child.
PROBE_TIMEOUT = 10.0
#: Unprivileged identity used, when running as root, to probe what a normal user can do.
NOBODY = 65534

#: Landlock ABI version -> what it adds.
LANDLOCK_FEATURES: dict[int, str] = {
    1: "fs",
    2: "refer",
    3: "truncate",
    4: "tcp",
    5: "ioctl_dev",
    6: "scoping",
    7: "logging",
}
#: The default policy scopes abstract unix sockets and signals, which needs ABI 6.
LANDLOCK_DEFAULT_ABI = 6

_V1_WANTED = ("memory", "pids", "cpu", "cpuacct", "freezer")
_V1_KNOWN = frozenset(
    "cpu cpuacct cpuset memory devices freezer net_cls net_prio blkio perf_event hugetlb "
    "pids rdma misc".split()
)


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str
    needed_by_default: bool


# --------------------------------------------------------------------------- helpers
# Indirections that tests replace.
_geteuid: Callable[[], int] = os.geteuid


def _landlock_abi() -> int:
    from sandboxd.jail.landlock import abi_version

    return abi_version()


def _proc(*parts: str) -> str:
    return os.path.join(PROC, *parts)


def _sys(*parts: str) -> str:
    return os.path.join(SYS, *parts)


def _read(path: str) -> str | None:
    """File contents, stripped; ``None`` when the file does not exist."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def _read_int(path: str) -> int | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return None


def _err(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno:
        return f"{_errno.errorcode.get(e.errno, e.errno)} ({os.strerror(e.errno)})"
    return f"{type(e).__name__}: {e}"


def _errname(num: int) -> str:
    return _errno.errorcode.get(num, str(num))


# Code run in a probe child: optionally drop to an unprivileged uid, unshare, write the
# uid/gid maps, optionally mount a tmpfs inside the new (private) mount namespace.
_PROBE_CODE = r"""
import json, os, sys
res = {"ok": False, "stage": "import"}
try:
    pkgroot, flags, drop, do_mount = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    sys.path.insert(0, pkgroot)
    from sandboxd.jail import syscalls as sc
    if drop >= 0:
        res["stage"] = "drop"
        os.setgroups([])
        os.setgid(drop)
        os.setuid(drop)
        sc.prctl(4, 1)  # PR_SET_DUMPABLE: the uid change cleared it, hiding /proc/self/*
    uid, gid = os.geteuid(), os.getegid()
    res["stage"] = "unshare"
    sc.unshare(flags)
    if flags & sc.CLONE_NEWUSER:
        res["stage"] = "setgroups"
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        res["stage"] = "uid_map"
        with open("/proc/self/uid_map", "w") as f:
            f.write("0 %d 1" % uid)
        res["stage"] = "gid_map"
        with open("/proc/self/gid_map", "w") as f:
            f.write("0 %d 1" % gid)
    if do_mount and flags & sc.CLONE_NEWNS:
        res["stage"] = "mount"
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        target = "/tmp" if os.path.isdir("/tmp") else "/"
        sc.mount("tmpfs", target, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "size=64k")
    res["stage"] = "done"
    res["ok"] = True
except OSError as e:
    res["errno"] = e.errno
    res["error"] = str(e)
except BaseException as e:
    res["error"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(res))
"""


def _run_probe(flags: int, *, drop_to: int = -1, mount: bool = False) -> dict[str, Any]:
    """Run the unshare probe in a child process; returns its JSON report.

    Keys: ``ok`` (bool), ``stage`` (where it stopped), and on failure ``errno``/``error``.
    """
    pkgroot = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-I", "-c", _PROBE_CODE, pkgroot, str(flags), str(drop_to),
           "1" if mount else "0"]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "stage": "timeout", "error": f"probe timed out after {PROBE_TIMEOUT}s"}
    except OSError as e:
        return {"ok": False, "stage": "spawn", "error": _err(e)}
    lines = proc.stdout.strip().splitlines()
    try:
        res = json.loads(lines[-1])
        if not isinstance(res, dict):
            raise ValueError("not an object")
        return res
    except (IndexError, ValueError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"ok": False, "stage": "spawn", "error": f"probe exit {proc.returncode}: {tail}"}


# Tests replace this with a fake.
_probe: Callable[..., dict[str, Any]] = _run_probe


def _describe(res: dict[str, Any]) -> str:
    if res.get("ok"):
        return "ok"
    num = res.get("errno")
    what = _errname(num) if isinstance(num, int) else res.get("error", "failed")
    return f"failed at {res.get('stage', '?')}: {what}"


def _hard_failure(res: dict[str, Any]) -> bool:
    """The probe itself could not run (timeout, spawn, import): the answer is unknown."""
    return res.get("stage") in ("timeout", "spawn", "import", "drop")


# --------------------------------------------------------------------------- user namespaces
_APPARMOR_FIX = (
    "AppArmor blocks unprivileged user namespaces "
    "(kernel.apparmor_restrict_unprivileged_userns=1). Either give sandboxd an AppArmor "
    "profile that allows them, e.g. /etc/apparmor.d/sandboxd:\n"
    "    abi <abi/4.0>,\n"
    "    include <tunables/global>\n"
    "    profile sandboxd /usr/local/bin/sandboxd flags=(unconfined) {\n"
    "      userns,\n"
    "    }\n"
    "then `apparmor_parser -r /etc/apparmor.d/sandboxd` (use the real path of the sandboxd "
    "binary; a profile attached to the Python interpreter would allow every Python "
    "program); or disable the restriction host-wide with `sysctl -w "
    "kernel.apparmor_restrict_unprivileged_userns=0` (persist in /etc/sysctl.d/). The "
    "sysctl costs the whole host the protection: every unprivileged program can again "
    "create user namespaces and reach kernel code (netfilter, mounts of some file "
    "systems, ...) otherwise reserved to root, the usual path of local privilege "
    "escalation exploits."
)
_UNCONFINED_FIX = (
    "kernel.apparmor_restrict_unprivileged_unconfined=1 also stops unconfined processes "
    "from changing into a profile that allows userns (aa-exec tricks); a dedicated "
    "profile attached to the sandboxd binary path (above) is still honoured."
)
_MAX_USERNS_FIX = (
    "User namespaces are disabled (user.max_user_namespaces=0). Enable them with "
    "`sysctl -w user.max_user_namespaces=15000` and persist it in "
    "/etc/sysctl.d/99-sandboxd.conf."
)
_USERNS_CLONE_FIX = (
    "Unprivileged user namespaces are disabled by the Debian/Ubuntu knob "
    "kernel.unprivileged_userns_clone=0. Enable with `sysctl -w "
    "kernel.unprivileged_userns_clone=1` (persist in /etc/sysctl.d/). This lets every "
    "unprivileged program create user namespaces."
)


def check_user_namespaces() -> Check:
    from sandboxd.jail.syscalls import CLONE_NEWNS, CLONE_NEWUSER

    name, needed = "user namespaces", True
    max_ns = _read_int(_proc("sys", "user", "max_user_namespaces"))
    clone = _read_int(_proc("sys", "kernel", "unprivileged_userns_clone"))
    aa = _read_int(_proc("sys", "kernel", "apparmor_restrict_unprivileged_userns"))
    aa_unconf = _read_int(_proc("sys", "kernel", "apparmor_restrict_unprivileged_unconfined"))
    root = _geteuid() == 0

    facts = []
    if max_ns is not None:
        facts.append(f"max_user_namespaces={max_ns}")
    if clone is not None:
        facts.append(f"unprivileged_userns_clone={clone}")
    if aa is not None:
        facts.append(f"apparmor_restrict_unprivileged_userns={aa}")
    if aa_unconf is not None:
        facts.append(f"apparmor_restrict_unprivileged_unconfined={aa_unconf}")

    # Knobs that block only unprivileged callers.
    unpriv_blocks: list[str] = []
    unpriv_fixes: list[str] = []
    if clone == 0:
        unpriv_blocks.append("unprivileged_userns_clone=0")
        unpriv_fixes.append(_USERNS_CLONE_FIX)
    if aa == 1:
        unpriv_blocks.append("AppArmor restricts unprivileged userns")
        unpriv_fixes.append(_APPARMOR_FIX)
        if aa_unconf == 1:
            unpriv_fixes.append(_UNCONFINED_FIX)

    if max_ns == 0:
        return Check(name, "missing", "; ".join(facts + ["user namespaces disabled"]),
                     "\n".join([_MAX_USERNS_FIX] + unpriv_fixes), needed)

    probe = _probe(CLONE_NEWUSER)
    facts.append(f"unshare(CLONE_NEWUSER) as uid {_geteuid()}: {_describe(probe)}")
    if not probe.get("ok"):
        if _hard_failure(probe):
            return Check(name, "unknown", "; ".join(facts), "Re-run `sandboxd doctor`; the "
                         "probe child could not run.", needed)
        fixes = unpriv_fixes if not root else []
        if not fixes:
            fixes = ["unshare(CLONE_NEWUSER) fails: the kernel lacks CONFIG_USER_NS, or a "
                     "seccomp filter (container runtime) or an LSM denies it. Run sandboxd "
                     "on the host or in a container started with user namespaces allowed."]
        return Check(name, "missing", "; ".join(facts), "\n".join(fixes), needed)

    # Creating the namespace is not enough: AppArmor's restriction lets unshare succeed
    # and then denies every capability inside. A tmpfs mount in a private mount
    # namespace shows whether the capabilities are real. As root, this second probe runs
    # as an unprivileged uid: rootless use is what the knobs above decide.
    caps_flags = CLONE_NEWUSER | CLONE_NEWNS
    if root:
        probe2 = _probe(caps_flags, drop_to=NOBODY, mount=True)
        facts.append(f"as uid {NOBODY} with a mount: {_describe(probe2)}")
    else:
        probe2 = _probe(caps_flags, mount=True)
        facts.append(f"mount inside: {_describe(probe2)}")
    if _hard_failure(probe2):
        facts.append("unprivileged probe inconclusive")
    elif not probe2.get("ok"):
        generic = ("Capabilities inside a new user namespace are denied for unprivileged "
                   "users (AppArmor/SELinux policy or a container's seccomp profile); "
                   "rootless sandboxd needs them.")
        fix = "\n".join(unpriv_fixes or [generic])
        if root:
            return Check(name, "degraded", "; ".join(facts + ["works as root only"]), fix,
                         needed)
        return Check(name, "missing", "; ".join(facts + unpriv_blocks), fix, needed)
    if unpriv_blocks:
        if root:
            return Check(name, "degraded", "; ".join(facts + unpriv_blocks),
                         "\n".join(unpriv_fixes), needed)
        # Passed although a knob should block it: e.g. an AppArmor profile already allows
        # userns for this interpreter. The sandboxd binary may be confined differently.
        facts.append("allowed for this interpreter despite: " + ", ".join(unpriv_blocks))
    return Check(name, "ok", "; ".join(facts), "", needed)


# --------------------------------------------------------------------------- all namespaces
def check_namespaces() -> Check:
    from sandboxd.jail import syscalls as sc

    name, needed = "other namespaces", True
    parts = [
        ("pid", sc.CLONE_NEWPID), ("mount", sc.CLONE_NEWNS), ("net", sc.CLONE_NEWNET),
        ("ipc", sc.CLONE_NEWIPC), ("uts", sc.CLONE_NEWUTS), ("cgroup", sc.CLONE_NEWCGROUP),
    ]
    flags = sc.CLONE_NEWUSER
    for _, f in parts:
        flags |= f
    label = "user+" + "+".join(n for n, _ in parts)
    res = _probe(flags, mount=True)
    facts = [f"unshare({label}) + tmpfs mount: {_describe(res)}"]
    if res.get("ok"):
        if _geteuid() == 0:
            res2 = _probe(flags, drop_to=NOBODY, mount=True)
            facts.append(f"as uid {NOBODY}: {_describe(res2)}")
            if not res2.get("ok") and not _hard_failure(res2):
                return Check(name, "degraded", "; ".join(facts), "Unprivileged users cannot "
                             "create the namespaces; see the user namespaces check.", needed)
        return Check(name, "ok", "; ".join(facts), "", needed)
    if _hard_failure(res):
        return Check(name, "unknown", "; ".join(facts), "Re-run `sandboxd doctor`; the "
                     "probe child could not run.", needed)
    if res.get("stage") == "unshare":
        # Find which namespace type is refused, each together with a user namespace.
        bad = [n for n, f in parts if not _probe(sc.CLONE_NEWUSER | f).get("ok")]
        if bad:
            facts.append("refused: " + ", ".join(bad))
            return Check(name, "missing", "; ".join(facts),
                         "The kernel lacks or forbids these namespace types: "
                         + ", ".join(bad) + ". Enable CONFIG_{PID,NET,IPC,UTS,CGROUP}_NS "
                         "in the kernel config, or run outside a container runtime whose "
                         "seccomp profile blocks unshare(2).", needed)
    return Check(name, "missing", "; ".join(facts),
                 "Creating the sandbox namespaces fails; fix the user namespaces check "
                 "first. A failure at `mount` means capabilities inside the new user "
                 "namespace are denied (AppArmor unprivileged_userns restriction, or a "
                 "seccomp/LSM policy of the surrounding container).", needed)


# --------------------------------------------------------------------------- cgroups
def _unescape(field: str) -> str:
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mountinfo() -> list[dict[str, str]]:
    text = _read(_proc("self", "mountinfo")) or ""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        try:
            sep = fields.index("-")
            mounts.append({
                "root": _unescape(fields[3]),
                "mountpoint": _unescape(fields[4]),
                "fstype": fields[sep + 1],
                "superopts": fields[sep + 3] if len(fields) > sep + 3 else "",
            })
        except (ValueError, IndexError):
            continue
    return mounts


def _self_cgroups() -> tuple[dict[str, str], str | None]:
    """(v1 controller -> path, v2 path) from /proc/self/cgroup."""
    v1: dict[str, str] = {}
    v2 = None
    for line in (_read(_proc("self", "cgroup")) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, ctrls, path = parts
        if hid == "0" and ctrls == "":
            v2 = path
        else:
            for c in ctrls.split(","):
                if c:
                    v1[c] = path
    return v1, v2


def _cg_dir(mountpoint: str, mount_root: str, path: str | None) -> str:
    if not path:
        return mountpoint
    if mount_root != "/" and (path == mount_root or path.startswith(mount_root + "/")):
        path = path[len(mount_root):]
    elif mount_root != "/":
        return mountpoint  # outside the mounted part (cgroup namespace): best effort
    full = os.path.join(mountpoint, path.lstrip("/"))
    return full if os.path.isdir(full) else mountpoint


def _try_mkdir(parent: str) -> tuple[bool, str]:
    """Create and remove an empty child cgroup under ``parent``; (worked, reason)."""
    if not os.access(parent, os.W_OK | os.X_OK):
        return False, "not writable"
    probe = os.path.join(parent, f"sandboxd-doctor-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.mkdir(probe)
    except OSError as e:
        return False, f"mkdir: {_errname(e.errno or 0)}"
    try:
        os.rmdir(probe)
    except OSError as e:
        return True, f"created but could not remove {probe}: {_errname(e.errno or 0)}"
    return True, "writable"


def cgroup_facts() -> dict[str, Any]:
    """What is mounted and usable, as plain data (used by :func:`check_cgroups`)."""
    mounts = _mountinfo()
    v1_paths, v2_path = _self_cgroups()
    v1: dict[str, dict[str, Any]] = {}
    v2: list[dict[str, Any]] = []
    for m in mounts:
        if m["fstype"] == "cgroup":
            ctrls = [o for o in m["superopts"].split(",") if o in _V1_KNOWN]
            for c in ctrls:
                if c in v1:
                    continue
                own = _cg_dir(m["mountpoint"], m["root"], v1_paths.get(c))
                v1[c] = {"mountpoint": m["mountpoint"], "own": own}
        elif m["fstype"] == "cgroup2":
            if any(x["mountpoint"] == m["mountpoint"] for x in v2):
                continue
            mp = m["mountpoint"]
            root_ctrls = (_read(os.path.join(mp, "cgroup.controllers")) or "").split()
            subtree = (_read(os.path.join(mp, "cgroup.subtree_control")) or "").split()
            own = _cg_dir(mp, m["root"], v2_path)
            own_ctrls = (_read(os.path.join(own, "cgroup.controllers")) or "").split()
            v2.append({"mountpoint": mp, "controllers": root_ctrls, "subtree_control": subtree,
                       "own": own, "own_controllers": own_ctrls})
    unified_at_root = any(x["mountpoint"] == "/sys/fs/cgroup" for x in v2)
    if v1 and v2:
        mode = "hybrid"
    elif v2:
        mode = "unified" if unified_at_root else "v2"
    elif v1:
        mode = "legacy"
    else:
        mode = "none"

    uid = _geteuid()
    for c, info in v1.items():
        if c in _V1_WANTED:
            info["writable"], info["why"] = _try_mkdir(info["own"])
    memsw = None
    if "memory" in v1:
        mem = v1["memory"]
        memsw = any(os.path.exists(os.path.join(d, "memory.memsw.limit_in_bytes"))
                    for d in (mem["own"], mem["mountpoint"]))
    for info in v2:
        info["writable"], info["why"] = _try_mkdir(info["own"])
        delegated = None
        if uid != 0:
            svc = os.path.join(info["mountpoint"], "user.slice", f"user-{uid}.slice",
                               f"user@{uid}.service")
            try:
                if os.stat(svc).st_uid == uid:
                    delegated = svc
            except OSError:
                pass
        info["user_service_delegated"] = delegated
    return {"mode": mode, "v1": v1, "v2": v2, "memsw": memsw, "uid": uid}


def check_cgroups() -> Check:
    name, needed = "cgroups", False
    f = cgroup_facts()
    v1, v2, mode = f["v1"], f["v2"], f["mode"]
    facts = [f"mode={mode}"]
    fixes: list[str] = []
    if mode == "none":
        return Check(name, "missing", "no cgroup file system mounted",
                     "Mount cgroup2: `mount -t cgroup2 none /sys/fs/cgroup` (systemd does "
                     "this at boot). Resource limits are unavailable until then.", needed)

    usable: list[str] = []
    if v1:
        mounted = [c for c in _V1_WANTED if c in v1]
        writable = [c for c in mounted if v1[c].get("writable")]
        missing_v1 = [c for c in _V1_WANTED if c not in v1]
        facts.append("v1 mounted: " + (",".join(mounted) or "none")
                     + "; writable: " + (",".join(writable) or "none"))
        if f["memsw"] is not None:
            facts.append("memsw: " + ("yes" if f["memsw"] else "no"))
        if {"memory", "pids"} <= set(writable):
            usable.append("v1")
        if missing_v1:
            fixes.append("v1 controllers not mounted: " + ", ".join(missing_v1) + " (mount "
                         "with e.g. `mount -t cgroup -o pids cgroup /sys/fs/cgroup/pids`, or "
                         "move to cgroup v2).")
        not_writable = [c for c in mounted if c not in writable]
        if not_writable:
            fixes.append("v1 controllers not writable by uid %d: %s. As root, create a "
                         "sub-cgroup in each hierarchy and chown it (and its tasks/"
                         "cgroup.procs files) to this user, e.g. `cgcreate -a USER -t USER "
                         "-g memory,pids:sandboxd`." % (f["uid"], ", ".join(not_writable)))
        if f["memsw"] is False:
            fixes.append("memory.memsw.* is absent, so swap cannot be limited: boot with "
                         "`swapaccount=1` (kernel with CONFIG_MEMCG_SWAP).")
    for info in v2:
        ctrls = info["controllers"]
        own_ctrls = info["own_controllers"]
        facts.append(
            f"cgroup2 at {info['mountpoint']}: controllers={','.join(ctrls) or 'none'}, "
            f"subtree_control={','.join(info['subtree_control']) or 'none'}, own cgroup "
            f"{'writable' if info['writable'] else 'not writable (' + info['why'] + ')'}"
        )
        if info.get("user_service_delegated"):
            facts.append(f"delegated: {info['user_service_delegated']}")
        has = set(own_ctrls or ctrls)
        if info["writable"] and {"memory", "pids"} <= has:
            usable.append("v2")
        elif info["mountpoint"] == "/sys/fs/cgroup" or not v1:
            if not info["writable"]:
                fixes.append(
                    "No delegated cgroup v2 subtree for this user. Run sandboxd inside one: "
                    "`systemd-run --user --scope -p Delegate=yes sandboxd ...`, or from a "
                    "unit with `Delegate=yes` (for all users: `systemctl edit user@.service` "
                    "-> [Service] Delegate=memory pids cpu io).")
            missing_ctrls = [c for c in ("memory", "pids", "cpu") if c not in has]
            if missing_ctrls:
                fixes.append(
                    "cgroup v2 controllers not available here: " + ", ".join(missing_ctrls)
                    + ". Enable them in each ancestor's cgroup.subtree_control, e.g. `echo "
                    "'+memory +pids +cpu' > /sys/fs/cgroup/cgroup.subtree_control` (a "
                    "controller bound to a v1 hierarchy cannot be enabled on v2: boot with "
                    "`systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all`).")
    detail = "; ".join(facts)
    if usable:
        return Check(name, "ok", detail + f"; limits via {'+'.join(usable)}",
                     "\n".join(fixes) if f["memsw"] is False else "", needed)
    return Check(name, "degraded", detail + "; no writable memory+pids controllers",
                 "\n".join(fixes) or "No usable memory+pids controllers.", needed)


# --------------------------------------------------------------------------- Landlock
def check_landlock() -> Check:
    name, needed = "landlock", True
    try:
        abi = _landlock_abi()
    except Exception as e:  # noqa: BLE001 - reported, not raised
        return Check(name, "unknown", f"landlock_create_ruleset(VERSION) failed: {_err(e)}",
                     "Check the kernel log; Landlock may be disabled or blocked by seccomp.",
                     needed)
    if abi <= 0:
        lsm = None
        try:
            lsm = _read(_sys("kernel", "security", "lsm"))
        except OSError:
            lsm = None
        if lsm is None:
            detail = "ABI 0: Landlock unsupported or disabled (/sys/kernel/security/lsm unreadable)"
            boot = "lsm=<current list>,landlock"
            extra = (" Read the current list with `cat /sys/kernel/security/lsm` (mount it "
                     "first if needed: `mount -t securityfs securityfs /sys/kernel/security`)"
                     "; keep every LSM already there and append landlock.")
        else:
            detail = f"ABI 0: Landlock unsupported or disabled; active LSMs: {lsm}"
            cur = [x for x in lsm.split(",") if x and x != "landlock"]
            boot = "lsm=" + ",".join(cur + ["landlock"])
            extra = ""
        return Check(name, "missing", detail,
                     f"Boot with `{boot}` on the kernel command line (e.g. add it to "
                     "GRUB_CMDLINE_LINUX in /etc/default/grub, then `update-grub` and "
                     "reboot); the kernel must be built with CONFIG_SECURITY_LANDLOCK=y "
                     f"(Linux >= 6.12 gives ABI >= {LANDLOCK_DEFAULT_ABI})." + extra, needed)
    feats = [v for k, v in LANDLOCK_FEATURES.items() if k <= abi]
    detail = f"ABI {abi}: " + ", ".join(feats)
    if abi < LANDLOCK_DEFAULT_ABI:
        lacking = [v for k, v in LANDLOCK_FEATURES.items() if abi < k <= LANDLOCK_DEFAULT_ABI]
        return Check(name, "degraded", detail + "; lacks " + ", ".join(lacking),
                     f"The default policy scopes abstract unix sockets and signals, which "
                     f"needs Landlock ABI >= {LANDLOCK_DEFAULT_ABI} (Linux 6.12+). Upgrade "
                     "the kernel, or use a policy that does not scope.", needed)
    return Check(name, "ok", detail + " (default policy scoping needs ABI >= "
                 f"{LANDLOCK_DEFAULT_ABI})", "", needed)


# --------------------------------------------------------------------------- seccomp
class _ScmpVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


def _libseccomp_version() -> str | None:
    try:
        lib = ctypes.CDLL("libseccomp.so.2")
        fn = lib.seccomp_version
        fn.restype = ctypes.POINTER(_ScmpVersion)
        v = fn()
        if not v:
            return None
        return f"{v.contents.major}.{v.contents.minor}.{v.contents.micro}"
    except (OSError, AttributeError):
        return None


def check_seccomp() -> Check:
    name, needed = "seccomp", True
    status_text = _read(_proc("self", "status")) or ""
    mode = None
    for line in status_text.splitlines():
        if line.startswith("Seccomp:"):
            mode = line.split(":", 1)[1].strip()
    actions_raw = _read(_proc("sys", "kernel", "seccomp", "actions_avail"))
    actions = (actions_raw or "").split()
    facts: list[str] = []
    problems: list[str] = []
    fixes: list[str] = []
    if mode is None:
        problems.append("no Seccomp: field in /proc/self/status")
        fixes.append("The kernel lacks CONFIG_SECCOMP/CONFIG_SECCOMP_FILTER; use a kernel "
                     "built with them (every distribution kernel is).")
    else:
        facts.append(f"kernel support (this process: mode {mode})")
    if actions_raw is None:
        if mode is not None:
            problems.append("no /proc/sys/kernel/seccomp/actions_avail")
            fixes.append("Kernel too old for SECCOMP_RET_KILL_PROCESS (needs Linux 4.14+).")
    else:
        facts.append("actions: " + ",".join(actions))
        need = [a for a in ("kill_process", "errno", "allow") if a not in actions]
        if need:
            problems.append("missing actions: " + ",".join(need))
            fixes.append("Kernel lacks seccomp actions " + ",".join(need) + "; upgrade to "
                         "Linux 4.14+.")
    try:
        import pyseccomp  # noqa: PLC0415 - optional dependency probed on purpose

        api = pyseccomp.get_api()
        facts.append(f"pyseccomp {getattr(pyseccomp, '__version__', '?')} (API level {api})")
        if api < 3:
            problems.append(f"libseccomp API level {api} < 3")
            fixes.append("libseccomp's API level is below 3 (no KILL_PROCESS): install "
                         "libseccomp >= 2.4 (`apt install libseccomp2`).")
    except Exception as e:  # noqa: BLE001
        problems.append(f"pyseccomp unusable: {_err(e)}")
        fixes.append("Install the policy compiler's binding: `pip install pyseccomp` and "
                     "the library `apt install libseccomp2`.")
    ver = _libseccomp_version()
    facts.append(f"libseccomp {ver}" if ver else "libseccomp version unknown")
    if problems:
        return Check(name, "missing", "; ".join(problems + facts), "\n".join(fixes), needed)
    return Check(name, "ok", "; ".join(facts), "", needed)


# --------------------------------------------------------------------------- syscalls
def _syscall_check(name: str, needed: bool, call: Callable[[], str], present: set[int],
                   kernel: str) -> Check:
    """``call`` returns a detail string on success or raises OSError.

    An errno in ``present`` means the kernel knows the system call (the probe used bad
    arguments on purpose); ENOSYS means it does not; anything else is reported as unknown.
    """
    try:
        return Check(name, "ok", call(), "", needed)
    except OSError as e:
        num = e.errno or 0
        if num in present:
            return Check(name, "ok", f"present (probe got {_errname(num)} as expected)", "",
                         needed)
        if num == _errno.ENOSYS:
            return Check(name, "missing", "ENOSYS: not implemented or filtered to ENOSYS",
                         f"Needs {kernel}. If the kernel is new enough, a container "
                         "runtime's seccomp profile is hiding it: run on the host or relax "
                         "that profile.", needed)
        if num == _errno.EPERM:
            return Check(name, "unknown", "EPERM: blocked by a seccomp filter or LSM",
                         "Run outside the restricting container/profile.", needed)
        return Check(name, "unknown", f"unexpected {_errname(num)}", "", needed)
    except Exception as e:  # noqa: BLE001
        return Check(name, "unknown", f"probe failed: {_err(e)}", "", needed)


def check_pidfd() -> Check:
    from sandboxd.jail import syscalls as sc

    def call() -> str:
        fd = sc.pidfd_open(os.getpid())
        os.close(fd)
        return "pidfd_open(own pid) works"

    return _syscall_check("pidfd", True, call, set(), "Linux 5.3+ (pidfd_open)")


def check_clone3() -> Check:
    from sandboxd.jail import syscalls as sc

    def call() -> str:
        # size 0 is below CLONE_ARGS_SIZE_VER0: the kernel refuses before cloning.
        sc.raw_syscall(sc.NR["clone3"], 0, 0)
        raise OSError(0, "clone3 accepted a zero-size argument")

    return _syscall_check("clone3", False, call, {_errno.EINVAL, _errno.E2BIG},
                          "Linux 5.3+ (clone3)")


def check_close_range() -> Check:
    from sandboxd.jail import syscalls as sc

    def call() -> str:
        sc.close_range(1000000, 1000001, 0)
        return "close_range on an unused range works"

    return _syscall_check("close_range", True, call, set(), "Linux 5.9+ (close_range)")


def check_mount_setattr() -> Check:
    from sandboxd.jail import syscalls as sc

    def call() -> str:
        # dfd -1, NULL path, invalid flags, NULL attr, size 0: always rejected.
        sc.raw_syscall(sc.NR["mount_setattr"], -1, 0, 0xFFFFFFFF, 0, 0)
        raise OSError(0, "mount_setattr accepted invalid arguments")

    return _syscall_check("mount_setattr", True, call,
                          {_errno.EINVAL, _errno.EBADF, _errno.EFAULT, _errno.ENOENT},
                          "Linux 5.12+ (mount_setattr)")


def check_no_new_privs() -> Check:
    from sandboxd.jail import syscalls as sc

    def call() -> str:
        v = sc.prctl(sc.PR_GET_NO_NEW_PRIVS)
        return f"PR_GET_NO_NEW_PRIVS supported (currently {v})"

    check = _syscall_check("no_new_privs", False, call, set(), "Linux 3.5+ (no_new_privs)")
    if check.status == "unknown" and "EINVAL" in check.detail:
        return Check("no_new_privs", "missing", "prctl(PR_GET_NO_NEW_PRIVS): EINVAL",
                     "Needs Linux 3.5+; seccomp and Landlock both depend on it.", False)
    return check


# --------------------------------------------------------------------------- driver
def check_stage_runner() -> Check:
    """The compiled stage runner: built and current, or the (slower) Python stages run."""
    from sandboxd import native

    name = "stage runner"
    choice = native.choose()
    if choice.kind == "native":
        return Check(name, "ok", f"compiled runner {choice.path}", "", False)
    if choice.kind == "python":
        return Check(name, "degraded", f"Python stages ({choice.reason})",
                     "Build the compiled runner: `make native` (needs a C compiler).", False)
    return Check(name, "missing", choice.reason, "Build it with `make native`, or unset SANDBOXD_STAGE_RUNNER.",
                 True)


_CHECKS: list[tuple[str, bool, Callable[[], Check]]] = [
    ("user namespaces", True, check_user_namespaces),
    ("other namespaces", True, check_namespaces),
    ("cgroups", False, check_cgroups),
    ("landlock", True, check_landlock),
    ("seccomp", True, check_seccomp),
    ("pidfd", True, check_pidfd),
    ("clone3", False, check_clone3),
    ("close_range", True, check_close_range),
    ("mount_setattr", True, check_mount_setattr),
    ("no_new_privs", False, check_no_new_privs),
    ("stage runner", False, check_stage_runner),
]


def run_checks() -> list[Check]:
    """Probe every layer; never raises."""
    out = []
    for name, needed, fn in _CHECKS:
        try:
            out.append(fn())
        except Exception as e:  # noqa: BLE001 - a probe bug must not hide the others
            out.append(Check(name, "unknown", f"probe error: {_err(e)}",
                             "Report this as a sandboxd bug.", needed))
    return out


def _all_needed_ok(checks: list[Check]) -> bool:
    return all(c.status == "ok" for c in checks if c.needed_by_default)


def render_table(checks: list[Check], width: int = 110) -> str:
    head = ("LAYER", "STATUS", "NEEDED", "DETAIL")
    w0 = max([len(head[0])] + [len(c.name) for c in checks])
    w1 = max([len(head[1])] + [len(c.status) for c in checks])
    w2 = len(head[2])
    indent = w0 + w1 + w2 + 6
    dwidth = max(30, width - indent)
    lines = [f"{head[0]:<{w0}}  {head[1]:<{w1}}  {head[2]:<{w2}}  {head[3]}"]
    for c in checks:
        wrapped = textwrap.wrap(c.detail, dwidth, break_on_hyphens=False) or [""]
        lines.append(f"{c.name:<{w0}}  {c.status:<{w1}}  "
                     f"{'yes' if c.needed_by_default else 'no':<{w2}}  {wrapped[0]}")
        lines.extend(" " * indent + more for more in wrapped[1:])
    bad = [c for c in checks if c.status != "ok"]
    if bad:
        lines += ["", "How to fix"]
        for c in bad:
            tag = "needed by the default policy" if c.needed_by_default else "optional"
            lines.append(f"* {c.name} ({c.status}, {tag}):")
            for para in (c.fix or "No fix known; see the detail above.").split("\n"):
                keep = para.startswith("    ")
                if keep:
                    lines.append("    " + para)
                else:
                    lines.extend(textwrap.wrap(para, width, initial_indent="    ",
                                               subsequent_indent="    ",
                                               break_on_hyphens=False))
    lines.append("")
    if _all_needed_ok(checks):
        lines.append("Result: every layer the default policy needs is available.")
    else:
        names = ", ".join(c.name for c in checks if c.needed_by_default and c.status != "ok")
        lines.append(f"Result: the default policy cannot run here; not ok: {names}.")
    return "\n".join(lines)


def to_json(checks: list[Check]) -> str:
    return json.dumps({"ok": _all_needed_ok(checks),
                       "checks": [dataclasses.asdict(c) for c in checks]}, indent=2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sandboxd doctor",
        description="Report which sandbox layers this host supports, and how to fix the "
                    "missing ones. Exit status 0 when every layer the default policy needs "
                    "is available.")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    checks = run_checks()
    try:
        print(to_json(checks) if args.json else render_table(checks))
    except BrokenPipeError:
        pass
    return 0 if _all_needed_ok(checks) else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
