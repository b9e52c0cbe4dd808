"""Tokens, bearer parsing, rate limits and the ``sandboxd token`` commands."""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sandboxd.errors import SandboxdInputError
from sandboxd.service import auth
from sandboxd.service.auth import (RateLimiter, TokenFileError, TokenRecord, TokenStore, UnknownTokenError,
                                   bearer_token, default_state_dir, may_use_policy, write_secret_file)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path) -> TokenStore:
    return TokenStore(tmp_path / "tokens.json")


# --------------------------------------------------------------------------- add / authenticate / revoke


def test_add_authenticate_revoke(store: TokenStore) -> None:
    secret, record = store.add("acme", policies=("default", "python"), max_running=2, max_queued=5,
                               rate_per_s=1.5, burst=3)
    assert secret.startswith("sbx_") and len(secret) == 47
    assert record.id.startswith("tok_") and len(record.id) == 12
    assert record.tenant == "acme" and record.policies == ("default", "python")
    assert (record.max_running, record.max_queued, record.rate_per_s, record.burst) == (2, 5, 1.5, 3)
    assert record.hash == "sha256:" + __import__("hashlib").sha256(secret.encode()).hexdigest()
    assert not record.revoked and not record.admin
    assert store.authenticate(secret) == record
    assert store.list() == [record]

    other_secret, other = store.add("beta")
    assert other.policies == ("*",) and other_secret != secret
    assert store.authenticate(other_secret) == other

    revoked = store.revoke(record.id)
    assert revoked.revoked and revoked.id == record.id
    assert store.authenticate(secret) is None
    assert store.authenticate(other_secret) == other
    assert store.revoke(record.id).revoked  # again: fine
    # A fresh store object reads the same state.
    fresh = TokenStore(store.path)
    assert fresh.authenticate(secret) is None and fresh.authenticate(other_secret) == other
    assert [r.revoked for r in fresh.list()] == [True, False]


def test_store_accepts_state_dir(tmp_path: Path) -> None:
    secret, record = TokenStore(tmp_path).add("acme")
    assert (tmp_path / "tokens.json").exists()
    assert TokenStore(tmp_path).authenticate(secret) == record


def test_revoke_unknown(store: TokenStore) -> None:
    store.add("acme")
    with pytest.raises(UnknownTokenError) as info:
        store.revoke("tok_00000000")
    assert isinstance(info.value, KeyError) and isinstance(info.value, SandboxdInputError)
    assert str(info.value) == "no token with id tok_00000000"
    with pytest.raises(UnknownTokenError):
        store.revoke("not an id\n")
    assert "\n" not in str(pytest.raises(UnknownTokenError, store.revoke, "x\ny").value)


@pytest.mark.parametrize("presented", [
    None, "", 42, b"sbx_" + b"a" * 43, "sbx_", "sbx_" + "a" * 42, "sbx_" + "a" * 44, "SBX_" + "a" * 43,
    "sbx_" + "a" * 42 + "=", "sbx_" + "a" * 42 + "\n", " sbx_" + "a" * 43, "sbx_" + "é" * 43,
    "sbx_" + "a" * 42 + "\x00", "x" * 100_000,
])
def test_malformed_tokens_are_none(store: TokenStore, presented) -> None:
    store.add("acme")
    assert store.authenticate(presented) is None


def test_unknown_well_formed_token(store: TokenStore) -> None:
    secret, _ = store.add("acme")
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert store.authenticate(flipped) is None
    assert store.authenticate("sbx_" + "a" * 43) is None


def test_empty_or_missing_file(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "nope" / "tokens.json")
    assert store.list() == []
    assert store.authenticate("sbx_" + "a" * 43) is None
    store.add("acme")  # makes the directory
    assert stat.S_IMODE(os.stat(tmp_path / "nope").st_mode) == 0o700


# --------------------------------------------------------------------------- the file


