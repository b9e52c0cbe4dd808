"""Control groups: one cgroup per job under sandboxd's own subtree, v2 first, v1 as fallback.

The spawner creates the job's cgroup before it releases the child, writes the limits,
places the child (the job's init) in it, and after the job reads the counters, kills any
straggler and removes the cgroup. Nothing outside ``<hierarchy>/<base>/`` is ever written.

Layout: ``<hierarchy>/<base>/<instance>/<job>`` where ``<instance>`` names the spawner
(``spawner-<pid>-<starttime>``) so that a later start can tell the leftovers of a crashed
sandboxd from a live one's (``sweep``).

Backends are chosen by probing ``/proc/self/mountinfo`` (``detect``):
- v2: a cgroup2 hierarchy with the controllers a policy needs in ``cgroup.controllers``
  (as root at the hierarchy's root; rootless in a delegated subtree — see ``doctor``);
- v1: the ``memory``, ``pids``, ``cpu``, ``cpuacct`` and ``freezer`` hierarchies.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass, field

DEFAULT_BASE = "sandboxd"
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "freezer")
CFS_PERIOD_US = 100_000


class CgroupUnavailable(Exception):
    """The host cannot give what the policy asks of cgroups; the message says why."""


@dataclass(frozen=True)
class CgroupLimits:
    """What the cgroup enforces; None: not limited."""

    memory_bytes: int | None = None
    pids: int | None = None
    cpus: float | None = None  # CPU bandwidth in cores

    def controllers(self, version: str) -> set[str]:
        """The controllers these limits need (a host without them cannot enforce them)."""
        wanted = set()
        if self.memory_bytes is not None:
            wanted.add("memory")
        if self.pids is not None:
            wanted.add("pids")
        if self.cpus is not None:
            wanted.add("cpu")
        if version == "v1":
            wanted |= {"cpuacct", "freezer"}  # CPU accounting and a race-free kill
        return wanted


# Used for accounting (peak memory, OOM kills, pids) whenever the host has them.
# cpu too, so that a pre-made cgroup can take the CPU quota a job's request adds.
ACCOUNTING = {"v1": {"memory", "pids", "cpu", "cpuacct", "freezer"}, "v2": {"memory", "pids", "cpu"}}


@dataclass
class Usage:
    """Counters read after the job, each with the file it came from."""

    cpu_user_s: float | None = None
    cpu_sys_s: float | None = None
    cpu_total_s: float | None = None
    memory_peak_bytes: int | None = None
    pids_peak: int | None = None
    oom_kills: int | None = None
    pids_limit_hits: int | None = None
    sources: dict[str, str] = field(default_factory=dict)


def _write(path: str, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def _read(path: str) -> str:
    with open(path) as handle:
        return handle.read()


def _keyed(path: str) -> dict[str, int]:
    values = {}
    for line in _read(path).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            values[parts[0]] = int(parts[1])
    return values


def _mountinfo() -> list[tuple[str, str, str]]:
    """(mount point, fstype, super options) of every cgroup mount."""
    mounts = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            left, _, right = line.partition(" - ")
            fields, rest = left.split(), right.split()
            if len(rest) >= 3 and rest[0] in ("cgroup", "cgroup2"):
                mounts.append((fields[4], rest[0], rest[2]))
    return mounts


def _starttime(pid: int) -> str | None:
    try:
        stat = _read(f"/proc/{pid}/stat")
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def instance_name() -> str:
    pid = os.getpid()
    return f"spawner-{pid}-{_starttime(pid)}"


def _instance_alive(name: str) -> bool:
    parts = name.split("-")
    if len(parts) != 3 or parts[0] != "spawner" or not parts[1].isdigit():
        return True  # not ours to judge: leave it
    return _starttime(int(parts[1])) == parts[2]


def _procs(directory: str) -> bool:
    """Whether any process is still in the cgroup (True when unsure)."""
    try:
        return bool(_read(f"{directory}/cgroup.procs").strip())
    except FileNotFoundError:
        return False
    except OSError:
        return True


def _kill_pids(procs_file: str) -> None:
    for _ in range(50):
        try:
            pids = [int(p) for p in _read(procs_file).split()]
        except OSError:
            return
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.002)


def _rmdir(path: str, attempts: int = 200) -> None:
    """Remove a cgroup directory; a just-killed task can keep it busy for a moment."""
    for _ in range(attempts):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            time.sleep(0.001)
    os.rmdir(path)


# --------------------------------------------------------------------------------- v2


class JobCgroupV2:
    version = "v2"

    def __init__(self, path: str, limits: CgroupLimits, controllers: frozenset[str] = frozenset()) -> None:
        self.path = path
        self.limits = limits
        self.controllers = controllers
        self.cpu_baseline_s = 0.0
        self.baseline = (0.0, 0.0, 0.0)

    def set_limits(self, limits: CgroupLimits) -> None:
        missing = limits.controllers("v2") - self.controllers
        if missing:
            raise CgroupUnavailable(f"the job's cgroup has no {', '.join(sorted(missing))} controller")
        path = self.path
        if limits.memory_bytes is not None:
            _write(f"{path}/memory.max", str(limits.memory_bytes))
            if os.path.exists(f"{path}/memory.swap.max"):
                _write(f"{path}/memory.swap.max", "0")
            if os.path.exists(f"{path}/memory.oom.group"):
                _write(f"{path}/memory.oom.group", "1")
        if limits.pids is not None:
            _write(f"{path}/pids.max", str(limits.pids))
        if limits.cpus is not None:
            _write(f"{path}/cpu.max", f"{int(limits.cpus * CFS_PERIOD_US)} {CFS_PERIOD_US}")
        self.limits = limits

    def cpu_times(self) -> tuple[float, float, float]:
        cpu = _keyed(f"{self.path}/cpu.stat")
        return cpu.get("user_usec", 0) / 1e6, cpu.get("system_usec", 0) / 1e6, cpu.get("usage_usec", 0) / 1e6

    def begin(self) -> None:
        """The job starts now: what the sandbox used while it was prepared is not the job's."""
        self.baseline = self.cpu_times()
        self.cpu_baseline_s = self.baseline[2]
        if os.path.exists(f"{self.path}/memory.peak"):
            try:
                _write(f"{self.path}/memory.peak", "reset")  # Linux >= 6.12
            except OSError:
                pass

    def place(self, pid: int) -> None:
        # Before the child is released: everything it ever starts is counted and limited here.
        _write(f"{self.path}/cgroup.procs", str(pid))

    def cpu_usage_s(self) -> float:
        return _keyed(f"{self.path}/cpu.stat")["usage_usec"] / 1e6

    def job_cpu_s(self) -> float:
        return self.cpu_usage_s() - self.cpu_baseline_s

    def freeze(self, frozen: bool) -> None:
        _write(f"{self.path}/cgroup.freeze", "1" if frozen else "0")

    def populated(self) -> bool:
        return _keyed(f"{self.path}/cgroup.events").get("populated", 0) == 1

    def usage(self) -> Usage:
        usage = Usage()
        user, system, total = (now - then for now, then in zip(self.cpu_times(), self.baseline))
        usage.cpu_user_s, usage.cpu_sys_s, usage.cpu_total_s = max(user, 0.0), max(system, 0.0), total
        usage.sources.update(cpu_user_s="cgroup2:cpu.stat", cpu_sys_s="cgroup2:cpu.stat",
                             cpu_total_s="cgroup2:cpu.stat usage_usec")
        if os.path.exists(f"{self.path}/memory.peak"):
            usage.memory_peak_bytes = int(_read(f"{self.path}/memory.peak"))
            usage.sources["memory_peak_bytes"] = "cgroup2:memory.peak"
        if os.path.exists(f"{self.path}/memory.events"):
            usage.oom_kills = _keyed(f"{self.path}/memory.events").get("oom_kill", 0)
            usage.sources["oom_kills"] = "cgroup2:memory.events"
        if os.path.exists(f"{self.path}/pids.peak"):
            usage.pids_peak = int(_read(f"{self.path}/pids.peak"))
            usage.sources["pids_peak"] = "cgroup2:pids.peak"
        if os.path.exists(f"{self.path}/pids.events"):
            usage.pids_limit_hits = _keyed(f"{self.path}/pids.events").get("max", 0)
            usage.sources["pids_limit_hits"] = "cgroup2:pids.events"
        return usage

    def kill_all(self) -> None:
        if os.path.exists(f"{self.path}/cgroup.kill"):
            _write(f"{self.path}/cgroup.kill", "1")
        else:  # before Linux 5.14
            _kill_pids(f"{self.path}/cgroup.procs")

    def remove(self) -> None:
        if _procs(self.path):
            self.kill_all()  # stragglers (after a normal end the PID namespace took them all)
        _rmdir(self.path)


