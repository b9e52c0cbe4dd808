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
from sandboxd.policy.seccomp_profile import ProfileError, find_profile, load_profile, parse_profile


def _one_line(error: Exception, source: str) -> None:
    text = str(error)
    assert text.splitlines() == [text], f"message is not one line: {text!r}"
    assert text.startswith(source + ": "), text


def _load_toml(path: Path) -> None:
    """What load_policy does with a file, minus the host-path check."""
    validate_policy(read_policy_file(path), str(path))


# --------------------------------------------------------------------------- policy loader


def test_policy_non_utf8_file_is_a_policy_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'description = "caf\xe9"\n')
    with pytest.raises(PolicyError) as info:
        _load_toml(path)
    _one_line(info.value, str(path))


def test_policy_huge_toml_integer_is_a_policy_error(tmp_path: Path) -> None:
    path = tmp_path / "huge-int.toml"
    path.write_text("[rlimits]\nnofile = " + "1" * 5000 + "\n")
    with pytest.raises(PolicyError) as info:
        _load_toml(path)
    _one_line(info.value, str(path))


def test_policy_deeply_nested_toml_is_a_policy_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text("description = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(PolicyError) as info:
        _load_toml(path)
    _one_line(info.value, str(path))


def test_policy_huge_size_string_is_a_policy_error() -> None:
    with pytest.raises(PolicyError) as info:
        validate_policy({"filesystem": {"work_size": "9" * 400}}, "x.toml")
    _one_line(info.value, "x.toml")


def test_policy_error_with_newline_in_key_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "newline-key.toml"
    path.write_text('"a\\nb" = 1\n')
    with pytest.raises(PolicyError) as info:
        _load_toml(path)
    _one_line(info.value, str(path))


def test_policy_error_with_newline_in_env_key_is_one_line() -> None:
    with pytest.raises(PolicyError) as info:
        validate_policy({"process": {"env": {"A\nB": 1}}}, "x.toml")
    _one_line(info.value, "x.toml")


def test_override_error_with_newline_in_path_is_one_line() -> None:
    loaded = load_policy("default")
    with pytest.raises(PolicyError) as info:
        apply_overrides(loaded, Overrides(mounts=(("--tmpfs", "", "relative\nline"),)))
    _one_line(info.value, "command line")


def test_policy_size_with_kelvin_sign_is_a_policy_error() -> None:
    # re.IGNORECASE without re.ASCII lets [KMGT] match U+212A KELVIN SIGN; its .upper() is
    # not "K", so the unit lookup raised KeyError, which pydantic does not convert.
    with pytest.raises(PolicyError) as info:
        validate_policy({"filesystem": {"tmp_size": "1\u212a"}}, "x.toml")
    _one_line(info.value, "x.toml")


@pytest.mark.parametrize("name", ["/" + "a" * 5000 + ".toml", "a" * 5000])
def test_policy_name_too_long_is_a_policy_error(name: str) -> None:
    # Path.is_file() swallows ENOENT but raises OSError(ENAMETOOLONG).
    with pytest.raises(PolicyError) as info:
        load_policy(name)
    _one_line(info.value, name)


def test_policy_path_with_nul_byte_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        read_policy_file(tmp_path / "a\0b.toml")
    _one_line(info.value, str(tmp_path / "a\\x00b.toml"))


def test_override_with_newline_in_source_is_one_line(tmp_path: Path) -> None:
    source = tmp_path / "two\nlines"
    source.mkdir()
    with pytest.raises(PolicyError) as info:
        apply_overrides(load_policy("default"), Overrides(mounts=(("--bind", str(source), "/usr"),)))
    _one_line(info.value, "command line")


# --------------------------------------------------------------------------- seccomp profiles


def test_profile_huge_json_integer_is_a_profile_error(tmp_path: Path) -> None:
    path = tmp_path / "huge-int.json"
    path.write_text('{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": ' + "1" * 5000 + "}")
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    _one_line(info.value, str(path))


def test_profile_huge_min_kernel_is_a_profile_error() -> None:
    data = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ERRNO", "includes": {"minKernel": "9" * 5000 + ".1"}}]}
    with pytest.raises(ProfileError) as info:
        parse_profile(data, "x.json")
    _one_line(info.value, "x.json")


def test_profile_deeply_nested_json_is_a_profile_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text('{"defaultAction": "SCMP_ACT_ALLOW", "x": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    _one_line(info.value, str(path))


@pytest.mark.parametrize("name", ["/" + "a" * 5000, "a" * 5000])
def test_profile_name_too_long_is_a_profile_error(name: str) -> None:
    with pytest.raises(ProfileError) as info:
        find_profile(name)
    _one_line(info.value, name)


def test_profile_error_with_newline_in_source_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "two\nlines.json"
    path.write_text("[]")
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    _one_line(info.value, str(path).replace("\n", "\\n"))
