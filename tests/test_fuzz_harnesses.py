"""Fuzzing that runs in CI: hypothesis properties over the loaders, and seed replay of the
atheris harnesses in ``fuzz/`` (which do not need atheris to be imported).

Contracts (the same the harnesses check, see fuzz/README.md):
* policy: ``validate_policy`` / ``read_policy_file`` / ``apply_overrides`` raise nothing but a
  one-line ``PolicyError`` that starts with its source;
* seccomp: ``parse_profile`` / ``load_profile`` raise nothing but a one-line ``ProfileError``;
  ``compile_profile`` of a parsed profile for the native arch raises nothing.

Findings that are already known (a strict-xfail test each in tests/test_fuzz_regressions.py)
are tolerated here through the harnesses' ``KNOWN`` tables, so these properties keep guarding
against new ones.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandboxd.policy.load import Overrides, load_policy
from sandboxd.policy.seccomp_profile import ACTIONS, ARCHES, GO_ARCHES, OPERATORS

REPO = Path(__file__).resolve().parents[1]
FUZZ = REPO / "fuzz"
REAL_SECCOMP = REPO.parent / "shared" / "real-inputs" / "seccomp"


def _harness(name: str) -> ModuleType:
    module_name = f"sandboxd_fuzz_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, FUZZ / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


fuzz_policy = _harness("fuzz_policy")
fuzz_seccomp = _harness("fuzz_seccomp_profile")

PROPERTY = settings(max_examples=200, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --------------------------------------------------------------------------- generic JSON-like data

_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
            | st.integers(min_value=-(1 << 80), max_value=1 << 80))
json_like = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=25,
)
# what tomllib can produce besides JSON's types
toml_like = st.recursive(
    _scalars | st.datetimes() | st.dates() | st.times(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=25,
)


def _or_junk(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly near-valid values, sometimes anything at all."""
    return st.one_of(strategy, strategy, strategy, json_like)


def _section(keys: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    optional = {k: _or_junk(v) for k, v in keys.items()}
    return st.fixed_dictionaries({}, optional=optional) | st.dictionaries(
        st.sampled_from([*keys, "unknown", ""]) | st.text(max_size=8), json_like, max_size=3)


# --------------------------------------------------------------------------- near-valid policies

_paths = st.sampled_from(["/work", "/usr", "/etc", "/", "/proc", "/tmp", "/dev/shm", "/x/../y", "relative",
                          "//x", "/a\0b", "/x/", "/job", "/nonexistent"]) | st.text(max_size=12)
_size_strings = st.from_regex(r"\s?\d{1,40}(\.\d{1,5})?\s?[KMGTkmgtP]?(i?B)?\s?", fullmatch=True)
_sizes = (st.integers(min_value=-10, max_value=1 << 70) | _size_strings | st.booleans()
          | st.integers(min_value=0, max_value=10**500).map(str))
_layer = st.sampled_from(["required", "best-effort", "off", "on"])
_mount = st.fixed_dictionaries(
    {"type": st.sampled_from(["ro-bind", "bind", "tmpfs", "overlay"])},
    optional={"source": _or_junk(_paths), "dest": _or_junk(_paths), "optional": st.booleans(), "size": _sizes},
)
_env_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True) | st.text(max_size=6)

near_valid_policy = st.fixed_dictionaries({}, optional={
    "description": st.text(max_size=20),
    "process": _section({
        "hostname": st.from_regex(r"[A-Za-z0-9-]{1,70}", fullmatch=True) | st.text(max_size=10),
        "env": st.dictionaries(_env_names, st.text(max_size=8), max_size=3),
    }),
    "network": _section({
        "mode": st.sampled_from(["none", "loopback", "host"]),
        "tcp_connect": st.lists(st.integers(-5, 70000), max_size=3) | st.none(),
        "tcp_bind": st.lists(st.integers(-5, 70000), max_size=3),
    }),
    "filesystem": _section({
        "work_path": _paths, "work_size": _sizes, "tmp_size": _sizes, "shm_size": _sizes,
        "mounts": st.lists(_mount, max_size=4),
    }),
    "rlimits": _section({
        "nofile": st.integers(-1, (1 << 20) + 1), "stack": _sizes, "core": _sizes, "fsize": _sizes | st.none(),
        "memlock": _sizes, "msgqueue": _sizes,
    }),
    "seccomp": _section({
        "mode": _layer, "profile": st.sampled_from(["default", "judge", "../x"]) | st.text(max_size=8),
        "allow_foreign_arches": st.booleans(), "name_kills": st.booleans(),
    }),
    "landlock": _section({
        "mode": _layer, "min_abi": st.integers(-1, 9), "scope": st.booleans(),
        "read_only": st.lists(_paths, max_size=3),
    }),
})


