"""Worker supervision never dies quietly: a worker that cannot even start is tried again."""

from __future__ import annotations

import asyncio

import pytest

from waypost import processes
from waypost.errors import WaypostError
from waypost.processes import Workers


def test_a_worker_that_cannot_start_is_tried_again_and_start_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(processes, "START_TIMEOUT_S", 0.5)
    monkeypatch.setattr(processes, "RESTART_S", 0.05)

    async def go() -> int:
        workers = Workers(["/nonexistent/waypost-worker"], 1, what="test worker")
        try:
            with pytest.raises(WaypostError, match="test workers did not start"):
                await workers.start()
            return workers.restarts
        finally:
            await workers.stop()

    assert asyncio.run(go()) >= 2  # the supervisor kept trying instead of ending


def test_workers_that_serve_are_started_and_stopped(tmp_path: object) -> None:
    script = "import sys, time; print('serving', flush=True); sys.stdin.read()"

    async def go() -> None:
        import sys

        workers = Workers([sys.executable, "-c", script], 2)
        await workers.start()
        assert len(workers.pids) == 2
        await workers.stop()
        assert workers.pids == []

    asyncio.run(go())
