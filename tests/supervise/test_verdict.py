"""The verdict precedence (pure logic) and how request limits narrow a policy's."""

from __future__ import annotations

import os
import signal

import pytest

from sandboxd.jail.plan import JobLimits
from sandboxd.supervise.output import pipe_for
from sandboxd.supervise.verdict import Ending, decide

LIMITS = JobLimits(cpu_time=1, wall_time=2, memory=64 << 20, pids=8, output=10, fsize=100)


@pytest.mark.parametrize("ending, expected", [
    (Ending(exit_code=0), "OK"),
    (Ending(exit_code=3), "NONZERO_EXIT"),
    (Ending(signal=11), "SIGNALED"),
    (Ending(signal=9, killed_for="wall_time"), "WALL_TIME_LIMIT"),
    (Ending(signal=9, killed_for="cpu_time"), "TIME_LIMIT"),
    # A CPU kill that happened while the output cap was passed: the cap fired first.
    (Ending(signal=9, killed_for="cpu_time", output_capped="stdout"), "OUTPUT_LIMIT"),
    (Ending(signal=signal.SIGXFSZ), "FILE_SIZE_LIMIT"),
    (Ending(exit_code=1, full_tmpfs=["/tmp"]), "FILE_SIZE_LIMIT"),
    (Ending(exit_code=0, full_tmpfs=["/tmp"]), "OK"),  # filled, but recovered
    (Ending(exit_code=1, pids_limit_hits=3), "PIDS_LIMIT"),
    (Ending(exit_code=0, pids_limit_hits=3), "OK"),
    (Ending(signal=9, killed_for="wall_time", pids_limit_hits=3), "PIDS_LIMIT"),
    (Ending(signal=9, oom_kills=1), "MEMORY_LIMIT"),
    (Ending(signal=9, oom_kills=1, output_capped="stderr"), "MEMORY_LIMIT"),
    (Ending(signal=9, seccomp_main_kill=True, oom_kills=1), "SECCOMP"),
    (Ending(setup_error={"stage": "exec"}, exit_code=127), "EXEC_FAILED"),
    (Ending(setup_error={"stage": "mounts"}), "SETUP_ERROR"),
])
def test_precedence(ending: Ending, expected: str) -> None:
    assert decide(ending, LIMITS)[0] == expected


def test_limit_names_its_value() -> None:
    assert decide(Ending(signal=9, killed_for="cpu_time"), LIMITS)[1] == {"name": "cpu_time", "value": 1}
    assert decide(Ending(signal=9, oom_kills=2), LIMITS)[1] == {"name": "memory", "value": 64 << 20}
    assert decide(Ending(exit_code=2), LIMITS)[1] is None


def test_requests_narrow_and_never_widen() -> None:
    policy = JobLimits(cpu_time=2, memory=100, pids=None)
    narrowed = policy.narrowed(JobLimits(cpu_time=5, memory=50, pids=10, wall_time=3))
    assert narrowed == JobLimits(cpu_time=2, memory=50, pids=10, wall_time=3)
    assert policy.narrowed(JobLimits()) == policy


def test_capped_stream_keeps_exactly_the_cap() -> None:
    stream, write_fd = pipe_for("stdout", 10, None, keep=True)
    os.write(write_fd, b"0123456789abcdef")
    assert stream.pump() is False
    assert bytes(stream.kept) == b"0123456789" and stream.truncated
    os.close(write_fd)
    stream.close()


def test_capped_stream_under_the_cap_reads_to_eof() -> None:
    stream, write_fd = pipe_for("stderr", 100, None, keep=True)
    os.write(write_fd, b"hello")
    os.close(write_fd)
    stream.drain()
    assert bytes(stream.kept) == b"hello" and not stream.truncated and stream.closed
