"""Escape attempts through the network: reaching the host's loopback services, raw and netlink
sockets, the host's abstract unix sockets, and serving on the host.

The host listeners (TCP and UDP on 127.0.0.1, an abstract unix socket with a unique name)
record every connection and datagram; a case passes when they recorded nothing and the
job's output holds nothing of the host's network state.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.escape.conftest import POLICIES, job, settle
from tests.sandboxes import Runner

PY = "/usr/bin/python3"

CONNECT_TCP = """
import socket, sys
port, token = int(sys.argv[1]), sys.argv[2]
for host in ("127.0.0.1", "localhost", "::ffff:127.0.0.1", "0.0.0.0"):
    try:
        s = socket.create_connection((host, port), timeout=1)
        s.sendall(token.encode())
        print(host, "connected")
    except OSError as exc:
        print(host, "errno", exc.errno)
"""

SEND_UDP = """
import socket, sys
port, token = int(sys.argv[1]), sys.argv[2]
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(3):
        s.sendto(token.encode(), ("127.0.0.1", port))
    print("sent")
except OSError as exc:
    print("udp errno", exc.errno)
"""

RAW_SOCKETS = """
import socket, struct, sys
port, token = int(sys.argv[1]), sys.argv[2]
attempts = {
    "packet": (socket.AF_PACKET, socket.SOCK_RAW, 0x0300),
    "packet-dgram": (socket.AF_PACKET, socket.SOCK_DGRAM, 0x0300),
    "inet-raw-udp": (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP),
    "inet-raw-icmp": (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    "inet6-raw": (socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_UDP),
}
for name, (family, kind, proto) in attempts.items():
    try:
        s = socket.socket(family, kind, proto)
    except OSError as exc:
        print(name, "errno", exc.errno)
        continue
    print(name, "opened")
    if family == socket.AF_INET:
        udp = struct.pack("!HHHH", 4444, port, 8 + len(token), 0) + token.encode()
        try:
            s.sendto(udp, ("127.0.0.1", 0))
            print(name, "sent")
        except OSError as exc:
            print(name, "send errno", exc.errno)
"""

NETLINK = """
import socket, struct
for proto, name in ((0, "route"), (9, "audit"), (12, "netfilter"), (15, "uevent")):
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, proto)
    except OSError as exc:
        print(name, "errno", exc.errno)
        continue
    print(name, "opened")
    if proto == 0:
        # RTM_GETLINK dump: every interface this network namespace has
        s.send(struct.pack("=LHHLL", 32, 18, 0x301, 1, 0) + struct.pack("=BxHiII", 0, 0, 0, 0, 0))
        print("dump", s.recv(65536))
print(open("/proc/net/dev").read())
"""

ABSTRACT = """
import socket, sys
name, token = sys.argv[1], sys.argv[2]
for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_SEQPACKET):
    try:
        s = socket.socket(socket.AF_UNIX, kind)
        s.connect("\\0" + name)
        s.send(token.encode())
        print(kind, "connected")
    except OSError as exc:
        print(kind, "errno", exc.errno)
"""

BIND_AND_SERVE = """
import socket, sys, time
port = int(sys.argv[1])
out = []
for host in ("0.0.0.0", "127.0.0.1"):
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port)); s.listen(5); out.append(s)
        print(host, "listening", flush=True)
    except OSError as exc:
        print(host, "errno", exc.errno, flush=True)
time.sleep(1.5)
"""

HOST_SOCKETS = """
for path in ("/proc/net/tcp", "/proc/net/tcp6", "/proc/net/udp", "/proc/net/unix"):
    try:
        print(path, open(path).read())
    except OSError as exc:
        print(path, "errno", exc.errno)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("net", ["none", "loopback"])
def test_net01_connect_to_a_host_loopback_service(sandbox: Runner, tcp_listener, canaries, net: str) -> None:
    """NET-01 TCP connect to a service the host runs on 127.0.0.1:PORT and send a token.
    Stopped by: the network namespace (the job's loopback is its own, or absent)."""
    outcome = job(sandbox, None, PY, "-c", CONNECT_TCP, str(tcp_listener.port), canaries.token,
                  flags=("--net", net))
    settle(tcp_listener)
    assert tcp_listener.events == [], tcp_listener.events
    assert "connected" not in outcome.stdout, outcome.stdout


@pytest.mark.parametrize("policy", ("judge", "compile"))
def test_net01b_connect_under_judge_and_compile(root_sandbox: Runner, tcp_listener, canaries, policy: str) -> None:
    """NET-01b the host loopback connect under the judge and compile policies.
    Stopped by: seccomp (no socket() in these profiles: EPERM) and the network namespace."""
    outcome = job(root_sandbox, None, PY, "-c", CONNECT_TCP, str(tcp_listener.port), canaries.token, policy=policy)
    settle(tcp_listener)
    assert tcp_listener.events == []
    assert "127.0.0.1 errno 1" in outcome.stdout, outcome.stdout


