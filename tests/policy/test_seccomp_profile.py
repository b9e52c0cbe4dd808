"""Loader tests: real-world profiles parse unchanged; malformed ones give one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandboxd.errors import SandboxdInputError
from sandboxd.policy.seccomp_profile import (
    ProfileError,
    SeccompProfile,
    find_profile,
    load_profile,
    parse_profile,
)

from tests.real_inputs import REAL_SECCOMP as REAL
from tests.real_inputs import REAL_SECCOMP_FILES as REAL_FILES
from tests.real_inputs import REPO
from tests.real_inputs import needs_real_seccomp as needs_real


@needs_real
@pytest.mark.parametrize("path", REAL_FILES, ids=[p.name for p in REAL_FILES])
def test_real_profiles_load(path: Path) -> None:
    p = load_profile(path)
    assert isinstance(p, SeccompProfile)
    raw = json.loads(path.read_text())
    assert len(p.syscalls) == len(raw["syscalls"])
    assert p.default_action == raw["defaultAction"]


@needs_real
def test_real_profile_details() -> None:
    d = load_profile(REAL / "docker-default.json")
    assert d.default_errno_ret == 1
    x86 = next(e for e in d.arch_map if e.architecture == "SCMP_ARCH_X86_64")
    assert x86.sub_architectures == ("SCMP_ARCH_X86", "SCMP_ARCH_X32")
    riscv = next(e for e in d.arch_map if e.architecture == "SCMP_ARCH_RISCV64")
    assert riscv.sub_architectures == ()  # "subArchitectures": null
    clone = [r for r in d.syscalls if r.names == ("clone",) and r.args][0]
    assert clone.args[0].op == "SCMP_CMP_MASKED_EQ" and clone.args[0].value == 0x7E020000
    assert clone.args[0].value_two == 0
    ptrace = next(r for r in d.syscalls if "ptrace" in r.names)
    assert ptrace.includes.min_kernel == (4, 8, 0)

    chrome = load_profile(REAL / "jessfraz-dotfiles-chrome.json")
    assert all(len(r.names) == 1 for r in chrome.syscalls)  # legacy "name"
    assert chrome.default_errno_ret is None

    pod = load_profile(REAL / "podman-default-containers-common-v0.63.json")
    assert pod.default_errno_ret == 38  # defaultErrno "ENOSYS" agrees with defaultErrnoRet 38

    agent = load_profile(REAL / "seccompagent-notify-dangerous.json")
    assert agent.listener_path == "/run/seccomp-agent.socket"
    assert agent.syscalls[0].action == "SCMP_ACT_NOTIFY"

    spo = load_profile(REAL / "security-profiles-operator-nginx-1.19.1.json")
    assert spo.architectures == ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32")


@pytest.mark.parametrize("name", ["default", "judge", "compile"])
def test_shipped_profiles_load(name: str) -> None:
    path = find_profile(name)
    assert path == REPO / "profiles" / f"{name}.json"
    p = load_profile(path)
    assert p.default_action == "SCMP_ACT_ERRNO" and p.default_errno_ret == 1
    # every group says why it is there
    assert all(r.comment for r in p.syscalls)


def test_find_profile_env_override(tmp_path, monkeypatch) -> None:
    (tmp_path / "default.json").write_text('{"defaultAction": "SCMP_ACT_ALLOW"}')
    monkeypatch.setenv("SANDBOXD_PROFILE_PATH", f"/nonexistent:{tmp_path}")
    assert find_profile("default") == tmp_path / "default.json"
    assert find_profile("judge") == REPO / "profiles" / "judge.json"
    with pytest.raises(ProfileError, match="no such profile"):
        find_profile("nope")
    with pytest.raises(ProfileError):
        find_profile("../etc/passwd")


def test_all_features(tmp_path) -> None:
    doc = {
        "defaultAction": "SCMP_ACT_KILL_PROCESS",
        "defaultErrno": "EPERM",
        "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "listenerMetadata": "x",
        "somethingNew": {"a": 1},
        "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW", "comment": "c"},
            {"name": "write", "action": "SCMP_ACT_ERRNO", "errno": "EACCES"},
            {"names": ["ioctl"], "action": "SCMP_ACT_TRACE", "errnoRet": 5},
            {"names": ["kill"], "action": "SCMP_ACT_LOG", "args": [
                {"index": 5, "value": 1, "op": "SCMP_CMP_LE"},
                {"index": 4, "value": 2, "valueTwo": 3, "op": "SCMP_CMP_GE"}]},
            {"names": ["getpid"], "action": "SCMP_ACT_TRAP", "includes": {"arches": ["386", "amd64"], "minKernel": "5.10"},
             "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["gettid"], "action": "SCMP_ACT_KILL"},
            {"names": ["getppid"], "action": "SCMP_ACT_KILL_THREAD", "args": None, "includes": {}, "excludes": {}},
        ],
    }
    p = parse_profile(doc, "t.json")
    assert p.default_errno_ret == 1
    assert p.flags == ("SECCOMP_FILTER_FLAG_LOG",)
    assert p.unknown_keys == ("somethingNew",)
    assert p.syscalls[1].names == ("write",) and p.syscalls[1].errno_ret == 13
    assert p.syscalls[3].args[1].value_two == 3
    assert p.syscalls[4].includes.min_kernel == (5, 10, 0)
    # frozen
    with pytest.raises(AttributeError):
        p.default_action = "x"  # type: ignore[misc]


def _err(tmp_path: Path, text: str) -> ProfileError:
    f = tmp_path / "x.json"
    f.write_text(text)
    with pytest.raises(ProfileError) as ei:
        load_profile(f)
    e = ei.value
    assert isinstance(e, SandboxdInputError)
    s = str(e)
    assert "\n" not in s
    assert s.startswith(f"{f}: ")
    return e


def _doc(rule: dict) -> str:
    return json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}, rule]})


def test_bad_json(tmp_path) -> None:
    e = _err(tmp_path, '{\n  "defaultAction": "SCMP_ACT_ERRNO",\n  "syscalls": [,]\n}')
    assert e.entry == "line 3 column 16"
    assert e.reason.startswith("invalid JSON: ")
    assert str(e) == f"{tmp_path / 'x.json'}: line 3 column 16: invalid JSON: Expecting value"


def test_unknown_action(tmp_path) -> None:
    e = _err(tmp_path, _doc({"names": ["write"], "action": "SCMP_ACT_EXPLODE"}))
    assert (e.entry, e.reason) == ("syscalls[1].action", "unknown action 'SCMP_ACT_EXPLODE'")
    e = _err(tmp_path, json.dumps({"defaultAction": "ALLOW"}))
    assert (e.entry, e.reason) == ("defaultAction", "unknown action 'ALLOW'")


def test_bad_operator(tmp_path) -> None:
    e = _err(tmp_path, _doc({"names": ["write"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_FOO"}]}))
    assert str(e) == f"{tmp_path / 'x.json'}: syscalls[1].args[0].op: unknown operator 'SCMP_CMP_FOO'"


def test_arg_index_out_of_range(tmp_path) -> None:
    e = _err(tmp_path, _doc({"names": ["write"], "action": "SCMP_ACT_ALLOW", "args": [
        {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}, {"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}))
    assert (e.entry, e.reason) == ("syscalls[1].args[1].index", "6 out of range 0..5")


@pytest.mark.parametrize(
    "rule,entry,reason",
    [
        ({"names": "write", "action": "SCMP_ACT_ALLOW"}, "syscalls[1].names", "expected an array of strings, got string"),
        ({"names": ["write", 3], "action": "SCMP_ACT_ALLOW"}, "syscalls[1].names[1]", "expected a string, got integer"),
        ({"names": ["write"], "action": 1}, "syscalls[1].action", "expected a string, got integer"),
        ({"names": ["write"], "action": "SCMP_ACT_ERRNO", "errnoRet": "1"}, "syscalls[1].errnoRet", "expected an integer, got string"),
        ({"names": ["write"], "action": "SCMP_ACT_ALLOW", "args": {}}, "syscalls[1].args", "expected an array, got object"),
        ({"names": ["write"], "action": "SCMP_ACT_ALLOW", "args": [{"index": True, "value": 1, "op": "SCMP_CMP_EQ"}]},
         "syscalls[1].args[0].index", "expected an integer, got boolean"),
        ({"names": ["write"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]},
         "syscalls[1].args[0].value", "-1 out of range 0..18446744073709551615"),
        ({"names": ["write"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": "CAP_SYS_ADMIN"}},
         "syscalls[1].includes.caps", "expected an array of strings, got string"),
        ({"names": ["write"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["vax"]}},
         "syscalls[1].includes.arches[0]", "unknown architecture 'vax'"),
        ({"names": ["write"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "four"}},
         "syscalls[1].includes.minKernel", "expected 'MAJOR.MINOR', got 'four'"),
        ({"names": ["write"], "action": "SCMP_ACT_ERRNO", "errno": "ENOPE"}, "syscalls[1].errno", "unknown errno name 'ENOPE'"),
        ({"names": ["write"], "action": "SCMP_ACT_ERRNO", "errno": "EPERM", "errnoRet": 2},
         "syscalls[1].errno", "'EPERM' (1) disagrees with errnoRet 2"),
        ({"action": "SCMP_ACT_ALLOW"}, "syscalls[1]", "needs 'names' (array) or 'name' (string)"),
        ("oops", "syscalls[1]", "expected an object, got string"),
    ],
)
def test_wrong_types(tmp_path, rule, entry: str, reason: str) -> None:
    e = _err(tmp_path, _doc(rule))
    assert (e.entry, e.reason) == (entry, reason)
    assert str(e) == f"{tmp_path / 'x.json'}: {entry}: {reason}"


def test_top_level_errors(tmp_path) -> None:
    e = _err(tmp_path, "[]")
    assert e.reason == "expected an object, got array"
    e = _err(tmp_path, json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": {}}))
    assert (e.entry, e.reason) == ("syscalls", "expected an array, got object")
    e = _err(tmp_path, json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["X86_64"]}))
    assert (e.entry, e.reason) == ("architectures[0]", "unknown architecture 'X86_64'")
    e = _err(tmp_path, json.dumps({"syscalls": []}))
    assert (e.entry, e.reason) == ("defaultAction", "missing (required)")


def test_unreadable_file(tmp_path) -> None:
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "missing.json")


@pytest.mark.parametrize(
    "rule,entry,reason",
    [
        # "$" also matches before a trailing newline: every name is matched whole.
        ({"names": ["read\n"], "action": "SCMP_ACT_ALLOW"}, "syscalls[1].names[0]", "not a syscall name 'read\\n'"),
        ({"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "5.4\n"}},
         "syscalls[1].includes.minKernel", "expected 'MAJOR.MINOR', got '5.4\\n'"),
        ({"names": ["read"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN\n"]}},
         "syscalls[1].excludes.caps[0]", "not a capability name 'CAP_SYS_ADMIN\\n'"),
        # \d would take any Unicode digit (int() reads them too).
        ({"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "\u0665.\u0664"}},
         "syscalls[1].includes.minKernel", "expected 'MAJOR.MINOR', got '\u0665.\u0664'"),
        ({"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "1234567890.1"}},
         "syscalls[1].includes.minKernel", "version number too large in '1234567890.1'"),
    ],
)
def test_names_are_matched_whole(tmp_path, rule, entry: str, reason: str) -> None:
    e = _err(tmp_path, _doc(rule))
    assert (e.entry, e.reason) == (entry, reason)


def test_huge_min_kernel_gives_a_short_reason(tmp_path) -> None:
    e = _err(tmp_path, _doc({"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "9" * 5000 + ".1"}}))
    assert e.entry == "syscalls[1].includes.minKernel"
    assert e.reason.startswith("version number too large in '9999") and e.reason.endswith("(5002 characters)")
    assert len(str(e)) < 250


@pytest.mark.parametrize("text, reason", [
    ('{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": ' + "1" * 5000 + "}",
     "invalid JSON: an integer has too many digits"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "x": ' + "[" * 100000 + "]" * 100000 + "}",
     "invalid JSON: arrays or objects nested too deeply"),
])
def test_json_the_decoder_refuses_is_a_profile_error(tmp_path, text: str, reason: str) -> None:
    e = _err(tmp_path, text)
    assert (e.entry, e.reason) == ("", reason)


def test_profile_size_is_capped(tmp_path, monkeypatch) -> None:
    from sandboxd.policy import seccomp_profile

    monkeypatch.setattr(seccomp_profile, "MAX_PROFILE_BYTES", 64)
    e = _err(tmp_path, json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "comment": "x" * 64}))
    assert e.reason == "larger than 64 bytes; not a seccomp profile"


def test_profile_error_escapes_what_would_break_the_line() -> None:
    e = ProfileError("a\nb.json", "syscalls[0]\r", "why\u2028 not\ttab")
    assert (e.source, e.entry, e.reason) == ("a\\nb.json", "syscalls[0]\\r", "why\\u2028 not\\ttab")
    assert str(e) == "a\\nb.json: syscalls[0]\\r: why\\u2028 not\\ttab"
    with pytest.raises(ProfileError) as ei:
        parse_profile({"defaultAction": "SCMP_ACT_ERRNO\n"}, "x\n.json")
    assert str(ei.value) == "x\\n.json: defaultAction: unknown action 'SCMP_ACT_ERRNO\\n'"


@pytest.mark.parametrize("name, reason", [
    ("default\n", "not a valid profile name"),
    ("a" * 5000, "File name too long"),  # stat() raises ENAMETOOLONG, not "no such file"
    ("/" + "a" * 5000, "File name too long"),
    ("/a\0b", "a path cannot contain a NUL byte"),
])
def test_find_profile_refuses_unusable_names(name: str, reason: str) -> None:
    with pytest.raises(ProfileError) as ei:
        find_profile(name)
    assert reason in ei.value.reason
    assert str(ei.value).splitlines() == [str(ei.value)]


def test_load_profile_path_with_nul_byte() -> None:
    with pytest.raises(ProfileError) as ei:
        load_profile("/a\0b.json")
    assert str(ei.value) == "/a\\x00b.json: cannot read: the path contains a NUL byte"
