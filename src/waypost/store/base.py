"""The store protocol: the source of truth behind every catalog.

A store holds entries of several kinds (instances, nodes, service configs, routes) under
(kind, key), as etcd holds keys. Every write is a batch of operations applied all or
nothing at one new revision, so several events may share a revision (etcd's
transactions do the same); an event's ``index`` is its place within its revision. An
operation may name the revision it expects (compare-and-swap, as etcd's ``mod_revision``
transactions). The store keeps an event log for a window so watches resume, and streams
its changes in revision order, a revision never split across two batches.

Leases have etcd's meaning: ``grant(ttl)`` makes one, ``keepalive`` restarts its clock,
``revoke`` ends it, and an entry put with ``lease=`` is deleted (as an ordinary event)
when the lease lapses or is revoked. Deadlines run on a monotonic clock; a store that
restarts gives every lease a fresh TTL, as etcd does after a leader change.

Every backend passes the same conformance suite (``tests/unit/store/``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import msgspec
from msgspec import Struct

from waypost.compact import decode_stored_instance
from waypost.errors import Conflict, Gone, InvalidInput, NotFound, Unavailable, WaypostError
from waypost.model import ENTRY_TYPES, MAX_LEASE_ID, Entry, Event, Instance, decode_lenient

log = logging.getLogger("waypost.store")

# How long, and how many, events are kept for watches to resume from (Consul keeps no
# log at all; etcd keeps history until compaction). An hour covers a server restart and
# a client's reconnect storm; the count bounds disk use under a heavy write rate.
DEFAULT_EVENT_WINDOW_S = 3600.0
DEFAULT_EVENT_MAX = 100_000
# How many events one ``changes`` call returns at most (whole revisions: a page may end
# a little past it to finish its last revision).
CHANGES_PAGE = 1000
# The longest a lease may be granted for, and the shortest.
MAX_LEASE_TTL_S = 366 * 24 * 3600.0
MIN_LEASE_TTL_S = 0.001
# How long the lease expiry task sleeps at most between looks, and its back-off after a
# failed revocation.
LEASE_TICK_MAX_S = 1.0
LEASE_RETRY_S = 0.5
# The mass-expiry guard (Eureka's self-preservation, bounded): when more than this share
# of all leases lapses within one TTL, among at least GUARD_MIN_LEASES, the registry is
# the one that lost the network (or was paused): the lapsing leases are held, a TTL at a
# time, while the wave lasts, for their keep-alives to come back; at most ten TTLs and
# GUARD_MAX_HOLD_S. Once the wave is over (keep-alives are back for most), a lease still
# lapsing is revoked at its next deadline: its holder really died.
GUARD_SHARE = 0.5
GUARD_MIN_LEASES = 4
GUARD_MAX_HOLD_S = 600.0
GUARD_MAX_TTLS = 10  # and at most ten of the lease's TTLs
MAX_RECENT_LAPSES = 100_000

Clock = Callable[[], float]
Stored = tuple[Entry, int]
"""An entry with its mod revision (the revision of its last change)."""


class Progress(list[Event]):
    """An empty watch batch saying the store reached ``revision`` with no event of ours."""

    def __init__(self, revision: int) -> None:
        super().__init__()
        self.revision = revision


class Put(Struct, frozen=True, kw_only=True):
    """Write an entry; ``if_revision`` 0 means it must not exist yet; ``lease`` attaches
    it to a lease (it is deleted when the lease ends); without one it is attached to none."""

    entry: Entry
    if_revision: int | None = None
    lease: int | None = None


class Delete(Struct, frozen=True, kw_only=True):
    """Remove an entry; an unknown one fails the batch with NotFound."""

    id: str
    kind: str = "instance"
    if_revision: int | None = None


class Grant(Struct, frozen=True, kw_only=True):
    """Create a lease (no event, no revision: leases are not entries, as in etcd)."""

    lease: int
    ttl_s: float


class Revoke(Struct, frozen=True, kw_only=True):
    """End a lease and delete every entry attached to it, at one revision."""

    lease: int


Op = Put | Delete | Grant | Revoke


class LeaseState(Struct, frozen=True, kw_only=True):
    """What a store knows of one lease: its TTL, time left, and the entries it holds."""

    id: int
    ttl_s: float
    remaining_s: float
    entries: list[tuple[str, str]] = []


class Store(Protocol):
    """What the server needs of a backend."""

    kind: str
    """Short name shown by ``/status``: ``sqlite``, ``memory``, ``etcd``."""

    skipped_records: int
    """Stored records that could not be decoded (each logged with its key and skipped)."""

    @property
    def compacted(self) -> int:
        """Events at or below this revision are pruned: a watch from before it is Gone."""

    async def open(self) -> None:
        """Connect or create; afterwards the store serves."""

    async def close(self) -> None:
        """Flush and release; pending watches end."""

    async def apply(self, ops: Sequence[Op]) -> int:
        """Apply ``ops`` all or nothing, durably, at one new revision (when any event
        results); return that revision (or the current one when none did)."""

    def submit_each(self, jobs: Sequence[Sequence[Op]]) -> list[Awaitable[int]]:
        """``apply`` of each job on its own (each all or nothing, each its own answer),
        all started now: they share the store's group commit without a task each (a
        batch of separate registrations)."""

    async def snapshot(self) -> tuple[int, list[Stored]]:
        """Every entry with its mod revision, and the revision of the snapshot."""

    async def changes(self, since: int, limit: int = CHANGES_PAGE) -> list[Event]:
        """Events after ``since`` in order, whole revisions, about ``limit`` at most; Gone
        when pruned past."""

    def watch(self, since: int) -> AsyncIterator[list[Event]]:
        """Batches of events after ``since``, in order, live, until the store closes.
        A revision's events always arrive in one batch. An empty batch is a ``Progress``:
        the store moved to its ``revision`` with no event of ours (etcd: our bookkeeping
        keys, which a write waiting for its revision must still see pass)."""

    async def ping(self) -> None:
        """Return when the store answers; raise StoreError when it does not."""

    async def grant(self, ttl_s: float, *, lease_id: int | None = None) -> int:
        """Create a lease living ``ttl_s`` without keep-alives; return its id. Conflict
        when ``lease_id`` is given and taken."""

    async def keepalive(self, lease_id: int) -> float:
        """Restart the lease's clock; return its TTL. NotFound when it has ended."""

    async def revoke(self, lease_id: int) -> int:
        """End a lease now, deleting what it holds; return the revision. NotFound when
        it has ended already."""

    async def lease(self, lease_id: int) -> LeaseState:
        """One lease's TTL, time left and entries; NotFound when it has ended."""

    async def leases(self) -> list[LeaseState]:
        """Every live lease (without its entries), ordered by id."""

    async def put(self, entry: Entry, *, if_revision: int | None = None) -> int:
        """Write one entry (see ``StoreOps``)."""

    async def delete(
        self, key: str, *, kind: str = "instance", if_revision: int | None = None
    ) -> int:
        """Remove one entry (see ``StoreOps``)."""

    async def list(self, kind: str = "instance") -> list[Entry]:
        """Every stored entry of a kind, ordered by key (see ``StoreOps``)."""


