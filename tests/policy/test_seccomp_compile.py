"""Compiler tests: real profiles compile; the compiled BPF is checked by a small cBPF interpreter."""

from __future__ import annotations

import errno
import struct
from pathlib import Path

import pytest

from sandboxd.policy.seccomp_compile import (
    CompiledFilter,
    compile_profile,
    effective_table,
    resolve_rules,
)
from sandboxd.policy.seccomp_profile import find_profile, load_profile, parse_profile

from tests.real_inputs import REAL_SECCOMP as REAL
from tests.real_inputs import REAL_SECCOMP_FILES as REAL_FILES
from tests.real_inputs import needs_real_seccomp as needs_real
x86_64_only = pytest.mark.skipif(__import__("os").uname().machine != "x86_64", reason="x86_64 syscall numbers")

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
RET_ALLOW = 0x7FFF0000
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000


def run_bpf(bpf: bytes, nr: int, args=(0, 0, 0, 0, 0, 0), arch: int = AUDIT_ARCH_X86_64) -> int:
    """Minimal classic-BPF interpreter over struct seccomp_data (independent of libseccomp)."""
    args = tuple(args) + (0,) * (6 - len(args))
    data = struct.pack("<iIQ6Q", nr, arch, 0, *[a & (2**64 - 1) for a in args])
    insns = [struct.unpack_from("<HBBI", bpf, off) for off in range(0, len(bpf), 8)]
    a = x = 0
    mem = [0] * 16
    pc = 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        cls = code & 0x07
        if cls == 0x00:  # LD
            mode = code & 0xE0
            a = struct.unpack_from("<I", data, k)[0] if mode == 0x20 else (k if mode == 0x00 else mem[k])
        elif cls == 0x01:  # LDX
            x = k if code & 0xE0 == 0x00 else mem[k]
        elif cls == 0x02:
            mem[k] = a
        elif cls == 0x03:
            mem[k] = x
        elif cls == 0x04:  # ALU
            src = x if code & 0x08 else k
            op = code & 0xF0
            a = {0x00: a + src, 0x10: a - src, 0x20: a * src, 0x40: a | src, 0x50: a & src,
                 0x60: a << src, 0x70: a >> src, 0x80: -a, 0xA0: a ^ src}[op] & 0xFFFFFFFF
        elif cls == 0x05:  # JMP
            op = code & 0xF0
            if op == 0x00:
                pc += k
                continue
            src = x if code & 0x08 else k
            cond = {0x10: a == src, 0x20: a > src, 0x30: a >= src, 0x40: bool(a & src)}[op]
            pc += jt if cond else jf
        elif cls == 0x06:  # RET
            return k if code & 0x18 == 0 else a
        elif cls == 0x07:
            if code == 0x07:
                x = a
            else:
                a = x
        else:  # pragma: no cover
            raise AssertionError(f"opcode {code:#x}")


def ERR(e: int) -> int:
    return RET_ERRNO | e


@needs_real
@pytest.mark.parametrize("path", REAL_FILES, ids=[p.name for p in REAL_FILES])
def test_real_profiles_compile(path: Path) -> None:
    c = compile_profile(load_profile(path))
    assert isinstance(c, CompiledFilter)
    assert len(c.bpf) % 8 == 0 and 0 < c.instructions <= 4096
    assert len(c.profile_hash) == 64
    assert not any("refused by libseccomp" in s.reason for s in c.skipped)


