"""The write side of a server: registrations, nodes, policies, leases and TTLs, through
the store.

Every write goes to the store and waits until the catalog has applied it, so a client
reads its own writes from any endpoint. Updates to one instance (heartbeat, status,
maintenance, TTL expiry) are compare-and-swap on the instance's revision, so two writers
never undo each other.

TTL instances keep their meaning: critical when the heartbeat window closes (a deadline
this server keeps on a monotonic clock; after a restart each gets a fresh window, as
Consul restores TTL checks), removed ``deregister_after`` later. The removal rides on a
store lease of ``ttl + deregister_after`` that heartbeats keep alive, so it holds even
when no server is running (with etcd, etcd expires it). The lease id is derived from the
instance, so any server renews the same one. A heartbeat to a passing instance writes
nothing. Background tasks (the store pump, the TTL sweep) survive any failure: logged,
retried after a pause, and reported by ``problem`` (and so ``/health``) meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec

from waypost.catalog import Catalog
from waypost.durations import parse_duration
from waypost.errors import Conflict, Gone, NotFound, WaypostError
from waypost.health.ttl import TtlTimers
from waypost.model import (
    MAX_LEASE_ID,
    Entry,
    Event,
    Instance,
    Node,
    Route,
    ServiceConfig,
    Status,
)
from waypost.store.base import (
    MAX_LEASE_TTL_S,
    Delete,
    Grant,
    LeaseState,
    Op,
    Put,
    Store,
    missing,
)

log = logging.getLogger("waypost.registry")

Clock = Callable[[], float]
# How long a write waits for its own event to reach the catalog before answering anyway.
APPLY_TIMEOUT_S = 5.0
# How often TTL deadlines are checked; bounds how late an expiry is noticed.
TTL_TICK_S = 0.05
# First pause before the catalog's store watch is retried after a failure, and the most.
PUMP_RETRY_S = 0.1
PUMP_RETRY_MAX_S = 5.0
# Retries of a compare-and-swap update that lost a race with another writer.
CAS_RETRIES = 8


@dataclass(slots=True)
class _Turn:
    """The lock updates of one instance take turns on, and how many hold or await it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


def ttl_lease_id(inst: Instance) -> int:
    """The lease a TTL instance's removal rides on: derived from its id and timings, so
    every server (and a restarted one) renews the same lease."""
    digest = hashlib.blake2b(
        f"ttl\0{inst.id}\0{inst.ttl}\0{inst.deregister_after}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big") % MAX_LEASE_ID + 1


def ttl_lease_s(inst: Instance) -> float:
    """How long a TTL instance's lease lives without a heartbeat."""
    total = parse_duration(inst.ttl or "0s") + parse_duration(inst.deregister_after)
    return min(total, MAX_LEASE_TTL_S)


