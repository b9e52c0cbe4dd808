"""Resource limits from the policy, set on the job's first process and inherited."""

from __future__ import annotations

import resource

from sandboxd.jail.failure import failed
from sandboxd.jail.plan import Rlimit

RESOURCES = {
    "nofile": resource.RLIMIT_NOFILE,
    "stack": resource.RLIMIT_STACK,
    "core": resource.RLIMIT_CORE,
    "fsize": resource.RLIMIT_FSIZE,
    "memlock": resource.RLIMIT_MEMLOCK,
    "msgqueue": resource.RLIMIT_MSGQUEUE,
    "cpu": resource.RLIMIT_CPU,
    "nproc": resource.RLIMIT_NPROC,
    "as": resource.RLIMIT_AS,
}
INFINITY = resource.RLIM_INFINITY


def apply(limits: tuple[Rlimit, ...]) -> dict[str, list[int]]:
    applied: dict[str, list[int]] = {}
    for limit in limits:
        try:
            resource.setrlimit(RESOURCES[limit.name], (limit.soft, limit.hard))
        except (OSError, ValueError) as exc:
            raise failed(f"setrlimit {limit.name}", exc if isinstance(exc, OSError) else OSError(22, str(exc))) from None
        applied[limit.name] = list(resource.getrlimit(RESOURCES[limit.name]))
    return applied