# Independent expectation for Docker's default profile (moby 2024) on x86_64, no capabilities,
# kernel >= 4.8. Written from Docker's documentation of the profile, not derived by the loader.
#   "allow": allowed whatever the arguments; "errno:N": always that errno;
#   "deny": falls to the default ERRNO(EPERM); anything else is a list of (args, result) probes.
DOCKER_EXPECT: dict[str, object] = {
    "read": "allow", "write": "allow", "openat": "allow", "close": "allow", "mmap": "allow",
    "execve": "allow", "fork": "allow", "vfork": "allow", "wait4": "allow", "futex": "allow",
    "rt_sigtimedwait": "allow", "timer_create": "allow", "arch_prctl": "allow", "modify_ldt": "allow",
    "ptrace": "allow", "process_vm_readv": "allow", "process_vm_writev": "allow",  # minKernel 4.8
    "io_uring_setup": "allow", "socketpair": "allow", "name_to_handle_at": "allow",
    "clone3": "errno:38",
    "mount": "deny", "umount2": "deny", "bpf": "deny", "keyctl": "deny", "add_key": "deny",
    "unshare": "deny", "setns": "deny", "reboot": "deny", "chroot": "deny", "init_module": "deny",
    "kexec_load": "deny", "perf_event_open": "deny", "open_by_handle_at": "deny",
    "settimeofday": "deny", "clock_settime": "deny", "syslog": "deny", "iopl": "deny", "acct": "deny",
    "kcmp": "deny", "pidfd_getfd": "deny", "userfaultfd": "deny", "pivot_root": "deny",
    "swapon": "deny", "quotactl": "deny", "fanotify_init": "deny", "vhangup": "deny", "mbind": "deny",
    "clone": [((0x11,), "allow"), ((0x10000000 | 0x11,), "deny"), ((0x20000,), "deny"), ((0x3D0F00,), "allow")],
    "personality": [((0,), "allow"), ((8,), "allow"), ((0x20000,), "allow"), ((0x20008,), "allow"),
                    ((0xFFFFFFFF,), "allow"), ((0x40000,), "deny"), ((1,), "deny")],
    "socket": [((2, 1, 0), "allow"), ((38, 5, 0), "allow"), ((40, 1, 0), "deny"), ((16, 3, 0), "allow")],
}
NR = {  # x86_64 numbers, from the kernel's syscall_64.tbl
    "read": 0, "write": 1, "openat": 257, "close": 3, "mmap": 9, "execve": 59, "fork": 57, "vfork": 58,
    "wait4": 61, "futex": 202, "rt_sigtimedwait": 128, "timer_create": 222, "arch_prctl": 158,
    "modify_ldt": 154, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
    "io_uring_setup": 425, "socketpair": 53, "name_to_handle_at": 303, "clone3": 435, "mount": 165,
    "umount2": 166, "bpf": 321, "keyctl": 250, "add_key": 248, "unshare": 272, "setns": 308,
    "reboot": 169, "chroot": 161, "init_module": 175, "kexec_load": 246, "perf_event_open": 298,
    "open_by_handle_at": 304, "settimeofday": 164, "clock_settime": 227, "syslog": 103, "iopl": 172,
    "acct": 163, "kcmp": 312, "pidfd_getfd": 438, "userfaultfd": 323, "pivot_root": 155, "swapon": 167,
    "quotactl": 179, "fanotify_init": 300, "vhangup": 153, "mbind": 237, "clone": 56,
    "personality": 135, "socket": 41,
}
_RES = {"allow": RET_ALLOW, "deny": ERR(errno.EPERM)}


@needs_real
@x86_64_only
@pytest.mark.parametrize("name", sorted(DOCKER_EXPECT))
def test_docker_default_effective_policy(name: str) -> None:
    c = _docker_compiled()
    exp = DOCKER_EXPECT[name]
    if isinstance(exp, str):
        want = ERR(int(exp[6:])) if exp.startswith("errno:") else _RES[exp]
        for args in [(0,) * 6, (0xFFFFFFFF, 1, 2, 3, 4, 5), (0x7E020000,) * 6]:
            assert run_bpf(c.bpf, NR[name], args) == want, (name, args)
    else:
        for args, res in exp:
            assert run_bpf(c.bpf, NR[name], args) == _RES[res], (name, args)


_cache: dict[str, CompiledFilter] = {}


def _docker_compiled(**kw) -> CompiledFilter:
    key = repr(sorted(kw.items()))
    if key not in _cache:
        _cache[key] = compile_profile(load_profile(REAL / "docker-default.json"), kernel=kw.pop("kernel", "6.1"), **kw)
    return _cache[key]


@needs_real
@x86_64_only
def test_docker_default_gates() -> None:
    old = _docker_compiled(kernel="4.4")
    assert run_bpf(old.bpf, NR["ptrace"]) == ERR(errno.EPERM)  # minKernel 4.8
    assert any(s.name == "ptrace" and "kernel >= 4.8" in s.reason for s in old.skipped)
    admin = _docker_compiled(capabilities=frozenset({"CAP_SYS_ADMIN"}))
    assert run_bpf(admin.bpf, NR["mount"]) == RET_ALLOW
    assert run_bpf(admin.bpf, NR["clone"], (0x10000000,)) == RET_ALLOW
    assert run_bpf(admin.bpf, NR["clone3"]) == RET_ALLOW  # excludes.caps: the ENOSYS rule is gone
    none = _docker_compiled()
    assert any(s.name == "mount" and s.reason == "needs CAP_SYS_ADMIN" for s in none.skipped)
    assert any(s.name == "s390_runtime_instr" for s in none.skipped)
    # foreign arch: i386 and x32 go to KILL_PROCESS
    assert run_bpf(none.bpf, 20, arch=AUDIT_ARCH_I386) == RET_KILL_PROCESS
    assert run_bpf(none.bpf, 0x40000000 | 39) == RET_KILL_PROCESS


