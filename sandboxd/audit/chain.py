"""The audit log's on-disk format: canonical JSON, the hash chain, the optional HMAC.

One record is one line: the canonical JSON (sorted keys, no spaces, ASCII only) of an object
that carries, besides its content, ``seq`` (1, 2, … across all segments), ``prev`` (the
``hash`` of the record before it, 64 zeros for the very first) and its own ``hash``:
SHA-256 of the canonical JSON of the record *without* ``hash`` and ``mac``. With a key,
``mac`` is HMAC-SHA-256 over the same bytes. The order in which a program built the
object does not matter: canonical JSON sorts the keys. docs/audit.md describes every key.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import os
import re
from typing import Any, Mapping

FORMAT_VERSION = 1
GENESIS = "0" * 64
CHAIN_FIELDS = ("hash", "mac")  # left out of the bytes that are hashed and MACed
SEGMENT_RE = re.compile(r"^audit-(\d{6,})\.jsonl$")
HEAD_NAME = "head.json"
LOCK_NAME = ".lock"
MIN_KEY_BYTES = 16
_HEAD_DOMAIN = b"sandboxd-audit-head\n"


class AuditError(Exception):
    """Something about the audit log is wrong; the message is one line."""


def canonical(obj: Any) -> bytes:
    """The one byte form of a JSON value that is hashed and written."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def normalized(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` as it will read back from the file (tuples become lists, keys strings…).

    What is hashed must be exactly what a verifier parses back, so a record goes through
    JSON once before it is chained. Values JSON has no type for are written as ``str()``.
    """
    return json.loads(json.dumps(obj, default=str, allow_nan=False))


def body_bytes(record: Mapping[str, Any]) -> bytes:
    return canonical({k: v for k, v in record.items() if k not in CHAIN_FIELDS})


def record_hash(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(body_bytes(record)).hexdigest()


def record_mac(record: Mapping[str, Any], key: bytes) -> str:
    return hmac.new(key, body_bytes(record), hashlib.sha256).hexdigest()


def head_mac(head: Mapping[str, Any], key: bytes) -> str:
    body = canonical({k: v for k, v in head.items() if k != "mac"})
    return hmac.new(key, _HEAD_DOMAIN + body, hashlib.sha256).hexdigest()


def segment_name(number: int) -> str:
    return f"audit-{number:06d}.jsonl"


def segment_number(path: str) -> int | None:
    match = SEGMENT_RE.match(os.path.basename(path))
    return int(match.group(1)) if match else None


def list_segments(directory: str) -> list[tuple[int, str]]:
    """(number, path) of every segment file in ``directory``, in number order."""
    found = []
    for name in os.listdir(directory):
        number = segment_number(name)
        if number is not None:
            found.append((number, os.path.join(directory, name)))
    return sorted(found)


def now_iso() -> str:
    """UTC, microseconds, ``Z``: the same form structlog's ISO TimeStamper gives."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat().replace("+00:00", "Z")


def load_key(path: str) -> bytes:
    """The HMAC key: the file's bytes as they are (a trailing newline is part of the key)."""
    try:
        with open(path, "rb") as handle:
            key = handle.read()
    except OSError as exc:
        raise AuditError(f"--hmac-key {path}: {exc.strerror}") from None
    if len(key) < MIN_KEY_BYTES:
        raise AuditError(f"--hmac-key {path}: a key needs at least {MIN_KEY_BYTES} bytes, this has {len(key)}")
    return key


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