class CgroupV2:
    version = "v2"

    def __init__(self, root: str, base: str = DEFAULT_BASE, *, delegated: bool = False) -> None:
        self.root = root
        self.base = f"{root}/{base}"
        self.instance = f"{self.base}/{instance_name()}"
        self.available = set(_read(f"{root}/cgroup.controllers").split())
        self.delegated = delegated  # ``root`` is a subtree delegated to us, not the hierarchy's root
        self._prepared = False

    def _prepare(self, controllers: set[str]) -> None:
        if not self._prepared:
            os.makedirs(self.instance, exist_ok=True)
            self._prepared = True
        enable = " ".join(f"+{c}" for c in sorted(controllers))
        if enable:
            if self.delegated:
                self._evacuate()
            # Each level must hand the controllers down to its children.
            for directory in (self.root, self.base):
                _write(f"{directory}/cgroup.subtree_control", enable)
            _write(f"{self.instance}/cgroup.subtree_control", enable)

    def _evacuate(self) -> None:
        """A delegated cgroup that hands controllers down may hold no process itself (the
        no-internal-process rule): move its processes (ours: the service, this spawner) into a
        leaf of their own first."""
        leaf = f"{self.root}/supervisor"
        os.makedirs(leaf, exist_ok=True)
        for _ in range(10):
            pids = _read(f"{self.root}/cgroup.procs").split()
            if not pids:
                return
            for pid in pids:
                try:
                    _write(f"{leaf}/cgroup.procs", pid)
                except OSError:
                    pass  # gone, or not ours to move

    def create(self, job_id: str, limits: CgroupLimits) -> JobCgroupV2:
        wanted = limits.controllers("v2")
        missing = wanted - self.available
        if missing:
            raise CgroupUnavailable(
                f"cgroup v2 at {self.root} does not offer {', '.join(sorted(missing))} "
                f"(it offers: {', '.join(sorted(self.available)) or 'none'})")
        wanted |= ACCOUNTING["v2"] & self.available
        self._prepare(wanted)
        path = f"{self.instance}/{job_id}"
        os.mkdir(path)
        job = JobCgroupV2(path, limits, frozenset(wanted))
        try:
            job.set_limits(limits)
        except OSError:
            job.remove()
            raise
        return job

    def sweep(self) -> list[str]:
        return _sweep([self.base])

    def close(self) -> None:
        try:
            _rmdir(self.instance, attempts=5)
        except OSError:
            pass