@needs_real
def test_docker_default_table() -> None:
    table = dict(effective_table(load_profile(REAL / "docker-default.json"), "x86_64", kernel="6.1"))
    assert table["read"] == "ALLOW"
    assert table["clone3"] == "ERRNO(ENOSYS=38)"
    assert table["clone"] == "ALLOW if (arg0 & 0x7e020000) == 0x0; otherwise ERRNO(EPERM=1)"
    assert "mount" not in table and table["*"] == "ERRNO(EPERM=1) (default)"
    arm = dict(effective_table(load_profile(REAL / "docker-default.json"), "aarch64", kernel="6.1"))
    assert "arch_prctl" not in arm and "arm_fadvise64_64" not in arm  # arm64 has no such syscall


@needs_real
def test_podman_setns_conflict_first_unconditional_wins() -> None:
    p = load_profile(REAL / "podman-default.json")
    rules, skipped = resolve_rules(p, "x86_64")
    setns = [r for r in rules if r.name == "setns"]
    assert len(setns) == 1 and setns[0].action == "SCMP_ACT_ALLOW"
    assert any(s.name == "setns" and "shadowed" in s.reason for s in skipped)


def _p(rules, default="SCMP_ACT_ERRNO", **kw):
    return parse_profile({"defaultAction": default, "syscalls": rules, **kw}, "t")


