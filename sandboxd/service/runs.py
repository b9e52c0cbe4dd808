"""The life of a run in the service: stored, queued fairly, executed, finished — or
cancelled, or failed with a reason — and every step written down before it is acted on."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import structlog

from sandboxd.errors import LayerUnavailable, SandboxdInputError
from sandboxd.service.events import EventHub
from sandboxd.service.executor import Executor
from sandboxd.service.memory import IdleTrimmer
from sandboxd.service.metrics import Metrics
from sandboxd.service.scheduler import QueueFull, Scheduler, Ticket
from sandboxd.service.schemas import RunRequest
from sandboxd.service.store import JobStore

log = structlog.get_logger("sandboxd.runs")


@dataclass
class Submitter:
    """Who asked: the tenant and the limits of their token."""

    tenant: str
    token_id: str
    max_running: int
    max_queued: int
    request_id: str | None = None
    client: str | None = None


@dataclass
class ActiveRun:
    run_id: str
    ticket: Ticket
    task: asyncio.Task
    done: asyncio.Future
    cancel_reason: str | None = None
    keep_queued: bool = False  # shutdown: leave it queued in the store for the next start


class RunManager:
    def __init__(self, store: JobStore, scheduler: Scheduler, executor: Executor, hub: EventHub,
                 metrics: Metrics, audit: Callable[..., Any] | None = None) -> None:
        self.store = store
        self.scheduler = scheduler
        self.executor = executor
        self.hub = hub
        self.metrics = metrics
        if audit is None:
            from sandboxd.audit.service import NullAudit

            audit = NullAudit()
        self.audit = audit
        self.active: dict[str, ActiveRun] = {}
        self.accepting = True
        self.trimmer = IdleTrimmer(lambda: not self.active)

    async def submit(self, request: RunRequest, who: Submitter, *, recovered_id: str | None = None,
                     created_at: float | None = None) -> str:
        if not self.accepting:
            raise QueueFull("the service is shutting down")
        run_id = recovered_id or uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        ticket = Ticket(run_id, who.tenant, who.token_id, who.max_running)
        # Queue caps are checked before anything is stored: a refused run leaves no trace.
        self.scheduler.submit(ticket, who.max_queued if recovered_id is None else 1 << 30)
        # A free slot is taken at once: the run is stored as running straight away, so one
        # commit, and no power loss can ever bring it back as queued (store.py, durability).
        started = recovered_id is None and ticket.future.done()
        if recovered_id is None:
            try:
                # Durable before a 202 names it; a waiting client is told nothing before the end.
                created_at = await self.store.add(run_id, who.tenant, who.token_id, request.policy,
                                                  request.model_dump(mode="json"), running=started,
                                                  durable=not request.wait)
            except BaseException:
                # Not stored (an error, or the request was cancelled): no task will ever
                # release this ticket, so take it back or it holds a queue place or a slot.
                if not self.scheduler.cancel(ticket):
                    self.scheduler.release(ticket)
                raise
        self.hub.publish(run_id, "queued", {"id": run_id})
        self.audit("job_queued", run_id=run_id, tenant=who.tenant, policy=request.policy,
                   request_id=who.request_id, client=who.client)
        if started:  # said now, not a loop turn later: one group commit for both records
            self.audit("job_started", run_id=run_id, tenant=who.tenant, policy=request.policy)
        done: asyncio.Future = loop.create_future()
        task = asyncio.create_task(self._run(run_id, request, who, ticket, created_at or time.time(), done,
                                             started))
        self.active[run_id] = ActiveRun(run_id, ticket, task, done)
        self._gauges()
        return run_id

    async def _run(self, run_id: str, request: RunRequest, who: Submitter, ticket: Ticket,
                   created_at: float, done: asyncio.Future, started: bool = False) -> None:
        status, result, reason = "failed", None, None
        try:
            await self.scheduler.wait_turn(ticket)
            self.metrics.queue_wait.observe(max(0.0, time.time() - created_at))
            if not started:  # durable: after a power loss it is failed, never run twice
                await self.store.mark_running(run_id)
                self.audit("job_started", run_id=run_id, tenant=who.tenant, policy=request.policy)
            self._gauges()
            result = await self.executor.execute(run_id, request)
            status = "finished"
        except asyncio.CancelledError:
            status = "cancelled"
            reason = self.active[run_id].cancel_reason if run_id in self.active else "cancelled"
        except (SandboxdInputError, LayerUnavailable) as exc:
            reason = str(exc)
        except Exception as exc:  # a bug of ours: the run fails with the reason, the service lives
            reason = f"internal error: {type(exc).__name__}: {exc}"
            log.exception("run_failed", run_id=run_id)
        finally:
            self.scheduler.release(ticket)
        active = self.active.get(run_id)
        if status == "cancelled" and active is not None and active.keep_queued:
            self.active.pop(run_id, None)
            if not done.done():
                done.set_result(("queued", None, "the service is restarting; the run stays queued"))
            return
        await asyncio.shield(self._record(run_id, who, request, status, result, reason, done))

    async def _record(self, run_id: str, who: Submitter, request: RunRequest, status: str,
                      result: dict[str, Any] | None, reason: str | None, done: asyncio.Future) -> None:
        synced: asyncio.Future | None = None
        try:
            # The audit record first: a run is never reported finished (by its answer or by
            # GET) before its record is on disk. A crash in between leaves it "running" in the
            # store, and the next start records it as failed (a second record, never none) —
            # or, if its staged result and its record are both on disk, as finished.
            if status == "finished" and result is not None:
                # Its result is stored meanwhile (the run still "running", the result unseen)
                # and made durable while the record is: with both on disk a restart finds
                # the run finished (store.recover), so the status flip after needs no fsync.
                self.store.stage_result(run_id, result)
                synced = asyncio.ensure_future(self.store.sync())
            try:
                await self.audit.job_finished(result, run_id=run_id, status=status, reason=reason,
                                              argv=request.argv, env=request.env,
                                              limits=(result or {}).get("limits"), request_id=who.request_id,
                                              tenant=who.tenant, client=who.client)
            except Exception as exc:  # fail closed: no record, no acknowledged result
                log.error("audit_failed", run_id=run_id, error=str(exc))
                status, result = "failed", None
                reason = f"the run's audit record could not be written ({exc}); its result is withheld"
            if synced is not None:
                await synced
            if status == "finished" and synced is not None:
                self.store.complete(run_id)
            else:
                await self.store.finish(run_id, status, result, reason)
        finally:
            if synced is not None:
                synced.add_done_callback(_quiet)  # if something failed first, its error is the one told
            verdict = (result or {}).get("verdict", status.upper())
            self.metrics.jobs.labels(verdict=verdict, tenant=who.tenant).inc()
            if result is not None:
                self.metrics.duration.observe(result.get("usage", {}).get("wall_s", 0.0))
            self.hub.publish(run_id, "finished", {"id": run_id, "status": status, "reason": reason,
                                                  "result": result})
            self.active.pop(run_id, None)
            self._gauges()
            if not self.active:
                self.trimmer.went_idle()
            if not done.done():
                done.set_result((status, result, reason))

    async def wait(self, run_id: str, timeout: float) -> tuple[str, dict[str, Any] | None, str | None] | None:
        active = self.active.get(run_id)
        if active is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(active.done), timeout)
        except asyncio.TimeoutError:
            return None

    def cancel(self, run_id: str, reason: str) -> bool:
        active = self.active.get(run_id)
        if active is None:
            return False
        active.cancel_reason = reason
        active.task.cancel()
        return True

    async def recover(self, tokens: Callable[[str], Submitter | None]) -> dict[str, int]:
        """After a (re)start: queued runs are queued again; runs that were running fail
        (unless their result was stored and their end recorded: then they had finished)."""
        queued, failed_rows = await self.store.recover(lambda ids: asyncio.to_thread(self.audit.finished_jobs, ids))
        failed = len(failed_rows)
        recorded = await asyncio.to_thread(self.audit.finished_jobs, {row.id for row in failed_rows})
        for row in failed_rows:  # their processes died with the previous service: say so
            if row.id in recorded:
                continue  # it finished and was recorded; the crash came before the store knew
            await self.audit.job_finished(None, run_id=row.id, status="failed", reason=row.reason,
                                          argv=row.request.get("argv", []), env=row.request.get("env", {}),
                                          limits=None, request_id=None, tenant=row.tenant, client=None)
        requeued = 0
        for row in queued:
            who = tokens(row.token_id)
            if who is None:
                await self.store.finish(row.id, "failed", None, "the token that submitted it was revoked")
                continue
            try:
                request = RunRequest.model_validate_json(json.dumps(row.request))
            except ValueError as exc:
                await self.store.finish(row.id, "failed", None, f"stored request no longer valid: {exc}")
                continue
            try:
                await self.submit(request, who, recovered_id=row.id, created_at=row.created_at)
            except QueueFull as exc:  # more left queued than the queue now holds: fail, don't crash
                await self.store.finish(row.id, "failed", None, f"not requeued after a restart: {exc.reason}")
                continue
            requeued += 1
        return {"requeued": requeued, "failed_running": failed}

    async def shutdown(self, grace: float) -> None:
        """Stop taking runs; give running ones ``grace`` seconds, then cancel them. Queued runs
        stay queued in the store and run after the next start."""
        self.accepting = False
        self.trimmer.close()
        running = [a for a in self.active.values() if a.ticket in self.scheduler.running]
        waiting = [a for a in self.active.values() if a not in running]
        for active in waiting:  # leave them queued in the store, untouched
            active.keep_queued = True
            self.scheduler.cancel(active.ticket)
            active.task.cancel()
        if running:
            await asyncio.wait([a.task for a in running], timeout=grace)
        for active in list(self.active.values()):
            if not active.task.done():
                active.cancel_reason = "the service shut down before the run finished"
                active.task.cancel()
        tasks = [a.task for a in self.active.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=max(grace, 5))

    def _gauges(self) -> None:
        self.metrics.queued.set(self.scheduler.queued)
        self.metrics.running.set(len(self.scheduler.running))


def _quiet(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: no "exception was never retrieved" at exit