def test_file_holds_hashes_only_and_mode_0600(store: TokenStore) -> None:
    secrets_made = [store.add(f"t{i}")[0] for i in range(3)]
    secrets_made.append(store.ensure_admin())
    raw = store.path.read_bytes()
    for secret in secrets_made:
        assert secret.encode() not in raw
        assert secret[4:].encode() not in raw  # not even the body without the prefix
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    data = json.loads(raw)
    assert data["version"] == 1 and len(data["tokens"]) == 4
    for entry in data["tokens"]:
        assert set(entry) == set(TokenRecord.__dataclass_fields__)
        assert entry["hash"].startswith("sha256:")
    # No temp file left behind; the lock file is 0600 too.
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["tokens.json", "tokens.json.lock"]
    assert stat.S_IMODE(os.stat(store.lock_path).st_mode) == 0o600


def test_secret_not_in_repr_or_errors(store: TokenStore, caplog) -> None:
    secret, record = store.add("acme")
    assert secret not in repr(record) and secret not in repr(store) and secret not in str(record)
    caplog.set_level(logging.DEBUG)
    store.authenticate(secret)
    store.authenticate(secret[:-1] + "!")
    assert secret not in caplog.text and secret[:-1] not in caplog.text


def test_corrupt_file_fails_closed(store: TokenStore, caplog) -> None:
    secret, _ = store.add("acme")
    assert store.authenticate(secret) is not None
    store.path.write_text('{"version": 1, "tokens": [{"id": "tok_zz"}]}')
    store.reload_interval = 0
    with caplog.at_level(logging.ERROR):
        assert store.authenticate(secret) is None
    assert "no token is accepted" in caplog.text
    with pytest.raises(TokenFileError):
        store.add("beta")  # never overwrites a file it can't read
    store.path.write_text("not json")
    with pytest.raises(TokenFileError) as info:
        store.list()
    assert "\n" not in str(info.value)


def test_group_writable_file_refused(store: TokenStore) -> None:
    secret, _ = store.add("acme")
    os.chmod(store.path, 0o666)
    with pytest.raises(TokenFileError, match="writable by group or others"):
        TokenStore(store.path).reload()
    assert TokenStore(store.path).authenticate(secret) is None


def _adder(path: str, tenant: str, count: int, barrier) -> None:
    barrier.wait()
    for _ in range(count):
        TokenStore(path).add(tenant)


def test_concurrent_adds_from_8_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "tokens.json")
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(8)
    workers = [ctx.Process(target=_adder, args=(path, f"tenant{i}", 5, barrier)) for i in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    records = TokenStore(path).list()
    assert len(records) == 40
    assert sorted({r.tenant for r in records}) == sorted(f"tenant{i}" for i in range(8))
    assert len({r.id for r in records}) == 40 and len({r.hash for r in records}) == 40


def test_reload_sees_another_process(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    now = [1000.0]
    store = TokenStore(path, clock=lambda: now[0])
    first, _ = store.add("acme")
    assert store.authenticate(first) is not None
    code = ("import sys; from sandboxd.service.auth import TokenStore; "
            "print(TokenStore(sys.argv[1]).add('beta')[0])")
    out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.strip()
    # Authentication looks at the file every time: no clock has to pass...
    record = store.authenticate(out)
    assert record is not None and record.tenant == "beta"
    # ...and revocations by another process are seen the same way.
    ids = {r.tenant: r.id for r in TokenStore(path).list()}
    subprocess.run([sys.executable, "-c", "import sys; from sandboxd.service.auth import TokenStore; "
                    "TokenStore(sys.argv[1]).revoke(sys.argv[2])", str(path), ids["acme"]],
                   cwd=REPO, check=True)
    assert store.authenticate(first) is None
    assert store.authenticate(out) is not None


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("tenant", ["", "Acme", "-acme", "_a", "a" * 64, "a b", "a\n", "ä", "a.b", None, 3])
def test_bad_tenants(store: TokenStore, tenant) -> None:
    with pytest.raises(SandboxdInputError) as info:
        store.add(tenant)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("tenant", ["a", "0", "acme-corp_2", "a" * 63])
def test_good_tenants(store: TokenStore, tenant) -> None:
    assert store.add(tenant)[1].tenant == tenant


@pytest.mark.parametrize("policies", [(), ("a/b",), ("../x",), ("",), ("x.toml",), ("**",), ("ä",), ("a\n",),
                                      tuple(f"p{i}" for i in range(65))])
def test_bad_policies(store: TokenStore, policies) -> None:
    with pytest.raises(SandboxdInputError) as info:
        store.add("acme", policies=policies)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs", [
    {"max_running": 0}, {"max_running": -1}, {"max_running": 10**9}, {"max_running": 1.5},
    {"max_running": True}, {"max_queued": 0}, {"max_queued": 10**7}, {"rate_per_s": 0},
    {"rate_per_s": -1.0}, {"rate_per_s": float("nan")}, {"rate_per_s": float("inf")},
    {"rate_per_s": 1e9}, {"burst": 0}, {"burst": 10**9}, {"burst": "3"},
])
def test_bad_limits(store: TokenStore, kwargs) -> None:
    with pytest.raises(SandboxdInputError):
        store.add("acme", **kwargs)
    assert store.list() == []


