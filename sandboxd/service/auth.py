"""Bearer tokens for tenants, per-tenant rate limits and the ``sandboxd token`` commands.

Tokens live hashed in ``<state_dir>/tokens.json`` (mode 0600)::

    {"version": 1,
     "tokens": [{"id": "tok_1a2b3c4d", "tenant": "acme", "hash": "sha256:<64 hex>",
                 "policies": ["*"], "max_running": 4, "max_queued": 16,
                 "rate_per_s": 5.0, "burst": 10, "created": "2024-05-01T12:00:00Z",
                 "revoked": false, "admin": false}]}

The secret (``sbx_`` + 43 URL-safe characters, 256 random bits) is shown once, when the
token is made, and only its SHA-256 is stored: a random 256-bit secret needs no salt or slow
hash. The CLI changes the file while the service runs: each change takes an ``flock`` on
``tokens.json.lock``, re-reads the file, writes a temporary file in the same directory,
fsyncs it and renames it over ``tokens.json``; readers never lock, they see the old file or
the new one. The service notices a change (inode, size or mtime) on the next request it
authenticates (a stat per request); other lookups check at most every ``reload_interval``.

Secrets never reach a log, an exception or a repr: nothing here puts a presented token in a
message, and :class:`TokenRecord` holds only the hash.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from sandboxd.errors import SandboxdInputError

log = logging.getLogger("sandboxd.service.auth")

TOKENS_FILE = "tokens.json"
ADMIN_TOKEN_FILE = "admin-token"
FILE_VERSION = 1

TOKEN_PREFIX = "sbx_"
TOKEN_BODY_LEN = 43  # secrets.token_urlsafe(32): 32 bytes, base64url without padding
ID_PREFIX = "tok_"
HASH_PREFIX = "sha256:"

TENANT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}", re.ASCII)
POLICY_RE = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
ID_RE = re.compile(r"tok_[0-9a-f]{8}", re.ASCII)
HASH_RE = re.compile(r"sha256:[0-9a-f]{64}", re.ASCII)
_TOKEN_RE = re.compile(r"sbx_[A-Za-z0-9_-]{43}", re.ASCII)
# RFC 7235 credentials: scheme, one or more spaces, token68. Nothing else (no tabs, no params).
_BEARER_RE = re.compile(r"(?i:bearer) +([A-Za-z0-9._~+/-]+=*)", re.ASCII)
_MAX_HEADER = 4096

DEFAULT_MAX_RUNNING = 4
DEFAULT_MAX_QUEUED = 16
DEFAULT_RATE_PER_S = 5.0
DEFAULT_BURST = 10
MAX_RUNNING_CAP = 1024
MAX_QUEUED_CAP = 100_000
RATE_CAP = 10_000.0
BURST_CAP = 100_000
MAX_POLICIES = 64
ADMIN_TENANT = "admin"


# --------------------------------------------------------------------------- errors


class TokenError(SandboxdInputError):
    """A token command or the tokens file went wrong; the message is one line, never a secret."""


class TokenFileError(TokenError):
    """``tokens.json`` cannot be read, parsed or trusted."""


class UnknownTokenError(TokenError, KeyError):
    """No token has that id (a ``KeyError`` too, with a plain message)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown token"


