"""The registry's TTL rules, driven by a manual clock over a memory store: no waiting."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from waypost.catalog import Catalog
from waypost.model import Instance, Status, convert_instance
from waypost.registry import Registry
from waypost.store import MemoryStore
from waypost.testing import ManualClock


def with_registry(body: Callable[[Registry, ManualClock], Awaitable[None]]) -> None:
    async def go() -> None:
        clock = ManualClock()
        store = MemoryStore(clock=clock)
        await store.open()
        reg = Registry(store, Catalog(), node_name="n", clock=clock)
        await reg.start()
        try:
            await body(reg, clock)
        finally:
            await reg.stop()
            await store.close()

    asyncio.run(go())


async def expire_leases(reg: Registry) -> None:
    store = reg.store
    assert isinstance(store, MemoryStore)
    await store.expire_due()
    revision, _ = await store.snapshot()
    assert await reg.catalog.wait_for_revision(revision, 1.0)


def ttl_instance(iid: str = "t", **f: object) -> Instance:
    return convert_instance(
        {
            "id": iid,
            "service": "jobs",
            "address": "10.0.0.1",
            "port": 1,
            "ttl": "10s",
            "deregister_after": "60s",
            **f,
        }
    )


def status(reg: Registry, iid: str) -> Status | None:
    inst = reg.catalog.get(iid)
    return inst.status if inst is not None else None


def test_ttl_goes_critical_after_the_window_then_is_deregistered() -> None:
    async def body(reg: Registry, clock: ManualClock) -> None:
        await reg.register(ttl_instance())
        await reg.expire(clock.advance(9.9))
        assert status(reg, "t") is Status.PASSING
        await reg.expire(clock.advance(0.2))
        got = reg.catalog.get("t")
        assert got is not None
        assert got.status is Status.CRITICAL
        assert got.output == "TTL expired: no heartbeat within 10s"
        await reg.expire(clock.advance(59.0))
        await expire_leases(reg)
        assert reg.catalog.get("t") is not None
        await reg.expire(clock.advance(1.5))
        await expire_leases(reg)  # the removal rides on the instance's TTL lease
        assert reg.catalog.get("t") is None

    with_registry(body)


def test_heartbeats_move_the_deadline_and_revive_a_critical_instance() -> None:
    async def body(reg: Registry, clock: ManualClock) -> None:
        await reg.register(ttl_instance())
        before = reg.catalog.revision
        for _ in range(5):
            await reg.expire(clock.advance(8))
            await reg.heartbeat("t")
        assert status(reg, "t") is Status.PASSING
        assert reg.catalog.revision == before  # heartbeats to a passing instance: no writes
        await reg.expire(clock.advance(11))
        assert status(reg, "t") is Status.CRITICAL
        await reg.heartbeat("t")
        assert status(reg, "t") is Status.PASSING
        await reg.expire(clock.advance(65))  # a new window, not the old reaping time
        await expire_leases(reg)
        got = reg.catalog.get("t")
        assert got is not None
        assert got.status is Status.CRITICAL

    with_registry(body)


def test_instances_without_ttl_never_expire() -> None:
    async def body(reg: Registry, clock: ManualClock) -> None:
        await reg.register(ttl_instance("p", ttl=None))
        await reg.expire(clock.advance(10_000))
        assert status(reg, "p") is Status.PASSING

    with_registry(body)


def test_concurrent_updates_of_one_instance_all_succeed_and_none_is_lost() -> None:
    async def body(reg: Registry, clock: ManualClock) -> None:
        await reg.register(ttl_instance("u", ttl=None))
        outputs = [f"check {n}" for n in range(50)]
        await asyncio.gather(
            *(reg.set_status("u", Status.WARNING, out) for out in outputs),
            *(reg.set_maintenance("u", n % 2 == 0, "m") for n in range(10)),
        )
        got = reg.catalog.get("u")
        assert got is not None
        assert got.status is Status.WARNING
        assert got.output == outputs[-1]  # they took turns in arrival order
        assert reg._turns == {}  # nothing held once everyone is done

    with_registry(body)


def test_a_failing_checks_rescan_is_logged_and_the_next_one_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The rescan after a load runs as a task: a bug in one pass is logged, and a rescan
    asked for meanwhile still happens (the task does not die with the error)."""
    from waypost.checking import CheckHost

    async def body(reg: Registry, clock: ManualClock) -> None:
        host = CheckHost(reg)
        try:
            inst = convert_instance(
                {"id": "w", "service": "web", "address": "10.0.0.1", "port": 1,
                 "checks": [{"tcp": "10.0.0.1:1", "interval": "1h"}]}
            )  # fmt: skip
            await reg.register(inst)
            real = host.consider
            calls = 0

            def flaky(i: Instance) -> bool:
                nonlocal calls
                calls += 1
                if calls == 1:
                    host._rescan_wanted = True  # asked again while this pass runs
                    raise RuntimeError("a bug")
                return real(i)

            host.consider = flaky  # type: ignore[method-assign]
            host.scheduler.remove_instance("w")
            reg._tell(None)
            assert host._rescan is not None
            await host._rescan
            assert "w" in host.scheduler
            assert "rescanning the checks of every instance failed" in caplog.text
        finally:
            await host.close()

    with caplog.at_level("ERROR", logger="waypost.checks"):
        with_registry(body)
