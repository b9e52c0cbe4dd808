"""Information leaks from the host into a job: environment, descriptors, hostname, mount table,
kernel log, the job's init.

The test plants a unique token on the host side (an environment variable of the ``sandboxd``
process, a descriptor it inherits, a kernel log line, a directory name) and passes when the
job, looking everywhere it can, never prints it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.escape.conftest import POLICIES, Canaries, job
from tests.host import host_lacks
from tests.sandboxes import REPO, Runner

PY = "/usr/bin/python3"

SCAN_ENV = """
import os
print("ENV", dict(os.environ))
for entry in os.listdir('/proc'):
    if entry.isdigit() or entry in ('self', 'thread-self'):
        for name in ('environ', 'cmdline'):
            try:
                print(entry, name, open(f'/proc/{entry}/{name}', 'rb').read())
            except OSError as exc:
                print(entry, name, 'errno', exc.errno)
"""

SCAN_FDS = """
import os
for fd in range(0, 1024):
    try:
        os.fstat(fd)
    except OSError:
        continue
    print("open fd", fd)
    try:
        os.lseek(fd, 0, 0)
    except OSError:
        pass
    try:
        print(fd, os.read(fd, 4096))
    except OSError as exc:
        print(fd, 'errno', exc.errno)
for base in ('/proc/self/fd', '/proc/1/fd', '/dev/fd'):
    try:
        names = os.listdir(base)
    except OSError as exc:
        print(base, 'errno', exc.errno); continue
    for n in names:
        try:
            print(base, n, os.readlink(f'{base}/{n}'), open(f'{base}/{n}', 'rb').read(4096))
        except OSError as exc:
            print(base, n, 'errno', exc.errno)
"""

KERNEL_LOG = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(1 << 20)
n = libc.syscall(103, 3, buf, len(buf))  # syslog(SYSLOG_ACTION_READ_ALL)
print('syslog', n, ctypes.get_errno(), buf.raw[:max(n, 0)])
for path in ('/dev/kmsg', '/proc/kmsg'):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        data = b''
        try:
            for _ in range(10000):
                data += os.read(fd, 8192)
        except OSError:
            pass
        print(path, data)
    except OSError as exc:
        print(path, 'errno', exc.errno)
"""

MOUNT_TABLES = """
for path in ('/proc/self/mountinfo', '/proc/1/mountinfo', '/proc/self/mounts', '/proc/mounts', '/proc/self/mountstats'):
    try:
        print(path, open(path).read())
    except OSError as exc:
        print(path, 'errno', exc.errno)
"""


@pytest.mark.parametrize("policy", POLICIES)
def test_lk01_host_environment(root_sandbox: Runner, canaries: Canaries, policy: str) -> None:
    """LK-01 look for an environment variable set on the sandboxd process: os.environ, and
    /proc/*/environ and cmdline of every process the job can see (its init included).
    Stopped by: the policy's environment replacing the caller's; the init being non-dumpable."""
    outcome = job(root_sandbox, None, PY, "-c", SCAN_ENV, policy=policy,
                  extra_env={"SANDBOXD_ESCAPE_CANARY": canaries.token})
    assert canaries.token not in outcome.stdout + outcome.stderr
    assert "SANDBOXD_ESCAPE_CANARY" not in outcome.stdout


def test_lk01b_host_environment_root_and_rootless(sandbox: Runner, canaries: Canaries) -> None:
    """LK-01b the environment scan as root-started and rootless sandboxd.
    Stopped by: the policy's environment; the non-dumpable init."""
    outcome = job(sandbox, None, PY, "-c", SCAN_ENV, extra_env={"SANDBOXD_ESCAPE_CANARY": canaries.token})
    assert canaries.token not in outcome.stdout + outcome.stderr


def test_lk02_init_environ(sandbox: Runner, canaries: Canaries) -> None:
    """LK-02 read /proc/1/environ: the job's init is a fork of the spawner and still holds its
    environment (which the test seeds with the canary).
    Stopped by: the init being non-dumpable (EACCES)."""
    outcome = job(sandbox, None, PY, "-c",
                  "import sys\ntry: sys.stdout.buffer.write(open('/proc/1/environ','rb').read())\n"
                  "except OSError as e: print('errno', e.errno)",
                  extra_env={"SANDBOXD_ESCAPE_CANARY": canaries.token})
    assert canaries.token not in outcome.stdout
    assert outcome.stdout.strip() == "errno 13", outcome.stdout


@pytest.mark.parametrize("policy", POLICIES)
def test_lk03_inherited_descriptors(root_sandbox: Runner, canaries: Canaries, policy: str) -> None:
    """LK-03 the sandboxd process is given extra descriptors (a host canary file, a pipe holding the
    token); the job reads every descriptor number and /proc/self/fd, /proc/1/fd, /dev/fd.
    Stopped by: the fds stage (only stdio reaches the program; everything else closed)."""
    secret = os.open(canaries.readable[0], os.O_RDONLY)
    read_end, write_end = os.pipe()
    os.write(write_end, canaries.token.encode())
    os.set_inheritable(secret, True)
    os.set_inheritable(read_end, True)
    try:
        outcome = job(root_sandbox, None, PY, "-S", "-c", SCAN_FDS, policy=policy, pass_fds=(secret, read_end))
    finally:
        for fd in (secret, read_end, write_end):
            os.close(fd)
    assert canaries.token not in outcome.stdout + outcome.stderr
    open_fds = [int(line.split()[2]) for line in outcome.stdout.splitlines() if line.startswith("open fd")]
    assert all(fd <= 3 for fd in open_fds), open_fds  # 0-2 and python's own fd for os.listdir at most