@x86_64_only
def test_conflict_rules_deterministic() -> None:
    # later unconditional after conditionals replaces them; later conditional after unconditional ignored
    p = _p([
        {"names": ["getpid"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
        {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5},
        {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["gettid"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
        {"names": ["gettid"], "action": "SCMP_ACT_KILL_PROCESS", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
        {"names": ["getppid"], "action": "SCMP_ACT_ERRNO"},  # == default: dropped like runc does
        {"names": ["no_such_syscall", "socketcall"], "action": "SCMP_ACT_ALLOW"},
    ])
    c = compile_profile(p)
    assert run_bpf(c.bpf, 39, (1,)) == ERR(5)
    assert run_bpf(c.bpf, 186, (1,)) == RET_ALLOW
    reasons = {(s.name, s.rule): s.reason for s in c.skipped}
    assert reasons[("getpid", 0)].startswith("superseded by unconditional ERRNO(EIO=5)")
    assert reasons[("getpid", 2)].startswith("shadowed by unconditional")
    assert reasons[("gettid", 4)].startswith("conflicts with ALLOW")
    assert reasons[("getppid", 5)] == "same as the default action"
    assert reasons[("no_such_syscall", 6)].startswith("unknown to libseccomp")
    assert reasons[("socketcall", 6)] == "not a syscall on x86_64"
    assert compile_profile(p).bpf == c.bpf  # deterministic


@x86_64_only
def test_all_operators_and_actions() -> None:
    M = lambda op, v, v2=0: {"index": 1, "value": v, "valueTwo": v2, "op": op}  # noqa: E731
    p = _p([
        {"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [M("SCMP_CMP_NE", 7)]},
        {"names": ["write"], "action": "SCMP_ACT_ALLOW", "args": [M("SCMP_CMP_LT", 7)]},
        {"names": ["open"], "action": "SCMP_ACT_ALLOW", "args": [M("SCMP_CMP_LE", 7)]},
        {"names": ["close"], "action": "SCMP_ACT_ALLOW", "args": [M("SCMP_CMP_EQ", 7)]},
        {"names": ["stat"], "action": "SCMP_ACT_ALLOW", "args": [M("SCMP_CMP_GE", 7)]},
        {"names": ["fstat"], "action": "SCMP_ACT_ALLOW", "args": [M("SCMP_CMP_GT", 7)]},
        {"names": ["lstat"], "action": "SCMP_ACT_ALLOW", "args": [M("SCMP_CMP_MASKED_EQ", 0xF0, 0x30)]},
        {"names": ["poll"], "action": "SCMP_ACT_TRAP"},
        {"names": ["lseek"], "action": "SCMP_ACT_LOG"},
        {"names": ["mmap"], "action": "SCMP_ACT_TRACE", "errnoRet": 9},
        {"names": ["mprotect"], "action": "SCMP_ACT_KILL"},
        {"names": ["munmap"], "action": "SCMP_ACT_KILL_THREAD"},
        {"names": ["brk"], "action": "SCMP_ACT_KILL_PROCESS"},
        {"names": ["ioctl"], "action": "SCMP_ACT_NOTIFY"},
    ], flags=["SECCOMP_FILTER_FLAG_LOG"])
    c = compile_profile(p)
    assert c.log and c.needs_listener
    D = ERR(errno.EPERM)
    for nr, probes in {
        0: [(7, D), (6, RET_ALLOW)], 1: [(6, RET_ALLOW), (7, D)], 2: [(7, RET_ALLOW), (8, D)],
        3: [(7, RET_ALLOW), (8, D)], 4: [(7, RET_ALLOW), (6, D)], 5: [(8, RET_ALLOW), (7, D)],
        6: [(0x35, RET_ALLOW), (0x1_0000_0035, RET_ALLOW), (0x45, D)],
    }.items():
        for v, want in probes:
            assert run_bpf(c.bpf, nr, (0, v)) == want, (nr, v)
    assert run_bpf(c.bpf, 7) == 0x00030000  # TRAP
    assert run_bpf(c.bpf, 8) == 0x7FFC0000  # LOG
    assert run_bpf(c.bpf, 9) == 0x7FF00009  # TRACE(9)
    assert run_bpf(c.bpf, 10) == 0 and run_bpf(c.bpf, 11) == 0  # KILL == KILL_THREAD
    assert run_bpf(c.bpf, 12) == RET_KILL_PROCESS
    assert run_bpf(c.bpf, 16) == 0x7FC00000  # NOTIFY


@x86_64_only
@pytest.mark.parametrize("name", ["default", "judge", "compile"])
def test_shipped_profiles_compile(name: str) -> None:
    c = compile_profile(load_profile(find_profile(name)))
    assert c.arches == ("SCMP_ARCH_X86_64",)
    assert not any(("refused" in s.reason or "conflict" in s.reason or "shadowed" in s.reason) for s in c.skipped), c.skipped
    assert run_bpf(c.bpf, 20, arch=AUDIT_ARCH_I386) == RET_KILL_PROCESS
    assert run_bpf(c.bpf, 0x40000000 | 39) == RET_KILL_PROCESS
    assert run_bpf(c.bpf, 435) == ERR(errno.ENOSYS)  # clone3
    assert run_bpf(c.bpf, 101) == RET_KILL_PROCESS  # ptrace
    assert run_bpf(c.bpf, 16, (0, 0x5412)) == RET_KILL_PROCESS  # TIOCSTI
    assert run_bpf(c.bpf, 16, (0, 0x5401)) == RET_ALLOW  # TCGETS
    for sig in (128, 130, 61, 222, 223, 38, 37):  # rt_sigtimedwait rt_sigsuspend wait4 timer_* setitimer alarm
        assert run_bpf(c.bpf, sig) == RET_ALLOW, sig


@x86_64_only
def test_judge_threads_only() -> None:
    c = compile_profile(load_profile(find_profile("judge")))
    pthread_flags = 0x3D0F00
    fork_flags = 0x01200011
    assert run_bpf(c.bpf, 56, (pthread_flags,)) == RET_ALLOW
    assert run_bpf(c.bpf, 56, (fork_flags,)) == ERR(errno.EPERM)
    assert run_bpf(c.bpf, 56, (pthread_flags | 0x10000000,)) == ERR(errno.EPERM)
    assert run_bpf(c.bpf, 41, (2, 1, 0)) == ERR(errno.EPERM)  # socket
    assert run_bpf(c.bpf, 57) == ERR(errno.EPERM)  # fork


def test_hash_is_canonical() -> None:
    a = _p([{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [], "comment": ""}])
    b = _p([{"name": "read", "action": "SCMP_ACT_ALLOW"}])
    assert compile_profile(a).profile_hash == compile_profile(b).profile_hash
    c = _p([{"names": ["write"], "action": "SCMP_ACT_ALLOW"}])
    assert compile_profile(a).profile_hash != compile_profile(c).profile_hash


def test_foreign_arch_compile_refused() -> None:
    with pytest.raises(ValueError):
        compile_profile(_p([]), arch="s390x")
