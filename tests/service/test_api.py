"""Every endpoint and every error code of API v1, against a service in the test's event loop."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from sandboxd.client import ApiError, SandboxClient
from tests.service.conftest import headers, post_run, wait_until


async def get_json(session, url, token=None):
    async with session.get(url, headers=headers(token) if token else {}) as response:
        return response.status, await response.json(), response.headers


def error_of(body):
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}, body
    return body["error"]["code"], body["error"]["field"]


# --------------------------------------------------------------------------- endpoints


async def test_run_waiting_and_not_waiting_get_events(service):
    svc = await service()
    async with aiohttp.ClientSession() as session:
        status, body, hdrs = await post_run(session, svc.url, svc.admin,
                                            {"argv": ["/bin/sh", "-c", "echo hi; echo err >&2; cat > out.txt"],
                                             "stdin": "from stdin", "copy_out": ["out.txt"],
                                             "files": [{"path": "in/a.txt", "content": "x"}]})
        assert status == 200, body
        assert body["status"] == "finished" and body["verdict"] == "OK" and body["exit_code"] == 0
        assert body["stdout"] == "hi\n" and body["stderr"] == "err\n"
        assert body["files"] == [{"path": "out.txt", "size": 10, "refused": None,
                                  "content_base64": "ZnJvbSBzdGRpbg=="}]
        assert len(hdrs["X-Request-Id"]) == 32
        async with session.post(f"{svc.url}/v1/runs", json={"argv": ["true"]},
                                headers={**headers(svc.admin), "X-Request-Id": "my-request-1"}) as response:
            assert response.headers["X-Request-Id"] == "my-request-1"

        status, queued, _ = await post_run(session, svc.url, svc.admin,
                                           {"argv": ["/bin/sh", "-c", "echo one; sleep 0.2; echo two"],
                                            "wait": False, "output_encoding": "base64"})
        assert status == 202 and queued["status"] == "queued" and set(queued) == {"id", "status"}
        events = []
        async with SandboxClient(svc.url, svc.admin) as client:
            async for kind, data in client.events(queued["id"]):
                events.append((kind, data))
            kinds = [kind for kind, _ in events]
            assert kinds[0] == "queued" and kinds[-1] == "finished" and "started" in kinds
            assert b"".join(__import__("base64").b64decode(d["data_base64"]) for k, d in events
                            if k == "stdout") == b"one\ntwo\n"
            assert events[-1][1]["status"] == "finished" and events[-1][1]["result"]["verdict"] == "OK"
            run = await client.get(queued["id"])
            assert run["status"] == "finished" and run["tenant"] == "admin" and run["policy"] == "default"
            assert run["created_at"] <= run["started_at"] <= run["finished_at"]
            assert run["result"]["stdout"] == "b25lCnR3bwo="  # base64 of "one\ntwo\n"
            # A late subscriber replays everything and ends with the final event.
            late = [kind async for kind, _ in client.events(queued["id"])]
            assert late == kinds


async def test_delete_cancels_running_and_queued_runs(service):
    svc = await service(slots=1)
    async with SandboxClient(svc.url, svc.admin) as client:
        running = await client.run(["sleep", "30"], wait=False)
        queued = await client.run(["sleep", "30"], wait=False)
        await wait_until(lambda: _status_is(client, running["id"], "running"), 10)
        assert (await client.get(queued["id"]))["status"] == "queued"
        assert await client.cancel(queued["id"]) == {"id": queued["id"], "status": "cancelled"}
        started = asyncio.get_running_loop().time()
        assert await client.cancel(running["id"]) == {"id": running["id"], "status": "cancelled"}
        assert asyncio.get_running_loop().time() - started < 5
        for run_id in (running["id"], queued["id"]):
            row = await client.get(run_id)
            assert row["status"] == "cancelled" and row["reason"] == "cancelled by request"
        # Again: the final state, not an error.
        assert (await client.cancel(running["id"]))["status"] == "cancelled"
        # The slot is free again.
        assert (await client.run(["true"]))["verdict"] == "OK"


async def _status_is(client, run_id, status):
    return (await client.get(run_id))["status"] == status


async def test_policies_openapi_health_ready_metrics(service):
    svc = await service()
    async with aiohttp.ClientSession() as session:
        status, body, _ = await get_json(session, f"{svc.url}/v1/policies", svc.admin)
        assert status == 200
        names = {p["name"] for p in body["policies"]}
        assert "default" in names
        assert all(p["hash"].startswith("sha256:") for p in body["policies"])
        judge_only = svc.token("judge-only", policies=("judge",))
        status, body, _ = await get_json(session, f"{svc.url}/v1/policies", judge_only)
        assert [p["name"] for p in body["policies"]] == ["judge"]

        status, doc, _ = await get_json(session, f"{svc.url}/v1/openapi.json")
        assert status == 200 and doc["openapi"].startswith("3.1") and "/v1/runs" in doc["paths"]
        assert (await get_json(session, f"{svc.url}/healthz"))[:2] == (200, {"status": "ok"})
        assert (await get_json(session, f"{svc.url}/readyz"))[:2] == (200, {"status": "ok"})

        await post_run(session, svc.url, svc.admin, {"argv": ["true"]})
        async with session.get(f"{svc.url}/metrics") as response:
            assert response.status == 200 and response.content_type == "text/plain"
            text = await response.text()
        for name in ("sandboxd_jobs_total", "sandboxd_http_requests_total", "sandboxd_queue_depth",
                     "sandboxd_running_jobs", "sandboxd_job_duration_seconds", "sandboxd_queue_wait_seconds",
                     "sandboxd_spawner_up", "sandboxd_spawner_restarts_total"):
            assert f"# TYPE {name.removesuffix('_total')}" in text, name
        assert 'sandboxd_jobs_total{tenant="admin",verdict="OK"} 1.0' in text


# --------------------------------------------------------------------------- error codes


async def test_400_401_404_405_413_415(service):
    svc = await service(max_body_bytes=4096)
    url = f"{svc.url}/v1/runs"
    auth = headers(svc.admin)
    async with aiohttp.ClientSession() as session:
        # 401: no token, a malformed one, an unknown one, a revoked one
        revoked_secret, revoked = svc.tokens.add("gone")
        svc.tokens.revoke(revoked.id)
        await asyncio.sleep(0.6)
        for hdrs in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer sbx_" + "A" * 43},
                     headers(revoked_secret)):
            async with session.post(url, json={"argv": ["true"]}, headers=hdrs) as response:
                assert response.status == 401
                assert error_of(await response.json()) == ("unauthorized", None)
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
        for path in ("/v1/runs/x", "/v1/policies", "/v1/runs/x/events"):
            async with session.get(svc.url + path) as response:
                assert response.status == 401
        # 400
        async with session.post(url, data=b'{"argv": [', headers={**auth, "Content-Type": "application/json"}) as r:
            assert r.status == 400 and error_of(await r.json()) == ("invalid_json", None)
        async with session.post(url, data=b"\xff\xfe", headers={**auth, "Content-Type": "application/json"}) as r:
            assert r.status == 400 and error_of(await r.json()) == ("invalid_json", None)
        # 415
        async with session.post(url, data=b'{"argv": ["true"]}', headers={**auth, "Content-Type": "text/plain"}) as r:
            assert r.status == 415 and error_of(await r.json()) == ("unsupported_media_type", None)
        async with session.post(url, data=b'{"argv": ["true"]}', headers=auth) as r:  # no content type
            assert r.status == 415
        # 413
        big = json.dumps({"argv": ["echo", "x" * 8000]})
        async with session.post(url, data=big, headers={**auth, "Content-Type": "application/json"}) as r:
            assert r.status == 413 and error_of(await r.json()) == ("body_too_large", None)
        # 404: an unknown run, an unknown route
        for method, path in (("GET", "/v1/runs/nope"), ("DELETE", "/v1/runs/nope"),
                             ("GET", "/v1/runs/nope/events"), ("GET", "/v2/runs"), ("GET", "/")):
            async with session.request(method, svc.url + path, headers=auth) as r:
                assert r.status == 404 and error_of(await r.json())[0] == "not_found", (method, path)
        # 405
        for method, path, allowed in (("PUT", "/v1/runs", "POST"), ("GET", "/v1/runs", "POST"),
                                      ("POST", "/healthz", "GET"), ("PATCH", "/v1/runs/x", "DELETE,GET")):
            async with session.request(method, svc.url + path, headers=auth) as r:
                assert r.status == 405 and error_of(await r.json())[0] == "method_not_allowed"
                assert set(r.headers["Allow"].split(",")) >= set(allowed.split(",")) - {"HEAD"}
        # The service counted all of it and still serves.
        assert (await post_run(session, svc.url, svc.admin, {"argv": ["true"]}))[0] == 200


async def test_403_and_404_between_tenants(service):
    svc = await service()
    judge_only = svc.token("alpha", policies=("judge",))
    other = svc.token("beta")
    async with aiohttp.ClientSession() as session:
        status, body, _ = await post_run(session, svc.url, judge_only, {"argv": ["true"]})  # policy "default"
        assert status == 403 and error_of(body) == ("forbidden", "policy")
        status, body, _ = await post_run(session, svc.url, judge_only, {"argv": ["true"], "policy": "compile"})
        assert status == 403 and error_of(body) == ("forbidden", "policy")
        status, body, _ = await post_run(session, svc.url, judge_only, {"argv": ["true"], "policy": "judge"})
        assert status == 200, body
        run_id = body["id"]
        # beta cannot see, cancel or follow alpha's run; admin can.
        for method, path in (("GET", f"/v1/runs/{run_id}"), ("DELETE", f"/v1/runs/{run_id}"),
                             ("GET", f"/v1/runs/{run_id}/events")):
            async with session.request(method, svc.url + path, headers=headers(other)) as r:
                assert r.status == 404 and error_of(await r.json())[0] == "not_found"
        status, body, _ = await get_json(session, f"{svc.url}/v1/runs/{run_id}", svc.admin)
        assert status == 200 and body["tenant"] == "alpha"


async def test_422_names_the_field(service):
    svc = await service(max_file_bytes=1000, max_files_total_bytes=1500)
    token = svc.token("validation")
    cases = [
        ({}, "argv", None),
        ({"argv": []}, "argv", None),
        ({"argv": ["true"], "bogus": 1}, "bogus", "unknown field"),
        ({"argv": ["true"], "limits": {"wall_time": 1, "nope": 2}}, "limits.nope", "unknown field"),
        ({"argv": ["true"], "files": [{"path": "a", "content": "", "mode": 7}]}, "files[0].mode", "unknown field"),
        ({"argv": ["true"], "limits": {"wall_time": -1}}, "limits.wall_time", None),
        ({"argv": ["true"], "limits": {"memory": "1G"}}, "limits.memory", None),
        ({"argv": "true"}, "argv", None),
        ({"argv": ["a\u0000b"]}, "argv", "NUL"),
        ({"argv": [""]}, "argv", "empty"),
        ({"argv": ["true"], "wait": "yes"}, "wait", None),
        ({"argv": ["true"], "policy": "../etc/passwd"}, "policy", None),
        ({"argv": ["true"], "policy": "no-such-policy"}, "policy", None),
        ({"argv": ["true"], "env": {"1X": "y"}}, "env", None),
        ({"argv": ["true"], "output_encoding": "hex"}, "output_encoding", None),
        ({"argv": ["true"], "stdin": "a", "stdin_base64": "YQ=="}, "stdin_base64", "at most one"),
        ({"argv": ["true"], "stdin_base64": "!!"}, "stdin_base64", "base64"),
        ({"argv": ["true"], "files": [{"path": "../x", "content": ""}]}, "files[0].path", ".."),
        ({"argv": ["true"], "files": [{"path": "/etc/x", "content": ""}]}, "files[0].path", "absolute"),
        ({"argv": ["true"], "files": [{"path": "ok"}]}, "files[0]", "exactly one"),
        ({"argv": ["true"], "files": [{"path": "a", "content": "x" * 1001}]}, "files[0].content", "max_file_bytes"),
        ({"argv": ["true"], "files": [{"path": "a", "content": "x" * 900}, {"path": "b", "content": "y" * 900}]},
         "files[1].content", "max_files_total_bytes"),
        ({"argv": ["true"], "copy_out": ["ok", "../up"]}, "copy_out[1]", ".."),
        ({"argv": ["true"], "copy_out": [""]}, "copy_out[0]", "empty"),
        ([], "(body)", None),
    ]
    async with aiohttp.ClientSession() as session:
        for body, field, words in cases:
            status, answer, _ = await post_run(session, svc.url, token, body)
            assert status == 422, (body, answer)
            assert error_of(answer) == ("invalid_request", field), (body, answer)
            if words:
                assert words in answer["error"]["message"], (body, answer)
    # Nothing refused was stored or run.
    assert [row async for row in _runs(svc)] == []


async def test_429_rate_limited_and_queue_full(service):
    svc = await service(slots=1)
    slow = svc.token("slow", rate=0.01, burst=2)
    small = svc.token("small", max_running=1, max_queued=1)
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            assert (await post_run(session, svc.url, slow, {"argv": ["true"]}))[0] == 200
        status, body, hdrs = await post_run(session, svc.url, slow, {"argv": ["true"]})
        assert status == 429 and error_of(body) == ("rate_limited", None)
        assert int(hdrs["Retry-After"]) >= 1
        # Every route that authenticates counts against the bucket.
        async with session.get(f"{svc.url}/v1/policies", headers=headers(slow)) as r:
            assert r.status == 429 and "Retry-After" in r.headers

        first = await post_run(session, svc.url, small, {"argv": ["sleep", "30"], "wait": False})
        second = await post_run(session, svc.url, small, {"argv": ["sleep", "30"], "wait": False})
        assert first[0] == 202 and second[0] == 202
        status, body, hdrs = await post_run(session, svc.url, small, {"argv": ["true"], "wait": False})
        assert status == 429 and error_of(body) == ("queue_full", None)
        assert "queued" in body["error"]["message"] and int(hdrs["Retry-After"]) >= 1
        # Other tenants are not affected.
        assert (await post_run(session, svc.url, svc.admin, {"argv": ["true"], "wait": False}))[0] == 202
        for run in (first[1], second[1]):
            async with session.delete(f"{svc.url}/v1/runs/{run['id']}", headers=headers(small)) as r:
                assert r.status == 200 and (await r.json())["status"] == "cancelled"
        # With its runs gone the token may queue again.
        assert (await post_run(session, svc.url, small, {"argv": ["true"]}))[0] == 200


async def test_queue_full_over_all_tenants(service):
    svc = await service(slots=1, max_queued_total=2)
    tokens = [svc.token(f"t{i}") for i in range(4)]  # all known to the service before the first post
    async with aiohttp.ClientSession() as session:
        answers = [await post_run(session, svc.url, token, {"argv": ["sleep", "30"], "wait": False})
                   for token in tokens]
        # one running, two queued, the fourth refused
        assert [a[0] for a in answers] == [202, 202, 202, 429]
        assert error_of(answers[3][1])[0] == "queue_full" and "Retry-After" in answers[3][2]


async def test_503_readyz_while_shutting_down(service):
    svc = await service(shutdown_grace_s=30)
    # One kept-alive connection: it stays served while the service drains, new ones are refused.
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        status, run, _ = await post_run(session, svc.url, svc.admin, {"argv": ["sleep", "2"], "wait": False})
        assert status == 202
        assert (await get_json(session, f"{svc.url}/readyz"))[0] == 200
        await wait_until(lambda: _get_status(session, svc, run["id"], "running"), 10)
        svc.stop_event.set()
        status, body, _ = await get_json(session, f"{svc.url}/readyz")
        assert status == 503 and body == {"status": "unavailable", "detail": "shutting down"}
        assert (await get_json(session, f"{svc.url}/healthz"))[0] == 200
        status, body, hdrs = await post_run(session, svc.url, svc.admin, {"argv": ["true"]})
        assert status == 503 and error_of(body)[0] == "unavailable" and "Retry-After" in hdrs
    # The running job gets its grace and finishes normally.
    await asyncio.wait_for(svc.task, 30)
    from sandboxd.service.store import JobStore
    store = await JobStore.open(str(svc.state_dir / "jobs.sqlite"))
    try:
        row = await store.get(run["id"])
        assert row.status == "finished" and row.result["verdict"] == "OK"
    finally:
        await store.close()


async def _get_status(session, svc, run_id, status):
    return (await get_json(session, f"{svc.url}/v1/runs/{run_id}", svc.admin))[1]["status"] == status


async def test_waiting_client_disconnect_cancels_the_run(service):
    svc = await service()
    async with aiohttp.ClientSession() as session:
        request = asyncio.create_task(post_run(session, svc.url, svc.admin, {"argv": ["sleep", "30"]}))
        await asyncio.sleep(1.0)
        request.cancel()  # the connection closes
    async with SandboxClient(svc.url, svc.admin) as client:
        async def find():
            rows = [r async for r in _runs(svc)]
            return rows if rows and rows[0].status == "cancelled" else None
        rows = await wait_until(find, 10)
        assert rows[0].reason == "the client disconnected while waiting"
        assert (await client.run(["true"]))["verdict"] == "OK"


async def _runs(svc):
    from sandboxd.service.store import JobStore
    store = await JobStore.open(str(svc.state_dir / "jobs.sqlite"))
    try:
        for status in ("queued", "running", "finished", "failed", "cancelled"):
            for row in await store.by_status(status):
                yield row
    finally:
        await store.close()


async def test_client_raises_api_errors(service):
    svc = await service()
    async with SandboxClient(svc.url, "sbx_" + "B" * 43) as client:
        try:
            await client.run(["true"])
        except ApiError as exc:
            assert exc.status == 401 and exc.code == "unauthorized"
        else:
            raise AssertionError("401 expected")
    async with SandboxClient(svc.url, svc.admin) as client:
        try:
            await client.run(["true"], limits={"pids": 0})
        except ApiError as exc:
            assert exc.status == 422 and exc.field == "limits.pids"
        else:
            raise AssertionError("422 expected")
        result = await client.run(["cat"], stdin=b"\x00\x01", output_encoding="base64",
                                  files={"bin.dat": b"\xff"}, env={"A": "1"}, limits={"wall_time": 5})
        assert result["stdout"] == "AAE=" and result["verdict"] == "OK"
        assert await client.health() == {"status": "ok"}
        assert "default" in {p["name"] for p in await client.policies()}
