"""Checking an audit log: every record, every link, every segment, the head and anchors.

``verify(paths, key=…, expect_last_hash=…)`` reads segment files (or directories of them)
and stops at the first thing that is wrong, naming the segment file, the line (1-based),
the seq and what is wrong. A line cut short at the very end of the last segment is a
*torn last line* (a crash mid-write), reported as such and distinct from tampering; the
next writer to open the directory seals it (see ``sandboxd.audit.writer``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from sandboxd.audit.chain import (GENESIS, HEAD_NAME, AuditError, canonical, head_mac, list_segments,
                                  record_hash, record_mac, segment_number)

# What can be wrong, as verify names it.
HASH_MISMATCH = "hash mismatch"
PREV_MISMATCH = "prev does not match"
SEQUENCE_GAP = "sequence gap"
SEGMENT_MISSING = "segment missing"
MAC_MISMATCH = "mac mismatch"
MAC_MISSING = "mac missing"
TORN = "torn last line"
MALFORMED = "malformed record"
NOT_CANONICAL = "not canonical"
BAD_HEADER = "bad segment header"
TRUNCATED = "segment ends mid-record"
HEAD_MISMATCH = "head mismatch"
ANCHOR_NOT_FOUND = "anchor not found"


@dataclass
class Problem:
    kind: str
    detail: str
    segment: str | None = None  # the segment file
    line: int | None = None  # 1-based line in that file
    seq: int | None = None
    offset: int | None = None  # byte offset of the line in the file

    def __str__(self) -> str:
        where = []
        if self.segment is not None:
            where.append(self.segment)
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.seq is not None:
            where.append(f"seq {self.seq}")
        text = f"{self.kind}: {self.detail}" if self.detail else self.kind
        return f"{': '.join(where)}: {text}" if where else text


@dataclass
class Report:
    records: int = 0
    segments: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    macs_checked: bool = False
    problem: Problem | None = None
    seals: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def torn(self) -> bool:
        return self.problem is not None and self.problem.kind == TORN


def resolve(paths: Iterable[str]) -> tuple[list[tuple[int, str]], str | None]:
    """The segment files named by ``paths`` (directories or files), in number order, and the
    directory when exactly one was given (its head.json is checked)."""
    segments: dict[int, str] = {}
    directories = []
    for path in paths:
        if os.path.isdir(path):
            directories.append(path)
            for number, file in list_segments(path):
                segments.setdefault(number, file)
        elif os.path.exists(path):
            number = segment_number(path)
            if number is None:
                raise AuditError(f"{path}: not a segment file (audit-NNNNNN.jsonl)")
            if number in segments and os.path.realpath(segments[number]) != os.path.realpath(path):
                raise AuditError(f"{path}: segment {number} named twice")
            segments[number] = path
        else:
            raise AuditError(f"{path}: no such file or directory")
    return sorted(segments.items()), (directories[0] if len(directories) == 1 else None)


def _lines(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, raw line with its newline, or without one at a torn end)."""
    offset, number = 0, 0
    while offset < len(data):
        number += 1
        end = data.find(b"\n", offset)
        stop = len(data) if end == -1 else end + 1
        yield number, offset, data[offset:stop]
        offset = stop


