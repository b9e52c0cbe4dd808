"""Real programs in real sandboxes: compilers, compiled solutions, python3, shells, make.

Each test runs the real ``sandboxd run`` CLI, started by root and by an unprivileged user
(the ``sandbox`` fixture). Sources are written to a work directory by the test, compiled
INSIDE a ``compile`` jail, and the binaries the jail produced are then run in a ``judge``
jail with their input from ``--stdin FILE``. Outputs are checked exactly.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.sandboxes import Runner

PY = "/usr/bin/python3"

pytestmark = pytest.mark.skipif(not (os.access("/usr/bin/gcc", os.X_OK) and os.access(PY, os.X_OK)),
                                reason="needs the host's /usr/bin/gcc and /usr/bin/python3")


def run_ok(sandbox: Runner, *args: str, timeout: float = 60):
    outcome = sandbox.run(["run", "--wall-time-limit", "30", *args], timeout=timeout)
    assert outcome.returncode == 0, (outcome.returncode, outcome.stdout, outcome.stderr)
    assert outcome.result is not None and outcome.result["verdict"] == "OK", outcome.result
    return outcome


def work_dir(sandbox: Runner, files: dict[str, str]) -> Path:
    """A work directory the runner's user owns, holding ``files`` (readable by the job)."""
    work = sandbox.make_dir()
    for name, text in files.items():
        (work / name).write_text(text)
        (work / name).chmod(0o644)
    return work


def input_file(sandbox: Runner, text: str) -> Path:
    path = sandbox.make_dir("input-") / "input.txt"
    path.write_text(text)
    path.chmod(0o644)
    return path


def assert_executable(path: Path) -> None:
    assert path.is_file(), f"the compile jail did not produce {path}"
    assert path.stat().st_mode & stat.S_IXUSR, oct(path.stat().st_mode)
    assert path.read_bytes()[:4] == b"\x7fELF"


HELLO_C = r"""
#include <stdio.h>

int main(void) {
    long n, x, sum = 0, sumsq = 0, product = 1;
    if (scanf("%ld", &n) != 1) return 3;
    for (long i = 0; i < n; i++) {
        if (scanf("%ld", &x) != 1) return 4;
        sum += x;
        sumsq += x * x;
        product = (product * x) % 1000000007L;
    }
    printf("hello from C\n");
    printf("n=%ld sum=%ld sumsq=%ld product=%ld\n", n, sum, sumsq, product);
    return 0;
}
"""

VECTOR_CPP = r"""
#include <algorithm>
#include <iostream>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

int main() {
    std::vector<long long> values;
    long long x;
    while (std::cin >> x) values.push_back(x);
    std::sort(values.begin(), values.end());
    long long left = 0, right = 0;
    size_t half = values.size() / 2;
    // Two threads (clone with CLONE_THREAD is allowed by the judge profile).
    std::thread a([&] { left = std::accumulate(values.begin(), values.begin() + half, 0LL); });
    std::thread b([&] { right = std::accumulate(values.begin() + half, values.end(), 0LL); });
    a.join();
    b.join();
    std::cout << "sorted:";
    for (long long v : values) std::cout << ' ' << v;
    std::cout << "\nhalves: " << left << ' ' << right << "\ntotal: " << left + right << std::endl;
    return 0;
}
"""


def test_c_program_compiled_in_compile_jail_runs_in_judge_jail(sandbox: Runner) -> None:
    work = work_dir(sandbox, {"hello.c": HELLO_C})
    compiled = run_ok(sandbox, "--policy", "compile", "--workdir", str(work), "--",
                      "gcc", "-O2", "-Wall", "-Werror", "-o", "hello", "hello.c")
    assert compiled.result["policy"]["name"] == "compile"
    assert compiled.result["layers"]["seccomp"]["profile"] == "compile"
    assert_executable(work / "hello")

    stdin = input_file(sandbox, "5\n3 -4 10 7\n1000000\n")
    judged = run_ok(sandbox, "--policy", "judge", "--workdir", str(work), "--stdin", str(stdin),
                    "--", "./hello")
    assert judged.stdout == ("hello from C\n"
                             f"n=5 sum=1000016 sumsq={9 + 16 + 100 + 49 + 10**12} "
                             "product=-840000000\n")  # C's % keeps the sign
    assert judged.result["policy"]["name"] == "judge"
    assert judged.result["layers"]["seccomp"]["profile"] == "judge"


