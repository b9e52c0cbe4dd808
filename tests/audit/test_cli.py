"""sandboxd audit verify / tail / query, through add_commands and run."""

from __future__ import annotations

import argparse
import json
import os

import pytest

from sandboxd.audit import cli
from sandboxd.audit.logger import AuditLogger
from sandboxd.audit.writer import AuditWriter
from tests.audit.helpers import make_log, read_lines, segments, write_lines

KEY = b"0123456789abcdef0123456789abcdef"


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sandboxd")
    cli.add_commands(parser.add_subparsers(dest="command", required=True))
    return cli.run(parser.parse_args(argv))


@pytest.fixture
def log(tmp_path):
    directory = tmp_path / "log"
    with AuditWriter(str(directory), segment_bytes=1500) as writer:
        audit = AuditLogger(writer)
        audit.service_started(config_hash="cfg")
        for i in range(12):
            request = audit.bind(request_id=f"r{i}", tenant="acme" if i % 2 else "beta", client="1.2.3.4")
            request.job_finished({"job_id": f"j{i}", "verdict": "OK" if i % 3 else "TIME_LIMIT",
                                  "policy": {"name": "judge" if i < 6 else "default", "hash": f"h{i < 6}"}},
                                 argv=["a"], env={})
    return directory


def test_verify_ok(log, capsys):
    assert run_cli(["audit", "verify", str(log)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: ") and "segments checked" in out


def test_verify_names_the_bad_record(log, capsys):
    path = segments(log)[1]
    lines = read_lines(path)
    write_lines(path, lines[:1] + lines[2:])
    assert run_cli(["audit", "verify", str(log)]) == 1
    out = capsys.readouterr().out
    assert f"FAILED: {path}: line 2: seq " in out and "sequence gap" in out


def test_verify_with_key_file(tmp_path, capsys):
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY)
    make_log(tmp_path / "log", 5, key=KEY)
    assert run_cli(["audit", "verify", "--hmac-key", str(key_file), str(tmp_path / "log")]) == 0
    assert "macs checked" in capsys.readouterr().out
    other = tmp_path / "other"
    other.write_bytes(b"z" * 32)
    assert run_cli(["audit", "verify", "--hmac-key", str(other), str(tmp_path / "log")]) == 1
    assert "mac mismatch" in capsys.readouterr().out


def test_verify_bad_input_exits_2(tmp_path, capsys):
    assert run_cli(["audit", "verify", str(tmp_path / "nowhere")]) == 2
    assert "no such file" in capsys.readouterr().err
    short = tmp_path / "short"
    short.write_bytes(b"abc")
    make_log(tmp_path / "log", 2)
    assert run_cli(["audit", "verify", "--hmac-key", str(short), str(tmp_path / "log")]) == 2


def test_verify_json_and_anchor(log, capsys):
    assert run_cli(["audit", "verify", "--json", str(log)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["records"] > 12
    assert run_cli(["audit", "verify", "--expect-last-hash", "ab" * 32, str(log)]) == 1
    assert "anchor not found" in capsys.readouterr().out


def test_verify_reports_torn_and_seal(log, capsys):
    with open(segments(log)[-1], "ab") as handle:
        handle.write(b'{"half')
    assert run_cli(["audit", "verify", str(log)]) == 1
    assert "torn last line at byte" in capsys.readouterr().out
    AuditWriter(str(log)).close()
    assert run_cli(["audit", "verify", str(log)]) == 0
    assert "sealed: " in capsys.readouterr().out


def test_tail(log, capsys):
    assert run_cli(["audit", "tail", "-n", "3", str(log)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert records[-1]["job_id"] == "j11"
    last_seq = records[-1]["seq"]
    assert [r["seq"] for r in records] == [last_seq - 2, last_seq - 1, last_seq]


def test_query_filters(log, capsys):
    assert run_cli(["audit", "query", str(log), "--tenant", "acme", "--verdict", "TIME_LIMIT"]) == 0
    found = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["job_id"] for r in found] == ["j3", "j9"]
    assert run_cli(["audit", "query", str(log), "--policy", "judge", "--event", "job_finished"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 6
    assert run_cli(["audit", "query", str(log), "--since", "2000-01-01", "--until", "2000-01-02"]) == 0
    assert capsys.readouterr().out == ""
    assert run_cli(["audit", "query", str(log), "--since", "2000-01-01T00:00:00Z", "--event",
                    "service_started"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_module_main(log, capsys):
    assert cli.main(["audit", "verify", str(log)]) == 0
    assert os.path.isdir(log)


def test_tail_follow_sees_new_records_across_a_rotation(tmp_path):
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    directory = tmp_path / "log"
    writer = AuditWriter(str(directory), segment_bytes=600)
    try:
        child = subprocess.Popen([sys.executable, "-m", "sandboxd.audit.cli", "audit", "tail", "-n", "0",
                                  "--follow", str(directory)], stdout=subprocess.PIPE, cwd=str(repo))
        try:
            time.sleep(0.5)
            for i in range(6):
                writer.append({"event": "job_started", "job_id": f"late-{i}", "pad": "x" * 200})
            seen: list[str] = []

            def read() -> None:
                for line in child.stdout:
                    record = json.loads(line)
                    seen.append(record.get("job_id", record["event"]))

            import threading

            threading.Thread(target=read, daemon=True).start()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and "late-5" not in seen:
                time.sleep(0.05)
        finally:
            child.kill()
            child.wait()
    finally:
        writer.close()
    assert [s for s in seen if s.startswith("late-")] == [f"late-{i}" for i in range(6)]
    assert "segment_opened" in seen and len(segments(directory)) > 1
