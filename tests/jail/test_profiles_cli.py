"""``sandboxd profile check|show`` through the real command line.

Bad input must give one line naming the file, the entry and the reason, and exit 2 with no
traceback; good profiles (the shipped ones and real ones from other projects, read in
place) load and compile, and the rules this host cannot use are named, not dropped silently.
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.host import host_lacks
from tests.real_inputs import REAL_SECCOMP_FILES, REPO, needs_real_seccomp

SHIPPED = sorted((REPO / "profiles").glob("*.json"))
OK_LINE = re.compile(r"^(?P<file>\S+): ok \((?P<hash>[0-9a-f]{64}), (?P<n>\d+) BPF instructions\)$")
SKIPPED_LINE = re.compile(r"^  skipped (?P<name>\S+) \(syscalls\[(?P<index>\d+)\]\): (?P<reason>.+)$")
on_x86_64 = pytest.mark.skipif(platform.machine() != "x86_64", reason="the expected tables are x86_64's")


def sandboxd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sandboxd", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})


def check_output_by_file(stdout: str) -> dict[str, list[re.Match]]:
    """``profile check`` output: each file's ok line followed by its skipped lines."""
    by_file: dict[str, list[re.Match]] = {}
    current = None
    for line in stdout.splitlines():
        ok = OK_LINE.match(line)
        if ok:
            current = ok["file"]
            by_file[current] = []
            continue
        skipped = SKIPPED_LINE.match(line)
        assert skipped and current is not None, f"unexpected line {line!r}"
        by_file[current].append(skipped)
    return by_file


def test_shipped_profiles_check_ok() -> None:
    assert {p.stem for p in SHIPPED} >= {"default", "judge", "compile"}
    proc = sandboxd("profile", "check", *map(str, SHIPPED))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    by_file = check_output_by_file(proc.stdout)
    assert list(by_file) == [str(p) for p in SHIPPED]
    # The shipped profiles are written for this tool: nothing in them is skipped on x86_64.
    if platform.machine() == "x86_64":
        assert all(skipped == [] for skipped in by_file.values()), by_file
    # Distinct profiles compile to distinct filters.
    hashes = [OK_LINE.match(line)["hash"] for line in proc.stdout.splitlines() if OK_LINE.match(line)]
    assert len(set(hashes)) == len(hashes)


@on_x86_64
@needs_real_seccomp
def test_check_names_the_rules_it_skips() -> None:
    docker = next((p for p in REAL_SECCOMP_FILES if p.name == "docker-default.json"), None)
    if docker is None:
        host_lacks("docker-default.json is not among the real seccomp inputs")
    proc = sandboxd("profile", "check", str(docker))
    assert proc.returncode == 0, proc.stderr
    skipped = check_output_by_file(proc.stdout)[str(docker)]
    reasons = {m["name"]: m["reason"] for m in skipped}
    # 32-bit-only names, capability-gated rules and other arches' rules are each named.
    assert reasons.get("chown32") == "not a syscall on x86_64", reasons
    assert reasons.get("ptrace") == "needs CAP_SYS_PTRACE", reasons
    assert any(r.startswith("only for arches") for r in reasons.values()), reasons
    # Every index points at a real entry of the file that names that syscall.
    entries = json.loads(docker.read_text())["syscalls"]
    for match in skipped:
        entry = entries[int(match["index"])]
        assert match["name"] in (entry.get("names") or [entry.get("name")]), match.group(0)


