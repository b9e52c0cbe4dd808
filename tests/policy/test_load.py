"""Unit tests of the policy loader (``sandboxd/policy/load.py``) and model (``model.py``).

Every rejection must be one ``PolicyError`` naming the file, the exact key and a reason a
user can act on; every shipped policy must load, and its content hash must be stable.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandboxd.errors import PolicyError, SandboxdInputError
from sandboxd.policy import load as load_module
from sandboxd.policy.load import (
    SHIPPED_POLICIES,
    Overrides,
    apply_overrides,
    find_policy,
    load_policy,
    policy_search_path,
)
from sandboxd.policy.model import Mount, Policy, policy_hash
from sandboxd.policy.sizes import format_size, parse_size

SHIPPED = sorted(SHIPPED_POLICIES.glob("*.toml"))


def write(tmp_path: Path, text: str, name: str = "policy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(path: Path) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        load_policy(str(path))
    return info.value


# ---------------------------------------------------------------------- shipped policies

def test_the_three_policies_are_shipped() -> None:
    assert {p.stem for p in SHIPPED} >= {"default", "judge", "compile"}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_policy_validates_with_a_stable_hash(path: Path) -> None:
    first = load_policy(path.stem)
    second = load_policy(path.stem)
    assert first.source == str(path) and first.name == path.stem
    assert first.hash == second.hash and first.hash.startswith("sha256:") and len(first.hash) == 71
    assert first.hash == policy_hash(second.policy)
    assert load_policy(str(path)).hash == first.hash  # by file or by name: the same policy
    assert first.policy.description, "every shipped policy says what it is for"
    # Every shipped policy is fail-closed and has no network.
    assert first.policy.seccomp.mode == "required" and first.policy.landlock.mode == "required"
    assert first.policy.network.mode == "none"
    assert first.policy.rlimits.core == 0


def test_shipped_policies_hash_differently() -> None:
    hashes = {load_policy(p.stem).hash for p in SHIPPED}
    assert len(hashes) == len(SHIPPED)


def test_judge_policy_fits_solutions() -> None:
    judge = load_policy("judge").policy
    assert judge.seccomp.profile == "judge"
    assert judge.rlimits.nofile == 64
    assert judge.rlimits.stack >= 64 << 20
    assert judge.rlimits.fsize is not None and judge.rlimits.fsize <= 256 << 20
    assert judge.filesystem.tmp_size <= 64 << 20
    assert {"PATH", "LANG", "HOME"} <= set(judge.process.env)
    targets = {m.target for m in judge.filesystem.mounts}
    assert "/usr" in targets
    assert all(m.type == "ro-bind" for m in judge.filesystem.mounts), "a judge mounts nothing writable"
    assert not any(t == "/etc" or t.startswith("/etc/ssl") for t in targets)
    assert judge.limits.wall_time is not None and judge.limits.output is not None


@pytest.mark.parametrize("name", ["judge", "compile"])
def test_shipped_limits_need_no_cgroup(name: str) -> None:
    """Ceilings only of the kinds the supervisor enforces itself, so rootless hosts run them;
    CPU time and memory are the caller's per-problem flags."""
    limits = load_policy(name).policy.limits
    assert (limits.cpu_time, limits.memory, limits.pids, limits.cpus) == (None, None, None, None)
    assert load_policy(name).policy.cgroup.mode == "required"


def test_compile_policy_fits_compilers() -> None:
    compile_ = load_policy("compile").policy
    assert compile_.seccomp.profile == "compile"
    assert compile_.rlimits.nofile == 256
    assert compile_.filesystem.tmp_size >= 512 << 20
    assert compile_.process.env["TMPDIR"] == "/tmp"
    assert {"PATH", "LANG"} <= set(compile_.process.env)
    targets = {m.target for m in compile_.filesystem.mounts}
    assert {"/usr", "/etc/alternatives", "/etc/ld.so.cache"} <= targets
    assert all(m.type == "ro-bind" for m in compile_.filesystem.mounts)


def test_every_shipped_policy_names_an_existing_profile() -> None:
    profiles = SHIPPED_POLICIES.parent / "profiles"
    for path in SHIPPED:
        profile = load_policy(path.stem).policy.seccomp.profile
        assert (profiles / f"{profile}.json").is_file(), (path, profile)


# ----------------------------------------------------------------------- search path