class Registry:
    """Owns the store, feeds the catalog from it, and performs every write."""

    def __init__(
        self,
        store: Store,
        catalog: Catalog,
        *,
        node_name: str,
        clock: Clock = time.time,
        monotonic: Clock | None = None,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.node_name = node_name
        self._clock = clock
        # Deadlines: a monotonic clock (a test's ManualClock serves as both).
        self._monotonic = monotonic or (clock if clock is not time.time else time.monotonic)
        self._timers = TtlTimers()
        self._turns: dict[str, _Turn] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.started_at = clock()
        self.problem: str | None = None
        """Why the catalog is not following the store right now (None while it is)."""

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
        now = self._monotonic()
        self._timers = TtlTimers()
        for entry, _ in rows:
            if isinstance(entry, Instance):
                self._schedule(entry, now, fresh=True)
        return revision

    async def _pump(self, revision: int) -> None:
        """Apply the store's changes to the catalog, forever. Whatever fails (the store,
        or a bug), the catalog keeps serving what it has, ``problem`` says why, and the
        pump re-lists after a pause that grows to PUMP_RETRY_MAX_S."""
        delay_s = PUMP_RETRY_S
        position: int | None = revision
        while True:
            try:
                if position is None:
                    position = await self._load()
                    if self.problem is not None:
                        log.info("following the store again at revision %d", position)
                    self.problem = None
                    delay_s = PUMP_RETRY_S
                async for batch in self.store.watch(position):
                    self.catalog.apply(batch)
                    self._track(batch)
                    position = batch[-1].revision
                continue  # the watch ended (the store closed it): watch again
            except asyncio.CancelledError:
                raise
            except Gone:
                log.warning("fell behind the store's event log; re-listing")
                position = None
                continue
            except WaypostError as exc:
                self.problem = f"the catalog is not following the store: {exc}"
                log.warning("store watch failed (%s); retrying in %.1fs", exc, delay_s)
            except Exception as exc:
                self.problem = f"the catalog is not following the store: internal error ({exc})"
                log.exception("store pump failed; re-listing in %.1fs", delay_s)
            position = None  # after any failure the catalog may be partial: re-list
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, PUMP_RETRY_MAX_S)

    def _track(self, batch: Sequence[Event]) -> None:
        now = self._monotonic()
        for ev in batch:
            entry = ev.entry
            if not isinstance(entry, Instance):
                continue
            if ev.type == "delete":
                self._timers.forget(entry.id)
            else:
                self._schedule(entry, now, fresh=entry.id not in self._timers)

    def _schedule(self, inst: Instance, now: float, *, fresh: bool) -> None:
        """When ``inst`` next needs the TTL sweep: its heartbeat deadline."""
        if not inst.ttl or inst.status is Status.CRITICAL:
            self._timers.forget(inst.id)
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

    @staticmethod
    def lease_of(inst: Instance) -> int | None:
        """The lease an instance lives on: its own, or its TTL lease."""
        if inst.lease is not None:
            return inst.lease
        return ttl_lease_id(inst) if inst.ttl else None

    async def _lease_ops(self, insts: Sequence[Instance]) -> list[Op]:
        """Grants for the TTL leases these instances need and that do not exist yet
        (those that do are renewed: a re-registration restarts the clock)."""
        ops: list[Op] = []
        seen: set[int] = set()
        for inst in insts:
            if inst.lease is not None or not inst.ttl:
                continue
            lease_id = ttl_lease_id(inst)
            if lease_id in seen:
                continue
            seen.add(lease_id)
            try:
                await self.store.keepalive(lease_id)
            except NotFound:
                ops.append(Grant(lease=lease_id, ttl_s=ttl_lease_s(inst)))
        return ops

    async def register(self, inst: Instance) -> int:
        """Register or replace one instance; return its revision."""
        inst = self.prepare(inst)
        if inst.ttl is None:  # the common case, kept short: no TTL lease to look after
            return await self._commit([Put(entry=inst, lease=inst.lease)])
        return await self._put_instances([inst])

    async def _put_instances(self, insts: Sequence[Instance], extra: Sequence[Op] = ()) -> int:
        puts: list[Op] = [Put(entry=i, lease=self.lease_of(i)) for i in insts]
        if not any(i.ttl and i.lease is None for i in insts):  # no TTL lease to look after
            return await self._commit([*puts, *extra])
        for attempt in range(2):
            ops = [*await self._lease_ops(insts), *puts, *extra]
            try:
                return await self._commit(ops)
            except Conflict as exc:
                # Another writer granted the same TTL lease meanwhile: it exists now.
                if attempt or exc.field != "lease":
                    raise
        raise AssertionError("unreachable")

    async def deregister(self, instance_id: str) -> int:
        """Remove one instance; NotFound when it is not registered."""
        return await self._commit([Delete(id=instance_id)])

    async def batch(self, register: Sequence[Instance], deregister: Sequence[str]) -> int:
        """Apply registrations and deregistrations all or nothing, at one revision."""
        ids = [i.id for i in register]
        if len(set(ids)) != len(ids):
            raise Conflict("register: an instance id appears twice", field="register")
        if set(ids) & set(deregister):
            raise Conflict(
                "batch: the same id is both registered and deregistered", field="deregister"
            )
        deregister = list(dict.fromkeys(deregister))  # once is enough
        if not register and not deregister:
            return self.catalog.revision
        prepared = [self.prepare(i) for i in register]
        return await self._put_instances(prepared, [Delete(id=i) for i in deregister])

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
                raise missing("instance", instance_id)
            new = change(current)
            if new is None:
                return self.catalog.mod_revision(instance_id)
            op = Put(
                entry=new,
                if_revision=self.catalog.mod_revision(instance_id),
                lease=self.lease_of(new),
            )
            try:
                return await self._commit([op])
            except Conflict:
                # Our catalog is behind the store: wait for the next change and retry.
                await self.catalog.wait_for_revision(self.catalog.revision + 1, 0.5)
            except NotFound as exc:
                if exc.field != "lease" or new.lease is not None:
                    raise
                # The TTL lease lapsed behind our back (a paused server): grant it anew.
                with contextlib.suppress(Conflict):
                    await self.store.apply(await self._lease_ops([new]))
        raise Conflict(f"instance {instance_id!r} kept changing; try again", field="id")

    async def heartbeat(self, instance_id: str) -> int:
        """Renew a TTL instance; writes only when its status must go back to passing."""
        inst = self.catalog.get(instance_id)
        if inst is None:
            raise missing("instance", instance_id)
        if not inst.ttl:
            raise Conflict(
                f"instance {instance_id!r} has no ttl; only TTL instances take heartbeats",
                field="ttl",
            )
        self._timers.set(instance_id, self._monotonic() + parse_duration(inst.ttl))
        lease_id = self.lease_of(inst)
        lease_lost = False
        if lease_id is not None and inst.lease is None:
            try:
                await self.store.keepalive(lease_id)
            except NotFound:
                lease_lost = True

        def renew(cur: Instance) -> Instance | None:
            if cur.status is Status.PASSING and not cur.output and not lease_lost:
                return None
            now = self._clock()
            return msgspec.structs.replace(
                cur, status=Status.PASSING, output="", updated_at=now, last_check=now
            )

        if lease_lost:
            log.warning("instance %s: its TTL lease was gone; granting it anew", instance_id)
            with contextlib.suppress(Conflict):
                await self.store.apply(await self._lease_ops([inst]))
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

    # --- other entry kinds ---------------------------------------------------------------

    async def register_node(self, node: Node) -> int:
        """Register or replace a node (on its lease, if it names one)."""
        now = self._clock()
        old = self.catalog.entry("node", node.id)
        node = msgspec.structs.replace(
            node,
            registered=True,
            instances=0,
            registered_at=old.registered_at if isinstance(old, Node) else now,
            updated_at=now,
            last_seen=now,
        )
        return await self._commit([Put(entry=node, lease=node.lease)])

    async def deregister_node(self, node_id: str) -> int:
        """Remove a registered node (its instances stay: they have their own lifetimes)."""
        return await self._commit([Delete(id=node_id, kind="node")])

    async def put_entry(self, entry: ServiceConfig | Route) -> int:
        """Write a service config or a route."""
        return await self._commit([Put(entry=_stamped(entry, self._clock()))])

    async def delete_entry(self, kind: str, key: str) -> int:
        """Remove a service config or a route; NotFound when there is none."""
        return await self._commit([Delete(id=key, kind=kind)])

    # --- leases --------------------------------------------------------------------------

    async def grant(self, ttl_s: float) -> int:
        """A new lease living ``ttl_s`` without keep-alives."""
        return await self.store.grant(ttl_s)

    async def keepalive(self, lease_id: int) -> float:
        """Restart a lease's clock; its TTL. NotFound once it has lapsed."""
        return await self.store.keepalive(lease_id)

    async def revoke(self, lease_id: int) -> int:
        """End a lease now: what it holds is deleted at once."""
        revision = await self.store.revoke(lease_id)
        await self.catalog.wait_for_revision(revision, APPLY_TIMEOUT_S)
        return revision

    async def lease(self, lease_id: int) -> LeaseState:
        """A lease's TTL, time left and entries."""
        return await self.store.lease(lease_id)

    # --- TTL -----------------------------------------------------------------------------

    async def _ttl_loop(self) -> None:
        while True:
            await asyncio.sleep(TTL_TICK_S)
            try:
                await self.expire(self._monotonic())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("TTL sweep failed; it runs again on the next tick")

    async def expire(self, now: float) -> None:
        """Mark TTL instances whose heartbeat window closed critical (their lease removes
        them ``deregister_after`` later)."""
        for iid in self._timers.pop_due(now):
            inst = self.catalog.get(iid)
            if inst is None or not inst.ttl or inst.status is Status.CRITICAL:
                continue
            try:
                await self._expire_one(iid, inst)
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
            if cur.status is Status.CRITICAL or (due is not None and due > self._monotonic()):
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


def _stamped(entry: ServiceConfig | Route, now: float) -> Entry:
    return msgspec.structs.replace(entry, updated_at=now)
