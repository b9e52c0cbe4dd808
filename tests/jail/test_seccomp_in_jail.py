"""Seccomp inside real sandboxes: what the `default` profile stops, and the result naming it.

Each probe is one system call made by /usr/bin/python3 through ctypes, so nothing but the
filter stands between the call and the kernel. Killed calls must end the job with verdict
SECCOMP and the syscall named; errno calls must let the job go on.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.sandboxes import Runner

PY = "/usr/bin/python3"

PROBE = """
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
nr, args = int(sys.argv[1]), [int(a, 0) for a in sys.argv[2:]]
args += [0] * (6 - len(args))
print("calling", flush=True)
r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
print("returned", r, errno.errorcode.get(ctypes.get_errno(), "0") if r < 0 else "ok", flush=True)
"""

# (syscall, x86_64 number, arguments, expected): "kill" or the errno name the profile gives.
CASES = [
    ("unshare", 272, ["0x10000000"], "kill"),
    ("mount", 165, ["0", "0", "0", "0"], "kill"),
    ("keyctl", 250, ["0"], "kill"),
    ("bpf", 321, ["0", "0", "0"], "kill"),
    ("io_uring_setup", 425, ["1", "0"], "ENOSYS"),
    ("userfaultfd", 323, ["0"], "kill"),
    ("perf_event_open", 298, ["0", "0", "-1", "-1", "0"], "kill"),
    ("ptrace", 101, ["0", "0", "0", "0"], "kill"),
    ("socket", 41, ["38", "5", "0"], "EAFNOSUPPORT"),  # AF_ALG, SOCK_SEQPACKET
    ("ioctl", 16, ["0", "0x5412", "0"], "kill"),  # TIOCSTI on stdin
    ("clone", 56, ["0x10000011", "0", "0", "0", "0"], "EPERM"),  # CLONE_NEWUSER|SIGCHLD
    ("setns", 308, ["0", "0"], "kill"),
    ("clone3", 435, ["0", "0"], "ENOSYS"),
]


@pytest.mark.parametrize("name, nr, args, expected", CASES, ids=[c[0] for c in CASES])
def test_default_profile_stops_the_call(sandbox: Runner, name: str, nr: int, args: list[str], expected: str) -> None:
    outcome = sandbox.run(["run", "--", PY, "-c", PROBE, str(nr), *args])
    result = outcome.result
    assert outcome.stdout.startswith("calling"), outcome.stderr
    if expected == "kill":
        assert "returned" not in outcome.stdout, f"{name} was not killed: {outcome.stdout}"
        assert result["verdict"] == "SECCOMP", result
        assert result["seccomp"] == {"syscall": name, "nr": nr, "arch": "x86_64"}
        assert result["signal"] == 31 and outcome.returncode == 128 + 31
    else:
        assert f"returned -1 {expected}" in outcome.stdout, outcome.stdout
        assert result["verdict"] == "OK" and result["seccomp"] is None


def test_status_shows_a_filter(sandbox: Runner) -> None:
    outcome = sandbox.run(["run", "--", "grep", "^Seccomp:", "/proc/self/status"])
    assert outcome.stdout.split() == ["Seccomp:", "2"]


def test_a_killed_child_is_named_but_the_job_goes_on(sandbox: Runner) -> None:
    script = ("import os, ctypes\npid = os.fork()\nif pid == 0:\n"
              "    ctypes.CDLL(None).syscall(101, 0, 0, 0, 0)\n    os._exit(0)\n"
              "_, status = os.waitpid(pid, 0)\nprint('child signal', os.WTERMSIG(status))\n")
    outcome = sandbox.run(["run", "--", PY, "-c", script])
    assert outcome.returncode == 0 and "child signal 9" in outcome.stdout
    result = outcome.result
    assert result["verdict"] == "OK"
    assert result["denials"]["kills"] == [{"syscall": "ptrace", "nr": 101, "arch": "x86_64", "main": False}]


FOREIGN_ABI = {
    "i386": ('int main(void){ long r; puts("calling"); fflush(stdout);'
             ' __asm__ volatile("int $0x80" : "=a"(r) : "a"(20)); printf("returned %ld\\n", r); return 0; }',
             {"syscall": "getpid", "nr": 20, "arch": "i386"}),
    "x32": ('#include <unistd.h>\nint main(void){ puts("calling"); fflush(stdout);'
            ' long r = syscall(0x40000000 | 39); printf("returned %ld\\n", r); return 0; }',
            {"syscall": "getpid", "nr": 0x40000000 | 39, "arch": "x32"}),
}


@pytest.fixture(scope="module")
def foreign_abi_programs(tmp_path_factory) -> Path:
    directory = Path(tmp_path_factory.mktemp("abi"))
    for name, (source, _) in FOREIGN_ABI.items():
        (directory / f"{name}.c").write_text("#include <stdio.h>\n" + source)
        subprocess.run(["gcc", "-O0", "-o", str(directory / name), str(directory / f"{name}.c")], check=True)
    directory.chmod(0o755)  # the job is an unprivileged host id: it needs "other" rights here
    return directory


@pytest.mark.parametrize("abi", sorted(FOREIGN_ABI))
def test_foreign_syscall_abis_are_killed_and_named(root_sandbox: Runner, foreign_abi_programs: Path, abi: str) -> None:
    outcome = root_sandbox.run(["run", "--ro-bind", str(foreign_abi_programs), "/abi", "--", f"/abi/{abi}"])
    assert outcome.stdout.strip() == "calling", outcome.stdout
    assert outcome.result["verdict"] == "SECCOMP"
    assert outcome.result["seccomp"] == FOREIGN_ABI[abi][1]