def test_search_path_puts_the_environment_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    monkeypatch.setenv("SANDBOXD_POLICY_PATH", f"{mine}::{tmp_path / 'absent'}")
    assert policy_search_path() == [mine, tmp_path / "absent", SHIPPED_POLICIES]
    # A policy of the same name as a shipped one shadows it.
    (mine / "judge.toml").write_text('description = "mine"\n')
    assert find_policy("judge") == mine / "judge.toml"
    assert load_policy("judge").policy.description == "mine"
    monkeypatch.delenv("SANDBOXD_POLICY_PATH")
    assert find_policy("judge") == SHIPPED_POLICIES / "judge.toml"


@pytest.mark.parametrize("name, reason", [
    ("no-such-policy", "no policy of that name"),
    ("bad name!", "only letters, digits"),
    ("./missing.toml", "no such policy file"),
])
def test_unknown_policy_names(name: str, reason: str) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(name)
    assert info.value.source == name and reason in info.value.reason


# -------------------------------------------------------------------- strict validation

BAD_POLICIES = [
    ("unknown-key", "[filesystem]\nbogus = 1\n", "filesystem.bogus", "unknown key"),
    ("unknown-top-key", "colour = 'blue'\n", "colour", "unknown key"),
    ("unknown-section", "[quota]\nmemory = '1G'\n", "quota", "unknown key"),
    ("unknown-mount-key", "[[filesystem.mounts]]\ntype = 'tmpfs'\ndest = '/x'\nmode = '0755'\n",
     "filesystem.mounts[0].mode", "unknown key"),
    ("wrong-type-int", "[rlimits]\nnofile = 'many'\n", "rlimits.nofile", "valid integer (got str 'many')"),
    ("wrong-type-bool", "[landlock]\nscope = 'yes'\n", "landlock.scope", "valid boolean"),
    ("wrong-type-str", "description = 5\n", "description", "valid string (got int 5)"),
    ("wrong-type-env-value", "[process]\nenv = { A = 1 }\n", "process.env.A", "valid string (got int 1)"),
    ("bad-layer-mode", "[seccomp]\nmode = 'maybe'\n", "seccomp.mode", "'required', 'best-effort' or 'off'"),
    ("bad-network-mode", "[network]\nmode = 'bridge'\n", "network.mode", "'none' or 'loopback'"),
    ("port-out-of-range", "[network]\ntcp_connect = [80, 70000]\n", "network.tcp_connect[1]", "65535"),
    ("nofile-too-small", "[rlimits]\nnofile = 2\n", "rlimits.nofile", "greater than or equal to 3"),
    ("relative-source", "[[filesystem.mounts]]\ntype = 'bind'\nsource = 'relative/dir'\n",
     "filesystem.mounts[0].source", "'relative/dir' is not an absolute path"),
    ("relative-dest", "[[filesystem.mounts]]\ntype = 'tmpfs'\ndest = 'scratch'\n",
     "filesystem.mounts[0].dest", "'scratch' is not an absolute path"),
    ("dotdot-source", "[[filesystem.mounts]]\ntype = 'ro-bind'\nsource = '/usr/../etc'\n",
     "filesystem.mounts[0].source", "contains '..'"),
    ("missing-source", "[[filesystem.mounts]]\ntype = 'ro-bind'\nsource = '/usr'\n"
     "[[filesystem.mounts]]\ntype = 'ro-bind'\nsource = '/no/such/dir'\n",
     "filesystem.mounts[1].source", "'/no/such/dir' does not exist on this host"),
    ("bind-without-source", "[[filesystem.mounts]]\ntype = 'ro-bind'\ndest = '/x'\n",
     "filesystem.mounts[0]", "a ro-bind mount needs a source"),
    ("tmpfs-with-source", "[[filesystem.mounts]]\ntype = 'tmpfs'\nsource = '/usr'\ndest = '/x'\n",
     "filesystem.mounts[0]", "a tmpfs mount takes no source"),
    ("tmpfs-without-dest", "[[filesystem.mounts]]\ntype = 'tmpfs'\n", "filesystem.mounts[0]", "needs a dest"),
    ("size-on-bind", "[[filesystem.mounts]]\ntype = 'ro-bind'\nsource = '/usr'\nsize = '1M'\n",
     "filesystem.mounts[0]", "only a tmpfs mount takes a size"),
    ("mount-on-root", "[[filesystem.mounts]]\ntype = 'tmpfs'\ndest = '/'\n",
     "filesystem.mounts[0]", "nothing may be mounted on the jail's root"),
    ("mount-type", "[[filesystem.mounts]]\ntype = 'overlay'\nsource = '/usr'\n",
     "filesystem.mounts[0].type", "'ro-bind', 'bind' or 'tmpfs'"),
    ("reserved-work-path", "[filesystem]\nwork_path = '/proc'\n", "filesystem.work_path", "reserved"),
    ("hostname-invalid", "[process]\nhostname = 'bad_host!'\n", "process.hostname",
     "'bad_host!' is not a valid hostname"),
    ("hostname-too-long", f"[process]\nhostname = '{'a' * 64}'\n", "process.hostname", "not a valid hostname"),
    ("env-name-invalid", "[process]\nenv = { '1BAD' = 'x' }\n", "process.env",
     "'1BAD' is not a valid environment variable name"),
    ("env-name-with-equals", "[process]\nenv = { 'A=B' = 'x' }\n", "process.env", "'A=B' is not a valid"),
    ("env-value-nul", "[process]\nenv = { A = \"x\\u0000y\" }\n", "process.env", "NUL byte"),
    ("read-only-relative", "[landlock]\nread_only = ['data']\n", "landlock.read_only", "not an absolute path"),
    ("min-abi-zero", "[landlock]\nmin_abi = 0\n", "landlock.min_abi", "greater than or equal to 1"),
    ("size-garbage", "[filesystem]\ntmp_size = 'lots'\n", "filesystem.tmp_size", "'lots' is not a size"),
    ("size-negative", "[filesystem]\nwork_size = -1\n", "filesystem.work_size", "cannot be negative"),
    ("size-float", "[filesystem]\nshm_size = 1.5\n", "filesystem.shm_size", "a size must be a number of bytes"),
    ("size-bool", "[rlimits]\nfsize = true\n", "rlimits.fsize", "a size must be a number of bytes"),
]


