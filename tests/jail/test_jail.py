"""Acceptance of the jail: real sandboxes, started as root and as an unprivileged user.

Each test asks the program inside what it can see or do, and where it matters checks the
host too (processes left behind, files written).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.sandboxes import Runner, host_processes_with

PY = "/usr/bin/python3"


def run_ok(sandbox: Runner, *args: str, **kwargs):
    outcome = sandbox.run(["run", *args], **kwargs)
    assert outcome.returncode == 0, (outcome.returncode, outcome.stderr)
    assert outcome.result is not None and outcome.result["verdict"] == "OK", outcome.result
    return outcome


def status_fields(text: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def test_capabilities_empty_and_no_new_privs(sandbox: Runner) -> None:
    outcome = run_ok(sandbox, "--", "cat", "/proc/self/status")
    fields = status_fields(outcome.stdout)
    for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(fields[name], 16) == 0, (name, fields[name])
    assert fields["NoNewPrivs"] == "1"
    layers = outcome.result["layers"]
    assert layers["capabilities_empty"] is True and layers["no_new_privs"] is True
    assert all(layers["namespaces"].values()), layers["namespaces"]


def test_uid_map_is_unprivileged(sandbox: Runner) -> None:
    outcome = run_ok(sandbox, "--", "cat", "/proc/self/uid_map", "/proc/self/gid_map", "/proc/self/setgroups")
    lines = outcome.stdout.split("\n")
    inside, host, count = (int(x) for x in lines[0].split())
    assert (inside, count) == (0, 1)
    if sandbox.uid is None:
        assert host >= 100_000, "root-started jobs map to a high unprivileged host id"
    else:
        assert host == sandbox.uid, "rootless jobs map to the caller's own id"
    assert lines[2].strip() == "deny"
    assert outcome.result["layers"]["id_map"]["rootless"] is (sandbox.uid is not None)


def test_rootless_subordinate_ids(rootless_sandbox: Runner) -> None:
    """Rootless with SANDBOXD_ROOTLESS_IDS=subordinate: the job is an id of the caller's
    /etc/subuid range (mapped by newuidmap), not the caller."""
    from tests.sandboxes import SUBORDINATE_COUNT, SUBORDINATE_START

    outcome = run_ok(rootless_sandbox, "--", "/bin/sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map; id -u",
                     extra_env={"SANDBOXD_ROOTLESS_IDS": "subordinate"})
    lines = outcome.stdout.splitlines()
    uid_inside, uid_host, uid_count = (int(x) for x in lines[0].split())
    gid_inside, gid_host, _ = (int(x) for x in lines[1].split())
    assert (uid_inside, uid_count, lines[2]) == (0, 1, "0")
    assert SUBORDINATE_START <= uid_host < SUBORDINATE_START + SUBORDINATE_COUNT
    assert SUBORDINATE_START <= gid_host < SUBORDINATE_START + SUBORDINATE_COUNT
    assert uid_host != rootless_sandbox.uid


def test_concurrent_jobs_get_distinct_host_ids(root_sandbox: Runner) -> None:
    def start() -> subprocess.Popen:
        return subprocess.Popen([root_sandbox.python, "-m", "sandboxd", "run", "--", "/bin/sh", "-c",
                                 "cat /proc/self/uid_map; sleep 1"], env=root_sandbox.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first, second = start(), start()
    maps = [proc.communicate(timeout=30)[0].decode().split()[1] for proc in (first, second)]
    assert maps[0] != maps[1]


def test_only_the_jobs_processes_are_visible(sandbox: Runner) -> None:
    outcome = run_ok(sandbox, "--", "/bin/sh", "-c", "sleep 5 & ls /proc; kill $!")
    pids = sorted(int(x) for x in outcome.stdout.split() if x.isdigit())
    assert pids[0] == 1 and len(pids) <= 4, pids
    assert str(os.getpid()) not in outcome.stdout.split() or os.getpid() <= 4


NET_PROBE = """
import fcntl, socket, struct
names = [line.split(":")[0].strip() for line in open("/proc/net/dev").read().splitlines()[2:]]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = {n: struct.unpack("16sH", fcntl.ioctl(s.fileno(), 0x8913, struct.pack("16sH22x", n.encode(), 0))[:18])[1] for n in names}
print(" ".join(f"{n}:{'up' if flags[n] & 1 else 'down'}" for n in names))
"""


def test_loopback_mode_has_only_lo_up(sandbox: Runner) -> None:
    outcome = run_ok(sandbox, "--net", "loopback", "--", PY, "-c", NET_PROBE)
    assert outcome.stdout.split() == ["lo:up"]


def test_none_mode_has_no_interface_up(sandbox: Runner) -> None:
    outcome = run_ok(sandbox, "--net", "none", "--", PY, "-c", NET_PROBE)
    assert all(entry.endswith(":down") for entry in outcome.stdout.split()), outcome.stdout
    connect = sandbox.run(["run", "--net", "none", "--", PY, "-c",
                           "import socket; socket.create_connection(('127.0.0.1', 22), timeout=1)"])
    assert connect.returncode == 1 and "Error" in connect.stderr


WRITE_PROBE = """
import os
targets = ["/x", "/usr/x", "/etc/x", "/proc/sys/kernel/hostname", "/dev/x", "/proc/x",
           "/work/ok", "/tmp/ok", "/dev/shm/ok"]
