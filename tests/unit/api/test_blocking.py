from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from waypost.api.blocking import AnswerCache, BlockingQueries
from waypost.catalog import Catalog
from waypost.model import Event, Instance, Query, convert_instance


def inst(iid: str, service: str = "web", **f: Any) -> Instance:
    return convert_instance({"id": iid, "service": service, "address": "10.0.0.1", "port": 80, **f})


def put(c: Catalog, i: Instance) -> None:
    c.apply([Event(revision=c.revision + 1, type="put", entry=i)])


def test_an_answer_is_encoded_once_per_change_and_shared() -> None:
    c = Catalog()
    c.load([(inst("w1"), 1)], 1)
    cache = AnswerCache(c)
    key = ("instances", Query(service="web"))
    first = cache.get(key)
    assert cache.get(key) is first
    put(c, inst("d1", "db"))  # another service: same answer object, same index
    assert cache.get(key) is first
    assert first.index == 1
    put(c, inst("w2"))
    second = cache.get(key)
    assert second.index == 3
    assert [i["id"] for i in msgspec.json.decode(second.body)] == ["w1", "w2"]


def test_a_change_that_leaves_a_filtered_answer_alone_keeps_its_index() -> None:
    c = Catalog()
    c.load([(inst("w1", tags=["prod"]), 1)], 1)
    cache = AnswerCache(c)
    key = ("instances", Query(service="web", tags=("prod",)))
    assert cache.get(key).index == 1
    put(c, inst("w2", tags=["canary"]))
    assert cache.get(key).index == 1


def test_waiters_wake_only_for_changes_to_their_answer() -> None:
    async def go() -> None:
        c = Catalog()
        c.load([(inst("w1"), 1)], 1)
        cache = AnswerCache(c)
        blocking = BlockingQueries(c, cache)
        key = ("instances", Query(service="web"))
        waiters = [asyncio.create_task(blocking.wait(key, 1, 30)) for _ in range(100)]
        await asyncio.sleep(0)
        assert blocking.count == 100
        put(c, inst("d1", "db"))
        await asyncio.sleep(0)
        assert not any(w.done() for w in waiters)
        put(c, inst("w2"))
        answers = await asyncio.gather(*waiters)
        assert {a.index for a in answers} == {3}
        assert len({id(a.body) for a in answers}) == 1  # one body shared by all
        assert blocking.count == 0

    asyncio.run(go())


def test_a_waiter_times_out_with_the_same_index_and_is_forgotten() -> None:
    async def go() -> None:
        c = Catalog()
        c.load([(inst("w1"), 1)], 1)
        blocking = BlockingQueries(c, AnswerCache(c))
        ans = await blocking.wait(("instances", Query(service="web")), 1, 0.02)
        assert ans.index == 1
        assert blocking.count == 0

    asyncio.run(go())


def test_a_service_never_seen_answers_with_the_current_revision() -> None:
    c = Catalog()
    c.load([(inst(f"w{n}"), n + 1) for n in range(5)], 5)
    ans = AnswerCache(c).get(("instances", Query(service="nothing")))
    assert (ans.index, ans.body) == (5, b"[]")
    assert dict(ans.headers()) == {
        "Content-Type": "application/json",
        "X-Waypost-Index": "5",
        "X-Waypost-Revision": "5",
    }