@pytest.mark.parametrize("name, text, key, reason", BAD_POLICIES, ids=[b[0] for b in BAD_POLICIES])
def test_bad_policy_names_file_key_and_reason(tmp_path: Path, name: str, text: str, key: str, reason: str) -> None:
    path = write(tmp_path, text, f"{name}.toml")
    error = load_error(path)
    assert error.source == str(path)
    assert error.key == key, (error.key, str(error))
    assert reason in error.reason, error.reason
    assert str(error) == f"{path}: {key}: {error.reason}"
    assert "\n" not in str(error)


def test_malformed_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[process\nhostname = 'x'\n")
    error = load_error(path)
    assert (error.source, error.key) == (str(path), "(toml)")
    assert error.reason.startswith("malformed TOML:") and "line 1" in error.reason


def test_optional_missing_source_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "[[filesystem.mounts]]\ntype = 'ro-bind'\nsource = '/no/such/dir'\noptional = true\n")
    assert load_policy(str(path)).policy.filesystem.mounts[0].optional is True


@pytest.mark.parametrize("text, index, target, reason", [
    ("[[filesystem.mounts]]\ntype = 'ro-bind'\nsource = '/usr'\n"
     "[[filesystem.mounts]]\ntype = 'tmpfs'\ndest = '/usr'\n", 1, "/usr", "is mounted twice"),
    ("[[filesystem.mounts]]\ntype = 'ro-bind'\nsource = '/usr'\ndest = '/x'\n"
     "[[filesystem.mounts]]\ntype = 'ro-bind'\nsource = '/etc'\ndest = '/x/'\n", 1, "/x", "is mounted twice"),
    ("[[filesystem.mounts]]\ntype = 'tmpfs'\ndest = '/tmp'\n", 0, "/tmp", "is managed by sandboxd"),
    ("[[filesystem.mounts]]\ntype = 'tmpfs'\ndest = '/work'\n", 0, "/work", "is managed by sandboxd"),
])
def test_mount_target_collisions_are_refused(tmp_path: Path, text: str, index: int, target: str, reason: str) -> None:
    path = write(tmp_path, text)
    error = load_error(path)
    message = str(error)
    assert message.startswith(f"{path}: ") and "\n" not in message
    # The key is the offending mount itself, not "(policy)" with the key buried in the reason.
    assert error.key == f"filesystem.mounts[{index}]", message
    assert f"{target} {reason}" in error.reason, message


