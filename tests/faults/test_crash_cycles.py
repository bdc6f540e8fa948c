"""kill -9 of a SQLite server during concurrent acknowledged writes, cycle after cycle:
not one acknowledged registration is lost, and the revision never goes backwards."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import httpx

from tests.conftest import ServerProcess
from tests.integration.test_durability import register_until_killed

# 20 cycles in make test; bench/faults.py runs more (WAYPOST_FAULT_CYCLES).
CYCLES = int(os.environ.get("WAYPOST_FAULT_CYCLES", "20"))


def test_kill_9_cycles_lose_no_acknowledged_write(
    start_server: Callable[..., ServerProcess], record_property: Callable[[str, object], None]
) -> None:
    server = start_server("--no-dns")
    port = server.port
    acked: list[str] = []
    revisions: list[int] = []
    restarts: list[float] = []
    for cycle in range(CYCLES):
        batch: list[str] = []
        # Writers name their instances w<writer>-<n>: prefix each cycle's own.
        asyncio.run(register_until_killed(server.url, batch, 40, server, prefix=f"c{cycle}-"))
        acked += batch
        restart = time.monotonic()
        server.start(f"127.0.0.1:{port}")
        restarts.append(time.monotonic() - restart)
        with httpx.Client(base_url=server.url, timeout=10) as c:
            stored = {i["id"] for i in c.get("/api/v1/instances").json()}
            revisions.append(c.get("/status").json()["revision"])
        missing = set(acked) - stored
        assert not missing, f"cycle {cycle}: {len(missing)} lost, e.g. {sorted(missing)[:5]}"
    assert revisions == sorted(revisions)
    assert len(acked) >= 40 * CYCLES
    record_property("recovery_s", round(max(restarts), 2))  # the slowest restart
