"""Finished records and the structlog facade: what a record holds, and that no secret does."""

from __future__ import annotations

import json

import structlog

from sandboxd.audit.logger import AsyncAuditLogger, AuditLogger
from sandboxd.audit.records import argv_digest, job_finished_record
from sandboxd.audit.verifier import verify
from sandboxd.audit.writer import AuditWriter
from sandboxd.jail.plan import JobLimits
from sandboxd.result import RunResult, Usage
from tests.audit.helpers import lines_of_all, segments

SECRET = "ghp_Zx8SECRETsecret0123456789abcdefABCDEF"


def _result() -> dict:
    return RunResult(
        job_id="job-1", verdict="SECCOMP", exit_code=None, signal=31,
        usage=Usage(wall_s=0.25, cpu_user_s=0.1, memory_peak_bytes=1 << 20),
        policy={"name": "judge", "hash": "sha256:abc"},
        layers={"namespaces": {"user": True, "pid": True}, "id_map": {"uid_map": "0 2100000000 1"},
                "cgroup": {"version": "v2", "controllers": ["memory", "pids"]},
                "landlock": {"abi": 4, "enforced": True, "rights": ["read_file"]},
                "seccomp": {"profile": "default", "hash": "sha256:def"}, "stage_ms": {"x": 1}},
        seccomp={"syscall": "ptrace", "nr": 101, "arch": "x86_64"},
        denials={"kills": [{"syscall": "ptrace"}], "errno": [], "not_observable": ["ERRNO rules"]},
    ).to_dict()


def test_finished_record_has_every_part_and_env_by_name():
    record = job_finished_record(_result(), request_id="req-1", tenant="acme", client="10.0.0.7:5555",
                                 argv=["./a.out", "--fast"], env=[("MODE", "ci"), ("API_TOKEN", SECRET)],
                                 loggable_env=("MODE",), limits=JobLimits(wall_time=2.0, memory=1 << 28))
    assert record["event"] == "job_finished"
    assert (record["request_id"], record["tenant"], record["client"]) == ("req-1", "acme", "10.0.0.7:5555")
    assert record["policy"] == {"name": "judge", "hash": "sha256:abc"}
    assert record["argv"] == ["./a.out", "--fast"] and record["argv_sha256"] == argv_digest(["./a.out", "--fast"])
    assert record["env_names"] == ["API_TOKEN", "MODE"] and record["env_values"] == {"MODE": "ci"}
    assert record["limits"]["wall_time"] == 2.0 and record["limits"]["memory"] == 1 << 28
    assert record["verdict"] == "SECCOMP" and record["signal"] == 31
    assert record["usage"]["wall_s"] == 0.25
    assert record["layers"]["cgroup"]["version"] == "v2" and record["layers"]["landlock"]["abi"] == 4
    assert record["layers"]["seccomp"]["hash"] == "sha256:def" and "stage_ms" not in record["layers"]
    assert record["denials"]["kills"] == [{"syscall": "ptrace"}]
    assert SECRET not in json.dumps(record)


def test_no_secret_reaches_the_file(tmp_path):
    log = tmp_path / "log"
    with AuditWriter(str(log), segment_bytes=4096) as writer:
        audit = AuditLogger(writer).bind(request_id="req-9", tenant="acme", client="10.0.0.7")
        audit.auth_decision("accepted", token_id="tok-3", token=SECRET, authorization=f"Bearer {SECRET}")
        audit.token_changed("created", token_id="tok-3", token=SECRET)
        audit.job_queued("job-1", policy_name="judge", policy_hash="h", argv=["x"],
                         env={"API_TOKEN": SECRET, "GITHUB_TOKEN": SECRET})
        audit.job_finished(_result(), argv=["./a.out"], env={"API_TOKEN": SECRET, "MODE": "ci"},
                           loggable_env=("MODE",))
    data = b"".join(open(path, "rb").read() for path in segments(log))
    assert SECRET.encode() not in data
    assert b"SECRET" not in data and b"API_TOKEN" in data and b"tok-3" in data
    assert verify([str(log)]).ok


def test_facade_events_carry_context_and_time(tmp_path):
    log = tmp_path / "log"
    with AuditWriter(str(log)) as writer:
        audit = AuditLogger(writer)
        started = audit.service_started(config_hash="cfg1", policies={"judge": "h1", "default": "h2"})
        assert started["seq"] == 2 and started["time"].endswith("Z")
        request = audit.bind(request_id="r1", tenant="acme", client="10.1.1.1")
        request.auth_decision("denied", reason="unknown token")
        request.auth_decision("quota_rejected", quota={"name": "jobs_per_minute", "limit": 10})
        structlog.contextvars.bind_contextvars(request_id="r2", tenant="beta", client="10.2.2.2")
        try:
            audit.job_started("job-7")
        finally:
            structlog.contextvars.clear_contextvars()
        audit.job_finished(_result(), argv=["a"], env={}, request_id="r3", tenant="gamma", client="c")
        audit.policy_changed("updated", name="judge", hash="h3", previous_hash="h1", actor="admin")
        audit.service_stopped(reason="SIGTERM")
    records = lines_of_all(log)
    events = [r["event"] for r in records]
    assert events == ["segment_opened", "service_started", "auth_decision", "auth_decision", "job_started",
                      "job_finished", "policy_changed", "service_stopped"]
    denied, quota = records[2], records[3]
    assert (denied["decision"], denied["reason"], denied["tenant"], denied["request_id"]) == \
        ("denied", "unknown token", "acme", "r1")
    assert quota["quota"]["limit"] == 10
    assert (records[4]["request_id"], records[4]["tenant"]) == ("r2", "beta")
    assert (records[5]["request_id"], records[5]["tenant"], records[5]["verdict"]) == ("r3", "gamma", "SECCOMP")
    assert records[6]["policy"] == {"name": "judge", "hash": "h3"}
    assert all("time" in r for r in records)


async def test_async_facade(tmp_path):
    writer = AuditWriter(str(tmp_path / "log"))
    try:
        audit = AsyncAuditLogger(writer).bind(request_id="r", tenant="t", client="c")
        record = await audit.job_queued("j", policy_name="p", policy_hash="h")
        assert record["seq"] == 2 and record["tenant"] == "t"
        finished = await audit.job_finished(_result(), argv=["a"], env={"K": "v"})
        assert finished["env_names"] == ["K"] and finished["env_values"] == {}
    finally:
        writer.close()
    assert verify([str(tmp_path / "log")]).ok
