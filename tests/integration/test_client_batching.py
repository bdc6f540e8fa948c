"""``AsyncClient`` sends concurrent writes as one batch (and ``Client`` those of several
threads), and each caller still gets exactly what its own call would have returned: the
same result, or the same error."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import ServerProcess, instance, wait_until
from waypost import AsyncClient, Client, WaypostError
from waypost.model import WriteResult


async def _calls(url: str, coalesce: bool) -> tuple[list[Any], int]:
    async with AsyncClient(url, coalesce=coalesce) as c:
        await c.register(instance("old-1"))
        await c.register(instance("ttl-1", ttl="30s"))
        got = await asyncio.gather(
            c.register(instance("ok-1")),
            c.register(instance("ok-2", tags=["a"])),
            c.register(instance("bad-lease", lease=424242)),
            c.register(instance("bad-check", checks=[{"name": "c", "command": ["true"]}])),
            c.deregister("old-1"),
            c.deregister("missing"),
            c.heartbeat("ttl-1"),
            c.heartbeat("ok-0"),
            c.register(instance("ok-1", port=9)),
            return_exceptions=True,
        )
        sent = c.coalescer.batches if c.coalescer is not None else 0
    return list(got), sent


def _shape(result: object) -> tuple[str, str, str | None]:
    if isinstance(result, WriteResult):
        return ("ok", result.id, None)
    assert isinstance(result, WaypostError), result
    return (type(result).__name__, result.message, result.field)


def test_coalesced_calls_answer_exactly_as_separate_calls(
    start_server: Callable[..., ServerProcess],
) -> None:
    alone = start_server(name="alone")
    together = start_server(name="together")
    separate, none_sent = asyncio.run(_calls(alone.url, coalesce=False))
    coalesced, batches = asyncio.run(_calls(together.url, coalesce=True))
    assert none_sent == 0
    assert batches == 1  # all nine went in one request
    assert [_shape(r) for r in coalesced] == [_shape(r) for r in separate]
    shapes = [_shape(r)[0] for r in coalesced]
    assert shapes.count("ok") == 5, shapes  # failures among good ones stay alone
    assert {"NotFound", "Forbidden"} <= set(shapes), shapes
    # And the registry holds the same: ok-1 twice (the later write won in both), ok-2.
    for server in (alone, together):
        got = httpx.get(f"{server.url}/api/v1/services/web").json()
        assert sorted(i["id"] for i in got) == ["ok-1", "ok-2", "ttl-1"]


def test_a_lone_call_goes_as_the_plain_request(server: ServerProcess) -> None:
    async def go() -> tuple[int, int]:
        async with AsyncClient(server.url) as c:
            for n in range(3):
                await c.register(instance(f"web-{n}"))
            assert c.coalescer is not None
            return c.coalescer.alone, c.coalescer.batches

    assert asyncio.run(go()) == (3, 0)


def test_many_concurrent_writers_are_each_answered(server: ServerProcess) -> None:
    async def go() -> tuple[list[WriteResult], int]:
        async with AsyncClient(server.url, batch_max=16) as c:
            results = await asyncio.gather(
                *(c.register(instance(f"w-{n}", service="many")) for n in range(200))
            )
            assert c.coalescer is not None
            return list(results), c.coalescer.batches

    results, batches = asyncio.run(go())
    assert [r.id for r in results] == [f"w-{n}" for n in range(200)]
    assert batches >= 200 // 16
    assert len(httpx.get(f"{server.url}/api/v1/services/many").json()) == 200


_THREAD_CALLS: list[tuple[str, Any]] = [
    ("register", instance("ok-1")),
    ("register", instance("ok-2", tags=["a"])),
    ("register", instance("bad-lease", lease=424242)),
    ("register", instance("bad-check", checks=[{"name": "c", "command": ["true"]}])),
    ("deregister", "old-1"),
    ("deregister", "missing"),
    ("heartbeat", "ttl-1"),
    ("heartbeat", "ok-0"),
]


def _threaded(url: str, coalesce: bool) -> tuple[list[object], tuple[int, int]]:
    """Each call of ``_THREAD_CALLS`` from a thread of its own; with ``coalesce`` the
    first request is held until every other call waits behind it, so they go as one."""
    with Client(url, coalesce=coalesce) as c:
        c.register(instance("old-1"))
        c.register(instance("ttl-1", ttl="30s"))
        gate = threading.Event()
        if c.coalescer is not None:
            real = c.coalescer._call

            def held(req: Any) -> bytes:
                assert gate.wait(10)
                return real(req)

            c.coalescer._call = held
        results: list[object] = [None] * len(_THREAD_CALLS)

        def run(n: int) -> None:
            method, arg = _THREAD_CALLS[n]
            try:
                results[n] = getattr(c, method)(arg)
            except WaypostError as exc:
                results[n] = exc

        threads = [threading.Thread(target=run, args=(n,)) for n in range(len(_THREAD_CALLS))]
        for t in threads:
            t.start()
        if c.coalescer is not None:
            queued = c.coalescer
            assert wait_until(lambda: len(queued._waiting) == len(_THREAD_CALLS) - 1)
        gate.set()
        for t in threads:
            t.join(30)
        sent = (c.coalescer.alone, c.coalescer.batches) if c.coalescer is not None else (0, 0)
    return results, sent


def test_threads_calling_the_blocking_client_together_share_one_request(
    start_server: Callable[..., ServerProcess],
) -> None:
    alone = start_server(name="alone")
    together = start_server(name="together")
    separate, _ = _threaded(alone.url, coalesce=False)
    coalesced, sent = _threaded(together.url, coalesce=True)
    assert sent == (3, 1)  # two set-up calls and the first alone; the seven behind it, one batch
    assert [_shape(r) for r in coalesced] == [_shape(r) for r in separate]
    shapes = [_shape(r)[0] for r in coalesced]
    assert shapes.count("ok") == 4, shapes
    for server in (alone, together):
        got = httpx.get(f"{server.url}/api/v1/services/web").json()
        assert sorted(i["id"] for i in got) == ["ok-1", "ok-2", "ttl-1"]


def test_the_blocking_client_sends_a_lone_call_at_once(server: ServerProcess) -> None:
    with Client(server.url) as c:
        for n in range(3):
            c.register(instance(f"web-{n}"))
        assert c.coalescer is not None
        assert (c.coalescer.alone, c.coalescer.batches) == (3, 0)