def test_lk03b_inherited_descriptors_root_and_rootless(sandbox: Runner, canaries: Canaries) -> None:
    """LK-03b the descriptor scan as root-started and rootless sandboxd.
    Stopped by: the fds stage."""
    secret = os.open(canaries.readable[0], os.O_RDONLY)
    os.set_inheritable(secret, True)
    try:
        outcome = job(sandbox, None, PY, "-S", "-c", SCAN_FDS, pass_fds=(secret,))
    finally:
        os.close(secret)
    assert canaries.token not in outcome.stdout + outcome.stderr


def test_lk04_host_hostname(sandbox: Runner) -> None:
    """LK-04 the host's hostname and NIS domain name through uname, /proc/sys/kernel/hostname and
    /proc/sys/kernel/domainname.
    Stopped by: the UTS namespace (hostname from the policy)."""
    host = socket.gethostname()
    domain = Path("/proc/sys/kernel/domainname").read_text().strip()
    script = ("import os\nprint(os.uname().nodename)\nprint(open('/proc/sys/kernel/hostname').read().strip())\n"
              "print(open('/proc/sys/kernel/domainname').read().strip())")
    outcome = job(sandbox, None, PY, "-c", script)
    nodename, proc_hostname, proc_domain = outcome.stdout.split("\n")[:3]
    assert nodename == proc_hostname == "sandbox"
    assert nodename != host
    if domain not in ("", "(none)"):
        assert proc_domain != domain


def test_lk05_mount_tables_do_not_name_host_directories(sandbox: Runner, canaries: Canaries, hostile: Path) -> None:
    """LK-05 /proc/self/mountinfo, /proc/1/mountinfo, /proc/mounts and mountstats must not name host
    directories the job was not given (the canary directory, /root, the sandboxd checkout).
    (The host source path of a directory the policy does bind shows in mountinfo's root field:
    that is the kernel's format, see docs/escape-suite.md.)
    Stopped by: the mount namespace (pivot_root, the old root detached)."""
    outcome = job(sandbox, hostile, PY, "-c", MOUNT_TABLES)
    assert "/proc/self/mountinfo" in outcome.stdout
    for needle in (canaries.name, str(canaries.directory), "/root", str(REPO)):
        assert needle not in outcome.stdout, needle


def test_lk06_kernel_log(root_sandbox: Runner, canaries: Canaries) -> None:
    """LK-06 read the kernel log (the test writes a token line into the host's /dev/kmsg first):
    syslog(2) / dmesg, /dev/kmsg, /proc/kmsg.
    Stopped by: seccomp (syslog not in the profile: EPERM), the minimal /dev (no kmsg), /proc/kmsg
    masked by /dev/null."""
    try:
        with open("/dev/kmsg", "w") as kmsg:
            kmsg.write(f"sandboxd escape suite {canaries.token}\n")
    except OSError:
        host_lacks("cannot write the host's kernel log")
    outcome = job(root_sandbox, None, PY, "-c", KERNEL_LOG)
    assert canaries.token not in outcome.stdout
    assert outcome.stdout.startswith("syslog -1 1 "), outcome.stdout[:200]
    assert "/dev/kmsg errno 2" in outcome.stdout
    assert "/proc/kmsg b''" in outcome.stdout


def test_lk07_cgroup_paths(root_sandbox: Runner) -> None:
    """LK-07 /proc/self/cgroup and /proc/1/cgroup: the host's cgroup hierarchy (sandboxd's subtree,
    the job id) must not show.
    Stopped by: the cgroup namespace."""
    outcome = job(root_sandbox, None, "/bin/cat", "/proc/self/cgroup", "/proc/1/cgroup",
                  flags=("--memory-limit", "256M"))
    paths = {line.split(":", 2)[2] for line in outcome.stdout.splitlines()}
    assert paths == {"/"}, paths
    assert outcome.result["job_id"] not in outcome.stdout


def test_lk08_init_cmdline_names_no_host_path(root_sandbox: Runner) -> None:
    """LK-08 /proc/1/cmdline (and /proc/1/status) of the job's init: must not reveal host paths the
    job was not given, such as the location of sandboxd's interpreter or checkout.
    Stopped by: the spawner blanking its command line and environment area (proctitle.py)."""
    outcome = job(root_sandbox, None, PY, "-c",
                  "print(open('/proc/1/cmdline','rb').read()); print(open('/proc/1/status').read())")
    interpreter_dir = str(Path(root_sandbox.python).parent)
    bound_prefixes = ("/usr/", "/bin/", "/lib")
    if interpreter_dir.startswith(bound_prefixes):
        host_lacks("sandboxd runs from a path the job sees anyway")
    assert interpreter_dir not in outcome.stdout and str(REPO) not in outcome.stdout, outcome.stdout
