"""The audit trail as the service and the CLI write it.

``ServiceAudit`` turns the service's events into audit records: authorization decisions and
lifecycle events are written without holding up the request (they are on disk within one
group commit), while a job's finished record is awaited — the service answers with a result
only once its record is on disk. Token and policy changes made while the service runs (the
``token`` CLI edits the tokens file; an operator edits a policy) are noticed by comparing
snapshots, since one process at a time writes an audit directory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import structlog

from sandboxd.audit.logger import AsyncAuditLogger, AuditLogger
from sandboxd.audit.writer import AuditWriter

log = structlog.get_logger("sandboxd.audit")


class QueuedAuditLogger(AuditLogger):
    """``AuditLogger`` that does not wait: every method returns the writer's future at once.

    For records nobody awaits: unlike an asyncio awaitable, nothing wakes the event loop
    when the record is on disk (the writer thread runs the future's callbacks)."""

    def _complete(self, pending: concurrent.futures.Future) -> concurrent.futures.Future:
        return pending


def config_hash(config: Any) -> str:
    data = config.model_dump(mode="json") if hasattr(config, "model_dump") else dict(config)
    return "sha256:" + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def hmac_key(path: str | None) -> bytes | None:
    if not path:
        return None
    from sandboxd.audit.chain import load_key

    return load_key(path)


class ServiceAudit:
    def __init__(self, writer: AuditWriter, directory: str = "") -> None:
        if writer.durability != "group":  # in "fsync" mode submit() itself waits for the disk
            raise ValueError("the service's audit writer must use group commit")
        self.writer = writer
        self.directory = directory
        self.logger = AsyncAuditLogger(writer)
        self._queued = QueuedAuditLogger(writer)  # the same pipeline, for records not awaited
        self._tokens: dict[str, tuple[str, bool]] = {}
        self._policies: dict[str, str] = {}

    @classmethod
    def open(cls, directory: str, key_file: str | None = None) -> "ServiceAudit":
        Path(directory).mkdir(parents=True, exist_ok=True, mode=0o700)
        return cls(AuditWriter(directory, hmac_key=hmac_key(key_file)), directory)

    def _queue(self, write: Any, *args: Any, **fields: Any) -> None:
        """``write`` (a method of the queued logger) without waiting for the disk: on disk
        with the next group commit; writer.close() writes what is still queued."""
        try:
            future = write(*args, **fields)
        except Exception as exc:  # closed or failed writer: as an awaited write would fail
            log.error("audit_write_failed", error=str(exc))
            return
        future.add_done_callback(_report_failure)

    def finished_jobs(self, job_ids: set[str], segments: int = 2) -> set[str]:
        """Which of ``job_ids`` already have a job_finished record (newest segments only):
        after a crash between a run's record and its store update, recovery must not write a
        second one."""
        from sandboxd.audit.chain import list_segments

        found: set[str] = set()
        for _number, path in reversed(list_segments(self.directory)[-segments:]):
            with open(path, "rb") as handle:
                for line in handle:
                    if b'"job_finished"' not in line:
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if record.get("event") == "job_finished" and record.get("job_id") in job_ids:
                        found.add(record["job_id"])
        return found

    @property
    def healthy(self) -> bool:
        """False once the writer has failed: the service then refuses new runs (fail closed)."""
        return getattr(self.writer, "_failed", None) is None

    # --- events ------------------------------------------------------------------------------
    def __call__(self, event: str, **fields: Any) -> None:
        """The service's generic hook: write ``event`` without waiting for the disk."""
        context = {k: fields.pop(k) for k in ("request_id", "tenant", "client") if k in fields}
        logger = self._queued.bind(**{k: v for k, v in context.items() if v is not None})
        if event in ("auth_accepted", "auth_denied"):
            reason = fields.pop("reason", None)
            decision = "accepted" if event == "auth_accepted" else (
                "quota_rejected" if reason and reason.startswith("quota") else "denied")
            self._queue(logger.auth_decision, decision, reason=reason, token_id=fields.pop("token_id", None),
                        policy=fields.pop("policy", None), **fields)
        elif event == "job_queued":
            self._queue(logger.job_queued, fields.pop("run_id"), policy_name=fields.pop("policy", None),
                        policy_hash=fields.pop("policy_hash", None), **fields)
        elif event == "job_started":
            self._queue(logger.job_started, fields.pop("run_id"), **fields)
        else:
            self._queue(logger.emit, event, **fields)

    async def job_finished(self, result: dict[str, Any] | None, *, run_id: str, status: str, reason: str | None,
                           argv: Iterable[str], env: dict[str, str], limits: Any, request_id: str | None,
                           tenant: str | None, client: str | None) -> None:
        """Awaited: the run's answer waits until this record is on disk."""
        logger = self.logger.bind(**{k: v for k, v in
                                     (("request_id", request_id), ("tenant", tenant), ("client", client)) if v})
        if result is None:
            await logger.emit("job_finished", job_id=run_id, status=status, reason=reason,
                              argv=list(argv), env_names=sorted(env))
            return
        await logger.job_finished(dict(result, job_id=run_id), argv=argv, env=env, limits=limits)

    async def service_started(self, config: Any, policies: dict[str, str], **extra: Any) -> None:
        self._policies = dict(policies)
        await self.logger.service_started(config_hash=config_hash(config), policies=policies, **extra)

    async def service_stopped(self, **extra: Any) -> None:
        await self.logger.service_stopped(**extra)

    # --- changes made while the service runs -----------------------------------------------------
    def notice_tokens(self, records: Iterable[Any]) -> None:
        seen = {r.id: (r.tenant, r.revoked) for r in records}
        first = not self._tokens
        for token_id, (tenant, revoked) in seen.items():
            before = self._tokens.get(token_id)
            if before is None and not first:
                self("token_changed", action="added", token_id=token_id, tenant=tenant)
            elif before is not None and revoked and not before[1]:
                self("token_changed", action="revoked", token_id=token_id, tenant=tenant)
        for token_id, (tenant, _revoked) in self._tokens.items():
            if token_id not in seen:
                self("token_changed", action="removed", token_id=token_id, tenant=tenant)
        self._tokens = seen

    def notice_policies(self, policies: dict[str, str]) -> None:
        for name, digest in policies.items():
            before = self._policies.get(name)
            if before != digest:
                self.logger_policy("added" if before is None else "changed", name, digest, before)
        for name, digest in self._policies.items():
            if name not in policies:
                self.logger_policy("removed", name, None, digest)
        self._policies = dict(policies)

    def logger_policy(self, action: str, name: str, digest: str | None, previous: str | None) -> None:
        self._queue(self._queued.policy_changed, action, name=name, hash=digest, previous_hash=previous)

    async def close(self) -> None:
        await asyncio.to_thread(self.writer.close)  # writes what is queued first


def _report_failure(future: concurrent.futures.Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("audit_write_failed", error=str(future.exception()))


def cli_audit(directory: str, key_file: str | None = None) -> AuditLogger:
    """For ``sandboxd run --audit-log DIR``: a synchronous logger (the CLI has one job)."""
    Path(directory).mkdir(parents=True, exist_ok=True, mode=0o700)
    return AuditLogger(AuditWriter(directory, hmac_key=hmac_key(key_file)))


class NullAudit:
    """No audit trail (tests that build the service's parts by hand)."""

    healthy = True

    def finished_jobs(self, job_ids: set[str], segments: int = 2) -> set[str]:
        return set()

    def __call__(self, event: str, **fields: Any) -> None:
        pass

    async def job_finished(self, result: Any, **fields: Any) -> None:
        pass
