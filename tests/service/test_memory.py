"""The idle trimmer: once per idle period, never while runs are active."""

from __future__ import annotations

import asyncio

from sandboxd.service import memory


def test_release_free_memory_on_glibc() -> None:
    assert memory.release_free_memory() is True  # Debian: glibc has malloc_trim


async def test_trims_once_when_idle_and_not_while_busy() -> None:
    busy = {"runs": 0}
    trimmer = memory.IdleTrimmer(lambda: busy["runs"] == 0, delay_s=0.05)
    trimmer.went_idle()
    trimmer.went_idle()  # a second call in the same idle period schedules nothing new
    await asyncio.sleep(0.15)
    assert trimmer.trims == 1
    busy["runs"] = 1  # busy again by the time the timer fires: no trim
    trimmer.went_idle()
    await asyncio.sleep(0.15)
    assert trimmer.trims == 1
    trimmer.close()