# --------------------------------------------------------------------------------- v1


class JobCgroupV1:
    version = "v1"

    def __init__(self, paths: dict[str, str], limits: CgroupLimits) -> None:
        self.paths = paths  # controller → directory
        self.limits = limits
        self.cpu_baseline_s = 0.0
        self.baseline = (0.0, 0.0, 0.0)

    def set_limits(self, limits: CgroupLimits) -> None:
        missing = limits.controllers("v1") - set(self.paths)
        if missing:
            raise CgroupUnavailable(f"the job's cgroup has no {', '.join(sorted(missing))} controller")
        if limits.memory_bytes is not None:
            memory = self.paths["memory"]
            _write(f"{memory}/memory.limit_in_bytes", str(limits.memory_bytes))
            if os.path.exists(f"{memory}/memory.memsw.limit_in_bytes"):
                # No swap: memory+swap capped at the same value.
                _write(f"{memory}/memory.memsw.limit_in_bytes", str(limits.memory_bytes))
            _write(f"{memory}/memory.swappiness", "0")
        if limits.pids is not None:
            _write(f"{self.paths['pids']}/pids.max", str(limits.pids))
        if limits.cpus is not None:
            _write(f"{self.paths['cpu']}/cpu.cfs_period_us", str(CFS_PERIOD_US))
            _write(f"{self.paths['cpu']}/cpu.cfs_quota_us", str(int(limits.cpus * CFS_PERIOD_US)))
        self.limits = limits

    def cpu_times(self) -> tuple[float, float, float]:
        acct = self.paths["cpuacct"]
        total = int(_read(f"{acct}/cpuacct.usage")) / 1e9
        if os.path.exists(f"{acct}/cpuacct.usage_user"):
            return int(_read(f"{acct}/cpuacct.usage_user")) / 1e9, int(_read(f"{acct}/cpuacct.usage_sys")) / 1e9, total
        ticks = os.sysconf("SC_CLK_TCK")
        stat = _keyed(f"{acct}/cpuacct.stat")
        return stat["user"] / ticks, stat["system"] / ticks, total

    def begin(self) -> None:
        """The job starts now: what the sandbox used while it was prepared is not the job's."""
        self.baseline = self.cpu_times()
        self.cpu_baseline_s = self.baseline[2]
        if "memory" in self.paths:
            _write(f"{self.paths['memory']}/memory.max_usage_in_bytes", "0")  # resets the peak

    def job_cpu_s(self) -> float:
        return self.cpu_usage_s() - self.cpu_baseline_s

    def place(self, pid: int) -> None:
        # Before the child is released: everything it ever starts is counted and limited here.
        for path in self.paths.values():
            _write(f"{path}/cgroup.procs", str(pid))

    def cpu_usage_s(self) -> float:
        return int(_read(f"{self.paths['cpuacct']}/cpuacct.usage")) / 1e9

    def usage(self) -> Usage:
        usage = Usage()
        acct = self.paths.get("cpuacct")
        if acct:
            user, system, total = (now - then for now, then in zip(self.cpu_times(), self.baseline))
            usage.cpu_user_s, usage.cpu_sys_s, usage.cpu_total_s = max(user, 0.0), max(system, 0.0), total
            source = ("cgroup1:cpuacct.usage_user/usage_sys" if os.path.exists(f"{acct}/cpuacct.usage_user")
                      else "cgroup1:cpuacct.stat")
            usage.sources.update(cpu_user_s=source, cpu_sys_s=source, cpu_total_s="cgroup1:cpuacct.usage")
        memory = self.paths.get("memory")
        if memory:
            usage.memory_peak_bytes = int(_read(f"{memory}/memory.max_usage_in_bytes"))
            usage.oom_kills = _keyed(f"{memory}/memory.oom_control").get("oom_kill", 0)
            usage.sources.update(memory_peak_bytes="cgroup1:memory.max_usage_in_bytes",
                                 oom_kills="cgroup1:memory.oom_control")
        pids = self.paths.get("pids")
        if pids and os.path.exists(f"{pids}/pids.events"):
            usage.pids_limit_hits = _keyed(f"{pids}/pids.events").get("max", 0)
            usage.sources["pids_limit_hits"] = "cgroup1:pids.events"
        if pids and os.path.exists(f"{pids}/pids.peak"):
            usage.pids_peak = int(_read(f"{pids}/pids.peak"))
            usage.sources["pids_peak"] = "cgroup1:pids.peak"
        return usage

    def kill_all(self) -> None:
        freezer = self.paths.get("freezer")
        procs = next(iter(self.paths.values()))
        if freezer is None:
            _kill_pids(f"{procs}/cgroup.procs")
            return
        # Frozen, a fork bomb cannot outrun the kill loop; SIGKILL reaches frozen tasks.
        _write(f"{freezer}/freezer.state", "FROZEN")
        try:
            _kill_pids(f"{freezer}/cgroup.procs")
        finally:
            _write(f"{freezer}/freezer.state", "THAWED")

    def remove(self) -> None:
        if not self.paths:
            return
        if _procs(next(iter(self.paths.values()))):
            self.kill_all()  # stragglers (after a normal end the PID namespace took them all)
        for path in self.paths.values():
            _rmdir(path)