def test_cpp_program_with_threads_compiled_and_judged(sandbox: Runner) -> None:
    work = work_dir(sandbox, {"solution.cpp": VECTOR_CPP})
    # c++ is /usr/bin/c++ -> /etc/alternatives/c++ -> g++: the compile policy binds the link.
    run_ok(sandbox, "--policy", "compile", "--workdir", str(work), "--",
           "c++", "-O2", "-std=c++17", "-pthread", "-o", "solution", "solution.cpp")
    assert_executable(work / "solution")

    stdin = input_file(sandbox, "9 -2 5\n100\n0 7\n")
    judged = run_ok(sandbox, "--policy", "judge", "--workdir", str(work), "--stdin", str(stdin),
                    "--", "./solution")
    assert judged.stdout == "sorted: -2 0 5 7 9 100\nhalves: 3 116\ntotal: 119\n"


DEEP_C = r"""
#include <stdio.h>

/* Not a tail call, and a frame of ~100 bytes: 1e6 levels need ~100 MB of stack. */
static long depth(long n) {
    volatile char pad[64];
    pad[0] = (char)n;
    if (n == 0) return pad[0];
    return depth(n - 1) + 1 + pad[0] * 0;
}

int main(void) {
    long n;
    if (scanf("%ld", &n) != 1) return 3;
    printf("%ld\n", depth(n));
    return 0;
}
"""


def test_judge_stack_limit_allows_deep_recursion(sandbox: Runner) -> None:
    """The judge policy raises the stack: the same binary that overflows 8M recurses 1e6 deep."""
    work = work_dir(sandbox, {"deep.c": DEEP_C})
    run_ok(sandbox, "--policy", "compile", "--workdir", str(work), "--",
           "gcc", "-O0", "-o", "deep", "deep.c")
    stdin = input_file(sandbox, "1000000\n")
    judged = run_ok(sandbox, "--policy", "judge", "--workdir", str(work), "--stdin", str(stdin),
                    "--", "./deep")
    assert judged.stdout == "1000000\n"
    stack = judged.result["layers"]["rlimits"]["stack"]
    assert stack[0] >= 64 << 20, stack
    # Under the default policy's 8M stack the same input overflows: the limit is what helps.
    small = sandbox.run(["run", "--wall-time-limit", "30", "--workdir", str(work),
                         "--stdin", str(stdin), "--", "./deep"])
    assert small.result["verdict"] == "SIGNALED" and small.result["signal"] == 11, small.result


SOLUTION_PY = """
import sys

def main():
    data = sys.stdin.read().split()
    n = int(data[0])
    words = data[1:1 + n]
    counts = {}
    for word in words:
        counts[word] = counts.get(word, 0) + 1
    for word in sorted(counts, key=lambda w: (-counts[w], w)):
        print(word, counts[word])
    print("total", sum(counts.values()))

main()
"""


def test_python_solution_under_judge(sandbox: Runner) -> None:
    work = work_dir(sandbox, {"solution.py": SOLUTION_PY})
    stdin = input_file(sandbox, "7\nb a c b a b z\n")
    judged = run_ok(sandbox, "--policy", "judge", "--workdir", str(work), "--stdin", str(stdin),
                    "--", PY, "solution.py")
    assert judged.stdout == "b 3\na 2\nc 1\nz 1\ntotal 7\n"
    assert judged.stderr == ""
    layers = judged.result["layers"]
    assert layers["rlimits"]["nofile"] == [64, 64]
    assert layers["rlimits"]["core"] == [0, 0]
    assert layers["rlimits"]["fsize"] == [64 << 20, 64 << 20]
    assert not (work / "__pycache__").exists()


JUDGE_REFUSALS = """
import errno, os, socket
try:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    print("fork allowed")
except OSError as exc:
    print("fork", errno.errorcode[exc.errno])
try:
    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    print("socket allowed")
except OSError as exc:
    print("socket", errno.errorcode[exc.errno])
"""


