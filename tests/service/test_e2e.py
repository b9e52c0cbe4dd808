"""End to end: the real ``python -m sandboxd serve`` process, tokens made with the real CLI,
jobs run through ``SandboxClient`` and through the ``curl`` command of docs/service.md;
stop with SIGTERM and start again on the same state directory."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sandboxd.client import ApiError, SandboxClient
from tests.service.conftest import REPO, cli_token, descendants, free_port, job_cgroups, wait_until

FINAL = {"finished", "failed", "cancelled"}


async def test_real_server_with_cli_tokens(real_server, tmp_path):
    state = tmp_path / "state"
    server = real_server(state)
    alpha = cli_token(state, "alpha", "--rate", "1000", "--burst", "1000")
    judge = cli_token(state, "beta", "--policy", "judge", "--max-running", "1", "--max-queued", "2")
    assert "sbx_" not in server.log()  # the admin token is in a file, never in the log
    assert oct((state / "admin-token").stat().st_mode & 0o777) == "0o600"
    await asyncio.sleep(0.6)  # tokens.json is re-read at most every 0.5 s
    async with SandboxClient(server.url, alpha) as client:
        assert (await client.health())["status"] == "ok"
        result = await client.run(["/bin/sh", "-c", "echo $((6*7)); id -u; hostname"],
                                  files={"script.py": "print('hello')\n"}, env={"A": "1"})
        assert result["verdict"] == "OK" and result["stdout"] == "42\n0\nsandbox\n"
        assert result["layers"]["no_new_privs"] is True and result["layers"]["capabilities_empty"] is True
        queued = await client.run(["/bin/sh", "-c", "sleep 0.3; echo late"], wait=False)
        kinds = [kind async for kind, _ in client.events(queued["id"])]
        assert kinds[0] == "queued" and kinds[-1] == "finished" and "stdout" in kinds
        assert (await client.get(queued["id"]))["result"]["stdout"] == "late\n"
        results = await asyncio.gather(*(client.run(["echo", str(i)]) for i in range(10)))
        assert [r["stdout"] for r in results] == [f"{i}\n" for i in range(10)]
    async with SandboxClient(server.url, judge) as client:
        with pytest.raises(ApiError) as refused:
            await client.run(["true"])
        assert refused.value.status == 403 and refused.value.field == "policy"
        assert (await client.run(["true"], policy="judge"))["verdict"] == "OK"
        with pytest.raises(ApiError) as hidden:
            await client.get(queued["id"])  # alpha's run
        assert hidden.value.status == 404
    # Revoked with the CLI while the service runs: refused from then on.
    listing = json.loads(subprocess.run([_python(), "-m", "sandboxd", "token", "list", "--json", "--state-dir",
                                         str(state)], cwd=REPO, capture_output=True, text=True, check=True).stdout)
    beta_id = next(t["id"] for t in listing if t["tenant"] == "beta")
    subprocess.run([_python(), "-m", "sandboxd", "token", "revoke", beta_id, "--state-dir", str(state)],
                   cwd=REPO, capture_output=True, check=True)
    await asyncio.sleep(0.6)
    async with SandboxClient(server.url, judge) as client:
        with pytest.raises(ApiError) as gone:
            await client.policies()
        assert gone.value.status == 401
    assert server.terminate(30) == 0


def _python() -> str:
    import sys
    return sys.executable


def documented_curl() -> str:
    text = (REPO / "docs" / "service.md").read_text()
    match = re.search(r"<!-- tested: curl -->\s*```sh\n(.*?)```", text, re.S)
    assert match, "docs/service.md lost its tested curl example"
    return match.group(1)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_documented_curl_command(real_server, tmp_path):
    state = tmp_path / "state"
    port = free_port()
    env = {"SANDBOXD_LISTEN": f"127.0.0.1:{port}", "SANDBOXD_STATE_DIR": str(state)}
    server = real_server(state, port=port, env=env)
    command = documented_curl()
    out = subprocess.run(["bash", "-c", command], env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["verdict"] == "OK", result
    assert result["stdout"] == "hello from sandbox\n"
    assert server.proc.poll() is None


def _store_rows(state: Path) -> dict[str, tuple[str, str | None]]:
    import sqlite3
    with sqlite3.connect(state / "jobs.sqlite") as db:
        return {row[0]: (row[1], row[2]) for row in db.execute("SELECT id, status, reason FROM runs")}


async def test_restart_keeps_every_run(real_server, tmp_path):
    state = tmp_path / "state"
    config = tmp_path / "sandboxd.toml"
    config.write_text("slots = 1\nshutdown_grace_s = 0.5\n")
    server = real_server(state, config=config)
    token = cli_token(state, "restart", "--rate", "1000", "--burst", "1000")
    await asyncio.sleep(0.6)
    async with SandboxClient(server.url, token) as client:
        ids = [(await client.run(["sleep", "2"], wait=False))["id"] for _ in range(4)]

        async def first_running():
            return (await client.get(ids[0]))["status"] == "running"
        await wait_until(first_running, 15)
        assert [(await client.get(i))["status"] for i in ids[1:]] == ["queued"] * 3
    spawners = descendants(server.proc.pid)
    started = time.monotonic()
    assert server.terminate(30) == 0
    assert time.monotonic() - started < 10  # grace 0.5 s, then the running job is cancelled
    rows = _store_rows(state)
    assert rows[ids[0]] == ("cancelled", "the service shut down before the run finished")
    assert [rows[i][0] for i in ids[1:]] == ["queued"] * 3  # kept for the next start
    # Nothing of the old service is left running.
    await wait_until(_async(lambda: not any(os.path.exists(f"/proc/{p}") for p in spawners)), 10)
    assert job_cgroups(spawners) == []

    again = real_server(state, config=config)
    async with SandboxClient(again.url, token) as client:
        async def all_final():
            return all([(await client.get(i))["status"] in FINAL for i in ids])
        await wait_until(all_final, 30, interval=0.2)
        final = {i: await client.get(i) for i in ids}
    assert final[ids[0]]["status"] == "cancelled" and final[ids[0]]["reason"]
    for run_id in ids[1:]:
        assert final[run_id]["status"] == "finished" and final[run_id]["result"]["verdict"] == "OK"
    assert again.terminate(30) == 0


async def test_killed_service_fails_running_runs_on_restart(real_server, tmp_path):
    """SIGKILL (no chance to clean up): on the next start the run that was running is failed
    with a reason, the queued one runs, and the old jobs did not outlive their spawner."""
    state = tmp_path / "state"
    config = tmp_path / "sandboxd.toml"
    config.write_text("slots = 1\n")
    server = real_server(state, config=config)
    token = cli_token(state, "killed", "--rate", "1000", "--burst", "1000")
    await asyncio.sleep(0.6)
    async with SandboxClient(server.url, token) as client:
        running = (await client.run(["sleep", "30"], wait=False))["id"]
        queued = (await client.run(["echo", "after"], wait=False))["id"]

        async def is_running():
            return (await client.get(running))["status"] == "running"
        await wait_until(is_running, 15)
    old = descendants(server.proc.pid)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    # The spawner notices its parent is gone and takes its jobs with it.
    await wait_until(_async(lambda: not any(os.path.exists(f"/proc/{p}") for p in old)), 15)
    again = real_server(state, config=config)
    async with SandboxClient(again.url, token) as client:
        async def done():
            return (await client.get(queued))["status"] in FINAL
        await wait_until(done, 20)
        failed = await client.get(running)
        assert failed["status"] == "failed" and failed["reason"] == "the service stopped while the run was running"
        assert (await client.get(queued))["result"]["stdout"] == "after\n"
    assert again.terminate(30) == 0


def _async(predicate):
    async def wrapped():
        return predicate()
    return wrapped