class StoreOps:
    """The single-operation conveniences every store gets from ``apply`` and ``snapshot``."""

    async def apply(self, ops: Sequence[Op]) -> int:
        raise NotImplementedError

    def submit_each(self, jobs: Sequence[Sequence[Op]]) -> list[Awaitable[int]]:
        """``apply`` of each job as a task started now (a store with a queue of its own
        answers with its futures instead)."""
        return [asyncio.ensure_future(self.apply(ops)) for ops in jobs]

    async def snapshot(self) -> tuple[int, list[Stored]]:
        raise NotImplementedError

    async def put(self, entry: Entry, *, if_revision: int | None = None) -> int:
        """Write one entry; return its revision."""
        return await self.apply([Put(entry=entry, if_revision=if_revision)])

    async def delete(
        self, key: str, *, kind: str = "instance", if_revision: int | None = None
    ) -> int:
        """Remove one entry (NotFound when unknown); return the revision."""
        return await self.apply([Delete(id=key, kind=kind, if_revision=if_revision)])

    async def list(self, kind: str = "instance") -> list[Entry]:
        """Every stored entry of a kind, ordered by key."""
        _, rows = await self.snapshot()
        return sorted((e for e, _ in rows if kind == e.KIND), key=lambda e: e.key)


class Tx(Protocol):
    """What ``apply_ops`` needs of a transaction: read and write rows and leases."""

    def get(self, kind: str, key: str) -> Stored | None: ...

    def put(self, entry: Entry, revision: int, lease: int | None) -> None: ...

    def delete(self, kind: str, key: str) -> None: ...

    def lease_exists(self, lease_id: int) -> bool: ...

    def grant(self, lease_id: int, ttl_s: float) -> None: ...

    def revoke(self, lease_id: int) -> list[Entry]:
        """Forget the lease; return the entries attached to it (they are deleted)."""
        ...