def test_defaults_fill_an_empty_policy(tmp_path: Path) -> None:
    policy = load_policy(str(write(tmp_path, ""))).policy
    assert policy == Policy()
    assert policy.seccomp.mode == "required" and policy.landlock.mode == "required"
    assert policy.landlock.scope is True and policy.network.mode == "none"
    assert policy.network.tcp_connect is None and policy.network.tcp_bind is None
    assert policy.rlimits.fsize is None and policy.rlimits.core == 0


def test_paths_are_normalised_and_sizes_parsed(tmp_path: Path) -> None:
    path = write(tmp_path, "[filesystem]\nwork_path = '/job//dir/'\ntmp_size = '1.5G'\nwork_size = 4096\n"
                           "[[filesystem.mounts]]\ntype = 'tmpfs'\ndest = '/scratch/'\nsize = '64M'\n")
    policy = load_policy(str(path)).policy
    assert policy.filesystem.work_path == "/job/dir"
    assert policy.filesystem.tmp_size == int(1.5 * (1 << 30)) and policy.filesystem.work_size == 4096
    assert policy.filesystem.mounts[0].target == "/scratch" and policy.filesystem.mounts[0].size == 64 << 20


def test_hash_follows_content_not_formatting(tmp_path: Path) -> None:
    a = write(tmp_path, "[rlimits]\nnofile = 64\nstack = '8M'\n", "a.toml")
    b = write(tmp_path, "# the same, written differently\n[rlimits]\nstack = 8388608\nnofile = 64\n", "b.toml")
    c = write(tmp_path, "[rlimits]\nnofile = 65\n", "c.toml")
    d = write(tmp_path, "[rlimits]\nnofile = 64\n", "d.toml")  # stack 8M is the default
    assert load_policy(str(a)).hash == load_policy(str(b)).hash == load_policy(str(d)).hash
    assert load_policy(str(c)).hash != load_policy(str(a)).hash


def test_model_is_frozen() -> None:
    policy = load_policy("default").policy
    with pytest.raises(Exception):
        policy.network.mode = "loopback"  # type: ignore[misc]


# -------------------------------------------------------------------------- overrides

def test_no_overrides_is_the_same_policy() -> None:
    loaded = load_policy("default")
    assert apply_overrides(loaded, Overrides()) is loaded


def test_overrides_add_mounts_and_change_the_hash(tmp_path: Path) -> None:
    loaded = load_policy("default")
    before = list(loaded.policy.filesystem.mounts)
    out = apply_overrides(loaded, Overrides(mounts=(
        ("--ro-bind", "/usr/share", "/share"),
        ("--bind", str(tmp_path), "/data"),
        ("--tmpfs", "", "/scratch"),
    )))
    mounts = list(out.policy.filesystem.mounts)
    assert mounts[:len(before)] == before, "overrides only add; the policy's mounts stay as they were"
    assert mounts[len(before):] == [
        Mount(type="ro-bind", source="/usr/share", dest="/share"),
        Mount(type="bind", source=str(tmp_path), dest="/data"),
        Mount(type="tmpfs", dest="/scratch"),
    ]
    assert out.hash != loaded.hash and out.hash == policy_hash(out.policy)
    assert (out.name, out.source) == (loaded.name, loaded.source)
    # The loaded policy itself is untouched.
    assert list(loaded.policy.filesystem.mounts) == before


def test_override_relative_source_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    out = apply_overrides(load_policy("default"), Overrides(mounts=(("--ro-bind", "sub", "/sub"),)))
    assert out.policy.filesystem.mounts[-1].source == str(tmp_path / "sub")


@pytest.mark.parametrize("flag", ["--bind", "--ro-bind"])
def test_override_missing_source_names_the_flag(flag: str) -> None:
    with pytest.raises(PolicyError) as info:
        apply_overrides(load_policy("default"), Overrides(mounts=((flag, "/no/such/dir", "/x"),)))
    assert info.value.source == "command line"
    assert f"{flag} /no/such/dir /x" in str(info.value)
    assert "'/no/such/dir' does not exist" in info.value.reason


@pytest.mark.parametrize("mount, reason", [
    (("--bind", "/tmp", "/usr"), "/usr is mounted twice"),     # a writable bind over the read-only /usr
    (("--tmpfs", "", "/usr"), "/usr is mounted twice"),
    (("--tmpfs", "", "/work"), "/work is managed by sandboxd"),
    (("--bind", "/tmp", "/proc"), "/proc is managed by sandboxd"),
    (("--ro-bind", "/usr", "/"), "nothing may be mounted on the jail's root"),
    (("--tmpfs", "", "relative"), "'relative' is not an absolute path"),
])
def test_overrides_never_replace_or_widen_silently(mount: tuple[str, str, str], reason: str) -> None:
    with pytest.raises(PolicyError) as info:
        apply_overrides(load_policy("default"), Overrides(mounts=(mount,)))
    assert info.value.source == "command line" and reason in str(info.value), str(info.value)