def _shown(value: object, limit: int = 80) -> str:
    """``repr`` of user input, cut short: always one line (repr escapes line breaks)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class TokenRecord:
    """One token as stored: everything but the secret."""

    id: str
    tenant: str
    hash: str
    policies: tuple[str, ...]
    max_running: int
    max_queued: int
    rate_per_s: float
    burst: int
    created: str
    revoked: bool = False
    admin: bool = False

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["policies"] = list(self.policies)
        return data

    def public(self) -> dict[str, Any]:
        """What ``token list`` shows: the hash cut to a recognisable prefix."""
        data = self.to_json()
        data["hash"] = self.hash[: len(HASH_PREFIX) + 12] + "…"
        return data

    @classmethod
    def from_json(cls, data: object) -> "TokenRecord":
        if not isinstance(data, dict):
            raise ValueError("a token entry must be an object")
        fields = set(cls.__dataclass_fields__)
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        missing = fields - set(data) - {"revoked", "admin"}
        if missing:
            raise ValueError(f"missing keys {sorted(missing)}")
        token_id, token_hash, created = data["id"], data["hash"], data["created"]
        if not isinstance(token_id, str) or not ID_RE.fullmatch(token_id):
            raise ValueError(f"bad id {_shown(token_id)}")
        if not isinstance(token_hash, str) or not HASH_RE.fullmatch(token_hash):
            raise ValueError(f"{token_id}: bad hash")
        if not isinstance(created, str) or len(created) > 64:
            raise ValueError(f"{token_id}: bad created time")
        revoked, admin = data.get("revoked", False), data.get("admin", False)
        if not isinstance(revoked, bool) or not isinstance(admin, bool):
            raise ValueError(f"{token_id}: revoked and admin must be true or false")
        policies = data["policies"]
        if not isinstance(policies, list):
            raise ValueError(f"{token_id}: policies must be a list")
        try:
            return cls(id=token_id, tenant=check_tenant(data["tenant"]), hash=token_hash,
                       policies=check_policies(policies), created=created, revoked=revoked, admin=admin,
                       **check_limits(data["max_running"], data["max_queued"], data["rate_per_s"],
                                      data["burst"]))
        except TokenError as exc:
            raise ValueError(f"{token_id}: {exc}") from None


def hash_token(token: str) -> str:
    return HASH_PREFIX + hashlib.sha256(token.encode("ascii")).hexdigest()


def new_secret() -> str:
    body = secrets.token_urlsafe(32)[:TOKEN_BODY_LEN]
    assert len(body) == TOKEN_BODY_LEN
    return TOKEN_PREFIX + body


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- validation


def check_tenant(tenant: object) -> str:
    if not isinstance(tenant, str) or not TENANT_RE.fullmatch(tenant):
        raise TokenError(f"tenant {_shown(tenant)}: use 1-63 of a-z, 0-9, '_' and '-', "
                         "starting with a letter or digit")
    return tenant


def check_policies(policies: Iterable[object] | str) -> tuple[str, ...]:
    if isinstance(policies, str):
        policies = (policies,)
    result: list[str] = []
    for policy in policies:
        if not isinstance(policy, str) or not (policy == "*" or POLICY_RE.fullmatch(policy)):
            raise TokenError(f"policy {_shown(policy)}: a policy name has only letters, digits, "
                             "'-' and '_' ('*' = every policy)")
        if policy not in result:
            result.append(policy)
    if not result:
        raise TokenError("a token needs at least one policy ('*' = every policy)")
    if len(result) > MAX_POLICIES:
        raise TokenError(f"a token can name at most {MAX_POLICIES} policies")
    return tuple(result)


def _check_int(name: str, value: object, cap: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= cap:
        raise TokenError(f"{name} {_shown(value)}: must be a whole number from 1 to {cap}")
    return value


def check_limits(max_running: object, max_queued: object, rate_per_s: object,
                 burst: object) -> dict[str, Any]:
    if isinstance(rate_per_s, bool) or not isinstance(rate_per_s, (int, float)) \
            or not math.isfinite(rate_per_s) or not 0 < rate_per_s <= RATE_CAP:
        raise TokenError(f"rate {_shown(rate_per_s)}: must be a number above 0 and at most {RATE_CAP:g}")
    return {"max_running": _check_int("max-running", max_running, MAX_RUNNING_CAP),
            "max_queued": _check_int("max-queued", max_queued, MAX_QUEUED_CAP),
            "rate_per_s": float(rate_per_s),
            "burst": _check_int("burst", burst, BURST_CAP)}


# --------------------------------------------------------------------------- files


def default_state_dir() -> Path:
    """``$SANDBOXD_STATE_DIR``, else ``/var/lib/sandboxd`` for root, ``~/.local/state/sandboxd`` otherwise."""
    env = os.environ.get("SANDBOXD_STATE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/sandboxd")
    return Path.home() / ".local" / "state" / "sandboxd"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600: temp file in the same dir, fsync, rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def write_secret_file(path: str | os.PathLike[str], secret: str) -> Path:
    """Write ``secret`` (and a newline) to ``path``, mode 0600, atomically. Log the path, never this."""
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _atomic_write(path, (secret + "\n").encode("ascii"))
    return path


def _make_dir(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise TokenFileError(f"state directory {directory}: {exc.strerror}") from None


# --------------------------------------------------------------------------- the store


class TokenStore:
    """The tokens of ``path`` (``tokens.json``, or a directory holding it).

    ``authenticate`` is cheap and re-reads the file when it changed (it checks on every call;
    other lookups at most every ``reload_interval`` seconds); ``add``, ``revoke`` and ``ensure_admin`` read, change and
    replace the file under an exclusive lock, so concurrent CLI invocations never lose an update.
    """

    def __init__(self, path: str | os.PathLike[str], *, reload_interval: float = 0.5,
                 clock=time.monotonic) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / TOKENS_FILE
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self.reload_interval = reload_interval
        self._clock = clock
        self._mutex = threading.Lock()
        self._records: dict[str, TokenRecord] = {}   # by id, in file order
        self._by_hash: dict[str, TokenRecord] = {}
        self._signature: tuple[int, ...] | None = None
        self._checked_at: float | None = None
        self._loaded = False

    def __repr__(self) -> str:
        return f"TokenStore({str(self.path)!r}, {len(self._records)} tokens)"

    # -- reading

    def _stat(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TokenFileError(f"{self.path}: {exc.strerror}") from None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode, st.st_uid)

    def _read(self) -> tuple[tuple[int, ...] | None, list[TokenRecord]]:
        """The file's signature and records; raises :class:`TokenFileError` if it can't be trusted."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None, []
        except OSError as exc:
            raise TokenFileError(f"{self.path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode, st.st_uid)
            if st.st_mode & 0o022:
                raise TokenFileError(f"{self.path}: writable by group or others; refusing it "
                                     "(chmod 600 it and check the tokens in it)")
            raw = handle.read(64 * 1024 * 1024)
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise TokenFileError(f"{self.path}: not valid JSON ({type(exc).__name__})") from None
        if not isinstance(data, dict) or data.get("version") != FILE_VERSION \
                or not isinstance(data.get("tokens"), list):
            raise TokenFileError(f"{self.path}: not a version {FILE_VERSION} tokens file")
        records: list[TokenRecord] = []
        ids: set[str] = set()
        hashes: set[str] = set()
        for index, entry in enumerate(data["tokens"]):
            try:
                record = TokenRecord.from_json(entry)
            except ValueError as exc:
                raise TokenFileError(f"{self.path}: tokens[{index}]: {exc}") from None
            if record.id in ids or record.hash in hashes:
                raise TokenFileError(f"{self.path}: tokens[{index}]: duplicate id or hash")
            ids.add(record.id)
            hashes.add(record.hash)
            records.append(record)
        return signature, records

    def _install(self, signature: tuple[int, ...] | None, records: list[TokenRecord]) -> None:
        self._records = {record.id: record for record in records}
        self._by_hash = {record.hash: record for record in records}
        self._signature = signature
        self._loaded = True

    def reload(self, force: bool = False) -> bool:
        """Re-read the file if it changed (or ``force``); True if the tokens were re-read.

        A file that can't be trusted leaves no token valid (fail closed) and raises
        :class:`TokenFileError`; ``authenticate`` logs that instead of raising.
        """
        with self._mutex:
            self._checked_at = self._clock()
            signature = None
            try:
                signature = self._stat()
                if not force and self._loaded and signature == self._signature:
                    return False
                signature, records = self._read()
            except TokenFileError:
                self._install(signature, [])
                raise
            self._install(signature, records)
            return True

    def _maybe_reload(self, always: bool = False) -> None:
        now = self._clock()
        if (not always and self._loaded and self._checked_at is not None
                and now - self._checked_at < self.reload_interval):
            return
        try:
            if self.reload():
                log.info("tokens reloaded from %s (%d tokens)", self.path, len(self._records))
        except TokenFileError as exc:
            log.error("no token is accepted: %s", exc)

    def list(self) -> list[TokenRecord]:
        """Every token, revoked ones included, in the order they were added (fresh from the file)."""
        self.reload()
        return list(self._records.values())

    def get(self, token_id: str) -> TokenRecord | None:
        self._maybe_reload()
        return self._records.get(token_id)

    def authenticate(self, presented: object) -> TokenRecord | None:
        """The live record of ``presented``, or None: unknown, revoked or malformed. Never raises."""
        if not isinstance(presented, str) or not _TOKEN_RE.fullmatch(presented):
            return None
        # A stat of the file on every request (a few µs): a token added or revoked by
        # `sandboxd token` counts from the next request, not up to reload_interval later.
        self._maybe_reload(always=True)
        digest = hash_token(presented)
        # The dict is keyed by SHA-256 of a 256-bit secret: how long the lookup takes says
        # nothing usable about any secret. The final check compares in constant time anyway.
        record = self._by_hash.get(digest)
        if record is None or not hmac.compare_digest(record.hash.encode(), digest.encode()):
            return None
        if record.revoked:
            return None
        return record

    # -- writing

    def _update(self, change) -> Any:
        """Run ``change(records) -> (records, result)`` on fresh file contents, under the lock."""
        _make_dir(self.path.parent)
        try:
            lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise TokenFileError(f"{self.lock_path}: {exc.strerror}") from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            with self._mutex:
                signature, records = self._read()
                changed, result = change(records)
                if changed is not None:
                    body = {"version": FILE_VERSION, "tokens": [r.to_json() for r in changed]}
                    try:
                        _atomic_write(self.path, (json.dumps(body, indent=1) + "\n").encode())
                    except OSError as exc:
                        raise TokenFileError(f"{self.path}: {exc.strerror}") from None
                    signature, records = self._stat(), changed
                self._install(signature, records)
                self._checked_at = self._clock()
            return result
        finally:
            os.close(lock_fd)  # releases the flock

    def add(self, tenant: str, *, policies: Iterable[str] | str = ("*",),
            max_running: int = DEFAULT_MAX_RUNNING, max_queued: int = DEFAULT_MAX_QUEUED,
            rate_per_s: float = DEFAULT_RATE_PER_S, burst: int = DEFAULT_BURST,
            admin: bool = False) -> tuple[str, TokenRecord]:
        """A new token: ``(secret, record)``. The secret is not kept anywhere; show it once."""
        tenant = check_tenant(tenant)
        policies = check_policies(policies)
        limits = check_limits(max_running, max_queued, rate_per_s, burst)
        secret = new_secret()

        def change(records: list[TokenRecord]):
            taken = {r.id for r in records}
            token_id = ID_PREFIX + secrets.token_hex(4)
            while token_id in taken:
                token_id = ID_PREFIX + secrets.token_hex(4)
            record = TokenRecord(id=token_id, tenant=tenant, hash=hash_token(secret), policies=policies,
                                 created=_now_iso(), admin=bool(admin), **limits)
            return records + [record], record

        return secret, self._update(change)

    def revoke(self, token_id: str) -> TokenRecord:
        """Mark the token revoked (again is fine); :class:`UnknownTokenError` if no token has that id."""
        if not isinstance(token_id, str) or not ID_RE.fullmatch(token_id):
            raise UnknownTokenError(f"token id {_shown(token_id)}: not an id (ids look like tok_1a2b3c4d)")

        def change(records: list[TokenRecord]):
            for index, record in enumerate(records):
                if record.id == token_id:
                    if record.revoked:
                        return None, record
                    revoked = replace(record, revoked=True)
                    return records[:index] + [revoked] + records[index + 1:], revoked
            raise UnknownTokenError(f"no token with id {token_id}")

        return self._update(change)

    def ensure_admin(self) -> str | None:
        """On first start: make an admin token if no live one exists and return its secret, else None.

        The caller writes it with :func:`write_secret_file` to ``<state_dir>/admin-token`` and
        logs that path. Revoking every admin token and restarting makes a new one.
        """
        secret = new_secret()

        def change(records: list[TokenRecord]):
            if any(r.admin and not r.revoked for r in records):
                return None, None
            taken = {r.id for r in records}
            token_id = ID_PREFIX + secrets.token_hex(4)
            while token_id in taken:
                token_id = ID_PREFIX + secrets.token_hex(4)
            record = TokenRecord(id=token_id, tenant=ADMIN_TENANT, hash=hash_token(secret), policies=("*",),
                                 created=_now_iso(), admin=True,
                                 **check_limits(DEFAULT_MAX_RUNNING, DEFAULT_MAX_QUEUED,
                                                DEFAULT_RATE_PER_S, DEFAULT_BURST))
            return records + [record], record

        return secret if self._update(change) is not None else None


# --------------------------------------------------------------------------- requests


def bearer_token(authorization_header: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>``; None for anything else. Never raises."""
    if not isinstance(authorization_header, str) or len(authorization_header) > _MAX_HEADER:
        return None
    match = _BEARER_RE.fullmatch(authorization_header)
    return match.group(1) if match else None


def may_use_policy(record: TokenRecord, policy: str) -> bool:
    """May ``record`` run jobs under the policy named ``policy``? (Names only, never paths.)"""
    if record.revoked or not isinstance(policy, str) or not POLICY_RE.fullmatch(policy):
        return False
    return "*" in record.policies or policy in record.policies


class RateLimiter:
    """Token buckets by key: ``burst`` requests at once, refilled at ``rate_per_s``.

    At most ``max_keys`` buckets are kept: a bucket that has refilled to full is the same as
    no bucket, so those go first; past the cap the least recently used one goes.
    """

    def __init__(self, max_keys: int = 10_000) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.max_keys = max_keys
        # key -> [tokens, last update, time the bucket is full again]; oldest use first
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self._mutex = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: str, rate_per_s: float, burst: int, now: float | None = None) -> tuple[bool, float]:
        """``(True, 0.0)`` and one token spent, or ``(False, seconds)`` for ``Retry-After`` (≥ 1)."""
        if not rate_per_s > 0 or not math.isfinite(rate_per_s) or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        if now is None:
            now = time.monotonic()
        with self._mutex:
            bucket = self._buckets.get(key)
            if bucket is None:
                tokens = float(burst)
                self._sweep(now)
            else:
                elapsed = max(0.0, now - bucket[1])
                tokens = min(float(burst), bucket[0] + elapsed * rate_per_s)
                self._buckets.move_to_end(key)
            if tokens >= 1.0:
                tokens -= 1.0
                allowed, retry = True, 0.0
            else:
                allowed, retry = False, float(max(1, math.ceil((1.0 - tokens) / rate_per_s)))
            self._buckets[key] = [tokens, now, now + (burst - tokens) / rate_per_s]
            return allowed, retry

    def _sweep(self, now: float) -> None:
        """Drop idle buckets from the oldest end; then make room under the cap."""
        buckets = self._buckets
        while buckets:
            oldest = next(iter(buckets.values()))
            if oldest[2] > now:
                break
            buckets.popitem(last=False)
        while len(buckets) >= self.max_keys:
            buckets.popitem(last=False)


# --------------------------------------------------------------------------- CLI


def _cli_int(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _cli_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def add_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``token add|list|revoke`` to the ``sandboxd`` subcommands; ``run`` carries them out."""
    token = subparsers.add_parser("token", help="add, list and revoke API tokens")
    commands = token.add_subparsers(dest="token_command", required=True, parser_class=type(token))

    add = commands.add_parser("add", help="make a token; prints it, once, alone on stdout")
    add.add_argument("--tenant", required=True)
    add.add_argument("--policy", action="append", dest="policies", metavar="POLICY",
                     help="a policy the token may use (repeat; default '*' = every policy)")
    add.add_argument("--max-running", type=_cli_int, default=DEFAULT_MAX_RUNNING, metavar="N")
    add.add_argument("--max-queued", type=_cli_int, default=DEFAULT_MAX_QUEUED, metavar="N")
    add.add_argument("--rate", type=_cli_float, default=DEFAULT_RATE_PER_S, metavar="PER_SEC")
    add.add_argument("--burst", type=_cli_int, default=DEFAULT_BURST, metavar="N")
    add.add_argument("--admin", action="store_true")

    listing = commands.add_parser("list", help="the tokens (never their secrets)")
    listing.add_argument("--json", action="store_true")

    revoke = commands.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("id")

    for parser in (add, listing, revoke):
        parser.add_argument("--state-dir", metavar="DIR",
                            help="default: $SANDBOXD_STATE_DIR, /var/lib/sandboxd (root) "
                                 "or ~/.local/state/sandboxd")
    return token


def _store(args: argparse.Namespace) -> TokenStore:
    state_dir = Path(args.state_dir) if getattr(args, "state_dir", None) else default_state_dir()
    return TokenStore(state_dir / TOKENS_FILE)


def run(args: argparse.Namespace) -> int:
    """Carry out a parsed ``sandboxd token …``; bad input raises ``SandboxdInputError``."""
    store = _store(args)
    if args.token_command == "add":
        secret, record = store.add(args.tenant, policies=args.policies or ("*",),
                                   max_running=args.max_running, max_queued=args.max_queued,
                                   rate_per_s=args.rate, burst=args.burst, admin=args.admin)
        print(f"sandboxd: added {record.id} for tenant {record.tenant}; "
              "the token (on stdout) is shown only this once", file=sys.stderr)
        sys.stdout.write(secret + "\n")
        sys.stdout.flush()
        return 0
    if args.token_command == "list":
        records = store.list()
        if args.json:
            print(json.dumps([r.public() for r in records], indent=2))
            return 0
        header = ("ID", "TENANT", "STATE", "POLICIES", "RUNNING", "QUEUED", "RATE", "BURST", "CREATED", "HASH")
        rows = [header] + [(r.id, r.tenant, ("revoked" if r.revoked else "active") + (",admin" if r.admin else ""),
                            ",".join(r.policies), str(r.max_running), str(r.max_queued), f"{r.rate_per_s:g}",
                            str(r.burst), r.created, r.public()["hash"]) for r in records]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        return 0
    if args.token_command == "revoke":
        record = store.revoke(args.id)
        print(f"revoked {record.id} (tenant {record.tenant})")
        return 0
    raise TokenError(f"token: unknown command {_shown(args.token_command)}")