@needs_real_seccomp
@pytest.mark.parametrize("path", REAL_SECCOMP_FILES, ids=[p.name for p in REAL_SECCOMP_FILES])
def test_real_profiles_pass_check(path: Path) -> None:
    proc = sandboxd("profile", "check", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    by_file = check_output_by_file(proc.stdout)
    assert list(by_file) == [str(path)]


MALFORMED = [
    ("bad-json", '{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [\n', "invalid JSON"),
    ("unknown-action",
     json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
         {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
         {"names": ["write"], "action": "SCMP_ACT_BOGUS"}]}),
     "syscalls[1].action: unknown action 'SCMP_ACT_BOGUS'"),
    ("unknown-default", json.dumps({"defaultAction": "SCMP_ACT_NOPE", "syscalls": []}),
     "defaultAction: unknown action 'SCMP_ACT_NOPE'"),
    ("bad-operator",
     json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
         {"names": ["read"], "action": "SCMP_ACT_ALLOW",
          "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ALMOST"}]}]}),
     "syscalls[0].args[0].op: unknown operator 'SCMP_CMP_ALMOST'"),
    ("bad-index",
     json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
         {"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}]}]}),
     "syscalls[0].args[0].index"),
]


@pytest.mark.parametrize("name, text, reason", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_profile_gives_one_line_and_exit_2(tmp_path: Path, name: str, text: str, reason: str) -> None:
    path = tmp_path / f"{name}.json"
    path.write_text(text)
    proc = sandboxd("profile", "check", str(path))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{path}: ") and reason in lines[0], lines[0]
    assert proc.stdout == ""


def test_one_bad_profile_does_not_hide_the_good_ones(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(MALFORMED[1][1])
    good = REPO / "profiles" / "judge.json"
    proc = sandboxd("profile", "check", str(bad), str(good))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"{bad}: syscalls[1].action: unknown action 'SCMP_ACT_BOGUS'"]
    assert list(check_output_by_file(proc.stdout)) == [str(good)]


def test_missing_profile_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    proc = sandboxd("profile", "check", str(missing))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [f"{missing}: cannot read: No such file or directory"]


def _show_table(stdout: str) -> dict[str, str]:
    table = {}
    for line in stdout.splitlines():
        name, _, action = line.partition("  ")
        table[name] = action
    return table


def test_show_default_on_x86_64_lists_kills_and_allows() -> None:
    proc = sandboxd("profile", "show", "default", "--arch", "x86_64")
    assert proc.returncode == 0, proc.stderr
    table = _show_table(proc.stdout)
    assert table["ptrace"] == "KILL_PROCESS"
    assert table["bpf"] == "KILL_PROCESS" and table["mount"] == "KILL_PROCESS"
    assert table["read"] == "ALLOW" and table["write"] == "ALLOW"
    assert table["clone3"] == "ERRNO(ENOSYS=38)"
    assert table["clone"].startswith("ALLOW if (arg0 & 0x7e020000) == 0x0") and "otherwise ERRNO(EPERM=1)" in table["clone"]
    assert table["arch_prctl"] == "ALLOW"  # x86-only rule applies on x86_64
    assert table.pop("*") == "ERRNO(EPERM=1) (default)"  # the last row: everything unlisted
    assert list(table) == sorted(table) and len(table) > 200


def test_show_judge_differs_from_default() -> None:
    judge = _show_table(sandboxd("profile", "show", "judge", "--arch", "x86_64").stdout)
    default = _show_table(sandboxd("profile", "show", "default", "--arch", "x86_64").stdout)
    assert judge["read"] == "ALLOW" and judge["ptrace"] == "KILL_PROCESS"
    assert default["socket"] != judge.get("socket", "")
    assert default["fork"] == "ALLOW" and "fork" not in judge  # judge: fork falls to the default
    assert judge["*"] == "ERRNO(EPERM=1) (default)"
    assert judge["clone"].startswith("ALLOW if (arg0 & 0x7e030000) == 0x10000"), judge["clone"]


def test_show_unknown_profile_is_one_line() -> None:
    proc = sandboxd("profile", "show", "no-such-profile")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "no-such-profile" in proc.stderr


def test_show_unknown_arch_is_one_line() -> None:
    proc = sandboxd("profile", "show", "default", "--arch", "sparc")
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and "sparc" in proc.stderr