def verify(paths: Iterable[str], *, key: bytes | None = None, expect_last_hash: str | None = None) -> Report:
    report = Report(macs_checked=key is not None)
    segments, directory = resolve(paths)
    if not segments:
        report.problem = Problem(SEGMENT_MISSING, "no segment files found")
        return report
    if directory is not None and segments[0][0] != 1:
        report.problem = Problem(SEGMENT_MISSING, "segment 1 missing", segment=segments[0][1])
        return report
    expected_seq: int | None = None
    prev: str | None = None
    if segments[0][0] == 1:
        expected_seq, prev = 1, GENESIS
    else:
        report.notes.append(f"started at segment {segments[0][0]}: its first prev is taken on trust")
    head = _read_head(directory, key, report) if directory is not None else None
    if report.problem:
        return report
    head_seen = False
    anchor_seen = False
    unchecked_macs = 0
    previous_number: int | None = None
    for index, (number, path) in enumerate(segments):
        last_segment = index == len(segments) - 1
        if previous_number is not None and number != previous_number + 1:
            missing = previous_number + 1
            span = f"segment {missing} missing" if number == missing + 1 else \
                f"segments {missing}-{number - 1} missing"
            report.problem = Problem(SEGMENT_MISSING, span, segment=path, line=1)
            return report
        previous_number = number
        report.segments += 1
        with open(path, "rb") as handle:
            data = handle.read()
        if not data:
            kind, detail = (TORN, "torn last line at byte 0 (empty segment: a crash while rotating?)") \
                if last_segment else (BAD_HEADER, f"segment {number} is empty")
            report.problem = Problem(kind, detail, segment=path, line=1, offset=0)
            return report
        for line_no, offset, raw in _lines(data):
            def fail(kind: str, detail: str, seq: Any = None) -> Report:
                report.problem = Problem(kind, detail, segment=path, line=line_no,
                                         seq=seq if isinstance(seq, int) else None, offset=offset)
                return report

            if not raw.endswith(b"\n"):
                if last_segment:
                    return fail(TORN, f"torn last line at byte {offset} ({len(raw)} bytes without a newline)")
                return fail(TRUNCATED, f"segment ends mid-record at byte {offset}")
            try:
                record = json.loads(raw)
            except ValueError as exc:
                return fail(MALFORMED, f"not JSON ({exc.msg} at column {exc.colno})")
            if not isinstance(record, dict):
                return fail(MALFORMED, "not a JSON object")
            seq = record.get("seq")
            if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(record.get("prev"), str):
                return fail(MALFORMED, "no integer seq or no prev")
            if record.get("hash") != record_hash(record):
                return fail(HASH_MISMATCH, "the record's content does not match its hash", seq)
            if canonical(record) + b"\n" != raw:
                return fail(NOT_CANONICAL, "the line is not the canonical form of its record", seq)
            if key is not None:
                if "mac" not in record:
                    return fail(MAC_MISSING, "the record carries no mac", seq)
                if record["mac"] != record_mac(record, key):
                    return fail(MAC_MISMATCH, "the mac does not match (forged, or another key)", seq)
            elif "mac" in record:
                unchecked_macs += 1
            is_header = record.get("event") == "segment_opened"
            if line_no == 1 and not is_header:
                return fail(BAD_HEADER, "the segment does not start with its segment_opened record", seq)
            if line_no == 1 and record.get("segment") != number:
                return fail(BAD_HEADER, f"segment number mismatch: file says {number}, "
                                        f"header says {record.get('segment')}", seq)
            if line_no > 1 and is_header:
                return fail(BAD_HEADER, "a segment_opened record in the middle of a segment", seq)
            if expected_seq is not None and seq != expected_seq:
                how = "out of order" if seq < expected_seq else "gap"
                return fail(SEQUENCE_GAP, f"sequence {how}: expected seq {expected_seq}, found {seq}", seq)
            if prev is not None and record["prev"] != prev:
                return fail(PREV_MISMATCH, "prev does not match the hash of the record before it", seq)
            if record.get("event") == "seal":
                report.seals.append({"segment": path, "line": line_no, "seq": seq,
                                     "torn_offset": record.get("torn_offset"),
                                     "torn_bytes": record.get("torn_bytes"),
                                     "torn_sha256": record.get("torn_sha256")})
            if head is not None and seq == head.get("seq"):
                head_seen = True
                if record["hash"] != head.get("hash"):
                    return fail(HEAD_MISMATCH, f"{HEAD_NAME} names another hash for seq {seq}", seq)
            if expect_last_hash is not None and record["hash"] == expect_last_hash:
                anchor_seen = True
            if report.first_seq is None:
                report.first_seq = seq
            report.records += 1
            report.last_seq, report.last_hash = seq, record["hash"]
            expected_seq, prev = seq + 1, record["hash"]
    last = segments[-1][1]
    if head is not None and not head_seen:
        head_seq = head.get("seq")
        if isinstance(head_seq, int) and head_seq > 0 and (report.last_seq or 0) < head_seq:
            report.problem = Problem(HEAD_MISMATCH, f"the log ends at seq {report.last_seq} but {HEAD_NAME} names "
                                     f"seq {head_seq}: records or whole segments at the end were removed",
                                     segment=last)
            return report
    if expect_last_hash is not None and not anchor_seen:
        report.problem = Problem(ANCHOR_NOT_FOUND, f"no record has hash {expect_last_hash}: the log was "
                                 "truncated or rewritten after that anchor was taken", segment=last)
        return report
    if unchecked_macs:
        report.notes.append(f"{unchecked_macs} records carry a mac that was not checked (no --hmac-key)")
    if key is None:
        report.notes.append("without --hmac-key, anyone who can write the log can rebuild a valid chain")
    if directory is not None and head is None:
        report.notes.append(f"no {HEAD_NAME}: removal of the last segment(s) cannot be detected here")
    if expect_last_hash is None:
        report.notes.append("records after the last external anchor can be cut without trace "
                            "(use --expect-last-hash)")
    return report


def _read_head(directory: str, key: bytes | None, report: Report) -> dict[str, Any] | None:
    path = os.path.join(directory, HEAD_NAME)
    try:
        with open(path, "rb") as handle:
            head = json.loads(handle.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        report.problem = Problem(HEAD_MISMATCH, f"{HEAD_NAME} unreadable: {exc}", segment=path)
        return None
    if not isinstance(head, dict) or not isinstance(head.get("seq"), int):
        report.problem = Problem(HEAD_MISMATCH, f"{HEAD_NAME} is not a head record", segment=path)
        return None
    if key is not None and head.get("mac") != head_mac(head, key):
        report.problem = Problem(MAC_MISMATCH, f"{HEAD_NAME}: the mac does not match", segment=path)
        return None
    return head