for path in targets:
    try:
        with open(path, "w") as handle:
            handle.write("sandbox")
        print(path, "written")
    except OSError as exc:
        print(path, "refused", exc.errno)
"""


def test_writes_only_in_work_tmp_and_shm(sandbox: Runner) -> None:
    outcome = run_ok(sandbox, "--", PY, "-c", WRITE_PROBE)
    results = dict(line.split(" ", 1) for line in outcome.stdout.splitlines())
    for path in ("/work/ok", "/tmp/ok", "/dev/shm/ok"):
        assert results[path] == "written", (path, results)
    for path in ("/x", "/usr/x", "/etc/x", "/proc/sys/kernel/hostname", "/dev/x", "/proc/x"):
        assert results[path].startswith("refused"), (path, results)
    assert not Path("/usr/x").exists() and not Path("/x").exists()


def test_workdir_is_bound_read_write_and_is_the_cwd(sandbox: Runner) -> None:
    work = sandbox.make_dir()
    (work / "input.txt").write_text("from the host\n")
    outcome = run_ok(sandbox, "--workdir", str(work), "--", "/bin/sh", "-c",
                     "pwd; cat input.txt; echo from the job > output.txt")
    assert outcome.stdout.splitlines() == ["/work", "from the host"]
    assert (work / "output.txt").read_text() == "from the job\n"


def test_host_shadow_file_cannot_be_read(sandbox: Runner) -> None:
    # Even with /etc bound whole, the unmapped root-owned 0640 file stays unreadable.
    outcome = sandbox.run(["run", "--ro-bind", "/etc", "/etc", "--", "cat", "/etc/shadow"])
    assert outcome.returncode != 0 and outcome.result["verdict"] == "NONZERO_EXIT"
    assert "Permission denied" in outcome.stderr
    assert "root:" not in outcome.stdout
    default = sandbox.run(["run", "--", "cat", "/etc/shadow"])
    assert default.returncode != 0 and "root:" not in default.stdout


def test_hostname_comes_from_the_policy_or_flag(sandbox: Runner) -> None:
    assert run_ok(sandbox, "--", "hostname").stdout.strip() == "sandbox"
    assert run_ok(sandbox, "--hostname", "judge-7", "--", "hostname").stdout.strip() == "judge-7"
    assert os.uname().nodename != "judge-7"


def test_no_fd_above_2_is_open(sandbox: Runner) -> None:
    leaked_r, leaked_w = os.pipe()
    os.set_inheritable(leaked_r, True)
    try:
        outcome = run_ok(sandbox, "--", PY, "-S", "-c",
                         "import os\nopen_fds=[]\nfor fd in range(3, 1024):\n"
                         "    try: os.fstat(fd)\n    except OSError: continue\n    open_fds.append(fd)\n"
                         "print(open_fds)", pass_fds=(leaked_r,))
    finally:
        os.close(leaked_r)
        os.close(leaked_w)
    assert outcome.stdout.strip() == "[]"


def test_environment_is_exactly_the_policys_and_the_requests(sandbox: Runner) -> None:
    outcome = run_ok(sandbox, "--env", "EXTRA=1", "--env", "HOME=/tmp", "--", "/usr/bin/env",
                     extra_env={"HOST_SECRET": "canary-4711"})
    env = dict(line.split("=", 1) for line in outcome.stdout.splitlines())
    assert env == {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8",
                   "TERM": "dumb", "EXTRA": "1"}
    assert "canary-4711" not in outcome.stdout


def test_double_forked_setsid_daemon_does_not_survive(sandbox: Runner) -> None:
    marker = f"{time.time_ns() % 10_000_000}.5"
    outcome = run_ok(sandbox, "--", "/bin/sh", "-c",
                     f"setsid /bin/sh -c 'sleep {marker} &' </dev/null >/dev/null 2>&1 & sleep 0.3")
    assert outcome.result["verdict"] == "OK"
    deadline = time.monotonic() + 5
    while host_processes_with(f"sleep\0{marker}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert host_processes_with(f"sleep\0{marker}") == []


def test_exit_status_and_signals(sandbox: Runner) -> None:
    assert sandbox.run(["run", "--", "/bin/sh", "-c", "exit 7"]).returncode == 7
    killed = sandbox.run(["run", "--", "/bin/sh", "-c", "kill -TERM $$"])
    assert killed.returncode == 128 + 15
    assert killed.result["verdict"] == "SIGNALED" and killed.result["signal"] == 15
    missing = sandbox.run(["run", "--", "/no/such/program"])
    assert missing.returncode == 127 and missing.result["verdict"] == "EXEC_FAILED"
    not_exec = sandbox.run(["run", "--", "/etc/ld.so.conf"])
    assert not_exec.returncode == 126 and not_exec.result["verdict"] == "EXEC_FAILED"


def test_wall_time_limit_kills_the_job(sandbox: Runner) -> None:
    started = time.monotonic()
    outcome = sandbox.run(["run", "--wall-time-limit", "0.5", "--", "sleep", "30"])
    assert time.monotonic() - started < 10
    assert outcome.result["verdict"] == "WALL_TIME_LIMIT"
    assert outcome.returncode == 128 + 9


def test_result_reports_layers_read_back(sandbox: Runner) -> None:
    outcome = run_ok(sandbox, "--", "/bin/true")
    result = outcome.result
    assert set(result) >= {"verdict", "exit_code", "signal", "usage", "policy", "layers"}
    assert result["policy"]["name"] == "default" and result["policy"]["hash"].startswith("sha256:")
    assert result["usage"]["wall_s"] > 0
    mounts = {m["path"]: m for m in result["layers"]["mounts"]}
    assert mounts["/"]["options"].startswith("ro")
    assert mounts["/usr"]["options"].startswith("ro") and "nosuid" in mounts["/usr"]["options"]
    assert mounts["/work"]["options"].startswith("rw")
    assert result["layers"]["seccomp_mode"] == 2
    json.dumps(result)


def test_proc_sensitive_files_are_masked(sandbox: Runner) -> None:
    outcome = run_ok(sandbox, "--", "/bin/sh", "-c",
                     "wc -c < /proc/keys; wc -c < /proc/timer_list; "
                     "echo 1 > /proc/sysrq-trigger 2>/dev/null && echo sysrq-written || echo sysrq-refused")
    lines = outcome.stdout.split()
    assert lines[:2] == ["0", "0"] and lines[2] == "sysrq-refused"


@pytest.mark.parametrize("policy_text, key", [
    ("[filesystem]\nbogus = 1\n", "filesystem.bogus: unknown key"),
    ("[[filesystem.mounts]]\ntype = 'ro-bind'\nsource = '/no/such/dir'\n",
     "filesystem.mounts[0].source: '/no/such/dir' does not exist"),
    ("[process\nhostname = 'x'\n", "malformed TOML"),
    ("[rlimits]\nnofile = 'many'\n", "rlimits.nofile"),
    ("[[filesystem.mounts]]\ntype = 'bind'\nsource = 'relative/dir'\n", "is not an absolute path"),
])
def test_bad_policy_gives_one_clear_line(root_sandbox: Runner, tmp_path: Path, policy_text: str, key: str) -> None:
    policy = tmp_path / "bad.toml"
    policy.write_text(policy_text)
    outcome = root_sandbox.run(["run", "--policy", str(policy), "--", "/bin/true"])
    assert outcome.returncode == 2
    assert "Traceback" not in outcome.stderr
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1 and str(policy) in lines[0] and key in lines[0], lines


def test_bind_of_a_missing_path_gives_one_clear_line(sandbox: Runner) -> None:
    outcome = sandbox.run(["run", "--bind", "/no/such/path", "/data", "--", "/bin/true"])
    assert outcome.returncode == 2 and "Traceback" not in outcome.stderr
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1 and "--bind /no/such/path /data" in lines[0] and "does not exist" in lines[0]
