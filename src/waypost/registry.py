"""The write side of a server: registrations, status changes and TTLs, through the store.

Every write goes to the store and waits until the catalog has applied it, so a client
reads its own writes from any endpoint. Updates to one instance (heartbeat, status,
maintenance, TTL expiry) are compare-and-swap on the instance's revision, so two writers
never undo each other. TTL deadlines live in memory: after a restart every TTL instance
gets a fresh window (as Consul restores TTL checks), and a heartbeat to a passing
instance costs no write at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec

from waypost.catalog import Catalog
from waypost.durations import parse_duration
from waypost.errors import Conflict, Gone, InvalidInput, NotFound, WaypostError
from waypost.health.ttl import TtlTimers
from waypost.model import Event, Instance, Status
from waypost.store.base import Delete, Op, Put, Store

log = logging.getLogger("waypost.registry")

Clock = Callable[[], float]
# How long a write waits for its own event to reach the catalog before answering anyway.
APPLY_TIMEOUT_S = 5.0
# How often TTL deadlines are checked; bounds how late an expiry is noticed.
TTL_TICK_S = 0.05
# First pause before the catalog's store watch is retried after a failure.
PUMP_RETRY_S = 0.1
# Retries of a compare-and-swap update that lost a race with another writer.
CAS_RETRIES = 8


@dataclass(slots=True)
class _Turn:
    """The lock updates of one instance take turns on, and how many hold or await it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class Registry:
    """Owns the store, feeds the catalog from it, and performs every write."""

    def __init__(
        self, store: Store, catalog: Catalog, *, node_name: str, clock: Clock = time.time
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.node_name = node_name
        self._clock = clock
        self._timers = TtlTimers()
        self._turns: dict[str, _Turn] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.started_at = clock()

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Load the catalog from the store, then follow the store's changes."""
        revision = await self._load()
        self._tasks = [
            asyncio.create_task(self._pump(revision), name="waypost-pump"),
            asyncio.create_task(self._ttl_loop(), name="waypost-ttl"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _load(self) -> int:
        revision, rows = await self.store.snapshot()
        self.catalog.load(rows, revision)
        now = self._clock()
        self._timers = TtlTimers()
        for inst, _ in rows:
            self._schedule(inst, now, fresh=True)
        return revision

    async def _pump(self, revision: int) -> None:
        """Apply the store's changes to the catalog, forever; a failing store is retried
        (the catalog keeps serving what it has), a pruned position re-lists."""
        delay_s = PUMP_RETRY_S
        position: int | None = revision
        while True:
            try:
                if position is None:
                    position = await self._load()
                async for batch in self.store.watch(position):
                    self.catalog.apply(batch)
                    self._track(batch)
                    position = batch[-1].revision
                    delay_s = PUMP_RETRY_S
            except Gone:
                log.warning("fell behind the store's event log; re-listing")
                position = None
                continue
            except WaypostError as exc:
                log.warning("store watch failed (%s); retrying in %.1fs", exc, delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 5.0)

    def _track(self, batch: Sequence[Event]) -> None:
        now = self._clock()
        for ev in batch:
            if ev.type == "delete":
                self._timers.forget(ev.instance.id)
            else:
                self._schedule(ev.instance, now, fresh=ev.instance.id not in self._timers)

    def _schedule(self, inst: Instance, now: float, *, fresh: bool) -> None:
        """When ``inst`` next needs the TTL sweep: its heartbeat deadline, or its removal."""
        if not inst.ttl:
            self._timers.forget(inst.id)
        elif inst.status is Status.CRITICAL:
            since = inst.last_check or inst.updated_at
            self._timers.set(inst.id, since + parse_duration(inst.deregister_after))
        elif fresh or inst.status is Status.PASSING:
            # A fresh registration, or a change back to passing, opens a new window.
            self._timers.set(inst.id, now + parse_duration(inst.ttl))

    # --- writes --------------------------------------------------------------------------

    async def _commit(self, ops: Sequence[Op]) -> int:
        revision = await self.store.apply(ops)
        await self.catalog.wait_for_revision(revision, APPLY_TIMEOUT_S)
        return revision

    def prepare(self, inst: Instance) -> Instance:
        """Fill in what the server owns: node, timestamps; keep registered_at on replace."""
        now = self._clock()
        old = self.catalog.get(inst.id)
        return msgspec.structs.replace(
            inst,
            node=inst.node or self.node_name,
            registered_at=old.registered_at if old is not None else now,
            updated_at=now,
            last_check=now,
        )

    async def register(self, inst: Instance) -> int:
        """Register or replace one instance; return its revision."""
        return await self._commit([Put(instance=self.prepare(inst))])

    async def deregister(self, instance_id: str) -> int:
        """Remove one instance; NotFound when it is not registered."""
        return await self._commit([Delete(id=instance_id)])

    async def batch(self, register: Sequence[Instance], deregister: Sequence[str]) -> int:
        """Apply registrations and deregistrations all or nothing."""
        ids = [i.id for i in register]
        if len(set(ids)) != len(ids):
            raise InvalidInput("register: an instance id appears twice", field="register")
        if set(ids) & set(deregister):
            raise InvalidInput(
                "batch: the same id is both registered and deregistered", field="deregister"
            )
        ops: list[Op] = [Put(instance=self.prepare(i)) for i in register]
        ops += [Delete(id=i) for i in deregister]
        if not ops:
            return self.catalog.revision
        return await self._commit(ops)

    async def _update(self, instance_id: str, change: Callable[[Instance], Instance | None]) -> int:
        """Compare-and-swap one instance: ``change`` returns the new one, or None to skip.

        Updates to one instance through this server take turns (so they never conflict
        with each other); the compare-and-swap guards against other writers of the store.
        """
        turn = self._turns.get(instance_id)
        if turn is None:
            turn = self._turns[instance_id] = _Turn()
        turn.users += 1
        try:
            async with turn.lock:
                return await self._update_once(instance_id, change)
        finally:
            turn.users -= 1
            if turn.users == 0:
                del self._turns[instance_id]

    async def _update_once(
        self, instance_id: str, change: Callable[[Instance], Instance | None]
    ) -> int:
        for _ in range(CAS_RETRIES):
            current = self.catalog.get(instance_id)
            if current is None:
                raise NotFound(f"instance {instance_id!r} is not registered", field="id")
            new = change(current)
            if new is None:
                return self.catalog.mod_revision(instance_id)
            try:
                return await self._commit(
                    [Put(instance=new, if_revision=self.catalog.mod_revision(instance_id))]
                )
            except Conflict:
                # Our catalog is behind the store: wait for the next change and retry.
                await self.catalog.wait_for_revision(self.catalog.revision + 1, 0.5)
        raise Conflict(f"instance {instance_id!r} kept changing; try again", field="id")

    async def heartbeat(self, instance_id: str) -> int:
        """Renew a TTL instance; writes only when its status must go back to passing."""
        inst = self.catalog.get(instance_id)
        if inst is None:
            raise NotFound(f"instance {instance_id!r} is not registered", field="id")
        if not inst.ttl:
            raise InvalidInput(
                f"instance {instance_id!r} has no ttl; only TTL instances take heartbeats",
                field="ttl",
            )
        self._timers.set(instance_id, self._clock() + parse_duration(inst.ttl))

        def renew(cur: Instance) -> Instance | None:
            if cur.status is Status.PASSING and not cur.output:
                return None
            now = self._clock()
            return msgspec.structs.replace(
                cur, status=Status.PASSING, output="", updated_at=now, last_check=now
            )

        return await self._update(instance_id, renew)

    async def set_status(self, instance_id: str, status: Status, output: str) -> int:
        """Set an instance's status and output (as a check result would)."""

        def change(cur: Instance) -> Instance | None:
            if cur.status is status and cur.output == output:
                return None
            now = self._clock()
            return msgspec.structs.replace(
                cur, status=status, output=output, updated_at=now, last_check=now
            )

        return await self._update(instance_id, change)

    async def set_maintenance(self, instance_id: str, enable: bool, reason: str) -> int:
        """Put an instance in or out of maintenance; queries see it as critical meanwhile."""

        def change(cur: Instance) -> Instance | None:
            reason_now = reason if enable else ""
            if cur.maintenance is enable and cur.maintenance_reason == reason_now:
                return None
            return msgspec.structs.replace(
                cur, maintenance=enable, maintenance_reason=reason_now, updated_at=self._clock()
            )

        return await self._update(instance_id, change)

    # --- TTL -----------------------------------------------------------------------------

    async def _ttl_loop(self) -> None:
        while True:
            await asyncio.sleep(TTL_TICK_S)
            try:
                await self.expire(self._clock())
            except WaypostError as exc:
                log.warning("TTL sweep failed: %s", exc)

    async def expire(self, now: float) -> None:
        """Mark overdue TTL instances critical; deregister those critical too long."""
        for iid in self._timers.pop_due(now):
            inst = self.catalog.get(iid)
            if inst is None or not inst.ttl:
                continue
            try:
                if inst.status is not Status.CRITICAL:
                    await self._expire_one(iid, inst)
                else:
                    await self._reap_one(iid)
            except (NotFound, Conflict):
                pass  # it changed meanwhile (a heartbeat, a deregistration): fine
            except WaypostError as exc:
                log.warning("TTL action on %s failed (%s); retrying in 1s", iid, exc)
                if iid not in self._timers:
                    self._timers.set(iid, now + 1.0)

    async def _expire_one(self, iid: str, inst: Instance) -> int:
        ttl = inst.ttl or ""
        log.info("instance %s missed its %s TTL; now critical", iid, ttl)

        def change(cur: Instance) -> Instance | None:
            due = self._timers.due(iid)
            if cur.status is Status.CRITICAL or (due is not None and due > self._clock()):
                return None  # a heartbeat came in meanwhile
            now = self._clock()
            return msgspec.structs.replace(
                cur,
                status=Status.CRITICAL,
                output=f"TTL expired: no heartbeat within {ttl}",
                updated_at=now,
                last_check=now,
            )

        return await self._update(iid, change)

    async def _reap_one(self, iid: str) -> int:
        log.info("instance %s critical for longer than deregister_after; deregistering", iid)
        return await self._commit([Delete(id=iid, if_revision=self.catalog.mod_revision(iid))])
