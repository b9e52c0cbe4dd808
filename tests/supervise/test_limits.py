"""Limits, accounting and verdicts with real programs in real sandboxes (cgroup v1 here).

Programs are /usr/bin/python3 one-liners or small C programs compiled at set-up, so the
work they do is known exactly. Timings are generous where the machine's noise matters and
strict where the product promises (the CPU-limit grace).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from sandboxd.jail import cgroups
from tests.host import host_lacks
from tests.sandboxes import Runner

PY = "/usr/bin/python3"
CPU_GRACE_S = 0.2  # documented in docs/results.md: a CPU limit fires within this of the limit

TOUCH_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
/* touch MiB of memory, then burn CPU until the process has used SECONDS in all */
int main(int argc, char **argv) {
    size_t n = (size_t)atol(argv[1]) << 20;
    double seconds = atof(argv[2]);
    struct timespec t0 = {0, 0}, t;
    volatile char *p = malloc(n);
    for (size_t i = 0; i < n; i += 4096) p[i] = 1;
    do { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t); }
    while ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 < seconds);
    printf("done\n");
    return 0;
}
"""

needs_cgroups = pytest.mark.skipif(cgroups.detect() is None and os.geteuid() == 0,
                                   reason="no writable cgroup hierarchy on this host")


@pytest.fixture(scope="module")
def programs() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="sandboxd-limits-"))
    (directory / "touch.c").write_text(TOUCH_C)
    subprocess.run(["gcc", "-O1", "-o", str(directory / "touch"), str(directory / "touch.c")], check=True)
    directory.chmod(0o755)
    return directory


def run(sandbox: Runner, *args: str, **kwargs):
    return sandbox.run(["run", *args], **kwargs)


@needs_cgroups
def test_cpu_spinner_ends_with_time_limit_within_the_grace(root_sandbox: Runner) -> None:
    outcome = run(root_sandbox, "--time-limit", "1", "--", PY, "-c", "while True: pass")
    result = outcome.result
    assert result["verdict"] == "TIME_LIMIT" and outcome.returncode == 137
    assert result["limit"] == {"name": "cpu_time", "value": 1.0}
    used = result["usage"]["cpu_total_s"]
    assert 1.0 <= used < 1.0 + CPU_GRACE_S, used
    split = result["usage"]["cpu_user_s"] + result["usage"]["cpu_sys_s"]
    assert abs(split - used) < 0.05, (split, used)  # the user/system split is sampled, the total exact
    assert result["usage"]["sources"]["cpu_user_s"].startswith("cgroup")


@needs_cgroups
def test_four_spinning_children_share_one_cpu_budget(root_sandbox: Runner) -> None:
    script = ("import os\nfor _ in range(4):\n    if os.fork() == 0:\n        while True: pass\n"
              "while True: os.wait()")
    started = time.monotonic()
    outcome = run(root_sandbox, "--time-limit", "1", "--", PY, "-c", script)
    result = outcome.result
    assert result["verdict"] == "TIME_LIMIT"
    used = result["usage"]["cpu_total_s"]
    assert 1.0 <= used < 1.0 + CPU_GRACE_S, used
    # Two cores, four spinners: one budget means about half a second of wall time, not four.
    assert time.monotonic() - started < 5


def test_sleep_ends_with_wall_time_limit_in_about_a_second(sandbox: Runner) -> None:
    outcome = run(sandbox, "--wall-time-limit", "1", "--", "sleep", "60")
    result = outcome.result
    assert result["verdict"] == "WALL_TIME_LIMIT"
    assert result["limit"] == {"name": "wall_time", "value": 1.0}
    assert 1.0 <= result["usage"]["wall_s"] < 1.3, result["usage"]


@needs_cgroups
def test_memory_hog_ends_with_memory_limit(root_sandbox: Runner, programs: Path) -> None:
    limit = 64 << 20
    outcome = run(root_sandbox, "--memory-limit", "64M", "--ro-bind", str(programs), "/p", "--",
                  "/p/touch", "128", "0")
    result = outcome.result
    assert result["verdict"] == "MEMORY_LIMIT", result
    assert result["limit"] == {"name": "memory", "value": limit}
    assert abs(result["usage"]["memory_peak_bytes"] - limit) <= 0.1 * limit
    assert result["usage"]["oom_kills"] >= 1
    assert "done" not in outcome.stdout


