"""Copy-out through the service from a job that plants traps in its work directory: each trap
is refused or capped in ``files``, nothing is read from the host, the service keeps serving."""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections import Counter

import aiohttp

from tests.service.conftest import post_run


async def test_hostile_copy_out(service, tmp_path):
    svc = await service()
    token = svc.token("hostile")
    secret = "CANARY-" + secrets.token_hex(16)
    canary_dir = tmp_path / "host"
    canary_dir.mkdir()
    canary = canary_dir / "canary.txt"
    canary.write_text(secret + "\n")
    os.chmod(canary_dir, 0o755)
    os.chmod(canary, 0o644)
    script = f"""
        ln -s {canary} link
        ln -s {canary_dir} dirlink
        ln -s /etc linketc
        mkfifo fifo
        echo hard > a && ln a b
        truncate -s 1G big
        mkdir many && cd many && seq 10000 | xargs touch && cd ..
        echo planted
    """
    async with aiohttp.ClientSession() as session:
        status, body, _ = await post_run(session, svc.url, token, {
            "argv": ["/bin/sh", "-c", script],
            "copy_out": ["link", "dirlink/canary.txt", "linketc/passwd", "fifo", "a", "b", "big", "many/*"],
            "limits": {"wall_time": 60}})
        assert status == 200, body
        assert body["verdict"] == "OK" and body["stdout"] == "planted\n", body["stderr"]
        raw = json.dumps(body)
        assert secret not in raw
        for item in body["files"]:
            if item["content_base64"]:
                assert secret.encode() not in base64.b64decode(item["content_base64"])
        by_path = {f["path"]: f for f in body["files"]}
        assert by_path["link"]["refused"] == "symlink"
        assert by_path["dirlink"]["refused"] == "symlink"  # a pattern would go through it
        assert by_path["linketc"]["refused"] == "symlink"
        assert by_path["fifo"]["refused"] == "not a regular file: fifo"
        assert by_path["a"]["refused"] == by_path["b"]["refused"] == "hard link"
        assert by_path["big"]["refused"] == "too large" and by_path["big"]["size"] == 1 << 30
        many = [f for f in body["files"] if f["path"].startswith("many")]
        returned = [f for f in many if f["refused"] is None]
        reasons = Counter(f["refused"] for f in many if f["refused"])
        assert len(returned) == 64 and all(f["size"] == 0 for f in returned)  # CopyOutLimits.max_files
        assert set(reasons) <= {"limit: max_files", "limit: max_scanned_entries"}, reasons
        assert len(body["files"]) <= 10_000 + 16  # bounded by max_scanned_entries
        # Every entry has data only when not refused.
        assert all((f["refused"] is None) == (f["content_base64"] is not None) for f in body["files"])

        # The service still answers, and every work directory is gone.
        async with session.get(f"{svc.url}/healthz") as response:
            assert response.status == 200
        status, body, _ = await post_run(session, svc.url, token, {"argv": ["echo", "still here"]})
        assert status == 200 and body["stdout"] == "still here\n"
    assert list((svc.state_dir / "work").iterdir()) == []
    assert canary.read_text() == secret + "\n"
