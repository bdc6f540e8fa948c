"""The SQLite disk fills up: writes get a clear 507, reads go on, nothing is corrupted,
and writes resume once space is freed (and across a restart)."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import instance
from waypost.testing import ServerProcess


def test_a_full_disk_refuses_writes_clearly_keeps_reads_and_recovers(
    small_fs: Path, record_property: Callable[[str, object], None]
) -> None:
    data = small_fs / "data"
    filler = small_fs / "filler"
    # Most of the 4 MiB taken by something else: the registry gets what is left.
    filler.write_bytes(os.urandom(2 * 1024 * 1024))
    server = ServerProcess(["--no-dns"], data).start()
    try:
        acked: list[str] = []
        refused: httpx.Response | None = None
        pad = {"pad": "x" * 400}
        with httpx.Client(base_url=server.url, timeout=10) as h:
            for n in range(5000):
                iid = f"i-{n}"
                r = h.put(f"/api/v1/instances/{iid}", json=instance(iid, meta=pad))
                if r.status_code != 200:
                    refused = r
                    break
                acked.append(iid)
            assert refused is not None, "the disk never filled"
            assert refused.status_code == 507, refused.text
            body = refused.json()
            assert body["error"] == "insufficient_storage"
            assert "disk is full" in body["message"]
            # Reads go on, with every acknowledged write.
            listed = {i["id"] for i in h.get("/api/v1/instances").json()}
            assert set(acked) <= listed
            assert h.get("/health").status_code in (200, 503)
            # Space returns: writes go through again.
            filler.unlink()
            freed = time.monotonic()
            after = h.put("/api/v1/instances/after-1", json=instance("after-1", meta=pad))
            assert after.status_code == 200, after.text
            record_property("recovery_s", round(time.monotonic() - freed, 3))
        server.stop()
        with sqlite3.connect(data / "waypost.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        server.start()
        with httpx.Client(base_url=server.url, timeout=10) as h:
            listed = {i["id"] for i in h.get("/api/v1/instances").json()}
        assert {*acked, "after-1"} <= listed
    finally:
        server.stop()