def apply_ops(tx: Tx, ops: Sequence[Op], revision: int) -> list[Event]:
    """Run ``ops`` against ``tx`` at ``revision + 1``; return the events, all at that
    revision. The caller owns atomicity (rolls ``tx`` back if this raises)."""
    events: list[Event] = []
    at = revision + 1
    deleted: set[tuple[str, str]] = set()
    for op in ops:
        if isinstance(op, Put):
            entry = op.entry
            if op.if_revision is not None:  # a blind put needs no read
                _check_precondition(entry, tx.get(entry.KIND, entry.key), op.if_revision)
            if op.lease is not None and not tx.lease_exists(op.lease):
                raise NotFound(
                    f"lease {op.lease} does not exist (it expired or was revoked)",
                    field="lease",
                )
            tx.put(entry, at, op.lease)
            if deleted:
                deleted.discard((entry.KIND, entry.key))
            events.append(Event(revision=at, type="put", entry=entry, index=len(events)))
        elif isinstance(op, Delete):
            current = tx.get(op.kind, op.id)
            if current is None:
                raise missing(op.kind, op.id)
            _check_precondition(current[0], current, op.if_revision)
            tx.delete(op.kind, op.id)
            deleted.add((op.kind, op.id))
            events.append(Event(revision=at, type="delete", entry=current[0], index=len(events)))
        elif isinstance(op, Grant):
            if tx.lease_exists(op.lease):
                raise Conflict(f"lease {op.lease} exists already", field="lease")
            tx.grant(op.lease, op.ttl_s)
        else:
            if not tx.lease_exists(op.lease):
                raise NotFound(f"lease {op.lease} does not exist", field="lease")
            for entry in tx.revoke(op.lease):
                if (entry.KIND, entry.key) in deleted:
                    continue
                deleted.add((entry.KIND, entry.key))
                events.append(Event(revision=at, type="delete", entry=entry, index=len(events)))
    return events


def missing(kind: str, key: str) -> NotFound:
    """The error for an entry that is not there."""
    if kind == "instance":
        return NotFound(f"instance {key!r} is not registered", field="id")
    if kind == "node":
        return NotFound(f"node {key!r} is not registered", field="id")
    if kind == "service_config":
        return NotFound(f"service {key!r} has no config", field="service")
    return NotFound(f"{kind} {key!r} does not exist", field="id")


def gone(since: int, floor: int) -> Gone:
    """The error for a watch that starts before the kept log."""
    return Gone(
        f"revision {since} is older than the kept event log (from {floor}); "
        "re-list and watch from the listed index",
        field="index",
    )


def _check_precondition(entry: Entry, current: Stored | None, want: int | None) -> None:
    if want is None:
        return
    have = current[1] if current is not None else 0
    if have != want:
        raise Conflict(
            f"{entry.KIND} {entry.key!r} is at revision {have}, not {want}: it changed meanwhile",
            field="id",
        )


def check_ttl(ttl_s: float) -> float:
    """A lease TTL within bounds, or InvalidInput."""
    if not MIN_LEASE_TTL_S <= ttl_s <= MAX_LEASE_TTL_S:
        raise InvalidInput("ttl: a lease lives between 1ms and a year", field="ttl")
    return ttl_s


def new_lease_id(taken: Callable[[int], bool]) -> int:
    """A fresh lease id below 2**53 (JavaScript reads it exactly), not ``taken``."""
    while True:
        lease_id = random.randrange(1, MAX_LEASE_ID)
        if not taken(lease_id):
            return lease_id


def decode_record(kind: str, key: str, data: bytes) -> Entry | None:
    """Read one stored record leniently; None (logged with its key) when it cannot be."""
    type_ = ENTRY_TYPES.get(kind)
    if type_ is None:
        log.warning("skipping stored record %s/%s: unknown kind (a newer Waypost's?)", kind, key)
        return None
    if type_ is Instance:
        try:
            return decode_stored_instance(data)
        except (msgspec.ValidationError, msgspec.DecodeError):
            pass  # the lenient decoder drops unknown nested fields, or says what is wrong
    try:
        return decode_lenient(data, type_)
    except WaypostError as exc:
        log.error("skipping stored record %s/%s that cannot be read: %s", kind, key, exc)
        return None