def test_override_collision_names_the_flag() -> None:
    """The user wrote a flag, not ``filesystem.mounts[13]``: the error names the flag."""
    with pytest.raises(PolicyError) as info:
        apply_overrides(load_policy("default"), Overrides(mounts=(("--bind", "/tmp", "/usr"),)))
    assert (info.value.source, info.value.key) == ("command line", "--bind /tmp /usr")
    assert "/usr is mounted twice" in info.value.reason
    assert "filesystem.mounts[" not in str(info.value)


def test_overrides_network_hostname_env() -> None:
    loaded = load_policy("default")
    out = apply_overrides(loaded, Overrides(network="loopback", hostname="judge-7", env=(("EXTRA", "1"),)))
    assert out.policy.network.mode == "loopback" and out.policy.process.hostname == "judge-7"
    assert out.policy.process.env["EXTRA"] == "1"
    assert out.policy.process.env["PATH"] == loaded.policy.process.env["PATH"]
    hashes = {loaded.hash, out.hash,
              apply_overrides(loaded, Overrides(network="loopback")).hash,
              apply_overrides(loaded, Overrides(hostname="judge-7")).hash}
    assert len(hashes) == 4


@pytest.mark.parametrize("overrides, key, reason", [
    (Overrides(hostname="bad host"), "process.hostname", "'bad host' is not a valid hostname"),
    (Overrides(network="bridge"), "network.mode", "'none' or 'loopback'"),
    (Overrides(env=(("1A", "x"),)), "process.env", "'1A' is not a valid environment variable name"),
])
def test_bad_overrides_are_validated_like_a_file(overrides: Overrides, key: str, reason: str) -> None:
    with pytest.raises(PolicyError) as info:
        apply_overrides(load_policy("default"), overrides)
    assert (info.value.source, info.value.key) == ("command line", key)
    assert reason in info.value.reason


def test_policy_error_is_an_input_error() -> None:
    # The CLI turns SandboxdInputError into one line and exit 2.
    assert issubclass(PolicyError, SandboxdInputError)
    assert load_module.DEFAULT_POLICY == "default"


# ------------------------------------------------------------------------------ sizes