class CgroupV1:
    version = "v1"

    def __init__(self, hierarchies: dict[str, str], base: str = DEFAULT_BASE) -> None:
        self.hierarchies = hierarchies  # controller → mount point
        self.base = base
        self.instance_name = instance_name()
        self.available = set(hierarchies)

    def _dir(self, controller: str, *parts: str) -> str:
        return "/".join([self.hierarchies[controller], self.base, self.instance_name, *parts])

    def create(self, job_id: str, limits: CgroupLimits) -> JobCgroupV1:
        wanted = limits.controllers("v1")
        missing = wanted - self.available
        if missing:
            raise CgroupUnavailable(f"cgroup v1 has no {', '.join(sorted(missing))} hierarchy mounted")
        wanted |= ACCOUNTING["v1"] & self.available
        paths: dict[str, str] = {}
        job = JobCgroupV1(paths, limits)
        try:
            for controller in sorted(wanted):
                path = self._dir(controller, job_id)
                os.makedirs(path)
                paths[controller] = path
            job.set_limits(limits)
        except OSError:
            job.remove()
            raise
        return job

    def sweep(self) -> list[str]:
        bases = [f"{mount}/{self.base}" for mount in self.hierarchies.values()]
        return _sweep(bases)

    def close(self) -> None:
        for controller in self.hierarchies:
            try:
                _rmdir(self._dir(controller), attempts=5)
            except OSError:
                pass