def whole_revisions(events: list[Event], limit: int) -> list[Event]:
    """Cut a page of events at ``limit`` without splitting a revision."""
    if len(events) <= limit:
        return events
    cut = limit
    last = events[limit - 1].revision
    while cut < len(events) and events[cut].revision == last:
        cut += 1
    return events[:cut]


# --- leases kept in memory, for the stores that expire their own ------------------------


@dataclass(slots=True)
class _Lease:
    ttl_s: float
    deadline: float
    entries: set[tuple[str, str]] = field(default_factory=set)


class LeaseClock:
    """Leases by id with their deadlines, popped in time order; no I/O and no clock of its
    own (``now`` is passed in). Entries attached to each lease are tracked here too."""

    def __init__(self) -> None:
        self._leases: dict[int, _Lease] = {}
        self._heap: list[tuple[float, int]] = []

    def __contains__(self, lease_id: object) -> bool:
        return lease_id in self._leases

    def __len__(self) -> int:
        return len(self._leases)

    def ids(self) -> list[int]:
        return sorted(self._leases)

    def add(self, lease_id: int, ttl_s: float, now: float) -> None:
        self._leases[lease_id] = _Lease(ttl_s, now + ttl_s)
        self._push(now + ttl_s, lease_id)

    def remove(self, lease_id: int) -> set[tuple[str, str]]:
        """Forget a lease; return the entries it held."""
        lease = self._leases.pop(lease_id, None)
        return lease.entries if lease is not None else set()

    def renew(self, lease_id: int, now: float) -> float | None:
        """Restart a lease's clock; its TTL, or None when it is not known."""
        lease = self._leases.get(lease_id)
        if lease is None:
            return None
        lease.deadline = now + lease.ttl_s
        self._push(lease.deadline, lease_id)
        return lease.ttl_s

    def postpone(self, lease_id: int, when: float) -> None:
        """Look at a lease again at ``when`` (after a failed revocation)."""
        lease = self._leases.get(lease_id)
        if lease is not None:
            lease.deadline = when
            self._push(when, lease_id)

    def state(self, lease_id: int, now: float) -> tuple[float, float, set[tuple[str, str]]] | None:
        lease = self._leases.get(lease_id)
        if lease is None:
            return None
        return lease.ttl_s, max(0.0, lease.deadline - now), lease.entries

    def attach(self, lease_id: int | None, ref: tuple[str, str]) -> None:
        if lease_id is not None and lease_id in self._leases:
            self._leases[lease_id].entries.add(ref)

    def detach(self, lease_id: int | None, ref: tuple[str, str]) -> None:
        if lease_id is not None and lease_id in self._leases:
            self._leases[lease_id].entries.discard(ref)

    def due(self, now: float) -> list[int]:
        """Leases whose deadline has passed (they stay until removed)."""
        out = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, lease_id = heapq.heappop(heap)
            lease = self._leases.get(lease_id)
            if lease is not None and lease.deadline == when:
                out.append(lease_id)
        return out

    def silent(self, now: float) -> int:
        """Leases that missed their keep-alives: less than a third of their TTL left (a
        holder renewing every third of it always has more). O(leases): for the guard,
        when leases come due."""
        return sum(1 for lease in self._leases.values() if lease.deadline - now < lease.ttl_s / 3)

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            when, lease_id = heap[0]
            lease = self._leases.get(lease_id)
            if lease is not None and lease.deadline == when:
                return when
            heapq.heappop(heap)
        return None

    def _push(self, when: float, lease_id: int) -> None:
        heapq.heappush(self._heap, (when, lease_id))
        # Keep-alive storms leave stale entries; rebuild when they dominate.
        if len(self._heap) > 64 and len(self._heap) > 4 * len(self._leases):
            self._heap = [(lease.deadline, i) for i, lease in self._leases.items()]
            heapq.heapify(self._heap)


@dataclass(slots=True)
class GuardState:
    """What ``/status`` shows of the mass-expiry guard."""

    holding: bool = False
    held: int = 0
    since: float | None = None  # wall-clock time the guard last started holding
    times_triggered: int = 0


