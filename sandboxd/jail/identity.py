"""UTS namespace (hostname) and the job's session."""

from __future__ import annotations

import os

from sandboxd.jail import syscalls as sc
from sandboxd.jail.failure import failed


def set_hostname(hostname: str) -> None:
    try:
        # Needs CAP_SYS_ADMIN over the new UTS namespace: before the capabilities are dropped.
        sc.sethostname(hostname)
        sc.setdomainname("(none)")
    except OSError as exc:
        raise failed("set hostname", exc) from None


def new_session() -> None:
    """A new session with no controlling terminal: the job cannot reach a terminal of ours."""
    os.setsid()