@pytest.mark.parametrize("text, expected", [
    ("64M", 64 << 20),
    (4096, 4096),
    ("4096", 4096),
    (0, 0),
    ("1.5G", int(1.5 * (1 << 30))),
    ("64K", 64 << 10),
    ("64k", 64 << 10),
    ("2T", 2 << 40),
    ("64MiB", 64 << 20),
    ("64MB", 64 << 20),
    (" 8M ", 8 << 20),
])
def test_sizes_parse(text, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("garbage", ["lots", "", "M", "64X", "64 M B", "-1", "1e6", "0x40", "1,5G", "64MiBs",
                                     -1, True, 1.5, None, [64]])
def test_sizes_reject_garbage(garbage) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(garbage)
    assert "size" in str(info.value)


@pytest.mark.parametrize("value, text", [(64 << 20, "64M"), (1 << 30, "1G"), (4096, "4K"), (1000, "1000"),
                                         ((1 << 20) + 1, str((1 << 20) + 1))])
def test_format_size_round_trips(value: int, text: str) -> None:
    assert format_size(value) == text
    assert parse_size(format_size(value)) == value


def test_no_stray_environment_leaks_into_search_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SANDBOXD_POLICY_PATH", raising=False)
    assert policy_search_path() == [SHIPPED_POLICIES]
    assert os.path.isdir(SHIPPED_POLICIES)


# ------------------------------------------------------- hostile input: one line, never a traceback

@pytest.mark.parametrize("name, text, key, reason", [
    # "$" in a regex also matches before a trailing newline: names are matched whole.
    ("hostname-trailing-newline", '[process]\nhostname = "sandbox\\n"\n', "process.hostname",
     "'sandbox\\n' is not a valid hostname"),
    ("env-name-trailing-newline", '[process]\nenv = { "A\\n" = "x" }\n', "process.env",
     "'A\\n' is not a valid environment variable name"),
    ("size-trailing-newline", '[filesystem]\ntmp_size = "64M\\n"\n', "filesystem.tmp_size", "is not a size"),
    ("size-unicode-digit", "[filesystem]\ntmp_size = '\u0665M'\n", "filesystem.tmp_size", "is not a size"),
    ("size-kelvin-sign", "[filesystem]\ntmp_size = '1\u212a'\n", "filesystem.tmp_size", "'1\\u212a' is not a size"),
    ("size-too-large", "[filesystem]\ntmp_size = '8388608T'\n", "filesystem.tmp_size", "too large for a size"),
    ("size-int-too-large", "[rlimits]\nfsize = 9223372036854775808\n", "rlimits.fsize", "cannot be more than"),
    ("cpu-time-inf", "[limits]\ncpu_time = inf\n", "limits.cpu_time", "finite number"),
    ("cpu-time-overflow", "[limits]\nwall_time = 1e999\n", "limits.wall_time", "finite number"),
    ("cpus-nan", "[limits]\ncpus = nan\n", "limits.cpus", "finite number"),
    # Keys are shown the way TOML writes them, so "str", "int" and "" are keys like any other.
    ("key-named-like-a-type", "[filesystem]\nstr = 1\n", "filesystem.str", "unknown key"),
    ("env-key-named-like-a-type", "[process]\nenv = { int = 1 }\n", "process.env.int", "valid string"),
    ("empty-key", '"" = 1\n', '""', "unknown key"),
    ("quoted-key", '"a b" = 1\n', '"a b"', "unknown key"),
    ("quoted-key-with-newline", '[process.env]\n"A\\nB" = 1\n', 'process.env."A\\nB"', "valid string"),
    ("source-not-a-directory", "[[filesystem.mounts]]\ntype = 'ro-bind'\nsource = '/etc/passwd/x'\n",
     "filesystem.mounts[0].source", "'/etc/passwd/x' cannot be used on this host: Not a directory"),
    ("source-name-too-long", f"[[filesystem.mounts]]\ntype = 'ro-bind'\nsource = '/{'a' * 5000}'\n",
     "filesystem.mounts[0].source", "cannot be used on this host: File name too long"),
])
def test_hostile_policy_names_file_key_and_reason(tmp_path: Path, name: str, text: str, key: str,
                                                  reason: str) -> None:
    path = write(tmp_path, text, f"{name}.toml")
    error = load_error(path)
    assert (error.source, error.key) == (str(path), key), str(error)
    assert reason in error.reason, error.reason
    assert str(error) == f"{path}: {key}: {error.reason}"
    assert str(error).splitlines() == [str(error)]


def test_dangling_symlink_source_says_so(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    path = write(tmp_path, f"[[filesystem.mounts]]\ntype = 'ro-bind'\nsource = '{tmp_path}/link'\ndest = '/x'\n")
    error = load_error(path)
    assert error.key == "filesystem.mounts[0].source"
    assert error.reason == f"'{tmp_path}/link' does not exist on this host (it is a dangling symlink)"


@pytest.mark.parametrize("content, reason", [
    (b'description = "caf\xe9"\n', "not valid UTF-8 (line 1, byte offset 18)"),
    (b"[rlimits]\nnofile = " + b"1" * 5000 + b"\n", "malformed TOML: an integer has too many digits"),
    (b"description = " + b"[" * 5000 + b"]" * 5000 + b"\n", "malformed TOML: arrays or tables nested too deeply"),
])
def test_unparsable_file_is_a_toml_error(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_bytes(content)
    error = load_error(path)
    assert (error.source, error.key, error.reason) == (str(path), "(toml)", reason)


def test_policy_file_size_is_capped(tmp_path: Path) -> None:
    path = write(tmp_path, "# padding\n" * (load_module.MAX_POLICY_BYTES // 10 + 1))
    error = load_error(path)
    assert (error.key, error.reason) == ("", f"larger than {load_module.MAX_POLICY_BYTES} bytes; not a policy file")
    write(tmp_path, "# padding\n" * (load_module.MAX_POLICY_BYTES // 10))
    assert load_policy(str(path)).policy == Policy()


@pytest.mark.parametrize("name, reason", [
    ("/" + "a" * 5000 + ".toml", "File name too long"),  # stat() raises ENAMETOOLONG, not "no such file"
    ("a" * 5000, "File name too long"),                   # ... also for a name looked up on the search path
    ("/a\0b.toml", "a path cannot contain a NUL byte"),
])
def test_unusable_policy_paths_are_policy_errors(name: str, reason: str) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(name)
    assert reason in info.value.reason
    assert str(info.value).splitlines() == [str(info.value)]


def test_directory_is_not_read_as_a_policy(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_module.read_policy_file(tmp_path)
    assert (info.value.source, info.value.reason) == (str(tmp_path), "Is a directory")


def test_deeply_nested_value_is_a_short_policy_error() -> None:
    nested: list = []
    inner = nested
    for _ in range(100_000):
        inner.append([])
        inner = inner[0]
    with pytest.raises(PolicyError) as info:
        load_module.validate_policy({"description": nested}, "x.toml")
    assert info.value.key == "description" and "valid string (got list [[[" in info.value.reason
    assert len(str(info.value)) < 200


def test_policy_error_escapes_what_would_break_the_line() -> None:
    error = PolicyError("a\nb.toml", "k\r\x1c\u2028\udcff", "why\x85 not\ttab")
    assert (error.source, error.key, error.reason) == ("a\\nb.toml", "k\\r\\x1c\\u2028\\udcff", "why\\x85 not\\ttab")
    assert str(error) == "a\\nb.toml: k\\r\\x1c\\u2028\\udcff: why\\x85 not\\ttab"
    # Printable text, backslashes and non-ASCII letters are left as they are.
    assert str(PolicyError("café.toml", "a\\n", "ok")) == "café.toml: a\\n: ok"


def test_mount_collision_key_is_the_mount(tmp_path: Path) -> None:
    path = write(tmp_path, "[[filesystem.mounts]]\ntype = 'ro-bind'\nsource = '/usr'\n"
                           "[[filesystem.mounts]]\ntype = 'tmpfs'\ndest = '/usr'\n")
    assert str(load_error(path)) == f"{path}: filesystem.mounts[1]: /usr is mounted twice"


@pytest.mark.parametrize("mounts, key, reason", [
    ((("--bind", "/tmp", "/usr"),), "--bind /tmp /usr", "/usr is mounted twice (already mounted by the policy)"),
    ((("--tmpfs", "", "/my dir"), ("--tmpfs", "", "/my dir/")), "--tmpfs '/my dir/'",
     "/my dir is mounted twice (already mounted by --tmpfs '/my dir')"),
    ((("--tmpfs", "", "/dev/shm"),), "--tmpfs /dev/shm", "/dev/shm is managed by sandboxd"),
    ((("--bind", "/a\0b", "/x"),), "--bind '/a\\x00b' /x", "source '/a\\x00b' contains a NUL byte"),
    ((("--tmpfs", "", "rel\udcff"),), "--tmpfs 'rel\\udcff'", "'rel\\udcff' is not an absolute path"),
])
def test_override_errors_name_the_flag_as_typed(mounts, key: str, reason: str) -> None:
    with pytest.raises(PolicyError) as info:
        apply_overrides(load_policy("default"), Overrides(mounts=mounts))
    assert (info.value.source, info.value.key, info.value.reason) == ("command line", key, reason)


def test_override_env_name_with_trailing_newline_is_refused() -> None:
    with pytest.raises(PolicyError) as info:
        apply_overrides(load_policy("default"), Overrides(env=(("A\n", "x"),)))
    assert (info.value.key, info.value.reason) == ("process.env", "'A\\n' is not a valid environment variable name")


@pytest.mark.parametrize("text, expected", [
    ("0.1K", 102),                           # exact: 1024 / 10, rounded down
    ("9223372036854775807", (1 << 63) - 1),  # the largest size, without going through float
    ("8388607T", 8388607 << 40),
    ("000000000000000000000000001K", 1024),  # leading zeros are not digits of magnitude
    ("1.50000000000000000000G", 3 << 29),    # nor are trailing zeros of the fraction
    ("\t8M\t", 8 << 20),
])
def test_sizes_parse_exactly(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("garbage", ["9" * 400, "9223372036854775808", "8388608T", "1" + "0" * 5000, 1 << 63, 10 ** 500,
                                     "1.00000000000000000001K", "64M\n", "\u0665", "1\u212a", "1\u212aB"])
def test_sizes_reject_absurd_values_with_a_value_error(garbage) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(garbage)
    assert "size" in str(info.value) and len(str(info.value)) < 200
