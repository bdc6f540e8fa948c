"""Regression guards for what bites in long runs: each fails on the foundation's code."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from tests.conftest import until
from waypost.api.blocking import AnswerCache
from waypost.catalog import MAX_EMPTY_SERVICES, Catalog
from waypost.errors import StoreError
from waypost.model import Event, Instance, Query, convert_instance
from waypost.sse import SseParser, SseTooLarge
from waypost.store import Put, SqliteStore
from waypost.testing import running_server


def inst(iid: str, service: str = "web", **f: Any) -> Instance:
    return convert_instance({"id": iid, "service": service, "address": "10.0.0.1", "port": 80, **f})


def test_idle_revision_waiters_leave_at_once_over_10000_timeouts() -> None:
    async def go() -> None:
        c = Catalog()
        c.load([], 5)
        # An idle event stream waits for the next revision, times out, and waits again.
        for _ in range(10_000):
            assert not await c.wait_for_revision(6, 0)
        assert c.waiting <= 1  # at most the one revision it waits for, never a pile
        # Many streams waiting at once for different revisions, all timing out (in rounds
        # of 250, so no one step of the loop runs long).
        for first in range(0, 10_000, 250):
            await asyncio.gather(
                *(c.wait_for_revision(6 + n % 500, 0.001) for n in range(first, first + 250))
            )
        assert c.waiting <= 64
        woken = asyncio.create_task(c.wait_for_revision(6, 5))
        await asyncio.sleep(0)
        c.apply([Event(revision=6, type="put", entry=inst("w"))])
        assert await woken
        assert c.waiting <= 64  # no waiter left; at most a few stale heap slots

    # A stress loop of tiny steps: debug mode's per-future tracebacks would only slow it.
    with asyncio.Runner(debug=False) as runner:
        runner.run(go())


def test_per_service_revisions_are_bounded_as_services_come_and_go() -> None:
    c = Catalog()
    c.load([], 0)
    rev = 0
    for n in range(MAX_EMPTY_SERVICES + 5_000):
        i = inst("x", f"svc-{n}")
        c.apply([Event(revision=rev + 1, type="put", entry=i)])
        c.apply([Event(revision=rev + 2, type="delete", entry=i)])
        rev += 2
    assert len(c._service_rev) + len(c._empty_services) <= MAX_EMPTY_SERVICES
    # A recently emptied service keeps its revision (a blocking query does not wake).
    last = f"svc-{MAX_EMPTY_SERVICES + 4_999}"
    assert c.service_revision(last) == rev


def test_a_relist_after_a_gap_wakes_and_refreshes_every_changed_service() -> None:
    c = Catalog()
    c.load([(inst("w1"), 1), (inst("w2"), 2), (inst("d1", "db"), 3)], 3)
    cache = AnswerCache(c)
    web = ("instances", Query(service="web"))
    db = ("instances", Query(service="db"))
    assert [i["id"] for i in msgspec.json.decode(cache.get(web).body)] == ["w1", "w2"]
    before_db = cache.get(db).index
    # The pump fell behind; meanwhile w2 and every db instance were deleted (revisions 4-9).
    c.load([(inst("w1"), 1), (inst("a1", "api"), 9)], 9)
    ans = cache.get(web)
    assert [i["id"] for i in msgspec.json.decode(ans.body)] == ["w1"]
    assert ans.index == 9
    assert cache.get(db).body == b"[]"
    assert cache.get(db).index > before_db


def test_sparse_revisions_move_the_catalog_without_events() -> None:
    c = Catalog()
    c.load([], 3)
    seen: list[int] = []
    c.add_listener(seen.append)
    c.apply([], revision=7)
    assert (c.revision, seen, c.events_since(3)) == (7, [7], [])


def test_the_sse_parser_is_bounded() -> None:
    def feed_until_refused(chunk: bytes) -> int:
        p = SseParser()
        for n in range(1, 200):
            try:
                p.feed(chunk)
            except SseTooLarge:
                return n * len(chunk)
        raise AssertionError("the parser buffered 12 MiB without complaint")

    assert feed_until_refused(b"x" * (64 * 1024)) <= 5 * 1024 * 1024  # a line never ending
    # An event that never ends (data lines, no blank line).
    assert feed_until_refused(b"data: " + b"y" * (64 * 1024) + b"\n") <= 5 * 1024 * 1024


@pytest.mark.timeout(20)
def test_the_sse_parser_is_linear_in_what_it_is_fed() -> None:
    # 200,000 events in one chunk: the foundation's parser copied the rest of the buffer
    # for every line (quadratic: tens of gigabytes of copying here).
    chunk = b"".join(b"id: %d\nevent: put\ndata: {}\n\n" % n for n in range(200_000))
    got = SseParser().feed(chunk)
    assert len(got) == 200_000
    assert got[-1].id == "199999"
    # Split anywhere, the same messages come out.
    p = SseParser()
    pieces = [chunk[i : i + 7919] for i in range(0, len(chunk), 7919)]
    assert sum(len(p.feed(piece)) for piece in pieces) == 200_000


def test_the_event_log_time_column_is_indexed(tmp_path: Path) -> None:
    async def go() -> None:
        s = SqliteStore(tmp_path / "w.db")
        await s.open()
        await s.close()

    asyncio.run(go())
    db = sqlite3.connect(tmp_path / "w.db")
    from waypost.store.sqlite import NEWEST_BEFORE_SQL

    plan = db.execute("EXPLAIN QUERY PLAN " + NEWEST_BEFORE_SQL, (5.0,)).fetchall()
    db.close()
    assert any("USING INDEX" in row[-1] or "USING COVERING INDEX" in row[-1] for row in plan), plan


def test_the_sqlite_writer_answers_every_caller_whatever_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import waypost.store.sqlite as sqlite_store

    async def go() -> None:
        s = SqliteStore(tmp_path / "w.db")
        await s.open()
        real = sqlite_store._encode

        def broken(*args: Any) -> Any:
            raise RuntimeError("a bug, not a database error")

        monkeypatch.setattr(sqlite_store, "_encode", broken)
        results = await asyncio.wait_for(
            asyncio.gather(
                *(s.apply([Put(entry=inst(f"w{n}"))]) for n in range(20)), return_exceptions=True
            ),
            5,
        )
        assert all(isinstance(r, StoreError) for r in results), results
        monkeypatch.setattr(sqlite_store, "_encode", real)
        assert await s.apply([Put(entry=inst("ok"))]) == 1  # the thread lives on
        assert [e.key for e in await s.list()] == ["ok"]
        await s.close()

    asyncio.run(go())


def test_a_failing_pump_recovers_and_health_says_503_meanwhile() -> None:
    async def go() -> None:
        async with running_server() as server, aiohttp.ClientSession(server.url) as http:
            cat = server.catalog
            real = cat.apply
            broken = True

            def apply(events: Any, revision: int | None = None) -> None:
                if broken:
                    raise RuntimeError("an unexpected bug in the catalog")
                real(events, revision)

            cat.apply = apply  # type: ignore[method-assign]
            body = {"service": "web", "address": "10.0.0.1", "port": 80}
            put = asyncio.create_task(http.put("/api/v1/instances/w1", json=body))

            async def health(status: int) -> dict[str, Any] | None:
                async with http.get("/health") as r:
                    return await r.json() if r.status == status else None

            failing = await until(lambda: health(503), "/health to say 503", timeout_s=5)
            assert "internal error" in failing["message"]
            broken = False
            await until(lambda: health(200), "the pump to recover", timeout_s=10)
            (await put).release()
            async with http.get("/api/v1/instances/w1") as r:
                assert r.status == 200
            async with http.get("/status") as r:
                assert (await r.json())["following"] is True

    asyncio.run(go())


def test_the_event_stream_handler_lets_cancellation_through() -> None:
    async def go() -> None:
        from waypost.api.app import STREAMS

        async with (
            running_server() as server,
            aiohttp.ClientSession(server.url) as http,
            http.get("/api/v1/events") as r,
        ):
            await r.content.readline()
            app = server._runner.app  # type: ignore[union-attr]
            await until(lambda: app[STREAMS], "the stream's task", timeout_s=2)
            (task,) = app[STREAMS]
            task.cancel()
            await asyncio.wait([task], timeout=5)
            assert task.cancelled()

    asyncio.run(go())


def test_sparse_revisions_never_make_an_event_stream_spin() -> None:
    async def go() -> None:
        async with (
            running_server() as server,
            aiohttp.ClientSession(server.url) as http,
            http.get("/api/v1/events") as stream,
        ):
            await stream.content.readline()
            server.catalog.apply([], revision=server.catalog.revision + 3)
            line = b""
            while not line.startswith(b"id:"):
                line = await asyncio.wait_for(stream.content.readline(), 5)
            assert line == b"id: 3\n"
            # The loop still serves (a spinning stream would starve it).
            async with asyncio.timeout(5), http.get("/status") as r:
                assert r.status == 200

    asyncio.run(go())
