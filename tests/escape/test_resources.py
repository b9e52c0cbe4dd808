"""Escape attempts against the resource limits: memory, CPU, disk, inodes, output, descriptors,
threads, pipes and wall time.

Each case must end with the verdict the limit promises, measured on the host (the result's
cgroup figures, the host's process table, the sizes of host files), and leave nothing behind:
no process with the job's marker, no cgroup of the job.
"""

from __future__ import annotations

import glob
import os
import subprocess
import time
from pathlib import Path

import pytest

from sandboxd.jail import cgroups
from tests.escape.conftest import host_processes_with, job, wait_until_gone
from tests.sandboxes import Runner

needs_cgroups = pytest.mark.skipif(cgroups.detect() is None, reason="no writable cgroup hierarchy on this host")


def _leftover_cgroups(job_id: str) -> list[str]:
    return glob.glob(f"/sys/fs/cgroup/*/sandboxd*/**/{job_id}", recursive=True) + \
        glob.glob(f"/sys/fs/cgroup/sandboxd*/**/{job_id}", recursive=True)


def _assert_host_clean(outcome) -> None:
    assert _leftover_cgroups(outcome.result["job_id"]) == [], "the job's cgroup outlived it"


@needs_cgroups
def test_res01_memory_hog(root_sandbox: Runner, hostile: Path) -> None:
    """RES-01 touch 512 MiB with --memory-limit 64M.
    Stopped by: the memory cgroup (verdict MEMORY_LIMIT, peak at the limit)."""
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "mem", "512", flags=("--memory-limit", "64M"))
    result = outcome.result
    assert result["verdict"] == "MEMORY_LIMIT", result["verdict"]
    assert result["usage"]["memory_peak_bytes"] <= (64 << 20) * 1.05
    assert "touched" not in outcome.stdout
    _assert_host_clean(outcome)


@needs_cgroups
def test_res02_cpu_spinner(root_sandbox: Runner, hostile: Path) -> None:
    """RES-02 spin forever with --time-limit 0.5.
    Stopped by: the CPU-time limit read from the cgroup (verdict TIME_LIMIT)."""
    started = time.monotonic()
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "spin", flags=("--time-limit", "0.5"))
    result = outcome.result
    assert result["verdict"] == "TIME_LIMIT", result["verdict"]
    assert result["usage"]["cpu_user_s"] + result["usage"]["cpu_sys_s"] < 0.5 + 0.2
    assert time.monotonic() - started < 10
    _assert_host_clean(outcome)


@pytest.mark.parametrize("policy, size", [("default", 64 << 20), ("judge", 16 << 20)])
def test_res03_fill_tmp(root_sandbox: Runner, hostile: Path, policy: str, size: int) -> None:
    """RES-03 write to /tmp until the disk is full.
    Stopped by: the size of the job's /tmp tmpfs (verdict FILE_SIZE_LIMIT); the host's disk is untouched."""
    before = os.statvfs("/tmp")
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "fill", "/tmp/big", policy=policy)
    after = os.statvfs("/tmp")
    assert outcome.result["verdict"] == "FILE_SIZE_LIMIT", outcome.result["verdict"]
    assert outcome.result["limit"]["paths"] == ["/tmp"]
    assert f"wrote {size} errno ENOSPC" in outcome.stdout, outcome.stdout
    # the host's /tmp file system did not lose the job's bytes (allow for unrelated activity)
    assert (before.f_bavail - after.f_bavail) * before.f_frsize < size // 2


def test_res04_huge_file_in_the_host_workdir(root_sandbox: Runner, hostile: Path, workdir: Path) -> None:
    """RES-04 write an endless file into the host work dir with --file-size-limit 4M.
    Stopped by: RLIMIT_FSIZE (SIGXFSZ, verdict FILE_SIZE_LIMIT); the host file stops at the limit."""
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "fill", "/work/big", workdir=workdir,
                  flags=("--file-size-limit", "4M"))
    assert outcome.result["verdict"] == "FILE_SIZE_LIMIT", outcome.result["verdict"]
    assert outcome.result["signal"] == 25
    assert (workdir / "big").stat().st_size == 4 << 20


@needs_cgroups
def test_res05_inodes_with_a_memory_limit(root_sandbox: Runner, hostile: Path) -> None:
    """RES-05 create 300 000 empty files in /tmp (inodes cost kernel memory, not tmpfs blocks) with
    --memory-limit 64M.
    Stopped by: the tmpfs inode cap (one inode per 4 KiB of /tmp: verdict FILE_SIZE_LIMIT), and
    behind it the memory cgroup, which is charged for the inodes (verdict MEMORY_LIMIT)."""
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "files", "/tmp", "300000",
                  flags=("--memory-limit", "64M", "--wall-time-limit", "30"))
    assert outcome.result["verdict"] in ("FILE_SIZE_LIMIT", "MEMORY_LIMIT"), outcome.result["verdict"]
    assert outcome.result["usage"]["memory_peak_bytes"] <= (64 << 20) * 1.05
    _assert_host_clean(outcome)


