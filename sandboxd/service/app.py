"""The HTTP face: routes of API v1, authentication, and errors as JSON with a stable code.

Every error body is ``{"error": {"code", "message", "field"}}``; codes: invalid_json,
invalid_request (422, ``field`` names the offender), body_too_large (413), unauthorized
(401), forbidden (403), rate_limited and queue_full (429, with Retry-After), not_found
(404), method_not_allowed (405), unavailable (503), internal (500).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import structlog
from aiohttp import web
from pydantic import ValidationError

from sandboxd.errors import LayerUnavailable, SandboxdInputError
from sandboxd.policy.load import policy_search_path
from sandboxd.service import auth
from sandboxd.service.config import ServiceConfig
from sandboxd.service.events import EventHub
from sandboxd.service.metrics import CONTENT_TYPE, Metrics
from sandboxd.service.openapi import openapi_document
from sandboxd.service.runs import RunManager, Submitter
from sandboxd.service.scheduler import QueueFull
from sandboxd.service.schemas import RunRequest
from sandboxd.service.store import FINAL, JobStore

log = structlog.get_logger("sandboxd.http")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"code": code, "message": message, "field": field}}
    return web.json_response(body, status=status, headers=headers)


@dataclass
class Services:
    config: ServiceConfig
    store: JobStore
    runs: RunManager
    hub: EventHub
    metrics: Metrics
    tokens: auth.TokenStore
    limiter: auth.RateLimiter
    spawner_alive: Callable[[], Awaitable[bool]]
    audit: Callable[..., Any]


SERVICES = web.AppKey("services", Services)
# A typed request key where aiohttp has them (3.12+; a plain string key warns there).
REQUEST_ID = web.RequestKey("request_id", str) if hasattr(web, "RequestKey") else "request_id"


def _field_of(location: tuple) -> str:
    key = ""
    for part in location:
        if isinstance(part, int):
            key += f"[{part}]"
        elif isinstance(part, str) and not part.startswith(("function-", "json-or-python")):
            key += f".{part}" if key else part
    return key or "(body)"


@web.middleware
async def errors_middleware(request: web.Request, handler):
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    if not (0 < len(request_id) <= 128 and request_id.isprintable()):
        request_id = uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    started = time.monotonic()
    services: Services = request.app[SERVICES]
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    # Every call is bounded in time except the two that are long by design: a run that waits
    # for its result (bounded by max_wait_s) and an event stream.
    bounded = not (route == "/v1/runs/{id}/events" or (route == "/v1/runs" and request.method == "POST"))
    try:
        if bounded:
            response = await asyncio.wait_for(handler(request), services.config.request_timeout_s)
        else:
            response = await handler(request)
    except asyncio.TimeoutError:
        response = error_response(504, "timeout",
                                  f"the request took longer than {services.config.request_timeout_s} s")
    except ApiError as exc:
        response = error_response(exc.status, exc.code, exc.message, exc.field, exc.headers)
    except web.HTTPRequestEntityTooLarge:
        response = error_response(413, "body_too_large",
                                  f"the request body is larger than {services.config.max_body_bytes} bytes")
    except web.HTTPNotFound:
        response = error_response(404, "not_found", f"no route for {request.path}")
    except web.HTTPMethodNotAllowed as exc:
        response = error_response(405, "method_not_allowed", f"{request.method} is not allowed here",
                                  headers={"Allow": ",".join(sorted(exc.allowed_methods))})
    except web.HTTPException as exc:
        response = error_response(exc.status, "http_error", exc.reason)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("request_failed", request_id=request_id, path=request.path)
        response = error_response(500, "internal", "internal error; it is logged with the request id")
    response.headers["X-Request-Id"] = request_id
    services.metrics.requests.labels(route=route, status=str(response.status)).inc()
    log.info("request", request_id=request_id, method=request.method, route=route,
             status=response.status, ms=round((time.monotonic() - started) * 1000, 2))
    return response


def authenticate(request: web.Request) -> auth.TokenRecord:
    services: Services = request.app[SERVICES]
    presented = auth.bearer_token(request.headers.get("Authorization"))
    record = services.tokens.authenticate(presented) if presented else None
    client = request.remote
    if record is None:
        services.audit("auth_denied", reason="missing or invalid token", request_id=request[REQUEST_ID],
                       client=client, path=request.path)
        raise ApiError(401, "unauthorized", "a valid bearer token is required",
                       headers={"WWW-Authenticate": 'Bearer realm="sandboxd"'})
    allowed, retry_after = services.limiter.allow(record.id, record.rate_per_s, record.burst)
    if not allowed:
        services.metrics.rejections.labels(reason="rate_limited").inc()
        services.audit("auth_denied", reason="rate limited", tenant=record.tenant, token_id=record.id,
                       request_id=request[REQUEST_ID], client=client)
        raise ApiError(429, "rate_limited", "too many requests for this token",
                       headers={"Retry-After": str(int(retry_after))})
    return record


def submitter(request: web.Request, record: auth.TokenRecord) -> Submitter:
    return Submitter(tenant=record.tenant, token_id=record.id, max_running=record.max_running,
                     max_queued=record.max_queued, request_id=request[REQUEST_ID], client=request.remote)


async def read_json(request: web.Request) -> bytes:
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    return await request.read()  # aiohttp enforces client_max_size: 413 past the cap


def parse_run_request(body: bytes) -> RunRequest:
    try:
        return RunRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise ApiError(400, "invalid_json", f"the body is not valid JSON: {first['msg']}") from None
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
        raise ApiError(422, "invalid_request", message, field=_field_of(first["loc"])) from None


def check_file_sizes(run: RunRequest, config: ServiceConfig) -> None:
    """Files in that the service would refuse: a 422 now, not a run that fails later."""
    total = 0
    for index, item in enumerate(run.files):
        size = len(item.data())
        total += size
        if size > config.max_file_bytes:
            raise ApiError(422, "invalid_request", f"larger than max_file_bytes ({config.max_file_bytes})",
                           field=f"files[{index}].content")
        if total > config.max_files_total_bytes:
            raise ApiError(422, "invalid_request",
                           f"the files together pass max_files_total_bytes ({config.max_files_total_bytes})",
                           field=f"files[{index}].content")


# --- routes -----------------------------------------------------------------------------


async def post_run(request: web.Request) -> web.Response:
    services: Services = request.app[SERVICES]
    record = authenticate(request)
    run = parse_run_request(await read_json(request))
    if not auth.may_use_policy(record, run.policy):
        services.audit("auth_denied", reason=f"policy {run.policy} not allowed", tenant=record.tenant,
                       token_id=record.id, request_id=request[REQUEST_ID], client=request.remote)
        raise ApiError(403, "forbidden", f"this token may not use the policy {run.policy!r}", field="policy")
    try:
        services.runs.executor.policies.get(run.policy)
    except (SandboxdInputError, LayerUnavailable) as exc:
        raise ApiError(422, "invalid_request", str(exc), field="policy") from None
    check_file_sizes(run, services.config)
    if not services.runs.accepting:
        raise ApiError(503, "unavailable", "the service is shutting down", headers={"Retry-After": "5"})
    if not getattr(services.audit, "healthy", True):
        # Fail closed: a run whose record cannot be written must not run.
        raise ApiError(503, "unavailable", "the audit log accepts no more records", headers={"Retry-After": "30"})
    try:
        run_id = await services.runs.submit(run, submitter(request, record))
    except QueueFull as exc:
        services.metrics.rejections.labels(reason="queue_full").inc()
        services.audit("auth_denied", reason=f"quota: {exc.reason}", tenant=record.tenant,
                       token_id=record.id, request_id=request[REQUEST_ID], client=request.remote)
        raise ApiError(429, "queue_full", exc.reason, headers={"Retry-After": "1"}) from None
    services.audit("auth_accepted", tenant=record.tenant, token_id=record.id, run_id=run_id,
                   policy=run.policy, request_id=request[REQUEST_ID], client=request.remote)
    if not run.wait:
        return web.json_response({"id": run_id, "status": "queued"}, status=202)
    try:
        outcome = await services.runs.wait(run_id, services.config.max_wait_s)
    except asyncio.CancelledError:
        if services.config.cancel_on_disconnect:
            services.runs.cancel(run_id, "the client disconnected while waiting")
        raise
    if outcome is None:  # still running after the longest wait: poll GET /v1/runs/{id}
        return web.json_response({"id": run_id, "status": "running"}, status=202)
    status, result, reason = outcome
    if status == "finished" and result is not None:
        return web.json_response(result)
    # failed/cancelled: 200 with the reason; still queued (the service is restarting): 202
    return web.json_response({"id": run_id, "status": status, "reason": reason, "result": result},
                             status=200 if status in FINAL else 202)


async def visible_run(request: web.Request):
    """The run named in the path, if the caller's tenant may see it (admin sees all); 404
    otherwise — another tenant's run does not exist for the caller."""
    services: Services = request.app[SERVICES]
    record = authenticate(request)
    row = await services.store.get(request.match_info["id"])
    if row is None or (row.tenant != record.tenant and not record.admin):
        raise ApiError(404, "not_found", "no such run")
    return services, row


