"""Per-request timeouts: a call that takes longer than request_timeout_s is answered 504."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sandboxd.service.app import SERVICES, errors_middleware
from sandboxd.service.config import ServiceConfig
from sandboxd.service.metrics import Metrics


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("s", "5")))
    return web.json_response({"late": True})


def _app(timeout: float) -> web.Application:
    app = web.Application(middlewares=[errors_middleware])
    app[SERVICES] = SimpleNamespace(config=ServiceConfig(state_dir="/nonexistent", request_timeout_s=timeout),
                                    metrics=Metrics())
    app.router.add_get("/v1/policies", _slow)
    app.router.add_get("/v1/runs/{id}/events", _slow)
    app.router.add_post("/v1/runs", _slow)
    return app


async def test_a_slow_call_is_answered_504_in_time() -> None:
    async with TestClient(TestServer(_app(0.2))) as client:
        started = asyncio.get_running_loop().time()
        response = await client.get("/v1/policies")
        assert asyncio.get_running_loop().time() - started < 2
        assert response.status == 504
        assert (await response.json())["error"]["code"] == "timeout"


async def test_event_streams_and_waiting_runs_are_not_cut() -> None:
    async with TestClient(TestServer(_app(0.1))) as client:
        assert (await client.get("/v1/runs/x/events?s=0.3")).status == 200
        assert (await client.post("/v1/runs?s=0.3")).status == 200
        assert (await client.get("/v1/policies?s=0.3")).status == 504
