"""Fuzz harness: policy files and command-line overrides.

Input layout: ``TOML bytes [ NUL override-bytes ]``.

* The bytes before the first NUL are written to a temporary file (one per process, rewritten
  for every input) and go through the real entry points, as ``load_policy`` uses them:
  ``read_policy_file(path)`` -> ``validate_policy(data, str(path))`` -> ``check_host_paths``
  -> ``policy_hash``.
* The bytes after the NUL (if any) are decoded into an ``Overrides`` (mounts, env, network,
  hostname, as ``sandboxd run`` flags would give them) and applied with ``apply_overrides`` to
  the fuzzed policy when it validated, otherwise to the shipped ``default`` policy.

Contract: the only exception that may escape is ``PolicyError``, and its ``str()`` is one line
that starts with the source (the file path, or ``command line`` for overrides).

Findings that are already known (each has a strict-xfail regression test in
``tests/test_fuzz_regressions.py``) are tolerated unless ``FUZZ_STRICT=1``, so a fuzz run keeps
looking for new ones; remove an entry from ``KNOWN`` when its bug is fixed.

Run: ``python fuzz/fuzz_policy.py SCRATCH_DIR fuzz/corpus/policy -max_total_time=30`` (libFuzzer
writes new inputs into the first directory; see fuzz/README.md and fuzz/run.py).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import tempfile
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

try:  # optional: replaying seeds (tests/test_fuzz_harnesses.py) works without atheris
    import atheris
except ImportError:  # pragma: no cover - depends on the environment
    atheris = None

with atheris.instrument_imports(include=["sandboxd", "tomllib"]) if atheris else contextlib.nullcontext():
    from sandboxd.errors import PolicyError
    from sandboxd.policy.load import (
        SHIPPED_POLICIES,
        LoadedPolicy,
        Overrides,
        apply_overrides,
        check_host_paths,
        read_policy_file,
        validate_policy,
    )
    from sandboxd.policy.model import Policy, policy_hash

STRICT = os.environ.get("FUZZ_STRICT", "") not in ("", "0")


class ContractViolation(AssertionError):
    """The loader broke its contract for this input."""


# --------------------------------------------------------------------------- known findings


def _frames(exc: BaseException) -> list[str]:
    return [f.filename for f in traceback.extract_tb(exc.__traceback__)]


def _is_multiline_policy_error(exc: BaseException) -> bool:
    return isinstance(exc, PolicyError) and str(exc).splitlines() != [str(exc)]


KNOWN: dict[str, tuple[str, object]] = {
    # id: (regression test in tests/test_fuzz_regressions.py, predicate on the exception)
    # (none open: every finding so far is fixed and has a regression test)
}


_REPORTED: set[str] = set()


def _report_known(ident: str) -> None:
    """Say once per process that a known finding was hit (fuzz/run.py collects these lines)."""
    if ident not in _REPORTED:
        _REPORTED.add(ident)
        print(f"fuzz: tolerated known finding {ident} "
              f"(tests/test_fuzz_regressions.py::{KNOWN[ident][0]})", file=sys.stderr, flush=True)


def known_finding(exc: BaseException) -> str | None:
    """The id of the known finding ``exc`` is an instance of, or None."""
    for ident, (_test, predicate) in KNOWN.items():
        if predicate(exc):  # type: ignore[operator]
            return ident
    return None


def _check_error(exc: BaseException, source: str, strict: bool) -> str | None:
    """Raise ContractViolation unless ``exc`` is an allowed PolicyError (or tolerated known finding)."""
    if not strict:
        ident = known_finding(exc)
        if ident is not None:
            _report_known(ident)
            return ident
    if not isinstance(exc, PolicyError):
        raise ContractViolation(f"{type(exc).__name__} escaped the policy loader: {exc!r}") from exc
    text = str(exc)
    if text.splitlines() != [text]:
        raise ContractViolation(f"PolicyError message is not one line: {text!r}") from exc
    if not text.startswith(source + ": "):
        raise ContractViolation(f"PolicyError does not name its source {source!r}: {text!r}") from exc
    return None


# --------------------------------------------------------------------------- overrides decoding


class ByteReader:
    """Deterministic consumer of fuzz bytes (atheris' FuzzedDataProvider is not needed)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def text(self) -> str:
        n = self.byte()
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        # argv strings: undecodable bytes arrive as lone surrogates (surrogateescape)
        return chunk.decode("utf-8", "surrogateescape")


_FLAGS = ("--tmpfs", "--ro-bind", "--bind")
_SOURCES = ("/usr", "/etc", "/tmp", "/", ".", "..", "/bin", "/proc/self", "/dev/null", "/nonexistent", "")
_NETWORKS = ("none", "loopback")
_HOSTNAMES = ("sandbox", "a", "x" * 63, "x" * 64, "-a", "a-")


def decode_overrides(data: bytes) -> Overrides:
    r = ByteReader(data)
    mounts = []
    for _ in range(r.byte() % 4):
        flag = _FLAGS[r.byte() % len(_FLAGS)]
        pick = r.byte()
        source = _SOURCES[pick % len(_SOURCES)] if pick < 128 else r.text()
        if flag == "--tmpfs":
            source = ""
        mounts.append((flag, source, r.text()))
    env = tuple((r.text(), r.text()) for _ in range(r.byte() % 4))
    pick = r.byte()
    network = None if pick % 4 == 0 else _NETWORKS[pick % 2] if pick % 4 == 1 else r.text()
    pick = r.byte()
    hostname = None if pick % 3 == 0 else _HOSTNAMES[pick % len(_HOSTNAMES)] if pick % 3 == 1 else r.text()
    return Overrides(mounts=tuple(mounts), env=env, network=network, hostname=hostname)


# --------------------------------------------------------------------------- the harness

_TMP: Path | None = None
_DEFAULT: LoadedPolicy | None = None


def _scratch_dir() -> str | None:
    """Where the per-process input file lives: $FUZZ_TMPDIR, else /dev/shm (a tmpfs: opening a
    file on a disk-backed /tmp can cost milliseconds, more than parsing), else the default."""
    for candidate in (os.environ.get("FUZZ_TMPDIR"), "/dev/shm"):
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK):
            return candidate
    return None


