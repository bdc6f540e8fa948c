"""The event-loop stall figure of ``/status``: a loop blocked by a long callback (a full
scan of the registry, a collection) shows as a stall of about that length."""

from __future__ import annotations

import asyncio
import time

from waypost.aio import LoopMonitor


async def _until(cond: object, deadline_s: float = 5.0) -> None:
    end = time.monotonic() + deadline_s
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.005)


def test_a_blocked_loop_shows_as_a_stall_of_about_that_length() -> None:
    asyncio.run(_blocked_loop())


async def _blocked_loop() -> None:
    mon = LoopMonitor(interval_s=0.005, threshold_s=0.02)
    mon.start()
    try:
        await asyncio.sleep(0.02)
        # A callback that holds the loop for 80 ms, as a scan of a million entries would.
        asyncio.get_running_loop().call_soon(time.sleep, 0.08)
        await _until(lambda: mon.stalls >= 1)
        assert 0.06 <= mon.max_stall_s < 1.0
        (at, late), *_ = mon.recent
        assert late >= 0.06
        assert abs(at - time.time()) < 5
    finally:
        mon.stop()
