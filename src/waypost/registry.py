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
import functools
import gc
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import msgspec

from waypost.aio import cancel_all
from waypost.catalog import Catalog
from waypost.durations import parse_duration
from waypost.errors import Conflict, Forbidden, Gone, NotFound, WaypostError
from waypost.health.files import CheckFiles
from waypost.health.machine import worst
from waypost.health.targets import require_own_target
from waypost.health.ttl import TtlTimers
from waypost.members import Members
from waypost.model import (
    MAX_LEASE_ID,
    MAX_OUTPUT_LEN,
    NODE_CHECK,
    AclPolicy,
    AclToken,
    Check,
    CheckState,
    Entry,
    Event,
    Instance,
    KVPair,
    Node,
    NodeStatus,
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
from waypost.telemetry import TELEMETRY
from waypost.zones import CustomZones

log = logging.getLogger("waypost.registry")

Clock = Callable[[], float]
# How long a write waits for its own event to reach the catalog before answering anyway.
APPLY_TIMEOUT_S = 5.0
# How often TTL deadlines are checked; bounds how late an expiry is noticed.
TTL_TICK_S = 0.05
# First pause before the catalog's store watch is retried after a failure, and the most.
PUMP_RETRY_S = 0.1
PUMP_RETRY_MAX_S = 5.0
# How often a server looks again at work another server owns (a TTL expiry, a failed
# node), in case that server went away before doing it.
OTHERS_WORK_RECHECK_S = 1.0
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


def removal_lease_id(inst: Instance, delay: str) -> int:
    """The lease a critical instance's removal rides on (``deregister_critical_after``,
    or a failed node's ``deregister_after``): derived, so every server uses the same."""
    digest = hashlib.blake2b(f"critical\0{inst.id}\0{delay}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % MAX_LEASE_ID + 1


def ttl_name(inst: Instance) -> str:
    """The name of an instance's TTL state: its ttl check's name, else ``ttl``."""
    for check in inst.checks:
        if check.kind == "ttl" and isinstance(check.name, str):
            return check.name
    return "ttl"


def node_failed(inst: Instance) -> bool:
    """Whether the registry holds ``inst`` critical because its node failed."""
    return any(s.name == NODE_CHECK and s.status is Status.CRITICAL for s in inst.health)


def removal_delay(inst: Instance, checks: Sequence[Check]) -> str | None:
    """How long ``inst`` may stay critical before it is removed, if it is to be: the
    shortest ``deregister_critical_after`` of its checks; for a failed node's instance
    with none, its ``deregister_after``."""
    if inst.status is not Status.CRITICAL:
        return None
    # Only checks that have failed count: not one that has not run yet, nor one whose
    # failures its grace ignores (a slow starter is not removed while it starts).
    # A failed node's instances: every check counts as failed.
    down = node_failed(inst)
    failed = {s.name for s in inst.health if s.status is Status.CRITICAL and s.failures > 0}
    delays = [
        c.deregister_critical_after
        for c in checks
        if isinstance(c.deregister_critical_after, str)
        and (down or (c.name if isinstance(c.name, str) else c.kind) in failed)
    ]
    if not delays and down:
        delays = [inst.deregister_after]
    if not delays:
        return None
    return min(delays, key=parse_duration)


def composed(inst: Instance, health: tuple[CheckState, ...], now: float) -> Instance:
    """``inst`` with ``health`` and the status it makes: the worst of its states, the
    output naming the checks that made it."""
    status = worst([s.status for s in health])
    output = "; ".join(f"{s.name}: {s.output}" for s in health if s.status is status)
    return msgspec.structs.replace(
        inst,
        health=health,
        status=status,
        output=output[:MAX_OUTPUT_LEN],
        updated_at=now,
        last_check=now,
    )


def _initial(check: Check, now: float) -> CheckState:
    return CheckState(
        name=str(check.name) if isinstance(check.name, str) else check.kind,
        kind=check.kind,
        status=Status(check.initial_status) if check.kind != "ttl" else Status.PASSING,
        output="not run yet" if check.kind != "ttl" else "registered; awaiting heartbeats",
        changed_at=now,
    )


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
        command_checks: bool = False,
        check_files: CheckFiles | None = None,
        check_any_target: bool = False,
        custom_zones: CustomZones | None = None,
        members: Members | None = None,
    ) -> None:
        self.store = store
        self.catalog = catalog
        # Servers sharing the store: TTL expiry and node failures are acted on by one.
        self.members = members
        self.node_name = node_name
        self.command_checks = command_checks
        # What the checks this server runs may read (ca_file): nothing unless the
        # operator names a directory (--check-files-dir).
        self.check_files = check_files or CheckFiles()
        # Whether the checks this server runs may target other hosts than the
        # instance's own address (health/targets.py).
        self.check_any_target = check_any_target
        # Where an instance's custom DNS domain may be (zones.py).
        self.custom_zones = custom_zones or CustomZones()
        self._clock = clock
        # Deadlines: a monotonic clock (a test's ManualClock serves as both).
        self._monotonic = monotonic or (clock if clock is not time.time else time.monotonic)
        self._timers = TtlTimers()
        self._turns: dict[str, _Turn] = {}
        # Nodes whose entry was deleted (their agent's lease lapsed) with instances left.
        self._failed_nodes: dict[str, Node] = {}
        # Failed nodes another server acts on: when to look at each again.
        self._others_nodes: dict[str, float] = {}
        self.listeners: list[Callable[[Sequence[Event] | None], None]] = []
        """Called with each batch the catalog applied (None after a re-list)."""
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
        await cancel_all(self._tasks)
        self._tasks = []

    async def _load(self) -> int:
        """List what the store holds. After a gap (the store's log no longer reaches
        back), the difference from what the catalog held goes out as events."""
        # No cyclic collection while a million entries are decoded and indexed: each
        # full one would walk all of them again (10% of a start at 1,000,000 instances).
        collecting = gc.isenabled()
        gc.disable()
        try:
            revision, rows = await self.store.snapshot()
            self.catalog.relist(rows, revision)
        finally:
            if collecting:
                gc.enable()
        now = self._monotonic()
        self._timers = TtlTimers()
        for entry, _ in rows:
            if isinstance(entry, Instance) and entry.ttl:
                self._schedule(entry, now, fresh=True)
        # Agent-owned instances whose node is gone (lapsed while no server ran).
        for node_id in {i.node for i in self.catalog.instances() if i.agent and i.node}:
            if node_id is not None and self.catalog.entry("node", node_id) is None:
                self._failed_nodes[node_id] = Node(id=node_id)
        self._tell(None)
        return revision

    def _tell(self, batch: Sequence[Event] | None) -> None:
        for listener in self.listeners:
            try:
                listener(batch)
            except Exception:
                log.exception("a catalog listener failed")

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
                    if not batch:  # a Progress: revisions with nothing of ours
                        reached = getattr(batch, "revision", 0)
                        if reached > position:
                            self.catalog.apply((), revision=reached)
                            position = reached
                        continue
                    self.catalog.apply(batch)
                    self._track(batch)
                    self._tell(batch)
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
            if isinstance(entry, Node):
                if ev.type == "delete" and entry.status is not NodeStatus.FAILED:
                    self._failed_nodes[entry.id] = entry
                else:
                    self._failed_nodes.pop(entry.id, None)
                    self._others_nodes.pop(entry.id, None)
                continue
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
        revision = await self._timed(self.store.apply(ops), ops)
        await self.catalog.wait_for_revision(revision, APPLY_TIMEOUT_S)
        return revision

    async def _timed(self, write: Awaitable[int], ops: Sequence[Op]) -> int:
        """A store write, counted and timed for ``/metrics``."""
        start = time.perf_counter()
        for op in ops:
            TELEMETRY.store_ops[type(op).__name__.lower()] += 1
        try:
            return await write
        except WaypostError as exc:
            if not isinstance(exc, NotFound | Conflict | Forbidden):
                TELEMETRY.store_errors += 1  # the store failed, not the request
            raise
        finally:
            TELEMETRY.store_seconds.observe(time.perf_counter() - start)

    def checks_of(self, inst: Instance) -> tuple[Check, ...]:
        """The checks an instance runs: its own, or its service config's template
        against its address and port."""
        if inst.checks:
            return inst.checks
        config = self.catalog.entry("service_config", inst.service)
        if isinstance(config, ServiceConfig) and config.check is not None:
            return (config.check.for_instance(inst.address, inst.port),)
        return ()

    def prepare(self, inst: Instance) -> Instance:
        """Fill in what the server owns: node, timestamps (registered_at kept on replace)
        and, unless an agent reports them, the health of the instance's checks: a check
        new or changed starts at its initial status, one unchanged keeps its state."""
        if inst.domain:
            self.custom_zones.require(inst.domain, iid=inst.id)
        if not inst.agent:
            for check in inst.checks:
                if check.kind == "command" and not self.command_checks:
                    raise Forbidden(
                        f"instance {inst.id!r}: command checks are disabled on this server "
                        "(start it with --enable-command-checks, or define the check in "
                        "an agent's files)",
                        field="checks",
                    )
                if isinstance(check.ca_file, str):
                    self.check_files.allowed(check.ca_file)  # Forbidden outside the dir
            if not self.check_any_target:
                require_own_target(inst, inst.checks)
        now = self._clock()
        old = self.catalog.get(inst.id)
        inst = msgspec.structs.replace(
            inst,
            node=inst.node or self.node_name,
            registered_at=old.registered_at if old is not None else now,
            updated_at=now,
            last_check=now,
        )
        if inst.agent:
            return composed(inst, inst.health, now) if inst.health else inst
        checks = self.checks_of(inst)
        if not inst.checks:
            # No checks of its own: the status is as given (a template's check reports
            # once it has run), unless the old record has the template's state.
            if checks and old is not None and old.health and self.checks_of(old) == checks:
                return composed(inst, old.health, now)
            return msgspec.structs.replace(inst, health=()) if inst.health else inst
        kept = {}
        if old is not None:
            old_checks = {c.name: c for c in old.checks}
            for state in old.health:
                if state.name == NODE_CHECK:
                    continue
                kept[state.name] = (old_checks.get(state.name), state)
        health = []
        for check in checks:
            name = str(check.name) if isinstance(check.name, str) else check.kind
            was = kept.get(name)
            if was is not None and was[0] == check:
                health.append(was[1])
            elif check.kind == "ttl" and inst.status is Status.CRITICAL:
                # Registered critical (as Consul's TTL checks start): so until a heartbeat.
                first = _initial(check, now)
                health.append(
                    msgspec.structs.replace(
                        first, status=Status.CRITICAL, output="registered; awaiting a heartbeat"
                    )
                )
            else:
                health.append(_initial(check, now))
        if inst.ttl and all(h.name != ttl_name(inst) for h in health):
            health.append(_initial(Check(ttl=inst.ttl, name=ttl_name(inst)), now))
        return composed(inst, tuple(health), now)

    def lease_of(self, inst: Instance) -> int | None:
        """The lease an instance lives on: its own, its TTL lease, or, while critical,
        the lease its removal rides on."""
        if inst.lease is not None:
            return inst.lease
        if inst.ttl:
            return ttl_lease_id(inst)
        delay = removal_delay(inst, self.checks_of(inst))
        return removal_lease_id(inst, delay) if delay is not None else None

    def _derived(self, inst: Instance) -> tuple[int, float] | None:
        """The derived lease (TTL or removal) ``inst`` needs, and its TTL; None if none."""
        if inst.lease is not None:
            return None
        if inst.ttl:
            return ttl_lease_id(inst), ttl_lease_s(inst)
        delay = removal_delay(inst, self.checks_of(inst))
        if delay is None:
            return None
        return removal_lease_id(inst, delay), min(
            max(parse_duration(delay), 0.001), MAX_LEASE_TTL_S
        )

    async def _lease_ops(self, insts: Iterable[Instance]) -> list[Op]:
        """Grants for the derived leases these instances need and that do not exist yet;
        those that do are renewed (a registration, or going critical, starts the clock)."""
        ops: list[Op] = []
        seen: set[int] = set()
        for inst in insts:
            derived = self._derived(inst)
            if derived is None or derived[0] in seen:
                continue
            lease_id, ttl_s = derived
            seen.add(lease_id)
            try:
                await self.store.keepalive(lease_id)
            except NotFound:
                ops.append(Grant(lease=lease_id, ttl_s=ttl_s))
        return ops

    async def register(self, inst: Instance) -> int:
        """Register or replace one instance; return its revision."""
        inst = self.prepare(inst)
        if inst.ttl is None and inst.status is not Status.CRITICAL:
            # The common case, kept short: no derived lease to look after.
            return await self._commit([Put(entry=inst, lease=inst.lease)])
        return await self._put_instances([inst])

    async def register_each(self, insts: Sequence[Instance]) -> list[int | BaseException]:
        """Register each instance on its own, all at once: what each ``register`` call
        would have answered (its revision, or its error), in order. The store's group
        commit writes those that come together in one transaction; the common ones (no
        derived lease) go to the store with no task each, and the catalog is waited for
        once (a non-atomic batch of 64 registrations)."""
        refused: dict[int, BaseException] = {}
        plain: list[list[Op]] = []
        slots: list[tuple[bool, int]] = []  # (plain?, position among its kind)
        leased: list[Awaitable[int]] = []
        for n, inst in enumerate(insts):
            try:
                inst = self.prepare(inst)
            except WaypostError as exc:
                refused[n] = exc
                continue
            if inst.ttl is None and inst.status is not Status.CRITICAL:
                slots.append((True, len(plain)))
                plain.append([Put(entry=inst, lease=inst.lease)])
            else:
                slots.append((False, len(leased)))
                leased.append(asyncio.ensure_future(self._put_instances([inst])))
        submitted = self.store.submit_each(plain)
        pending = [submitted[k] if is_plain else leased[k] for is_plain, k in slots]
        start = time.perf_counter()
        results = await asyncio.gather(*pending, return_exceptions=True)
        # Counted as _timed would, without a task each: they shared one commit.
        took = time.perf_counter() - start
        TELEMETRY.store_ops["put"] += len(plain)
        for (is_plain, _), result in zip(slots, results, strict=True):
            if is_plain:
                TELEMETRY.store_seconds.observe(took)
                if isinstance(result, WaypostError) and not isinstance(
                    result, NotFound | Conflict | Forbidden
                ):
                    TELEMETRY.store_errors += 1
        done = iter(results)
        out = [refused[n] if n in refused else next(done) for n in range(len(insts))]
        revisions = [r for r in out if isinstance(r, int)]
        if revisions:
            await self.catalog.wait_for_revision(max(revisions), APPLY_TIMEOUT_S)
        return out

    async def _put_instances(self, insts: Sequence[Instance], extra: Sequence[Op] = ()) -> int:
        puts: list[Op] = [Put(entry=i, lease=self.lease_of(i)) for i in insts]
        if not any(self._derived(i) for i in insts):  # no derived lease to look after
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
        """Remove one instance; NotFound when it is not registered. Its derived lease (TTL
        or removal) goes with it: left to lapse, it would count as a lapse (the lease
        guard's count) with nothing in it."""
        gone = self._derived_leases([instance_id])
        revision = await self._commit([Delete(id=instance_id)])
        await self._revoke_derived(gone)
        return revision

    def _derived_leases(self, ids: Sequence[str]) -> list[int]:
        """The derived leases of these registered instances (before they are deleted)."""
        out = []
        for iid in ids:
            inst = self.catalog.get(iid)
            derived = self._derived(inst) if inst is not None else None
            if derived is not None:
                out.append(derived[0])
        return out

    async def _revoke_derived(self, lease_ids: Sequence[int]) -> None:
        """End the derived leases of deleted instances: left to lapse, each would count
        as a lapse in the lease guard's reckoning, with nothing in it."""
        for lease_id in lease_ids:
            try:
                await self.store.revoke(lease_id)
            except NotFound:
                pass  # none granted yet, or gone already
            except WaypostError as exc:  # it lapses on its own then
                log.warning("lease %d stays until it lapses (%s)", lease_id, exc)

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
        gone = self._derived_leases(deregister)
        revision = await self._put_instances(prepared, [Delete(id=i) for i in deregister])
        await self._revoke_derived(gone)
        return revision

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
            lease = self.lease_of(new)
            op = Put(entry=new, if_revision=self.catalog.mod_revision(instance_id), lease=lease)
            ops: list[Op] = [op]
            if (
                lease is not None
                and new.lease is None
                and not new.ttl
                and lease != self.lease_of(current)
            ):
                # Just went critical: its removal clock starts now.
                ops = [*await self._lease_ops([new]), op]
            try:
                return await self._commit(ops)
            except Conflict:
                # Our catalog is behind the store: wait for the next change and retry.
                await self.catalog.wait_for_revision(self.catalog.revision + 1, 0.5)
            except NotFound as exc:
                if exc.field != "lease" or new.lease is not None:
                    raise
                # A derived lease lapsed behind our back (a paused server): grant it anew.
                with contextlib.suppress(Conflict):
                    await self.store.apply(await self._lease_ops([new]))
        raise Conflict(f"instance {instance_id!r} kept changing; try again", field="id")

    async def heartbeat(
        self,
        instance_id: str,
        status: Status = Status.PASSING,
        output: str | None = None,
    ) -> int:
        """Renew a TTL instance; writes only when its status must change. ``status`` and
        ``output``: what the TTL check now says (Consul's ``check/warn`` and ``fail``
        renew the TTL too, with their note as output)."""
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
            now = self._clock()
            if cur.health:
                said = "heartbeat received" if output is None else output
                return self._with_ttl_state(cur, status, said, now)
            said = "" if output is None else output
            if cur.status is status and cur.output == said and not lease_lost:
                return None
            return msgspec.structs.replace(
                cur, status=status, output=said, updated_at=now, last_check=now
            )

        if lease_lost:
            log.warning("instance %s: its TTL lease was gone; granting it anew", instance_id)
            with contextlib.suppress(Conflict):
                await self.store.apply(await self._lease_ops([inst]))
        return await self._update(instance_id, renew)

    def _with_ttl_state(
        self, cur: Instance, status: Status, output: str, now: float
    ) -> Instance | None:
        """``cur`` with its TTL state set (None when that changes nothing)."""
        name = ttl_name(cur)
        old = next((s for s in cur.health if s.name == name), None)
        if old is not None and old.status is status and old.output == output:
            return None
        state = CheckState(name=name, kind="ttl", status=status, output=output, changed_at=now)
        health = tuple(state if s.name == name else s for s in cur.health)
        if old is None:
            health = (*health, state)
        return composed(cur, health, now)

    async def report_health(
        self, instance_id: str, states: Sequence[CheckState], *, agent: bool = False
    ) -> int:
        """Store the states of an instance's checks (those it still has); its status
        becomes the worst of them. From the agent that owns it, a report also says its
        node is alive again."""
        given = {s.name: s for s in states}

        def change(cur: Instance) -> Instance | None:
            if agent and not cur.agent:
                raise Conflict(
                    f"instance {instance_id!r} is checked by the server, not an agent; "
                    "set a status with PUT /api/v1/instances/{id}/status",
                    field="id",
                )
            names = [c.name if isinstance(c.name, str) else c.kind for c in self.checks_of(cur)]
            if cur.ttl and ttl_name(cur) not in names:
                names.append(ttl_name(cur))
            current = {s.name: s for s in cur.health}
            if not agent and NODE_CHECK in current:
                names.append(NODE_CHECK)  # a failed node's instance stays failed
            health = tuple(
                given.get(n) or current.get(n) or CheckState(name=n, output="not run yet")
                for n in names
            )
            if health == cur.health:
                return None
            return composed(cur, health, self._clock())

        return await self._update(instance_id, change)

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

    async def put_kv(self, pair: KVPair, if_revision: int | None = None) -> int:
        """Write a key (``if_revision``: only if the key is at that revision, 0: only if
        it does not exist; Conflict otherwise). The creation revision is kept."""
        old = self.catalog.entry("kv", pair.key)
        created = 0
        if isinstance(old, KVPair):
            created = old.create_revision or self.catalog.mod_revision(pair.key, "kv")
        pair = msgspec.structs.replace(pair, create_revision=created, updated_at=self._clock())
        return await self._commit([Put(entry=pair, if_revision=if_revision)])

    async def delete_kv(self, keys: Sequence[str], if_revision: int | None = None) -> int:
        """Delete keys in one revision (NotFound if one is gone meanwhile)."""
        return await self._commit([Delete(id=k, kind="kv", if_revision=if_revision) for k in keys])

    # --- ACLs ----------------------------------------------------------------------------

    async def put_acl(
        self, entry: AclPolicy | AclToken, *, if_revision: int | None = None, ttl_s: float = 0
    ) -> int:
        """Write an ACL policy or token; a token with ``ttl_s`` rides a lease of that TTL
        (it is deleted when it expires, as leases do)."""
        lease = await self.grant(ttl_s) if ttl_s > 0 else None
        return await self._commit([Put(entry=entry, if_revision=if_revision, lease=lease)])

    async def acl_bootstrap(self, policy: AclPolicy, token: AclToken) -> int:
        """The management policy and the first token, in one revision and only once
        (Conflict when the policy exists: bootstrap was done)."""
        return await self._commit([Put(entry=policy, if_revision=0), Put(entry=token)])

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
                if self._failed_nodes:
                    await self.fail_nodes()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("TTL sweep failed; it runs again on the next tick")

    async def fail_nodes(self) -> None:
        """Nodes whose entry went away (their agent's lease lapsed): mark the instances
        their agents owned critical, each to be removed after its ``deregister_critical_after``
        (or ``deregister_after``), and keep a ``failed`` node entry until then."""
        now = self._monotonic()
        for node_id, last in list(self._failed_nodes.items()):
            if self.catalog.entry("node", node_id) is not None:  # its agent came back
                self._failed_nodes.pop(node_id, None)
                self._others_nodes.pop(node_id, None)
                continue
            if self.members is not None and not self.members.owns(f"node:{node_id}"):
                # Another server acts on it; until its ``failed`` entry shows, look again
                # now and then, in case that server went away.
                if self._others_nodes.setdefault(node_id, now) > now:
                    continue
                self._others_nodes[node_id] = now + OTHERS_WORK_RECHECK_S
                pending = any(
                    i.agent and not node_failed(i) for i in self.catalog.node_instances(node_id)
                )
                if not pending:
                    self._failed_nodes.pop(node_id, None)
                    self._others_nodes.pop(node_id, None)
                continue
            self._others_nodes.pop(node_id, None)
            owned = [i for i in self.catalog.node_instances(node_id) if i.agent]
            output = f"node {node_id} failed: its agent stopped renewing its lease"
            longest = 0.0
            for inst in owned:
                try:
                    await self._update(inst.id, functools.partial(self._node_down, output=output))
                except (NotFound, Conflict):
                    continue
                now_inst = self.catalog.get(inst.id)
                derived = self._derived(now_inst) if now_inst is not None else None
                if derived is not None:
                    longest = max(longest, derived[1])
            self._failed_nodes.pop(node_id, None)
            if not owned:
                continue
            log.warning("%s; %d instances now critical", output, len(owned))
            if longest <= 0:
                continue
            await self._put_failed_node(last, longest)

    def _node_down(self, cur: Instance, *, output: str) -> Instance | None:
        if node_failed(cur):
            return None
        now = self._clock()
        state = CheckState(
            name=NODE_CHECK, kind="node", status=Status.CRITICAL, output=output, changed_at=now
        )
        health = (*(s for s in cur.health if s.name != NODE_CHECK), state)
        return composed(cur, health, now)

    async def _put_failed_node(self, last: Node, ttl_s: float) -> None:
        """A ``failed`` entry for a node, on a lease of its instances' longest removal delay."""
        now = self._clock()
        node = msgspec.structs.replace(
            last, status=NodeStatus.FAILED, lease=None, updated_at=now, registered=True
        )
        try:
            lease_id = await self.store.grant(ttl_s)
            node = msgspec.structs.replace(node, lease=lease_id)
            await self._commit([Put(entry=node, if_revision=0, lease=lease_id)])
        except Conflict:
            pass  # its agent registered it again meanwhile (or another server did this)

    async def expire(self, now: float) -> None:
        """Mark TTL instances whose heartbeat window closed critical (their lease removes
        them ``deregister_after`` later)."""
        for iid in self._timers.pop_due(now):
            inst = self.catalog.get(iid)
            if inst is None or not inst.ttl or inst.status is Status.CRITICAL:
                continue
            if self.members is not None and not self.members.owns(iid):
                # Another server marks it; look again soon in case that one went away.
                self._timers.set(iid, now + OTHERS_WORK_RECHECK_S)
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
            if cur.health:
                output = f"TTL expired: no heartbeat within {ttl}"
                return self._with_ttl_state(cur, Status.CRITICAL, output, now)
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