@PROPERTY
@given(toml_like)
def test_validate_policy_any_value(data) -> None:
    fuzz_policy.check_policy_data(data, "any.toml", strict=False)


@PROPERTY
@given(st.dictionaries(st.text(max_size=12), toml_like, max_size=6))
def test_validate_policy_any_table(data) -> None:
    fuzz_policy.check_policy_data(data, "table.toml", strict=False)


@PROPERTY
@given(near_valid_policy)
def test_validate_policy_near_valid(data) -> None:
    fuzz_policy.check_policy_data(data, "near.toml", strict=False)


_DEFAULT = None


def _default_loaded():
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_policy("default")
    return _DEFAULT


_override_mount = st.tuples(
    st.sampled_from(["--tmpfs", "--ro-bind", "--bind"]),
    st.sampled_from(["", "/usr", "/etc", "/", ".", "..", "/nonexistent", "usr"]) | st.text(max_size=10),
    _paths,
)
overrides = st.builds(
    Overrides,
    mounts=st.lists(_override_mount, max_size=3).map(tuple),
    env=st.lists(st.tuples(_env_names, st.text(max_size=8)), max_size=3).map(tuple),
    network=st.none() | st.sampled_from(["none", "loopback"]) | st.text(max_size=8),
    hostname=st.none() | st.sampled_from(["sandbox", "a" * 64, "-x"]) | st.text(max_size=8),
)


@PROPERTY
@given(overrides)
def test_apply_overrides(ov) -> None:
    fuzz_policy.check_overrides(_default_loaded(), ov, strict=False)


# --------------------------------------------------------------------------- near-valid profiles

_actions = st.sampled_from(sorted(ACTIONS) + ["SCMP_ACT_FOO", "allow"])
_errno_names = st.sampled_from(["EPERM", "ENOSYS", "EACCES", "EFOO", "errorcode", "E2BIG", "EPERM "])
_errno_nums = st.integers(-1, 0x10000) | st.sampled_from([errno.EPERM, errno.ENOSYS])
_syscall_names = st.sampled_from(["read", "write", "clone", "clone3", "socket", "socketcall", "mmap2",
                                  "personality", "ptrace", "exit_group", "nosuchcall", "Read", "", "a b"])
