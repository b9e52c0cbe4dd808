"""Escape attempts against host processes: seeing, signalling, tracing, outliving the job.

The host starts canary processes with a unique argv (``sleep 1000.NNNNNNNNN``); a case passes
when they are still alive and untraced afterwards, their argv never reached the job's output,
and nothing the job started is left in the host's process table.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.escape.conftest import (POLICIES, assert_killed_by_seccomp, host_processes_with, host_sleeper, job,
                                   make_workdir, wait_until_gone)
from tests.sandboxes import Runner

PY = "/usr/bin/python3"

SCAN_PROC = """
import os
for entry in os.listdir('/proc'):
    if entry.isdigit():
        try:
            print(entry, repr(open(f'/proc/{entry}/cmdline', 'rb').read()))
        except OSError as exc:
            print(entry, 'errno', exc.errno)
"""


def _tracer(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    raise AssertionError("no TracerPid line")


def _same_uid(runner: Runner) -> dict:
    """Rootless: the host canary runs as the very uid the job maps to, so only the namespaces
    stand between them (without them, kill() would succeed)."""
    return {"uid": runner.uid, "gid": runner.gid} if runner.uid is not None else {}


def test_pr01_host_processes_are_invisible(sandbox: Runner) -> None:
    """PR-01 list /proc and read every cmdline, looking for a host process with a unique argv.
    Stopped by: the PID namespace and the job's own /proc mount."""
    with host_sleeper(**_same_uid(sandbox)) as (proc, marker):
        outcome = job(sandbox, None, PY, "-c", SCAN_PROC)
        assert proc.poll() is None
    assert marker not in outcome.stdout
    pids = sorted(int(line.split()[0]) for line in outcome.stdout.splitlines())
    assert pids[0] == 1 and len(pids) <= 3, pids


@pytest.mark.parametrize("policy", POLICIES)
def test_pr02_signal_a_host_process_by_pid(root_sandbox: Runner, hostile: Path, policy: str) -> None:
    """PR-02 kill(HOSTPID, SIGKILL) and kill(-1, SIGKILL) against a host process whose pid the job is told.
    Stopped by: the PID namespace (the pid does not exist in the job), Landlock signal scoping."""
    with host_sleeper() as (proc, _marker):
        outcome = job(root_sandbox, hostile, "/hostile/hostile", "kill", str(proc.pid), "-1", policy=policy)
        time.sleep(0.1)
        assert proc.poll() is None, "the host process was killed from inside the job"
    assert f"kill {proc.pid} errno ESRCH" in outcome.stdout, outcome.stdout


def test_pr02b_signal_a_same_uid_host_process(sandbox: Runner, hostile: Path) -> None:
    """PR-02b the kill attack, with the host canary running as the same host uid as a rootless job.
    Stopped by: the PID namespace, Landlock signal scoping."""
    with host_sleeper(**_same_uid(sandbox)) as (proc, _marker):
        job(sandbox, hostile, "/hostile/hostile", "kill", str(proc.pid), "-1")
        time.sleep(0.1)
        assert proc.poll() is None, "the host process was killed from inside the job"


@pytest.mark.parametrize("policy", POLICIES)
def test_pr03_ptrace_a_host_process(root_sandbox: Runner, hostile: Path, policy: str) -> None:
    """PR-03 PTRACE_ATTACH to a host pid (and would-be memory writes through it).
    Stopped by: seccomp (ptrace is a kill rule); behind it the PID namespace and no CAP_SYS_PTRACE."""
    with host_sleeper() as (proc, _marker):
        outcome = job(root_sandbox, hostile, "/hostile/hostile", "ptrace", str(proc.pid), policy=policy)
        assert proc.poll() is None and _tracer(proc.pid) == 0
    assert_killed_by_seccomp(outcome, "ptrace")


def test_pr04_host_proc_entries_and_pidfd(root_sandbox: Runner) -> None:
    """PR-04 read /proc/HOSTPID/environ and /proc/HOSTPID/root, pidfd_open(HOSTPID) and signal through it.
    Stopped by: the PID namespace (the job's /proc only has its own pids)."""
    script = (
        "import os, signal, sys\n"
        "pid = int(sys.argv[1])\n"
        "for p in (f'/proc/{pid}/environ', f'/proc/{pid}/cmdline', f'/proc/{pid}/root/etc/hostname'):\n"
        "    try: print(p, open(p, 'rb').read())\n"
        "    except OSError as e: print(p, 'errno', e.errno)\n"
        "try:\n"
        "    fd = os.pidfd_open(pid); signal.pidfd_send_signal(fd, signal.SIGKILL); print('pidfd killed')\n"
        "except OSError as e: print('pidfd errno', e.errno)\n"
    )
    with host_sleeper() as (proc, marker):
        outcome = job(root_sandbox, None, PY, "-c", script, str(proc.pid))
        time.sleep(0.1)
        assert proc.poll() is None
    assert marker not in outcome.stdout and "pidfd errno 3" in outcome.stdout, outcome.stdout