@pytest.mark.parametrize("net", ["none", "loopback"])
def test_net02_udp_to_a_host_loopback_service(root_sandbox: Runner, udp_listener, canaries, net: str) -> None:
    """NET-02 UDP datagrams to a host listener on 127.0.0.1:PORT.
    Stopped by: the network namespace."""
    job(root_sandbox, None, PY, "-c", SEND_UDP, str(udp_listener.port), canaries.token, flags=("--net", net))
    settle(udp_listener)
    assert udp_listener.events == [], udp_listener.events


@pytest.mark.parametrize("policy", POLICIES)
def test_net03_raw_and_packet_sockets(root_sandbox: Runner, udp_listener, canaries, policy: str) -> None:
    """NET-03 AF_PACKET and SOCK_RAW sockets, and a hand-made UDP packet to the host listener.
    Stopped by: seccomp (AF_PACKET: EAFNOSUPPORT; no socket at all in judge/compile), no CAP_NET_RAW,
    the network namespace."""
    outcome = job(root_sandbox, None, PY, "-c", RAW_SOCKETS, str(udp_listener.port), canaries.token,
                  policy=policy, flags=("--net", "loopback"))
    settle(udp_listener)
    assert udp_listener.events == []
    assert "opened" not in outcome.stdout, outcome.stdout
    assert ("packet errno 97" if policy == "default" else "packet errno 1") in outcome.stdout


@pytest.mark.parametrize("policy", ("default", "compile"))
def test_net04_netlink_sockets(root_sandbox: Runner, policy: str) -> None:
    """NET-04 netlink (route, audit, netfilter, uevent) to list or change interfaces and firewall
    rules, and /proc/net/dev: the host's interfaces must not show.
    Stopped by: seccomp (AF_NETLINK: EAFNOSUPPORT / EPERM), the network namespace."""
    outcome = job(root_sandbox, None, PY, "-c", NETLINK, policy=policy, flags=("--net", "loopback"))
    assert "opened" not in outcome.stdout, outcome.stdout
    host_interfaces = [name for name in os.listdir("/sys/class/net") if name != "lo"]
    for name in host_interfaces:
        assert f"{name}:" not in outcome.stdout, (name, outcome.stdout)


def test_net05_host_abstract_unix_socket(sandbox: Runner, abstract_listener, canaries) -> None:
    """NET-05 connect to an abstract unix socket the host listens on (unique name), stream, dgram
    and seqpacket.
    Stopped by: the network namespace (abstract names are per namespace), Landlock scoping."""
    for net in ("none", "loopback"):
        outcome = job(sandbox, None, PY, "-c", ABSTRACT, abstract_listener.name, canaries.token,
                      flags=("--net", net))
        assert "connected" not in outcome.stdout, outcome.stdout
    settle(abstract_listener)
    assert abstract_listener.events == []


def test_net06_a_port_bound_in_the_job_is_not_on_the_host(root_sandbox: Runner) -> None:
    """NET-06 bind and listen on 0.0.0.0:PORT / 127.0.0.1:PORT inside the job (loopback mode); while it
    listens, the host must see nothing there.
    Stopped by: the network namespace."""
    port = _free_port()
    command = [root_sandbox.python, "-m", "sandboxd", "run", "--net", "loopback", "--", PY, "-c",
               BIND_AND_SERVE, str(port)]
    proc = subprocess.Popen(command, env=root_sandbox.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = proc.stdout.readline().decode()
        assert "listening" in first, first
        time.sleep(0.2)
        with socket.socket() as probe:
            probe.settimeout(1)
            assert probe.connect_ex(("127.0.0.1", port)) != 0, "the job's port is reachable from the host"
        hex_port = f":{port:04X}"
        listening = [line for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                     if line.split()[1].endswith(hex_port) and line.split()[3] == "0A"]
        assert listening == []
    finally:
        proc.communicate(timeout=30)


def test_net07_host_sockets_are_not_listed(root_sandbox: Runner, tcp_listener, abstract_listener) -> None:
    """NET-07 read /proc/net/{tcp,tcp6,udp,unix} for the host's listening sockets (the test's TCP port
    and abstract name).
    Stopped by: the network namespace (/proc/net shows the job's own namespace)."""
    outcome = job(root_sandbox, None, PY, "-c", HOST_SOCKETS)
    assert f":{tcp_listener.port:04X}" not in outcome.stdout
    assert abstract_listener.name not in outcome.stdout