def test_policies_deduplicated(store: TokenStore) -> None:
    assert store.add("acme", policies=["a", "b", "a"])[1].policies == ("a", "b")
    assert store.add("acme", policies="solo")[1].policies == ("solo",)


# --------------------------------------------------------------------------- admin


def test_ensure_admin_once(store: TokenStore, tmp_path: Path) -> None:
    store.add("acme")
    secret = store.ensure_admin()
    assert secret is not None
    record = store.authenticate(secret)
    assert record is not None and record.admin and record.policies == ("*",)
    assert store.ensure_admin() is None
    assert TokenStore(store.path).ensure_admin() is None
    assert sum(r.admin for r in store.list()) == 1

    target = write_secret_file(tmp_path / "state" / "admin-token", secret)
    assert target.read_text() == secret + "\n"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    write_secret_file(target, secret)  # replacing it is fine
    assert target.read_text() == secret + "\n"

    # Revoke every admin token: the next start makes a new one.
    store.revoke(record.id)
    again = store.ensure_admin()
    assert again is not None and again != secret
    assert store.ensure_admin() is None


def test_explicit_admin_token_counts(store: TokenStore) -> None:
    store.add("ops", admin=True)
    assert store.ensure_admin() is None


# --------------------------------------------------------------------------- bearer header


@pytest.mark.parametrize("header,expected", [
    ("Bearer sbx_abc", "sbx_abc"),
    ("bearer sbx_abc", "sbx_abc"),
    ("BEARER sbx_abc", "sbx_abc"),
    ("Bearer  sbx_abc", "sbx_abc"),
    ("Bearer abc.def~+/=", "abc.def~+/="),
    (None, None), ("", None), ("Bearer", None), ("Bearer ", None), ("Bearersbx_abc", None),
    ("Basic dXNlcjpwYXNz", None), ("Token sbx_abc", None), ("sbx_abc", None),
    ("Bearer sbx_abc extra", None), ("Bearer sbx_abc,", None), ("Bearer\tsbx_abc", None),
    (" Bearer sbx_abc", None), ("Bearer sbx_abc ", None), ("Bearer sbx_abc\n", None),
    ("Bearer sbx_a=b", None), ("Bearer sbx_ä", None), ("Bearer realm=x", None),
    ("Bearer " + "a" * 5000, None), (b"Bearer sbx_abc", None), ("Be\u0430rer sbx_abc", None),
])
def test_bearer_token(header, expected) -> None:
    assert bearer_token(header) == expected


def test_bearer_round_trip(store: TokenStore) -> None:
    secret, record = store.add("acme")
    assert store.authenticate(bearer_token(f"Bearer {secret}")) == record


# --------------------------------------------------------------------------- rate limiter