def _tmp_path() -> Path:
    global _TMP
    if _TMP is None:
        fd, name = tempfile.mkstemp(prefix="sandboxd-fuzz-", suffix=".toml", dir=_scratch_dir())
        os.close(fd)
        _TMP = Path(name)
        atexit.register(_TMP.unlink, missing_ok=True)
    return _TMP


def _default_policy() -> LoadedPolicy:
    global _DEFAULT
    if _DEFAULT is None:
        path = SHIPPED_POLICIES / "default.toml"
        policy = validate_policy(read_policy_file(path), str(path))
        _DEFAULT = LoadedPolicy(name="default", source=str(path), policy=policy, hash=policy_hash(policy))
    return _DEFAULT


def check_policy_text(text: bytes, *, strict: bool = True) -> Policy | None:
    """File bytes -> read_policy_file -> validate_policy -> check_host_paths; the validated policy or None."""
    path = _tmp_path()
    path.write_bytes(text)
    source = str(path)
    try:
        data = read_policy_file(path)
        policy = validate_policy(data, source)
        check_host_paths(policy, source)
        policy_hash(policy)
        return policy
    except Exception as exc:  # noqa: BLE001 - judging every exception is the point
        _check_error(exc, source, strict)
        return None


def check_policy_data(data: object, source: str = "fuzz.toml", *, strict: bool = True) -> Policy | None:
    """Already-decoded data -> validate_policy (what the hypothesis tests drive)."""
    try:
        policy = validate_policy(data, source)  # type: ignore[arg-type]
        policy_hash(policy)
        return policy
    except Exception as exc:  # noqa: BLE001
        _check_error(exc, source, strict)
        return None


def check_overrides(base: LoadedPolicy, overrides: Overrides, *, strict: bool = True) -> LoadedPolicy | None:
    try:
        return apply_overrides(base, overrides)
    except Exception as exc:  # noqa: BLE001
        _check_error(exc, "command line", strict)
        return None


def check_one(data: bytes, *, strict: bool = True) -> None:
    text, sep, rest = data.partition(b"\0")
    policy = check_policy_text(text, strict=strict)
    if not sep:
        return
    if policy is not None:
        base = LoadedPolicy(name="fuzz", source=str(_tmp_path()), policy=policy, hash=policy_hash(policy))
    else:
        base = _default_policy()
    check_overrides(base, decode_overrides(rest), strict=strict)


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    check_one(data, strict=STRICT)


def main() -> None:
    if atheris is None:
        sys.exit("atheris is not installed in this Python: pip install atheris (see fuzz/README.md)")
    atheris.enabled_hooks.add("RegEx")
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
