#!/usr/bin/env python3
"""Run every fuzz harness for a bounded time and report how many inputs each one executed.

    python fuzz/run.py                 # CI: 20 s per harness (FUZZ_SECONDS=N to change)
    python fuzz/run.py --long          # 1 hour per harness (FUZZ_SECONDS still wins if set)
    python fuzz/run.py --strict        # known findings (fuzz_*.py KNOWN) count as crashes too
    python fuzz/run.py fuzz_policy     # only the named harness(es)

The harnesses run under ``$FUZZ_PYTHON`` (default: this checkout's .venv, which needs
``pip install atheris``). Everything a run writes goes to a scratch directory (``$FUZZ_WORKDIR``,
default a new temporary directory, printed at the end): the grown corpus of each harness in
``corpus/<harness>/`` and crash/timeout/OOM reproducers in ``crashes/<harness>-crash-*``
(libFuzzer's ``-artifact_prefix``). The checked-in seed corpora in ``fuzz/corpus/`` are only read.

Exit status: 0 when no harness crashed, 1 when any did (its reproducer is printed), 2 on a
set-up problem (no atheris).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
REPO = FUZZ.parent

# harness -> (seed corpus directory, libFuzzer dictionary, -max_len: room for the largest
# real inputs and for integers past Python's 4300-digit conversion limit)
HARNESSES = {
    "fuzz_policy": ("policy", "policy.dict", 16384),
    "fuzz_seccomp_profile": ("seccomp", "seccomp.dict", 65536),
}

DEFAULT_SECONDS = 20
LONG_SECONDS = 3600

_DONE = re.compile(r"^#(\d+)\s+DONE\b", re.MULTILINE)
_STAT = re.compile(r"^stat::number_of_executed_units:\s*(\d+)", re.MULTILINE)
_PULSE = re.compile(r"^#(\d+)\s+(?:pulse|NEW|REDUCE|INITED)\b", re.MULTILINE)
_ARTIFACT = re.compile(r"Test unit written to (\S+)")
_KNOWN = re.compile(r"^fuzz: tolerated known finding (\S+)", re.MULTILINE)


def _python() -> str:
    configured = os.environ.get("FUZZ_PYTHON")
    if configured:
        return configured
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _executions(log: str) -> int | None:
    for pattern in (_STAT, _DONE):
        found = pattern.findall(log)
        if found:
            return int(found[-1])
    found = _PULSE.findall(log)  # a crashed run prints neither: the last progress line is the best we have
    return int(found[-1]) if found else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("harnesses", nargs="*", metavar="HARNESS",
                        help=f"which to run (default: all of {', '.join(HARNESSES)})")
    parser.add_argument("--long", action="store_true", help=f"{LONG_SECONDS} s per harness instead of {DEFAULT_SECONDS}")
    parser.add_argument("--strict", action="store_true", help="treat known findings as crashes (FUZZ_STRICT=1)")
    parser.add_argument("--timeout", type=int, default=10, help="libFuzzer -timeout: seconds one input may take")
    args = parser.parse_args(argv)
    unknown = [h for h in args.harnesses if h not in HARNESSES]
    if unknown:
        parser.error(f"unknown harness {', '.join(unknown)} (have: {', '.join(HARNESSES)})")

    seconds = int(os.environ.get("FUZZ_SECONDS") or (LONG_SECONDS if args.long else DEFAULT_SECONDS))
    python = _python()
    probe = subprocess.run([python, "-c", "import atheris"], capture_output=True)
    if probe.returncode != 0:
        print(f"fuzz: atheris is not importable by {python}; `{python} -m pip install atheris` "
              "or set FUZZ_PYTHON to a Python that has it", file=sys.stderr)
        return 2

    work = Path(os.environ.get("FUZZ_WORKDIR") or tempfile.mkdtemp(prefix="sandboxd-fuzz-"))
    (work / "crashes").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, FUZZ_STRICT="1" if args.strict else os.environ.get("FUZZ_STRICT", "0"))
    # the harnesses rewrite one input file per execution: keep it on a tmpfs, and remove it after
    # (libFuzzer exits without running Python's atexit handlers)
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    scratch = Path(tempfile.mkdtemp(prefix="sandboxd-fuzz-", dir=os.environ.get("FUZZ_TMPDIR") or shm))
    env["FUZZ_TMPDIR"] = str(scratch)
    try:
        return _run_all(args, python, seconds, work, env)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_all(args: argparse.Namespace, python: str, seconds: int, work: Path, env: dict[str, str]) -> int:
    failed: list[str] = []
    summary: list[str] = []
    for name in args.harnesses or list(HARNESSES):
        seeds, dictionary, max_len = HARNESSES[name]
        grown = work / "corpus" / name
        grown.mkdir(parents=True, exist_ok=True)
        log_path = work / f"{name}.log"
        cmd = [
            python, str(FUZZ / f"{name}.py"),
            str(grown), str(FUZZ / "corpus" / seeds),  # new units go to the first (scratch) dir
            f"-max_total_time={seconds}",
            f"-timeout={args.timeout}",
            f"-max_len={max_len}",
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
            f"-dict={FUZZ / dictionary}",
            f"-artifact_prefix={work / 'crashes' / name}-",
        ]
        print(f"== {name}: {seconds} s (log: {log_path})", flush=True)
        start = time.monotonic()
        with open(log_path, "w") as log_file:
            rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT).returncode
        elapsed = time.monotonic() - start
        log = log_path.read_text(errors="replace")
        count = _executions(log)
        line = f"{name}: {count if count is not None else '?'} executions in {elapsed:.0f} s"
        known = sorted(set(_KNOWN.findall(log)))
        if known:
            line += f" (known findings hit, tolerated: {', '.join(known)})"
        if rc != 0:
            artifacts = _ARTIFACT.findall(log)
            line += f" -- CRASH (exit {rc}); reproducer: {', '.join(artifacts) or 'see log'}"
            failed.append(name)
            tail = log.splitlines()[-40:]
            print("\n".join(tail), flush=True)
        print(line, flush=True)
        summary.append(line)

    print("\n".join(["", "== summary", *summary, f"work directory: {work}"]))
    if failed:
        print("every crash becomes a regression test: see fuzz/README.md", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
