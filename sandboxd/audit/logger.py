"""The service's audit events, one JSON record each, through a structlog pipeline.

    writer = AuditWriter(directory, hmac_key=key)
    audit = AuditLogger(writer)                  # each call returns once its record is on disk
    audit.service_started(config_hash=h, policies={"judge": "sha256:…"})
    log = audit.bind(request_id=rid, tenant="acme", client="10.0.0.7:51234")
    log.auth_decision("accepted", token_id="t-17")
    log.job_finished(result.to_dict(), argv=argv, env=env, loggable_env=("MODE",), limits=limits)

    audit = AsyncAuditLogger(writer)             # the same methods, awaitable (aiohttp)
    await audit.job_queued(job_id, policy_name="judge", policy_hash=h)

The pipeline: bound context (``bind`` and structlog's contextvars, e.g. set by a request
middleware) → the event's own keys → ``time`` (structlog's ISO UTC TimeStamper) → secret
scrubbing → the writer, which chains and fsyncs. Canonical JSON (sorted keys) is produced by
the writer, so the order in which processors add keys never matters to the hash.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any, Iterable, Mapping

import structlog

from sandboxd.audit.records import job_fields, job_finished_record, scrub
from sandboxd.audit.writer import AuditWriter

AUTH_DECISIONS = ("accepted", "denied", "quota_rejected")
REQUEST_EVENTS = frozenset({"auth_decision", "job_queued", "job_started", "job_finished"})


def _scrub_processor(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return scrub(event_dict)


def _request_keys(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    # Records about a request always name it, even when a key is unknown (null).
    if event_dict.get("event") in REQUEST_EVENTS:
        for key in ("request_id", "tenant", "client"):
            event_dict.setdefault(key, None)
    return event_dict


def _hand_over(logger: Any, method: str, event_dict: dict[str, Any]) -> tuple[tuple[Any, ...], dict]:
    # structlog passes (args, kwargs) on to the sink: the whole event dict as one argument.
    return (event_dict,), {}


class _WriterSink:
    """structlog's final "logger": hands each event dict to the durable writer."""

    def __init__(self, writer: AuditWriter, asynchronous: bool) -> None:
        self.writer = writer
        self.asynchronous = asynchronous

    def msg(self, event_dict: dict[str, Any]) -> Any:
        if self.asynchronous:
            return self.writer.append_async(event_dict)  # a coroutine: awaited by the caller
        return self.writer.submit(event_dict)


def _pipeline(writer: AuditWriter, asynchronous: bool) -> Any:
    return structlog.wrap_logger(
        _WriterSink(writer, asynchronous),
        processors=[
            structlog.contextvars.merge_contextvars,
            _request_keys,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
            _scrub_processor,
            _hand_over,
        ],
        wrapper_class=structlog.BoundLogger,
        cache_logger_on_first_use=False,
    )


class AuditLogger:
    """Audit events; every method returns the record as written, once it is on disk."""

    _asynchronous = False

    def __init__(self, writer: AuditWriter, *, _log: Any = None) -> None:
        self.writer = writer
        self._log = _log if _log is not None else _pipeline(writer, self._asynchronous)

    def bind(self, **context: Any) -> "AuditLogger":
        """A logger whose records all carry ``context`` (request_id, tenant, client…)."""
        return type(self)(self.writer, _log=self._log.bind(**context))

    def _complete(self, pending: concurrent.futures.Future) -> Any:
        return pending.result()

    def emit(self, event: str, **fields: Any) -> Any:
        """Any event; the named methods below are the ones the service uses."""
        return self._complete(self._log.msg(event, **fields))

    # -- the service --------------------------------------------------------------------
    def service_started(self, *, config_hash: str, policies: Mapping[str, str] | None = None,
                        version: str | None = None, **extra: Any) -> Any:
        """``policies``: name → content hash of every policy the service serves."""
        return self.emit("service_started", config_hash=config_hash,
                         policies=dict(policies) if policies is not None else None, version=version, **extra)

    def service_stopped(self, *, reason: str | None = None, **extra: Any) -> Any:
        return self.emit("service_stopped", reason=reason, **extra)

    def config_changed(self, *, config_hash: str, previous_hash: str | None = None,
                       policies: Mapping[str, str] | None = None, actor: str | None = None, **extra: Any) -> Any:
        return self.emit("config_changed", config_hash=config_hash, previous_hash=previous_hash,
                         policies=dict(policies) if policies is not None else None, actor=actor, **extra)

    def token_changed(self, action: str, *, token_id: str, tenant: str | None = None,
                      actor: str | None = None, **extra: Any) -> Any:
        """A token was created, revoked, rotated…: named by its id, never by its value."""
        return self.emit("token_changed", action=action, token_id=token_id, tenant=tenant, actor=actor, **extra)

    def policy_changed(self, action: str, *, name: str, hash: str | None, previous_hash: str | None = None,
                       actor: str | None = None, **extra: Any) -> Any:
        return self.emit("policy_changed", action=action, policy={"name": name, "hash": hash},
                         previous_hash=previous_hash, actor=actor, **extra)

    # -- requests -----------------------------------------------------------------------
    def auth_decision(self, decision: str, *, reason: str | None = None, token_id: str | None = None,
                      policy: str | None = None, quota: Mapping[str, Any] | None = None, **extra: Any) -> Any:
        """``decision``: accepted, denied (with ``reason``) or quota_rejected (with ``quota``)."""
        if decision not in AUTH_DECISIONS:
            raise ValueError(f"decision must be one of {AUTH_DECISIONS}, not {decision!r}")
        return self.emit("auth_decision", decision=decision, reason=reason, token_id=token_id,
                         policy=policy, quota=dict(quota) if quota is not None else None, **extra)

    def job_queued(self, job_id: str, *, policy_name: str | None = None, policy_hash: str | None = None,
                   argv: Iterable[str] | None = None, env: Any = None, loggable_env: Iterable[str] = (),
                   limits: Any = None, **extra: Any) -> Any:
        return self.emit("job_queued", job_id=job_id, policy={"name": policy_name, "hash": policy_hash},
                         **self._job(argv, env, loggable_env, limits), **extra)

    def job_started(self, job_id: str, **extra: Any) -> Any:
        return self.emit("job_started", job_id=job_id, **extra)

    def job_finished(self, result: Mapping[str, Any], *, argv: Iterable[str], env: Any,
                     loggable_env: Iterable[str] = (), limits: Any = None, request_id: str | None = None,
                     tenant: str | None = None, client: str | None = None) -> Any:
        """The finished record (see ``job_finished_record``); request_id, tenant and client
        default to the bound context."""
        record = job_finished_record(result, request_id=request_id, tenant=tenant, client=client, argv=argv,
                                     env=env, loggable_env=loggable_env, limits=limits)
        for key in ("request_id", "tenant", "client"):
            if record[key] is None:
                del record[key]  # let the bound context fill it in
        event = record.pop("event")
        return self.emit(event, **record)

    @staticmethod
    def _job(argv: Any, env: Any, loggable_env: Iterable[str], limits: Any) -> dict[str, Any]:
        fields = job_fields(request_id=None, tenant=None, client=None, argv=argv, env=env,
                            loggable_env=loggable_env, limits=limits)
        for key in ("request_id", "tenant", "client"):
            del fields[key]
        return fields


class AsyncAuditLogger(AuditLogger):
    """``AuditLogger`` for asyncio: every method returns an awaitable; awaiting it returns
    the record as written, once it is on disk. The event loop never waits for the disk."""

    _asynchronous = True

    def _complete(self, pending: Any) -> Any:
        return pending  # the writer's coroutine

