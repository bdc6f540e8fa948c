"""The mass-expiry guard of stores that expire their own leases: a wave of lapses (the
registry cut off or paused) is held one more TTL for keep-alives to come back; a lease
whose holder really died still goes, and a single failure is removed on time."""

from __future__ import annotations

import asyncio

from waypost.model import Instance
from waypost.store.base import Put
from waypost.store.memory import MemoryStore
from waypost.testing import ManualClock


async def _store_with_leases(n: int, ttl_s: float) -> tuple[MemoryStore, ManualClock, list[int]]:
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    await store.open()
    leases = []
    for i in range(n):
        lease = await store.grant(ttl_s)
        inst = Instance(id=f"i-{i}", service="web", address="10.0.0.1", port=80)
        await store.apply([Put(entry=inst, lease=lease)])
        leases.append(lease)
    return store, clock, leases


def test_a_wave_of_lapses_is_held_until_keepalives_return_and_the_dead_go_after() -> None:
    async def go() -> None:
        store, clock, leases = await _store_with_leases(10, 10.0)
        clock.advance(11)  # a paused registry: every lease lapsed at once
        assert await store.expire_due() == []
        guard = store.lease_guard
        assert guard.holding
        assert guard.held == 10
        assert guard.times_triggered == 1
        assert len(await store.leases()) == 10
        for lease in leases[:8]:  # their agents' keep-alives come back
            await store.keepalive(lease)
        assert not guard.holding
        assert guard.held == 2
        clock.advance(9)
        for lease in leases[:8]:
            await store.keepalive(lease)
        clock.advance(2)  # the two held ones are past their extra TTL: they go now
        assert sorted(await store.expire_due()) == sorted(leases[8:])
        assert not guard.holding
        assert {s.id for s in await store.leases()} == set(leases[:8])
        await store.close()

    asyncio.run(go())


def test_a_long_cut_is_held_ttl_after_ttl_until_the_longest_hold() -> None:
    async def go() -> None:
        store, clock, leases = await _store_with_leases(6, 10.0)
        store._expiry.guard_max_hold_s = 25.0
        clock.advance(11)  # the registry lost the network: nothing comes back for long
        for _ in range(3):  # held at 11 s, again at 21 s and 31 s
            assert await store.expire_due() == []
            assert store.lease_guard.holding
            clock.advance(10)
        assert sorted(await store.expire_due()) == sorted(leases)  # at 41 s: held 30 s > 25 s
        assert not store.lease_guard.holding
        await store.close()

    asyncio.run(go())


def test_a_single_failed_node_is_removed_on_time() -> None:
    async def go() -> None:
        store, clock, leases = await _store_with_leases(10, 10.0)
        clock.advance(5)
        for lease in leases[1:]:
            await store.keepalive(lease)
        clock.advance(5.5)  # only leases[0] is past its deadline
        assert await store.expire_due() == [leases[0]]
        assert not store.lease_guard.holding
        assert store.lease_guard.times_triggered == 0
        await store.close()

    asyncio.run(go())


def test_a_small_registry_is_not_guarded() -> None:
    async def go() -> None:
        store, clock, leases = await _store_with_leases(3, 10.0)
        clock.advance(11)
        assert sorted(await store.expire_due()) == sorted(leases)
        await store.close()

    asyncio.run(go())
