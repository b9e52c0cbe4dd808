"""Capabilities: every set emptied, and securebits locked so none can come back.

Order matters: securebits and the bounding set need CAP_SETPCAP, so they go before capset(2)
empties the permitted and effective sets; ambient is cleared before that too.
"""

from __future__ import annotations

from sandboxd.jail import syscalls as sc
from sandboxd.jail.failure import failed

SECBIT_NOROOT = 1 << 0
SECBIT_NOROOT_LOCKED = 1 << 1
SECBIT_NO_SETUID_FIXUP = 1 << 2
SECBIT_NO_SETUID_FIXUP_LOCKED = 1 << 3
SECBIT_KEEP_CAPS_LOCKED = 1 << 5
SECBIT_NO_CAP_AMBIENT_RAISE = 1 << 6
SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED = 1 << 7
LOCKED_SECUREBITS = (SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP
                     | SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED
                     | SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED)


def _read_cap_last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as handle:
            return int(handle.read())
    except OSError:
        return 63  # dropping unknown caps is harmless: EINVAL ends the loop below


# Read at import, in the spawner: the child cannot see the host's /proc/sys after pivot_root.
CAP_LAST_CAP = _read_cap_last_cap()


def lock_down() -> None:
    """Securebits locked, bounding and ambient sets emptied: nothing can ever be regained.

    The effective set is untouched, so a sandbox that has done this while waiting for its
    job can still mount the job's work directory; ``drop_all`` finishes the job."""
    try:
        # uid 0 of the namespace must not regain capabilities on execve: lock root semantics off.
        sc.prctl(sc.PR_SET_SECUREBITS, LOCKED_SECUREBITS)
        for cap in range(CAP_LAST_CAP + 1):
            sc.prctl(sc.PR_CAPBSET_DROP, cap)
        sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError as exc:
        raise failed("lock capabilities down", exc) from None


def drop_all() -> None:
    """Every capability set empty (after ``lock_down``, or doing it first)."""
    if sc.prctl(sc.PR_CAPBSET_READ, 0) == 1:  # cap 0 still in the bounding set: not locked down yet
        lock_down()
    try:
        sc.capset_empty()
    except OSError as exc:
        raise failed("drop capabilities", exc) from None