class LeaseExpiry:
    """The background task of a store that expires its own leases: it revokes each lease
    at its deadline through the store's ``apply`` (so the deletions are ordinary events),
    and survives any failure (logged, retried after a pause). It guards against mass
    expiry (``GUARD_SHARE``)."""

    def __init__(
        self,
        leases: LeaseClock,
        revoke: Callable[[int], Awaitable[object]],
        clock: Clock,
        *,
        guard_share: float = GUARD_SHARE,
        guard_min: int = GUARD_MIN_LEASES,
    ) -> None:
        self._leases = leases
        self._revoke = revoke
        self._clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.guard_share = guard_share
        self.guard_min = guard_min
        self.guard_max_hold_s = GUARD_MAX_HOLD_S
        self.guard = GuardState()
        # Told when the guard starts or stops holding (the API's event stream notice).
        self.guard_listeners: list[Callable[[GuardState], None]] = []
        # Leases held by the guard: id -> when it was first held.
        self._held: dict[int, float] = {}
        # When recent leases lapsed (monotonic), to see a wave across ticks.
        self._lapsed: collections.deque[float] = collections.deque(maxlen=MAX_RECENT_LAPSES)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="waypost-lease-expiry")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def poke(self) -> None:
        """A lease was granted: its deadline may be the nearest."""
        self._wake.set()

    def renewed(self, lease_id: int) -> None:
        """A keep-alive came: a held lease is no longer lapsing."""
        if self._held.pop(lease_id, None) is not None:
            self._update_guard()

    def _update_guard(self) -> None:
        self._held = {k: v for k, v in self._held.items() if k in self._leases}
        self.guard.held = len(self._held)
        live = max(len(self._leases), 1)
        if self.guard.holding and len(self._held) / live <= self.guard_share:
            self.guard.holding = False
            self._tell()
            log.warning(
                "lease guard: keep-alives are back (%d of %d leases still held); expiry "
                "resumes", len(self._held), len(self._leases),
            )  # fmt: skip

    def _hold(self, due: list[int], now: float) -> list[int]:
        """During a wave of lapses, hold the lapsing leases one more TTL (up to the
        longest hold); the leases to revoke now."""
        ttls = {lid: st[0] for lid in due if (st := self._leases.state(lid, now)) is not None}
        window = max(ttls.values(), default=0.0)
        recent = sum(1 for t in self._lapsed if t > now - window)
        total = len(self._leases) + recent
        silent = self._leases.silent(now)
        # Lapsing: due now, about to (their keep-alives stopped too), held, or just gone.
        lapsing = silent + len(self._held.keys() - ttls.keys()) + recent
        if total < self.guard_min or lapsing / total <= self.guard_share:
            self._update_guard()
            return due
        revoke = []
        for lid in due:
            first = self._held.get(lid, now)
            longest = min(self.guard_max_hold_s, GUARD_MAX_TTLS * ttls.get(lid, 0.0))
            if lid not in ttls or now - first >= longest:
                revoke.append(lid)  # held as long as it may be
                continue
            self._held[lid] = first
            self._leases.postpone(lid, now + ttls[lid])
        if self._held and not self.guard.holding:
            self.guard.holding = True
            self.guard.since = time.time()
            self.guard.times_triggered += 1
            self.guard.held = len(self._held)
            self._tell()
            log.warning(
                "lease guard: %d of %d leases lapsed within %.1fs: holding them while the "
                "wave lasts (this registry was likely cut off or paused, not its clients)",
                lapsing, total, window,
            )  # fmt: skip
        self.guard.held = len(self._held)
        return revoke

    def _tell(self) -> None:
        for listener in self.guard_listeners:
            try:
                listener(self.guard)
            except Exception:  # a listener's bug must not stop expiry
                log.exception("lease guard listener failed")

    async def expire_due(self) -> list[int]:
        """Revoke every lease past its deadline now (unless the guard holds it); return
        their ids."""
        now = self._clock()
        done = []
        due = self._leases.due(now)
        if due:
            due = self._hold(due, now)
        for lease_id in due:
            try:
                await self._revoke(lease_id)
            except NotFound:
                pass  # revoked meanwhile
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # nothing may stop expiry: try again shortly
                log.warning("lease %d: expiry failed (%s); retrying", lease_id, exc)
                self._leases.postpone(lease_id, now + LEASE_RETRY_S)
                continue
            done.append(lease_id)
            self._lapsed.append(now)
            self._held.pop(lease_id, None)
        if done:
            self._update_guard()
        return done

    async def _run(self) -> None:
        while True:
            try:
                await self.expire_due()
                nearest = self._leases.next_deadline()
                pause = LEASE_TICK_MAX_S
                if nearest is not None:
                    pause = min(pause, max(0.0, nearest - self._clock()))
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), pause)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease expiry failed; retrying")
                await asyncio.sleep(LEASE_RETRY_S)


