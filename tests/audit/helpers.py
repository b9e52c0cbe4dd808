"""Shared helpers for the audit log tests: build a log, edit its lines like an attacker would."""

from __future__ import annotations

import json
import os

from sandboxd.audit.chain import canonical, list_segments, record_hash
from sandboxd.audit.writer import AuditWriter


def make_log(directory, records: int = 30, *, segment_bytes: int = 1 << 20, key: bytes | None = None,
             durability: str = "fsync") -> list[dict]:
    written = []
    with AuditWriter(str(directory), segment_bytes=segment_bytes, hmac_key=key, durability=durability) as writer:
        for i in range(records):
            written.append(writer.append({"event": "job_started", "job_id": f"job-{i}", "tenant": f"t{i % 3}"}))
    return written


def segments(directory) -> list[str]:
    return [path for _, path in list_segments(str(directory))]


def read_lines(path) -> list[bytes]:
    with open(path, "rb") as handle:
        return handle.read().splitlines(keepends=True)


def write_lines(path, lines: list[bytes]) -> None:
    with open(path, "wb") as handle:
        handle.write(b"".join(lines))


def rechain(path, lines: list[bytes], start_prev: str) -> list[bytes]:
    """Recompute seq/prev/hash of every line (as an attacker without the key can); macs kept as they were."""
    out, prev = [], start_prev
    first_seq = json.loads(lines[0])["seq"]
    for i, line in enumerate(lines):
        record = json.loads(line)
        record["seq"] = first_seq + i
        record["prev"] = prev
        record["hash"] = record_hash(record)
        prev = record["hash"]
        out.append(canonical(record) + b"\n")
    return out


def lines_of_all(directory) -> list[dict]:
    return [json.loads(line) for path in segments(directory) for line in read_lines(path)]


def size(path) -> int:
    return os.path.getsize(path)
