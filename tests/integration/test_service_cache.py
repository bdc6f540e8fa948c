"""The watch-fed service cache against a real server: it follows changes live, keeps
serving when the registry is gone, and a restarted program starts from its snapshot."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess, instance, until
from waypost import AsyncClient
from waypost.client.cache import AsyncServiceCache
from waypost.errors import Unavailable


def test_the_cache_follows_changes_and_outlives_the_registry(
    server: ServerProcess, tmp_path: Path
) -> None:
    snapshot = tmp_path / "cache.json"
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for n in range(3):
            http.put(f"/api/v1/instances/web-{n}", json=instance(f"web-{n}", version="1.0.0"))

    async def first_run() -> None:
        async with (
            AsyncClient(server.url, timeout_s=2) as client,
            AsyncServiceCache(client, snapshot=snapshot) as cache,
        ):
            view = await cache.get("web")
            assert sorted(e.id for e in view.endpoints) == ["web-0", "web-1", "web-2"]
            kept = view.endpoints[0]
            kept.started()  # a counter the balancer keeps must survive updates
            # A registration, a failing instance and a config arrive through the stream.
            await client.register(instance("web-3"))
            await client.set_status("web-1", "critical")
            await client.set_service_config("web", {"timeout": "3s"})
            await until(lambda: len(view.endpoints) == 4, "web-3 arrives")
            await until(lambda: view.config is not None, "the config arrives")
            assert view.config is not None
            assert view.config.timeout == "3s"
            await until(
                lambda: not next(e for e in view.endpoints if e.id == "web-1").healthy,
                "web-1 fails",
            )
            assert next(e for e in view.endpoints if e.id == kept.id).active == 1
            assert (await cache.get("web")) is view
            stats = cache.stats()
            assert (stats["entries"], stats["hits"], stats["misses"]) == (1, 1, 1)
            # The registry goes away: the view stays, marked stale, its age growing.
            await asyncio.to_thread(server.stop)
            await until(lambda: view.stale, "the stream is lost")
            again = await cache.get("web")
            assert len(again.endpoints) == 4
            with pytest.raises(Unavailable):
                await cache.get("never-seen")
        assert snapshot.exists()

    asyncio.run(first_run())

    async def restarted() -> None:
        # A new program, the registry still down: it starts from the snapshot.
        async with (
            AsyncClient(server.url, timeout_s=1) as client,
            AsyncServiceCache(client, snapshot=snapshot) as cache,
        ):
            view = await cache.get("web")
            assert view.from_snapshot
            assert view.stale
            assert sorted(e.id for e in view.endpoints) == [f"web-{n}" for n in range(4)]
            assert view.config is not None
            # The registry comes back: the view is current again, and follows it.
            await asyncio.to_thread(server.start, f"127.0.0.1:{server.port}")
            await until(lambda: not view.stale, "the registry is back", timeout_s=20)
            await client.deregister("web-0")
            await until(lambda: len(view.endpoints) == 3, "web-0 leaves", timeout_s=20)
            assert not view.from_snapshot

    asyncio.run(restarted())


def test_unused_services_are_dropped_after_the_ttl(server: ServerProcess) -> None:
    httpx.put(f"{server.url}/api/v1/instances/a-1", json=instance("a-1", service="a"))
    now = [0.0]

    async def go() -> None:
        async with (
            AsyncClient(server.url) as client,
            AsyncServiceCache(client, ttl_s=60, clock=lambda: now[0]) as cache,
        ):
            view = await cache.get("a")
            assert cache.stats()["entries"] == 1
            now[0] = 61.0
            await cache.get("b")  # asking for anything sweeps what went unused
            assert "a" not in cache.stats()["services"]  # type: ignore[operator]
            assert view.watch is not None
            await until(lambda: view.watch.done(), "a's watch stops")  # type: ignore[union-attr]

    asyncio.run(go())


def test_a_damaged_snapshot_is_skipped_not_fatal(server: ServerProcess, tmp_path: Path) -> None:
    snapshot = tmp_path / "cache.json"
    snapshot.write_text('{"web": {"instances": "nonsense"}, "ok": {"instances": []}')

    async def go() -> None:
        async with (
            AsyncClient(server.url) as client,
            AsyncServiceCache(client, snapshot=snapshot) as cache,
        ):
            assert (await cache.get("web")).endpoints == ()

    asyncio.run(go())
