"""Fair share: one tenant's flood does not starve another tenant's single job."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from sandboxd.client import SandboxClient
from tests.service.conftest import post_run

FLOOD = 200
JOB_S = 0.05
SLOTS = 2


async def test_flood_does_not_starve_another_tenant(service):
    svc = await service(slots=SLOTS)
    tenant_a = svc.token("tenant-a", max_running=SLOTS, max_queued=FLOOD)
    tenant_b = svc.token("tenant-b")
    body = {"argv": ["sleep", str(JOB_S)], "wait": False}
    connector = aiohttp.TCPConnector(limit=16)
    async with aiohttp.ClientSession(connector=connector) as session:
        flood = await asyncio.gather(*(post_run(session, svc.url, tenant_a, body) for _ in range(FLOOD)))
        assert [status for status, _, _ in flood] == [202] * FLOOD
        async with SandboxClient(svc.url, tenant_b) as client:
            submitted = time.monotonic()
            run = await client.run(["true"], wait=False)
            async for kind, _ in client.events(run["id"]):
                if kind == "started":
                    started = time.monotonic()
                    break
            waited = started - submitted
            row = await client.get(run["id"])
        # How far the flood had got when B started.
        a_started = 0
        async with SandboxClient(svc.url, tenant_a) as admin:
            for _, queued, _ in flood:
                a_row = await admin.get(queued["id"])
                if a_row["started_at"] is not None and row["started_at"] is not None \
                        and a_row["started_at"] < row["started_at"]:
                    a_started += 1
    print(f"\nfairness: B's job started {waited * 1000:.0f} ms after submission, behind "
          f"{a_started}/{FLOOD} of A's jobs (A's flood alone needs >= {FLOOD * JOB_S / SLOTS:.1f} s)")
    # Round robin: B waits for at most one slot to free (one job of A, plus the overhead of
    # starting jails), never for the flood.
    assert waited < 8 * JOB_S + 0.6, waited
    assert a_started < FLOOD // 4
