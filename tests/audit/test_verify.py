"""verify: an untouched log passes; every kind of edit is caught and named."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from sandboxd.audit.chain import GENESIS, canonical, record_hash, record_mac
from sandboxd.audit.verifier import (ANCHOR_NOT_FOUND, BAD_HEADER, HASH_MISMATCH, HEAD_MISMATCH, MAC_MISMATCH,
                                     MAC_MISSING, PREV_MISMATCH, SEGMENT_MISSING, SEQUENCE_GAP, TORN, TRUNCATED,
                                     verify)
from sandboxd.audit.writer import AuditWriter
from tests.audit.helpers import make_log, read_lines, rechain, segments, write_lines

KEY = b"k" * 32


@pytest.fixture
def log(tmp_path):
    make_log(tmp_path / "log", 40, segment_bytes=2500)
    return tmp_path / "log"


def test_untouched_log_verifies(log):
    report = verify([str(log)])
    assert report.ok, report.problem
    # 40 records and one segment_opened header per segment.
    assert report.segments == len(segments(log)) >= 3
    assert report.records == 40 + report.segments and report.first_seq == 1 and report.last_seq == report.records
    # Segment files given one by one verify the same.
    assert verify(segments(log)).ok


def test_every_single_byte_change_is_caught_at_its_line(log):
    path = segments(log)[1]
    lines = read_lines(path)
    target = 3  # 1-based line in the segment
    original = lines[target - 1]
    for i in range(len(original)):
        changed = bytearray(original)
        changed[i] ^= 0x01
        write_lines(path, lines[:target - 1] + [bytes(changed)] + lines[target:])
        report = verify([str(log)])
        assert not report.ok, f"byte {i} changed and not detected"
        assert report.problem.segment == path and report.problem.line == target, (i, str(report.problem))
    write_lines(path, lines)
    assert verify([str(log)]).ok


def test_hash_mismatch_is_named(log):
    path = segments(log)[0]
    lines = read_lines(path)
    lines[4] = lines[4].replace(b'"job_id":"job-', b'"job_id":"JOB-')
    write_lines(path, lines)
    problem = verify([str(log)]).problem
    assert problem.kind == HASH_MISMATCH and problem.line == 5 and problem.seq == 5
    assert f"{path}: line 5: seq 5: hash mismatch" in str(problem)


def test_deleted_record(log):
    path = segments(log)[1]
    lines = read_lines(path)
    deleted_seq = json.loads(lines[2])["seq"]
    write_lines(path, lines[:2] + lines[3:])
    problem = verify([str(log)]).problem
    assert problem.kind == SEQUENCE_GAP and problem.line == 3 and problem.seq == deleted_seq + 1
    assert f"expected seq {deleted_seq}" in problem.detail


def test_deleted_record_with_renumbered_chain_breaks_the_next_segment(log):
    """Rewriting the rest of the segment after a deletion still breaks the link to the next one."""
    first, second = segments(log)[:2]
    lines = read_lines(first)
    kept = lines[:2] + lines[3:]
    write_lines(first, rechain(first, kept, GENESIS))
    problem = verify([str(log)]).problem
    assert problem.segment == second and problem.line == 1
    assert problem.kind in (SEQUENCE_GAP, PREV_MISMATCH)


def test_inserted_duplicate_record(log):
    path = segments(log)[0]
    lines = read_lines(path)
    write_lines(path, lines[:4] + [lines[3]] + lines[4:])
    problem = verify([str(log)]).problem
    assert problem.kind == SEQUENCE_GAP and problem.line == 5 and "out of order" in problem.detail


def test_inserted_self_consistent_record(log):
    """A forged record with a correct own hash and a correct link still breaks the record after it."""
    path = segments(log)[0]
    lines = read_lines(path)
    before = json.loads(lines[3])
    forged = {"event": "auth_decision", "decision": "accepted", "tenant": "evil", "time": before["time"],
              "v": 1, "seq": before["seq"] + 1, "prev": before["hash"]}
    forged["hash"] = record_hash(forged)
    write_lines(path, lines[:4] + [canonical(forged) + b"\n"] + lines[4:])
    problem = verify([str(log)]).problem
    assert problem.line == 6 and problem.kind in (SEQUENCE_GAP, PREV_MISMATCH)


def test_swapped_records(log):
    path = segments(log)[0]
    lines = read_lines(path)
    lines[3], lines[4] = lines[4], lines[3]
    write_lines(path, lines)
    problem = verify([str(log)]).problem
    assert problem.kind == SEQUENCE_GAP and problem.line == 4 and problem.seq == 5


def test_prev_mismatch_when_a_record_is_replaced_by_a_consistent_one(log):
    path = segments(log)[0]
    lines = read_lines(path)
    record = json.loads(lines[4])
    record["prev"] = "f" * 64
    record["hash"] = record_hash(record)
    lines[4] = canonical(record) + b"\n"
    write_lines(path, lines)
    problem = verify([str(log)]).problem
    assert problem.kind == PREV_MISMATCH and problem.line == 5 and problem.seq == 5


def test_truncated_mid_record_at_the_end_is_a_torn_last_line(log):
    path = segments(log)[-1]
    data = open(path, "rb").read()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    cut = last_start + 17
    with open(path, "r+b") as handle:
        handle.truncate(cut)
    report = verify([str(log)])
    assert report.torn and report.problem.kind == TORN
    assert f"torn last line at byte {last_start}" in str(report.problem)
    assert report.problem.line == len(read_lines(path))


def test_truncated_mid_record_in_a_middle_segment(log):
    path = segments(log)[1]
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.truncate(size - 5)
    problem = verify([str(log)]).problem
    assert problem.kind == TRUNCATED and problem.segment == path


def test_whole_middle_segment_removed(log):
    paths = segments(log)
    os.remove(paths[1])
    problem = verify([str(log)]).problem
    assert problem.kind == SEGMENT_MISSING and "segment 2 missing" in str(problem)
    assert problem.segment == paths[2]


def test_middle_segment_removed_and_the_rest_renamed(log):
    paths = segments(log)
    os.remove(paths[1])
    os.rename(paths[2], paths[1])
    problem = verify([str(log)]).problem
    assert problem.kind == BAD_HEADER and "segment number mismatch" in problem.detail


def test_first_segment_removed(log):
    os.remove(segments(log)[0])
    assert "segment 1 missing" in str(verify([str(log)]).problem)


def test_last_segment_removed_is_caught_by_the_head_file(log):
    paths = segments(log)
    os.remove(paths[-1])
    problem = verify([str(log)]).problem
    assert problem.kind == HEAD_MISMATCH and "removed" in problem.detail


def test_last_segment_removed_with_the_head_needs_an_external_anchor(log):
    anchor = verify([str(log)]).last_hash
    os.remove(segments(log)[-1])
    os.remove(log / "head.json")
    assert verify([str(log)]).ok  # undetectable without an anchor: documented
    problem = verify([str(log)], expect_last_hash=anchor).problem
    assert problem.kind == ANCHOR_NOT_FOUND


def test_an_older_anchor_is_still_found(log):
    older = json.loads(read_lines(segments(log)[0])[3])["hash"]
    assert verify([str(log)], expect_last_hash=older).ok


def test_head_rolled_back_hash_is_caught(log):
    head = json.loads((log / "head.json").read_bytes())
    head["hash"] = "0" * 64
    (log / "head.json").write_bytes(canonical(head))
    assert verify([str(log)]).problem.kind == HEAD_MISMATCH


def test_hmac_log_verifies_with_its_key_and_not_with_another(tmp_path):
    make_log(tmp_path / "log", 20, segment_bytes=2500, key=KEY)
    assert verify([str(tmp_path / "log")], key=KEY).ok
    problem = verify([str(tmp_path / "log")], key=b"x" * 32).problem
    assert problem.kind == MAC_MISMATCH
    # Without the key the chain still verifies, and says the macs were not checked.
    report = verify([str(tmp_path / "log")])
    assert report.ok and any("not checked" in note for note in report.notes)


def test_chain_rebuilt_without_the_key_fails(tmp_path):
    log = tmp_path / "log"
    make_log(log, 20, segment_bytes=100000, key=KEY)
    (path,) = segments(log)
    lines = read_lines(path)
    lines[5] = lines[5].replace(b'"job_id":"job-4"', b'"job_id":"job-X"')
    rebuilt = rechain(path, lines, GENESIS)
    write_lines(path, rebuilt)
    os.remove(log / "head.json")
    assert verify([str(log)]).ok  # the hashes alone are consistent again…
    problem = verify([str(log)], key=KEY).problem  # …but the macs are not
    assert problem.kind == MAC_MISMATCH and problem.line == 6 and problem.seq == 6
    # Dropping the macs altogether does not help either.
    stripped = []
    for line in rebuilt:
        record = json.loads(line)
        record.pop("mac")
        stripped.append(canonical(record) + b"\n")
    write_lines(path, stripped)
    problem = verify([str(log)], key=KEY).problem
    assert problem.kind == MAC_MISSING and problem.line == 1


def test_mac_covers_the_chain_fields(tmp_path):
    record = {"event": "x", "seq": 1, "prev": GENESIS, "v": 1}
    moved = dict(record, seq=2)
    assert record_mac(record, KEY) != record_mac(moved, KEY)


def test_hmac_head_forgery_is_caught(tmp_path):
    log = tmp_path / "log"
    make_log(log, 5, key=KEY)
    head = json.loads((log / "head.json").read_bytes())
    head["seq"] = 2
    (log / "head.json").write_bytes(canonical(head))
    assert verify([str(log)], key=KEY).problem.kind == MAC_MISMATCH


def test_reordering_keys_in_a_line_is_caught(log):
    """Same JSON value, other bytes: the file must hold exactly the canonical form."""
    path = segments(log)[0]
    lines = read_lines(path)
    record = json.loads(lines[2])
    lines[2] = json.dumps(dict(reversed(list(record.items()))), separators=(",", ":")).encode() + b"\n"
    write_lines(path, lines)
    problem = verify([str(log)]).problem
    assert problem.line == 3 and problem.kind == "not canonical"


def test_writer_refuses_a_log_shorter_than_its_head(log):
    os.remove(segments(log)[-1])
    from sandboxd.audit.chain import AuditError

    with pytest.raises(AuditError, match="removed"):
        AuditWriter(str(log))


def test_writer_refuses_to_continue_a_damaged_last_record(log):
    path = segments(log)[-1]
    lines = read_lines(path)
    lines[-1] = lines[-1].replace(b"job-", b"JOB-")
    write_lines(path, lines)
    from sandboxd.audit.chain import AuditError

    with pytest.raises(AuditError, match="fails its hash"):
        AuditWriter(str(log))


def test_second_writer_on_the_same_directory_is_refused(tmp_path):
    from sandboxd.audit.chain import AuditError

    with AuditWriter(str(tmp_path / "log")):
        with pytest.raises(AuditError, match="another process"):
            AuditWriter(str(tmp_path / "log"))


def test_seal_digest_matches_the_torn_bytes(tmp_path):
    log = tmp_path / "log"
    make_log(log, 5)
    (path,) = segments(log)
    torn = b'{"event":"job_finished","half'
    offset = os.path.getsize(path)
    with open(path, "ab") as handle:
        handle.write(torn)
    with AuditWriter(str(log)) as writer:
        seal = writer.sealed
        assert seal["torn_bytes"] == len(torn) and seal["torn_offset"] == offset
        assert seal["torn_sha256"] == hashlib.sha256(torn).hexdigest()
