"""Syscall numbers and audit architectures, as the init saw them, to names for the result."""

from __future__ import annotations

from functools import lru_cache

# AUDIT_ARCH_* values (linux/audit.h) → (name in results, libseccomp's SCMP_ARCH_* name).
AUDIT_ARCHES = {
    0xC000003E: ("x86_64", "X86_64"),
    0x40000003: ("i386", "X86"),
    0xC00000B7: ("aarch64", "AARCH64"),
    0x40000028: ("arm", "ARM"),
}
X32_SYSCALL_BIT = 0x40000000


@lru_cache(maxsize=1024)
def describe(nr: int, audit_arch: int) -> dict:
    arch_name, token_name = AUDIT_ARCHES.get(audit_arch, (f"0x{audit_arch:08x}", ""))
    if arch_name == "x86_64" and nr & X32_SYSCALL_BIT:
        arch_name, token_name, nr_for_name = "x32", "X32", nr
    else:
        nr_for_name = nr
    name = None
    if token_name:
        try:
            import pyseccomp  # the supervisor already has it loaded (profiles are compiled here)

            resolved = pyseccomp.resolve_syscall(getattr(pyseccomp.Arch, token_name), nr_for_name)
            name = resolved.decode() if isinstance(resolved, bytes) else str(resolved)
        except (OSError, AttributeError, ValueError, TypeError):
            name = None
    return {"syscall": name or f"unknown({nr})", "nr": nr, "arch": arch_name}