def test_pr05_double_forked_daemon_does_not_outlive_the_job(sandbox: Runner, hostile: Path) -> None:
    """PR-05 double fork + setsid, ignore every catchable signal, keep appending a heartbeat to a
    host-visible file (the work dir) after the job's program has exited.
    Stopped by: the PID namespace (its init's exit kills every process of the job)."""
    workdir = make_workdir(sandbox)
    marker = f"escape-daemon-{os.getpid()}-{time.monotonic_ns()}"
    outcome = job(sandbox, hostile, "/hostile/hostile", "daemon", marker, "/work/heartbeat", workdir=workdir)
    assert "daemonized" in outcome.stdout
    assert wait_until_gone(marker) == [], "the daemon outlived its job"
    heartbeat = workdir / "heartbeat"
    size = heartbeat.stat().st_size if heartbeat.exists() else 0
    time.sleep(0.4)
    assert (heartbeat.stat().st_size if heartbeat.exists() else 0) == size, "something still writes the heartbeat"


def test_pr06_fork_bomb_under_the_pids_limit(root_sandbox: Runner, hostile: Path) -> None:
    """PR-06 fork until fork fails, with --pids-limit 32.
    Stopped by: the pids cgroup (verdict PIDS_LIMIT); the PID namespace removes them all afterwards."""
    before = sum(1 for e in os.listdir("/proc") if e.isdigit())
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "forkbomb", "5000",
                  flags=("--pids-limit", "32", "--wall-time-limit", "10"))
    result = outcome.result
    assert result["verdict"] == "PIDS_LIMIT", result["verdict"]
    assert result["usage"]["pids_peak"] <= 32
    made = int(outcome.stdout.split()[1])
    assert made < 32, outcome.stdout
    deadline = time.monotonic() + 5
    while sum(1 for e in os.listdir("/proc") if e.isdigit()) > before + 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sum(1 for e in os.listdir("/proc") if e.isdigit()) <= before + 5


def test_pr07_read_the_inits_memory(root_sandbox: Runner, hostile: Path) -> None:
    """PR-07 process_vm_readv on the job's init (which holds the spawner's memory, the host-side
    environment and descriptors).
    Stopped by: seccomp (process_vm_readv is a kill rule); behind it the non-dumpable init."""
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "syscall", "310", "1", "0", "0", "0", "0", "0")
    assert_killed_by_seccomp(outcome, "process_vm_readv")


@pytest.mark.parametrize("policy", ("default", "compile"))
def test_pr08_kill_the_jobs_init(root_sandbox: Runner, hostile: Path, policy: str) -> None:
    """PR-08 SIGKILL the job's own init (pid 1) to break the supervision (orphaned children, no
    verdict, a forged status).
    Stopped by: the kernel's protection of a PID namespace's init from signals sent inside it."""
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "kill", "1", "1", policy=policy)
    assert outcome.result["verdict"] == "OK" and outcome.returncode == 0, outcome.result["verdict"]
    assert outcome.result["exit_code"] == 0


def test_pr09_signal_a_concurrent_job(sandbox: Runner, hostile: Path) -> None:
    """PR-09 kill a process of another job running at the same time (its host pid is given), and
    kill(-1). Rootless, both jobs run as the same host uid.
    Stopped by: the PID namespace of each job (and, as root, a distinct host uid per job)."""
    marker = f"3000.{time.monotonic_ns() % 10**9}"

    def sleepers() -> list[int]:  # the other job's program, not the sandboxd command naming it
        found = []
        for pid in host_processes_with(f"sleep\0{marker}"):
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\0"):
                    found.append(pid)
            except OSError:
                pass
        return found

    other = subprocess.Popen([sandbox.python, "-m", "sandboxd", "run", "--wall-time-limit", "20", "--",
                              "sleep", marker], env=sandbox.env, user=sandbox.uid, group=sandbox.gid,
                             extra_groups=[] if sandbox.uid else None, cwd="/",
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not (victims := sleepers()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert victims, "the other job did not start"
        job(sandbox, hostile, "/hostile/hostile", "kill", *(str(pid) for pid in victims), "-1")
        time.sleep(0.1)
        assert sleepers() == victims, "a job killed another job's process"
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
    assert wait_until_gone(f"sleep\0{marker}") == []
