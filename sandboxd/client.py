"""A small async client for the sandboxd HTTP API (web backends use it; so do the tests).

    async with SandboxClient("http://127.0.0.1:8080", token) as client:
        result = await client.run(["python3", "-c", "print(1)"], policy="default")
        print(result["verdict"], result["stdout"])
"""

from __future__ import annotations

import base64
import json
from typing import Any, AsyncIterator

import aiohttp


class ApiError(Exception):
    """An error answer of the API: ``status``, ``code`` and ``field`` from its JSON body."""

    def __init__(self, status: int, body: dict[str, Any], retry_after: str | None = None) -> None:
        error = body.get("error") or {}
        self.status = status
        self.code = error.get("code", "unknown")
        self.field = error.get("field")
        self.message = error.get("message", "")
        self.retry_after = retry_after
        super().__init__(f"{status} {self.code}: {self.message}" + (f" ({self.field})" if self.field else ""))


class SandboxClient:
    def __init__(self, base_url: str, token: str | None, *, unix_socket: str | None = None,
                 timeout: float = 330.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        connector = aiohttp.UnixConnector(path=unix_socket) if unix_socket else None
        self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout))

    async def __aenter__(self) -> "SandboxClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    async def _request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self._session.request(method, self.base_url + path, headers=self._headers, **kwargs) as response:
            if response.content_type == "application/json":
                body = await response.json()
            else:
                body = await response.text()
            if response.status >= 400:
                raise ApiError(response.status, body if isinstance(body, dict) else {},
                               response.headers.get("Retry-After"))
            return response.status, body

    async def run(self, argv: list[str], *, policy: str = "default", stdin: str | bytes | None = None,
                  files: dict[str, str | bytes] | None = None, copy_out: list[str] | None = None,
                  env: dict[str, str] | None = None, limits: dict[str, Any] | None = None,
                  wait: bool = True, output_encoding: str = "text") -> dict[str, Any]:
        """Submit a run; with ``wait`` the finished result, else ``{"id", "status"}``."""
        body: dict[str, Any] = {"policy": policy, "argv": argv, "wait": wait, "output_encoding": output_encoding}
        if isinstance(stdin, bytes):
            body["stdin_base64"] = base64.b64encode(stdin).decode()
        elif stdin is not None:
            body["stdin"] = stdin
        if files:
            body["files"] = [{"path": path, "content_base64": base64.b64encode(data).decode()}
                             if isinstance(data, bytes) else {"path": path, "content": data}
                             for path, data in files.items()]
        if copy_out:
            body["copy_out"] = copy_out
        if env:
            body["env"] = env
        if limits:
            body["limits"] = limits
        _status, result = await self._request("POST", "/v1/runs", json=body)
        return result

    async def get(self, run_id: str) -> dict[str, Any]:
        return (await self._request("GET", f"/v1/runs/{run_id}"))[1]

    async def cancel(self, run_id: str) -> dict[str, Any]:
        return (await self._request("DELETE", f"/v1/runs/{run_id}"))[1]

    async def policies(self) -> list[dict[str, Any]]:
        return (await self._request("GET", "/v1/policies"))[1]["policies"]

    async def events(self, run_id: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """The run's Server-Sent Events as (kind, data) until ``finished``."""
        async with self._session.get(f"{self.base_url}/v1/runs/{run_id}/events", headers=self._headers) as response:
            if response.status >= 400:
                raise ApiError(response.status, await response.json())
            kind, data = None, []
            async for raw in response.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])
                elif line == "" and kind is not None:
                    yield kind, json.loads("\n".join(data))
                    if kind == "finished":
                        return
                    kind, data = None, []

    async def health(self) -> dict[str, Any]:
        return (await self._request("GET", "/healthz"))[1]