@needs_cgroups
def test_res05b_inodes_are_bounded_by_the_tmpfs_size(root_sandbox: Runner, hostile: Path) -> None:
    """RES-05b create 100 000 empty files in the judge policy's 16M /tmp, with no memory limit (the
    shipped policies set none; judge.toml: "/tmp and /dev/shm are kept modest so one cannot fill the
    host's memory through tmpfs"). The host-side cgroup peak must stay near the tmpfs size.
    Stopped by: the inode limit on the job's tmpfs mounts (nr_inodes, one per 4 KiB of size)."""
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "files", "/tmp", "100000", policy="judge",
                  flags=("--wall-time-limit", "30"))
    peak = outcome.result["usage"]["memory_peak_bytes"]
    assert peak <= (16 << 20) + (16 << 20), f"{peak >> 20} MiB pinned through a 16 MiB /tmp ({outcome.stdout.strip()})"


def test_res06_output_flood(root_sandbox: Runner, hostile: Path, workdir: Path) -> None:
    """RES-06 write an endless stream to stdout with --output-limit 1M.
    Stopped by: the supervisor's output cap (verdict OUTPUT_LIMIT, exactly 1 MiB kept on the host)."""
    out = workdir / "stdout"
    outcome = job(root_sandbox, None, "/bin/sh", "-c", "exec cat /dev/zero",
                  flags=("--output-limit", "1M", "--stdout", str(out)))
    assert outcome.result["verdict"] == "OUTPUT_LIMIT", outcome.result["verdict"]
    assert out.stat().st_size == 1 << 20


@pytest.mark.parametrize("policy, nofile", [("default", 1024), ("judge", 64), ("compile", 256)])
def test_res07_descriptor_exhaustion(root_sandbox: Runner, hostile: Path, policy: str, nofile: int) -> None:
    """RES-07 raise RLIMIT_NOFILE, then open descriptors until it fails; the host counts the job's
    open descriptors in /proc/PID/fd while it holds them.
    Stopped by: RLIMIT_NOFILE (soft = hard; raising needs CAP_SYS_RESOURCE)."""
    command = [root_sandbox.python, "-m", "sandboxd", "run", "--policy", policy, "--ro-bind", str(hostile),
               "/hostile", "--", "/hostile/hostile", "fds"]
    proc = subprocess.Popen(command, env=root_sandbox.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline().decode()
        assert "raise-nofile errno EPERM" in line, line
        line = proc.stdout.readline().decode()
        pids = [pid for pid in host_processes_with("/hostile/hostile\0fds") if pid != proc.pid]
        assert pids, "the job's process is not in the host's process table"
        for pid in pids:
            assert len(os.listdir(f"/proc/{pid}/fd")) <= nofile
        assert line.startswith("fds ") and int(line.split()[1]) <= nofile - 3, line
    finally:
        proc.communicate(timeout=30)


@needs_cgroups
def test_res08_thread_exhaustion(root_sandbox: Runner, hostile: Path) -> None:
    """RES-08 create threads until it fails, with --pids-limit 32; the host counts the job's tasks.
    Stopped by: the pids cgroup (threads count; verdict PIDS_LIMIT)."""
    command = [root_sandbox.python, "-m", "sandboxd", "run", "--pids-limit", "32", "--ro-bind", str(hostile),
               "/hostile", "--", "/hostile/hostile", "threads", "x", "5000"]
    proc = subprocess.Popen(command, env=root_sandbox.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline().decode()
        pids = [pid for pid in host_processes_with("/hostile/hostile\0threads") if pid != proc.pid]
        assert pids
        tasks = sum(len(os.listdir(f"/proc/{pid}/task")) for pid in pids)
        assert tasks <= 32, tasks
        assert int(line.split()[1]) < 32, line
    finally:
        proc.communicate(timeout=30)
    assert wait_until_gone("/hostile/hostile\0threads") == []


def test_res09_pipe_buffers(root_sandbox: Runner, hostile: Path) -> None:
    """RES-09 open as many pipes as possible, grow each to 1 MiB and fill them (unswappable kernel memory).
    Stopped by: RLIMIT_NOFILE and the kernel's per-user pipe quota (the job's private host uid)."""
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "pipes")
    pipes, size = (int(x) for x in outcome.stdout.split()[-3::2])
    assert pipes <= 512
    assert size <= 80 << 20, size  # fs.pipe-user-pages-soft (64 MiB) plus the 2-page floor per pipe


@needs_cgroups
def test_res09b_pipe_buffers_with_a_memory_limit(root_sandbox: Runner, hostile: Path) -> None:
    """RES-09b the same pipe filling with --memory-limit 32M.
    Stopped by: the memory cgroup (pipe buffers are charged to it; verdict MEMORY_LIMIT)."""
    outcome = job(root_sandbox, hostile, "/hostile/hostile", "pipes", flags=("--memory-limit", "32M"))
    assert outcome.result["verdict"] == "MEMORY_LIMIT", (outcome.result["verdict"], outcome.stdout)


def test_res10_stopped_job_still_ends(root_sandbox: Runner) -> None:
    """RES-10 a job that stops itself (SIGSTOP) and a child that blocks forever, against --wall-time-limit 1.
    Stopped by: the supervisor's wall clock (verdict WALL_TIME_LIMIT); nothing left on the host."""
    marker = f"2000.{time.monotonic_ns() % 10**9}"
    outcome = job(root_sandbox, None, "/bin/sh", "-c", f"sleep {marker} & kill -STOP $$",
                  flags=("--wall-time-limit", "1"))
    assert outcome.result["verdict"] == "WALL_TIME_LIMIT", outcome.result["verdict"]
    assert outcome.result["usage"]["wall_s"] < 3
    assert wait_until_gone(marker) == []