def test_rate_limiter_burst_then_refusal() -> None:
    limiter = RateLimiter()
    for _ in range(3):
        assert limiter.allow("k", 0.5, 3, now=100.0) == (True, 0.0)
    allowed, retry = limiter.allow("k", 0.5, 3, now=100.0)
    assert not allowed and retry == 2.0  # one token every 2 s
    # Other keys have their own bucket.
    assert limiter.allow("other", 0.5, 3, now=100.0) == (True, 0.0)


def test_rate_limiter_retry_after_rounds_up() -> None:
    limiter = RateLimiter()
    assert limiter.allow("k", 10.0, 1, now=0.0)[0]
    allowed, retry = limiter.allow("k", 10.0, 1, now=0.0)
    assert not allowed and retry == 1.0  # 0.1 s, but Retry-After is whole seconds >= 1
    limiter = RateLimiter()
    assert limiter.allow("k", 0.3, 1, now=0.0)[0]
    assert limiter.allow("k", 0.3, 1, now=1.0) == (False, 3.0)  # 2.33 s left -> 3


def test_rate_limiter_refill() -> None:
    limiter = RateLimiter()
    for _ in range(2):
        assert limiter.allow("k", 1.0, 2, now=0.0)[0]
    assert not limiter.allow("k", 1.0, 2, now=0.0)[0]
    assert not limiter.allow("k", 1.0, 2, now=0.5)[0]  # refused calls spend nothing
    assert limiter.allow("k", 1.0, 2, now=1.0) == (True, 0.0)
    assert not limiter.allow("k", 1.0, 2, now=1.2)[0]
    # A long pause refills to the burst, no further.
    for _ in range(2):
        assert limiter.allow("k", 1.0, 2, now=1000.0)[0]
    assert limiter.allow("k", 1.0, 2, now=1000.0)[0] is False
    # A clock that goes backwards gives nothing extra.
    assert limiter.allow("k", 1.0, 2, now=10.0)[0] is False


def test_rate_limiter_bounded_memory() -> None:
    limiter = RateLimiter(max_keys=100)
    for i in range(10_000):
        limiter.allow(f"key{i}", 1.0, 5, now=0.0)
        assert len(limiter) <= 100
    # Idle (refilled) buckets are dropped when new keys arrive.
    limiter.allow("late", 1.0, 5, now=100.0)
    assert len(limiter) == 1


def test_rate_limiter_keeps_busy_keys_when_sweeping() -> None:
    limiter = RateLimiter(max_keys=1000)
    for _ in range(5):
        limiter.allow("busy", 1.0, 5, now=0.0)
    assert not limiter.allow("busy", 1.0, 5, now=0.0)[0]
    limiter.allow("new", 1.0, 5, now=0.5)  # sweep: "busy" is not full again yet, so it stays
    assert not limiter.allow("busy", 1.0, 5, now=0.5)[0]


def test_rate_limiter_rejects_bad_limits() -> None:
    with pytest.raises(ValueError):
        RateLimiter().allow("k", 0.0, 1)
    with pytest.raises(ValueError):
        RateLimiter().allow("k", 1.0, 0)


# --------------------------------------------------------------------------- policies


def test_may_use_policy(store: TokenStore) -> None:
    _, some = store.add("acme", policies=("default", "python"))
    _, every = store.add("beta")
    assert may_use_policy(some, "default") and may_use_policy(some, "python")
    assert not may_use_policy(some, "network")
    assert may_use_policy(every, "network") and may_use_policy(every, "default")
    for bad in ("*", "", "/etc/policy.toml", "../default", "default.toml", None):
        assert not may_use_policy(every, bad)
        assert not may_use_policy(some, bad)
    assert not may_use_policy(store.revoke(every.id), "default")


# --------------------------------------------------------------------------- state dir and CLI