def _sweep(bases: list[str]) -> list[str]:
    """Kill and remove every job cgroup left by a spawner that is no longer running."""
    removed = []
    for base in bases:
        try:
            instances = os.listdir(base)
        except FileNotFoundError:
            continue
        for name in instances:
            instance = f"{base}/{name}"
            if not os.path.isdir(instance) or _instance_alive(name):
                continue
            for job in os.listdir(instance):
                path = f"{instance}/{job}"
                if os.path.isdir(path):
                    _kill_pids(f"{path}/cgroup.procs")
                    _rmdir(path)
                    removed.append(path)
            _rmdir(instance)
    return removed


# --------------------------------------------------------------------------------- probing


def _own_v2_cgroup(mounts: list[tuple[str, str, str]]) -> str | None:
    """This process's cgroup directory in the cgroup2 hierarchy, if one is mounted."""
    point = next((p for p, fstype, _ in mounts if fstype == "cgroup2"), None)
    if point is None:
        return None
    try:
        for line in _read("/proc/self/cgroup").splitlines():
            if line.startswith("0::"):
                return point + line[3:].rstrip("/") if line[3:] != "/" else point
    except OSError:
        return None
    return None


def detect(base: str = DEFAULT_BASE) -> CgroupV2 | CgroupV1 | None:
    """The backend this host can give this process, v2 preferred; None when none can.

    As root: the cgroup2 hierarchy at /sys/fs/cgroup, else the v1 hierarchies. Unprivileged:
    the cgroup this process is in, when it was delegated to us (systemd ``Delegate=yes``,
    ``systemd-run --user --scope -p Delegate=yes``, or an operator's chown): we may then create
    children there, and the controllers it offers are ours to use.
    """
    mounts = _mountinfo()
    for point, fstype, _options in mounts:
        if fstype == "cgroup2" and point == "/sys/fs/cgroup" and os.geteuid() == 0 and os.access(point, os.W_OK):
            return CgroupV2(point, base)
    if os.geteuid() != 0:
        own = _own_v2_cgroup(mounts)
        if own and os.access(own, os.W_OK) and os.access(f"{own}/cgroup.procs", os.W_OK):
            return CgroupV2(own, base, delegated=True)
    v1 = {}
    for point, fstype, options in mounts:
        if fstype != "cgroup":
            continue
        for controller in V1_CONTROLLERS:
            if controller in options.split(",") and os.access(point, os.W_OK):
                v1.setdefault(controller, point)
    if v1:
        return CgroupV1(v1, base)
    return None


def unified_hierarchy() -> str | None:
    """The cgroup2 mount of a hybrid host (``/sys/fs/cgroup/unified``), if any."""
    for point, fstype, _options in _mountinfo():
        if fstype == "cgroup2":
            return point
    return None
