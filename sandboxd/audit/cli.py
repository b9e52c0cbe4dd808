"""``sandboxd audit`` — check and read the audit log.

    sandboxd audit verify PATH… [--hmac-key FILE] [--expect-last-hash H] [--json]
    sandboxd audit tail PATH [-n N] [--follow]
    sandboxd audit query PATH… [--tenant T] [--verdict V] [--policy P] [--event E]
                               [--since ISO] [--until ISO]

PATH is the log directory or segment files (``audit-NNNNNN.jsonl``). ``verify`` exits 0 when
everything checked is intact, 1 at the first bad record (segment file, line, seq, what is
wrong), 2 on bad input. ``tail`` and ``query`` print records as JSON lines, as stored; they
do not verify. This module imports nothing heavy: the main CLI can import it at start-up.

Wiring (sandboxd/cli.py): ``audit_cli.add_commands(commands)`` in ``build_parser`` and
``"audit": audit_cli.run`` in ``COMMANDS``, with ``from sandboxd.audit import cli as audit_cli``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from typing import Any, Iterator

EXIT_OK, EXIT_BAD_LOG, EXIT_USAGE = 0, 1, 2


def add_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``audit`` and its subcommands to the main CLI's subparsers; returns the ``audit`` parser."""
    audit = subparsers.add_parser("audit", help="verify, tail and query the tamper-evident audit log")
    commands = audit.add_subparsers(dest="audit_command", required=True, parser_class=type(audit))

    verify = commands.add_parser("verify", help="check every record, link and segment")
    verify.add_argument("paths", nargs="+", metavar="PATH", help="the log directory or segment files")
    verify.add_argument("--hmac-key", metavar="FILE", help="check every record's mac with this key")
    verify.add_argument("--expect-last-hash", metavar="H",
                        help="a hash kept outside the log (an anchor): the log must still contain it")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")

    tail = commands.add_parser("tail", help="the last records")
    tail.add_argument("path", metavar="PATH")
    tail.add_argument("-n", type=_count, default=10, metavar="N", help="how many (default 10)")
    tail.add_argument("--follow", "-f", action="store_true", help="then print new records as they come")

    query = commands.add_parser("query", help="records matching every filter given, as JSON lines")
    query.add_argument("paths", nargs="+", metavar="PATH")
    query.add_argument("--tenant")
    query.add_argument("--verdict")
    query.add_argument("--policy", help="policy name or content hash")
    query.add_argument("--event", help="event type, e.g. job_finished, auth_decision")
    query.add_argument("--since", type=_iso_time, metavar="ISO", help="records at or after this time (UTC if no zone)")
    query.add_argument("--until", type=_iso_time, metavar="ISO", help="records before this time")
    return audit


def run(args: argparse.Namespace) -> int:
    from sandboxd.audit.chain import AuditError

    try:
        if args.audit_command == "verify":
            return _verify(args)
        if args.audit_command == "tail":
            return _tail(args)
        return _query(args)
    except AuditError as exc:
        print(f"sandboxd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> int:
    """``python -m sandboxd.audit.cli verify …``: the audit commands on their own."""
    parser = argparse.ArgumentParser(prog="sandboxd")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))


# -- argument types ----------------------------------------------------------------------
def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


def _parse_time(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text.strip())
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _iso_time(text: str) -> dt.datetime:
    try:
        return _parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None


