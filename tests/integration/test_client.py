"""The Python SDK, sync and async, against real server processes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

import waypost
from tests.conftest import ServerProcess, until, wait_until
from waypost import AsyncClient, Client, Event, Gone, InvalidInput, NotFound, Status, Unavailable


def test_sync_client_registers_queries_and_deregisters(server: ServerProcess) -> None:
    with Client(server.url) as c:
        assert c.health()
        res = c.register(
            id="web-1", service="web", address="10.0.0.1", port=80, version="1.2.0", tags=["prod"]
        )
        assert res.id == "web-1"
        assert res.index == 1
        c.register(
            {"id": "web-2", "service": "web", "address": "10.0.0.2", "port": 80, "version": "2.0.0"}
        )
        c.register(waypost.Instance(id="db-1", service="db", address="10.0.0.9", port=5432))
        got = c.instances("web", version="^1")
        assert [i.id for i in got.instances] == ["web-1"]
        assert got.index >= 1
        assert [i.id for i in c.instances(tags=["prod"]).instances] == ["web-1"]
        c.set_status("web-2", Status.WARNING, "slow")
        assert [i.id for i in c.instances("web", status="degraded").instances] == ["web-2"]
        c.maintenance("web-1", reason="patching")
        assert c.get("web-1").maintenance
        assert [s.name for s in c.services()] == ["db", "web"]
        assert c.status().instances == 3
        c.deregister("db-1")
        with pytest.raises(NotFound):
            c.get("db-1")


def test_bad_input_is_refused_before_it_is_sent(server: ServerProcess) -> None:
    with Client(server.url) as c:
        with pytest.raises(InvalidInput) as exc:
            c.register(id="w", service="web", address="10.0.0.1", port=0)
        assert exc.value.field == "port"
        with pytest.raises(InvalidInput):
            c.instances("web", status="sideways")  # refused by the server, same error class


def test_sync_blocking_query_wakes_on_change(server: ServerProcess) -> None:
    with Client(server.url) as c:
        c.register(id="w1", service="web", address="10.0.0.1", port=80)
        first = c.instances("web")
        out: list[waypost.QueryResult] = []

        def block() -> None:
            with Client(server.url) as b:
                out.append(b.instances("web", index=first.index, wait="20s"))

        t = threading.Thread(target=block)
        t.start()
        wait_until(lambda: c.status().blocking_waiters == 1, what="the query to park")
        c.register(id="w2", service="web", address="10.0.0.2", port=80)
        t.join(10)
        assert out
        assert [i.id for i in out[0].instances] == ["w1", "w2"]
        assert out[0].index > first.index


def test_fails_over_to_the_next_server_in_order(server: ServerProcess) -> None:
    dead = "http://127.0.0.1:1"  # nothing listens on port 1 here
    with Client([dead, server.url]) as c:
        c.register(id="w1", service="web", address="10.0.0.1", port=80)
        assert [i.id for i in c.instances("web").instances] == ["w1"]
    with Client([dead]) as c, pytest.raises(Unavailable) as exc:
        c.services()
    assert "127.0.0.1:1" in exc.value.message


def test_sync_watch_resumes_across_a_restart_exactly_once(server: ServerProcess) -> None:
    with Client(server.url) as c:
        c.register(id="w0", service="web", address="10.0.0.1", port=80)
        got: list[Event] = []
        done = threading.Event()

        def follow() -> None:
            with Client(server.url) as w:
                for ev in w.watch("web", index=1):
                    got.append(ev)
                    if len(got) == 4:
                        done.set()
                        return

        t = threading.Thread(target=follow, daemon=True)
        t.start()
        c.register(id="w1", service="web", address="10.0.0.1", port=80)
        c.register(id="w2", service="web", address="10.0.0.1", port=80)
        wait_until(lambda: len(got) == 2, what="two events before the restart")
    server.restart()
    with Client(server.url) as c:
        c.register(id="db", service="db", address="10.0.0.1", port=80)  # filtered out
        c.register(id="w3", service="web", address="10.0.0.1", port=80)
        c.deregister("w1")
    assert done.wait(15)
    assert [(e.revision, e.type, e.instance.id) for e in got] == [
        (2, "put", "w1"),
        (3, "put", "w2"),
        (5, "put", "w3"),
        (6, "delete", "w1"),
    ]


def test_watch_from_a_pruned_revision_raises_gone(
    start_server: Callable[..., ServerProcess],
) -> None:
    srv = start_server("--event-window", "1ms")
    with Client(srv.url) as c:

        def pruned() -> bool:
            c.register(id="w", service="web", address="10.0.0.1", port=80)
            try:
                next(iter(c.watch(index=0)))
            except Gone:
                return True
            return False

        wait_until(pruned, timeout_s=10, what="Gone from a pruned revision")


def test_async_client_does_the_same(server: ServerProcess) -> None:
    async def go() -> None:
        async with AsyncClient(server.url) as c:
            await c.register(id="w1", service="web", address="10.0.0.1", port=80, ttl="2s")
            first = await c.instances("web")
            blocked = asyncio.create_task(c.instances("web", index=first.index, wait="20s"))
            events: list[Event] = []

            async def follow() -> None:
                async for ev in c.watch("web", index=first.index):
                    events.append(ev)
                    if len(events) == 2:
                        return

            watcher = asyncio.create_task(follow())

            async def parked() -> bool:
                return (await c.status()).blocking_waiters >= 1

            await until(parked, "the blocking query to park")
            await c.register(id="w2", service="web", address="10.0.0.2", port=80)
            res = await asyncio.wait_for(blocked, 10)
            assert [i.id for i in res.instances] == ["w1", "w2"]
            await c.deregister("w2")
            await asyncio.wait_for(watcher, 10)
            assert [(e.type, e.instance.id) for e in events] == [("put", "w2"), ("delete", "w2")]
            assert [s.name for s in await c.services()] == ["web"]
            assert (await c.get("w1")).ttl == "2s"
            with pytest.raises(NotFound):
                await c.deregister("nope")

    asyncio.run(go())


def test_keepalive_keeps_a_ttl_instance_passing_until_stopped(server: ServerProcess) -> None:
    with Client(server.url) as c:
        c.register(id="t1", service="web", address="10.0.0.1", port=80, ttl="1s")
        ka = c.keepalive("t1", interval_s=0.05)
        try:
            start = time.monotonic()

            def passing_for_two_ttls() -> bool:
                assert c.get("t1").status is Status.PASSING
                return time.monotonic() - start > 2.0

            wait_until(passing_for_two_ttls, 10, "two TTLs of keep-alives", interval_s=0.02)
        finally:
            ka.stop()
        assert not ka.running
        wait_until(lambda: c.get("t1").status is Status.CRITICAL, what="expiry after stop")


def test_async_keepalive(server: ServerProcess) -> None:
    async def go() -> None:
        async with AsyncClient(server.url) as c:
            await c.register(id="t1", service="web", address="10.0.0.1", port=80, ttl="1s")
            ka = c.keepalive("t1", interval_s=0.05)
            start = time.monotonic()

            async def passing_for_two_ttls() -> bool:
                assert (await c.get("t1")).status is Status.PASSING
                return time.monotonic() - start > 2.0

            await until(passing_for_two_ttls, "two TTLs of keep-alives", interval_s=0.02)
            await ka.stop()
            assert not ka.running

    asyncio.run(go())


def test_token_is_sent_on_writes(start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server("--token", "t0k")
    with Client(srv.url) as anon, pytest.raises(waypost.Unauthorized):
        anon.register(id="w", service="web", address="10.0.0.1", port=80)
    with Client(srv.url, token="t0k") as c:
        assert c.register(id="w", service="web", address="10.0.0.1", port=80).index == 1


def test_keepalive_stops_and_reports_when_the_instance_is_gone(
    server: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    with Client(server.url) as c:
        c.register(id="t1", service="web", address="10.0.0.1", port=80, ttl="5s")
        ka = c.keepalive("t1", interval_s=0.02)
        c.deregister("t1")
        wait_until(lambda: not ka.running, what="the keepalive to stop")
        assert isinstance(ka.error, NotFound)
        assert "keep-alive of instance t1 ended" in caplog.text  # said, not silent
        ka.stop()