_arches = st.sampled_from([*ARCHES, "SCMP_ARCH_FUTURE", "x86_64"])
_u64 = st.integers(0, (1 << 64) - 1) | st.integers(-1, 8) | st.sampled_from([1 << 32, (1 << 64) - 1, 1 << 64])
_arg = st.fixed_dictionaries({}, optional={
    "index": st.integers(-1, 7), "value": _u64, "valueTwo": _u64 | st.none(),
    "op": st.sampled_from([*OPERATORS, "SCMP_CMP_FOO"]),
})
_filter = st.fixed_dictionaries({}, optional={
    "caps": st.lists(st.sampled_from(["CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_BPF", "cap_x"]), max_size=2),
    "arches": st.lists(st.sampled_from([*GO_ARCHES, "sparc"]), max_size=2),
    "minKernel": st.sampled_from(["4.8", "5.1.0", "6", "a.b", "", "99.99.99", "0.0"]),
})
_rule = st.fixed_dictionaries({}, optional={
    "names": st.lists(_syscall_names, max_size=4), "name": _syscall_names,
    "action": _actions, "errnoRet": _errno_nums, "errno": _errno_names,
    "args": st.lists(_or_junk(_arg), max_size=7) | st.none(),
    "includes": _or_junk(_filter), "excludes": _or_junk(_filter), "comment": st.text(max_size=8),
})
near_valid_profile = st.fixed_dictionaries(
    {"defaultAction": _or_junk(_actions)},
    optional={
        "defaultErrnoRet": _errno_nums, "defaultErrno": _errno_names,
        "architectures": st.lists(_arches, max_size=3) | st.none(),
        "archMap": st.lists(st.fixed_dictionaries({}, optional={
            "architecture": _arches, "subArchitectures": st.lists(_arches, max_size=2) | st.none()}), max_size=2),
        "syscalls": st.lists(_or_junk(_rule), max_size=6),
        "flags": st.lists(st.sampled_from(["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "LOG"]),
                          max_size=2),
        "listenerPath": st.text(max_size=8), "listenerMetadata": st.text(max_size=8), "comment": json_like,
    },
)


@PROPERTY
@given(json_like)
def test_parse_profile_any_value(data) -> None:
    fuzz_seccomp.check_profile_data(data, "any.json", strict=False)


@PROPERTY
@given(near_valid_profile, st.integers(0, 7))
def test_parse_and_compile_near_valid_profile(data, selector) -> None:
    fuzz_seccomp.check_profile_data(data, "near.json", strict=False, selector=selector)


# --------------------------------------------------------------------------- seed replay

POLICY_SEEDS = sorted((FUZZ / "corpus" / "policy").iterdir())
SECCOMP_SEEDS = sorted((FUZZ / "corpus" / "seccomp").iterdir())
REAL_SECCOMP_FILES = sorted(REAL_SECCOMP.glob("*.json")) if REAL_SECCOMP.is_dir() else []


@pytest.mark.parametrize("seed", POLICY_SEEDS, ids=lambda p: p.name)
def test_policy_harness_replays_seed(seed: Path) -> None:
    fuzz_policy.check_one(seed.read_bytes(), strict=True)
    fuzz_policy.TestOneInput(seed.read_bytes())


@pytest.mark.parametrize("seed", SECCOMP_SEEDS, ids=lambda p: p.name)
def test_seccomp_harness_replays_seed(seed: Path) -> None:
    fuzz_seccomp.check_one(seed.read_bytes(), strict=True)
    fuzz_seccomp.TestOneInput(seed.read_bytes())


@pytest.mark.skipif(not REAL_SECCOMP_FILES, reason=f"real seccomp profiles are not present at {REAL_SECCOMP}")
@pytest.mark.parametrize("path", REAL_SECCOMP_FILES, ids=lambda p: p.name)
def test_seccomp_harness_replays_real_profile(path: Path) -> None:
    assert fuzz_seccomp.check_one(path.read_bytes(), strict=True) is not None


SHIPPED = sorted([*(REPO / "policies").glob("*.toml"), *(REPO / "profiles").glob("*.json")])


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_harnesses_accept_shipped_file(path: Path) -> None:
    """The shipped files as they are now (the seed copies in fuzz/corpus/ may lag behind)."""
    if path.suffix == ".toml":
        assert fuzz_policy.check_policy_text(path.read_bytes(), strict=True) is not None
    else:
        assert fuzz_seccomp.check_one(path.read_bytes(), strict=True) is not None


def test_seeds_exercise_both_outcomes() -> None:
    """Seeds must reach past the parsers (a valid input) and into their error paths."""
    policy_valid = [s for s in POLICY_SEEDS if fuzz_policy.check_policy_text(s.read_bytes().partition(b"\0")[0])]
    assert policy_valid and len(policy_valid) < len(POLICY_SEEDS)
    assert any(b"\0" in s.read_bytes() for s in POLICY_SEEDS), "no seed reaches apply_overrides"
    profiles = [fuzz_seccomp.check_one(s.read_bytes()) for s in SECCOMP_SEEDS]
    assert any(p is not None for p in profiles) and any(p is None for p in profiles)


# --------------------------------------------------------------------------- harness hygiene


@pytest.mark.parametrize("harness", ["fuzz_policy", "fuzz_seccomp_profile"])
def test_harness_imports_without_atheris(harness: str) -> None:
    """Importing a harness never starts fuzzing, and atheris is optional until main()."""
    code = (
        "import sys, runpy; sys.modules['atheris'] = None; "
        f"ns = runpy.run_path({str(FUZZ / (harness + '.py'))!r}, run_name='imported'); "
        "assert ns['atheris'] is None; ns['TestOneInput'](b'');"
        "ns['main']()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, FUZZ_STRICT="1"))
    assert result.returncode == 1 and "atheris is not installed" in result.stderr, result.stderr


@pytest.mark.parametrize("harness", [fuzz_policy, fuzz_seccomp], ids=["policy", "seccomp"])
def test_known_findings_have_strict_xfail_regression_tests(harness: ModuleType) -> None:
    from tests import test_fuzz_regressions as regressions

    for ident, (test_name, _predicate) in harness.KNOWN.items():
        test = getattr(regressions, test_name, None)
        assert test is not None, f"KNOWN {ident}: no {test_name} in tests/test_fuzz_regressions.py"
        marks = [m for m in getattr(test, "pytestmark", []) if m.name == "xfail"]
        assert marks and marks[0].kwargs.get("strict") is True, (
            f"KNOWN {ident}: {test_name} is no longer a strict xfail; if the bug is fixed, "
            f"remove {ident!r} from KNOWN in {harness.__file__}")