class LocalLeases:
    """The lease operations of a store that keeps lease deadlines itself (memory, SQLite):
    grants and revocations go through its ``apply``; keep-alives only move a deadline."""

    _leases: LeaseClock
    _clock: Clock
    _expiry: LeaseExpiry

    def _check_open(self) -> None:
        raise NotImplementedError

    async def apply(self, ops: Sequence[Op]) -> int:
        raise NotImplementedError

    def lease_count(self) -> int:
        """How many leases are live (for ``/metrics``)."""
        return len(self._leases)

    async def grant(self, ttl_s: float, *, lease_id: int | None = None) -> int:
        lease_id = lease_id or new_lease_id(self._leases.__contains__)
        await self.apply([Grant(lease=lease_id, ttl_s=check_ttl(ttl_s))])
        return lease_id

    async def keepalive(self, lease_id: int) -> float:
        self._check_open()
        ttl_s = self._leases.renew(lease_id, self._clock())
        if ttl_s is None:
            raise NotFound(f"lease {lease_id} does not exist", field="lease")
        self._expiry.renewed(lease_id)
        return ttl_s

    @property
    def lease_guard(self) -> GuardState:
        """The mass-expiry guard's state (``/status``)."""
        return self._expiry.guard

    def add_guard_listener(self, listener: Callable[[GuardState], None]) -> None:
        """Call ``listener`` when the guard starts or stops holding."""
        self._expiry.guard_listeners.append(listener)

    async def revoke(self, lease_id: int) -> int:
        return await self.apply([Revoke(lease=lease_id)])

    def _lease_state(self, lease_id: int) -> tuple[float, float, set[tuple[str, str]]]:
        self._check_open()
        state = self._leases.state(lease_id, self._clock())
        if state is None:
            raise NotFound(f"lease {lease_id} does not exist", field="lease")
        return state

    async def leases(self) -> list[LeaseState]:
        self._check_open()
        now = self._clock()
        out = []
        for lease_id in self._leases.ids():
            state = self._leases.state(lease_id, now)
            if state is not None:
                out.append(LeaseState(id=lease_id, ttl_s=state[0], remaining_s=state[1]))
        return out

    async def expire_due(self) -> list[int]:
        """Revoke every lease past its deadline on the store's clock now (a test's
        ManualClock moves it); the store's own task does this at each deadline."""
        return await self._expiry.expire_due()


def monotonic() -> float:
    """The default clock of lease deadlines."""
    return time.monotonic()


_CLOSED: list[Event] = []


class ChangeFeed:
    """Fans batches of committed events out to live watchers, in commit order."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[list[Event]]] = set()

    def subscribe(self) -> asyncio.Queue[list[Event]]:
        q: asyncio.Queue[list[Event]] = asyncio.Queue()
        self._queues.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[list[Event]]) -> None:
        self._queues.discard(q)

    def publish(self, events: list[Event]) -> None:
        for q in self._queues:
            q.put_nowait(events)

    def close(self) -> None:
        for q in self._queues:
            q.put_nowait(_CLOSED)


async def watch_with_backlog(
    store: Store, feed: ChangeFeed, since: int
) -> AsyncIterator[list[Event]]:
    """The watch every local store offers: the logged backlog, then live batches.

    Subscribing before reading the backlog means no event falls between the two; events
    seen twice (in both) are dropped by revision (a revision is never split between
    batches, so whole revisions are dropped or kept).
    """
    q = feed.subscribe()
    try:
        last = since
        while True:
            backlog = await store.changes(last)
            if not backlog:
                break
            last = backlog[-1].revision
            yield backlog
        while True:
            batch = await q.get()
            if batch is _CLOSED:
                raise Unavailable("the store closed")
            fresh = [ev for ev in batch if ev.revision > last]
            if fresh:
                last = fresh[-1].revision
                yield fresh
    finally:
        feed.unsubscribe(q)