@needs_cgroups
def test_usage_is_exact_for_known_work(root_sandbox: Runner, programs: Path) -> None:
    outcome = run(root_sandbox, "--ro-bind", str(programs), "/p", "--", "/p/touch", "100", "1.0")
    result = outcome.result
    assert result["verdict"] == "OK" and outcome.stdout.strip() == "done"
    usage = result["usage"]
    assert abs(usage["memory_peak_bytes"] - (100 << 20)) <= 0.1 * (100 << 20), usage
    # The exact figure is the cgroup's CPU counter; the user/system split is sampled by the
    # kernel in clock ticks (cpuacct.stat, cpu.stat's split), so it only has to agree roughly.
    assert abs(usage["cpu_total_s"] - 1.0) <= 0.1, usage
    assert abs(usage["cpu_user_s"] + usage["cpu_sys_s"] - usage["cpu_total_s"]) <= 0.2, usage
    assert usage["sources"]["memory_peak_bytes"] in ("cgroup1:memory.max_usage_in_bytes", "cgroup2:memory.peak")
    assert usage["voluntary_context_switches"] is not None


def test_output_cap_stops_a_gigabyte_quickly(sandbox: Runner) -> None:
    out = sandbox.make_dir("out-") / "stdout"
    started = time.monotonic()
    outcome = run(sandbox, "--output-limit", "1M", "--stdout", str(out), "--",
                  "/bin/sh", "-c", "head -c 1073741824 /dev/zero")
    elapsed = time.monotonic() - started
    result = outcome.result
    assert result["verdict"] == "OUTPUT_LIMIT"
    assert result["limit"] == {"name": "output", "value": 1 << 20, "stream": "stdout"}
    assert result["output"]["stdout"] == {"bytes": 1 << 20, "truncated": True}
    assert out.stat().st_size == 1 << 20
    assert result["usage"]["wall_s"] < 1.0 and elapsed < 10


def _process_count() -> int:
    return sum(1 for entry in os.listdir("/proc") if entry.isdigit())


@needs_cgroups
def test_fork_bomb_is_contained_by_the_pids_limit(root_sandbox: Runner) -> None:
    before = _process_count()
    bomb = "bomb() { bomb | bomb & }; bomb; sleep 2; exit 1"
    outcome = run(root_sandbox, "--pids-limit", "64", "--wall-time-limit", "10", "--", "/bin/sh", "-c", bomb)
    result = outcome.result
    assert result["verdict"] == "PIDS_LIMIT", result
    assert result["limit"] == {"name": "pids", "value": 64}
    assert result["usage"]["pids_peak"] <= 64
    deadline = time.monotonic() + 5
    while _process_count() > before + 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _process_count() <= before + 5, "the bomb's processes outlived the job"


def test_writing_past_the_file_size_limit(sandbox: Runner) -> None:
    # `exec`: the writer is the program itself. (A writer further down a shell pipeline dies
    # of SIGXFSZ too, but the job's verdict follows the program: the shell's exit 153.)
    outcome = run(sandbox, "--file-size-limit", "1M", "--", "/bin/sh", "-c",
                  "exec head -c 2097152 /dev/zero > /tmp/big")
    result = outcome.result
    assert result["verdict"] == "FILE_SIZE_LIMIT", result
    assert result["limit"]["name"] == "file_size" and result["limit"]["value"] == 1 << 20


DEFAULT_POLICY = Path(__file__).resolve().parents[2] / "policies" / "default.toml"


def write_policy(sandbox: Runner, name: str, text: str) -> Path:
    """A policy file the runner's user can read."""
    policy = sandbox.make_dir("policy-") / name
    policy.write_text(text)
    policy.chmod(0o644)
    return policy


def test_filling_tmp_past_its_size(sandbox: Runner) -> None:
    policy = write_policy(sandbox, "small-tmp.toml",
                          DEFAULT_POLICY.read_text().replace('tmp_size = "64M"', 'tmp_size = "1M"'))
    outcome = run(sandbox, "--policy", str(policy), "--", "/bin/sh", "-c",
                  "head -c 2097152 /dev/zero > /tmp/big")
    result = outcome.result
    assert result["verdict"] == "FILE_SIZE_LIMIT", result
    assert result["limit"] == {"name": "tmpfs_size", "value": None, "paths": ["/tmp"]}


def test_limits_from_the_request_only_narrow(sandbox: Runner) -> None:
    policy = write_policy(sandbox, "limited.toml", DEFAULT_POLICY.read_text() + "\n[limits]\nwall_time = 1\n")
    outcome = run(sandbox, "--policy", str(policy), "--wall-time-limit", "30", "--", "sleep", "10")
    assert outcome.result["verdict"] == "WALL_TIME_LIMIT"
    assert outcome.result["limit"]["value"] == 1.0


def test_rootless_on_v1_refuses_a_required_cgroup_limit(rootless_sandbox: Runner) -> None:
    if cgroups.detect() is not None and cgroups.detect().version == "v2":
        host_lacks("needs a cgroup v1 host (rootless sandboxd has no usable hierarchy there); this one has v2")
    outcome = run(rootless_sandbox, "--memory-limit", "64M", "--", "/bin/true")
    assert outcome.returncode == 125
    assert outcome.result["verdict"] == "SETUP_ERROR"
    assert "cgroup" in outcome.stderr and "best-effort" in outcome.stderr
