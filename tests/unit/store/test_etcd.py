"""What only the etcd store has: endpoints, key ranges, the group commit's edges
(against the real cluster of the session)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waypost.errors import InvalidInput, NotFound, Unavailable
from waypost.model import convert_instance
from waypost.store import EtcdStore, Put, open_store
from waypost.store.etcd import parse_endpoints, prefix_end
from waypost.testing import EtcdCluster


def inst(iid: str) -> object:
    return convert_instance({"id": iid, "service": "web", "address": "10.0.0.1", "port": 80})


@given(st.binary(min_size=1, max_size=20))
def test_prefix_end_bounds_exactly_the_keys_with_the_prefix(prefix: bytes) -> None:
    end = prefix_end(prefix)
    assert prefix < end or end == b"\x00"
    for tail in (b"", b"\x00", b"\xff" * 3, b"abc"):
        assert end == b"\x00" or prefix + tail < end


def test_endpoints_are_checked() -> None:
    assert parse_endpoints("h1:2379, h2:2380") == ["h1:2379", "h2:2380"]
    for bad in ("", "h1", "h1:x", ":2379", "h1:0", "h1:70000"):
        with pytest.raises(InvalidInput):
            parse_endpoints(bad)
    store = open_store("etcd://h1:2379,h2:2379/team-a")
    assert isinstance(store, EtcdStore)
    assert (store.endpoints, store.prefix) == (["h1:2379", "h2:2379"], b"/team-a/")
    with pytest.raises(InvalidInput):
        EtcdStore(["h1:2379"], prefix="no-slashes")


def test_every_writer_is_answered_when_the_store_closes_under_it(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    async def go() -> None:
        store = EtcdStore(etcd_cluster.endpoints, prefix=f"/t/{tmp_path.name}/")
        await store.open()
        writes = [
            asyncio.ensure_future(store.apply([Put(entry=inst(f"i{n}"))])) for n in range(200)
        ]  # type: ignore[arg-type]
        await asyncio.sleep(0)
        await store.close()
        done = await asyncio.wait_for(asyncio.gather(*writes, return_exceptions=True), 10)
        assert all(isinstance(r, (int, Unavailable)) for r in done), done

    asyncio.run(go())


def test_one_batch_on_an_ended_lease_fails_alone_in_a_shared_transaction(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    async def go() -> None:
        store = EtcdStore(etcd_cluster.endpoints, prefix=f"/t/{tmp_path.name}/")
        await store.open()
        try:
            writes = [
                asyncio.ensure_future(store.apply([Put(entry=inst(f"i{n}"))]))  # type: ignore[arg-type]
                for n in range(50)
            ]
            bad = asyncio.ensure_future(store.apply([Put(entry=inst("x"), lease=12345)]))  # type: ignore[arg-type]
            assert all(isinstance(r, int) for r in await asyncio.gather(*writes))
            with pytest.raises(NotFound):
                await bad
            assert len(await store.list()) == 50
        finally:
            await store.close()

    asyncio.run(go())


def test_concurrent_writers_on_two_servers_never_look_like_a_restored_etcd(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    """A watch answer can carry an older revision than a transaction answered just before
    it (or a range sent before that transaction): that is not etcd's history going back.
    Mistaking it for one made every server re-list again and again under concurrent
    writes from two servers (registrations fell to a tenth)."""

    async def go() -> None:
        prefix = f"/t/{tmp_path.name}/"
        a = EtcdStore(etcd_cluster.endpoints, prefix=prefix)
        b = EtcdStore(etcd_cluster.endpoints, prefix=prefix)
        await a.open()
        await b.open()
        watched: list[int] = []

        async def watch() -> None:
            async for batch in a.watch(await a.revision()):
                watched.extend(ev.revision for ev in batch)

        watcher = asyncio.create_task(watch())
        try:

            async def writer(store: EtcdStore, name: str) -> None:
                for n in range(150):
                    await store.apply([Put(entry=inst(f"{name}{n}"))])  # type: ignore[arg-type]

            await asyncio.gather(*(writer(s, f"{s is a}-{k}-") for s in (a, b) for k in range(8)))
            assert a.resets == b.resets == 0
            assert watched == sorted(watched)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await a.close()
            await b.close()

    asyncio.run(go())
