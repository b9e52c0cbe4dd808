"""Regression tests for what fuzzing (fuzz/, tests/test_fuzz_harnesses.py) found.

Each test states the contract the input broke; while the bug is open it is marked
``xfail(strict=True)`` with the exception it currently raises, so the fix turns it into an
XPASS failure: then drop the marker here and the matching entry of ``KNOWN`` in the harness
(``fuzz/fuzz_policy.py`` / ``fuzz/fuzz_seccomp_profile.py``) named in the reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxd.errors import PolicyError
from sandboxd.policy.load import Overrides, apply_overrides, load_policy, read_policy_file, validate_policy
from sandboxd.policy.seccomp_profile import ProfileError, load_profile, parse_profile


def _one_line(error: Exception, source: str) -> None:
    text = str(error)
    assert text.splitlines() == [text], f"message is not one line: {text!r}"
    assert text.startswith(source + ": "), text


def _load_toml(path: Path) -> None:
    """What load_policy does with a file, minus the host-path check."""
    validate_policy(read_policy_file(path), str(path))


# --------------------------------------------------------------------------- policy loader


@pytest.mark.xfail(strict=True, raises=UnicodeDecodeError, reason=(
    "read_policy_file lets UnicodeDecodeError from tomllib.load escape for a file that is not "
    "UTF-8 (found by fuzz_policy in seconds; KNOWN policy-non-utf8)"))
def test_policy_non_utf8_file_is_a_policy_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'description = "caf\xe9"\n')
    with pytest.raises(PolicyError) as info:
        _load_toml(path)
    _one_line(info.value, str(path))


@pytest.mark.xfail(strict=True, raises=ValueError, reason=(
    "read_policy_file lets tomllib's ValueError for an integer of more than 4300 digits "
    "(int max str digits) escape instead of a PolicyError (KNOWN policy-toml-int-digits)"))
def test_policy_huge_toml_integer_is_a_policy_error(tmp_path: Path) -> None:
    path = tmp_path / "huge-int.toml"
    path.write_text("[rlimits]\nnofile = " + "1" * 5000 + "\n")
    with pytest.raises(PolicyError) as info:
        _load_toml(path)
    _one_line(info.value, str(path))


@pytest.mark.xfail(strict=True, raises=RecursionError, reason=(
    "read_policy_file lets RecursionError from tomllib escape for deeply nested arrays "
    "(KNOWN policy-toml-recursion)"))
def test_policy_deeply_nested_toml_is_a_policy_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text("description = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(PolicyError) as info:
        _load_toml(path)
    _one_line(info.value, str(path))


@pytest.mark.xfail(strict=True, raises=OverflowError, reason=(
    "parse_size turns a size string of ~310+ digits into float('inf') and int(inf) raises "
    "OverflowError, which pydantic does not convert (only ValueError/AssertionError), so it "
    "escapes validate_policy (KNOWN policy-size-overflow)"))
def test_policy_huge_size_string_is_a_policy_error() -> None:
    with pytest.raises(PolicyError) as info:
        validate_policy({"filesystem": {"work_size": "9" * 400}}, "x.toml")
    _one_line(info.value, "x.toml")


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "PolicyError puts the TOML key into the message unescaped, so a quoted key with a newline "
    "('\"a\\nb\" = 1') makes a multi-line message (KNOWN policy-multiline-key)"))
def test_policy_error_with_newline_in_key_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "newline-key.toml"
    path.write_text('"a\\nb" = 1\n')
    with pytest.raises(PolicyError) as info:
        _load_toml(path)
    _one_line(info.value, str(path))


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "same bug through a nested key: an env name with a newline and a non-string value "
    "(KNOWN policy-multiline-key)"))
def test_policy_error_with_newline_in_env_key_is_one_line() -> None:
    with pytest.raises(PolicyError) as info:
        validate_policy({"process": {"env": {"A\nB": 1}}}, "x.toml")
    _one_line(info.value, "x.toml")


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "apply_overrides puts the raw --tmpfs/--bind arguments into the PolicyError key, so a "
    "path with a newline makes a multi-line message (KNOWN policy-multiline-key)"))
def test_override_error_with_newline_in_path_is_one_line() -> None:
    loaded = load_policy("default")
    with pytest.raises(PolicyError) as info:
        apply_overrides(loaded, Overrides(mounts=(("--tmpfs", "", "relative\nline"),)))
    _one_line(info.value, "command line")


# --------------------------------------------------------------------------- seccomp profiles


@pytest.mark.xfail(strict=True, raises=ValueError, reason=(
    "load_profile catches only JSONDecodeError: json.loads' ValueError for an integer of more "
    "than 4300 digits escapes (KNOWN seccomp-int-digits)"))
def test_profile_huge_json_integer_is_a_profile_error(tmp_path: Path) -> None:
    path = tmp_path / "huge-int.json"
    path.write_text('{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": ' + "1" * 5000 + "}")
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    _one_line(info.value, str(path))


@pytest.mark.xfail(strict=True, raises=ValueError, reason=(
    "parse_profile: a minKernel with a 4300+ digit part passes the regex, then int() raises "
    "ValueError (KNOWN seccomp-int-digits)"))
def test_profile_huge_min_kernel_is_a_profile_error() -> None:
    data = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ERRNO", "includes": {"minKernel": "9" * 5000 + ".1"}}]}
    with pytest.raises(ProfileError) as info:
        parse_profile(data, "x.json")
    _one_line(info.value, "x.json")


@pytest.mark.xfail(strict=True, raises=RecursionError, reason=(
    "load_profile lets RecursionError from json.loads escape for deeply nested arrays "
    "(KNOWN seccomp-json-recursion)"))
def test_profile_deeply_nested_json_is_a_profile_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text('{"defaultAction": "SCMP_ACT_ALLOW", "x": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    _one_line(info.value, str(path))
