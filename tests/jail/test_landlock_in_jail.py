"""Landlock alone holds: real jobs in real sandboxes where Landlock is the only wall.

Each test builds a policy at test time (the shipped default's mounts plus what the test
needs, written as TOML into a directory the runner can read), runs the real CLI as root
and as an unprivileged user, and pairs every "refused" with a control run of the same
policy minus the Landlock rule, which must succeed: that control is what proves the
refusal comes from Landlock and not from a read-only mount, file permissions or a
missing network.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest

from sandboxd.jail import landlock as L
from tests.host import host_lacks
from tests.sandboxes import REPO, Outcome, Runner

PY = "/usr/bin/python3"
KERNEL_ABI = L.abi_version()
needs_abi = lambda n: pytest.mark.skipif(KERNEL_ABI < n, reason=f"needs Landlock ABI {n}, kernel has {KERNEL_ABI}")  # noqa: E731

pytestmark = needs_abi(1)


# ------------------------------------------------------------------ generated policies

def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for these plain paths and words
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def policy_text(data: dict[str, Any]) -> str:
    """TOML for a policy dict of the shape of ``policies/*.toml`` (scalars, then tables)."""
    lines = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, table in data.items():
        if isinstance(table, dict):
            lines.append(f"\n[{section}]")
            lines.extend(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


def default_policy() -> dict[str, Any]:
    with open(REPO / "policies" / "default.toml", "rb") as handle:
        return tomllib.load(handle)


def write_policy(sandbox: Runner, data: dict[str, Any], name: str) -> str:
    directory = sandbox.make_dir("policy-")
    path = directory / f"{name}.toml"
    path.write_text(policy_text(data))
    path.chmod(0o644)
    # The generated file must validate like a shipped one, or the run tests nothing.
    check = sandbox.run(["policy", "check", str(path)], want_result=False)
    assert check.returncode == 0, (check.stderr, path.read_text())
    return str(path)


def run_job(sandbox: Runner, *args: str) -> Outcome:
    outcome = sandbox.run(["run", "--wall-time-limit", "20", *args], timeout=60)
    assert outcome.result is not None, (outcome.returncode, outcome.stderr)
    assert outcome.result["verdict"] == "OK", (outcome.result["verdict"], outcome.stderr)
    return outcome


def test_policy_text_round_trips() -> None:
    data = default_policy()
    data["landlock"] = {"mode": "required", "read_only": ["/data"], "scope": False}
    assert tomllib.loads(policy_text(data)) == data


# ------------------------------------------------------------ read-only beneath a rw mount

DATA_PROBE = r"""
import errno, os
def attempt(label, action):
    try:
        action()
        print(label, "ok")
    except OSError as exc:
        print(label, errno.errorcode[exc.errno])
attempt("read", lambda: open("/data/existing.txt").read() == "original\n" or 1 / 0)
attempt("create", lambda: open("/data/new.txt", "w").write("from the job"))
attempt("append", lambda: open("/data/existing.txt", "a").write("appended"))
attempt("unlink", lambda: os.unlink("/data/existing.txt"))
attempt("mkdir", lambda: os.mkdir("/data/newdir"))
for line in open("/proc/self/mountinfo"):
    fields = line.split()
    if fields[4] == "/data":
        print("mount", fields[5].split(",")[0])
"""


def _data_dir(sandbox: Runner) -> Path:
    """A host directory every job user may write by file permissions (so only Landlock can refuse)."""
    data = sandbox.make_dir("data-")
    data.chmod(0o777)
    (data / "existing.txt").write_text("original\n")
    (data / "existing.txt").chmod(0o666)
    return data


def _probe_results(stdout: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in stdout.splitlines())


def test_landlock_read_only_path_beneath_a_writable_bind(sandbox: Runner) -> None:
    """``landlock.read_only`` holds where the mount itself is read-write.

    /data is a ``bind`` (read-write) mount of a world-writable host directory; the job's
    mountinfo shows it rw, so neither the mount nor file permissions stop a write. With
    ``[landlock] read_only = ["/data"]`` every write fails with EACCES and the host
    directory is unchanged; the control run of the same policy without ``read_only``
    writes, which proves the refusal is Landlock's alone.
    """
    data = _data_dir(sandbox)
    policy = default_policy()
    policy["filesystem"]["mounts"].append({"type": "bind", "source": str(data), "dest": "/data"})
    policy["landlock"]["read_only"] = ["/data"]
    guarded = write_policy(sandbox, policy, "landlock-readonly-bind")

    outcome = run_job(sandbox, "--policy", guarded, "--", PY, "-c", DATA_PROBE)
    results = _probe_results(outcome.stdout)
    assert results == {"read": "ok", "create": "EACCES", "append": "EACCES", "unlink": "EACCES",
                       "mkdir": "EACCES", "mount": "rw"}, outcome.stdout
    assert sorted(p.name for p in data.iterdir()) == ["existing.txt"]
    assert (data / "existing.txt").read_text() == "original\n"
    rights = outcome.result["layers"]["landlock"]["rights"]
    assert "allow /data:" not in rights and "allow /work:" in rights, rights

    # Control: the same policy without read_only. Everything the guarded run refused works.
    del policy["landlock"]["read_only"]
    open_policy = write_policy(sandbox, policy, "landlock-writable-bind")
    control = run_job(sandbox, "--policy", open_policy, "--", PY, "-c", DATA_PROBE)
    assert _probe_results(control.stdout) == {"read": "ok", "create": "ok", "append": "ok", "unlink": "ok",
                                              "mkdir": "ok", "mount": "rw"}, control.stdout
    assert (data / "new.txt").read_text() == "from the job"
    assert (data / "newdir").is_dir() and not (data / "existing.txt").exists()
    assert re.search(r"allow /data: [A-Z_,]*WRITE_FILE", control.result["layers"]["landlock"]["rights"])


# ------------------------------------------------------------------------ TCP port rules

PORT_A, PORT_B = 5731, 5732

TCP_PROBE = f"""
import errno, socket
listeners = []
for port in ({PORT_A}, {PORT_B}):
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind(("127.0.0.1", port))
        server.listen(4)
        listeners.append(server)
        print("bind", port, "ok")
    except OSError as exc:
        print("bind", port, errno.errorcode[exc.errno])
for port in ({PORT_A}, {PORT_B}):
    client = socket.socket()
    client.settimeout(3)
    try:
        client.connect(("127.0.0.1", port))
        print("connect", port, "ok")
    except OSError as exc:
        print("connect", port, errno.errorcode.get(exc.errno, exc.errno))
    client.close()
"""


@needs_abi(4)
@pytest.mark.parametrize("network, expected", [
    ({"tcp_connect": [PORT_A]},
     [f"bind {PORT_A} ok", f"bind {PORT_B} ok", f"connect {PORT_A} ok", f"connect {PORT_B} EACCES"]),
    ({"tcp_bind": [PORT_A]},
     [f"bind {PORT_A} ok", f"bind {PORT_B} EACCES", f"connect {PORT_A} ok", f"connect {PORT_B} ECONNREFUSED"]),
    ({},  # control: no port lists, nothing restricted
     [f"bind {PORT_A} ok", f"bind {PORT_B} ok", f"connect {PORT_A} ok", f"connect {PORT_B} ok"]),
], ids=["tcp_connect", "tcp_bind", "unrestricted"])
def test_landlock_tcp_port_rules_on_the_jobs_own_loopback(sandbox: Runner, network: dict, expected: list[str]) -> None:
    """In ``--net loopback`` the job listens on two ports of its own loopback; the port lists
    decide which it may connect to or bind (EACCES from Landlock), nothing else does."""
    policy = default_policy()
    policy["network"] = {"mode": "none", **network}  # the flag below turns on the loopback
    path = write_policy(sandbox, policy, "landlock-tcp")
    outcome = run_job(sandbox, "--policy", path, "--net", "loopback", "--", PY, "-c", TCP_PROBE)
    assert outcome.stdout.splitlines() == expected
    layer = outcome.result["layers"]["landlock"]
    assert layer["enforced"] is True and outcome.result["layers"]["network"] == "loopback"
    if network:
        assert "net handled:" in layer["rights"], layer["rights"]
        assert f"allow tcp port {PORT_A}:" in layer["rights"]
        assert f"allow tcp port {PORT_B}:" not in layer["rights"]
    else:
        assert "net: not restricted" in layer["rights"], layer["rights"]


# ----------------------------------------------------------- abstract unix socket scoping

SCOPE_PROBE = r"""
import errno, socket, sys, time
outside = b"\0" + sys.argv[1].encode()
own = b"\0" + sys.argv[1].encode() + b"-own"
# A listener of the job's own, in its own domain: always reachable.
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(own)
server.listen(1)
client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
client.connect(own)
print("own ok", flush=True)
# The outside listener appears once the test has entered our network namespace.
deadline = time.monotonic() + 15
while True:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(outside)
        client.sendall(b"hello from the job")
        print("outside ok", flush=True)
        break
    except OSError as exc:
        if exc.errno == errno.ECONNREFUSED and time.monotonic() < deadline:
            client.close()
            time.sleep(0.02)
            continue
        print("outside", errno.errorcode.get(exc.errno, exc.errno), flush=True)
        break
"""

# Runs on the host, as root: enter the job's network namespace, listen on the abstract name.
HOST_LISTENER = r"""
import ctypes, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(sys.argv[1], os.O_RDONLY)
if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
    raise OSError(ctypes.get_errno(), "setns")
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(b"\0" + sys.argv[2].encode())
server.listen(1)
print("listening", flush=True)
server.settimeout(15)
try:
    conn, _ = server.accept()
    print("accepted", conn.recv(100).decode(), flush=True)
except socket.timeout:
    print("no connection", flush=True)
"""


def _net_ns(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def _job_netns_pid(marker: str, deadline: float) -> int:
    """A host pid of a process of the job: its cmdline has ``marker``, its netns is not ours."""
    ours = _net_ns("self")
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline and _net_ns(entry) not in (None, ours):
                return int(entry)
        time.sleep(0.02)
    raise AssertionError(f"no job process with {marker!r} in its own network namespace appeared")


def _connect_from_job_to_host_listener(sandbox: Runner, policy_path: str | None) -> tuple[Outcome, str]:
    marker = f"sandboxd-scope-{uuid.uuid4().hex}"
    args = ["run", "--wall-time-limit", "30"] + (["--policy", policy_path] if policy_path else [])
    box: dict[str, Outcome] = {}
    job = threading.Thread(target=lambda: box.setdefault("outcome", sandbox.run(
        [*args, "--", PY, "-c", SCOPE_PROBE, marker], timeout=60)))
    job.start()
    listener = None
    try:
        pid = _job_netns_pid(marker, time.monotonic() + 20)
        listener = subprocess.Popen([sys.executable, "-c", HOST_LISTENER, f"/proc/{pid}/ns/net", marker],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        job.join(timeout=40)
        assert not job.is_alive(), "the job did not finish"
    finally:
        if listener is not None:
            if listener.poll() is None:
                time.sleep(0.2)  # let an accepted connection be printed
                listener.kill()
            listener_out, listener_err = listener.communicate(timeout=10)
        job.join(timeout=60)
    assert listener_out.startswith("listening"), listener_err
    return box["outcome"], listener_out


@needs_abi(6)
def test_abstract_unix_socket_outside_the_domain_is_unreachable(sandbox: Runner) -> None:
    """A host process (no Landlock domain) enters the JOB'S OWN network namespace and listens
    on an abstract unix socket. Abstract names are per network namespace, so nothing but
    Landlock's ABSTRACT_UNIX_SOCKET scope stands between the job and that listener.

    With the default policy (``landlock.scope = true``) the job's connect fails with EPERM,
    while a listener the job made itself (same domain) stays reachable. The control run
    with ``scope = false`` connects and the host listener receives the job's message,
    proving the name was reachable and the refusal is the scope's. This is the situation
    scoping exists for: a listener outside the job (another job sharing a namespace, a
    host daemon) that the job could otherwise reach.
    """
    if os.geteuid() != 0:
        host_lacks("entering the job's network namespace needs root on the host")
    scoped, listener_out = _connect_from_job_to_host_listener(sandbox, None)
    assert scoped.result["verdict"] == "OK", (scoped.result, scoped.stderr)
    assert scoped.stdout.splitlines() == ["own ok", "outside EPERM"], (scoped.stdout, scoped.stderr)
    assert "accepted" not in listener_out
    layer = scoped.result["layers"]["landlock"]
    assert layer["enforced"] is True and layer["abi"] == KERNEL_ABI
    assert "scoped: ABSTRACT_UNIX_SOCKET,SIGNAL" in layer["rights"], layer["rights"]

    policy = default_policy()
    policy["landlock"]["scope"] = False
    unscoped_path = write_policy(sandbox, policy, "landlock-unscoped")
    unscoped, listener_out = _connect_from_job_to_host_listener(sandbox, unscoped_path)
    assert unscoped.stdout.splitlines() == ["own ok", "outside ok"], (unscoped.stdout, unscoped.stderr)
    assert "accepted hello from the job" in listener_out
    assert "scoped: -" in unscoped.result["layers"]["landlock"]["rights"]


# ------------------------------------------------------------------------ the result layer

@pytest.mark.parametrize("policy", ["default", "judge", "compile"])
def test_result_reports_the_enforced_landlock_layer(sandbox: Runner, policy: str) -> None:
    outcome = run_job(sandbox, "--policy", policy, "--", "/bin/true")
    layer = outcome.result["layers"]["landlock"]
    assert layer["enforced"] is True and layer["mode"] == "required"
    assert layer["abi"] == min(KERNEL_ABI, L.MAX_KNOWN_ABI) and layer["dropped"] == []
    rights = layer["rights"].splitlines()
    assert rights[0] == f"landlock abi {layer['abi']}"
    handled = next(line for line in rights if line.strip().startswith("fs handled:"))
    for name in ("EXECUTE", "WRITE_FILE", "READ_FILE", "MAKE_REG", "REMOVE_FILE"):
        assert name in handled, handled
    allow = {line.split(":")[0].split()[-1]: line.split(":", 1)[1].strip().split(",")
             for line in rights if line.strip().startswith("allow /")}
    assert allow["/"] == ["EXECUTE", "READ_FILE", "READ_DIR"]  # everything else: read and run only
    for writable in ("/work", "/tmp", "/dev/shm"):
        assert "WRITE_FILE" in allow[writable] and "MAKE_REG" in allow[writable], (writable, allow)
    assert not any(path.startswith(("/usr", "/etc", "/proc")) for path in allow), allow
    if KERNEL_ABI >= 6:
        assert "  scoped: ABSTRACT_UNIX_SOCKET,SIGNAL" in rights


def test_read_only_beneath_a_writable_path_is_refused_or_enforced(sandbox: Runner) -> None:
    work = sandbox.make_dir()
    (work / "ro").mkdir()
    (work / "ro").chmod(0o777)
    policy = default_policy()
    policy["landlock"]["read_only"] = ["/work/ro"]
    directory = sandbox.make_dir("policy-")
    path = directory / "landlock-nested-readonly.toml"
    path.write_text(policy_text(policy))
    path.chmod(0o644)
    outcome = sandbox.run(["run", "--wall-time-limit", "20", "--policy", str(path), "--workdir", str(work),
                           "--", "/bin/sh", "-c", "echo x > /work/ro/file && echo written"])
    refused_at_load = outcome.returncode == 2 and "landlock.read_only" in outcome.stderr
    assert refused_at_load or (outcome.stdout == "" and not (work / "ro" / "file").exists()), \
        (outcome.returncode, outcome.stdout, outcome.stderr)
