"""Fuzz harness: seccomp profile JSON -> parse -> compile to BPF.

Every input is written to a temporary file (one per process, rewritten for every input) and
loaded with the real entry point ``load_profile(path)`` (bytes -> UTF-8 -> ``json.loads`` ->
``parse_profile``). A profile that parses is compiled for the native arch with
``compile_profile``; a checksum of the input picks ``allow_foreign_arches``, ``notify_kills``
and whether the job holds the capabilities the profile's ``includes.caps`` name, so every
branch of the compiler gets exercised.

Contract:
* loading: the only exception that may escape is ``ProfileError``, whose ``str()`` is one
  line starting with the source (the file path);
* compiling a parsed profile for the native arch raises nothing at all (``ValueError`` is
  reserved for a non-native arch, which this harness never asks for) and returns a BPF
  program of whole 8-byte instructions.

Findings that are already known (each has a strict-xfail regression test in
``tests/test_fuzz_regressions.py``) are tolerated unless ``FUZZ_STRICT=1``; remove an entry
from ``KNOWN`` when its bug is fixed.

Run: ``python fuzz/fuzz_seccomp_profile.py SCRATCH_DIR fuzz/corpus/seccomp -max_total_time=30``.
When ``../shared/real-inputs/seccomp`` exists next to the checkout it is added (read only, in
place) to the corpus directories given on the command line.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import tempfile
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
REAL_INPUTS = REPO.parent / "shared" / "real-inputs" / "seccomp"

try:  # optional: replaying seeds (tests/test_fuzz_harnesses.py) works without atheris
    import atheris
except ImportError:  # pragma: no cover - depends on the environment
    atheris = None

with atheris.instrument_imports(include=["sandboxd"]) if atheris else contextlib.nullcontext():
    from sandboxd.policy.seccomp_compile import CompiledFilter, compile_profile
    from sandboxd.policy.seccomp_profile import ProfileError, SeccompProfile, load_profile, parse_profile

STRICT = os.environ.get("FUZZ_STRICT", "") not in ("", "0")


class ContractViolation(AssertionError):
    """The profile loader or compiler broke its contract for this input."""


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
    for ident, (_test, predicate) in KNOWN.items():
        if predicate(exc):  # type: ignore[operator]
            return ident
    return None


def _check_error(exc: BaseException, source: str, strict: bool) -> str | None:
    if not strict:
        ident = known_finding(exc)
        if ident is not None:
            _report_known(ident)
            return ident
    if not isinstance(exc, ProfileError):
        raise ContractViolation(f"{type(exc).__name__} escaped the profile loader: {exc!r}") from exc
    text = str(exc)
    if text.splitlines() != [text]:
        raise ContractViolation(f"ProfileError message is not one line: {text!r}") from exc
    if not text.startswith(source + ": "):
        raise ContractViolation(f"ProfileError does not name its source {source!r}: {text!r}") from exc
    return None


def check_compile(profile: SeccompProfile, selector: int = 0) -> CompiledFilter:
    """Compile for the native arch; anything raised is a contract violation."""
    caps: frozenset[str] = frozenset()
    if selector & 4:
        caps = frozenset(c for rule in profile.syscalls for c in rule.includes.caps)
    try:
        compiled = compile_profile(
            profile,
            capabilities=caps,
            allow_foreign_arches=bool(selector & 1),
            notify_kills=bool(selector & 2),
        )
    except Exception as exc:  # noqa: BLE001 - judging every exception is the point
        raise ContractViolation(f"compiling a parsed profile raised {type(exc).__name__}: {exc!r}") from exc
    if not compiled.bpf or len(compiled.bpf) % 8:
        raise ContractViolation(f"compiled BPF has {len(compiled.bpf)} bytes")
    return compiled


def check_profile_data(data: object, source: str = "fuzz.json", *, strict: bool = True,
                       selector: int = 0) -> SeccompProfile | None:
    """Decoded JSON -> parse_profile -> compile_profile (what the hypothesis tests drive)."""
    try:
        profile = parse_profile(data, source)
    except Exception as exc:  # noqa: BLE001
        _check_error(exc, source, strict)
        return None
    check_compile(profile, selector)
    return profile


_TMP: Path | None = None


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
        fd, name = tempfile.mkstemp(prefix="sandboxd-fuzz-", suffix=".json", dir=_scratch_dir())
        os.close(fd)
        _TMP = Path(name)
        atexit.register(_TMP.unlink, missing_ok=True)
    return _TMP


def check_one(data: bytes, *, strict: bool = True) -> SeccompProfile | None:
    path = _tmp_path()
    path.write_bytes(data)
    source = str(path)
    try:
        profile = load_profile(path)
    except Exception as exc:  # noqa: BLE001
        _check_error(exc, source, strict)
        return None
    check_compile(profile, zlib.crc32(data))
    return profile


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    check_one(data, strict=STRICT)


def main() -> None:
    if atheris is None:
        sys.exit("atheris is not installed in this Python: pip install atheris (see fuzz/README.md)")
    argv = list(sys.argv)
    corpus_dirs = [a for a in argv[1:] if not a.startswith("-")]
    fuzzing = corpus_dirs and all(os.path.isdir(d) for d in corpus_dirs)  # not replaying single files
    if fuzzing and REAL_INPUTS.is_dir() and str(REAL_INPUTS) not in corpus_dirs:
        argv.append(str(REAL_INPUTS))  # read in place, never copied; libFuzzer writes only to the first dir
    atheris.enabled_hooks.add("RegEx")
    atheris.Setup(argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