# -- verify ------------------------------------------------------------------------------
def _verify(args: argparse.Namespace) -> int:
    from sandboxd.audit.chain import load_key
    from sandboxd.audit.verifier import verify

    key = load_key(args.hmac_key) if args.hmac_key else None
    report = verify(args.paths, key=key, expect_last_hash=args.expect_last_hash)
    if args.json:
        print(json.dumps({"ok": report.ok, "records": report.records, "segments": report.segments,
                          "first_seq": report.first_seq, "last_seq": report.last_seq,
                          "last_hash": report.last_hash, "macs_checked": report.macs_checked,
                          "problem": None if report.problem is None else vars(report.problem),
                          "seals": report.seals, "notes": report.notes}, indent=2))
        return EXIT_OK if report.ok else EXIT_BAD_LOG
    checked = f"{report.records} records in {report.segments} segments"
    for seal in report.seals:
        print(f"sealed: {seal['segment']}: line {seal['line']}: seq {seal['seq']}: a torn last line of "
              f"{seal['torn_bytes']} bytes at byte {seal['torn_offset']} was cut (sha256 {seal['torn_sha256']})")
    if not report.ok:
        print(f"FAILED: {report.problem}")
        print(f"({checked} intact before it)")
        return EXIT_BAD_LOG
    macs = ", macs checked" if report.macs_checked else ""
    print(f"ok: {checked} checked (seq {report.first_seq}-{report.last_seq}{macs}); "
          f"last hash {report.last_hash}")
    for note in report.notes:
        print(f"note: {note}")
    return EXIT_OK


# -- reading records ---------------------------------------------------------------------
def _segments(paths: list[str]) -> list[tuple[int, str]]:
    from sandboxd.audit.verifier import resolve

    return resolve(paths)[0]


def _complete_lines(path: str, start: int = 0) -> Iterator[tuple[int, bytes]]:
    """(offset after the line, line) for every newline-terminated line from ``start``."""
    with open(path, "rb") as handle:
        handle.seek(start)
        offset = start
        for line in handle:
            if not line.endswith(b"\n"):
                return
            offset += len(line)
            yield offset, line


def _write(line: bytes) -> None:
    sys.stdout.write(line.decode("ascii", "replace"))


def _tail(args: argparse.Namespace) -> int:
    from collections import deque

    segments = _segments([args.path])
    last: deque[bytes] = deque(maxlen=args.n)
    # Read backwards segment by segment until N lines are found.
    gathered: list[bytes] = []
    for _, path in reversed(segments):
        lines = [line for _, line in _complete_lines(path)]
        gathered = lines + gathered
        if len(gathered) >= args.n:
            break
    last.extend(gathered)
    for line in last if args.n else ():
        _write(line)
    sys.stdout.flush()
    if not args.follow:
        return EXIT_OK
    directory = args.path if os.path.isdir(args.path) else None
    number, path = segments[-1] if segments else (0, None)
    offset = _end_of_complete(path) if path else 0
    while True:
        progressed = False
        if path is not None:
            for offset, line in _complete_lines(path, offset):
                _write(line)
                progressed = True
        if directory is not None:
            newer = [(n, p) for n, p in _segments([directory]) if n > number]
            if newer and not progressed:
                # The writer moved on; finish the old segment (done above), then follow the next.
                number, path = newer[0]
                offset = 0
                continue
        sys.stdout.flush()
        if not progressed:
            time.sleep(0.2)


def _end_of_complete(path: str) -> int:
    end = 0
    for end, _ in _complete_lines(path):
        pass
    return end


def _record_matches(record: dict[str, Any], args: argparse.Namespace) -> bool:
    if args.event is not None and record.get("event") != args.event:
        return False
    if args.tenant is not None and record.get("tenant") != args.tenant:
        return False
    if args.verdict is not None and record.get("verdict") != args.verdict:
        return False
    if args.policy is not None:
        policy = record.get("policy")
        names = {policy.get("name"), policy.get("hash")} if isinstance(policy, dict) else {policy}
        if args.policy not in names:
            return False
    if args.since is not None or args.until is not None:
        try:
            when = _parse_time(str(record.get("time")))
        except ValueError:
            return False
        if args.since is not None and when < args.since:
            return False
        if args.until is not None and when >= args.until:
            return False
    return True


def _query(args: argparse.Namespace) -> int:
    for _, path in _segments(args.paths):
        for _, line in _complete_lines(path):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and _record_matches(record, args):
                _write(line)
    sys.stdout.flush()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