async def get_run(request: web.Request) -> web.Response:
    _services, row = await visible_run(request)
    body: dict[str, Any] = {"id": row.id, "status": row.status, "tenant": row.tenant, "policy": row.policy,
                            "created_at": row.created_at, "started_at": row.started_at,
                            "finished_at": row.finished_at, "reason": row.reason, "result": row.result}
    return web.json_response(body)


async def delete_run(request: web.Request) -> web.Response:
    services, row = await visible_run(request)
    run_id = row.id
    if row.status in FINAL:
        return web.json_response({"id": run_id, "status": row.status})
    services.runs.cancel(run_id, "cancelled by request")
    outcome = await services.runs.wait(run_id, 10)
    status = outcome[0] if outcome else "cancelled"
    return web.json_response({"id": run_id, "status": status}, status=202 if outcome is None else 200)


async def run_events(request: web.Request) -> web.StreamResponse:
    services, row = await visible_run(request)
    run_id = row.id
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    events = services.hub.get(run_id)
    if events is None:  # finished before this service started, or long ago: one final event
        payload = {"id": run_id, "status": row.status, "reason": row.reason, "result": row.result}
        await response.write(_sse("finished", payload))
        return response
    async for kind, data in events.follow():
        await response.write(_sse(kind, data))
    return response


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def get_policies(request: web.Request) -> web.Response:
    services: Services = request.app[SERVICES]
    record = authenticate(request)
    names = sorted({path.stem for directory in policy_search_path() if directory.is_dir()
                    for path in directory.glob("*.toml")})
    policies = []
    for name in names:
        if not auth.may_use_policy(record, name):
            continue
        try:
            cached = services.runs.executor.policies.get(name)
        except (SandboxdInputError, LayerUnavailable):
            continue  # a policy this host cannot run is not offered
        policies.append({"name": name, "hash": cached.loaded.hash,
                         "description": cached.loaded.policy.description})
    return web.json_response({"policies": policies})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    services: Services = request.app[SERVICES]
    if not services.runs.accepting:
        return web.json_response({"status": "unavailable", "detail": "shutting down"}, status=503)
    if not getattr(services.audit, "healthy", True):
        return web.json_response({"status": "unavailable", "detail": "the audit log accepts no more records"},
                                 status=503)
    if not await services.spawner_alive():
        return web.json_response({"status": "unavailable", "detail": "the spawner does not answer"}, status=503)
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    services: Services = request.app[SERVICES]
    return web.Response(body=services.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


def build_app(services: Services) -> web.Application:
    app = web.Application(middlewares=[errors_middleware], client_max_size=services.config.max_body_bytes)
    app[SERVICES] = services
    app.router.add_post("/v1/runs", post_run)
    app.router.add_get("/v1/runs/{id}", get_run)
    app.router.add_delete("/v1/runs/{id}", delete_run)
    app.router.add_get("/v1/runs/{id}/events", run_events)
    app.router.add_get("/v1/policies", get_policies)
    app.router.add_get("/v1/openapi.json", openapi)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
