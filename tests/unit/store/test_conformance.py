"""One suite, every store: a backend is done when these pass (as etcd's test framework)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from waypost.errors import Conflict, Gone, NotFound, Unavailable
from waypost.model import Instance, convert_instance
from waypost.store import Delete, MemoryStore, Put, SqliteStore, Store

StoreFactory = Callable[..., Store]


def inst(iid: str, service: str = "web", **f: Any) -> Instance:
    return convert_instance({"id": iid, "service": service, "address": "10.0.0.1", "port": 80, **f})


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    def make(**kw: Any) -> Store:
        if request.param == "memory":
            return MemoryStore(**kw)
        return SqliteStore(tmp_path / "w.db", **kw)

    return make


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def opened(store: Store) -> Store:
    await store.open()
    return store


def test_put_then_snapshot_has_it_with_its_revision(make_store: StoreFactory) -> None:
    async def go() -> None:
        s = await opened(make_store())
        assert await s.apply([Put(instance=inst("a"))]) == 1
        assert await s.apply([Put(instance=inst("b")), Put(instance=inst("c"))]) == 3
        rev, rows = await s.snapshot()
        assert rev == 3
        assert sorted((i.id, r) for i, r in rows) == [("a", 1), ("b", 2), ("c", 3)]
        await s.close()

    run(go())


def test_a_failing_batch_changes_nothing(make_store: StoreFactory) -> None:
    async def go() -> None:
        s = await opened(make_store())
        await s.apply([Put(instance=inst("a"))])
        with pytest.raises(NotFound):
            await s.apply([Put(instance=inst("b")), Delete(id="missing")])
        with pytest.raises(Conflict):
            await s.apply([Delete(id="a"), Put(instance=inst("c"), if_revision=5)])
        rev, rows = await s.snapshot()
        assert (rev, [i.id for i, _ in rows]) == (1, ["a"])
        assert [e.revision for e in await s.changes(0)] == [1]
        await s.close()

    run(go())


def test_compare_and_swap_on_the_instance_revision(make_store: StoreFactory) -> None:
    async def go() -> None:
        s = await opened(make_store())
        await s.apply([Put(instance=inst("a"), if_revision=0)])
        with pytest.raises(Conflict):
            await s.apply([Put(instance=inst("a"), if_revision=0)])  # exists already
        await s.apply([Put(instance=inst("a", port=81), if_revision=1)])
        with pytest.raises(Conflict):
            await s.apply([Delete(id="a", if_revision=1)])
        await s.apply([Delete(id="a", if_revision=2)])
        assert (await s.snapshot())[1] == []
        await s.close()

    run(go())


def test_changes_are_every_event_after_a_revision_in_order(make_store: StoreFactory) -> None:
    async def go() -> None:
        s = await opened(make_store())
        await s.apply([Put(instance=inst("a"))])
        await s.apply([Put(instance=inst("b"))])
        await s.apply([Delete(id="a")])
        evs = await s.changes(1)
        assert [(e.revision, e.type, e.instance.id) for e in evs] == [
            (2, "put", "b"),
            (3, "delete", "a"),
        ]
        assert await s.changes(3) == []
        await s.close()

    run(go())


def test_an_old_revision_is_gone_once_the_log_is_pruned(make_store: StoreFactory) -> None:
    async def go() -> None:
        s = await opened(make_store(event_max=2))
        for n in range(5):
            await s.apply([Put(instance=inst(f"i{n}"))])
        # SQLite prunes at most once a second; force the next write to prune.
        if isinstance(s, SqliteStore):
            s._last_prune = 0.0
            await s.apply([Put(instance=inst("i5"))])
        with pytest.raises(Gone):
            await s.changes(0)
        latest = await s.changes(4 if isinstance(s, MemoryStore) else 5)
        assert latest
        await s.close()

    run(go())


async def collect(it: AsyncIterator[list[Any]], n: int) -> list[int]:
    got: list[int] = []
    async for batch in it:
        got += [e.revision for e in batch]
        if len(got) >= n:
            break
    return got


def test_watch_gives_the_backlog_then_live_events_exactly_once(make_store: StoreFactory) -> None:
    async def go() -> None:
        s = await opened(make_store())
        await s.apply([Put(instance=inst("a"))])
        await s.apply([Put(instance=inst("b"))])
        task = asyncio.create_task(collect(s.watch(1), 4))
        await asyncio.sleep(0)
        for n in range(3):
            await s.apply([Put(instance=inst(f"c{n}"))])
        assert await asyncio.wait_for(task, 5) == [2, 3, 4, 5]
        await s.close()

    run(go())


def test_concurrent_writers_all_land_with_distinct_revisions(make_store: StoreFactory) -> None:
    async def go() -> None:
        s = await opened(make_store())
        revs = await asyncio.gather(*(s.apply([Put(instance=inst(f"i{n}"))]) for n in range(200)))
        assert sorted(revs) == list(range(1, 201))
        rev, rows = await s.snapshot()
        assert (rev, len(rows)) == (200, 200)
        await s.close()

    run(go())


def test_a_closed_store_refuses_writes(make_store: StoreFactory) -> None:
    async def go() -> None:
        s = await opened(make_store())
        await s.close()
        with pytest.raises(Unavailable):
            await s.apply([Put(instance=inst("a"))])

    run(go())


def test_sqlite_keeps_everything_across_reopen(tmp_path: Path) -> None:
    async def go() -> None:
        s = await opened(SqliteStore(tmp_path / "w.db"))
        await s.apply([Put(instance=inst("a")), Put(instance=inst("b"))])
        await s.apply([Delete(id="a")])
        await s.close()
        s2 = await opened(SqliteStore(tmp_path / "w.db"))
        rev, rows = await s2.snapshot()
        assert (rev, [i.id for i, _ in rows]) == (3, ["b"])
        assert [e.type for e in await s2.changes(0)] == ["put", "put", "delete"]
        assert await s2.apply([Put(instance=inst("c"))]) == 4
        await s2.close()

    run(go())


def test_sqlite_reports_an_unwritable_location_as_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")

    async def go() -> None:
        with pytest.raises(Unavailable):
            await SqliteStore(blocker / "w.db").open()

    run(go())


def test_single_operations_put_delete_and_list(make_store: StoreFactory) -> None:
    async def go() -> None:
        s = await opened(make_store())
        assert await s.put(inst("b")) == 1
        assert await s.put(inst("a"), if_revision=0) == 2
        assert [i.id for i in await s.list()] == ["a", "b"]
        assert await s.delete("b", if_revision=1) == 3
        with pytest.raises(NotFound):
            await s.delete("b")
        assert [i.id for i in await s.list()] == ["a"]
        await s.close()

    run(go())
