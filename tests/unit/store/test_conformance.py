"""One suite, every store: a backend is done when these pass (as etcd's test framework).

The shared tests run on memory, SQLite and a real 3-member etcd cluster (each test under
a prefix of its own). Revisions are compared relative to where a store starts: etcd's
revision is the cluster's. Tests that drive a store's own clock or files are for the
local stores only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import until
from waypost.errors import Conflict, Gone, NotFound, Unavailable
from waypost.model import Instance, Node, Route, ServiceConfig, convert_instance
from waypost.store import Delete, EtcdStore, MemoryStore, Put, SqliteStore, Store
from waypost.testing import EtcdCluster, ManualClock

StoreFactory = Callable[..., Store]


def inst(iid: str, service: str = "web", **f: Any) -> Instance:
    return convert_instance({"id": iid, "service": service, "address": "10.0.0.1", "port": 80, **f})


@pytest.fixture(params=["memory", "sqlite", "etcd"])
def make_store(
    request: pytest.FixtureRequest, tmp_path: Path, etcd_cluster: EtcdCluster
) -> StoreFactory:
    def make(**kw: Any) -> Store:
        if request.param == "memory":
            return MemoryStore(**kw)
        if request.param == "etcd":
            prefix = f"/t/{tmp_path.name}/"
            return EtcdStore(etcd_cluster.endpoints, prefix=prefix, **kw)
        return SqliteStore(tmp_path / "w.db", **kw)

    return make


@pytest.fixture(params=["memory", "sqlite"])
def make_local_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """The stores that keep their own clock and event log."""

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


async def base_of(store: Store) -> int:
    """The revision a store starts this test at (0 for a new local store)."""
    return (await store.snapshot())[0]


def test_put_then_snapshot_has_it_with_its_revision(make_store: StoreFactory) -> None:
    async def go() -> None:
        s = await opened(make_store())
        b = await base_of(s)
        assert await s.apply([Put(entry=inst("a"))]) == b + 1
        # A batch is one revision, as an etcd transaction is.
        assert await s.apply([Put(entry=inst("b")), Put(entry=inst("c"))]) == b + 2
        rev, rows = await s.snapshot()
        assert rev == b + 2
        assert sorted((i.key, r - b) for i, r in rows) == [("a", 1), ("b", 2), ("c", 2)]
        evs = await s.changes(b + 1)
        assert [(e.revision - b, e.index, e.entry.key) for e in evs] == [
            (2, 0, "b"),
            (2, 1, "c"),
        ]
        await s.close()

    run(go())


def test_a_failing_batch_changes_nothing(make_store: StoreFactory) -> None:
    async def go() -> None:
        s = await opened(make_store())
        b = await base_of(s)
        a_rev = await s.apply([Put(entry=inst("a"))])
        with pytest.raises(NotFound):
            await s.apply([Put(entry=inst("b")), Delete(id="missing")])
        with pytest.raises(Conflict):
            await s.apply([Delete(id="a"), Put(entry=inst("c"), if_revision=a_rev + 4)])
        rev, rows = await s.snapshot()
        assert (rev, [i.key for i, _ in rows]) == (a_rev, ["a"])
        assert [e.revision for e in await s.changes(b)] == [a_rev]
        await s.close()

    run(go())


def test_compare_and_swap_on_the_instance_revision(make_store: StoreFactory) -> None:
    async def go() -> None:
        s = await opened(make_store())
        first = await s.apply([Put(entry=inst("a"), if_revision=0)])
        with pytest.raises(Conflict):
            await s.apply([Put(entry=inst("a"), if_revision=0)])  # exists already
        second = await s.apply([Put(entry=inst("a", port=81), if_revision=first)])
        with pytest.raises(Conflict):
            await s.apply([Delete(id="a", if_revision=first)])
        await s.apply([Delete(id="a", if_revision=second)])
        assert (await s.snapshot())[1] == []
        await s.close()

    run(go())


def test_changes_are_every_event_after_a_revision_in_order(make_store: StoreFactory) -> None:
    async def go() -> None:
        s = await opened(make_store())
        r1 = await s.apply([Put(entry=inst("a"))])
        r2 = await s.apply([Put(entry=inst("b"))])
        r3 = await s.apply([Delete(id="a")])
        evs = await s.changes(r1)
        assert [(e.revision, e.type, e.entry.key) for e in evs] == [
            (r2, "put", "b"),
            (r3, "delete", "a"),
        ]
        assert await s.changes(r3) == []
        await s.close()

    run(go())


def test_an_old_revision_is_gone_once_the_log_is_pruned(make_local_store: StoreFactory) -> None:
    async def go() -> None:
        s = await opened(make_local_store(event_max=2))
        for n in range(5):
            await s.apply([Put(entry=inst(f"i{n}"))])
        # SQLite prunes at most once a second; force the next write to prune.
        if isinstance(s, SqliteStore):
            s._last_prune = 0.0
            await s.apply([Put(entry=inst("i5"))])
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
        r1 = await s.apply([Put(entry=inst("a"))])
        revs = [await s.apply([Put(entry=inst("b"))])]
        task = asyncio.create_task(collect(s.watch(r1), 4))
        await asyncio.sleep(0)
        for n in range(3):
            revs.append(await s.apply([Put(entry=inst(f"c{n}"))]))
        assert await asyncio.wait_for(task, 5) == revs
        await s.close()

    run(go())


def test_concurrent_writers_land_at_the_revisions_they_were_told(make_store: StoreFactory) -> None:
    async def go() -> None:
        s = await opened(make_store())
        # Started 25 at a time: creating 200 tasks in one step in debug mode held the loop
        # over the 100 ms limit on a loaded machine (the test's doing, not the store's).
        tasks = []
        for n in range(200):
            tasks.append(asyncio.ensure_future(s.apply([Put(entry=inst(f"i{n}"))])))
            if n % 25 == 24:
                await asyncio.sleep(0)
        revs = await asyncio.gather(*tasks)
        rev, rows = await s.snapshot()
        assert (rev, len(rows)) == (max(revs), 200)
        # Each write's events are at the revision it was told (etcd may put concurrent
        # independent writes in one transaction: a group commit).
        at = {e.entry.key: e.revision for e in await s.changes(min(revs) - 1, limit=1000)}
        assert at == {f"i{n}": revs[n] for n in range(200)}
        await s.close()

    run(go())


def test_a_closed_store_refuses_writes(make_store: StoreFactory) -> None:
    async def go() -> None:
        s = await opened(make_store())
        await s.close()
        with pytest.raises(Unavailable):
            await s.apply([Put(entry=inst("a"))])

    run(go())


def test_sqlite_keeps_everything_across_reopen(tmp_path: Path) -> None:
    async def go() -> None:
        s = await opened(SqliteStore(tmp_path / "w.db"))
        await s.apply([Put(entry=inst("a")), Put(entry=inst("b"))])
        await s.apply([Delete(id="a")])
        await s.close()
        s2 = await opened(SqliteStore(tmp_path / "w.db"))
        rev, rows = await s2.snapshot()
        assert (rev, [i.key for i, _ in rows]) == (2, ["b"])
        assert [e.type for e in await s2.changes(0)] == ["put", "put", "delete"]
        assert await s2.apply([Put(entry=inst("c"))]) == 3
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
        b = await base_of(s)
        assert await s.put(inst("b")) == b + 1
        assert await s.put(inst("a"), if_revision=0) == b + 2
        assert [i.key for i in await s.list()] == ["a", "b"]
        assert await s.delete("b", if_revision=b + 1) == b + 3
        with pytest.raises(NotFound):
            await s.delete("b")
        assert [i.key for i in await s.list()] == ["a"]
        await s.close()

    run(go())


# --- typed entries ---------------------------------------------------------------------


def test_entries_of_every_kind_share_one_revision_space(make_store: StoreFactory) -> None:
    async def go() -> None:
        s = await opened(make_store())
        node = Node(id="n1", address="10.0.0.9")
        cfg = ServiceConfig(service="web", meta={"owner": "team-a"})
        route = Route(name="r1", service="web")
        b = await base_of(s)
        assert await s.apply([Put(entry=inst("web")), Put(entry=node)]) == b + 1
        assert await s.apply([Put(entry=cfg), Put(entry=route)]) == b + 2
        # The same key under two kinds is two entries.
        assert await s.apply([Put(entry=Node(id="web"))]) == b + 3
        rev, rows = await s.snapshot()
        assert rev == b + 3
        assert sorted((e.KIND, e.key, r - b) for e, r in rows) == [
            ("instance", "web", 1),
            ("node", "n1", 1),
            ("node", "web", 3),
            ("route", "r1", 2),
            ("service_config", "web", 2),
        ]
        assert [e.key for e in await s.list("node")] == ["n1", "web"]
        deleted = await s.delete("web", kind="node")
        with pytest.raises(NotFound):
            await s.delete("web", kind="node")
        evs = await s.changes(b + 2)
        assert [(e.revision, e.kind, e.type, e.entry.key) for e in evs] == [
            (b + 3, "node", "put", "web"),
            (deleted, "node", "delete", "web"),
        ]
        assert isinstance((await s.changes(b))[1].entry, Node)
        await s.close()

    run(go())


def test_a_multi_event_revision_reaches_watchers_whole(make_store: StoreFactory) -> None:
    async def go() -> None:
        s = await opened(make_store())
        b = await base_of(s)
        got: list[list[tuple[int, int]]] = []

        async def watch() -> None:
            async for batch in s.watch(b):
                got.append([(e.revision, e.index) for e in batch])
                if sum(len(b) for b in got) >= 4:
                    return

        task = asyncio.create_task(watch())
        await asyncio.sleep(0)
        await s.apply([Put(entry=inst("a")), Put(entry=inst("b")), Put(entry=inst("c"))])
        await s.apply([Delete(id="b")])
        await asyncio.wait_for(task, 5)
        flat = [(r - b, i) for batch in got for r, i in batch]
        assert flat == [(1, 0), (1, 1), (1, 2), (2, 0)]
        # A page of changes never cuts a revision in half.
        assert [(e.revision - b, e.index) for e in await s.changes(b, limit=2)] == [
            (1, 0),
            (1, 1),
            (1, 2),
        ]
        await s.close()

    run(go())


# --- leases ----------------------------------------------------------------------------


def test_a_lapsed_lease_deletes_what_it_holds_as_events(make_local_store: StoreFactory) -> None:
    async def go() -> None:
        clock = ManualClock()
        s = await opened(make_local_store(clock=clock))
        lease = await s.grant(10.0)
        other = await s.grant(100.0)
        await s.apply(
            [
                Put(entry=Node(id="n1", lease=lease), lease=lease),
                Put(entry=inst("a"), lease=lease),
                Put(entry=inst("b"), lease=lease),
                Put(entry=inst("c"), lease=other),
                Put(entry=inst("d")),
            ]
        )
        state = await s.lease(lease)
        assert (state.ttl_s, state.entries) == (
            10.0,
            [("instance", "a"), ("instance", "b"), ("node", "n1")],
        )
        clock.advance(9.0)
        assert await s.keepalive(lease) == 10.0
        clock.advance(9.0)
        assert await s.expire_due() == []  # type: ignore[attr-defined]
        clock.advance(1.5)
        assert await s.expire_due() == [lease]  # type: ignore[attr-defined]
        _, rows = await s.snapshot()
        assert sorted(e.key for e, _ in rows) == ["c", "d"]
        evs = await s.changes(1)
        assert [(e.revision, e.type, e.kind, e.entry.key) for e in evs] == [
            (2, "delete", "instance", "a"),
            (2, "delete", "instance", "b"),
            (2, "delete", "node", "n1"),
        ]
        with pytest.raises(NotFound):
            await s.keepalive(lease)
        with pytest.raises(NotFound):
            await s.lease(lease)
        await s.close()

    run(go())


def test_revoke_deletes_at_once_and_an_unknown_lease_is_refused(make_store: StoreFactory) -> None:
    async def go() -> None:
        s = await opened(make_store())
        lease = await s.grant(60.0)
        await s.apply([Put(entry=inst("a"), lease=lease), Put(entry=inst("b"))])
        # Put again without the lease: it no longer rides on it (etcd's meaning).
        await s.apply([Put(entry=inst("b"), lease=lease), Put(entry=inst("b"))])
        rev = await s.revoke(lease)
        assert [e.key for e in await s.list()] == ["b"]
        assert [(e.type, e.entry.key) for e in await s.changes(rev - 1)] == [("delete", "a")]
        with pytest.raises(NotFound):
            await s.revoke(lease)
        with pytest.raises(NotFound):
            await s.apply([Put(entry=inst("x"), lease=lease)])
        assert [e.key for e in await s.list()] == ["b"]
        other = await s.grant(5.0)
        with pytest.raises(Conflict):
            await s.grant(5.0, lease_id=other)
        assert [ls.id for ls in await s.leases()] == [other]
        await s.close()

    run(go())


def test_leases_expire_on_their_own_in_real_time(make_store: StoreFactory) -> None:
    async def go() -> None:
        s = await opened(make_store())
        lease = await s.grant(0.2)
        await s.apply([Put(entry=inst("a"), lease=lease)])
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def gone() -> bool:
            return not await s.list()

        await until(gone, "the lease to expire", timeout_s=5)
        assert loop.time() - start >= 0.15
        await s.close()

    run(go())


def test_sqlite_leases_survive_a_restart_and_still_expire(tmp_path: Path) -> None:
    async def go() -> None:
        s = await opened(SqliteStore(tmp_path / "w.db"))
        lease = await s.grant(0.3)
        kept = await s.grant(3600.0)
        await s.apply([Put(entry=inst("a"), lease=lease), Put(entry=inst("k"), lease=kept)])
        await s.close()
        s2 = await opened(SqliteStore(tmp_path / "w.db"))
        assert sorted(ls.id for ls in await s2.leases()) == sorted([lease, kept])
        assert [e.key for e in await s2.list()] == ["a", "k"]

        async def expired() -> bool:
            return len(await s2.list()) == 1

        await until(expired, "the lease to expire after the restart", timeout_s=5)
        assert [e.key for e in await s2.list()] == ["k"]
        assert (await s2.lease(kept)).entries == [("instance", "k")]
        await s2.close()

    run(go())


# --- reading what others wrote -----------------------------------------------------------


def test_sqlite_reads_records_with_unknown_fields_and_skips_corrupt_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import sqlite3

    async def go() -> None:
        s = await opened(SqliteStore(tmp_path / "w.db"))
        await s.apply([Put(entry=inst("a")), Put(entry=inst("b")), Put(entry=inst("c"))])
        await s.close()
        db = sqlite3.connect(tmp_path / "w.db")
        newer = b'{"id":"a","service":"web","address":"10.0.0.1","port":80,"zone":"x",'
        newer += b'"checks":[{"name":"c","type":"tcp","extra":1}]}'
        db.execute("UPDATE entries SET data = ?, schema = 9 WHERE key = 'a'", (newer,))
        db.execute("UPDATE entries SET data = ? WHERE key = 'b'", (b'{"id": "b", "port": "x"',))
        db.commit()
        db.close()
        s2 = await opened(SqliteStore(tmp_path / "w.db"))
        rows = await s2.list()
        assert [e.key for e in rows] == ["a", "c"]
        a = rows[0]
        assert isinstance(a, Instance)
        assert a.checks[0].name == "c"
        assert s2.skipped_records == 1
        assert "instance/b" in caplog.text
        await s2.close()

    run(go())


def test_sqlite_upgrades_a_foundation_database_keeping_everything(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE instances (id TEXT PRIMARY KEY, revision INTEGER NOT NULL, data BLOB NOT NULL);
        CREATE TABLE events (revision INTEGER PRIMARY KEY, type TEXT NOT NULL, ts REAL NOT NULL,
                             data BLOB NOT NULL);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        PRAGMA user_version=1;
        """
    )
    a = b'{"id":"a","service":"web","address":"10.0.0.1","port":80}'
    b = b'{"id":"b","service":"web","address":"10.0.0.2","port":80}'
    db.execute("INSERT INTO instances VALUES ('a', 1, ?)", (a,))
    db.execute("INSERT INTO events VALUES (1, 'put', 1.0, ?)", (a,))
    db.execute("INSERT INTO events VALUES (2, 'put', 2.0, ?)", (b,))
    db.execute("INSERT INTO events VALUES (3, 'delete', 3.0, ?)", (b,))
    db.execute("INSERT INTO meta VALUES ('revision', 3)")
    db.commit()
    db.close()

    async def go() -> None:
        s = await opened(SqliteStore(path))
        rev, rows = await s.snapshot()
        assert (rev, [(e.key, r) for e, r in rows]) == (3, [("a", 1)])
        evs = await s.changes(0)
        assert [(e.revision, e.type, e.entry.key) for e in evs] == [
            (1, "put", "a"),
            (2, "put", "b"),
            (3, "delete", "b"),
        ]
        assert await s.put(inst("c")) == 4
        await s.close()

    run(go())
