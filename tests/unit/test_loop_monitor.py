"""The event-loop stall figure of ``/status``: a loop blocked by a long callback (a full
scan of the registry, a collection) shows as a stall of about that length."""

from __future__ import annotations

import asyncio
import time

from tests.conftest import LoopGuard, until
from waypost.aio import LoopMonitor


def test_a_blocked_loop_shows_as_a_stall_of_about_that_length() -> None:
    # This test blocks its loop on purpose (80 ms): held to the suite's standard limits
    # even in an audit run with a lower wall-clock limit.
    with LoopGuard(cpu_limit_s=0.1, wall_limit_s=1.0) as guard:
        asyncio.run(_blocked_loop())
    assert guard.reports == []


async def _blocked_loop() -> None:
    mon = LoopMonitor(interval_s=0.005, threshold_s=0.02)
    mon.start()
    try:
        # A callback that holds the loop for 80 ms, as a scan of a million entries would
        # (the fault itself; a loaded machine may add stalls of its own, hence max).
        asyncio.get_running_loop().call_soon(time.sleep, 0.08)
        await until(lambda: mon.max_stall_s >= 0.06, "the stall to be measured")
        assert mon.stalls >= 1
        assert mon.max_stall_s < 5.0
        at, late = max(mon.recent, key=lambda r: r[1])
        assert late >= 0.06
        assert abs(at - time.time()) < 5
    finally:
        mon.stop()