def test_judge_refuses_new_processes_and_sockets(sandbox: Runner) -> None:
    judged = run_ok(sandbox, "--policy", "judge", "--", PY, "-c", JUDGE_REFUSALS)
    assert judged.stdout.split("\n")[:2] == ["fork EPERM", "socket EPERM"], judged.stdout
    # The same probe under the default policy is allowed both: the refusal is the judge's.
    default = run_ok(sandbox, "--", PY, "-c", JUDGE_REFUSALS)
    assert "fork allowed" in default.stdout and "socket allowed" in default.stdout, default.stdout


def test_shell_pipeline_under_default(sandbox: Runner) -> None:
    outcome = run_ok(sandbox, "--", "/bin/sh", "-c", 'seq 1 1000 | sort -rn | head -3 | tr "\\n" " "')
    assert outcome.stdout == "1000 999 998 "


def test_dash_wait_returns_promptly(sandbox: Runner) -> None:
    outcome = run_ok(sandbox, "--", "/bin/sh", "-c", "sleep 0.2 & wait; echo done")
    assert outcome.stdout == "done\n"
    wall = outcome.result["usage"]["wall_s"]
    assert 0.2 <= wall < 2.0, wall


def test_coreutils_timeout_kills_and_exits_124(sandbox: Runner) -> None:
    outcome = sandbox.run(["run", "--wall-time-limit", "10", "--", "timeout", "0.5", "sleep", "5"])
    assert outcome.returncode == 124, (outcome.returncode, outcome.stderr)
    result = outcome.result
    assert result["verdict"] == "NONZERO_EXIT" and result["exit_code"] == 124, result
    assert 0.5 <= result["usage"]["wall_s"] < 2.0, result["usage"]


MAKEFILE = """\
CC = gcc
CFLAGS = -O2 -Wall -Werror

app: main.o util.o
\t$(CC) $(CFLAGS) -o $@ main.o util.o

%.o: %.c util.h
\t$(CC) $(CFLAGS) -c -o $@ $<

clean:
\trm -f app *.o
"""

MAIN_C = r"""
#include <stdio.h>
#include "util.h"

int main(void) {
    long n;
    while (scanf("%ld", &n) == 1) printf("%ld! = %ld, fib = %ld\n", n, factorial(n), fib(n));
    return 0;
}
"""

UTIL_C = r"""
#include "util.h"

long factorial(long n) { return n <= 1 ? 1 : n * factorial(n - 1); }

long fib(long n) {
    long a = 0, b = 1;
    for (long i = 0; i < n; i++) { long t = a + b; a = b; b = t; }
    return a;
}
"""

UTIL_H = """
#ifndef UTIL_H
#define UTIL_H
long factorial(long n);
long fib(long n);
#endif
"""


def test_make_builds_a_two_file_project(sandbox: Runner) -> None:
    work = work_dir(sandbox, {"Makefile": MAKEFILE, "main.c": MAIN_C, "util.c": UTIL_C, "util.h": UTIL_H})
    built = run_ok(sandbox, "--policy", "compile", "--workdir", str(work), "--", "make", "-j2")
    assert "main.o" in built.stdout and "util.o" in built.stdout, built.stdout
    for name in ("main.o", "util.o"):
        assert (work / name).is_file()
    assert_executable(work / "app")
    # A second make finds nothing to do: the timestamps the jail wrote are sane.
    again = run_ok(sandbox, "--policy", "compile", "--workdir", str(work), "--", "make")
    assert "up to date" in again.stdout, again.stdout

    stdin = input_file(sandbox, "5 10\n20\n")
    judged = run_ok(sandbox, "--policy", "judge", "--workdir", str(work), "--stdin", str(stdin),
                    "--", "./app")
    assert judged.stdout == ("5! = 120, fib = 5\n10! = 3628800, fib = 55\n"
                             "20! = 2432902008176640000, fib = 6765\n")


def test_compile_errors_come_back_as_a_nonzero_exit(sandbox: Runner) -> None:
    work = work_dir(sandbox, {"broken.c": "int main(void) { return undeclared; }\n"})
    outcome = sandbox.run(["run", "--wall-time-limit", "30", "--policy", "compile", "--workdir", str(work),
                           "--", "gcc", "-o", "broken", "broken.c"])
    assert outcome.returncode == 1 and outcome.result["verdict"] == "NONZERO_EXIT", outcome.result
    assert "undeclared" in outcome.stderr and "error" in outcome.stderr
    assert not (work / "broken").exists()