def test_default_state_dir(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SANDBOXD_STATE_DIR", str(tmp_path))
    assert default_state_dir() == tmp_path
    monkeypatch.delenv("SANDBOXD_STATE_DIR")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_state_dir() == Path("/var/lib/sandboxd")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_state_dir() == tmp_path / ".local" / "state" / "sandboxd"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sandboxd")
    commands = parser.add_subparsers(dest="command", required=True)
    auth.add_commands(commands)
    return parser


def test_cli_add_prints_token_alone(tmp_path: Path, capsys) -> None:
    args = _parser().parse_args(["token", "add", "--tenant", "acme", "--policy", "default", "--policy", "python",
                                 "--max-running", "2", "--max-queued", "7", "--rate", "0.5", "--burst", "4",
                                 "--state-dir", str(tmp_path)])
    assert auth.run(args) == 0
    out, err = capsys.readouterr()
    secret = out.strip()
    assert out == secret + "\n" and secret.startswith("sbx_") and len(secret) == 47
    assert secret not in err and "tok_" in err
    record = TokenStore(tmp_path / "tokens.json").authenticate(secret)
    assert record is not None and record.policies == ("default", "python")
    assert (record.max_running, record.max_queued, record.rate_per_s, record.burst) == (2, 7, 0.5, 4)


def test_cli_list_and_revoke(tmp_path: Path, capsys) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    secret, record = store.add("acme", policies=("default",))
    admin_secret = store.ensure_admin()
    parser = _parser()

    assert auth.run(parser.parse_args(["token", "list", "--state-dir", str(tmp_path)])) == 0
    out = capsys.readouterr().out
    assert record.id in out and "acme" in out and "default" in out and "admin" in out
    assert secret not in out and admin_secret not in out and record.hash not in out

    assert auth.run(parser.parse_args(["token", "revoke", record.id, "--state-dir", str(tmp_path)])) == 0
    assert record.id in capsys.readouterr().out
    assert TokenStore(tmp_path).authenticate(secret) is None  # `store` looks again within 0.5 s

    assert auth.run(parser.parse_args(["token", "list", "--json", "--state-dir", str(tmp_path)])) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["tenant"], r["revoked"], r["admin"]) for r in rows][0] == (record.id, "acme", True, False)
    assert all(len(r["hash"]) < 30 for r in rows)

    with pytest.raises(UnknownTokenError):
        auth.run(parser.parse_args(["token", "revoke", "tok_deadbeef", "--state-dir", str(tmp_path)]))
    with pytest.raises(SandboxdInputError):
        auth.run(parser.parse_args(["token", "add", "--tenant", "Bad Name", "--state-dir", str(tmp_path)]))


def test_cli_uses_env_state_dir(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SANDBOXD_STATE_DIR", str(tmp_path / "env"))
    assert auth.run(_parser().parse_args(["token", "add", "--tenant", "acme", "--admin"])) == 0
    secret = capsys.readouterr().out.strip()
    record = TokenStore(tmp_path / "env" / "tokens.json").authenticate(secret)
    assert record is not None and record.admin


def test_cli_in_subprocess_stdout_is_token_only(tmp_path: Path) -> None:
    code = ("import argparse, sys\n"
            "from sandboxd.service import auth\n"
            "p = argparse.ArgumentParser(prog='sandboxd')\n"
            "auth.add_commands(p.add_subparsers(dest='command', required=True))\n"
            "sys.exit(auth.run(p.parse_args(sys.argv[1:])))\n")
    done = subprocess.run([sys.executable, "-c", code, "token", "add", "--tenant", "acme",
                           "--state-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sbx_") and len(lines[0]) == 47
    assert lines[0] not in done.stderr
    assert TokenStore(tmp_path).authenticate(lines[0]) is not None


def test_a_token_added_or_revoked_counts_from_the_next_request(tmp_path) -> None:
    service_view = TokenStore(tmp_path / "tokens.json")  # the running service's store
    service_view.ensure_admin()
    assert service_view.list()  # loaded: its reload interval has just started
    cli = TokenStore(tmp_path / "tokens.json")  # `sandboxd token add` in another process
    secret, record = cli.add("acme")
    assert service_view.authenticate(secret) is not None  # no waiting for reload_interval
    cli.revoke(record.id)
    assert service_view.authenticate(secret) is None
