"""The server's wall clock jumps (libfaketime, for that one process: two hours ahead, then
back): TTL checks and leases run on the monotonic clock, so nothing expires early or
late; heartbeats keep a TTL instance passing through both jumps, and it still goes
critical on time once they stop."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess, instance, wait_until
from waypost import Client

LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"
TTL_S = 2.0


def test_a_wall_clock_jump_expires_nothing_early_or_late(tmp_path: Path) -> None:
    if shutil.which("faketime") is None or not Path(LIBFAKETIME).exists():
        pytest.skip("libfaketime is not installed (make test installs faketime)")
    offset = tmp_path / "offset"
    offset.write_text("+0\n")
    env = {
        "LD_PRELOAD": LIBFAKETIME,
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    server = ServerProcess(["--no-dns"], tmp_path / "server", env=env).start()
    try:
        with Client(server.url) as c, httpx.Client(base_url=server.url, timeout=10) as h:
            c.register(instance("ttl-1", ttl=f"{TTL_S:g}s"))
            beat = c.keepalive("ttl-1", interval_s=TTL_S / 4)
            lease = c.lease(f"{TTL_S:g}s")
            try:
                c.register(instance("leased-1", lease=lease.id))
                jumps_then_expiry(h, offset, beat)
            finally:  # stopped whatever happened, while the client is still open
                beat.stop()
                lease.stop()
    finally:
        server.stop()


def jumps_then_expiry(h: httpx.Client, offset: Path, beat: Any) -> None:
    def status() -> dict[str, str]:
        return {i["id"]: i["status"] for i in h.get("/api/v1/services/web").json()}

    wait_until(lambda: status().get("ttl-1") == "passing", 10, "the heartbeat")
    before = h.get("/status").json()["uptime_s"]
    for jump in ("+7200", "-7200"):  # two hours ahead, then back to now
        offset.write_text(jump + "\n")
        skewed_at = time.monotonic()

        def two_ttls_passing(since: float = skewed_at) -> bool:
            assert status() == {"ttl-1": "passing", "leased-1": "passing"}
            return time.monotonic() - since > TTL_S * 2

        wait_until(two_ttls_passing, TTL_S * 10, "two TTLs under the jump", 0.2)
    # The server did see the jumps (its wall-clock uptime moved by hours).
    offset.write_text("+7200\n")
    assert h.get("/status").json()["uptime_s"] > before + 3600
    beat.stop()
    stopped = time.monotonic()
    wait_until(lambda: status().get("ttl-1") == "critical", TTL_S * 3, "expiry")
    # Not early either: the last heartbeat went out at most one interval (TTL / 4) before
    # the stop, so the TTL ran out no sooner than that much before `stopped` + TTL; an
    # expiry that read the jumped wall clock would come at once.
    assert time.monotonic() - stopped >= TTL_S * 0.75 - 0.25
