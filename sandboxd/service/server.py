"""``sandboxd serve``: start everything, serve until SIGTERM, stop without losing anything.

Start: state directory, tokens (a first start writes an admin token to a file and logs its
path, never its value), the job store (runs that were running when the last service died
are marked failed with the reason; queued runs are queued again), the spawner (exec'd: this
process has threads and never forks), the HTTP listeners.
Stop (SIGTERM/SIGINT): stop accepting requests, give running jobs the grace period, cancel
what is left, keep queued runs queued in the store, close the spawner and the store.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import structlog
from aiohttp import web

from sandboxd.audit.service import ServiceAudit
from sandboxd.policy.load import policy_search_path
from sandboxd.service import auth
from sandboxd.service.app import Services, build_app
from sandboxd.service.config import ServiceConfig
from sandboxd.service.events import EventHub
from sandboxd.service.executor import Executor, PolicyCache
from sandboxd.service.metrics import Metrics
from sandboxd.service.runs import RunManager, Submitter
from sandboxd.service.scheduler import Scheduler
from sandboxd.service.store import JobStore
from sandboxd.spawner.async_client import AsyncSpawner

log = structlog.get_logger("sandboxd.service")


def configure_logging(level: str) -> None:
    """JSON lines on stderr, one per event, with request ids bound where there is one."""
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class SpawnerKeeper:
    """The spawner, started again if it dies (jobs it was running end as failed)."""

    def __init__(self, metrics: Metrics, pool: int = 0, runner: str | None = None) -> None:
        self.metrics = metrics
        self.pool = pool
        self.runner = runner
        self.current: AsyncSpawner | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> AsyncSpawner:
        async with self._lock:
            if self.current is None or self.current.gone is not None:
                if self.current is not None:
                    self.metrics.spawner_restarts.inc()
                    log.warning("spawner_restarted", reason=self.current.gone)
                self.current = await AsyncSpawner.start(self.pool, self.runner)
                self.metrics.spawner_up.set(1)
            return self.current

    async def alive(self) -> bool:
        try:
            spawner = await self.get()
            # ping and define share the spawner's control queue: one at a time, or a readyz
            # probe can take the answer a policy definition waits for (and the reverse).
            async with spawner._define_lock:
                await spawner.ping()
            return True
        except Exception:
            self.metrics.spawner_up.set(0)
            return False

    async def close(self) -> None:
        if self.current is not None:
            await self.current.close()


class KeptSpawner:
    """What the executor sees: ``run``/``release`` on whichever spawner is alive."""

    def __init__(self, keeper: SpawnerKeeper) -> None:
        self.keeper = keeper
        self._by_job: dict[str, AsyncSpawner] = {}

    async def run(self, template, job, stdio):
        spawner = await self.keeper.get()
        self._by_job[job.job_id] = spawner
        return await spawner.run(template, job, stdio)

    def release(self, job_id: str) -> None:
        spawner = self._by_job.pop(job_id, None)
        if spawner is not None:
            spawner.release(job_id)


def _policy_hashes(policies: PolicyCache) -> dict[str, str]:
    hashes = {}
    for directory in policy_search_path():
        for path in sorted(directory.glob("*.toml")) if directory.is_dir() else ():
            try:
                hashes.setdefault(path.stem, policies.get(path.stem).loaded.hash)
            except Exception:  # a broken policy is not served; the audit says nothing of it
                continue
    return hashes


async def _prune(store: JobStore, retention_s: float) -> None:
    while True:
        try:
            removed = await store.prune(retention_s)
            if removed:
                log.info("runs_pruned", count=removed)
        except Exception as exc:
            log.warning("prune_failed", error=str(exc))
        await asyncio.sleep(600)


async def _watch_changes(audit: ServiceAudit, tokens: auth.TokenStore, policies: PolicyCache) -> None:
    """Token and policy changes made while we run go into the audit trail."""
    while True:
        try:
            audit.notice_tokens(await asyncio.to_thread(tokens.list))
            audit.notice_policies(await asyncio.to_thread(_policy_hashes, policies))
        except Exception as exc:
            log.warning("change_watch_failed", error=str(exc))
        await asyncio.sleep(1.0)


async def serve(config: ServiceConfig, *, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT, or until ``stop`` is set when one is given (then no
    signal handlers are installed: tests run several services in one process)."""
    configure_logging(config.log_level)
    state = Path(config.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    # The audit log first: if it refuses to open (a torn chain it cannot seal, another key),
    # nothing else has been started that would have to be stopped.
    audit = ServiceAudit.open(config.audit_dir, config.audit_hmac_key)
    closing: list = []
    try:
        await _serve(config, state, audit, closing, ready, stop)
    finally:
        for close in reversed(closing):
            try:
                await close()
            except Exception as exc:
                log.error("close_failed", step=getattr(close, "__qualname__", str(close)), error=str(exc))


async def _serve(config: ServiceConfig, state: Path, audit: ServiceAudit, closing: list,
                 ready: asyncio.Event | None, stop: asyncio.Event | None) -> None:
    closing.append(audit.close)
    tokens = auth.TokenStore(str(state / "tokens.json"))
    secret = tokens.ensure_admin()
    if secret is not None:
        auth.write_secret_file(str(state / "admin-token"), secret)
        log.info("admin_token_created", path=str(state / "admin-token"))
    store = await JobStore.open(str(state / "jobs.sqlite"))
    closing.append(store.close)
    metrics = Metrics()
    keeper = SpawnerKeeper(metrics, config.pool_size, config.stage_runner)
    closing.append(keeper.close)
    await keeper.get()
    hub = EventHub()
    policies = PolicyCache()
    executor = Executor(config, KeptSpawner(keeper), hub, policies)
    runs = RunManager(store, Scheduler(config.slots, config.max_queued_total), executor, hub, metrics, audit)

    def submitter_for(token_id: str) -> Submitter | None:
        record = next((r for r in tokens.list() if r.id == token_id and not r.revoked), None)
        if record is None:
            return None
        return Submitter(record.tenant, record.id, record.max_running, record.max_queued)

    await audit.service_started(config, await asyncio.to_thread(_policy_hashes, policies))
    closing.append(audit.service_stopped)
    recovered = await runs.recover(submitter_for)
    audit("service_recovered", **recovered)
    services = Services(config, store, runs, hub, metrics, tokens, auth.RateLimiter(), keeper.alive, audit)
    audit.notice_tokens(tokens.list())
    watcher = asyncio.create_task(_watch_changes(audit, tokens, policies))
    pruner = asyncio.create_task(_prune(store, config.retention_s))
    # handler_cancellation: aiohttp (>= 3.8.6) no longer cancels a handler whose client went
    # away; without it a wait=true run would never see its client go (cancel_on_disconnect).
    runner = web.AppRunner(build_app(services), access_log=None, handle_signals=False, shutdown_timeout=1.0,
                           handler_cancellation=True)
    await runner.setup()
    sites = []
    if config.listen:
        sites.append(web.TCPSite(runner, config.host, config.port))
    if config.unix_socket:
        sites.append(web.UnixSite(runner, config.unix_socket))
    for site in sites:
        await site.start()
    log.info("serving", listen=config.listen, unix_socket=config.unix_socket, state_dir=str(state),
             spawner_pid=keeper.current.pid if keeper.current else None, **recovered)
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("stopping", grace_s=config.shutdown_grace_s)
    runs.accepting = False
    for site in sites:
        await site.stop()  # no new connections; requests in flight go on
    await runs.shutdown(config.shutdown_grace_s)
    await runner.cleanup()
    watcher.cancel()
    pruner.cancel()
    # keeper.close, audit.service_stopped, store.close and audit.close run in serve()'s finally.
    log.info("stopped")
