"""PID 1 of the job: a tiny reaper, so the program runs as PID 2 with ordinary signals.

Why not run the program as PID 1: the kernel protects a namespace's init from every signal
it has no handler for, even from the kernel's soft limits — a program that is PID 1 cannot
kill itself with SIGTERM, `abort()` ends in SIGSEGV instead of SIGABRT, SIGXFSZ and SIGXCPU
are dropped, and orphans (double-forked daemons) would be its to reap. bubblewrap and
container inits make the same choice.

The init is this same (already confined) process after the last privileged stage: it has
no capabilities, no_new_privs and Landlock, and holds none of the job's stdio. It

- takes the program's seccomp user-notification listener (when the policy names kills):
  a kill rule is compiled as NOTIFY, so the init learns the syscall, its number and
  architecture, and kills the caller itself; the profile's own NOTIFY rules get EPERM;
- reaps every orphan, and when the program ends writes one frame on the status pipe — the
  program's exact wait status and what seccomp stopped — and exits; its exit ends the PID
  namespace, so nothing the job started outlives it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import struct

from sandboxd.jail import report
from sandboxd.jail import syscalls as sc
from sandboxd.jail.plan import SeccompPlan

PR_SET_DUMPABLE = 4
# struct seccomp_notif { u64 id; u32 pid; u32 flags; struct seccomp_data { int nr; u32 arch;
#   u64 instruction_pointer; u64 args[6]; } } and struct seccomp_notif_resp.
_NOTIF = struct.Struct("=QIIiIQ6Q")
_NOTIF_RESP = struct.Struct("=QqiI")
SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101
MAX_RECORDED_KILLS = 16
NATIVE_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}.get(os.uname().machine, 0)


class _Seccomp:
    """Decides, for one notification, kill (a kill rule) or EPERM (the profile's NOTIFY)."""

    def __init__(self, plan: SeccompPlan) -> None:
        self.kill_nrs = frozenset(plan.kill_nrs)
        self.notify_nrs = frozenset(plan.notify_nrs)
        self.default_notifies = plan.default_notifies
        self.kills: list[dict] = []
        self.denied: dict[str, int] = {}

    def is_kill(self, nr: int, arch: int) -> bool:
        if arch != NATIVE_AUDIT_ARCH or nr & 0x40000000:  # foreign ABI (i386, x32)
            return True
        if nr in self.kill_nrs:
            return True
        return not (nr in self.notify_nrs or self.default_notifies)

    def handle(self, listener: int, program_pid: int) -> None:
        buffer = bytearray(_NOTIF.size)  # must be zeroed for RECV
        try:
            fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, buffer, True)
        except OSError:
            return  # the caller died or the notice was withdrawn
        notice_id, pid, _flags, nr, arch, _ip, *_args = _NOTIF.unpack(buffer)
        if self.is_kill(nr, arch):
            # Kill before answering: the call is never executed, and the whole thread group goes.
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
            if len(self.kills) < MAX_RECORDED_KILLS:
                self.kills.append({"pid": pid, "nr": nr, "arch": arch,
                                   "main": _thread_group(pid) == program_pid})
            return
        key = f"{arch}:{nr}"
        self.denied[key] = self.denied.get(key, 0) + 1
        try:
            fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, _NOTIF_RESP.pack(notice_id, 0, -errno.EPERM, 0))
        except OSError:
            pass


def _thread_group(tid: int) -> int:
    try:
        with open(f"/proc/{tid}/status") as handle:
            for line in handle:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return tid


def _take_listener(handoff_fd: int, program_pid: int) -> int:
    """Receive the program's listener fd number and copy the fd out of the program."""
    data = b""
    while len(data) < 4:
        chunk = os.read(handoff_fd, 4 - len(data))
        if not chunk:
            return -1  # the program died in set-up
        data += chunk
    (number,) = struct.unpack("=i", data)
    try:
        pidfd = sc.pidfd_open(program_pid)
        try:
            listener = sc.pidfd_getfd(pidfd, number)
        finally:
            os.close(pidfd)
    except OSError:
        os.write(handoff_fd, b"n")  # the program refuses to run: fail closed
        return -1
    os.write(handoff_fd, b"k")
    return listener


def _full(paths: tuple[str, ...]) -> list[str]:
    """Which size-limited tmpfs mounts have no space or no inodes left."""
    full = []
    for path in paths:
        try:
            info = os.statvfs(path)
        except OSError:
            continue
        if info.f_bavail == 0 or info.f_favail == 0:
            full.append(path)
    return full


def become_init(program_pid: int, status_fd: int, handoff_fd: int, seccomp: SeccompPlan | None,
                sized_tmpfs: tuple[str, ...] = ()) -> None:
    """Never returns."""
    try:
        # Not dumpable: the program (same uid) must not read our memory or /proc/1/environ,
        # which still holds the spawner's environment.
        sc.prctl(PR_SET_DUMPABLE, 0)
        # Hold none of the job's stdio: a reader of its stdout must see EOF when the
        # program and its children are done, not when we are.
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        notices = _Seccomp(seccomp) if seccomp is not None else None
        listener = -1
        if handoff_fd >= 0:
            listener = _take_listener(handoff_fd, program_pid)
            os.close(handoff_fd)
        poller = select.poll()
        poller.register(wake_r, select.POLLIN)
        if listener >= 0:
            poller.register(listener, select.POLLIN)
        while True:
            while True:  # reap everything that has ended
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    pid, status = program_pid, 0xFF00  # cannot happen: the program is ours
                if pid == 0:
                    break
                if pid == program_pid:
                    summary = {"wait_status": status, "full_tmpfs": _full(sized_tmpfs)}
                    if notices is not None:
                        summary["seccomp_kills"] = notices.kills
                        summary["seccomp_denied"] = notices.denied
                    report.write_frame(status_fd, "exit", summary)
                    os._exit(0)
            for fd, events in poller.poll():
                if fd == wake_r:
                    try:
                        os.read(wake_r, 512)
                    except BlockingIOError:
                        pass
                elif fd == listener and notices is not None:
                    if events & select.POLLIN:
                        notices.handle(listener, program_pid)
                    elif events & (select.POLLHUP | select.POLLERR):
                        poller.unregister(listener)
    except BaseException:
        os._exit(125)
